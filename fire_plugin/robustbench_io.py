"""RobustBench result files: the ``model_info`` JSON schema, written, read and validated.

RobustBench keeps one JSON file per model at ``model_info/<dataset>/<threat_model>/<model_id>.json``, for
example ``model_info/cifar10/Linf/Zhang2019Theoretically.json``. :class:`ModelInfo` has exactly the fields of
those files; accuracies are percent strings (``"84.92"``) and ``eps`` a string, a fraction such as
``"8/255"`` when it is one. Fields that :class:`ModelInfo` does not name (``external``, ``corruptions_acc``,
...) are kept in :attr:`ModelInfo.extra` so that files read and written back lose nothing.

>>> import tempfile
>>> info = ModelInfo(name="FIRE", dataset="cifar10", eps="8/255", clean_acc="84.92", autoattack_acc="53.08")
>>> with tempfile.TemporaryDirectory() as root:
...     path = write_model_info(root, "Picot2022Adversarial", info)
...     read_model_info(path).clean_acc
'84.92'
"""

from __future__ import annotations

import json
import logging
import math
import os
import re
import tempfile
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import Enum
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fire_plugin.evaluation import EvalResult

__all__ = [
    "MODEL_INFO_FIELDS",
    "ROBUSTBENCH_DATASETS",
    "THREAT_MODELS",
    "BenchmarkDataset",
    "ModelInfo",
    "ThreatModel",
    "format_accuracy",
    "format_eps",
    "model_info_from_result",
    "model_info_path",
    "parse_eps",
    "read_model_info",
    "validate_model_info",
    "write_model_info",
]

_logger = logging.getLogger(__name__)


class BenchmarkDataset(str, Enum):
    """Datasets with a RobustBench leaderboard."""

    cifar10 = "cifar10"
    cifar100 = "cifar100"
    imagenet = "imagenet"


class ThreatModel(str, Enum):
    """RobustBench threat models (the folder of ``corruptions_3d`` is ``corruptions``)."""

    Linf = "Linf"
    L2 = "L2"
    corruptions = "corruptions"
    corruptions_3d = "corruptions_3d"


ROBUSTBENCH_DATASETS: tuple[str, ...] = tuple(d.value for d in BenchmarkDataset)
THREAT_MODELS: tuple[str, ...] = tuple(t.value for t in ThreatModel)

_ID_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+\-]*$")
_PERCENT_PATTERN = re.compile(r"^\d{1,3}(\.\d+)?$")
_NOT_REPORTED = ("", "null")  # markers for "no reported accuracy" found in RobustBench's own files
_STR_FIELDS = ("link", "name", "authors", "venue", "architecture", "footnote")


@dataclass
class ModelInfo:
    """One RobustBench ``model_info`` file; the field set is exactly RobustBench's.

    Attributes:
        link: URL of the paper.
        name: paper title.
        authors: comma separated authors.
        additional_data: whether training used data beyond the benchmark's training set.
        number_forward_passes: forward passes per prediction (1 for a plain model).
        dataset: ``"cifar10"``, ``"cifar100"``, ``"imagenet"`` (or another name, which RobustBench cannot take).
        venue: for example ``"ICML 2019"``.
        architecture: for example ``"WideResNet-34-10"``.
        eps: radius as a string, ``"8/255"`` or ``"0.5"``; None for corruptions.
        clean_acc: clean accuracy in percent, ``"84.92"``.
        reported: robust accuracy reported in the paper, percent string, or None.
        autoattack_acc: AutoAttack accuracy in percent (None for corruptions).
        footnote: free text shown on the leaderboard.
        unreliable: whether the evaluation is flagged unreliable.

    Fields of a file that are none of these are kept in :attr:`extra` (in file order) and written back.
    Equality compares the named fields only; ``dataclasses.replace`` drops :attr:`extra`.

    >>> info = ModelInfo.from_dict({"dataset": "cifar10", "clean_acc": "90.00", "external": "50.00"})
    >>> info.dataset, info.extra
    ('cifar10', {'external': '50.00'})
    """

    link: str | None = None
    name: str | None = None
    authors: str | None = None
    additional_data: bool | None = None
    number_forward_passes: int | None = None
    dataset: str | None = None
    venue: str | None = None
    architecture: str | None = None
    eps: str | None = None
    clean_acc: str | None = None
    reported: str | None = None
    autoattack_acc: str | None = None
    footnote: str | None = None
    unreliable: bool | None = None

    def __post_init__(self) -> None:
        self._extra: dict[str, Any] = {}

    @property
    def extra(self) -> dict[str, Any]:
        """Fields of the source file that ModelInfo does not name (``external``, ``corruptions_acc``, ...)."""
        return self._extra

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> ModelInfo:
        """Build from a parsed JSON object; unknown keys go to :attr:`extra`.

        >>> ModelInfo.from_dict({"eps": "8/255"}).eps
        '8/255'
        """
        if not isinstance(data, Mapping):
            raise ValueError(f"data of type {type(data).__name__} is not allowed; allowed: a JSON object")
        known = {k: v for k, v in data.items() if k in MODEL_INFO_FIELDS}
        info = cls(**known)
        info._extra = {k: v for k, v in data.items() if k not in MODEL_INFO_FIELDS}
        return info

    def to_dict(self) -> dict[str, Any]:
        """All fields in RobustBench's order (None included, as ``dataclasses.asdict``), then :attr:`extra`.

        >>> list(ModelInfo().to_dict())[:3]
        ['link', 'name', 'authors']
        """
        out = asdict(self)
        out.update(self._extra)
        return out

    def to_json(self) -> str:
        """The file content: ``json.dumps(self.to_dict(), indent=2)``."""
        return json.dumps(self.to_dict(), indent=2)


MODEL_INFO_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ModelInfo))


# --------------------------------------------------------------------------------------------------
# formatting


def format_accuracy(accuracy: float) -> str:
    """A fraction in [0, 1] as RobustBench's percent string with two decimals.

    >>> format_accuracy(0.8492)
    '84.92'
    """
    if isinstance(accuracy, bool) or not isinstance(accuracy, int | float) or not 0.0 <= accuracy <= 1.0:
        raise ValueError(f"accuracy={accuracy!r} is not allowed; allowed: a fraction in [0, 1]")
    return f"{100.0 * accuracy:.2f}"


def format_eps(eps: float | str) -> str:
    """The perturbation radius as RobustBench writes it: ``"8/255"`` when ``eps`` is k/255, else a decimal.

    Short decimals (``0.5``, ``0.031``, ``0.3``) stay decimals; other exact small fractions are written as
    ``p/q``. A string is validated and returned unchanged.

    >>> format_eps(8 / 255), format_eps(0.5), format_eps(0.031), format_eps("4/255")
    ('8/255', '0.5', '0.031', '4/255')
    """
    if isinstance(eps, str):
        parse_eps(eps)
        return eps
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps={eps!r} is not allowed; allowed: a positive finite number or a string")
    eps = float(eps)
    short = f"{eps:g}"
    if float(short) == eps and len(short) <= 6:
        return short
    for denominator in (255, *range(2, 1001)):
        numerator = round(eps * denominator)
        if numerator > 0 and numerator / denominator == eps:  # exact: parse_eps gives eps back
            frac = Fraction(numerator, denominator)
            return f"{frac.numerator}/{frac.denominator}" if denominator != 255 else f"{numerator}/255"
    return repr(eps)


def parse_eps(eps: str) -> float:
    """The value of an eps string (``"8/255"``, ``"0.031"``).

    >>> round(parse_eps("8/255"), 6)
    0.031373
    """
    if not isinstance(eps, str):
        raise ValueError(f"eps={eps!r} is not allowed; allowed: a string such as '8/255' or '0.5'")
    text = eps.strip()
    try:
        if "/" in text:
            num, den = text.split("/")
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise ValueError(f"eps={eps!r} is not allowed; allowed: a number or fraction such as '8/255'") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"eps={eps!r} is not allowed; allowed: a positive value")
    return value


# --------------------------------------------------------------------------------------------------
# validation


def _check_percent(name: str, value: Any, problems: list[str], *, allow_not_reported: bool = False) -> None:
    if allow_not_reported and value in _NOT_REPORTED:
        return
    if not isinstance(value, str) or not _PERCENT_PATTERN.match(value) or float(value) > 100.0:
        problems.append(f"{name}={value!r} is not a percent string in [0, 100] such as '84.92'")


def _check_path_component(label: str, value: Any) -> None:
    if not isinstance(value, str) or not _ID_PATTERN.match(value) or ".." in value:
        raise ValueError(
            f"{label}={value!r} is not allowed; allowed: letters, digits and _ . + - (no path separators "
            "or '..'), like RobustBench's 'Zhang2019Theoretically'"
        )


def _threat_model_value(threat_model: str | ThreatModel) -> str:
    value = threat_model.value if isinstance(threat_model, ThreatModel) else threat_model
    if value not in THREAT_MODELS:
        raise ValueError(f"threat_model={threat_model!r} is not allowed; allowed: {list(THREAT_MODELS)}")
    return value


def validate_model_info(info: ModelInfo, *, threat_model: str | ThreatModel | None = None) -> None:
    """Check types and formats; raise ValueError listing every problem.

    Rules: text fields are strings; ``additional_data`` and ``unreliable`` booleans; ``number_forward_passes``
    a positive int; ``dataset`` a name usable as a folder; ``clean_acc`` (required) and ``autoattack_acc`` percent
    strings in [0, 100] (any number of decimals, as in RobustBench's files); ``reported`` a percent string or a
    "not reported" marker (None, ``""``, ``"null"``); ``eps`` a positive number or fraction string. With
    ``threat_model`` ``"Linf"``/``"L2"``, ``eps`` and ``autoattack_acc`` are required. ``external`` in
    :attr:`ModelInfo.extra` must be a percent string too. A dataset RobustBench does not list is valid here;
    :func:`write_model_info` warns about it.

    >>> validate_model_info(ModelInfo(dataset="cifar10", clean_acc="90.00", eps="8/255"))
    >>> validate_model_info(ModelInfo(dataset="cifar10", clean_acc="90 %"))
    Traceback (most recent call last):
    ...
    ValueError: invalid model_info: clean_acc='90 %' is not a percent string in [0, 100] such as '84.92'
    """
    if not isinstance(info, ModelInfo):
        raise ValueError(f"info of type {type(info).__name__} is not allowed; allowed: ModelInfo")
    problems: list[str] = []
    for name in _STR_FIELDS:
        value = getattr(info, name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name}={value!r} is not a string")
    for name in ("additional_data", "unreliable"):
        value = getattr(info, name)
        if value is not None and not isinstance(value, bool):
            problems.append(f"{name}={value!r} is not a boolean")
    passes = info.number_forward_passes
    if passes is not None and (isinstance(passes, bool) or not isinstance(passes, int) or passes < 1):
        problems.append(f"number_forward_passes={passes!r} is not a positive int")
    if info.dataset is None:
        problems.append("dataset is missing")
    elif not isinstance(info.dataset, str) or not _ID_PATTERN.match(info.dataset) or ".." in info.dataset:
        problems.append(f"dataset={info.dataset!r} is not a dataset name such as 'cifar10'")
    if info.clean_acc is None:
        problems.append("clean_acc is missing")
    else:
        _check_percent("clean_acc", info.clean_acc, problems)
    if info.autoattack_acc is not None:
        _check_percent("autoattack_acc", info.autoattack_acc, problems)
    if info.reported is not None:
        _check_percent("reported", info.reported, problems, allow_not_reported=True)
    if "external" in info.extra and info.extra["external"] is not None:
        _check_percent("external", info.extra["external"], problems)
    if info.eps is not None:
        try:
            parse_eps(info.eps)
        except ValueError as exc:
            problems.append(str(exc))
    if threat_model is not None and _threat_model_value(threat_model) in ("Linf", "L2"):
        if info.eps is None:
            problems.append(f"eps is missing (required for threat_model={threat_model!r})")
        if info.autoattack_acc is None:
            problems.append(f"autoattack_acc is missing (required for threat_model={threat_model!r})")
    if problems:
        raise ValueError("invalid model_info: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------
# files


def model_info_path(
    root: str | os.PathLike[str],
    model_id: str,
    *,
    dataset: str,
    threat_model: str | ThreatModel = "Linf",
) -> Path:
    """``root/model_info/<dataset>/<threat_model>/<model_id>.json`` (``corruptions_3d`` -> ``corruptions``).

    >>> model_info_path("out", "Zhang2019Theoretically", dataset="cifar10").as_posix()
    'out/model_info/cifar10/Linf/Zhang2019Theoretically.json'
    """
    _check_path_component("model_id", model_id)
    _check_path_component("dataset", dataset)
    folder = _threat_model_value(threat_model).replace("_3d", "")
    return Path(root) / "model_info" / dataset / folder / f"{model_id}.json"


def read_model_info(path: str | os.PathLike[str], *, validate: bool = True) -> ModelInfo:
    """Read one model_info JSON file (ours or RobustBench's).

    Args:
        path: the JSON file.
        validate: run :func:`validate_model_info` (with the threat model of the parent folder when it is one).

    Returns:
        The :class:`ModelInfo`, unknown fields in :attr:`ModelInfo.extra`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     p = write_model_info(root, "M", ModelInfo(dataset="cifar10", clean_acc="90.00"), threat_model="corruptions")
    ...     read_model_info(p).dataset
    'cifar10'
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise ValueError(f"path={str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"path={str(path)!r} does not hold a JSON object")
    info = ModelInfo.from_dict(data)
    if validate:
        folder = path.parent.name
        try:
            validate_model_info(info, threat_model=folder if folder in THREAT_MODELS else None)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return info


def _write_atomic(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_model_info(
    root: str | os.PathLike[str],
    model_id: str,
    info: ModelInfo,
    *,
    threat_model: str | ThreatModel = "Linf",
) -> Path:
    """Write ``root/model_info/<info.dataset>/<threat_model>/<model_id>.json`` as RobustBench does.

    A new file holds every field (None as ``null``) then :attr:`ModelInfo.extra`, written with
    ``json.dumps(..., indent=2)``. If the file exists, the new non-None values are merged into it and all other
    existing keys are kept, like ``robustbench.utils.update_json``. The result is validated before anything is
    written (so a partial ``info`` can update a complete file); a dataset
    RobustBench does not list (``mnist``, ``digits``) is written in the same schema with a warning that it
    cannot be submitted.

    Args:
        root: output folder (the parent of ``model_info``).
        model_id: RobustBench-style id such as ``"Zhang2019Theoretically"``; no path separators or ``..``.
        info: the record; ``info.dataset`` picks the folder.
        threat_model: ``"Linf"``, ``"L2"``, ``"corruptions"`` or ``"corruptions_3d"``.

    Returns:
        The path written.

    >>> import tempfile
    >>> info = ModelInfo(dataset="cifar10", eps="8/255", clean_acc="84.92", autoattack_acc="53.08")
    >>> with tempfile.TemporaryDirectory() as root:
    ...     write_model_info(root, "Zhang2019Theoretically", info).relative_to(root).as_posix()
    'model_info/cifar10/Linf/Zhang2019Theoretically.json'
    """
    _check_path_component("model_id", model_id)
    if not isinstance(info, ModelInfo):
        raise ValueError(f"info of type {type(info).__name__} is not allowed; allowed: ModelInfo")
    if info.dataset is None:
        raise ValueError("info.dataset=None is not allowed; allowed: a dataset name such as 'cifar10'")
    path = model_info_path(root, model_id, dataset=info.dataset, threat_model=threat_model)
    content = info.to_dict()
    merging = path.exists()
    if merging:
        try:
            existing = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError as exc:
            raise ValueError(f"cannot merge into {path}: not valid JSON ({exc})") from exc
        if not isinstance(existing, dict):
            raise ValueError(f"cannot merge into {path}: it does not hold a JSON object")
        existing.update({k: v for k, v in content.items() if v is not None})
        content = existing
    try:
        validate_model_info(ModelInfo.from_dict(content), threat_model=threat_model)
    except ValueError as exc:
        raise ValueError(f"not writing {path}: {exc}") from None
    if info.dataset not in ROBUSTBENCH_DATASETS:
        warnings.warn(
            f"dataset={info.dataset!r} has no RobustBench leaderboard (allowed: {list(ROBUSTBENCH_DATASETS)}); "
            f"{path} uses RobustBench's schema but cannot be submitted",
            UserWarning,
            stacklevel=2,
        )
    _write_atomic(path, json.dumps(content, indent=2))
    _logger.info("%s model_info %s", "merged into" if merging else "wrote", path)
    return path


def model_info_from_result(
    result: EvalResult,
    *,
    dataset: str,
    name: str | None = None,
    link: str | None = None,
    authors: str | None = None,
    venue: str | None = None,
    architecture: str | None = None,
    additional_data: bool = False,
    number_forward_passes: int = 1,
    reported: str | None = None,
    footnote: str | None = None,
) -> ModelInfo:
    """A :class:`ModelInfo` from an :class:`~fire_plugin.evaluation.EvalResult` (clean and AutoAttack accuracy).

    Accuracies become percent strings with two decimals and ``eps`` a fraction string when it is k/255.

    >>> from fire_plugin.evaluation import EvalResult
    >>> r = EvalResult(n_examples=100, eps=8 / 255, norm="Linf", clean_acc=0.9, autoattack_acc=0.5)
    >>> info = model_info_from_result(r, dataset="cifar10")
    >>> info.eps, info.clean_acc, info.autoattack_acc
    ('8/255', '90.00', '50.00')
    """
    if result.clean_acc is None:
        raise ValueError("result.clean_acc is None; evaluate with attacks including 'clean'")
    version = getattr(result, "autoattack_version", None)
    if result.autoattack_acc is not None and version not in (None, "standard"):
        warnings.warn(
            f"autoattack_acc comes from AutoAttack {version!r}, not 'standard': RobustBench does not accept it",
            UserWarning,
            stacklevel=2,
        )
    return ModelInfo(
        link=link,
        name=name,
        authors=authors,
        additional_data=additional_data,
        number_forward_passes=number_forward_passes,
        dataset=dataset,
        venue=venue,
        architecture=architecture,
        eps=format_eps(result.eps),
        clean_acc=format_accuracy(result.clean_acc),
        reported=reported,
        autoattack_acc=None if result.autoattack_acc is None else format_accuracy(result.autoattack_acc),
        footnote=footnote,
    )

"""RobustBench result files: the ``model_info`` JSON schema, written, read and validated.

RobustBench keeps one JSON file per model at ``model_info/<dataset>/<threat_model>/<model_id>.json``, for
example ``model_info/cifar10/Linf/Zhang2019Theoretically.json``. :class:`ModelInfo` has exactly the fields of
those files; accuracies are percent strings (``"84.92"``) and ``eps`` a string, a fraction such as
``"8/255"`` when it is one (a JSON number, as RobustBench's own ``update_json`` writes it, is read too).
Fields that :class:`ModelInfo` does not name (``external``, ``corruptions_acc``, ...) are kept in
:attr:`ModelInfo.extra` so that files read and written back lose nothing.

Files are written the way RobustBench's own consumers (``generate_leaderboard``, ``get_leaderboard_latex``,
``get_leaderboard_bibtex``) read them: the keys every RobustBench file has are always written, the optional ones
(``autoattack_acc`` for corruptions, ``footnote``, ``unreliable``) are left out when unset instead of being
written as ``null``, and validation refuses what those consumers cannot read (a missing venue, a ``null``
``external``, NaN).

>>> import tempfile
>>> info = ModelInfo(link="https://arxiv.org/abs/2106.06685", name="FIRE", authors="M. Picot", additional_data=False,
...                  number_forward_passes=1, dataset="cifar10", venue="TPAMI 2022", architecture="WideResNet-34-10",
...                  eps="8/255", clean_acc="84.92", reported="53.08", autoattack_acc="53.08")
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
import secrets
import stat
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
    "N_EXAMPLES_KEY",
    "ROBUSTBENCH_DATASETS",
    "ROBUSTBENCH_TEST_SIZES",
    "THREAT_MODELS",
    "DEMO_VENUE",
    "PRESET_VENUE",
    "BenchmarkDataset",
    "ModelInfo",
    "ThreatModel",
    "format_accuracy",
    "format_eps",
    "model_info_from_result",
    "model_info_path",
    "parse_eps",
    "read_model_info",
    "subset_of",
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
#: How many test images RobustBench evaluates per dataset (``benchmark(n_examples=10000)``; ImageNet: its 5,000
#: image validation subset). A file evaluated on fewer is not a leaderboard result.
ROBUSTBENCH_TEST_SIZES: dict[str, int] = {"cifar10": 10_000, "cifar100": 10_000, "imagenet": 5_000}
#: Venues of this package's own results. RobustBench's ``get_leaderboard_bibtex`` takes the first word (up to a
#: comma) as the journal and the last word as the year: these give ``journal={fire_plugin}, year={2026}``.
DEMO_VENUE = "fire_plugin demo, 2026"
PRESET_VENUE = "fire_plugin preset, 2026"
#: The extra field our files record the number of evaluated test images in (RobustBench's files do not have it).
N_EXAMPLES_KEY = "n_examples"

# Patterns are applied with fullmatch: with match and "$", "M\n" would pass ("$" matches before a final newline).
_ID_PATTERN = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]*")
_PERCENT_PATTERN = re.compile(r"\d{1,3}(\.\d+)?")
_DECIMAL = r"(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][-+]?\d+)?"
_EPS_PATTERN = re.compile(rf"{_DECIMAL}(?:/{_DECIMAL})?")  # "8/255", "0.5", "1e-05"; no spaces, signs or "_"
_NOT_REPORTED = ("", "null")  # markers for "no reported accuracy" found in RobustBench's own files
_STR_FIELDS = ("link", "name", "authors", "venue", "architecture", "footnote")
# Fields every RobustBench file holds with a non-null value, and what to give (RobustBench's consumers read them:
# get_leaderboard_bibtex splits venue and authors, get_leaderboard_latex reads architecture and additional_data).
_REQUIRED_FIELDS: dict[str, str] = {
    "link": "the paper's URL",
    "name": "the paper's title",
    "authors": "comma separated authors, or '' as RobustBench's 'Standard' entries",
    "additional_data": "True or False",
    "number_forward_passes": "1 for a plain model",
    "venue": "such as 'ICML 2019', or 'N/A' for an unpublished model as RobustBench's 'Standard' entries",
    "architecture": "such as 'WideResNet-34-10'",
}
# Optional fields that RobustBench's files leave out rather than hold as null (eps and reported are always there).
_OMIT_WHEN_UNSET = ("autoattack_acc", "footnote", "unreliable")
# ... except a "footnote": null read from a file (7 RobustBench files hold one): it is written back unchanged.
_KEEP_NULL_FROM_FILE = ("footnote",)
# Extras that RobustBench's leaderboard code converts with float(): percent strings when present.
_PERCENT_EXTRAS = ("external", "corruptions_acc", "corruptions_acc_3d")
_NUMBER_EXTRAS = ("corruptions_mce", "corruptions_mce_3d")
_CORRUPTIONS_EXTRAS = ("corruptions_acc", "corruptions_acc_3d", *_NUMBER_EXTRAS)


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
        eps: radius as a string, ``"8/255"`` or ``"0.5"`` (a number, as RobustBench's ``update_json`` writes it,
            is accepted); None for corruptions.
        clean_acc: clean accuracy in percent, ``"84.92"``.
        reported: robust accuracy reported in the paper, percent string, or None.
        autoattack_acc: AutoAttack accuracy in percent (None for corruptions).
        footnote: free text shown on the leaderboard.
        unreliable: whether the evaluation is flagged unreliable.

    Fields of a file that are none of these are kept in :attr:`extra` (in file order) and written back.
    Equality compares the named fields only; ``dataclasses.replace`` drops :attr:`extra`. An unset (None)
    ``autoattack_acc``, ``footnote`` or ``unreliable`` is left out of the file, as in RobustBench's files.

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
    eps: str | float | None = None
    clean_acc: str | None = None
    reported: str | None = None
    autoattack_acc: str | None = None
    footnote: str | None = None
    unreliable: bool | None = None

    def __post_init__(self) -> None:
        self._extra: dict[str, Any] = {}
        self._null_in_file: frozenset[str] = frozenset()

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
        info._null_in_file = frozenset(k for k in _KEEP_NULL_FROM_FILE if k in data and data[k] is None)
        return info

    def to_dict(self) -> dict[str, Any]:
        """All fields in RobustBench's order (None included, as ``dataclasses.asdict``), then :attr:`extra`.

        >>> list(ModelInfo().to_dict())[:3]
        ['link', 'name', 'authors']
        """
        out = asdict(self)
        out.update(self._extra)
        return out

    def to_file_dict(self) -> dict[str, Any]:
        """What the file holds: :meth:`to_dict` without the unset optional keys.

        ``autoattack_acc``, ``footnote`` and ``unreliable`` are left out when None, as RobustBench's own files
        do (none of them holds ``"unreliable": null``; its leaderboard would show such a model as reliable).
        A ``"footnote": null`` read by :meth:`from_dict` is kept, so RobustBench's files round-trip unchanged.

        >>> "unreliable" in ModelInfo().to_file_dict(), "eps" in ModelInfo().to_file_dict()
        (False, True)
        """
        return {
            k: v
            for k, v in self.to_dict().items()
            if not (v is None and k in _OMIT_WHEN_UNSET and k not in self._null_in_file)
        }

    def to_json(self) -> str:
        """The file content: ``json.dumps(self.to_file_dict(), indent=2)``; NaN and infinities are refused.

        >>> print(ModelInfo(dataset="cifar10", unreliable=False).to_json().splitlines()[-2])
          "unreliable": false
        """
        return _dumps(self.to_file_dict())


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


def parse_eps(eps: str | float) -> float:
    """The value of an eps string (``"8/255"``, ``"0.031"``) or number (``0.5``, as RobustBench's ``update_json``
    writes it).

    >>> round(parse_eps("8/255"), 6), parse_eps(0.5)
    (0.031373, 0.5)
    """
    if isinstance(eps, int | float) and not isinstance(eps, bool):
        if not math.isfinite(eps) or eps <= 0:
            raise ValueError(f"eps={eps!r} is not allowed; allowed: a positive finite value")
        return float(eps)
    if not isinstance(eps, str):
        raise ValueError(f"eps={eps!r} is not allowed; allowed: a number or a string such as '8/255' or '0.5'")
    if not _EPS_PATTERN.fullmatch(eps):
        raise ValueError(
            f"eps={eps!r} is not allowed; allowed: a number or fraction such as '8/255' or '0.5', without spaces"
        )
    try:
        num, _, den = eps.partition("/")
        value = float(num) / float(den) if den else float(num)
    except ZeroDivisionError:
        raise ValueError(f"eps={eps!r} is not allowed; allowed: a nonzero denominator") from None
    if not math.isfinite(value) or value <= 0:
        raise ValueError(f"eps={eps!r} is not allowed; allowed: a positive finite value")
    return value


# --------------------------------------------------------------------------------------------------
# validation


def _check_percent(name: str, value: Any, problems: list[str], *, allow_not_reported: bool = False) -> None:
    if allow_not_reported and value in _NOT_REPORTED:
        return
    if not isinstance(value, str) or not _PERCENT_PATTERN.fullmatch(value) or float(value) > 100.0:
        problems.append(f"{name}={value!r} is not a percent string in [0, 100] such as '84.92'")


def _non_finite(value: Any, name: str) -> list[str]:
    """Names (``key.sub[0]``) of the NaN/infinite floats inside a JSON-like value."""
    if isinstance(value, float):
        return [] if math.isfinite(value) else [f"{name}={value!r}"]
    if isinstance(value, Mapping):
        return [hit for k, v in value.items() for hit in _non_finite(v, f"{name}.{k}")]
    if isinstance(value, list | tuple):
        return [hit for i, v in enumerate(value) for hit in _non_finite(v, f"{name}[{i}]")]
    return []


def _dumps(content: Mapping[str, Any]) -> str:
    hits = [hit for k, v in content.items() for hit in _non_finite(v, k)]
    if hits:
        raise ValueError(
            f"{', '.join(hits)} is not allowed; JSON has no NaN or Infinity (Python would write the non-JSON "
            "tokens NaN/Infinity): store a finite number, a string, or leave the field out"
        )
    return json.dumps(content, indent=2, allow_nan=False)


def _check_path_component(label: str, value: Any) -> None:
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value) or ".." in value:
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

    The rules are what RobustBench's files hold and what its own consumers (``generate_leaderboard``,
    ``get_leaderboard_latex``, ``get_leaderboard_bibtex``) can read. Required, as in every RobustBench file:
    ``link``, ``name``, ``authors``, ``venue``, ``architecture`` (strings), ``additional_data`` (bool),
    ``number_forward_passes`` (positive int), ``dataset`` (a name usable as a folder) and ``clean_acc``.
    ``footnote`` is a string, ``unreliable`` a bool, the extra ``n_examples`` (the number of evaluated test images,
    which our files record) a positive int; ``clean_acc`` and ``autoattack_acc`` are percent strings in
    [0, 100] (any number of decimals, as in RobustBench's files); ``reported`` a percent string or a "not
    reported" marker (None, ``""``, ``"null"``); ``eps`` a positive finite number (RobustBench's ``update_json``
    writes a JSON number) or fraction string. With
    ``threat_model`` ``"Linf"``/``"L2"``, ``eps`` and ``autoattack_acc`` are required; with ``"corruptions"``
    (``"corruptions_3d"``) :attr:`ModelInfo.extra` must hold ``corruptions_acc`` (and ``corruptions_acc_3d``), the
    numbers the leaderboard sorts by. Extras ``external``, ``corruptions_acc``, ``corruptions_acc_3d`` are percent
    strings when present (``null`` breaks the leaderboard's ``float()``; the ``null`` corruptions fields that
    RobustBench's ``update_json`` writes into Linf and L2 files are accepted there), ``corruptions_mce*`` number
    strings, and
    no extra holds NaN or an infinity. A dataset RobustBench does not list is valid here;
    :func:`write_model_info` warns about it.

    >>> info = ModelInfo(link="https://arxiv.org/abs/1901.08573", name="TRADES", authors="H. Zhang",
    ...                  additional_data=False, number_forward_passes=1, dataset="cifar10", venue="ICML 2019",
    ...                  architecture="WideResNet-34-10", eps="8/255", clean_acc="84.92", autoattack_acc="53.08")
    >>> validate_model_info(info, threat_model="Linf")
    >>> import dataclasses
    >>> validate_model_info(dataclasses.replace(info, clean_acc="90 %"))
    Traceback (most recent call last):
    ...
    ValueError: invalid model_info: clean_acc='90 %' is not a percent string in [0, 100] such as '84.92'
    """
    if not isinstance(info, ModelInfo):
        raise ValueError(f"info of type {type(info).__name__} is not allowed; allowed: ModelInfo")
    problems: list[str] = []
    for name, what in _REQUIRED_FIELDS.items():
        if getattr(info, name) is None:
            problems.append(f"{name} is missing (RobustBench's files and leaderboard code need it): give {what}")
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
        problems.append("dataset is missing: give the dataset such as 'cifar10'")
    elif not isinstance(info.dataset, str) or not _ID_PATTERN.fullmatch(info.dataset) or ".." in info.dataset:
        problems.append(f"dataset={info.dataset!r} is not a dataset name such as 'cifar10'")
    if info.clean_acc is None:
        problems.append("clean_acc is missing: give the clean accuracy in percent such as '84.92'")
    else:
        _check_percent("clean_acc", info.clean_acc, problems)
    if info.autoattack_acc is not None:
        _check_percent("autoattack_acc", info.autoattack_acc, problems)
    if info.reported is not None:
        _check_percent("reported", info.reported, problems, allow_not_reported=True)
    threat = None if threat_model is None else _threat_model_value(threat_model)
    # RobustBench's update_json writes "corruptions_acc": null (and the other corruptions fields) into Linf and L2
    # files; only the corruptions leaderboards read them.
    null_ok = () if threat in ("corruptions", "corruptions_3d") else _CORRUPTIONS_EXTRAS
    for name in _PERCENT_EXTRAS:
        if name in null_ok and name in info.extra and info.extra[name] is None:
            continue
        if name in info.extra and info.extra[name] is None:
            problems.append(
                f"{name}=None is not allowed (RobustBench's leaderboard reads float({name})): give a percent "
                "string such as '52.10' or remove the key"
            )
        elif name in info.extra:
            _check_percent(name, info.extra[name], problems)
    if N_EXAMPLES_KEY in info.extra:
        n = info.extra[N_EXAMPLES_KEY]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            problems.append(f"{N_EXAMPLES_KEY}={n!r} is not a positive int (the number of evaluated test images)")
    for name in _NUMBER_EXTRAS:
        if name in null_ok and name in info.extra and info.extra[name] is None:
            continue
        if name in info.extra and not _is_number_string(info.extra[name]):
            problems.append(f"{name}={info.extra[name]!r} is not a number string such as '62.13'")
    problems.extend(
        f"{hit} is not a finite number (JSON has no NaN or Infinity)"
        for k, v in info.extra.items()
        for hit in _non_finite(v, k)
    )
    if info.eps is not None:
        try:
            parse_eps(info.eps)
        except ValueError as exc:
            problems.append(str(exc))
    if threat in ("Linf", "L2"):
        if info.eps is None:
            problems.append(f"eps is missing (required for threat_model={threat_model!r}): give it such as '8/255'")
        if info.autoattack_acc is None:
            problems.append(
                f"autoattack_acc is missing (required for threat_model={threat_model!r}; RobustBench's leaderboard "
                "sorts by it): give the AutoAttack accuracy in percent such as '53.08'"
            )
    elif threat in ("corruptions", "corruptions_3d"):
        for name in ("corruptions_acc", "corruptions_acc_3d")[: 2 if threat == "corruptions_3d" else 1]:
            if name not in info.extra:
                problems.append(
                    f"{name} is missing (required for threat_model={threat_model!r}; RobustBench's leaderboard "
                    f"sorts by it): put a percent string in info.extra[{name!r}]"
                )
    if problems:
        raise ValueError("invalid model_info: " + "; ".join(problems))


# --------------------------------------------------------------------------------------------------
# files


def _is_number_string(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


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
    ...     p = Path(root) / "M.json"
    ...     _ = p.write_text('{"dataset": "cifar10", "clean_acc": "90.00"}')
    ...     read_model_info(p, validate=False).dataset
    'cifar10'
    """
    path = Path(path)
    info = ModelInfo.from_dict(_read_json_object(path, "path"))
    if validate:
        folder = path.parent.name
        try:
            validate_model_info(info, threat_model=folder if folder in THREAT_MODELS else None)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return info


def _read_json_object(path: Path, label: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{label}={str(path)!r} is not UTF-8 text ({exc}); model_info files are UTF-8 JSON: re-save it as "
            "UTF-8 or point to the right file"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{label}={str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{label}={str(path)!r} does not hold a JSON object")
    return data


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically; a new file gets the umask's mode, an existing one keeps its mode."""
    path.parent.mkdir(parents=True, exist_ok=True)
    mode = stat.S_IMODE(path.stat().st_mode) if path.exists() else None
    tmp = path.with_name(f".{path.name}.{secrets.token_hex(6)}.tmp")
    # 0o666 & ~umask, as open(path, "w") gives; tempfile.mkstemp would create 0o600.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def write_model_info(
    root: str | os.PathLike[str],
    model_id: str,
    info: ModelInfo,
    *,
    threat_model: str | ThreatModel = "Linf",
) -> Path:
    """Write ``root/model_info/<info.dataset>/<threat_model>/<model_id>.json`` as RobustBench does.

    A new file holds :meth:`ModelInfo.to_file_dict` (every field RobustBench's files always hold, None as
    ``null``; unset ``autoattack_acc``/``footnote``/``unreliable`` left out) then :attr:`ModelInfo.extra`, written
    with ``json.dumps(..., indent=2)``. If the file exists, the new non-None values are merged into it and all
    other existing keys are kept, like ``robustbench.utils.update_json`` (a ``null`` ``unreliable`` or
    ``autoattack_acc`` that an older version of this function wrote is dropped). The result is validated with
    :func:`validate_model_info` before anything is written (so a partial ``info`` can update a complete file);
    a dataset RobustBench does not list (``mnist``, ``digits``) is written in the same schema with a warning that
    it cannot be submitted. The file is replaced atomically; a new file gets the mode the umask gives (as any
    ``open(path, "w")``), an existing file keeps its mode.

    Args:
        root: output folder (the parent of ``model_info``).
        model_id: RobustBench-style id such as ``"Zhang2019Theoretically"``; no path separators or ``..``.
        info: the record; ``info.dataset`` picks the folder.
        threat_model: ``"Linf"``, ``"L2"``, ``"corruptions"`` or ``"corruptions_3d"``.

    Returns:
        The path written.

    >>> import tempfile
    >>> info = ModelInfo(link="https://arxiv.org/abs/1901.08573", name="TRADES", authors="H. Zhang",
    ...                  additional_data=False, number_forward_passes=1, dataset="cifar10", venue="ICML 2019",
    ...                  architecture="WideResNet-34-10", eps="8/255", clean_acc="84.92", autoattack_acc="53.08")
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
    content = info.to_file_dict()
    merging = path.exists()
    if merging:
        try:
            existing = _read_json_object(path, "existing file")
        except ValueError as exc:
            raise ValueError(f"cannot merge into {path}: {exc}") from exc
        existing.update({k: v for k, v in content.items() if v is not None})
        content = {k: v for k, v in existing.items() if not (v is None and k in ("autoattack_acc", "unreliable"))}
    try:
        validate_model_info(ModelInfo.from_dict(content), threat_model=threat_model)
        text = _dumps(content)
    except ValueError as exc:
        raise ValueError(f"not writing {path}: {exc}") from None
    if info.dataset not in ROBUSTBENCH_DATASETS:
        warnings.warn(
            f"dataset={info.dataset!r} has no RobustBench leaderboard (allowed: {list(ROBUSTBENCH_DATASETS)}); "
            f"{path} uses RobustBench's schema but cannot be submitted",
            UserWarning,
            stacklevel=2,
        )
    _write_atomic(path, text)
    _logger.info("%s model_info %s", "merged into" if merging else "wrote", path)
    return path


def model_info_from_result(
    result: EvalResult,
    *,
    dataset: str,
    name: str,
    architecture: str,
    link: str = "",
    authors: str = "",
    venue: str = "N/A",
    additional_data: bool = False,
    number_forward_passes: int = 1,
    reported: str | None = None,
    footnote: str | None = None,
    n_test: int | None = None,
) -> ModelInfo:
    """A :class:`ModelInfo` from an :class:`~fire_plugin.evaluation.EvalResult` (clean and AutoAttack accuracy).

    Accuracies become percent strings with two decimals and ``eps`` a fraction string when it is k/255.
    ``name`` (the paper's title or the model's description) and ``architecture`` are required, as in every
    RobustBench file; ``link``, ``authors`` and ``venue`` default to the markers RobustBench's own "Standard"
    entries use for "none" (``""``, ``""`` and ``"N/A"``; ``get_leaderboard_bibtex`` skips a venue of ``"N/A"``).

    The number of evaluated test images is recorded in the extra field ``n_examples``. When it is below the test
    set's size (RobustBench's 10,000 for CIFAR, 5,000 for ImageNet; ``n_test``, the size of the test split, for
    other datasets), the footnote says so: such a file is not a leaderboard result.

    >>> from fire_plugin.evaluation import EvalResult
    >>> r = EvalResult(n_examples=100, eps=8 / 255, norm="Linf", clean_acc=0.9, autoattack_acc=0.5)
    >>> info = model_info_from_result(r, dataset="cifar10", name="FIRE", architecture="WideResNet-34-10")
    >>> info.eps, info.clean_acc, info.autoattack_acc, info.venue
    ('8/255', '90.00', '50.00', 'N/A')
    >>> info.extra, info.footnote.split(":")[0]
    ({'n_examples': 100}, 'Evaluated on the first 100 of the 10,000 test images RobustBench evaluates')
    """
    given = {"name": name, "architecture": architecture, "link": link, "authors": authors, "venue": venue}
    for label, value in given.items():
        if not isinstance(value, str):
            raise ValueError(
                f"{label}={value!r} is not allowed; allowed: a string ({_REQUIRED_FIELDS[label]}); RobustBench's "
                "leaderboard code cannot read a null there"
            )
    if result.clean_acc is None:
        raise ValueError("result.clean_acc is None; evaluate with attacks including 'clean'")
    version = getattr(result, "autoattack_version", None)
    if result.autoattack_acc is not None and version not in (None, "standard"):
        warnings.warn(
            f"autoattack_acc comes from AutoAttack {version!r}, not 'standard': RobustBench does not accept it",
            UserWarning,
            stacklevel=2,
        )
    if n_test is not None and (isinstance(n_test, bool) or not isinstance(n_test, int) or n_test < 1):
        raise ValueError(f"n_test={n_test!r} is not allowed; allowed: the size of the test split, a positive int")
    n = result.n_examples
    full = ROBUSTBENCH_TEST_SIZES.get(dataset, n_test)
    if full is not None and n < full:
        where = " RobustBench evaluates: not a leaderboard result" if dataset in ROBUSTBENCH_TEST_SIZES else ""
        sentence = f"Evaluated on the first {n} of the {full:,} test images{where}."
        footnote = sentence if not footnote else f"{footnote.rstrip()} {sentence}"
    info = ModelInfo(
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
    info.extra[N_EXAMPLES_KEY] = n
    return info


def subset_of(info: ModelInfo) -> tuple[int, int] | None:
    """``(n_examples, full)`` when ``info`` records fewer evaluated images than RobustBench's test set, else None.

    ``full`` is :data:`ROBUSTBENCH_TEST_SIZES` of the dataset. A file without the ``n_examples`` field (every
    RobustBench file) or of another dataset gives None.

    >>> subset_of(ModelInfo.from_dict({"dataset": "cifar10", "n_examples": 10}))
    (10, 10000)
    >>> subset_of(ModelInfo.from_dict({"dataset": "cifar10"})) is None
    True
    """
    n = info.extra.get(N_EXAMPLES_KEY)
    full = ROBUSTBENCH_TEST_SIZES.get(info.dataset) if isinstance(info.dataset, str) else None
    if full is None or isinstance(n, bool) or not isinstance(n, int) or n >= full:
        return None
    return n, full

"""The ``model_info`` schema: RobustBench's datasets and threat models, :class:`ModelInfo` with exactly the fields of
RobustBench's files, the percent and eps formats, and a :class:`ModelInfo` built from an evaluation.

>>> ModelInfo(dataset="cifar10", eps=format_eps(8 / 255), clean_acc=format_accuracy(0.8492)).to_file_dict()["eps"]
'8/255'
"""

from __future__ import annotations

import json
import math
import re
import warnings
from collections.abc import Mapping
from dataclasses import asdict, dataclass, fields
from enum import Enum
from fractions import Fraction
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from fire_plugin.evaluation import EvalResult

__all__ = [
    "DEMO_VENUE",
    "MODEL_INFO_FIELDS",
    "N_EXAMPLES_KEY",
    "PRESET_VENUE",
    "ROBUSTBENCH_DATASETS",
    "ROBUSTBENCH_TEST_SIZES",
    "THREAT_MODELS",
    "BenchmarkDataset",
    "ModelInfo",
    "ThreatModel",
    "format_accuracy",
    "format_eps",
    "model_info_from_result",
    "parse_eps",
    "subset_of",
]


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
# formatting: percent strings, eps, JSON


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


# --------------------------------------------------------------------------------------------------
# from an evaluation


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

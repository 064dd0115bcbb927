"""Place a RobustBench ``model_info`` file among RobustBench's leaderboard entries.

The entries come from a snapshot of RobustBench's ``model_info/`` folder shipped with the package
(``fire_plugin/leaderboard_data``, MIT-licensed data of the RobustBench repository; its README names the commit), or
from a RobustBench checkout given as ``entries_dir``. Only the AutoAttack leaderboards (threat models ``Linf`` and
``L2``) are ranked; the ``corruptions`` folders are not.

Ranking follows RobustBench's leaderboard code (``robustbench.leaderboard.template``): the robust accuracy of an entry
is its ``external`` field when the file has one (an evaluation stronger than AutoAttack, possibly adaptive), else its
``autoattack_acc``; higher is better. RobustBench itself leaves ties in file order; here they are broken by clean
accuracy (higher first), then by model id, so that the order is reproducible. Ranks are competition ranks: entries
equal in both robust and clean accuracy share a rank ("1, 2, 2, 4").

Impossible files are refused or flagged, never ranked silently: a placed file whose AutoAttack (or ``external``)
accuracy is above its clean accuracy, or whose ``dataset`` field disagrees with the folder it sits in
(``model_info/<dataset>/<threat_model>/``), is refused; such leaderboard entries (RobustBench's
``cifar100/Linf/Hendrycks2019Using.json`` says ``"cifar10"``) are ranked by their folder and named in the notes. A file
evaluated on fewer test images than RobustBench's 10,000 (its ``n_examples`` field, see
:func:`fire_plugin.robustbench_io.subset_of`) is ranked with a note and a warning that the rank is not comparable.

>>> placement = place_info(ModelInfo(dataset="cifar10", eps="8/255", clean_acc="84.92", autoattack_acc="53.08"),
...                        threat_model="Linf")
>>> placement.rank > 1, placement.n_entries
(True, 99)
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from fire_plugin.robustbench_io import THREAT_MODELS, ModelInfo, parse_eps, read_model_info, subset_of
from fire_plugin.runfolder import atomic_write_text

__all__ = [
    "AA_THREAT_MODELS",
    "SNAPSHOT_DIR",
    "LeaderboardEntry",
    "Placement",
    "load_entries",
    "place",
    "place_info",
    "snapshot_source",
    "supported_leaderboards",
    "write_placement",
]

_logger = logging.getLogger(__name__)

#: The shipped snapshot: ``SNAPSHOT_DIR / "model_info" / <dataset> / <threat_model> / <model_id>.json``.
SNAPSHOT_DIR: Path = Path(__file__).resolve().parent / "leaderboard_data"
#: Threat models ranked by AutoAttack accuracy (RobustBench's ``corruptions`` leaderboards are not).
AA_THREAT_MODELS: tuple[str, ...] = ("Linf", "L2")
_EPS_RTOL = 0.02  # 0.031 (some CIFAR-10 entries) and 8/255 = 0.03137 differ by 1.2%: the same leaderboard


@dataclass(frozen=True)
class LeaderboardEntry:
    """One leaderboard row. Accuracies are percents (``84.92``), as in RobustBench's files.

    Attributes:
        model_id: file name without ``.json`` (RobustBench's model id).
        robust_acc: the ranking key, ``external`` when the file has it, else ``autoattack_acc``.
        autoattack_acc: AutoAttack accuracy as listed.
        external: accuracy under RobustBench's external (stronger) evaluation, or None.
        clean_acc: clean accuracy.
        unreliable: RobustBench's flag; False when the file has no ``unreliable`` field.
        problems: what is impossible about the file (AutoAttack above clean, a ``dataset`` field that disagrees
            with its folder); empty for a sound entry.
        rank: competition rank in the list it belongs to (entries only, or entries plus the placed model).
    """

    model_id: str
    robust_acc: float
    autoattack_acc: float
    clean_acc: float
    external: float | None = None
    unreliable: bool = False
    name: str | None = None
    architecture: str | None = None
    venue: str | None = None
    link: str | None = None
    eps: str | float | None = None
    additional_data: bool | None = None
    problems: tuple[str, ...] = ()
    rank: int = 0

    @property
    def sort_key(self) -> tuple[float, float, str]:
        """Ascending sort key of the leaderboard order (best first)."""
        return (-self.robust_acc, -self.clean_acc, self.model_id)

    def ahead_of(self, other: LeaderboardEntry) -> bool:
        """Strictly better: higher robust accuracy, or equal robust and higher clean accuracy."""
        return (self.robust_acc, self.clean_acc) > (other.robust_acc, other.clean_acc)


@dataclass
class Placement:
    """Where a model lands on a RobustBench leaderboard.

    Attributes:
        dataset, threat_model: the leaderboard.
        model: the placed model as a :class:`LeaderboardEntry` (its ``rank`` is :attr:`rank`).
        rank: 1-based competition rank among the entries plus the model.
        n_entries: number of leaderboard entries (the model not counted).
        above: up to ``neighbours`` entries strictly ahead of the model, best first (the last one is just above).
        tied: entries with exactly the model's robust and clean accuracy (they share its rank).
        below: up to ``neighbours`` entries strictly behind, best first (the first one is just below).
        entries: every entry, ranked together with the model (the model itself is not in the list).
        source: where the entries came from.
        notes: caveats (eps differs from the leaderboard's, unreliable flag, a replaced entry, ...).
    """

    dataset: str
    threat_model: str
    model: LeaderboardEntry
    rank: int
    n_entries: int
    above: list[LeaderboardEntry]
    tied: list[LeaderboardEntry]
    below: list[LeaderboardEntry]
    entries: list[LeaderboardEntry]
    source: str
    notes: list[str] = field(default_factory=list)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary: the leaderboard, the model, its rank and its neighbours (not all entries)."""
        return {
            "dataset": self.dataset,
            "threat_model": self.threat_model,
            "rank": self.rank,
            "n_entries": self.n_entries,
            "model": asdict(self.model),
            "above": [asdict(e) for e in self.above],
            "tied": [asdict(e) for e in self.tied],
            "below": [asdict(e) for e in self.below],
            "source": self.source,
            "notes": list(self.notes),
        }

    def to_markdown(self) -> str:
        """A markdown paragraph and table: the entries around the model, the model row in bold.

        >>> p = place_info(ModelInfo(dataset="cifar10", eps="0.5", clean_acc="90.00", autoattack_acc="70.00"),
        ...                threat_model="L2")
        >>> "| **" in p.to_markdown()
        True
        """
        title = self.model.name or self.model.model_id
        lines = [
            f"**{title}** ranks **#{self.rank} of {self.n_entries + 1}** on the RobustBench {self.dataset} "
            f"{self.threat_model} leaderboard (robust accuracy: `external` where RobustBench lists it, else "
            f"AutoAttack; ties by clean accuracy).",
            "",
            "| rank | model | clean (%) | robust (%) | AutoAttack (%) | architecture | venue |",
            "|---:|---|---:|---:|---:|---|---|",
        ]

        def row(e: LeaderboardEntry, bold: bool = False) -> str:
            flag = (" (unreliable)" if e.unreliable else "") + (" (flagged: see the notes)" if e.problems else "")
            cells = [str(e.rank), f"{e.model_id}{flag}", f"{e.clean_acc:.2f}", f"{e.robust_acc:.2f}",
                     f"{e.autoattack_acc:.2f}", e.architecture or "", e.venue or ""]
            if bold:
                cells = [f"**{c}**" if c else c for c in cells]
            return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"

        lines += [row(e) for e in self.above]
        lines.append(row(self.model, bold=True))
        lines += [row(e) for e in self.tied]
        lines += [row(e) for e in self.below]
        lines += ["", f"Entries: {self.source}."]
        lines += [f"Note: {n}" for n in self.notes]
        return "\n".join(lines) + "\n"


# --------------------------------------------------------------------------------------------------
# entries


def snapshot_source() -> dict[str, Any]:
    """Repository, commit, date and license of the shipped snapshot (``leaderboard_data/SOURCE.json``).

    >>> snapshot_source()["license"]
    'MIT'
    """
    return json.loads((SNAPSHOT_DIR / "SOURCE.json").read_text(encoding="utf-8"))


def _model_info_root(entries_dir: str | os.PathLike[str] | None) -> Path:
    if entries_dir is None:
        return SNAPSHOT_DIR / "model_info"
    root = Path(entries_dir)
    if (root / "model_info").is_dir():  # the root of a RobustBench checkout
        root = root / "model_info"
    if not root.is_dir():
        raise ValueError(f"entries_dir={str(entries_dir)!r} is not a folder; allowed: RobustBench's model_info "
                         "folder (holding <dataset>/<threat_model>/*.json) or a checkout that contains it")
    return root


def supported_leaderboards(entries_dir: str | os.PathLike[str] | None = None) -> dict[str, list[str]]:
    """``{dataset: [threat models]}`` with AutoAttack entries in the snapshot (or in ``entries_dir``).

    >>> supported_leaderboards()
    {'cifar10': ['L2', 'Linf'], 'cifar100': ['Linf'], 'imagenet': ['Linf']}
    """
    root = _model_info_root(entries_dir)
    out: dict[str, list[str]] = {}
    for dataset_dir in sorted(p for p in root.iterdir() if p.is_dir()):
        tms = sorted(tm for tm in AA_THREAT_MODELS if any((dataset_dir / tm).glob("*.json")))
        if tms:
            out[dataset_dir.name] = tms
    return out


def _describe(supported: dict[str, list[str]]) -> str:
    return ", ".join(f"{d} ({', '.join(t)})" for d, t in supported.items())


def _percent(value: Any, key: str, where: str) -> float:
    """A percent field as float; RobustBench writes strings ("84.92"), numbers are accepted too."""
    try:
        if isinstance(value, bool):
            raise TypeError
        out = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{where}: {key}={value!r} is not a percent such as '84.92'") from None
    if not math.isfinite(out) or not 0.0 <= out <= 100.0:
        raise ValueError(f"{where}: {key}={value!r} is not a percent in [0, 100]")
    return out


def _entry(info: ModelInfo, model_id: str, where: str, *, folder_dataset: str | None = None) -> LeaderboardEntry:
    if info.autoattack_acc is None:
        raise ValueError(f"{where}: autoattack_acc is missing; a leaderboard place needs the AutoAttack accuracy")
    if info.clean_acc is None:
        raise ValueError(f"{where}: clean_acc is missing")
    aa = _percent(info.autoattack_acc, "autoattack_acc", where)
    raw_external = info.extra.get("external")
    external = None if raw_external in (None, "") else _percent(raw_external, "external", where)
    clean = _percent(info.clean_acc, "clean_acc", where)
    problems = []
    for label, value in (("autoattack_acc", aa), ("external", external)):
        if value is not None and value > clean:
            problems.append(f"{label} {value:.2f} is above clean_acc {clean:.2f} (a robust accuracy cannot exceed "
                            "the clean accuracy on the same images)")
    if folder_dataset is not None and info.dataset is not None and info.dataset != folder_dataset:
        problems.append(f"its dataset field says {info.dataset!r} but it sits in the {folder_dataset!r} folder")
    return LeaderboardEntry(
        model_id=model_id,
        robust_acc=aa if external is None else external,
        autoattack_acc=aa,
        clean_acc=clean,
        external=external,
        unreliable=bool(info.unreliable),
        name=info.name,
        architecture=info.architecture,
        venue=info.venue,
        link=info.link,
        eps=info.eps,
        additional_data=info.additional_data,
        problems=tuple(problems),
    )


def _with_ranks(ordered: list[LeaderboardEntry]) -> list[LeaderboardEntry]:
    """Competition ranks of a list sorted best first."""
    out: list[LeaderboardEntry] = []
    for i, e in enumerate(ordered):
        tie = i > 0 and not ordered[i - 1].ahead_of(e)
        out.append(replace(e, rank=out[-1].rank if tie else i + 1))
    return out


def load_entries(
    dataset: str, threat_model: str = "Linf", *, entries_dir: str | os.PathLike[str] | None = None
) -> list[LeaderboardEntry]:
    """RobustBench's entries of one AutoAttack leaderboard, ranked (best first).

    Args:
        dataset: ``"cifar10"``, ``"cifar100"`` or ``"imagenet"`` (whatever the entries folder holds).
        threat_model: ``"Linf"`` or ``"L2"``.
        entries_dir: RobustBench's ``model_info`` folder (or a checkout holding it); default: the shipped snapshot.

    The folder, not the file's ``dataset`` field, decides the leaderboard (RobustBench's
    ``cifar100/Linf/Hendrycks2019Using.json`` says ``"cifar10"``); such an entry, and one whose AutoAttack accuracy
    is above its clean accuracy, keeps its place and lists what is wrong in :attr:`LeaderboardEntry.problems`.

    >>> top = load_entries("cifar10", "Linf")[0]
    >>> top.rank, top.robust_acc >= 70
    (1, True)
    """
    supported = supported_leaderboards(entries_dir)
    if threat_model not in AA_THREAT_MODELS:
        raise ValueError(f"threat_model={threat_model!r} is not allowed; allowed: {list(AA_THREAT_MODELS)} "
                         "(corruptions leaderboards are not ranked by AutoAttack)")
    if dataset not in supported or threat_model not in supported[dataset]:
        raise ValueError(f"dataset={dataset!r} with threat_model={threat_model!r} has no RobustBench leaderboard "
                         f"here; supported: {_describe(supported)}")
    folder = _model_info_root(entries_dir) / dataset / threat_model
    entries = []
    for path in sorted(folder.glob("*.json")):
        info = read_model_info(path, validate=False)
        entry = _entry(info, path.stem, str(path), folder_dataset=dataset)
        if entry.problems:
            _logger.debug("%s: %s; ranked by its folder %r", path, "; ".join(entry.problems), dataset)
        entries.append(entry)
    return _with_ranks(sorted(entries, key=lambda e: e.sort_key))


# --------------------------------------------------------------------------------------------------
# placement


def _threat_model_of(path: Path, threat_model: str | None) -> str:
    if threat_model is None:
        folder = path.parent.name
        if folder in AA_THREAT_MODELS or folder.startswith("corruptions"):
            threat_model = folder
        else:
            raise ValueError(f"threat_model=None and the folder of {path} ({folder!r}) is not a threat model; "
                             f"pass threat_model, one of {list(AA_THREAT_MODELS)}")
    if threat_model not in AA_THREAT_MODELS:
        raise ValueError(f"threat_model={threat_model!r} is not allowed; allowed: {list(AA_THREAT_MODELS)} "
                         "(corruptions leaderboards are not ranked by AutoAttack)")
    return threat_model


def place(
    model_info_path: str | os.PathLike[str],
    *,
    entries_dir: str | os.PathLike[str] | None = None,
    threat_model: str | None = None,
    neighbours: int = 3,
) -> Placement:
    """Rank a ``model_info`` JSON file among RobustBench's entries of its dataset and threat model.

    Args:
        model_info_path: the file (ours from :func:`fire_plugin.robustbench_io.write_model_info`, or RobustBench's).
        entries_dir: RobustBench's ``model_info`` folder or a checkout holding it; default: the shipped snapshot.
        threat_model: ``"Linf"`` or ``"L2"``; default: the file's folder name (RobustBench's layout
            ``model_info/<dataset>/<threat_model>/<id>.json``).
        neighbours: how many entries above and below to report.

    Returns:
        A :class:`Placement`. If the leaderboard already holds an entry with the file's id and the same accuracies
        (the file is a leaderboard entry), that entry is left out so the model is not ranked against itself.

    Raises:
        ValueError: a dataset without a leaderboard (``digits``, ``mnist``), a corruptions threat model, a file
            without ``autoattack_acc``, a file whose AutoAttack (or ``external``) accuracy is above its clean
            accuracy, a file whose ``dataset`` field disagrees with its folder.

    >>> import tempfile
    >>> from fire_plugin.robustbench_io import write_model_info
    >>> info = ModelInfo(link="", name="Mine", authors="", additional_data=False, number_forward_passes=1,
    ...                  venue="N/A", architecture="RN-18", dataset="cifar10", eps="8/255", clean_acc="86.00",
    ...                  autoattack_acc="60.00")
    >>> with tempfile.TemporaryDirectory() as root:
    ...     p = place(write_model_info(root, "Mine", info))
    >>> p.above[-1].robust_acc > 60 > p.below[0].robust_acc
    True
    """
    path = Path(model_info_path)
    info = read_model_info(path, validate=False)
    if path.parent.name in THREAT_MODELS and info.dataset != path.parent.parent.name:
        raise ValueError(f"{path}: its dataset field says {info.dataset!r} but it sits in the folder "
                         f"{path.parent.parent.name!r} (model_info/<dataset>/<threat_model>/): fix the field or move "
                         "the file, then place it again")
    return place_info(info, threat_model=_threat_model_of(path, threat_model), entries_dir=entries_dir,
                      neighbours=neighbours, model_id=path.stem)


def place_info(
    info: ModelInfo,
    *,
    threat_model: str,
    entries_dir: str | os.PathLike[str] | None = None,
    neighbours: int = 3,
    model_id: str = "this model",
) -> Placement:
    """:func:`place` for a :class:`~fire_plugin.robustbench_io.ModelInfo` already in memory.

    >>> p = place_info(ModelInfo(dataset="cifar10", eps="8/255", clean_acc="99.00", autoattack_acc="99.00"),
    ...                threat_model="Linf")
    >>> p.rank, p.above
    (1, [])
    """
    if isinstance(neighbours, bool) or not isinstance(neighbours, int) or neighbours < 0:
        raise ValueError(f"neighbours={neighbours!r} is not allowed; allowed: an int >= 0")
    supported = supported_leaderboards(entries_dir)
    dataset = info.dataset
    if dataset not in supported:
        raise ValueError(f"dataset={dataset!r} has no RobustBench leaderboard; supported: {_describe(supported)}")
    if threat_model not in AA_THREAT_MODELS:
        raise ValueError(f"threat_model={threat_model!r} is not allowed; allowed: {list(AA_THREAT_MODELS)} "
                         "(corruptions leaderboards are not ranked by AutoAttack)")
    entries = load_entries(dataset, threat_model, entries_dir=entries_dir)
    model = _entry(info, model_id, f"model {model_id!r}")
    if model.problems:
        raise ValueError(f"model {model_id!r} cannot be ranked: {'; '.join(model.problems)}; check the file")
    notes: list[str] = []

    same = [e for e in entries if e.model_id == model_id]
    if same and (same[0].robust_acc, same[0].clean_acc) == (model.robust_acc, model.clean_acc):
        entries = _with_ranks([e for e in entries if e.model_id != model_id])
        notes.append(f"the leaderboard entry {model_id!r} is the placed file itself and was left out")
    elif same:
        notes.append(f"the leaderboard also has an entry named {model_id!r} (different accuracies)")

    notes.extend(_eps_notes(info.eps, entries, dataset, threat_model))
    subset = subset_of(info)
    if subset is not None:
        message = (f"the placed file was evaluated on {subset[0]:,} test images, not the {subset[1]:,} RobustBench "
                   "evaluates: its rank is not comparable with the entries'")
        warnings.warn(message, UserWarning, stacklevel=2)
        notes.append(message)
    flagged = [e for e in entries if e.problems]
    if flagged:
        notes.append("entries ranked by their folder although their files look wrong: "
                     + "; ".join(f"{e.model_id}: {', '.join(e.problems)}" for e in flagged))
    if model.unreliable:
        notes.append("the placed file is flagged unreliable")
    if model.external is not None:
        notes.append(f"ranked by its external evaluation {model.external:.2f}, not AutoAttack "
                     f"{model.autoattack_acc:.2f}, as RobustBench does")

    ahead = [e for e in entries if e.ahead_of(model)]
    tied = [e for e in entries if not e.ahead_of(model) and not model.ahead_of(e)]
    behind = [e for e in entries if model.ahead_of(e)]
    # rank the entries with the model among them (it sits before its ties, which share its rank)
    ranked_entries = _with_ranks([*ahead, model, *tied, *behind])
    model = ranked_entries.pop(len(ahead))
    rank = model.rank
    ahead_r = ranked_entries[: len(ahead)]
    tied_r = ranked_entries[len(ahead): len(ahead) + len(tied)]
    behind_r = ranked_entries[len(ahead) + len(tied):]
    placement = Placement(
        dataset=dataset,
        threat_model=threat_model,
        model=model,
        rank=rank,
        n_entries=len(entries),
        above=ahead_r[len(ahead_r) - neighbours:] if neighbours else [],
        tied=tied_r,
        below=behind_r[:neighbours],
        entries=ranked_entries,
        source=_source_text(entries_dir),
        notes=notes,
    )
    _logger.info("placed %s at #%d of %d on %s %s", model_id, rank, len(entries) + 1, dataset, threat_model)
    return placement


def _eps_notes(eps: str | float | None, entries: list[LeaderboardEntry], dataset: str, threat_model: str) -> list[str]:
    values = []
    for e in entries:
        try:
            values.append(parse_eps(e.eps if e.eps is not None else ""))
        except ValueError:
            continue
    if not values:
        return []
    usual_value, _ = Counter(round(v, 6) for v in values).most_common(1)[0]
    usual = next(e.eps for e in entries if e.eps is not None and _eps_value(e.eps) == usual_value)
    if eps is None:
        return [f"the placed file has no eps; the {dataset} {threat_model} leaderboard uses eps={usual}"]
    try:
        value = parse_eps(eps)
    except ValueError:
        raise ValueError(f"the placed file has eps={eps!r}; allowed: a number or fraction such as '8/255'") from None
    if abs(value - usual_value) > _EPS_RTOL * usual_value:
        message = (f"the placed file has eps={eps} but the {dataset} {threat_model} leaderboard uses eps={usual}: "
                   "the accuracies are not comparable")
        warnings.warn(message, UserWarning, stacklevel=3)
        return [message]
    return []


def _eps_value(eps: str | float) -> float | None:
    try:
        return round(parse_eps(eps), 6)
    except ValueError:
        return None


def _source_text(entries_dir: str | os.PathLike[str] | None) -> str:
    if entries_dir is not None:
        return f"RobustBench model_info files in {entries_dir}"
    src = snapshot_source()
    return (f"snapshot of RobustBench's model_info ({src['repository']} at commit {src['commit'][:10]}, "
            f"{src['date'][:10]}, MIT license)")


def write_placement(
    placement: Placement, out_dir: str | os.PathLike[str], *, stem: str = "placement"
) -> dict[str, Path]:
    """Write ``<stem>.md`` (the markdown table) and ``<stem>.json`` (:meth:`Placement.to_dict`) into ``out_dir``
    (each replaced atomically).

    The figure is :func:`fire_plugin.plots.plot_leaderboard`; save it next to them as ``<stem>.png``.

    >>> import tempfile
    >>> p = place_info(ModelInfo(dataset="cifar10", eps="8/255", clean_acc="80.00", autoattack_acc="50.00"),
    ...                threat_model="Linf")
    >>> with tempfile.TemporaryDirectory() as d:
    ...     sorted(path.name for path in write_placement(p, d).values())
    ['placement.json', 'placement.md']
    """
    if not stem or "/" in stem or "\\" in stem or ".." in stem:
        raise ValueError(f"stem={stem!r} is not allowed; allowed: a file name without path separators or '..'")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    paths = {"markdown": out / f"{stem}.md", "json": out / f"{stem}.json"}
    atomic_write_text(paths["markdown"], placement.to_markdown())
    atomic_write_text(paths["json"], json.dumps(placement.to_dict(), indent=2) + "\n")
    return paths

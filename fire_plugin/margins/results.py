"""The margin tracer's result (:class:`MarginResult`), its modes, statuses and defaults, and the half-step
verdict on a subsample of its paths."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from fire_plugin.runfolder import atomic_path, atomic_write_text

_logger = logging.getLogger(__name__)

STATUSES: tuple[str, ...] = ("flipped", "max_length", "max_steps", "stalled", "nonfinite", "misclassified")
"""Why a path ended: the prediction changed; the FR length reached ``max_length``; ``max_steps`` steps were taken;
``L_k`` stopped decreasing for ``_STALL_PATIENCE`` consecutive steps (e.g. pinned against the input box); the model
or the solve produced a non-finite value; the input was misclassified to begin with (not traced, margin 0)."""
_SCHEMA = "fire_plugin.margins/2"
_SCHEMA_V1 = "fire_plugin.margins/1"
MODES: tuple[str, ...] = ("converged", "paper")
"""``"converged"``: FR length of steps of ``step`` (default :data:`DEFAULT_STEP`), last step bisected;
``"paper"``: the paper's algorithm as printed, unit steps counted, no bisection."""
DEFAULT_STEP = 0.05
"""Step of ``"converged"`` mode, chosen by the convergence study of docs/margins.md: on CE, TRADES and FIRE digits
models, the largest step at which halving it changed the shielding % by less than 1 point and the mean margin by
less than 1% (with ``DEFAULT_DAMPING``; 0.1 changed CE's mean margin by 1.9%)."""
DEFAULT_DAMPING = 0.1
"""Damping of the metric ``G_x + damping I``: with 0.1 the margins converge from step 0.05 on (all three digits
models), with 1e-3 only from 0.02 (2.5x the steps) for margins about 3% shorter (docs/margins.md)."""
_CHECK_FRACTION = 0.1  # the half-step check retraces every 10th path: measured 1.44x the cost of the trace alone
_CHECK_SHIELDING_POINTS = 1.0  # converged: halving the step changes shielding % by less than 1 point ...
_CHECK_MARGIN_REL = 0.01  # ... and the mean margin by less than 1%


# --------------------------------------------------------------------------------------------------
# results


_COLUMNS = ("index", "source", "target", "flipped", "first_class", "shielded", "margin", "fr_length", "l2", "linf",
            "steps", "status")


@dataclass
class MarginResult:
    """One row per traced (input, target) path; arrays of length ``P``.

    Attributes:
        index: input index of the path (row of ``x``).
        source: the input's label ``y`` (the class the path starts in).
        target: the target class ``k``.
        flipped: the predicted class changed within the budget.
        first_class: the class first reached (the class at the end of the path: the source when not flipped).
        shielded: flipped, and the first class reached is not the target.
        fr_length: traced Fisher-Rao length (sum of closed-form FR distances between successive predictions), in
            both modes.
        margin: the mode's margin of the path: ``fr_length`` in ``"converged"`` mode; in ``"paper"`` mode the
            paper's count, ``step`` times the number of steps taken (the number of steps at the paper's unit
            steps). Defaults to ``fr_length`` when not given.
        l2: ``||x_end - x||_2``.
        linf: ``||x_end - x||_inf``.
        steps: natural-gradient steps taken (the bisected last step counts as one).
        status: one of :data:`STATUSES`.
        num_classes: number of classes ``m`` of the model.
        n_inputs: number of inputs traced.
        damping, step, clamp, solver, max_length, max_steps, mode: the settings; ``clamp`` is the input box
            ``(low, high)`` every point of every path was clamped to, or None (unconstrained).
        convergence: the half-step check of :func:`trace_margins` (``check_convergence=True``): a dict with
            ``converged`` (bool), the shielding % and mean margin at ``step`` and ``step / 2`` on a subsample of
            the paths, and their changes; None when not checked.
        x_end: end points ``(P, ...)`` when traced with ``return_paths=True``, else None.

    >>> r = MarginResult.empty(num_classes=3)
    >>> len(r)
    0
    """

    index: np.ndarray
    source: np.ndarray
    target: np.ndarray
    flipped: np.ndarray
    first_class: np.ndarray
    shielded: np.ndarray
    fr_length: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    steps: np.ndarray
    status: np.ndarray
    num_classes: int
    n_inputs: int = 0
    damping: float = 1e-3
    step: float = 0.1
    clamp: tuple[float, float] | None = (0.0, 1.0)
    solver: str = "exact"
    max_length: float = 20.0
    max_steps: int = 1000
    mode: str = "converged"
    margin: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]  # None: fr_length
    convergence: dict[str, Any] | None = None
    x_end: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not allowed; allowed: {list(MODES)}")
        if self.margin is None:
            self.margin = np.asarray(self.fr_length, dtype=np.float64).copy()
        n = len(self.index)
        for name in _COLUMNS:
            if len(getattr(self, name)) != n:
                raise ValueError(f"MarginResult.{name} has {len(getattr(self, name))} rows; allowed: {n} (as index)")

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def empty(cls, num_classes: int, **settings: Any) -> MarginResult:
        """A result without paths."""
        ints = np.zeros(0, dtype=np.int64)
        return cls(
            index=ints, source=ints, target=ints, flipped=np.zeros(0, bool), first_class=ints,
            shielded=np.zeros(0, bool), fr_length=np.zeros(0), l2=np.zeros(0), linf=np.zeros(0), steps=ints,
            status=np.zeros(0, dtype="<U13"), num_classes=num_classes, **settings,
        )

    def settings(self) -> dict[str, Any]:
        """The scalar settings, JSON-ready."""
        return {
            "num_classes": self.num_classes, "n_inputs": self.n_inputs, "damping": self.damping, "step": self.step,
            "clamp": list(self.clamp) if self.clamp is not None else None, "solver": self.solver,
            "max_length": self.max_length, "max_steps": self.max_steps, "mode": self.mode,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"schema", "settings", "paths": {column: list}}`` (without ``x_end``)."""
        paths: dict[str, list[Any]] = {}
        for name in _COLUMNS:
            paths[name] = getattr(self, name).tolist()
        return {"schema": _SCHEMA, "settings": self.settings(), "convergence": self.convergence, "paths": paths}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MarginResult:
        """Inverse of :meth:`to_dict`."""
        if data.get("schema") not in (_SCHEMA, _SCHEMA_V1):
            raise ValueError(f"schema={data.get('schema')!r} is not allowed; allowed: {_SCHEMA!r} or {_SCHEMA_V1!r}")
        paths = dict(data["paths"])
        paths.setdefault("margin", paths["fr_length"])  # schema 1: converged mode only, margin = FR length
        dtypes: dict[str, Any] = {"flipped": bool, "shielded": bool, "fr_length": np.float64, "l2": np.float64,
                                  "linf": np.float64, "margin": np.float64, "status": "<U13"}
        columns: dict[str, Any] = {k: np.asarray(paths[k], dtype=dtypes.get(k, np.int64)) for k in _COLUMNS}
        settings = dict(data["settings"])
        settings["convergence"] = data.get("convergence")
        if settings.get("clamp") is not None:
            settings["clamp"] = tuple(settings["clamp"])
        return cls(**columns, **settings)

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON (replaced atomically); returns the path."""
        return atomic_write_text(path, json.dumps(self.to_dict(), indent=2))

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> MarginResult:
        """Read a file written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per path with the columns ``index, source, target, flipped, first_class, shielded, margin,
        fr_length, l2, linf, steps, status`` (replaced atomically); returns the path."""
        with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(_COLUMNS)
            for row in zip(*(getattr(self, name).tolist() for name in _COLUMNS), strict=True):
                writer.writerow([f"{v:.9g}" if isinstance(v, float) else v for v in row])
        return Path(path)

    def input_margins(self) -> np.ndarray:
        """Per input, the smallest margin (:attr:`margin`, the mode's) over its flipped paths: 0 for a
        misclassified input, ``inf`` when it had paths and none flipped within the budget, NaN when it had no path
        at all (a ``targets`` list holding only its own label). Shape ``(n_inputs,)``."""
        margins = np.full(self.n_inputs, np.nan)
        margins[self.index] = np.inf
        for i, value in zip(self.index[self.flipped], self.margin[self.flipped], strict=True):
            margins[i] = min(margins[i], value)
        margins[self.index[self.status == "misclassified"]] = 0.0
        return margins

    def input_margin_paths(self) -> np.ndarray:
        """Per input, the row of the flipped path realizing its margin (:meth:`input_margins`), -1 when none."""
        best = np.full(self.n_inputs, -1, dtype=np.int64)
        for row in np.nonzero(self.flipped)[0]:
            i = self.index[row]
            if best[i] < 0 or self.margin[row] < self.margin[best[i]]:
                best[i] = row
        return best


def _subsample_stats(result: MarginResult) -> tuple[float, float, int]:
    """Shielding % and mean margin of the flipped paths of ``result``, and their number."""
    n_flipped = int(result.flipped.sum())
    if n_flipped == 0:
        return float("nan"), float("nan"), 0
    return (100.0 * float(result.shielded.sum()) / n_flipped, float(result.margin[result.flipped].mean()),
            n_flipped)


def _compare_half_step(result: MarginResult, sel: np.ndarray, half: MarginResult, seconds: float) -> dict[str, Any]:
    """The check's verdict from the paths ``sel`` of ``result`` and the same paths ``half`` traced at step / 2."""
    out: dict[str, Any] = {"step": result.step, "half_step": result.step / 2, "n_paths": len(sel), "converged": None,
                           "tolerance": {"shielding_points": _CHECK_SHIELDING_POINTS,
                                         "margin_rel": _CHECK_MARGIN_REL}}
    if len(sel) == 0:
        return out | {"note": "no path was traced (no input classified correctly)"}
    coarse = _subset(result, sel)
    pct, mean, n_fl = _subsample_stats(coarse)
    pct_h, mean_h, n_fl_h = _subsample_stats(half)
    d_points = abs(pct_h - pct)
    d_rel = abs(mean_h - mean) / abs(mean_h) if mean_h else float("inf")
    agree = float(np.mean(coarse.first_class == half.first_class))
    converged = bool(d_points < _CHECK_SHIELDING_POINTS and d_rel < _CHECK_MARGIN_REL and n_fl == n_fl_h)
    out |= {"flipped": n_fl, "flipped_half": n_fl_h, "shielding_pct": pct,
            "shielding_pct_half": pct_h, "mean_margin": mean, "mean_margin_half": mean_h,
            "shielding_change_points": d_points, "mean_margin_rel_change": d_rel,
            "first_class_agreement": agree, "converged": converged, "seconds": seconds}
    level = logging.INFO if converged else logging.WARNING
    _logger.log(level, "half-step check on %d paths (step %g vs %g): shielding %.1f%% vs %.1f%%, mean margin %.4g "
                "vs %.4g (%.2f%%): %s", len(sel), result.step, result.step / 2, pct, pct_h, mean, mean_h,
                100 * d_rel, "converged" if converged else "NOT converged: use a smaller step")
    return _json_ready(out)


def _json_ready(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _subset(result: MarginResult, rows: np.ndarray) -> MarginResult:
    """The paths ``rows`` of ``result`` (same settings)."""
    columns = {name: getattr(result, name)[rows] for name in _COLUMNS}
    settings = result.settings()
    settings["clamp"] = result.clamp
    return MarginResult(**columns, **settings)

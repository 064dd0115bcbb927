"""Convergence of the margins in the step and the damping: the half-step check and the study over a grid."""

from __future__ import annotations

import json
import logging
import math
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fire_plugin.margins.metric import _check_positive, _flat_inputs
from fire_plugin.margins.results import (
    _CHECK_FRACTION,
    _CHECK_MARGIN_REL,
    _CHECK_SHIELDING_POINTS,
    MODES,
    MarginResult,
    _compare_half_step,
    _json_ready,
)
from fire_plugin.margins.shielding import _fmt, shielding_report
from fire_plugin.margins.trace import _MAX_STEPS_LIMIT, trace_margins
from fire_plugin.runfolder import atomic_write_text

_logger = logging.getLogger(__name__)

def half_step_check(
    model: nn.Module, x: Tensor, result: MarginResult, *, solver: str = "auto", cg_iters: int = 20,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Retrace every tenth traced path of ``result`` at half its step (same mode, damping, box; twice the step
    budget) and compare the shielding % and the mean margin of those paths at both steps.

    ``converged`` is True when halving changed the shielding % by less than 1 point, the mean margin by less than
    1% and no path's flip; None when no path was traced. (:func:`trace_margins` runs the same check inside its
    own batches; this function is for results assembled from parts, such as resumed runs.)

    Args:
        model: the model ``result`` was traced on.
        x: the inputs ``result`` was traced from (``result.index`` indexes them).
        result: a :class:`MarginResult`.
        solver, cg_iters, batch_size: as in :func:`trace_margins`.

    Returns:
        A JSON-ready dict (see :attr:`MarginResult.convergence`).

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> x = torch.rand(5, 4)
    >>> r = trace_margins(model, x, torch.zeros(5, dtype=torch.long), clamp=None, check_convergence=False,
    ...                   verbose=False)
    >>> half_step_check(model, x, r)["half_step"]
    0.025
    """
    x = _flat_inputs(model, x)[0].view(len(x), *tuple(x.shape[1:]))
    kw: dict[str, Any] = {"solver": solver, "cg_iters": cg_iters, "batch_size": batch_size, "clamp": result.clamp}
    start = time.perf_counter()
    traced = np.nonzero(result.status != "misclassified")[0]
    out: dict[str, Any] = {"step": result.step, "half_step": result.step / 2, "n_paths": 0, "converged": None,
                           "tolerance": {"shielding_points": _CHECK_SHIELDING_POINTS,
                                         "margin_rel": _CHECK_MARGIN_REL}}
    if len(traced) == 0:
        return out | {"note": "no path was traced (no input classified correctly)"}
    k = max(1, math.ceil(len(traced) * _CHECK_FRACTION))
    sel = traced[np.unique(np.linspace(0, len(traced) - 1, k).round().astype(np.int64))]
    half = trace_margins(
        model, x[torch.as_tensor(result.index[sel], device=x.device)], torch.as_tensor(result.source[sel]),
        targets=torch.as_tensor(result.target[sel]).unsqueeze(1), mode=result.mode, damping=result.damping,
        step=result.step / 2, max_length=result.max_length, max_steps=min(2 * result.max_steps, _MAX_STEPS_LIMIT),
        check_convergence=False, verbose=False, **kw,
    )
    return _compare_half_step(result, sel, half, time.perf_counter() - start)


# --------------------------------------------------------------------------------------------------
# convergence in the step and the damping


@dataclass
class ConvergenceStudy:
    """Shielding and margins of the same inputs traced at several steps and dampings (:func:`convergence_study`).

    Attributes:
        rows: one dict per ``(step, damping)``, steps decreasing within each damping: ``step``, ``damping``,
            ``mode``, ``solver``, ``shielding_pct`` (share of flipped paths whose first class is not the target),
            ``class_shielding_pct`` (per class, as :attr:`ShieldingReport.shielding_pct`), ``mean_margin``,
            ``median_margin``, ``mean_fr_length``, ``mean_l2`` (at the flip), ``n_paths``, ``n_flipped``,
            ``fr_l2_rank_correlation``, ``input_fr_l2_spearman``, ``seconds``; and, against the next finer step
            of the same damping, ``shielding_change_points`` and ``mean_margin_rel_change`` (None for the finest).
        class_names: one name per class.
        n_inputs: inputs traced at every setting.
        inputs_note: where the inputs come from (``"SYNTHETIC ..."`` for synthetic inputs), or None.

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> study = convergence_study(model, torch.rand(3, 4), torch.zeros(3, dtype=torch.long), steps=(0.2, 0.1),
    ...                           dampings=(1e-3,), clamp=None, verbose=False)
    >>> [row["step"] for row in study.rows]
    [0.2, 0.1]
    """

    rows: list[dict[str, Any]]
    class_names: list[str]
    n_inputs: int
    inputs_note: str | None = None

    def dampings(self) -> list[float]:
        """The dampings of the study, in the order given."""
        return list(dict.fromkeys(row["damping"] for row in self.rows))

    def converged_step(self, damping: float, tol: float = 0.01, shielding_points: float = 1.0) -> float | None:
        """The largest step from which on every refinement (each step against the next finer one of the study)
        changes the shielding % by less than ``shielding_points`` and the mean margin by less than ``tol``
        (relative); None when even the two finest steps disagree (or the study has one step)."""
        rows = [r for r in self.rows if r["damping"] == damping]
        if not rows:
            raise ValueError(f"damping={damping!r} is not in the study; allowed: {self.dampings()}")
        best = None
        for row in reversed(rows[:-1]):  # from the second finest step up
            if not _row_agrees(row, tol, shielding_points):
                break
            best = row["step"]
        return best

    def converged(self, tol: float = 0.01, shielding_points: float = 1.0) -> bool:
        """True when, for every damping, the two finest steps agree within the tolerances (a converged step
        exists): the finest rows are then trustworthy to about ``tol`` and ``shielding_points``."""
        return all(self.converged_step(d, tol, shielding_points) is not None for d in self.dampings())

    def to_dict(self, tol: float = 0.01, shielding_points: float = 1.0) -> dict[str, Any]:
        """JSON-ready: the rows, the class names, the converged step per damping and the verdict."""
        return {
            "schema": "fire_plugin.margins.convergence/1", "inputs": self.inputs_note, "n_inputs": self.n_inputs,
            "class_names": list(self.class_names),
            "tolerance": {"margin_rel": tol, "shielding_points": shielding_points},
            "converged": self.converged(tol, shielding_points),
            "converged_step": {str(d): self.converged_step(d, tol, shielding_points) for d in self.dampings()},
            "rows": [_json_ready(dict(row)) for row in self.rows],
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, **tolerances: float) -> str:
        """:meth:`to_dict` as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(**tolerances), indent=2)
        if path is not None:
            atomic_write_text(path, text)
        return text

    def to_markdown(self, tol: float = 0.01, shielding_points: float = 1.0) -> str:
        """The study as a Markdown table, one line per setting, with the converged step per damping."""
        mode = self.rows[0]["mode"] if self.rows else "-"
        margin = "mean margin (steps x step)" if mode == "paper" else "mean FR margin"
        lines = []
        if self.inputs_note:
            lines += [f"Inputs: {self.inputs_note}", ""]
        lines += [
            f"mode={mode}, {self.n_inputs} inputs; change = against the next finer step of the same damping.", "",
            f"| damping | step | shielding % | {margin} | median | mean FR length | mean L2 | flipped / paths | "
            "FR-L2 rank rho | per-input rho | change (points) | change (margin) | s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            rel = r.get("mean_margin_rel_change")
            lines.append(
                f"| {r['damping']:g} | {r['step']:g} | {_fmt(r['shielding_pct'], '.1f')} | "
                f"{_fmt(r['mean_margin'], '.4f')} | {_fmt(r['median_margin'], '.4f')} | "
                f"{_fmt(r['mean_fr_length'], '.4f')} | {_fmt(r['mean_l2'], '.3f')} | {r['n_flipped']} / "
                f"{r['n_paths']} | {_fmt(r['fr_l2_rank_correlation'], '.2f')} | "
                f"{_fmt(r['input_fr_l2_spearman'], '.2f')} | {_fmt(r.get('shielding_change_points'), '.2f')} | "
                f"{'-' if rel is None else format(100 * rel, '.2f') + '%'} | {r['seconds']:.1f} |"
            )
        lines.append("")
        for d in self.dampings():
            s = self.converged_step(d, tol, shielding_points)
            lines.append(f"damping {d:g}: " + (f"converged from step {s:g} on" if s is not None else
                                                "NOT converged at the finest step of the study") +
                         f" (tolerance {shielding_points:g} point of shielding %, {100 * tol:g}% of mean margin).")
        return "\n".join(lines) + "\n"

    def plot(self) -> Any:
        """The figure of :func:`fire_plugin.plots.plot_convergence_study`."""
        from fire_plugin.plots import plot_convergence_study

        return plot_convergence_study(self)


def _row_agrees(row: Mapping[str, Any], tol: float, shielding_points: float) -> bool:
    d_points, d_rel = row.get("shielding_change_points"), row.get("mean_margin_rel_change")
    return d_points is not None and d_rel is not None and d_points < shielding_points and d_rel < tol


def convergence_study(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: Sequence[float] = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02),
    dampings: Sequence[float] = (1e-3, 1e-1),
    mode: str = "converged",
    class_names: Sequence[str] | None = None,
    inputs_note: str | None = None,
    verbose: bool = True,
    **trace_kwargs: Any,
) -> ConvergenceStudy:
    """Trace the same inputs at every ``(step, damping)`` and tabulate shielding and margins (no half-step check:
    the study is the check).

    Args:
        model: classifier returning logits.
        x: inputs ``(N, ...)``.
        y: labels ``(N,)``.
        steps: step lengths (sorted decreasing in the rows).
        dampings: dampings of the metric.
        mode: ``"converged"`` or ``"paper"`` (see :func:`trace_margins`).
        class_names: one name per class.
        inputs_note: where the inputs come from (kept in the outputs).
        verbose: a progress bar over the settings.
        **trace_kwargs: passed to :func:`trace_margins` (``targets``, ``max_length``, ``max_steps``, ``solver``,
            ``batch_size``, ``clamp``, ...).

    Returns:
        A :class:`ConvergenceStudy`.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; allowed: {list(MODES)}")
    for key in ("step", "damping", "mode", "check_convergence", "verbose", "progress"):
        if key in trace_kwargs:
            raise ValueError(f"{key}= is set by convergence_study itself; allowed: the other trace_margins options")
    step_list = sorted({float(s) for s in steps}, reverse=True)
    damp_list = list(dict.fromkeys(float(d) for d in dampings))
    if not step_list or not damp_list:
        raise ValueError("steps and dampings must each hold at least one value")
    for s in step_list:
        _check_positive("steps", s)
    for d in damp_list:
        _check_positive("dampings", d)
    rows: list[dict[str, Any]] = []
    names: list[str] | None = None
    n_inputs = 0
    grid = [(d, s) for d in damp_list for s in step_list]
    for d, s in tqdm(grid, desc=f"convergence study ({mode})", unit="setting", disable=not verbose, leave=False):
        start = time.perf_counter()
        result = trace_margins(model, x, y, step=s, damping=d, mode=mode, check_convergence=False, verbose=False,
                               **trace_kwargs)
        seconds = time.perf_counter() - start
        report = shielding_report(result, class_names)
        names, n_inputs = report.class_names, result.n_inputs
        fl = result.flipped
        n_fl = int(fl.sum())
        rows.append(_json_ready({
            "damping": d, "step": s, "mode": mode, "solver": result.solver,
            "shielding_pct": 100.0 * float(result.shielded.sum()) / n_fl if n_fl else float("nan"),
            "class_shielding_pct": [None if not math.isfinite(v) else v for v in report.shielding_pct.tolist()],
            "mean_margin": float(result.margin[fl].mean()) if n_fl else float("nan"),
            "median_margin": float(np.median(result.margin[fl])) if n_fl else float("nan"),
            "mean_fr_length": float(result.fr_length[fl].mean()) if n_fl else float("nan"),
            "mean_l2": float(result.l2[fl].mean()) if n_fl else float("nan"),
            "n_paths": int((result.status != "misclassified").sum()), "n_flipped": n_fl,
            "fr_l2_rank_correlation": report.fr_l2_rank_correlation,
            "input_fr_l2_spearman": report.input_fr_l2_spearman, "seconds": seconds,
        }))
        _logger.info("study %s damping=%g step=%g: shielding %s%%, mean margin %s (%.1f s)", mode, d, s,
                     _fmt(rows[-1]["shielding_pct"], ".1f"), _fmt(rows[-1]["mean_margin"], ".4f"), seconds)
    for d in damp_list:
        mine = [r for r in rows if r["damping"] == d]
        for coarse, fine in zip(mine[:-1], mine[1:], strict=True):
            a, b = coarse["shielding_pct"], fine["shielding_pct"]
            ma, mb = coarse["mean_margin"], fine["mean_margin"]
            coarse["shielding_change_points"] = abs(a - b) if a is not None and b is not None else None
            coarse["mean_margin_rel_change"] = abs(ma - mb) / abs(mb) if ma is not None and mb else None
        mine[-1]["shielding_change_points"] = mine[-1]["mean_margin_rel_change"] = None
    return ConvergenceStudy(rows=rows, class_names=names or [], n_inputs=n_inputs, inputs_note=inputs_note)

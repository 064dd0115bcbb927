"""Class shielding: the table of the paper from traced paths, rank correlations, and the arc margins of the
``damping -> 0`` flow from the start's probabilities alone."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from torch import Tensor

from fire_plugin.margins.results import MarginResult


def arc_margins(probs: Tensor | np.ndarray, source: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """FR length and first class reached of the ``damping -> 0`` natural-gradient flow, from the start's
    probabilities alone.

    With a Jacobian of full rank ``m - 1`` along the path and no input box, the flow toward ``k`` moves probability
    from ``y`` to ``k`` only: ``p_y(t) = p_y - t``, ``p_k(t) = p_k + t``, every other class fixed, i.e. along the arc
    ``p_y + p_k = r`` of the simplex at angle ``theta = arctan sqrt(p_k(t) / p_y(t))``, with FR length
    ``2 sqrt(r) |d theta|``. It ends where ``p_y(t)`` meets ``max(p_k(t), q)``, ``q`` the largest other probability:
    at ``theta = pi / 4`` (reaching ``k``) or, when ``q > r / 2``, at ``p_y(t) = q`` (shielded by that class).
    Comparing traced lengths with these tells how much of a model's FR margins its confidence alone explains.

    Args:
        probs: ``(P, m)`` probabilities at the start of each path.
        source: ``(P,)`` source classes (the argmax of ``probs``; NaN is returned otherwise).
        target: ``(P,)`` target classes.

    Returns:
        ``(length, first_class)``, float64 and int64 arrays ``(P,)``.

    >>> length, first = arc_margins(np.array([[0.5, 0.4, 0.1], [0.5, 0.1, 0.4]]), [0, 0], [2, 2])
    >>> first.tolist(), np.round(length, 3).tolist()
    ([1, 2], [0.302, 0.106])
    """
    p = np.asarray(probs, dtype=np.float64)
    src, tgt = np.asarray(source, dtype=np.int64), np.asarray(target, dtype=np.int64)
    if p.ndim != 2 or src.shape != (len(p),) or tgt.shape != (len(p),):
        raise ValueError(f"probs {p.shape}, source {src.shape}, target {tgt.shape}: allowed (P, m), (P,), (P,)")
    rows = np.arange(len(p))
    p_y, p_k = p[rows, src], p[rows, tgt]
    others = p.copy()
    others[rows, src] = -np.inf
    others[rows, tgt] = -np.inf
    shield_class = others.argmax(axis=1)
    q = others[rows, shield_class] if p.shape[1] > 2 else np.zeros(len(p))
    r = p_y + p_k
    shielded = q > r / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        end = np.where(shielded, np.arctan(np.sqrt((r - q) / q)), math.pi / 4)
        length = 2 * np.sqrt(r) * (end - np.arctan(np.sqrt(p_k / p_y)))
    length[p_y < p.max(axis=1)] = np.nan  # the source is not the predicted class
    return length, np.where(shielded, shield_class, tgt)


# --------------------------------------------------------------------------------------------------
# class shielding


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two samples (average ranks for ties; pairs with a non-finite value left out);
    NaN with fewer than 2 pairs or a constant sample.

    >>> spearman([1, 2, 3, 4], [10, 20, 15, 40])
    0.8
    """
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"samples of {x.size} and {y.size} values; allowed: the same length")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return float("nan")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``v`` (ascending), ties sharing their average rank."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), dtype=np.float64)
    sorted_v = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _robustness_ranks(n_paths: np.ndarray, n_flipped: np.ndarray, values: np.ndarray) -> np.ndarray:
    """1 = most robust: never-flipped classes (with traced paths) first, then decreasing ``values``; 0 for a class
    without traced paths."""
    m = len(n_paths)
    key = np.where(n_paths == 0, -np.inf, np.where(n_flipped == 0, np.inf, values))
    key = np.where(np.isnan(key), -np.inf, key)
    order = np.argsort(-key, kind="stable")
    ranks = np.zeros(m, dtype=np.int64)
    rank = 1
    for c in order:
        if n_paths[c] > 0:
            ranks[c] = rank
            rank += 1
    return ranks


@dataclass
class ShieldingReport:
    """The class-shielding table of a :class:`MarginResult` (arrays indexed by class).

    Attributes:
        class_names: one name per class.
        n_paths: traced paths whose source is the class (misclassified inputs excluded).
        n_flipped: of those, the successful (flipped) ones.
        n_shields: successful paths, from any source, on which the class was the first intervening label (first
            class reached, not the target).
        shielding_pct: ``100 * n_shields / total_flipped``: the share of all successful paths on which the class was
            the first intervening label.
        mean_fr_margin: mean margin (:attr:`MarginResult.margin`: FR length in ``"converged"`` mode, the step count
            times the step in ``"paper"`` mode) of the class's own successful paths (source = class); NaN if none.
        mean_fr_length: mean closed-form FR length of the same paths (equal to ``mean_fr_margin`` in
            ``"converged"`` mode).
        mean_l2: mean ``||delta||_2`` of the same paths; NaN if none.
        vuln_rank: 1 = most robust: classes ordered by decreasing mean FR margin; a class whose traced paths never
            flipped counts as the most robust; 0 for a class without traced paths.
        l2_rank: the same ordering by decreasing mean ``||delta||_2`` at the flip.
        fr_l2_rank_correlation: Spearman correlation between the classes' mean FR margins and mean ``||delta||_2``
            (classes with both), i.e. between ``vuln_rank`` and ``l2_rank`` (the paper's
            ``rank_FR = rank_l2 + o(1)``); NaN with fewer than 2 classes.
        input_fr_l2_spearman: Spearman correlation, over the inputs with a flipped path, between each input's FR
            margin (its smallest margin) and the ``||delta||_2`` of the path realizing it.
        n_correlated_inputs: the inputs in ``input_fr_l2_spearman``.
        path_matrix: ``(m, m)`` counts of traced paths by source (rows) and first class reached (columns); paths
            that did not flip are on the diagonal.
        total_paths: traced paths.
        total_flipped: successful paths.
        n_inputs: inputs of the result; n_misclassified: of those, misclassified (not traced).
        traced_with: the settings the paths were traced with (mode, step, damping, solver, clamp, budgets).
        convergence: the result's half-step check (:attr:`MarginResult.convergence`), None when not run.

    >>> report = shielding_report(MarginResult.empty(num_classes=2))
    >>> report.total_paths
    0
    """

    class_names: list[str]
    n_paths: np.ndarray
    n_flipped: np.ndarray
    n_shields: np.ndarray
    shielding_pct: np.ndarray
    mean_fr_margin: np.ndarray
    mean_l2: np.ndarray
    vuln_rank: np.ndarray
    path_matrix: np.ndarray
    total_paths: int
    total_flipped: int
    mean_fr_length: np.ndarray = field(default_factory=lambda: np.zeros(0))
    l2_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fr_l2_rank_correlation: float = float("nan")
    input_fr_l2_spearman: float = float("nan")
    n_correlated_inputs: int = 0
    n_inputs: int = 0
    n_misclassified: int = 0
    traced_with: dict[str, Any] = field(default_factory=dict)
    convergence: dict[str, Any] | None = None

    @property
    def converged(self) -> bool | None:
        """The half-step check's verdict: True, False, or None (not checked, or nothing to check)."""
        return None if self.convergence is None else self.convergence.get("converged")

    def notes(self) -> list[str]:
        """One-line notes: how the paths were traced, the convergence verdict (a WARNING when the step had not
        converged), and why the table is empty when it is."""
        lines = []
        if self.traced_with:
            t = self.traced_with
            lines.append(f"Traced with mode={t.get('mode')}, step={t.get('step'):g}, damping={t.get('damping'):g}, "
                         f"solver={t.get('solver')}, clamp={t.get('clamp')}, max_steps={t.get('max_steps')}, "
                         f"max_length={t.get('max_length'):g}.")
        c = self.convergence
        if c is None:
            lines.append("Convergence in the step: not checked (check_convergence=False).")
        elif c.get("converged") is None:
            lines.append(f"Convergence in the step: not checked ({c.get('note', 'no path')}).")
        else:
            verdict = (f"halving the step ({c['step']:g} -> {c['half_step']:g}) on {c['n_paths']} of the paths "
                       f"changed the shielding % by {_fmt(c.get('shielding_change_points'), '.2f')} points and the "
                       f"mean margin by {_fmt(100 * (c.get('mean_margin_rel_change') or float('nan')), '.2f')}% "
                       f"(tolerance: {c['tolerance']['shielding_points']:g} point, "
                       f"{100 * c['tolerance']['margin_rel']:g}%)")
            if c["converged"]:
                lines.append(f"Convergence in the step: converged: {verdict}.")
            else:
                lines.append(f"WARNING: not converged in the step: {verdict}; these numbers depend on the step "
                             "size: trace again with a smaller step.")
        if self.total_paths == 0:
            if self.n_inputs and self.n_misclassified == self.n_inputs:
                lines.append(f"No path was traced: no input was classified correctly ({self.n_misclassified} of "
                             f"{self.n_inputs} misclassified).")
            else:
                lines.append("No path was traced (no target class left for the inputs).")
        return lines

    @property
    def warning(self) -> str | None:
        """The WARNING line of :meth:`notes`, None when there is none."""
        return next((line for line in self.notes() if line.startswith("WARNING")), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""

        def clean(a: np.ndarray) -> list[Any]:
            return [None if isinstance(v, float) and not math.isfinite(v) else v for v in a.tolist()]

        def scalar(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "class_names": list(self.class_names),
            "n_paths": self.n_paths.tolist(),
            "n_flipped": self.n_flipped.tolist(),
            "n_shields": self.n_shields.tolist(),
            "shielding_pct": clean(self.shielding_pct),
            "mean_fr_margin": clean(self.mean_fr_margin),
            "mean_fr_length": clean(self.mean_fr_length),
            "mean_l2": clean(self.mean_l2),
            "vuln_rank": self.vuln_rank.tolist(),
            "l2_rank": self.l2_rank.tolist(),
            "fr_l2_rank_correlation": scalar(self.fr_l2_rank_correlation),
            "input_fr_l2_spearman": scalar(self.input_fr_l2_spearman),
            "n_correlated_inputs": self.n_correlated_inputs,
            "path_matrix": self.path_matrix.tolist(),
            "total_paths": self.total_paths,
            "total_flipped": self.total_flipped,
            "n_inputs": self.n_inputs,
            "n_misclassified": self.n_misclassified,
            "traced_with": dict(self.traced_with),
            "convergence": self.convergence,
            "converged": self.converged,
            "warning": self.warning,
            "notes": self.notes(),
        }

    def to_markdown(self) -> str:
        """The notes, the paper's table (with the L2 rank), the rank correlations, then the path matrix."""
        lines = [*self.notes(), ""]
        lines += [
            "| class | shielding % | mean FR margin | mean FR length | mean ||delta||_2 | vuln rank (FR) | "
            "rank (L2) | paths | flipped |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c, cname in enumerate(self.class_names):
            rank = str(int(self.vuln_rank[c])) if self.vuln_rank[c] > 0 else "-"
            l2_rank = str(int(self.l2_rank[c])) if len(self.l2_rank) and self.l2_rank[c] > 0 else "-"
            length = self.mean_fr_length[c] if len(self.mean_fr_length) else float("nan")
            lines.append(
                f"| {cname} | {_fmt(self.shielding_pct[c], '.1f')} | {_fmt(self.mean_fr_margin[c], '.3f')} | "
                f"{_fmt(length, '.3f')} | {_fmt(self.mean_l2[c], '.3f')} | {rank} | {l2_rank} | "
                f"{int(self.n_paths[c])} | {int(self.n_flipped[c])} |"
            )
        lines += ["", f"{self.total_flipped} of {self.total_paths} traced paths flipped.", "",
                  f"Spearman correlation of the classes' FR and L2 ranks (fr_l2_rank_correlation): "
                  f"{_fmt(self.fr_l2_rank_correlation, '.3f')}; per input, FR margin vs ||delta||_2 of the same "
                  f"path: {_fmt(self.input_fr_l2_spearman, '.3f')} ({self.n_correlated_inputs} inputs).", "",
                  "Path matrix (rows: source, columns: first class reached; diagonal: not flipped):", ""]
        lines.append("| source \\ first | " + " | ".join(self.class_names) + " |")
        lines.append("|---|" + "---:|" * len(self.class_names))
        for c, cname in enumerate(self.class_names):
            lines.append(f"| {cname} | " + " | ".join(str(int(v)) for v in self.path_matrix[c]) + " |")
        return "\n".join(lines) + "\n"


def _fmt(v: float | None, fmt: str) -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, fmt)


def shielding_report(result: MarginResult, class_names: Sequence[str] | None = None) -> ShieldingReport:
    """The class-shielding table of the paper from traced paths (see :class:`ShieldingReport` for each column).

    Paths of misclassified inputs are left out.

    Args:
        result: a :class:`MarginResult`.
        class_names: one name per class; ``"0"``, ``"1"``, ... when None.

    Returns:
        A :class:`ShieldingReport`.

    >>> r = MarginResult(index=np.array([0, 0]), source=np.array([0, 0]), target=np.array([1, 2]),
    ...     flipped=np.array([True, True]), first_class=np.array([1, 1]), shielded=np.array([False, True]),
    ...     fr_length=np.array([0.5, 0.7]), l2=np.array([1.0, 2.0]), linf=np.array([0.1, 0.2]),
    ...     steps=np.array([5, 7]), status=np.array(["flipped", "flipped"]), num_classes=3, n_inputs=1)
    >>> shielding_report(r).shielding_pct.tolist()
    [0.0, 50.0, 0.0]
    """
    m = result.num_classes
    if class_names is None:
        names = [str(c) for c in range(m)]
    else:
        names = [str(c) for c in class_names]
        if len(names) != m:
            raise ValueError(f"class_names has {len(names)} names; allowed: {m} (one per class)")
    traced = result.status != "misclassified"
    src, first = result.source[traced], result.first_class[traced]
    flipped, shielded = result.flipped[traced], result.shielded[traced]
    margin, length, l2 = result.margin[traced], result.fr_length[traced], result.l2[traced]
    n_paths = np.bincount(src, minlength=m).astype(np.int64)
    n_flipped = np.bincount(src[flipped], minlength=m).astype(np.int64)
    n_shields = np.bincount(first[shielded], minlength=m).astype(np.int64)
    total_flipped = int(flipped.sum())
    shielding_pct = 100.0 * n_shields / total_flipped if total_flipped else np.full(m, np.nan)
    mean_fr = np.full(m, np.nan)
    mean_len = np.full(m, np.nan)
    mean_l2 = np.full(m, np.nan)
    for c in range(m):
        mine = flipped & (src == c)
        if mine.any():
            mean_fr[c] = float(margin[mine].mean())
            mean_len[c] = float(length[mine].mean())
            mean_l2[c] = float(l2[mine].mean())
    vuln_rank = _robustness_ranks(n_paths, n_flipped, mean_fr)
    l2_rank = _robustness_ranks(n_paths, n_flipped, mean_l2)
    best = result.input_margin_paths()
    best = best[best >= 0]
    path_matrix = np.zeros((m, m), dtype=np.int64)
    np.add.at(path_matrix, (src, first), 1)
    misclassified = np.unique(result.index[result.status == "misclassified"])
    return ShieldingReport(
        class_names=names, n_paths=n_paths, n_flipped=n_flipped, n_shields=n_shields, shielding_pct=shielding_pct,
        mean_fr_margin=mean_fr, mean_fr_length=mean_len, mean_l2=mean_l2, vuln_rank=vuln_rank, l2_rank=l2_rank,
        fr_l2_rank_correlation=spearman(mean_fr, mean_l2),
        input_fr_l2_spearman=spearman(result.margin[best], result.l2[best]), n_correlated_inputs=len(best),
        path_matrix=path_matrix, total_paths=int(traced.sum()), total_flipped=total_flipped,
        n_inputs=result.n_inputs, n_misclassified=len(misclassified),
        traced_with={k: v for k, v in result.settings().items() if k not in ("num_classes", "n_inputs")},
        convergence=result.convergence,
    )

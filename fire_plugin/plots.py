"""Matplotlib figures shared by the CLI and the benchmarks.

A flat module of functions that build and return ``matplotlib.figure.Figure`` objects. No pyplot and no
backend selection: save with ``fig.savefig("name.png")``, which needs no GUI backend.

>>> from fire_plugin.gaussian import paper_setting
>>> fig = plot_fisher_rao_vs_euclidean(n_points=11)
>>> len(fig.axes)
2
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
from matplotlib.figure import Figure
from numpy.typing import ArrayLike
from scipy.special import expit

from fire_plugin.gaussian_erm import SweepResult
from fire_plugin.gaussian_model import AccuracyCurve, GaussianModel, fisher_rao_binary

if TYPE_CHECKING:  # type hints only: drawing a placement or margins needs neither module imported here
    from fire_plugin.leaderboard import Placement
    from fire_plugin.margins import MarginResult, ShieldingReport

__all__ = [
    "plot_class_margins",
    "plot_convergence_study",
    "plot_fisher_rao_ball",
    "plot_fisher_rao_vs_euclidean",
    "plot_leaderboard",
    "plot_manifold_surfaces",
    "plot_margin_histograms",
    "plot_path_matrix",
    "plot_robustness_scatter",
    "plot_tradeoff",
    "plot_training_curves",
    "plot_training_history",
    "plot_weight_tradeoff",
]

_REG_TITLES = {"fisher_rao": "FIRE (Fisher-Rao d^2)", "kl": "TRADES (KL)", "hellinger": "Hellinger (H^2)"}


def plot_tradeoff(
    curve: AccuracyCurve,
    front: AccuracyCurve,
    sweeps: Sequence[SweepResult] = (),
    *,
    maa: tuple[float, float] | None = None,
    model: GaussianModel | None = None,
) -> Figure:
    """Figs. 6 and 9: all ``(1 - Pe, 1 - Pe')`` points (blue), the Pareto front (red) and each sweep (black).

    One column for the curve and front, then one column per regularizer found in ``sweeps``; the second row
    zooms on the Pareto front. Local-solver points are black dots, global-solver points hollow orange circles.
    ``maa = (value, alpha)`` marks the MAA point (needs ``model`` to place it).

    >>> from fire_plugin.gaussian import paper_setting
    >>> m = paper_setting()
    >>> fig = plot_tradeoff(m.accuracy_curve(360), m.pareto_front(360), maa=m.maa(), model=m)
    >>> len(fig.axes)
    2
    """
    regs: list[str] = []
    for s in sweeps:
        if s.regularizer not in regs:
            regs.append(s.regularizer)
    n = 1 + len(regs)
    fig = Figure(figsize=(4.2 * n, 7.6), layout="constrained")
    maa_xy = None
    if maa is not None and model is not None:
        nat, adv = model.accuracies([np.cos(maa[1]), np.sin(maa[1])])
        maa_xy = (float(nat), float(adv))
    pad = 0.02
    zoom_x = (float(front.natural.min()) - pad, float(front.natural.max()) + pad)
    zoom_y = (float(front.adversarial.min()) - pad, float(front.adversarial.max()) + pad)
    for row in range(2):
        for i in range(n):
            ax = fig.add_subplot(2, n, row * n + i + 1)
            ax.plot(curve.natural, curve.adversarial, ".", ms=1.5, color="tab:blue", label="all theta")
            ax.plot(front.natural, front.adversarial, ".", ms=2.5, color="tab:red", label="Pareto-optimal")
            if maa_xy is not None and maa is not None:
                ax.plot(*maa_xy, "*", ms=11, mfc="gold", mec="k", label=f"MAA = {maa[0]:.4f}")
            ax.set_xlabel("natural accuracy 1 - Pe")
            ax.set_ylabel("adversarial accuracy 1 - Pe'")
            ax.grid(alpha=0.3)
            title = "(a) Pareto-optimal points"
            if i > 0:
                reg = regs[i - 1]
                title = f"({chr(ord('a') + i)}) {_REG_TITLES.get(reg, reg)}"
                for s in sweeps:
                    if s.regularizer != reg:
                        continue
                    lam = s.lambdas[np.isfinite(s.natural_accuracy)]
                    lam_txt = f", lambda in [{lam.min():g}, {lam.max():g}]" if lam.size else ""
                    local = s.solver.endswith("local")
                    ax.plot(
                        s.natural_accuracy,
                        s.adversarial_accuracy,
                        "o",
                        ms=3 if local else 7,
                        mfc="k" if local else "none",
                        color="k" if local else "tab:orange",
                        zorder=4 if local else 3,
                        label=f"{s.solver}{lam_txt}",
                    )
            if row == 1:
                ax.set_xlim(*zoom_x)
                ax.set_ylim(*zoom_y)
                title += " (zoom)"
            ax.set_title(title, fontsize=10)
            ax.legend(fontsize=7, loc="lower right" if row == 0 else "lower left")
    return fig


def _surface_axes(fig: Figure, n: int, i: int):  # type: ignore[no-untyped-def]
    return fig.add_subplot(1, n, i + 1, projection="3d")


def plot_manifold_surfaces(
    thetas: Mapping[str, ArrayLike],
    *,
    extent: float = 0.5,
    n_points: int = 61,
) -> Figure:
    """Figs. 2 and 4: the statistical manifold as the surface ``q(1|x) = 1 / (1 + exp(-theta^T x))`` over
    ``x in [-extent, extent]^2``, one panel per ``{title: theta}`` entry.

    >>> fig = plot_manifold_surfaces({"a": [-6.4290, 25.7487], "b": [-0.9364, 0.3509]}, n_points=11)
    >>> len(fig.axes)
    2
    """
    if not thetas:
        raise ValueError("thetas must hold at least one {title: theta} entry, got an empty mapping")
    if not (np.isfinite(extent) and extent > 0):
        raise ValueError(f"extent must be a finite number > 0, got {extent!r}")
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points!r}")

    g = np.linspace(-extent, extent, n_points)
    x1, x2 = np.meshgrid(g, g)
    fig = Figure(figsize=(4.5 * len(thetas), 4.0), layout="constrained")
    for i, (title, theta) in enumerate(thetas.items()):
        t = np.asarray(theta, dtype=np.float64)
        if t.shape != (2,):
            raise ValueError(f"thetas[{title!r}] must have shape (2,), got {t.shape}")
        ax = _surface_axes(fig, len(thetas), i)
        ax.plot_surface(x1, x2, expit(t[0] * x1 + t[1] * x2), cmap="viridis", linewidth=0, antialiased=True)
        ax.set_zlim(0.0, 1.0)
        ax.set_xlabel("x1")
        ax.set_ylabel("x2")
        ax.set_zlabel("q(1|x)")
        ax.set_title(title, fontsize=9)
    return fig


def plot_fisher_rao_ball(
    thetas: Mapping[str, ArrayLike],
    *,
    eps: float = 0.1,
    center: ArrayLike = (0.0, 0.0),
    n_points: int = 61,
) -> Figure:
    """Fig. 3: the Fisher-Rao distance between ``q(.|x)`` and ``q(.|x + delta)`` over ``delta`` in the
    L-inf ball of radius ``eps`` around ``center`` (the paper uses ``x = 0`` and ``eps = 0.1``), one panel
    per theta.

    >>> fig = plot_fisher_rao_ball({"a": [1.0, 2.0]}, n_points=11)
    >>> len(fig.axes)
    1
    """
    if not thetas:
        raise ValueError("thetas must hold at least one {title: theta} entry, got an empty mapping")
    if not (np.isfinite(eps) and eps > 0):
        raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points!r}")
    c = np.asarray(center, dtype=np.float64)
    if c.shape != (2,):
        raise ValueError(f"center must have shape (2,), got {c.shape}")
    g = np.linspace(-eps, eps, n_points)
    d1, d2 = np.meshgrid(g, g)
    fig = Figure(figsize=(4.5 * len(thetas), 4.0), layout="constrained")
    for i, (title, theta) in enumerate(thetas.items()):
        t = np.asarray(theta, dtype=np.float64)
        if t.shape != (2,):
            raise ValueError(f"thetas[{title!r}] must have shape (2,), got {t.shape}")
        h0 = float(t @ c)
        d = fisher_rao_binary(h0, h0 + t[0] * d1 + t[1] * d2)
        ax = _surface_axes(fig, len(thetas), i)
        ax.plot_surface(d1, d2, d, cmap="magma", linewidth=0, antialiased=True)
        ax.set_xlabel("delta1")
        ax.set_ylabel("delta2")
        ax.set_zlabel("Fisher-Rao distance")
        ax.set_title(title, fontsize=9)
    return fig


def plot_fisher_rao_vs_euclidean(*, h_max: float = 10.0, n_points: int = 81) -> Figure:
    """Fig. 5: Fisher-Rao distance (Theorem 1) vs Euclidean distance ``|h(x') - h(x)|`` over latent codes
    ``(h(x), h(x')) in [-h_max, h_max]^2``. Proposition 1 bounds the first by half the second.

    >>> len(plot_fisher_rao_vs_euclidean(n_points=11).axes)
    2
    """
    if not (np.isfinite(h_max) and h_max > 0):
        raise ValueError(f"h_max must be a finite number > 0, got {h_max!r}")
    if n_points < 2:
        raise ValueError(f"n_points must be >= 2, got {n_points!r}")
    g = np.linspace(-h_max, h_max, n_points)
    ha, hb = np.meshgrid(g, g)
    fig = Figure(figsize=(9.0, 4.0), layout="constrained")
    panels = (
        ("(a) Fisher-Rao distance", fisher_rao_binary(ha, hb)),
        ("(b) Euclidean distance |h(x') - h(x)|", np.abs(hb - ha)),
    )
    for i, (title, z) in enumerate(panels):
        ax = _surface_axes(fig, 2, i)
        ax.plot_surface(ha, hb, z, cmap="viridis", linewidth=0, antialiased=True)
        ax.set_xlabel("h(x)")
        ax.set_ylabel("h(x')")
        ax.set_title(title, fontsize=9)
    return fig


def plot_training_history(history: list[dict[str, Any]]) -> Figure:
    """Loss and natural/adversarial accuracy per epoch of an engine/trainer history (one dict per epoch).

    >>> fig = plot_training_history([{"epoch": 0, "loss": 1.0, "nat_acc": 0.5, "adv_acc": 0.2}])
    >>> len(fig.axes)
    2
    """
    fig = Figure(figsize=(9, 3.4), constrained_layout=True)
    ax_loss, ax_acc = fig.subplots(1, 2)
    epochs = [int(r["epoch"]) + 1 for r in history]
    ax_loss.plot(epochs, [r["loss"] for r in history], marker="o", color="black")
    ax_loss.set_xlabel("epoch")
    ax_loss.set_ylabel("training loss")
    for key, label, style in (("nat_acc", "train natural", "-"), ("adv_acc", "train adversarial", "-"),
                              ("val_nat_acc", "val natural", "--"), ("val_adv_acc", "val adversarial", "--")):
        values = [r.get(key) for r in history]
        if any(v is not None for v in values):
            ax_acc.plot(epochs, [float("nan") if v is None else v for v in values], style, marker="o", label=label)
    ax_acc.set_xlabel("epoch")
    ax_acc.set_ylabel("accuracy")
    ax_acc.set_ylim(0, 1)
    ax_acc.legend(fontsize=8)
    return fig


def plot_leaderboard(placement: Placement, *, label_neighbours: bool = True) -> Figure:
    """Clean vs robust accuracy of every leaderboard entry, the placed model highlighted (red star).

    Robust accuracy is the leaderboard's ranking key (``external`` where RobustBench lists it, else AutoAttack).
    Entries flagged unreliable are hollow; with ``label_neighbours`` the entries just above and below are named.

    >>> from fire_plugin.leaderboard import place_info
    >>> from fire_plugin.robustbench_io import ModelInfo
    >>> p = place_info(ModelInfo(dataset="cifar10", eps="8/255", clean_acc="86.00", autoattack_acc="60.00"),
    ...                threat_model="Linf")
    >>> len(plot_leaderboard(p).axes)
    1
    """
    fig = Figure(figsize=(6.5, 4.8), constrained_layout=True)
    ax = fig.subplots()
    reliable = [e for e in placement.entries if not e.unreliable]
    flagged = [e for e in placement.entries if e.unreliable]
    ax.scatter([e.clean_acc for e in reliable], [e.robust_acc for e in reliable], s=18, color="tab:blue",
               alpha=0.7, label=f"RobustBench entries ({len(reliable)})")
    if flagged:
        ax.scatter([e.clean_acc for e in flagged], [e.robust_acc for e in flagged], s=18, facecolors="none",
                   edgecolors="tab:blue", label=f"flagged unreliable ({len(flagged)})")
    m = placement.model
    ax.scatter([m.clean_acc], [m.robust_acc], s=160, marker="*", color="tab:red", edgecolors="black", zorder=5,
               label=f"{m.model_id}: #{placement.rank} of {placement.n_entries + 1}")
    if label_neighbours:
        for group, offset, ha in ((placement.above[-1:], (-6, 8), "right"), (placement.tied[:1], (6, 2), "left"),
                                  (placement.below[:1], (6, -12), "left")):
            for e in group:
                ax.annotate(f"#{e.rank} {e.model_id}", (e.clean_acc, e.robust_acc), fontsize=7, xytext=offset,
                            textcoords="offset points", ha=ha, arrowprops={"arrowstyle": "-", "lw": 0.5})
    ax.set_xlabel("clean accuracy (%)")
    ax.set_ylabel("robust accuracy (%)")
    ax.set_title(f"RobustBench {placement.dataset} {placement.threat_model}", fontsize=10)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    return fig


# --------------------------------------------------------------------------------------------------
# digits experiments (demo, weight sweep)


def plot_robustness_scatter(rows: Sequence[Mapping[str, Any]], *, x_key: str = "clean", y_key: str = "aa",
                            x_label: str = "clean accuracy", y_label: str = "robust accuracy") -> Figure:
    """Clean vs robust accuracy, one labelled point per method (rows with ``method``, ``x_key``, ``y_key``).

    >>> fig = plot_robustness_scatter([{"method": "fire", "clean": 0.9, "aa": 0.6}])
    >>> len(fig.axes)
    1
    """
    fig = Figure(figsize=(5.2, 4.2), constrained_layout=True)
    ax = fig.subplots()
    markers = "osD^vP*Xh<>"
    for i, row in enumerate(rows):  # a legend, not annotations: close methods would overlap
        ax.scatter(row[x_key], row[y_key], s=45, marker=markers[i % len(markers)], label=str(row["method"]),
                   alpha=0.85)
    ax.legend(fontsize=8, loc="best")
    ax.set_xlabel(x_label)
    ax.set_ylabel(y_label)
    ax.grid(alpha=0.3)
    return fig


def plot_training_curves(histories: Mapping[str, Sequence[Mapping[str, Any]]]) -> Figure:
    """Training loss and natural training accuracy per epoch, one line per method.

    >>> fig = plot_training_curves({"ce": [{"epoch": 0, "loss": 1.0, "nat_acc": 0.5, "lr": 0.1}]})
    >>> len(fig.axes)
    3
    """
    fig = Figure(figsize=(12, 3.4), constrained_layout=True)
    ax_loss, ax_acc, ax_lr = fig.subplots(1, 3)
    for name, history in histories.items():
        epochs = [int(r["epoch"]) + 1 for r in history]
        ax_loss.plot(epochs, [r["loss"] for r in history], label=name)
        ax_acc.plot(epochs, [r["nat_acc"] for r in history], label=name)
        ax_lr.plot(epochs, [r["lr"] for r in history], label=name)
    ax_loss.set_ylabel("training loss (of the method's objective)")
    ax_acc.set_ylabel("natural training accuracy")
    ax_lr.set_ylabel("learning rate")
    for ax in (ax_loss, ax_acc, ax_lr):
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    ax_acc.legend(fontsize=8)
    return fig


def plot_weight_tradeoff(rows: Sequence[Mapping[str, Any]], *, references: Sequence[Mapping[str, Any]] = (),
                         keys: Sequence[tuple[str, str]] = (("clean", "clean"), ("aa", "robust"))) -> Figure:
    """Fig. 7 style: accuracies vs the FIRE weight ``lam`` (rows with ``weight``), reference methods as lines.

    >>> fig = plot_weight_tradeoff([{"weight": 1.0, "clean": 0.9, "aa": 0.5}, {"weight": 3.0, "clean": 0.8, "aa": 0.6}])
    >>> len(fig.axes)
    1
    """
    fig = Figure(figsize=(5.6, 4.0), constrained_layout=True)
    ax = fig.subplots()
    rows = sorted(rows, key=lambda r: r["weight"])
    for (key, label), color in zip(keys, ("tab:blue", "tab:red", "tab:green"), strict=False):
        ax.plot([r["weight"] for r in rows], [r[key] for r in rows], marker="o", color=color, label=f"FIRE {label}")
        for ref, style in zip(references, ("--", ":", "-."), strict=False):
            ax.axhline(ref[key], color=color, linestyle=style, alpha=0.7, label=f"{ref['method']} {label}")
    ax.set_xlabel("lam (weight of d^2, d = 2 arccos BC)")
    ax.set_ylabel("accuracy")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    return fig


# --------------------------------------------------------------------------------------------------
# Fisher-Rao margins and class shielding (fire_plugin.margins)

def plot_path_matrix(report: ShieldingReport) -> Figure:
    """Heat map of the path matrix: rows are source classes, columns the first class reached, colour the share of
    the row's paths (%), annotated with counts; the diagonal holds the paths that did not flip.

    >>> from fire_plugin.margins import MarginResult, shielding_report
    >>> r = MarginResult.empty(num_classes=3)
    >>> len(plot_path_matrix(shielding_report(r)).axes)
    2
    """
    counts = np.asarray(report.path_matrix, dtype=np.float64)
    rows = counts.sum(axis=1, keepdims=True)
    share = np.divide(100.0 * counts, rows, out=np.zeros_like(counts), where=rows > 0)
    m = len(report.class_names)
    size = 1.6 + 0.55 * m
    fig = Figure(figsize=(size + 1.2, size), layout="constrained")
    ax = fig.add_subplot()
    image = ax.imshow(share, cmap="viridis", vmin=0.0, vmax=max(1.0, float(share.max())))
    for i in range(m):
        for j in range(m):
            if counts[i, j]:
                ax.text(j, i, f"{int(counts[i, j])}", ha="center", va="center", fontsize=7,
                        color="white" if share[i, j] < 60 else "black")
    ax.set_xticks(range(m), report.class_names, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(m), report.class_names, fontsize=8)
    ax.set_xlabel("first class reached")
    ax.set_ylabel("source class")
    ax.set_title(f"path matrix ({report.total_flipped} of {report.total_paths} paths flipped; diagonal: not flipped)",
                 fontsize=9)
    fig.colorbar(image, ax=ax, label="share of the source's paths (%)")
    return fig


def plot_class_margins(reports: ShieldingReport | Mapping[str, ShieldingReport], *, note: str | None = None) -> Figure:
    """Per class: shielding % (left: the share of all successful paths on which the class was the first
    intervening label), mean Fisher-Rao margin (middle) and mean ``||delta||_2`` at the flip (right) of the class's
    own successful paths, one bar per report (e.g. CE vs FIRE). Classes without traced or successful paths are left
    blank and named in a note under the axes; ``note`` is added to the title (e.g. "SYNTHETIC inputs").

    >>> from fire_plugin.margins import MarginResult, shielding_report
    >>> report = shielding_report(MarginResult.empty(num_classes=3))
    >>> len(plot_class_margins({"ce": report, "fire": report}).axes)
    3
    """
    named = {"": reports} if not isinstance(reports, Mapping) else dict(reports)
    if not named:
        raise ValueError("reports must hold at least one ShieldingReport, got an empty mapping")
    first = next(iter(named.values()))
    names = first.class_names
    m = len(names)
    fig = Figure(figsize=(max(10.0, 3.0 + 1.4 * m), 3.9), layout="constrained")
    ax_sh, ax_fr, ax_l2 = fig.subplots(1, 3)
    width = 0.8 / len(named)
    xs = np.arange(m)
    blank: set[str] = set()
    for i, (label, report) in enumerate(named.items()):
        if list(report.class_names) != list(names):
            raise ValueError(f"reports[{label!r}] has classes {report.class_names}; allowed: the same as {names}")
        offset = (i - (len(named) - 1) / 2) * width
        ax_sh.bar(xs + offset, report.shielding_pct, width, label=label or None)
        ax_fr.bar(xs + offset, report.mean_fr_margin, width, label=label or None)
        ax_l2.bar(xs + offset, report.mean_l2, width, label=label or None)
        prefix = f"{label}: " if label else ""
        blank |= {prefix + names[c] for c in range(m) if not np.isfinite(report.mean_fr_margin[c])}
    mode = first.traced_with.get("mode") if first.traced_with else None
    margin_label = "mean margin (steps x step)" if mode == "paper" else "mean FR margin"
    for ax, ylabel in ((ax_sh, "shielding % (first intervening label)"), (ax_fr, margin_label),
                       (ax_l2, "mean ||delta||_2 at the flip")):
        ax.set_xticks(xs, names, rotation=45, ha="right", fontsize=8)
        ax.set_ylabel(ylabel, fontsize=9)
        ax.grid(axis="y", alpha=0.3)
        if len(named) > 1:
            ax.legend(fontsize=8)
    total = sum(r.total_flipped for r in named.values())
    title = f"class shielding and margins ({total} successful paths)"
    fig.suptitle(title + (f" - {note}" if note else ""), fontsize=10)
    if blank:
        fig.supxlabel("blank: no successful path from " + ", ".join(sorted(blank)), fontsize=8)
    return fig


def plot_margin_histograms(results: MarginResult | Mapping[str, MarginResult], *, bins: int = 30,
                           note: str | None = None) -> Figure:
    """Histograms of the margins of the flipped paths (left) and of the per-input margins, the minimum over
    targets (right), one overlaid histogram per result (e.g. CE vs FIRE), with a title and a labelled legend.

    >>> from fire_plugin.margins import MarginResult
    >>> len(plot_margin_histograms(MarginResult.empty(num_classes=3)).axes)
    2
    """
    named = {"": results} if not isinstance(results, Mapping) else dict(results)
    if not named:
        raise ValueError("results must hold at least one MarginResult, got an empty mapping")
    if bins < 1:
        raise ValueError(f"bins={bins!r} is not allowed; allowed: a positive int")
    fig = Figure(figsize=(9.0, 3.6), layout="constrained")
    ax_paths, ax_inputs = fig.subplots(1, 2)
    modes = set()
    for label, result in named.items():
        modes.add(result.mode)
        lengths = result.margin[result.flipped]
        margins = result.input_margins()
        margins = margins[np.isfinite(margins) & (margins > 0)]
        name = label or ("paper margin" if result.mode == "paper" else "FR margin")
        for ax, values, what in ((ax_paths, lengths, "paths"), (ax_inputs, margins, "inputs")):
            if len(values):
                ax.hist(values, bins=bins, alpha=0.55, label=f"{name} ({len(values)} {what})")
            else:
                ax.text(0.5, 0.5, f"{name}: no flipped {what}", transform=ax.transAxes, ha="center", fontsize=8)
    unit = "margin (steps x step)" if modes == {"paper"} else "FR margin"
    ax_paths.set_xlabel(f"{unit} of each flipped path")
    ax_inputs.set_xlabel(f"{unit} per input (min over targets)")
    for ax in (ax_paths, ax_inputs):
        ax.set_ylabel("count")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, title="model (count)" if len(named) > 1 else None, title_fontsize=8)
    fig.suptitle("Fisher-Rao margins: flipped paths and inputs" + (f" - {note}" if note else ""), fontsize=10)
    return fig


def plot_convergence_study(study: Any) -> Figure:
    """Shielding % (left) and mean margin (right) against the step, one line per damping, log x axis, for a
    :class:`fire_plugin.margins.ConvergenceStudy`.

    >>> from fire_plugin.margins import ConvergenceStudy
    >>> len(plot_convergence_study(ConvergenceStudy(rows=[], class_names=[], n_inputs=0)).axes)
    2
    """
    fig = Figure(figsize=(9.0, 3.5), layout="constrained")
    ax_s, ax_m = fig.subplots(1, 2)
    mode = study.rows[0]["mode"] if study.rows else "-"
    for damping in study.dampings():
        rows = [r for r in study.rows if r["damping"] == damping]
        xs = [r["step"] for r in rows]
        for ax, key in ((ax_s, "shielding_pct"), (ax_m, "mean_margin")):
            ys = [np.nan if r[key] is None else r[key] for r in rows]
            ax.plot(xs, ys, marker="o", label=f"damping {damping:g}")
    for ax, ylabel in ((ax_s, "shielding % of flipped paths"),
                       (ax_m, "mean margin (steps x step)" if mode == "paper" else "mean FR margin")):
        ax.set_xscale("log")
        ax.set_xlabel("step (damped-metric length)")
        ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3, which="both")
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, title="damping", title_fontsize=8)
    note = f" - {study.inputs_note}" if study.inputs_note and study.inputs_note.startswith("SYNTHETIC") else ""
    fig.suptitle(f"convergence in the step ({mode} mode, {study.n_inputs} inputs){note}", fontsize=10)
    return fig

"""The Gaussian/logistic lab end to end: sweeps, coverage, closed forms, JSON report and figures.

:func:`run_report` runs :func:`~fire_plugin.gaussian_erm.erm_sweep` for each regularizer, measures its
coverage of the exact Pareto front, and writes ``gaussian_report.json`` and the figures of section 4 (drawn by
:mod:`fire_plugin.plots`) into an output directory. This is the only gaussian module that imports the plotting
code: data flow one way, ``gaussian_model -> gaussian_erm -> plots -> gaussian_report``.
``fire_plugin.gaussian.run_report`` is this function.

>>> report = run_report("/tmp/gaussian_lab", lambdas=[0.0, 1.0], n_per_class=500,
...                     include_global=False, verbose=False)  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray

from fire_plugin import plots
from fire_plugin.gaussian_erm import DEFAULT_LAMBDAS, FIG4_LAMBDAS, SweepResult, erm_sweep, sweep_coverage
from fire_plugin.gaussian_model import (
    REGULARIZERS,
    GaussianModel,
    OperatingPoint,
    _check_choice,
    _floats,
    _none_if_nan,
    paper_setting,
)

__all__ = ["run_report"]

_logger = logging.getLogger(__name__)


def run_report(
    out_dir: str | Path,
    *,
    mu: ArrayLike | None = None,
    sigma: ArrayLike | None = None,
    eps: float | None = None,
    lambdas: Sequence[float] | None = None,
    n_per_class: int = 10_000,
    seed: int = 0,
    regularizers: Sequence[str] = REGULARIZERS,
    include_global: bool = True,
    adversary: str = "ce",
    tol: float = 0.005,
    verbose: bool = True,
) -> dict[str, Any]:
    """Run the lab end to end and write ``gaussian_report.json`` and PNG figures into ``out_dir``.

    ``mu``, ``sigma``, ``eps`` default to :func:`paper_setting` (each one separately); ``lambdas`` defaults to
    :data:`DEFAULT_LAMBDAS`. For each regularizer the sweep runs with the local solver (BFGS from 0) and, with
    ``include_global``, the polar-grid global solver. Figures: ``gaussian_fig6.png`` (trade-off curve, Pareto
    front, each sweep; Figs. 6 and 9), ``gaussian_fig2.png`` / ``gaussian_fig3.png`` (q(1|x) and the
    Fisher-Rao distance over the eps-ball around 0 for the natural and adversarial optima),
    ``gaussian_fig4.png`` (FIRE minimizers at the lambdas of Fig. 4), ``gaussian_fig5.png`` (Fisher-Rao vs
    Euclidean distance over latent codes). Returns the report dictionary (also written as JSON), with the
    written paths under ``"files"``.

    >>> report = run_report("/tmp/gaussian_lab", lambdas=[0.0, 1.0], n_per_class=500,
    ...                     include_global=False, verbose=False)  # doctest: +SKIP
    >>> sorted(report["coverage"])  # doctest: +SKIP
    ['fisher_rao/bfgs-local', 'hellinger/bfgs-local', 'kl/bfgs-local']
    """
    base = paper_setting()
    model = GaussianModel(
        base.mu if mu is None else mu,
        base.sigma if sigma is None else sigma,
        base.eps if eps is None else eps,
    )
    lam = list(DEFAULT_LAMBDAS) if lambdas is None else [float(v) for v in lambdas]
    for r in regularizers:
        _check_choice("regularizers", r, REGULARIZERS)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    _logger.info("Gaussian lab: %r, %d lambdas, n_per_class=%d", model, len(lam), n_per_class)
    sweeps, coverage = _sweeps_and_coverage(model, regularizers, lam, n_per_class=n_per_class, seed=seed,
                                            include_global=include_global, adversary=adversary, tol=tol,
                                            verbose=verbose)
    report: dict[str, Any] = {
        "setting": {"mu": _floats(model.mu), "sigma": [_floats(r) for r in model.sigma], "eps": model.eps},
        "adversary": adversary,
        "lambdas": lam,
        "n_per_class": int(n_per_class),
        "seed": int(seed),
        "tol": float(tol),
        "sweeps": [s.to_dict() for s in sweeps],
        "coverage": coverage,
        "files": {},
    }
    files: dict[str, str] = {}
    if model.dim == 2:
        entries, files = _two_d_report(model, sweeps, out, n_per_class=n_per_class, seed=seed, adversary=adversary)
        report.update(entries)
    files["fig5"] = _save(plots.plot_fisher_rao_vs_euclidean(), out / "gaussian_fig5.png")
    report["files"] = files
    path = out / "gaussian_report.json"
    path.write_text(json.dumps(_jsonable(report), indent=2))
    report["files"]["report"] = str(path)
    _logger.info("wrote %s", path)
    return report


def _sweeps_and_coverage(
    model: GaussianModel,
    regularizers: Sequence[str],
    lam: list[float],
    *,
    n_per_class: int,
    seed: int,
    include_global: bool,
    adversary: str,
    tol: float,
    verbose: bool,
) -> tuple[list[SweepResult], dict[str, Any]]:
    """One sweep per regularizer and solver (the global one only in 2-D), and in 2-D the coverage of each, keyed
    ``"<regularizer>/<solver>"``."""
    sweeps: list[SweepResult] = []
    coverage: dict[str, Any] = {}
    solvers = (False, True) if include_global and model.dim == 2 else (False,)
    for reg in regularizers:
        for glob in solvers:
            sw = erm_sweep(
                reg,
                lam,
                model=model,
                n_per_class=n_per_class,
                seed=seed,
                global_minimizer=glob,
                adversary=adversary,
                verbose=verbose,
            )
            sweeps.append(sw)
            if model.dim == 2:
                cov = sweep_coverage(model, sw, tol=tol)
                coverage[f"{reg}/{sw.solver}"] = cov.to_dict()
                _logger.info(
                    "%s %s: coverage %.3f, best avg acc %.4f (MAA %.4f)",
                    reg,
                    sw.solver,
                    cov.covered_share,
                    cov.best_average_accuracy,
                    cov.maa,
                )
    return sweeps, coverage


def _two_d_report(
    model: GaussianModel, sweeps: list[SweepResult], out: Path, *, n_per_class: int, seed: int, adversary: str
) -> tuple[dict[str, Any], dict[str, str]]:
    """The report entries of a 2-D setting (the closed forms; the FIRE minimizers at the lambdas of Fig. 4) and the
    figures 6, 2, 3 and 4 written into ``out`` (name -> path)."""
    nat_pt, adv_pt = model.natural_optimum(), model.adversarial_optimum()
    maa, maa_alpha = model.maa()
    entries: dict[str, Any] = {
        "closed_forms": {
            "natural_optimum": _point_dict(nat_pt),
            "adversarial_optimum": _point_dict(adv_pt),
            "maa": maa,
            "maa_alpha": maa_alpha,
            "bayes_theta": _floats(model.bayes_theta()),
            "sigma_eigenvalues": _floats(model._eig),
        }
    }
    fig4 = erm_sweep(
        "fisher_rao",
        list(FIG4_LAMBDAS),
        model=model,
        n_per_class=n_per_class,
        seed=seed,
        adversary=adversary,
    )
    entries["fig4_thetas"] = {f"{v:g}": _floats(t) for v, t in zip(FIG4_LAMBDAS, fig4.thetas, strict=True)}
    files: dict[str, str] = {}
    curve, front = model.accuracy_curve(), model.pareto_front()
    fig = plots.plot_tradeoff(curve, front, sweeps, maa=(maa, maa_alpha), model=model)
    files["fig6"] = _save(fig, out / "gaussian_fig6.png")
    thetas_2 = {
        f"min Pe: theta = {_fmt(model.bayes_theta())}": model.bayes_theta(),
        f"min Pe': theta = {_fmt(np.asarray(adv_pt.theta))}": np.asarray(adv_pt.theta),
    }
    files["fig2"] = _save(plots.plot_manifold_surfaces(thetas_2, extent=0.5), out / "gaussian_fig2.png")
    files["fig3"] = _save(plots.plot_fisher_rao_ball(thetas_2, eps=model.eps), out / "gaussian_fig3.png")
    thetas_4 = {f"FIRE lambda = {v:g}": t for v, t in zip(FIG4_LAMBDAS, fig4.thetas, strict=True)}
    files["fig4"] = _save(plots.plot_manifold_surfaces(thetas_4, extent=0.5), out / "gaussian_fig4.png")
    return entries, files


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, np.ndarray):
        return _jsonable(obj.tolist())
    if isinstance(obj, float | np.floating):
        return _none_if_nan(float(obj))
    if isinstance(obj, np.integer):
        return int(obj)
    if isinstance(obj, np.bool_):
        return bool(obj)
    return obj


def _point_dict(p: OperatingPoint) -> dict[str, Any]:
    return {
        "alpha": p.alpha,
        "theta": list(p.theta),
        "natural_accuracy": p.natural_accuracy,
        "adversarial_accuracy": p.adversarial_accuracy,
        "average_accuracy": p.average_accuracy,
    }


def _fmt(theta: NDArray[np.float64]) -> str:
    return "[" + ", ".join(f"{v:.4f}" for v in theta) + "]"


def _save(fig: Any, path: Path) -> str:
    from fire_plugin.runfolder import atomic_path

    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight")
    return str(path)

"""Empirical risk minimization in the Gaussian/logistic lab: FIRE, TRADES and Hellinger sweeps over lambda.

For each weight ``lam`` the regularized empirical risk ``mean[-log q(y|x) + lam * r(q(.|x), q(.|x'))]`` on a
sample of the :class:`~fire_plugin.gaussian_model.GaussianModel` is minimized (:func:`erm_sweep`), the
minimizers are placed with their exact accuracies, and :func:`sweep_coverage` measures how much of the exact
Pareto front a sweep reaches and how far its best average accuracy is from the MAA (section 4.2, Figs. 6 and 9).

Weights: ``lam`` multiplies ``d^2`` with ``d = 2 * arccos(BC)`` for Fisher-Rao (``beta = 4 * lam`` in the
authors' ``beta * arccos(BC)^2`` convention), ``KL`` for TRADES and ``H^2 = 2 (1 - BC)`` for Hellinger.

This module uses numpy and scipy only. Users import its names from :mod:`fire_plugin.gaussian`.

>>> sweep = erm_sweep("kl", [0.0, 1.0], n_per_class=500)
>>> bool(sweep.natural_accuracy[0] >= sweep.natural_accuracy[1])
True
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special
from tqdm.auto import tqdm

from fire_plugin.gaussian_model import (
    _TWO_PI,
    REGULARIZERS,
    GaussianModel,
    _check_choice,
    _check_int,
    _circular_span,
    _divergence_and_grads,
    _floats,
    _none_if_nan,
    _unit,
    paper_setting,
)

__all__ = [
    "ADVERSARIES",
    "DEFAULT_LAMBDAS",
    "FIG4_LAMBDAS",
    "SweepResult",
    "Coverage",
    "erm_objective",
    "erm_sweep",
    "sweep_coverage",
]

_logger = logging.getLogger(__name__)

ADVERSARIES: tuple[str, ...] = ("ce", "divergence")
"""Adversaries for the regularizer in :func:`erm_sweep`.

``"ce"``: eq (19), ``x' = x - eps y theta/||theta||`` (label-dependent, what the issue and section 4.1 name).
``"divergence"``: the maximizer of the divergence itself over the L2 ball, as the inner max of eqs (5),
(7), (48) literally reads; for a linear model it is ``x' = x - eps sign(theta^T x) theta/||theta||``
for all three divergences. The two differ only on misclassified samples.
"""

DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, *(float(v) for v in np.logspace(-2, 3, 61)))
"""Default lambda grid of ``run_report``: 0 and 61 log-spaced values in [1e-2, 1e3]."""

FIG4_LAMBDAS: tuple[float, ...] = (0.0, 3.8957, 98.1730)
"""The lambdas of the paper's Fig. 4 (FIRE surfaces of q(1|x))."""


# ----------------------------------------------------------------------------------------------------------
# Results


@dataclass
class SweepResult:
    """Empirical risk minimizers of one regularizer over a lambda grid, with their exact accuracies.

    ``natural_accuracy`` and ``adversarial_accuracy`` are the closed forms ``1 - Pe(theta)`` and
    ``1 - Pe'(theta)`` (eqs 20, 21) of the learned ``theta``, i.e. population values, not training-set values.
    Entries are NaN where ``theta`` is exactly zero (no decision rule).

    >>> r = erm_sweep("fisher_rao", [0.0], n_per_class=500)
    >>> r.thetas.shape
    (1, 2)
    """

    regularizer: str
    solver: str
    adversary: str
    lambdas: NDArray[np.float64]
    thetas: NDArray[np.float64]
    natural_accuracy: NDArray[np.float64]
    adversarial_accuracy: NDArray[np.float64]
    alpha: NDArray[np.float64]
    objective: NDArray[np.float64]
    converged: NDArray[np.bool_]
    from_grid: NDArray[np.bool_]
    n_per_class: int
    seed: int
    eps: float

    @property
    def average_accuracy(self) -> NDArray[np.float64]:
        """``(natural + adversarial) / 2`` per lambda."""
        return 0.5 * (self.natural_accuracy + self.adversarial_accuracy)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (NaN becomes ``None``)."""
        return {
            "regularizer": self.regularizer,
            "solver": self.solver,
            "adversary": self.adversary,
            "n_per_class": self.n_per_class,
            "seed": self.seed,
            "eps": self.eps,
            "lambdas": _floats(self.lambdas),
            "thetas": [_floats(t) for t in self.thetas],
            "alpha": _floats(self.alpha),
            "natural_accuracy": _floats(self.natural_accuracy),
            "adversarial_accuracy": _floats(self.adversarial_accuracy),
            "objective": _floats(self.objective),
            "converged": [bool(c) for c in self.converged],
            "from_grid": [bool(c) for c in self.from_grid],
        }


@dataclass(frozen=True)
class Coverage:
    """How much of the exact Pareto front a sweep reaches.

    ``covered_share`` is the share of Pareto-optimal points (a dense angle grid) that lie within ``tol``
    (Euclidean distance in the (natural, adversarial) accuracy plane) of some sweep point.
    ``uncovered_segments`` lists the runs of uncovered Pareto points as ``(alpha_start, alpha_end)``, in the
    order of the front (decreasing natural accuracy). Angles are in radians; a span ``(lo, hi)`` is the
    smallest circular arc holding the points, with ``lo`` in ``[0, 2 pi)`` and ``hi >= lo``.

    >>> m = paper_setting()
    >>> c = sweep_coverage(m, erm_sweep("kl", [0.0, 1.0], n_per_class=500))
    >>> 0.0 <= c.covered_share <= 1.0
    True
    """

    regularizer: str
    solver: str
    tol: float
    n_pareto: int
    covered_share: float
    best_average_accuracy: float
    best_lambda: float
    maa: float
    maa_alpha: float
    maa_gap: float
    sweep_alpha_span: tuple[float, float]
    pareto_alpha_span: tuple[float, float]
    uncovered_segments: tuple[tuple[float, float], ...] = field(default_factory=tuple)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary."""
        return {
            "regularizer": self.regularizer,
            "solver": self.solver,
            "tol": self.tol,
            "n_pareto": self.n_pareto,
            "covered_share": self.covered_share,
            "best_average_accuracy": _none_if_nan(self.best_average_accuracy),
            "best_lambda": _none_if_nan(self.best_lambda),
            "maa": self.maa,
            "maa_alpha": self.maa_alpha,
            "maa_gap": _none_if_nan(self.maa_gap),
            "sweep_alpha_span": [_none_if_nan(v) for v in self.sweep_alpha_span],
            "pareto_alpha_span": list(self.pareto_alpha_span),
            "uncovered_segments": [list(s) for s in self.uncovered_segments],
        }


# ----------------------------------------------------------------------------------------------------------
# Empirical risk and its minimization


def _adversary_sign(adversary: str, h: NDArray[np.float64], y: NDArray[np.float64]) -> NDArray[np.float64]:
    if adversary == "ce":
        return y
    return np.where(h != 0.0, np.sign(h), y)


def erm_objective(
    theta: ArrayLike,
    x: ArrayLike,
    y: ArrayLike,
    *,
    regularizer: str,
    lam: float,
    eps: float,
    adversary: str = "ce",
) -> tuple[float, NDArray[np.float64]]:
    """Empirical risk ``mean[-log q(y|x) + lam * r(q(.|x), q(.|x'))]`` and its gradient in ``theta``.

    ``x' = x - eps * s * theta / ||theta||`` with ``s = y`` (eq 19, ``adversary="ce"``) or
    ``s = sign(theta^T x)`` (``adversary="divergence"``); ``r`` is a :data:`REGULARIZERS` entry, ``lam``
    multiplies it as written (Fisher-Rao: ``lam * d^2``, i.e. ``beta = 4 * lam`` in the authors'
    ``beta * arccos(BC)^2`` convention).
    At ``theta = 0`` the gradient is well defined (the regularizer is second order in ``||theta||``).

    >>> x, y = paper_setting().sample(100)
    >>> value, grad = erm_objective([0.0, 0.0], x, y, regularizer="fisher_rao", lam=1.0, eps=0.1)
    >>> round(value, 6) == round(math.log(2), 6)
    True
    """
    _check_choice("regularizer", regularizer, REGULARIZERS)
    _check_choice("adversary", adversary, ADVERSARIES)
    t = np.asarray(theta, dtype=np.float64)
    xa = np.asarray(x, dtype=np.float64)
    ya = np.asarray(y, dtype=np.float64)
    return _objective(t, xa, ya, regularizer, float(lam), float(eps), adversary)


def _objective(
    theta: NDArray[np.float64],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    regularizer: str,
    lam: float,
    eps: float,
    adversary: str,
) -> tuple[float, NDArray[np.float64]]:
    h = x @ theta  # (N,)
    norm = float(np.linalg.norm(theta))
    ce = np.logaddexp(0.0, -y * h)
    dce = -y * special.expit(-y * h)
    if lam == 0.0 or eps == 0.0:
        return float(ce.mean()), x.T @ dce / h.size
    s = _adversary_sign(adversary, h, y)
    hp = h - eps * s * norm
    r, dr_h, dr_hp = _divergence_and_grads(regularizer, h, hp)
    value = float(ce.mean() + lam * r.mean())
    grad = x.T @ (dce + lam * (dr_h + dr_hp)) / h.size
    if norm > 0.0:
        grad = grad - (lam * eps * float(np.mean(dr_hp * s)) / norm) * theta
    return value, grad


def _grid_terms(
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    regularizer: str,
    eps: float,
    adversary: str,
    angles: NDArray[np.float64],
    radii: NDArray[np.float64],
) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
    """Mean cross-entropy and mean regularizer on the polar grid ``theta = r (cos a, sin a)``.

    Both have shape ``(len(radii), len(angles))``; the risk at weight ``lam`` is ``ce + lam * reg``, so one
    evaluation of the grid serves every lambda of a sweep.
    """
    h1 = x @ _unit(angles).T  # (N, A): codes of unit directions
    ce = np.empty((radii.size, angles.size))
    reg = np.zeros_like(ce)
    for i, r in enumerate(radii):
        h = r * h1
        ce[i] = np.logaddexp(0.0, -y[:, None] * h).mean(axis=0)
        if eps > 0.0:
            s = _adversary_sign(adversary, h, y[:, None])
            reg[i] = _divergence_and_grads(regularizer, h, h - eps * s * r)[0].mean(axis=0)
    return ce, reg


def _minimize(
    theta0: NDArray[np.float64],
    x: NDArray[np.float64],
    y: NDArray[np.float64],
    regularizer: str,
    lam: float,
    eps: float,
    adversary: str,
    gtol: float,
) -> optimize.OptimizeResult:
    return optimize.minimize(
        _objective,
        theta0,
        args=(x, y, regularizer, lam, eps, adversary),
        jac=True,
        method="BFGS",
        options={"gtol": gtol, "maxiter": 2000},
    )


def erm_sweep(
    regularizer: str,
    lambdas: Sequence[float] | ArrayLike,
    *,
    model: GaussianModel | None = None,
    n_per_class: int = 10_000,
    seed: int = 0,
    global_minimizer: bool = False,
    adversary: str = "ce",
    n_grid_angles: int = 72,
    n_grid_radii: int = 33,
    n_refine: int = 3,
    gtol: float = 1e-7,
    verbose: bool = False,
) -> SweepResult:
    """Minimize the empirical regularized risk for each ``lam``; place the minimizers against the exact curve.

    The data are ``n_per_class`` samples of each class drawn with ``seed`` (the same data for every lambda).
    The risk is ``mean[-log q(y|x) + lam * r(q(.|x), q(.|x'))]`` (see :func:`erm_objective`; ``lam``
    multiplies ``d^2`` for Fisher-Rao, so ``beta = 4 * lam`` in the authors' code convention).
    Local solver (default): BFGS from ``theta = 0`` for every lambda, as in footnote 4.
    ``global_minimizer=True``: also evaluate the risk on a polar grid ``r (cos a, sin a)`` (``n_grid_angles``
    angles times ``n_grid_radii`` radii log-spaced over ``[1e-4, 10^2.5] / rms(||x||)``), take the best
    radius per angle, refine the ``n_refine`` lowest local minima over angles with BFGS, and keep the lowest
    risk among these and the local solution. The polar grid needs ``dim == 2``.

    Args:
        regularizer: ``"fisher_rao"`` (FIRE), ``"kl"`` (TRADES) or ``"hellinger"``.
        lambdas: non-negative, finite weights.
        model: the Gaussian setting; :func:`paper_setting` when ``None``.
        n_per_class: training samples per class (footnote 4 uses 10^4).
        seed: seed of the training sample.
        global_minimizer: search a polar grid before refining (see above).
        adversary: ``"ce"`` (eq 19) or ``"divergence"``; see :data:`ADVERSARIES`.
        verbose: show a ``tqdm.auto`` progress bar over lambdas.

    >>> r = erm_sweep("fisher_rao", [0.0, 1.0], n_per_class=1000)
    >>> r.natural_accuracy.shape
    (2,)
    """
    _check_choice("regularizer", regularizer, REGULARIZERS)
    _check_choice("adversary", adversary, ADVERSARIES)
    lam_arr = np.atleast_1d(np.asarray(lambdas, dtype=np.float64))
    if lam_arr.ndim != 1 or lam_arr.size == 0 or not np.all(np.isfinite(lam_arr)) or np.any(lam_arr < 0):
        raise ValueError(f"lambdas must be a non-empty 1-D sequence of finite values >= 0, got {lambdas!r}")
    m = paper_setting() if model is None else model
    if not isinstance(m, GaussianModel):
        raise ValueError(f"model must be a GaussianModel or None, got {type(model).__name__}")
    n_grid_angles = _check_int("n_grid_angles", n_grid_angles, minimum=4)
    n_grid_radii = _check_int("n_grid_radii", n_grid_radii, minimum=1)
    n_refine = _check_int("n_refine", n_refine, minimum=1)
    if not (math.isfinite(gtol) and gtol > 0):
        raise ValueError(f"gtol must be a finite number > 0, got {gtol!r}")
    if global_minimizer:
        m._need_2d("erm_sweep(global_minimizer=True)")
    x, y = m.sample(n_per_class, seed=seed)
    solver = "bfgs-global-polar" if global_minimizer else "bfgs-local"
    risk = _Risk(x, y, regularizer, m.eps, adversary, gtol)
    grid = _PolarGrid.of(risk, n_grid_angles, n_grid_radii) if global_minimizer else None

    k = lam_arr.size
    thetas = np.zeros((k, m.dim))
    objective = np.zeros(k)
    converged = np.zeros(k, dtype=bool)
    from_grid = np.zeros(k, dtype=bool)
    bar = tqdm(lam_arr, desc=f"{regularizer} ({solver})", unit="lambda", disable=not verbose, leave=False)
    for i, lam in enumerate(bar):
        best, from_grid[i] = _solve(risk, float(lam), grid, n_refine)
        thetas[i] = best.x
        objective[i] = best.fun
        converged[i] = bool(best.success) or float(np.linalg.norm(best.jac)) < 1e-5
        if not converged[i]:
            _logger.warning("%s lam=%g: BFGS did not converge (%s)", regularizer, float(lam), best.message)
    bar.close()
    nat, adv, alpha = _placed(m, thetas, lam_arr, regularizer)
    return SweepResult(
        regularizer=regularizer,
        solver=solver,
        adversary=adversary,
        lambdas=lam_arr,
        thetas=thetas,
        natural_accuracy=nat,
        adversarial_accuracy=adv,
        alpha=alpha,
        objective=objective,
        converged=converged,
        from_grid=from_grid,
        n_per_class=int(n_per_class),
        seed=int(seed),
        eps=m.eps,
    )


@dataclass(frozen=True)
class _Risk:
    """The regularized empirical risk of one sweep, but for its weight: the sample ``(x, y)``, the regularizer,
    the radius ``eps``, the adversary and BFGS's ``gtol``."""

    x: NDArray[np.float64]
    y: NDArray[np.float64]
    regularizer: str
    eps: float
    adversary: str
    gtol: float

    def minimize(self, theta0: NDArray[np.float64], lam: float) -> optimize.OptimizeResult:
        """BFGS on the risk at weight ``lam`` from ``theta0``."""
        return _minimize(theta0, self.x, self.y, self.regularizer, lam, self.eps, self.adversary, self.gtol)


@dataclass(frozen=True)
class _PolarGrid:
    """The global solver's polar grid ``theta = r (cos a, sin a)``: the mean cross-entropy ``ce`` and regularizer
    ``reg`` (both ``(len(radii), len(angles))``) at every point, computed once for every lambda of a sweep."""

    angles: NDArray[np.float64]
    radii: NDArray[np.float64]
    ce: NDArray[np.float64]
    reg: NDArray[np.float64]

    @classmethod
    def of(cls, risk: _Risk, n_angles: int, n_radii: int) -> _PolarGrid:
        """``n_angles`` angles times ``n_radii`` radii log-spaced over ``[1e-4, 10^2.5] / rms(||x||)``."""
        angles = np.arange(n_angles, dtype=np.float64) * (_TWO_PI / n_angles)
        scale = 1.0 / math.sqrt(float(np.mean(np.sum(risk.x * risk.x, axis=1))))  # |theta^T x| ~ 1 at r = scale
        radii = scale * np.logspace(-4.0, 2.5, n_radii)
        ce, reg = _grid_terms(risk.x, risk.y, risk.regularizer, risk.eps, risk.adversary, angles, radii)
        return cls(angles, radii, ce, reg)

    def starts(self, lam: float, n_refine: int) -> list[NDArray[np.float64]]:
        """The best radius at each of the ``n_refine`` lowest local minima over angles of the risk at ``lam``."""
        grid = self.ce + lam * self.reg  # (R, A)
        per_angle = grid.min(axis=0)  # (A,)
        is_min = (per_angle <= np.roll(per_angle, 1)) & (per_angle <= np.roll(per_angle, -1))
        candidates = np.flatnonzero(is_min)
        return [self.radii[int(np.argmin(grid[:, j]))] * _unit(self.angles[j])
                for j in candidates[np.argsort(per_angle[candidates])][:n_refine]]


def _solve(risk: _Risk, lam: float, grid: _PolarGrid | None, n_refine: int) -> tuple[optimize.OptimizeResult, bool]:
    """The minimizer at weight ``lam`` and whether the grid gave it: BFGS from ``theta = 0`` (footnote 4) and, with
    a grid, BFGS from its ``n_refine`` best starts, keeping the lowest risk."""
    best, best_from_grid = risk.minimize(np.zeros(risk.x.shape[1]), lam), False
    for start in [] if grid is None else grid.starts(lam, n_refine):
        cand = risk.minimize(start, lam)
        if cand.fun < best.fun - 1e-12:
            best, best_from_grid = cand, True
    return best, best_from_grid


def _placed(
    m: GaussianModel, thetas: NDArray[np.float64], lambdas: NDArray[np.float64], regularizer: str
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Exact natural and adversarial accuracy and the angle (2-D) of each minimizer; NaN where ``theta = 0``."""
    k = len(thetas)
    nonzero = np.linalg.norm(thetas, axis=1) > 0.0
    nat = np.full(k, np.nan)
    adv = np.full(k, np.nan)
    alpha = np.full(k, np.nan)
    if np.any(nonzero):
        n_acc, a_acc = m.accuracies(thetas[nonzero])
        nat[nonzero], adv[nonzero] = n_acc, a_acc
        if m.dim == 2:
            alpha[nonzero] = np.arctan2(thetas[nonzero, 1], thetas[nonzero, 0]) % _TWO_PI
    if not np.all(nonzero):
        zero_lams = lambdas[~nonzero].tolist()
        _logger.warning("%s: theta = 0 for lambdas %s (no decision rule)", regularizer, zero_lams)
    return nat, adv, alpha


# ----------------------------------------------------------------------------------------------------------
# Coverage of the Pareto front


def sweep_coverage(
    model: GaussianModel,
    sweep: SweepResult,
    *,
    tol: float = 0.005,
    n_angles: int = 3600,
) -> Coverage:
    """Coverage metrics of a sweep against the exact Pareto front and MAA of ``model``.

    Args:
        model: the setting the sweep was run on.
        sweep: an :func:`erm_sweep` result.
        tol: distance in the (natural, adversarial) accuracy plane under which a Pareto point is reached.
        n_angles: angle grid of the Pareto front.

    >>> m = paper_setting()
    >>> c = sweep_coverage(m, erm_sweep("fisher_rao", [0.0], n_per_class=2000))
    >>> c.covered_share < 0.5
    True
    """
    if not isinstance(model, GaussianModel):
        raise ValueError(f"model must be a GaussianModel, got {type(model).__name__}")
    if not isinstance(sweep, SweepResult):
        raise ValueError(f"sweep must be a SweepResult, got {type(sweep).__name__}")
    if not (math.isfinite(tol) and tol > 0):
        raise ValueError(f"tol must be a finite number > 0, got {tol!r}")
    front = model.pareto_front(n_angles)
    maa, maa_alpha = model.maa(n_angles=n_angles)
    ok = np.isfinite(sweep.natural_accuracy)
    pts = np.stack([sweep.natural_accuracy[ok], sweep.adversarial_accuracy[ok]], axis=1)  # (S, 2)
    fp = np.stack([front.natural, front.adversarial], axis=1)  # (P, 2)
    if pts.size:
        dist = np.sqrt(((fp[:, None, :] - pts[None, :, :]) ** 2).sum(axis=-1)).min(axis=1)
        covered = dist <= tol
        avg = 0.5 * (pts[:, 0] + pts[:, 1])
        j = int(np.argmax(avg))
        best_avg = float(avg[j])
        best_lam = float(sweep.lambdas[ok][j])
        span = _circular_span(sweep.alpha[ok])
    else:
        covered = np.zeros(fp.shape[0], dtype=bool)
        best_avg = best_lam = float("nan")
        span = (float("nan"), float("nan"))
    segments: list[tuple[float, float]] = []
    start: int | None = None
    for i, c in enumerate([*covered.tolist(), True]):
        if not c and start is None:
            start = i
        elif c and start is not None:
            segments.append((float(front.alpha[start]), float(front.alpha[i - 1])))
            start = None
    return Coverage(
        regularizer=sweep.regularizer,
        solver=sweep.solver,
        tol=float(tol),
        n_pareto=int(fp.shape[0]),
        covered_share=float(covered.mean()),
        best_average_accuracy=best_avg,
        best_lambda=best_lam,
        maa=float(maa),
        maa_alpha=float(maa_alpha),
        maa_gap=float(maa - best_avg),
        sweep_alpha_span=span,
        pareto_alpha_span=_circular_span(front.alpha),
        uncovered_segments=tuple(segments),
    )


"""The Gaussian/logistic lab of section 4 and Appendix B of the FIRE paper.

Binary classes ``y in {-1, +1}``, equally likely, with ``x | y ~ N(y mu, Sigma)``; a logistic model
``q(y|x) = 1 / (1 + exp(-y theta^T x))``; the cross-entropy-maximizing L2 adversary of eq (19),
``x' = x - eps * y * theta / ||theta||``. Everything accuracy-related has a closed form (eqs 20-24), so the
accuracy-robustness trade-off can be studied exactly, and the empirical risk minimizers of FIRE (Fisher-Rao),
TRADES (KL) and Hellinger regularization can be placed against the exact Pareto front.

Weights: ``lam`` multiplies the paper's regularizer as written, i.e. ``d^2`` with the Fisher-Rao distance
``d = 2 * arccos(BC)`` of Theorem 1 / eq (15), ``KL(q(.|x) || q(.|x'))`` of eq (6), and
``H^2 = 2 (1 - BC)`` of eq (46). The authors' public code uses ``beta * arccos(BC)^2``, i.e.
``beta = 4 * lam`` for Fisher-Rao.

This module uses numpy and scipy only.

>>> model = paper_setting()
>>> value, alpha = model.maa()
>>> round(value, 3), round(alpha, 2)
(0.49, 2.07)
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special, stats
from tqdm.auto import tqdm

__all__ = [
    "REGULARIZERS",
    "ADVERSARIES",
    "DEFAULT_LAMBDAS",
    "FIG4_LAMBDAS",
    "AccuracyCurve",
    "OperatingPoint",
    "SweepResult",
    "Coverage",
    "GaussianModel",
    "paper_setting",
    "fisher_rao_binary",
    "binary_divergence",
    "erm_objective",
    "erm_sweep",
    "sweep_coverage",
    "run_report",
]

_logger = logging.getLogger(__name__)

FloatOrArray: TypeAlias = "float | NDArray[np.float64]"
"""A float for one ``theta`` of shape ``(n,)``, an array for a batch of shape ``(..., n)``."""

REGULARIZERS: tuple[str, ...] = ("fisher_rao", "kl", "hellinger")
"""Regularizers of :func:`erm_sweep`: Fisher-Rao ``d^2`` (FIRE), KL (TRADES), ``H^2`` (Hellinger)."""

ADVERSARIES: tuple[str, ...] = ("ce", "divergence")
"""Adversaries for the regularizer in :func:`erm_sweep`.

``"ce"``: eq (19), ``x' = x - eps y theta/||theta||`` (label-dependent, what the issue and section 4.1 name).
``"divergence"``: the maximizer of the divergence itself over the L2 ball, as the inner max of eqs (5),
(7), (48) literally reads; for a linear model it is ``x' = x - eps sign(theta^T x) theta/||theta||``
for all three divergences. The two differ only on misclassified samples.
"""

DEFAULT_LAMBDAS: tuple[float, ...] = (0.0, *(float(v) for v in np.logspace(-2, 3, 61)))
"""Default lambda grid of :func:`run_report`: 0 and 61 log-spaced values in [1e-2, 1e3]."""

FIG4_LAMBDAS: tuple[float, ...] = (0.0, 3.8957, 98.1730)
"""The lambdas of the paper's Fig. 4 (FIRE surfaces of q(1|x))."""

_PAPER_MU = (-0.0218, 0.0425)
_PAPER_SIGMA = ((0.0212, 0.0036), (0.0036, 0.0042))
_PAPER_EPS = 0.1
_TWO_PI = 2.0 * math.pi


# ----------------------------------------------------------------------------------------------------------
# Results


@dataclass(frozen=True)
class AccuracyCurve:
    """Natural and adversarial accuracies ``(1 - Pe, 1 - Pe')`` of ``theta = (cos alpha, sin alpha)``.

    >>> curve = paper_setting().accuracy_curve(8)
    >>> curve.alpha.shape, curve.natural.shape
    ((8,), (8,))
    """

    alpha: NDArray[np.float64]
    natural: NDArray[np.float64]
    adversarial: NDArray[np.float64]

    @property
    def average(self) -> NDArray[np.float64]:
        """Average accuracy ``(natural + adversarial) / 2``."""
        return 0.5 * (self.natural + self.adversarial)

    def to_dict(self) -> dict[str, list[float]]:
        """JSON-ready dictionary of lists."""
        return {k: _floats(getattr(self, k)) for k in ("alpha", "natural", "adversarial")}


@dataclass(frozen=True)
class OperatingPoint:
    """One classifier direction with its accuracies.

    >>> p = paper_setting().natural_optimum()
    >>> round(p.natural_accuracy, 3)
    0.784
    """

    alpha: float
    theta: tuple[float, ...]
    natural_accuracy: float
    adversarial_accuracy: float

    @property
    def average_accuracy(self) -> float:
        """``(natural + adversarial) / 2``."""
        return 0.5 * (self.natural_accuracy + self.adversarial_accuracy)


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
# The model


class GaussianModel:
    """Gaussian classes ``x | y ~ N(y mu, Sigma)`` with a logistic classifier and the L2 adversary of eq (19).

    Args:
        mu: class mean, shape ``(n,)``.
        sigma: class covariance, shape ``(n, n)``, symmetric positive definite.
        eps: L2 radius of the adversary, ``>= 0``.

    Methods that sweep ``theta = (cos alpha, sin alpha)`` need ``n = 2``.

    >>> m = GaussianModel([0.0, 1.0], [[1.0, 0.0], [0.0, 1.0]], 0.5)
    >>> round(1 - m.natural_error([0.0, 1.0]), 4)
    0.8413
    """

    def __init__(self, mu: ArrayLike, sigma: ArrayLike, eps: float) -> None:
        mu_arr = np.asarray(mu, dtype=np.float64)
        sigma_arr = np.asarray(sigma, dtype=np.float64)
        if mu_arr.ndim != 1 or mu_arr.size < 1 or not np.all(np.isfinite(mu_arr)):
            raise ValueError(f"mu must be a finite 1-D vector, got {mu!r}")
        n = mu_arr.size
        if sigma_arr.shape != (n, n) or not np.all(np.isfinite(sigma_arr)):
            raise ValueError(f"sigma must be a finite ({n}, {n}) matrix to match mu, got {sigma!r}")
        if not np.allclose(sigma_arr, sigma_arr.T, rtol=1e-10, atol=1e-14):
            raise ValueError(f"sigma must be symmetric, got {sigma!r}")
        eigvals = np.linalg.eigvalsh(sigma_arr)
        if eigvals[0] <= 0.0:
            raise ValueError(f"sigma must be positive definite, got eigenvalues {eigvals.tolist()}")
        eps_f = float(eps)
        if not math.isfinite(eps_f) or eps_f < 0.0:
            raise ValueError(f"eps must be a finite number >= 0, got {eps!r}")
        self.mu: NDArray[np.float64] = mu_arr
        self.sigma: NDArray[np.float64] = 0.5 * (sigma_arr + sigma_arr.T)
        self.eps: float = eps_f
        self._eig = eigvals

    @property
    def dim(self) -> int:
        """Input dimension ``n``."""
        return int(self.mu.size)

    def __repr__(self) -> str:
        return f"GaussianModel(mu={self.mu.tolist()}, sigma={self.sigma.tolist()}, eps={self.eps})"

    # -- closed forms ------------------------------------------------------------------------------------

    def _theta(self, theta: ArrayLike) -> NDArray[np.float64]:
        t = np.asarray(theta, dtype=np.float64)
        if t.ndim == 0 or t.shape[-1] != self.dim or not np.all(np.isfinite(t)):
            raise ValueError(f"theta must be finite with last dimension {self.dim}, got shape {t.shape}")
        if np.any(np.linalg.norm(t, axis=-1) == 0.0):
            raise ValueError("theta must be non-zero (theta = 0 defines no decision rule)")
        return t

    def _margins(self, t: NDArray[np.float64]) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        mean = t @ self.mu
        std = np.sqrt(np.einsum("...i,ij,...j->...", t, self.sigma, t))
        return mean, std

    def natural_error(self, theta: ArrayLike) -> FloatOrArray:
        """Eq (20): ``Pe(theta) = Phi(-theta^T mu / sqrt(theta^T Sigma theta))``.

        ``theta`` has shape ``(n,)`` (returns a float) or ``(..., n)`` (returns an array).

        >>> round(paper_setting().natural_error([-0.2426, 0.9701]), 3)
        0.216
        """
        t = self._theta(theta)
        mean, std = self._margins(t)
        return _scalar_or_array(stats.norm.cdf(-mean / std))

    def adversarial_error(self, theta: ArrayLike) -> FloatOrArray:
        """Eq (21): ``Pe'(theta) = Phi((eps ||theta|| - theta^T mu) / sqrt(theta^T Sigma theta))``.

        >>> round(paper_setting().adversarial_error([-0.9364, 0.3509]), 3)
        0.691
        """
        t = self._theta(theta)
        mean, std = self._margins(t)
        return _scalar_or_array(stats.norm.cdf((self.eps * np.linalg.norm(t, axis=-1) - mean) / std))

    def prop2_bounds(self, theta: ArrayLike) -> tuple[FloatOrArray, FloatOrArray]:
        """Proposition 2 (eqs 22, 23): ``(lower, upper)`` bounds on ``Pe'(theta)`` from ``Pe(theta)``.

        ``lower = Phi(eps / sqrt(lambda_max) + Phi^-1(Pe))``,
        ``upper = Phi(eps / sqrt(lambda_min) + Phi^-1(Pe))``, with the eigenvalues of ``Sigma``.

        >>> m = paper_setting()
        >>> lo, hi = m.prop2_bounds([1.0, 1.0])
        >>> bool(lo <= m.adversarial_error([1.0, 1.0]) <= hi)
        True
        """
        t = self._theta(theta)
        mean, std = self._margins(t)
        z = -mean / std  # Phi^-1(Pe), computed without going through Phi
        lower = stats.norm.cdf(self.eps / math.sqrt(self._eig[-1]) + z)
        upper = stats.norm.cdf(self.eps / math.sqrt(self._eig[0]) + z)
        return _scalar_or_array(lower), _scalar_or_array(upper)

    def accuracies(self, theta: ArrayLike) -> tuple[FloatOrArray, FloatOrArray]:
        """``(1 - Pe(theta), 1 - Pe'(theta))``.

        >>> nat, adv = paper_setting().accuracies([0.0, 1.0])
        >>> bool(nat >= adv)
        True
        """
        t = self._theta(theta)
        mean, std = self._margins(t)
        nat = stats.norm.cdf(mean / std)
        adv = stats.norm.cdf((mean - self.eps * np.linalg.norm(t, axis=-1)) / std)
        return _scalar_or_array(nat), _scalar_or_array(adv)

    def bayes_theta(self) -> NDArray[np.float64]:
        """Population cross-entropy minimizer ``2 Sigma^-1 mu`` (the true posterior is logistic with it).

        For the paper setting this is Fig. 2a's ``theta = [-6.4290, 25.7487]``.

        >>> np.round(paper_setting().bayes_theta(), 2).tolist()
        [-6.43, 25.75]
        """
        return np.asarray(2.0 * np.linalg.solve(self.sigma, self.mu), dtype=np.float64)

    def natural_optimum(self) -> OperatingPoint:
        """Maximizer of ``1 - Pe``: ``theta = Sigma^-1 mu / ||Sigma^-1 mu||`` (footnote 3), in closed form.

        >>> round(paper_setting().natural_optimum().alpha, 2)
        1.82
        """
        w = np.linalg.solve(self.sigma, self.mu)
        if not np.any(w):
            raise ValueError("mu = 0: every direction has natural accuracy 1/2, the optimum is not unique")
        return self._point(w / np.linalg.norm(w))

    def adversarial_optimum(self, *, n_angles: int = 3600) -> OperatingPoint:
        """Maximizer of ``1 - Pe'`` over ``theta = (cos alpha, sin alpha)`` (grid, then bounded refinement).

        >>> round(paper_setting().adversarial_optimum().alpha, 2)
        2.78
        """
        alpha = self._argmax_angle(lambda t: self.accuracies(t)[1], n_angles=n_angles)
        return self._point(_unit(alpha))

    def maa(self, *, n_angles: int = 3600) -> tuple[float, float]:
        """Eq (24): maximum average accuracy ``max_theta (1 - (Pe + Pe')/2)`` and its angle ``alpha``.

        >>> value, alpha = paper_setting().maa()
        >>> round(value, 4)
        0.4901
        """
        alpha = self._argmax_angle(lambda t: 0.5 * sum(self.accuracies(t)), n_angles=n_angles)
        return self._point(_unit(alpha)).average_accuracy, alpha

    def accuracy_curve(self, n_angles: int = 3600) -> AccuracyCurve:
        """All points ``(1 - Pe, 1 - Pe')`` of ``theta = (cos alpha, sin alpha)``, uniform ``alpha`` grid.

        >>> paper_setting().accuracy_curve(360).alpha.size
        360
        """
        self._need_2d("accuracy_curve")
        n = _check_int("n_angles", n_angles, minimum=4)
        alpha = np.arange(n, dtype=np.float64) * (_TWO_PI / n)
        nat, adv = self.accuracies(_unit(alpha))
        return AccuracyCurve(alpha=alpha, natural=np.asarray(nat), adversarial=np.asarray(adv))

    def pareto_front(self, n_angles: int = 3600) -> AccuracyCurve:
        """The Pareto-optimal points of :meth:`accuracy_curve`, by decreasing natural accuracy.

        A point is kept when no other curve point is at least as good in both accuracies and better in one.
        The ``n_angles`` grid is refined with the exact natural and adversarial optima.

        >>> front = paper_setting().pareto_front(720)
        >>> bool(np.all(np.diff(front.natural) < 0) and np.all(np.diff(front.adversarial) > 0))
        True
        """
        curve = self.accuracy_curve(n_angles)
        extra = np.array([self.natural_optimum().alpha, self.adversarial_optimum(n_angles=n_angles).alpha])
        alpha = np.concatenate([curve.alpha, extra])
        nat, adv = self.accuracies(_unit(alpha))
        keep = _non_dominated(np.asarray(nat), np.asarray(adv))
        nat_a, adv_a = np.asarray(nat), np.asarray(adv)
        return AccuracyCurve(alpha=alpha[keep], natural=nat_a[keep], adversarial=adv_a[keep])

    # -- data ----------------------------------------------------------------------------------------------

    def sample(self, n_per_class: int, *, seed: int = 0) -> tuple[NDArray[np.float64], NDArray[np.float64]]:
        """Draw ``n_per_class`` samples per class: ``x`` of shape ``(2 n, dim)``, ``y`` in ``{-1, +1}``.

        >>> x, y = paper_setting().sample(5, seed=1)
        >>> x.shape, sorted(set(y.tolist()))
        ((10, 2), [-1.0, 1.0])
        """
        n = _check_int("n_per_class", n_per_class, minimum=1)
        rng = np.random.default_rng(seed)
        y = np.concatenate([np.ones(n), -np.ones(n)])
        chol = np.linalg.cholesky(self.sigma)
        x = y[:, None] * self.mu[None, :] + rng.standard_normal((2 * n, self.dim)) @ chol.T
        return x, y

    # -- helpers -------------------------------------------------------------------------------------------

    def _need_2d(self, what: str) -> None:
        if self.dim != 2:
            raise ValueError(f"{what} sweeps theta = (cos a, sin a): needs dim 2, got mu of size {self.dim}")

    def _point(self, theta: NDArray[np.float64]) -> OperatingPoint:
        nat, adv = self.accuracies(theta)
        alpha = float(np.arctan2(theta[1], theta[0]) % _TWO_PI) if self.dim == 2 else float("nan")
        return OperatingPoint(alpha, tuple(float(v) for v in theta), float(nat), float(adv))

    def _argmax_angle(self, f: Any, *, n_angles: int) -> float:
        self._need_2d("this method")
        n = _check_int("n_angles", n_angles, minimum=8)
        grid = np.arange(n) * (_TWO_PI / n)
        values = np.asarray(f(_unit(grid)))
        i = int(np.argmax(values))
        step = _TWO_PI / n
        res = optimize.minimize_scalar(
            lambda a: -float(f(_unit(a))),
            bounds=(grid[i] - step, grid[i] + step),
            method="bounded",
            options={"xatol": 1e-10},
        )
        best = float(res.x) if -res.fun >= values[i] else float(grid[i])
        return best % _TWO_PI


def paper_setting() -> GaussianModel:
    """The setting of Figs. 2-4, 6 and 9: ``mu = [-0.0218, 0.0425]``, ``Sigma = [[0.0212, 0.0036],
    [0.0036, 0.0042]]``, ``eps = 0.1``.

    >>> paper_setting().eps
    0.1
    """
    return GaussianModel(_PAPER_MU, _PAPER_SIGMA, _PAPER_EPS)


# ----------------------------------------------------------------------------------------------------------
# Divergences on latent codes (numpy, float64)


def _log_abs_sinh(x: NDArray[np.float64]) -> NDArray[np.float64]:
    ax = np.abs(x)
    with np.errstate(divide="ignore"):
        return ax + np.log(-np.expm1(-2.0 * ax)) - math.log(2.0)


def _log_cosh(x: NDArray[np.float64]) -> NDArray[np.float64]:
    return np.logaddexp(x, -x) - math.log(2.0)


def _fr_signed(h_a: NDArray[np.float64], h_b: NDArray[np.float64]) -> NDArray[np.float64]:
    """``g(h_b) - g(h_a)`` with ``g(h) = 2 arctan(exp(h/2))``, computed as
    ``2 arctan(sinh((h_b - h_a)/4) / cosh((h_b + h_a)/4))``.

    The identity follows from ``g(h) = gd(h/2) + pi/2`` (gd: Gudermannian) and the subtraction formula of
    arctan; it has no cancellation and no overflow.
    """
    delta = h_b - h_a
    ratio = np.sign(delta) * np.exp(_log_abs_sinh(0.25 * delta) - _log_cosh(0.25 * (h_a + h_b)))
    return 2.0 * np.arctan(ratio)


def _g_prime(h: NDArray[np.float64]) -> NDArray[np.float64]:
    """``d/dh 2 arctan(exp(h/2)) = 1 / (2 cosh(h/2))``, overflow-free."""
    return np.exp(-np.logaddexp(0.5 * h, -0.5 * h))


def fisher_rao_binary(h_a: ArrayLike, h_b: ArrayLike) -> NDArray[np.float64]:
    """Theorem 1: ``d = 2 |arctan(exp(h_b/2)) - arctan(exp(h_a/2))|`` between ``q(.|x)`` and ``q(.|x')`` with
    latent codes ``h_a = h(x)``, ``h_b = h(x')`` of the model ``q(y|x) = 1/(1 + exp(-y h(x)))``.
    Float64 numpy; exact for any finite codes (no cancellation, no overflow). Values lie in ``[0, pi]``.

    >>> round(float(fisher_rao_binary(0.0, 1e9)), 6) == round(math.pi / 2, 6)
    True
    """
    a = np.asarray(h_a, dtype=np.float64)
    b = np.asarray(h_b, dtype=np.float64)
    return np.abs(_fr_signed(a, b))


def _divergence_and_grads(
    name: str, h: NDArray[np.float64], hp: NDArray[np.float64]
) -> tuple[NDArray[np.float64], NDArray[np.float64], NDArray[np.float64]]:
    """Per-sample regularizer ``r(h, h')`` and its partial derivatives ``dr/dh``, ``dr/dh'``."""
    if name == "fisher_rao":
        d = _fr_signed(h, hp)
        return d * d, -2.0 * d * _g_prime(h), 2.0 * d * _g_prime(hp)
    if name == "hellinger":
        # H^2 = 2 (1 - BC) = 2 (1 - cos(d/2)) = 4 sin^2(d/4)  (Theorem 4), stable for small and large d
        d = _fr_signed(h, hp)
        s = np.sin(0.25 * d)
        dd = np.sin(0.5 * d)
        return 4.0 * s * s, -dd * _g_prime(h), dd * _g_prime(hp)
    if name == "kl":
        # KL(q(.|x) || q(.|x')) = softplus(h') - softplus(h) - sigmoid(h) (h' - h),
        # the Bregman divergence of softplus
        p = special.expit(h)
        delta = hp - h
        kl = np.logaddexp(0.0, hp) - np.logaddexp(0.0, h) - p * delta
        return np.maximum(kl, 0.0), -p * special.expit(-h) * delta, special.expit(hp) - p
    raise ValueError(f"regularizer must be one of {REGULARIZERS}, got {name!r}")


def binary_divergence(name: str, h_nat: ArrayLike, h_adv: ArrayLike) -> NDArray[np.float64]:
    """Per-sample regularizer between ``q(.|x)`` and ``q(.|x')`` of a binary logistic model from latent codes.

    ``"fisher_rao"``: ``d^2`` (Theorem 1); ``"kl"``: ``KL(q(.|x) || q(.|x'))`` (eq 6); ``"hellinger"``:
    ``H^2 = 2 (1 - BC)`` (eq 46). All in float64 without cancellation (log-sigmoid / Gudermannian forms).

    >>> float(binary_divergence("kl", 0.0, 0.0))
    0.0
    """
    _check_choice("name", name, REGULARIZERS)
    h = np.asarray(h_nat, dtype=np.float64)
    hp = np.asarray(h_adv, dtype=np.float64)
    return _divergence_and_grads(name, h, hp)[0]


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
    angles = np.arange(n_grid_angles, dtype=np.float64) * (_TWO_PI / n_grid_angles)
    scale = 1.0 / math.sqrt(float(np.mean(np.sum(x * x, axis=1))))  # |theta^T x| ~ 1 at r = scale
    radii = scale * np.logspace(-4.0, 2.5, n_grid_radii)
    solver = "bfgs-global-polar" if global_minimizer else "bfgs-local"

    k = lam_arr.size
    thetas = np.zeros((k, m.dim))
    objective = np.zeros(k)
    converged = np.zeros(k, dtype=bool)
    from_grid = np.zeros(k, dtype=bool)
    bar = tqdm(lam_arr, desc=f"{regularizer} ({solver})", unit="lambda", disable=not verbose, leave=False)
    if global_minimizer:
        ce_grid, reg_grid = _grid_terms(x, y, regularizer, m.eps, adversary, angles, radii)
    for i, lam in enumerate(bar):
        lam_f = float(lam)
        res = _minimize(np.zeros(m.dim), x, y, regularizer, lam_f, m.eps, adversary, gtol)
        best, best_from_grid = res, False
        if global_minimizer:
            grid = ce_grid + lam_f * reg_grid  # (R, A)
            per_angle = grid.min(axis=0)  # (A,)
            is_min = (per_angle <= np.roll(per_angle, 1)) & (per_angle <= np.roll(per_angle, -1))
            candidates = np.flatnonzero(is_min)
            for j in candidates[np.argsort(per_angle[candidates])][:n_refine]:
                start = radii[int(np.argmin(grid[:, j]))] * _unit(angles[j])
                cand = _minimize(start, x, y, regularizer, lam_f, m.eps, adversary, gtol)
                if cand.fun < best.fun - 1e-12:
                    best, best_from_grid = cand, True
        thetas[i] = best.x
        objective[i] = best.fun
        converged[i] = bool(best.success) or float(np.linalg.norm(best.jac)) < 1e-5
        from_grid[i] = best_from_grid
        if not converged[i]:
            _logger.warning("%s lam=%g: BFGS did not converge (%s)", regularizer, lam_f, best.message)
    bar.close()

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
        zero_lams = lam_arr[~nonzero].tolist()
        _logger.warning("%s: theta = 0 for lambdas %s (no decision rule)", regularizer, zero_lams)
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


# ----------------------------------------------------------------------------------------------------------
# Report


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
    from fire_plugin import plots

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
        nat_pt, adv_pt = model.natural_optimum(), model.adversarial_optimum()
        maa, maa_alpha = model.maa()
        report["closed_forms"] = {
            "natural_optimum": _point_dict(nat_pt),
            "adversarial_optimum": _point_dict(adv_pt),
            "maa": maa,
            "maa_alpha": maa_alpha,
            "bayes_theta": _floats(model.bayes_theta()),
            "sigma_eigenvalues": _floats(model._eig),
        }
        fig4 = erm_sweep(
            "fisher_rao",
            list(FIG4_LAMBDAS),
            model=model,
            n_per_class=n_per_class,
            seed=seed,
            adversary=adversary,
        )
        report["fig4_thetas"] = {f"{v:g}": _floats(t) for v, t in zip(FIG4_LAMBDAS, fig4.thetas, strict=True)}
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
    files["fig5"] = _save(plots.plot_fisher_rao_vs_euclidean(), out / "gaussian_fig5.png")
    report["files"] = files
    path = out / "gaussian_report.json"
    path.write_text(json.dumps(_jsonable(report), indent=2))
    report["files"]["report"] = str(path)
    _logger.info("wrote %s", path)
    return report


# ----------------------------------------------------------------------------------------------------------
# Small helpers


def _unit(alpha: Any) -> NDArray[np.float64]:
    a = np.asarray(alpha, dtype=np.float64)
    return np.stack([np.cos(a), np.sin(a)], axis=-1)


def _non_dominated(nat: NDArray[np.float64], adv: NDArray[np.float64]) -> NDArray[np.intp]:
    """Indices of non-dominated points (maximize both), sorted by decreasing ``nat``."""
    order = np.lexsort((-adv, -nat))  # by nat descending, ties: adv descending
    keep: list[int] = []
    best_adv = -np.inf
    for i in order:
        if adv[i] > best_adv:
            if keep and nat[keep[-1]] == nat[i]:
                continue  # same nat, smaller adv than the kept one: dominated
            keep.append(int(i))
            best_adv = adv[i]
    return np.asarray(keep, dtype=np.intp)


def _circular_span(alpha: NDArray[np.float64]) -> tuple[float, float]:
    a = np.sort(np.asarray(alpha, dtype=np.float64) % _TWO_PI)
    if a.size == 0:
        return float("nan"), float("nan")
    gaps = np.diff(np.concatenate([a, [a[0] + _TWO_PI]]))
    j = int(np.argmax(gaps))  # the span is the circle minus the largest empty arc (a[j], a[j + 1])
    lo = a[(j + 1) % a.size]
    hi = a[j] + (_TWO_PI if a[j] < lo else 0.0)
    return float(lo), float(hi)


def _check_int(name: str, value: Any, *, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int | np.integer) or value < minimum:
        raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
    return int(value)


def _check_choice(name: str, value: Any, allowed: tuple[str, ...]) -> None:
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")


def _scalar_or_array(v: Any) -> FloatOrArray:
    arr = np.asarray(v, dtype=np.float64)
    return float(arr) if arr.ndim == 0 else arr


def _floats(v: Any) -> list[Any]:
    return [_none_if_nan(float(t)) for t in np.asarray(v, dtype=np.float64).ravel()]


def _none_if_nan(v: float) -> float | None:
    return None if not math.isfinite(v) else float(v)


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
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return str(path)

"""The Gaussian/logistic setting of section 4 and Appendix B of the FIRE paper, and its closed forms.

Binary classes ``y in {-1, +1}``, equally likely, with ``x | y ~ N(y mu, Sigma)``; a logistic model
``q(y|x) = 1 / (1 + exp(-y theta^T x))``; the cross-entropy-maximizing L2 adversary of eq (19),
``x' = x - eps * y * theta / ||theta||``. Everything accuracy-related has a closed form (eqs 20-24):
:class:`GaussianModel` gives the natural and adversarial errors, the bounds of Proposition 2, the natural and
adversarial optima, the maximum average accuracy (MAA) and the exact Pareto front; :func:`paper_setting` is the
setting of the paper's figures. The divergences between ``q(.|x)`` and ``q(.|x')`` on latent codes
(:func:`fisher_rao_binary`, :func:`binary_divergence`) are the building blocks of the regularized risks in
:mod:`fire_plugin.gaussian_erm`.

Weights: ``lam`` multiplies the paper's regularizer as written, i.e. ``d^2`` with the Fisher-Rao distance
``d = 2 * arccos(BC)`` of Theorem 1 / eq (15), ``KL(q(.|x) || q(.|x'))`` of eq (6), and
``H^2 = 2 (1 - BC)`` of eq (46). The authors' public code uses ``beta * arccos(BC)^2``, i.e.
``beta = 4 * lam`` for Fisher-Rao.

This module uses numpy and scipy only. Users import its names from :mod:`fire_plugin.gaussian`.

>>> model = paper_setting()
>>> value, alpha = model.maa()
>>> round(value, 3), round(alpha, 2)
(0.49, 2.07)
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np
from numpy.typing import ArrayLike, NDArray
from scipy import optimize, special, stats

__all__ = [
    "REGULARIZERS",
    "AccuracyCurve",
    "OperatingPoint",
    "GaussianModel",
    "paper_setting",
    "fisher_rao_binary",
    "binary_divergence",
]

FloatOrArray: TypeAlias = "float | NDArray[np.float64]"
"""A float for one ``theta`` of shape ``(n,)``, an array for a batch of shape ``(..., n)``."""

REGULARIZERS: tuple[str, ...] = ("fisher_rao", "kl", "hellinger")
"""Regularizers on latent codes (:func:`binary_divergence`, ``erm_sweep``): Fisher-Rao ``d^2`` (FIRE), KL
(TRADES), ``H^2`` (Hellinger)."""

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
# Small helpers (shared with gaussian_erm)


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


"""Differentiable backwards of :mod:`fire_plugin.distances`, for gradients of gradients (``create_graph=True``).

The hand-written backwards of :class:`fire_plugin.distances._SqrtGapFunction` and ``_KLFunction`` reuse the
forward's buffers, which are constants to autograd; when a graph of the backward is requested they call the
functions here instead, which recompute the same closed-form gradients from the saved logits. Nothing here is
public.

Example:
    >>> a = torch.tensor([[0.5, -0.5]], dtype=torch.float64)
    >>> grad_a, grad_b = _sqrt_gap_grads_autograd(a, a, torch.ones(1, dtype=torch.float64), 1,
    ...                                           "fisher_rao_squared", (True, True))
    >>> float(grad_a.abs().max()), float(grad_b.abs().max())  # d^2 is flat at equality
    (0.0, 0.0)
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from fire_plugin._distance_kernels import _HALF_LOG_RATIO_BOUND

# A hand-written backward built from the forward's buffers is a constant to autograd: a second differentiation
# would silently miss its dependence on the logits. So when a graph of the backward is requested, the backward
# recomputes the same quantities from the saved logits with out-of-place torch ops (torch.expm1 / log1p instead of
# the in-place Kahan kernels), and autograd differentiates them exactly, to any order. Masked (-inf) classes and the
# direct rows are selected with torch.where on inputs that keep every branch finite, so that the branch not taken
# cannot leak a NaN into the gradients.

# asin(y) / y = sum_n C(2n, n) / (4^n (2n + 1)) z^n with z = y^2; 13 terms reach 1e-17 relative for z <= 0.05.
_ASIN_OVER_Y = tuple(math.comb(2 * n, n) / (4**n * (2 * n + 1)) for n in range(13))
_ASIN_SERIES_MAX = 0.05


def _asin_over_y(z: Tensor) -> Tensor:
    """``asin(sqrt z) / sqrt z`` for ``0 <= z <= 1/2``, smooth at 0 (a power series there) and differentiable."""
    small = z < _ASIN_SERIES_MAX
    zs = torch.where(small, z, 0.0)
    series = torch.full_like(z, _ASIN_OVER_Y[-1])
    for coef in reversed(_ASIN_OVER_Y[:-1]):
        series = series * zs + coef
    root = torch.where(small, _ASIN_SERIES_MAX, z).sqrt()
    return torch.where(small, series, torch.asin(root) / root)


def _slope_autograd(s: Tensor, kind: str) -> Tensor:
    """``f'(S)`` of :func:`_from_s`, differentiable (``S`` keeps the class dim with size 1)."""
    if kind == "hellinger":
        return torch.ones_like(s)
    if kind == "bhattacharyya":
        return torch.full_like(s, -0.5)
    z = 0.25 * s  # sin(d / 4)^2
    if kind == "fisher_rao_squared":  # 2 d / sin(d / 2) = 4 (asin(y) / y) / sqrt(1 - y^2), y^2 = z
        return 4.0 * _asin_over_y(z) * torch.rsqrt(1.0 - z)
    # fisher_rao: 1 / sin(d / 2) = 1 / sqrt(S (1 - S / 4)), taken as 0 at S = 0 where d is not differentiable
    positive = s > 0
    s_safe = torch.where(positive, s, 1.0)
    return torch.where(positive, torch.rsqrt(s_safe * (1.0 - 0.25 * s_safe)), 0.0)


def _masks(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """``(only_a, only_b, both, either)``: where the logits are -inf (masked classes) in a only, b only, both, any."""
    ma, mb = torch.isneginf(a), torch.isneginf(b)
    return ma & ~mb, mb & ~ma, ma & mb, ma | mb


def _centred_autograd(a: Tensor, b: Tensor, q: Tensor, dim: int, bound: float) -> tuple[Tensor, Tensor, Tensor]:
    """``(c, large, only_a)``: the centred log-ratio of :func:`_centred_log_ratio` (0 where a class is masked and in
    direct rows, whose ``large`` flag is set where it exceeds ``bound``), differentiable."""
    only_a, only_b, both, either = _masks(a, b)
    t = torch.where(either, 0.0, a - b)
    w = torch.where(only_a | both, 0.0, q)
    denom = w.sum(dim, keepdim=True)
    c = t - (w * t).sum(dim, keepdim=True) / torch.where(denom > 0, denom, 1.0)
    with torch.no_grad():
        flag = c.masked_fill(either, -math.inf).masked_fill(only_b, math.inf)
        large = flag.amax(dim, keepdim=True) > bound
    return torch.where(either | large, 0.0, c), large, only_a & ~large


def _sqrt_gap_autograd(a: Tensor, b: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """``(gap, sqrt q)`` as :func:`_sqrt_gap` computes them, from differentiable ops."""
    sqrt_q = torch.exp(0.5 * torch.log_softmax(b, dim))
    q = sqrt_q.square()
    c, large, only_a = _centred_autograd(a, b, q, dim, 2.0 * _HALF_LOG_RATIO_BOUND[a.dtype])
    g = torch.where(only_a, -1.0, torch.expm1(0.5 * c))  # e^(c / 2) - 1; sqrt p = 0 where only a is masked
    a_m1 = (q * g * (g + 2.0)).sum(dim, keepdim=True)  # A - 1 = 2 E_q[g] + E_q[g^2]
    sqrt_a = torch.sqrt(1.0 + a_m1)
    centred = sqrt_q * (g - a_m1 / (sqrt_a + 1.0)) / sqrt_a
    direct = torch.exp(0.5 * torch.log_softmax(a, dim)) - sqrt_q
    return torch.where(large, direct, centred), sqrt_q


def _sqrt_gap_grads_autograd(
    a: Tensor, b: Tensor, grad_out: Tensor, dim: int, kind: str, needs: tuple[bool, bool]
) -> tuple[Tensor | None, Tensor | None]:
    """The backward of :class:`_SqrtGapFunction`, differentiable."""
    gap, sqrt_q = _sqrt_gap_autograd(a, b, dim)
    s = gap.square().sum(dim, keepdim=True)
    go = grad_out.unsqueeze(dim) * _slope_autograd(s, kind)
    grad_a = grad_b = None
    if needs[0]:  # dS/da = sqrt(p) (gap - sqrt(p) S / 2)
        sqrt_p = gap + sqrt_q
        grad_a = go * sqrt_p * (gap - 0.5 * s * sqrt_p)
    if needs[1]:  # dS/db = -sqrt(q) (gap + sqrt(q) S / 2)
        grad_b = -go * sqrt_q * (gap + 0.5 * s * sqrt_q)
    return grad_a, grad_b


def _kl_grads_autograd(
    a: Tensor, b: Tensor, grad_out: Tensor, dim: int, needs: tuple[bool, bool]
) -> tuple[Tensor | None, Tensor | None]:
    """The backward of :class:`_KLFunction`, differentiable; 0 in rows where KL is +inf."""
    log_p, log_q = torch.log_softmax(a, dim), torch.log_softmax(b, dim)
    p, q = log_p.exp(), log_q.exp()
    c, large, only_a = _centred_autograd(a, b, q, dim, 2.0 * _HALF_LOG_RATIO_BOUND[a.dtype])
    e = torch.where(only_a, -1.0, torch.expm1(c))
    a_m1 = (q * e).sum(dim, keepdim=True)  # A - 1 = E_q[e^c] - 1
    _, only_b, _, either = _masks(a, b)
    log_ratio = torch.where(large, torch.where(either, 0.0, log_p - log_q), c - torch.log1p(a_m1))
    log_ratio = torch.where(either, 0.0, log_ratio)  # p log(p / q) = 0 where p = 0; +inf rows are zeroed below
    kl = (p * log_ratio).sum(dim, keepdim=True)
    go = torch.where(only_b.any(dim, keepdim=True), 0.0, grad_out.unsqueeze(dim))
    grad_a = grad_b = None
    if needs[0]:  # p (log(p / q) - KL)
        grad_a = go * p * (log_ratio - kl)
    if needs[1]:  # q - p = -q (expm1(c) - (A - 1)) / A
        p_minus_q = torch.where(large, p - q, q * (e - a_m1) / (1.0 + a_m1))
        grad_b = -go * p_minus_q
    return grad_a, grad_b

"""Fisher-Rao geometry of softmax outputs, computed on logits.

Every function takes logits (unnormalized log-probabilities), is batched over the leading dimensions and returns
one value per sample (no reduction). The formulas are those of Picot et al., "Adversarial Robustness via
Fisher-Rao Regularization" (TPAMI 2022):

* Theorem 2 (multiclass): ``d(p, q) = 2 * arccos(sum_y sqrt(p_y q_y))``, in ``[0, pi]``.
* Theorem 1 (binary, latent codes ``h``): ``d = 2 * |arctan(exp(h_b / 2)) - arctan(exp(h_a / 2))|``.
* Theorem 4 / eq. (46): ``H^2 = 2 * (1 - BC) = 2 * (1 - cos(d / 2))``.

Numerics. ``1 - BC`` is never formed by subtraction: with ``S = ||sqrt p - sqrt q||^2 = 2 * (1 - BC)`` we get
``d = 4 * arcsin(sqrt(S) / 2)``, and each ``sqrt p_y - sqrt q_y`` is formed without cancellation. Let
``c = (a - b) - E_q[a - b]`` be the log-ratio of the logits centred under ``q`` and ``g = expm1(c / 2)``. Then
``A = E_q[e^c] = 1 + 2 E_q[g] + E_q[g^2]`` normalizes ``p = q e^c / A``, and
``sqrt p_y - sqrt q_y = sqrt(q_y) * (g_y - (sqrt(A) - 1)) / sqrt(A)``: a difference of two numbers of the size of
``c`` (the centring makes ``sqrt(A) - 1`` second order), so ``S`` keeps about 1e-7 relative accuracy in float32
when the logits differ by 1e-4. ``expm1`` is evaluated with Kahan's trick ``(u - 1) * x / log(u)``,
``u = fl(e^x)``, accurate to a few ulps for every ``x`` (``torch.expm1`` is not vectorized in some CPU builds).
KL is computed the same way, ``KL = sum_y p_y (c_y - log A)`` with ``A - 1 = E_q[expm1(c)]``.
Rows where ``c`` exceeds 80 (600 in float64), i.e. saturated logits with nearly disjoint ``p`` and ``q``, would
overflow there; they use the two square-root softmaxes (the log-sum-exps for KL) directly instead. The choice is
made per row with tensor ops, so there is no host synchronization; on CPU, where reading a flag is free, the direct
path is computed only when some row needs it.

Gradients are hand-derived (``torch.autograd.Function``): ``dS/da = sqrt(p) * gap - p * S / 2`` and
``dS/db = -sqrt(q) * gap - q * S / 2`` with ``gap = sqrt p - sqrt q``, ``d(d^2)/dS = 2 d / sin(d / 2)``; for KL,
``dKL/da = p * (log(p / q) - KL)`` and ``dKL/db = q - p = -q * (expm1(c) - (A - 1)) / A``. They are exactly 0 when
the logits are equal, finite at saturated logits, keep the relative accuracy of the values near equality, and
reuse the forward's buffers. Gradients of gradients (``torch.autograd.grad(..., create_graph=True)``, as gradient
penalties and the partial-isometry regularizer need) are exact: when a graph of the backward is requested, the
backward recomputes the same centred quantities from the saved logits with differentiable torch ops
(``torch.expm1``/``log1p``, a power series for ``asin(y) / y`` near equality) and returns the closed-form gradients
above built from them, which autograd differentiates again to any order. Plain ``.backward()`` keeps the fast path.
float16/bfloat16 inputs are computed in float32 and the result is cast back to the input dtype.

Masked classes. A ``-inf`` logit is a class of probability 0 (the softmax is defined as long as some logit of the row
is finite). A class masked in both inputs contributes nothing; a class masked in one input only is handled exactly
(``p_y = 0 < q_y``: ``sqrt p_y - sqrt q_y = -sqrt q_y``), so ``fisher_rao(t, t)`` is 0 and the distances stay finite,
with finite gradients with respect to the finite logits. For KL, ``p_y = 0`` contributes 0, and ``q_y = 0 < p_y``
gives ``KL(p || q) = +inf`` (``p`` is not absolutely continuous with respect to ``q``); the gradient of such a row is
0 (the divergence is +inf on a neighbourhood). NaN or +inf logits, and rows whose logits are all -inf, give NaN.
On CPU the masked path is taken only when some row needs it (a per-row flag read without synchronization cost).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.linalg import vector_norm

__all__ = [
    "DIVERGENCES",
    "bhattacharyya",
    "fisher_rao",
    "fisher_rao_binary",
    "fisher_rao_squared",
    "get_divergence",
    "hellinger_squared",
    "kl_divergence",
]

_LOG2E = 1.0 / math.log(2.0)  # exp(z) = exp2(z * _LOG2E); exp2 is the cheaper kernel
_LN2 = math.log(2.0)
# Bound on the centred half log-ratio c / 2 (on c for KL, twice this). Beyond it a row takes the direct path; below
# it every intermediate stays finite: E_q[g^2] <= e^80 < float32 max.
_HALF_LOG_RATIO_BOUND = {torch.float32: 40.0, torch.float64: 300.0}


def _check_pair(a: Tensor, b: Tensor, dim: int, *, names: tuple[str, str] = ("logits_a", "logits_b")) -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(
            f"{names[0]} and {names[1]} must be torch.Tensor, got {type(a).__name__} and {type(b).__name__}"
        )
    if a.shape != b.shape:
        raise ValueError(
            f"{names[0]} and {names[1]} must have the same shape, got {tuple(a.shape)} and {tuple(b.shape)}"
        )
    if not (a.is_floating_point() and b.is_floating_point()):
        raise ValueError(
            f"{names[0]} and {names[1]} must be floating point logits, got dtypes {a.dtype} and {b.dtype}"
        )
    if a.dim() == 0:
        raise ValueError(f"{names[0]} and {names[1]} must have a class dimension, got scalars")
    if isinstance(dim, bool) or not isinstance(dim, int) or not -a.dim() <= dim < a.dim():
        raise ValueError(
            f"dim must be an int in [{-a.dim()}, {a.dim() - 1}] for {names[0]} and {names[1]} with {a.dim()} dims "
            f"(shape {tuple(a.shape)}), got dim={dim!r}"
        )
    if a.shape[dim] < 2:
        raise ValueError(
            f"{names[0]} and {names[1]} need at least 2 classes along dim={dim}, got shapes "
            f"{tuple(a.shape)} and {tuple(b.shape)}"
        )


def _wide(a: Tensor, b: Tensor) -> tuple[Tensor, Tensor, torch.dtype]:
    """Promote to a common dtype of at least float32; return the dtype to cast the result back to."""
    out_dtype = torch.promote_types(a.dtype, b.dtype)
    work = torch.promote_types(out_dtype, torch.float32)
    return a.to(work), b.to(work), out_dtype


def _no_direct_rows(large: Tensor) -> bool:
    """True if no row needs the direct path and this is known without a host synchronization, i.e. on CPU.

    Elsewhere both paths are computed and blended per row (the same numbers up to float rounding: the tests
    bound the difference against the float64 reference).
    """
    return large.device.type == "cpu" and not bool(large.any())


def _exp2_shifted(z: Tensor, dim: int, scale: float, z_max: Tensor | None = None, out: Tensor | None = None) -> Tensor:
    """``exp((z - max z) * scale * ln 2)``: at most 1, and exactly 1 at the maximum (no fused multiply-add there)."""
    if z_max is None:
        z_max = z.amax(dim, keepdim=True)
    return torch.sub(z, z_max, out=out).mul_(scale).exp2_()


def _known_finite(x: Tensor) -> bool:
    """True if every entry of the (small, per-row) tensor ``x`` is finite and this is known without a host
    synchronization, i.e. on CPU. Elsewhere the masked path below is always taken (it gives the same numbers up to
    float rounding)."""
    return x.device.type == "cpu" and bool(torch.isfinite(x).all())


def _centred_log_ratio(
    a: Tensor, b: Tensor, w: Tensor, w_sum: Tensor, dim: int, *, squared: bool
) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """``(c, buffer, mean, masked_a)``: ``c = t - mean`` with ``t = a - b`` and ``mean = E[t]`` under the weights
    ``w^2`` (if ``squared``) or ``w``, whose sum is ``w_sum``; ``buffer`` is a free full-size buffer.

    With -inf logits (masked classes) the classes masked in ``a`` or ``b`` are left out of the mean, and ``c`` is -inf
    where only ``a`` is masked (``masked_a``: ``p = 0 < q``), +inf where only ``b`` is (``q = 0 < p``: a direct row)
    and 0 where both are (no contribution). Rows without -inf logits get the same numbers (up to float rounding) on
    the fast path (``masked_a`` None, taken on CPU when every row mean is finite) as on the masked one. NaN and +inf
    stay NaN.
    """
    t = torch.sub(a, b)
    u = torch.mul(w, t)
    if squared:
        u.mul_(w)
    mean = u.sum(dim, keepdim=True).div_(w_sum)
    if _known_finite(mean):
        return t.sub_(mean), u, mean, None
    ma, mb = torch.isneginf(a), torch.isneginf(b)
    t.masked_fill_(ma | mb, 0.0)  # a - b is NaN where both are masked, -inf or +inf where one is
    torch.mul(w, t, out=u)
    if squared:
        u.mul_(w)
    w_kept = (w.square() if squared else w.clone()).masked_fill_(ma, 0.0).sum(dim, keepdim=True)
    w_kept.masked_fill_(w_kept == 0, 1.0)  # no common support: some c is +inf, the row is a direct one
    denom = torch.where(ma.any(dim, keepdim=True), w_kept, w_sum)
    mean = u.sum(dim, keepdim=True).div_(denom)
    c = t.sub_(mean).masked_fill_(ma, -math.inf).masked_fill_(mb, math.inf).masked_fill_(ma & mb, 0.0)
    return c, u, mean, ma & ~mb


def _sqrt_gap(a: Tensor, b: Tensor, dim: int) -> tuple[Tensor, Tensor, Tensor]:
    """``(gap, hb, zb)`` for float32/float64 logits with ``dim >= 0``: ``gap = sqrt p - sqrt q`` without
    cancellation and ``hb = zb * sqrt q`` (largest entry 1, ``zb`` keeps ``dim`` with size 1).

    Four full-size buffers; ``gap`` and ``hb`` are the ones the backward needs.
    """
    half = 0.5 * _LOG2E  # exp(z / 2) = exp2(z * half)
    bound = _HALF_LOG_RATIO_BOUND[a.dtype] * _LOG2E
    hb = _exp2_shifted(b, dim, half)
    zb = vector_norm(hb, dim=dim, keepdim=True)
    zb2 = zb.square()
    # x = c / (2 ln 2), so exp2(x) = exp(c / 2); a - b - E_q[a - b] is exact where q concentrates on one class
    x, u, _, masked_a = _centred_log_ratio(a, b, hb, zb2, dim, squared=True)
    x.mul_(half)
    large = x.amax(dim, keepdim=True) > bound
    x.clamp_(-bound, bound)
    # g = expm1(c / 2) = (u - 1) * x / log2(u) with u = fl(2^x) (Kahan's trick; the limit x ln 2 where u == 1).
    g = torch.exp2(x, out=u)
    v = torch.log2(g)
    g.sub_(1.0).div_(v).nan_to_num_(nan=_LN2).mul_(x)
    if masked_a is not None:
        g.masked_fill_(masked_a, -1.0)  # sqrt p = 0 exactly where only a is masked
    h = torch.mul(hb, g, out=x)  # zb sqrt(q) g
    mean_g2 = vector_norm(h, dim=dim, keepdim=True).square_().div_(zb2)  # E_q[g^2]
    mean_g = torch.mul(h, hb, out=v).sum(dim, keepdim=True).div_(zb2)  # E_q[g]
    # Per row, A - 1 = 2 E_q[g] + E_q[g^2] and gap = sqrt(q) (g - (sqrt(A) - 1)) / sqrt(A) = h * alpha + hb * beta.
    a_m1 = mean_g.mul_(2.0).add_(mean_g2)
    sqrt_a = a_m1.add(1.0).sqrt_()
    alpha = (zb * sqrt_a).reciprocal_()
    beta = a_m1.div_(sqrt_a.add_(1.0)).mul_(alpha).neg_()  # -(sqrt(A) - 1) * alpha
    if _no_direct_rows(large):
        return h.mul_(alpha).addcmul_(hb, beta), hb, zb
    # Rows with a clamped x: gap = ha / za - hb / zb from the square-root softmax of a, blended in by row weights.
    ha = _exp2_shifted(a, dim, half, out=v)  # za sqrt(p)
    direct = large.to(a.dtype)
    keep = 1.0 - direct
    gamma = direct / vector_norm(ha, dim=dim, keepdim=True)
    beta.mul_(keep).sub_(direct / zb)
    return h.mul_(alpha.mul_(keep)).addcmul_(hb, beta).addcmul_(ha, gamma), hb, zb


def _from_s(s: Tensor, kind: str, slope: bool) -> tuple[Tensor, Tensor | None]:
    """``f(S)`` and, if ``slope``, ``f'(S)`` for the quantities built on ``S = 2 (1 - BC)`` (which is <= 2)."""
    if kind == "hellinger":
        return s, torch.ones_like(s) if slope else None
    if kind == "bhattacharyya":
        return 1.0 - 0.5 * s, torch.full_like(s, -0.5) if slope else None
    theta = s.sqrt().mul_(0.5).asin_()  # d / 4
    if kind == "fisher_rao_squared":
        # d(d^2)/dS = 8 theta / sin(2 theta) = 2 d / sin(d / 2), which tends to 4 at S = 0
        out = theta.square().mul_(16.0)
        return out, theta.mul(8.0).div_(theta.mul(2.0).sin_()).nan_to_num_(nan=4.0) if slope else None
    # fisher_rao: dd/dS = 1 / sin(2 theta), taken as 0 at S = 0 where d is not differentiable
    out = theta.mul(4.0)
    return out, theta.mul_(2.0).sin_().reciprocal_().nan_to_num_(nan=0.0, posinf=0.0) if slope else None


# ------------------------------------------------------------------------------------------------------------------
# Differentiable twins of the hand-written backwards, for gradients of gradients (create_graph=True).
#
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


# ------------------------------------------------------------------------------------------------------------------


class _SqrtGapFunction(torch.autograd.Function):
    """``f(S)`` of ``S = ||sqrt softmax(a) - sqrt softmax(b)||^2`` along ``dim``, with a hand-written backward
    (and a differentiable one when gradients of gradients are requested)."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, dim: int, kind: str) -> Tensor:  # type: ignore[override]
        gap, hb, zb = _sqrt_gap(a, b, dim)
        s = vector_norm(gap, dim=dim).square_()  # S = 2 (1 - BC)
        out, slope = _from_s(s, kind, slope=any(ctx.needs_input_grad[:2]))
        if slope is not None:  # (not the output: callers may modify it in place)
            ctx.save_for_backward(a, b, hb, zb, gap, s.mul(0.5).unsqueeze_(dim), slope.unsqueeze_(dim))
        ctx.dim, ctx.kind = dim, kind
        return out

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None, None]:  # type: ignore[override]
        a, b, hb, zb, gap, half_s, slope = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        if torch.is_grad_enabled():  # create_graph=True: a backward that autograd can differentiate again
            return (*_sqrt_gap_grads_autograd(a, b, grad_out, ctx.dim, ctx.kind, needs), None, None)
        go = grad_out.unsqueeze(ctx.dim) * slope  # dL/dS per row
        inv_zb = zb.reciprocal()
        grad_a = grad_b = None
        if needs[0]:  # dS/da = sqrt(p) (gap - sqrt(p) S / 2)
            sqrt_p = torch.addcmul(gap, hb, inv_zb)
            grad_a = torch.addcmul(gap, sqrt_p, half_s.neg()).mul_(sqrt_p).mul_(go)
        if needs[1]:  # dS/db = -sqrt(q) (gap + sqrt(q) S / 2)
            grad_b = torch.addcmul(gap, hb, half_s * inv_zb).mul_(hb).mul_(go.mul(inv_zb).neg_())
        return grad_a, grad_b, None, None


def _sqrt_gap_op(logits_a: Tensor, logits_b: Tensor, dim: int, kind: str) -> Tensor:
    _check_pair(logits_a, logits_b, dim)
    a, b, out_dtype = _wide(logits_a, logits_b)
    out = _SqrtGapFunction.apply(a, b, dim % a.dim(), kind)
    return out.to(out_dtype)


def _kl_terms(a: Tensor, b: Tensor, dim: int, p_minus_q: bool) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]:
    """``(KL, ea, sa, terms, p - q)`` with ``p = ea / sa``, ``terms = sa * p * log(p / q)``; ``dim >= 0``.

    ``KL`` has ``dim`` removed, the others keep it; ``p - q`` (formed without cancellation) is None unless asked for.
    """
    bound = 2.0 * _HALF_LOG_RATIO_BOUND[a.dtype]
    b_max = b.amax(dim, keepdim=True)
    eb = _exp2_shifted(b, dim, _LOG2E, b_max)  # sb * q
    sb = eb.sum(dim, keepdim=True)
    c, u, _, _ = _centred_log_ratio(a, b, eb, sb, dim, squared=False)  # a - b - E_q[a - b]
    large = c.amax(dim, keepdim=True) > bound
    c.clamp_(min=-bound)  # above the bound only in large rows, which use the direct log A below
    direct_free = _no_direct_rows(large)
    cc = c if direct_free else c.clamp(max=bound)  # (+inf where only b is masked)
    # expm1(c) ln 2 = (u - 1) * c / log2(u) with u = fl(2^(c / ln 2)) (Kahan's trick, limit c ln 2 where u == 1)
    u = torch.mul(cc, _LOG2E, out=u).exp2_()
    v = torch.log2(u)
    expm1_c = u.sub_(1.0).div_(v).nan_to_num_(nan=_LN2).mul_(cc).mul_(eb)  # sb ln 2 q expm1(c)
    a_m1 = expm1_c.sum(dim, keepdim=True).div_(sb).mul_(_LOG2E)  # A - 1 = E_q[e^c] - 1 (p = q e^c / A)
    a_max = a.amax(dim, keepdim=True)
    ea = _exp2_shifted(a, dim, _LOG2E, a_max, out=v)  # sa * p
    sa = ea.sum(dim, keepdim=True)
    terms = c.sub_(torch.log1p(a_m1)).mul_(ea)
    if not direct_free:  # large rows: log p - log q from the two log-softmaxes (as F.kl_div), not from c - log A,
        # whose a_max + log(sa) loses log(sa) next to a large a_max (2e-4 relative at a logit spread of 1e4)
        log_p = torch.sub(a, a_max).sub_(sa.log())
        log_ratio = log_p.sub_(torch.sub(b, b_max).sub_(sb.log()))
        direct = torch.mul(log_ratio, ea).masked_fill_(ea == 0, 0.0)  # p = 0 contributes 0 (0 log 0, 0 log 0/0)
        terms = torch.where(large, direct, terms)
    kl = terms.sum(dim).div_(sa.squeeze(dim)).clamp_(min=0.0)
    if not p_minus_q:
        return kl, ea, sa, terms, None
    # p - q = q (expm1(c) - (A - 1)) / A, or ea / sa - eb / sb in large rows
    scale = torch.where(large, 0.0, (sb * (a_m1 + 1.0)).reciprocal_())
    if direct_free:
        return kl, ea, sa, terms, expm1_c.mul_(scale * _LOG2E).addcmul_(eb, scale.mul_(a_m1), value=-1.0)
    direct = large.to(a.dtype)
    beta = torch.where(large, 0.0, scale * a_m1).add_(direct / sb).neg_()
    pmq = expm1_c.mul_(scale * _LOG2E).addcmul_(eb, beta).addcmul_(ea, direct.div_(sa))
    return kl, ea, sa, terms, pmq


class _KLFunction(torch.autograd.Function):
    """``KL(softmax(a) || softmax(b))`` along ``dim``, with a hand-written backward (and a differentiable one when
    gradients of gradients are requested). Rows where KL is +inf get a zero gradient."""

    @staticmethod
    def forward(ctx: Any, a: Tensor, b: Tensor, dim: int) -> Tensor:  # type: ignore[override]
        kl, ea, sa, terms, pmq = _kl_terms(a, b, dim, p_minus_q=ctx.needs_input_grad[1])
        if any(ctx.needs_input_grad[:2]):  # (not the output: callers may modify it in place)
            ctx.save_for_backward(a, b, ea, sa, terms, kl.unsqueeze(dim).clone(), pmq)
            ctx.infinite = None if _known_finite(kl) else torch.isposinf(kl).unsqueeze_(dim)
        ctx.dim = dim
        return kl

    @staticmethod
    def backward(ctx: Any, grad_out: Tensor) -> tuple[Tensor | None, Tensor | None, None]:  # type: ignore[override]
        a, b, ea, sa, terms, kl, pmq = ctx.saved_tensors
        needs = (ctx.needs_input_grad[0], ctx.needs_input_grad[1])
        if torch.is_grad_enabled():  # create_graph=True: a backward that autograd can differentiate again
            return (*_kl_grads_autograd(a, b, grad_out, ctx.dim, needs), None)
        go = grad_out.unsqueeze(ctx.dim)
        grad_a = grad_b = None
        if needs[0]:  # p (log(p / q) - KL)
            grad_a = torch.mul(ea, kl).sub_(terms).mul_(go.div(sa).neg_())
        if needs[1]:  # q - p
            grad_b = torch.mul(pmq, go.neg())
        if ctx.infinite is not None:  # KL = +inf (q = 0 < p somewhere) is constant nearby: a zero gradient
            grad_a = None if grad_a is None else grad_a.masked_fill_(ctx.infinite, 0.0)
            grad_b = None if grad_b is None else grad_b.masked_fill_(ctx.infinite, 0.0)
        return grad_a, grad_b, None


def fisher_rao_squared(logits_a: Tensor, logits_b: Tensor, dim: int = -1) -> Tensor:
    """Squared Fisher-Rao distance ``d^2`` between the softmax distributions of two logit tensors.

    This is the quantity FIRE regularizes and the attacks maximize: it has a finite, correct gradient everywhere,
    including ``logits_a == logits_b`` (where the gradient is 0) and saturated logits, and exact gradients of
    gradients (``create_graph=True``; at equality the Hessian in ``logits_b`` is twice the Fisher information
    ``diag(p) - p p^T``). ``-inf`` logits are masked classes (see the module docstring).

    Args:
        logits_a: logits of the first distribution, shape ``(..., M, ...)``.
        logits_b: logits of the second distribution, same shape.
        dim: the class dimension, an int in ``[-ndim, ndim)``.

    Returns:
        ``d^2`` with the class dimension removed, in ``[0, pi^2]``, in the input dtype.

    Raises:
        ValueError: shapes differ, non-floating dtypes, fewer than 2 classes, or ``dim`` out of range.

    Example:
        >>> a = torch.tensor([[2.0, 0.0, -1.0]])
        >>> fisher_rao_squared(a, a)
        tensor([0.])
        >>> x = torch.tensor([[0.5, -0.5]], requires_grad=True)
        >>> (g,) = torch.autograd.grad(fisher_rao_squared(a[:, :2], x).sum(), x, create_graph=True)
        >>> g.requires_grad  # differentiable again, e.g. for a gradient penalty
        True
    """
    return _sqrt_gap_op(logits_a, logits_b, dim, "fisher_rao_squared")


def fisher_rao(logits_a: Tensor, logits_b: Tensor, dim: int = -1) -> Tensor:
    """Fisher-Rao distance ``d = 2 * arccos(sum_y sqrt(p_y q_y))`` between softmax outputs (Theorem 2).

    Computed as ``4 * arcsin(||sqrt p - sqrt q|| / 2)`` so that nearly equal inputs keep full relative accuracy
    (about 1e-7 relative in float32 for logits that differ by 1e-4). Use :func:`fisher_rao_squared` to
    differentiate through the distance at equality (``d`` itself is not differentiable there; its gradient is
    taken as 0). ``-inf`` logits are masked classes: ``fisher_rao(t, t)`` is 0 for them too.

    Args:
        logits_a: logits of the first distribution, shape ``(..., M, ...)``.
        logits_b: logits of the second distribution, same shape.
        dim: the class dimension, an int in ``[-ndim, ndim)``.

    Returns:
        Per-sample distances in ``[0, pi]``, in the input dtype.

    Example:
        >>> fisher_rao(torch.tensor([[30.0, -30.0]]), torch.tensor([[-30.0, 30.0]]))  # nearly disjoint
        tensor([3.1416])
        >>> masked = torch.tensor([[1.0, float("-inf"), 0.0]])  # class 1 masked
        >>> fisher_rao(masked, masked)
        tensor([0.])
    """
    return _sqrt_gap_op(logits_a, logits_b, dim, "fisher_rao")


def hellinger_squared(logits_a: Tensor, logits_b: Tensor, dim: int = -1) -> Tensor:
    """Squared Hellinger distance with the convention of eq. (46): ``H^2 = 2 * (1 - BC)`` in ``[0, 2]``.

    Theorem 4: ``H^2 = 2 * (1 - cos(d / 2))`` with ``d`` the Fisher-Rao distance.

    Example:
        >>> round(float(hellinger_squared(torch.tensor([[100.0, 0.0]]), torch.tensor([[0.0, 100.0]]))), 6)
        2.0
    """
    return _sqrt_gap_op(logits_a, logits_b, dim, "hellinger")


def bhattacharyya(logits_a: Tensor, logits_b: Tensor, dim: int = -1) -> Tensor:
    """Bhattacharyya coefficient ``BC = sum_y sqrt(p_y q_y)`` in ``[0, 1]`` (1 when the distributions agree).

    The Bhattacharyya distance is ``-log(BC)``; the Fisher-Rao distance is ``2 * arccos(BC)``.

    Example:
        >>> a = torch.zeros(1, 4)
        >>> bhattacharyya(a, a)
        tensor([1.])
    """
    return _sqrt_gap_op(logits_a, logits_b, dim, "bhattacharyya")


def kl_divergence(logits_p: Tensor, logits_q: Tensor, dim: int = -1) -> Tensor:
    """Kullback-Leibler divergence ``KL(p || q) = sum_y p_y (log p_y - log q_y)`` on logits, in nats.

    A class with ``p_y = 0`` (``logits_p`` -inf) contributes 0; a class with ``q_y = 0 < p_y`` makes the divergence
    +inf, and that row's gradient 0.

    Args:
        logits_p: logits of ``p``, shape ``(..., M, ...)``.
        logits_q: logits of ``q``, same shape.
        dim: the class dimension, an int in ``[-ndim, ndim)``.

    Returns:
        Per-sample ``KL(p || q) >= 0`` with the class dimension removed, in the input dtype.

    Example:
        >>> p = torch.tensor([[1.0, 0.0]])
        >>> float(kl_divergence(p, p))
        0.0
        >>> float(kl_divergence(p, torch.tensor([[1.0, float("-inf")]])))  # q = 0 where p > 0
        inf
    """
    _check_pair(logits_p, logits_q, dim, names=("logits_p", "logits_q"))
    a, b, out_dtype = _wide(logits_p, logits_q)
    out = _KLFunction.apply(a, b, dim % a.dim())
    return out.to(out_dtype)


def fisher_rao_binary(h_a: Tensor, h_b: Tensor) -> Tensor:
    """Binary Fisher-Rao distance between the logistic models ``q(y|x) = sigmoid(y h)`` (Theorem 1, eq. 9).

    ``d = 2 * |arctan(exp(h_b / 2)) - arctan(exp(h_a / 2))|``, evaluated as
    ``2 * arctan(|sinh((h_b - h_a) / 4)| / cosh((h_a + h_b) / 4))`` in log space, so it stays exact for large
    ``|h|`` (no difference of two numbers close to ``pi / 2``). Elementwise; inputs broadcast.

    Args:
        h_a: latent codes (logit of class +1) of the first model.
        h_b: latent codes of the second model.

    Example:
        >>> fisher_rao_binary(torch.tensor([0.0]), torch.tensor([0.0]))
        tensor([0.])
    """
    if not isinstance(h_a, Tensor) or not isinstance(h_b, Tensor):
        raise TypeError(f"h_a and h_b must be torch.Tensor, got {type(h_a).__name__} and {type(h_b).__name__}")
    if not (h_a.is_floating_point() and h_b.is_floating_point()):
        raise ValueError(f"h_a and h_b must be floating point, got dtypes {h_a.dtype} and {h_b.dtype}")
    a, b, out_dtype = _wide(h_a, h_b)
    t = 0.25 * (b - a)
    s = (0.25 * (a + b)).abs()
    log_cosh_s = s + torch.log1p(torch.exp(-2.0 * s)) - math.log(2.0)
    t_abs = t.abs()
    small = t_abs < 1.0
    # small |t|: sinh directly (smooth at t = 0); large |t|: log|sinh t| = |t| + log(1 - exp(-2|t|)) - log 2.
    t_small = torch.where(small, t_abs, torch.zeros_like(t_abs))
    t_large = torch.where(small, torch.ones_like(t_abs), t_abs)
    ratio_small = torch.sinh(t_small) * torch.exp(-log_cosh_s)
    ratio_large = torch.exp(t_large + torch.log(-torch.expm1(-2.0 * t_large)) - math.log(2.0) - log_cosh_s)
    ratio = torch.where(small, ratio_small, ratio_large)
    return (2.0 * torch.atan(ratio)).to(out_dtype)


Divergence = Callable[[Tensor, Tensor], Tensor]

DIVERGENCES: dict[str, Divergence] = {
    "fisher_rao": fisher_rao_squared,
    "kl": kl_divergence,
    "hellinger": hellinger_squared,
}
"""Per-sample regularizers ``f(logits_nat, logits_adv)``: fisher_rao -> d^2, kl -> KL(p_nat || p_adv),
hellinger -> H^2."""


def get_divergence(name: str) -> Divergence:
    """Look up a divergence of :data:`DIVERGENCES` by name, with an error that lists the allowed names.

    Example:
        >>> get_divergence("kl") is kl_divergence
        True
    """
    try:
        return DIVERGENCES[name]
    except (KeyError, TypeError):
        raise ValueError(f"divergence must be one of {sorted(DIVERGENCES)}, got {name!r}") from None

"""Forward kernels of :mod:`fire_plugin.distances`: the centred log-ratio, ``sqrt p - sqrt q`` and the KL terms.

These compute, without cancellation, the quantities the module docstring of :mod:`fire_plugin.distances` derives
(``S = ||sqrt p - sqrt q||^2`` and ``KL``, with the buffers their hand-written backwards reuse), including the
direct path of saturated rows and the masked path of ``-inf`` logits. Inputs are float32/float64 logits with a
non-negative class ``dim``, already checked and promoted by the public functions. Nothing here is public.

Example:
    >>> a = torch.tensor([[2.0, 0.0, -1.0]])
    >>> gap, _, _ = _sqrt_gap(a, a, 1)
    >>> gap.abs().max().item()
    0.0
"""

from __future__ import annotations

import math

import torch
from torch import Tensor
from torch.linalg import vector_norm

_LOG2E = 1.0 / math.log(2.0)  # exp(z) = exp2(z * _LOG2E); exp2 is the cheaper kernel
_LN2 = math.log(2.0)
# Bound on the centred half log-ratio c / 2 (on c for KL, twice this). Beyond it a row takes the direct path; below
# it every intermediate stays finite: E_q[g^2] <= e^80 < float32 max.
_HALF_LOG_RATIO_BOUND = {torch.float32: 40.0, torch.float64: 300.0}


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

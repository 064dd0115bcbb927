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

Layout: the forward kernels are in ``fire_plugin._distance_kernels``, the differentiable backwards (gradients of
gradients) in ``fire_plugin._distance_grads``; this module holds the checks, the autograd functions and the public
API.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor
from torch.linalg import vector_norm

from fire_plugin._distance_grads import _kl_grads_autograd, _sqrt_gap_grads_autograd
from fire_plugin._distance_kernels import _from_s, _kl_terms, _known_finite, _sqrt_gap

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

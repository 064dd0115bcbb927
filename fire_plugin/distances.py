"""Fisher-Rao geometry of softmax outputs, computed on logits.

Every function takes logits (unnormalized log-probabilities), is batched over the leading dimensions and returns
one value per sample (no reduction). The formulas are those of Picot et al., "Adversarial Robustness via
Fisher-Rao Regularization" (TPAMI 2022):

* Theorem 2 (multiclass): ``d(p, q) = 2 * arccos(sum_y sqrt(p_y q_y))``, in ``[0, pi]``.
* Theorem 1 (binary, latent codes ``h``): ``d = 2 * |arctan(exp(h_b / 2)) - arctan(exp(h_a / 2))|``.
* Theorem 4 / eq. (46): ``H^2 = 2 * (1 - BC) = 2 * (1 - cos(d / 2))``.

Numerics. ``1 - BC`` is never formed by subtraction: with ``BC = 1 - ||sqrt p - sqrt q||^2 / 2`` we get
``d = 4 * arcsin(||sqrt p - sqrt q|| / 2)``, and each ``sqrt p_y - sqrt q_y`` is formed from the difference of
log-probabilities ``D_y = log p_y - log q_y``, itself computed without cancellation as
``c_y - log1p(sum_y q_y expm1(c_y))`` with ``c = (a - b) - E_q[a - b]``. float16/bfloat16 inputs are computed in float32 and the result
is cast back to the input dtype.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import Tensor

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

# Beyond this |a - b| the log-sum-exp difference is taken directly (expm1 would overflow in float32).
_SMALL_DELTA = 20.0
# Below this value of S = ||sqrt p - sqrt q||^2 the arcsin is replaced by its Taylor series (error < 1e-15).
_SERIES_S = 1e-4


def _check_pair(a: Tensor, b: Tensor, dim: int, *, names: tuple[str, str] = ("logits_a", "logits_b")) -> None:
    if not isinstance(a, Tensor) or not isinstance(b, Tensor):
        raise TypeError(f"{names[0]} and {names[1]} must be torch.Tensor, got {type(a).__name__} and {type(b).__name__}")
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


def _log_ratio(a: Tensor, b: Tensor, dim: int) -> tuple[Tensor, Tensor]:
    """Return ``(D, log q)`` with ``D = log_softmax(a) - log_softmax(b)`` computed without cancellation."""
    log_q = F.log_softmax(b, dim=dim)
    q = log_q.exp()
    delta = a - b
    # Center delta on its q-mean m: lse(a) - lse(b) = m + log1p(sum q * expm1(delta - m)). The sum is >= 0
    # (expm1(x) >= x and sum q (delta - m) = 0), so log1p is well conditioned and tiny gaps keep full accuracy.
    centered = delta - (q * delta).sum(dim=dim, keepdim=True)
    small = centered.abs().amax(dim=dim, keepdim=True) < _SMALL_DELTA
    safe = torch.where(small, centered, torch.zeros_like(centered))
    d_small = safe - torch.log1p((q * torch.expm1(safe)).sum(dim=dim, keepdim=True))
    # Large differences: the plain log-sum-exp difference (no cancellation to fear there).
    d_large = delta - (torch.logsumexp(a, dim=dim, keepdim=True) - torch.logsumexp(b, dim=dim, keepdim=True))
    return torch.where(small, d_small, d_large), log_q


def _sqrt_gap_sq(a: Tensor, b: Tensor, dim: int) -> Tensor:
    """``S = ||sqrt p - sqrt q||^2 = 2 (1 - BC)`` per sample, without cancellation. Works in the given dtype."""
    d_log, log_q = _log_ratio(a, b, dim)
    # |sqrt p - sqrt q| = exp(max(log p, log q) / 2) * (1 - exp(-|D| / 2)), with both factors in [0, 1].
    gap = torch.exp(0.5 * (log_q + d_log.clamp(min=0.0))) * torch.expm1(-0.5 * d_log.abs())
    return gap.square().sum(dim=dim)


def _arcsin_ratio_sq(s: Tensor) -> Tensor:
    """``(arcsin(u) / u)^2`` with ``u = sqrt(s) / 2``, smooth at ``s = 0`` (finite gradient)."""
    small = s < _SERIES_S
    s_safe = torch.where(small, torch.ones_like(s), s)
    u = 0.5 * torch.sqrt(s_safe)
    exact = torch.square(torch.asin(u.clamp(max=1.0)) / u)
    u2 = 0.25 * s
    # (asin u / u)^2 = 1 + u^2/3 + 8 u^4/45 + O(u^6)
    series = 1.0 + u2 / 3.0 + (8.0 / 45.0) * u2 * u2
    return torch.where(small, series, exact)


def fisher_rao_squared(logits_a: Tensor, logits_b: Tensor, dim: int = -1) -> Tensor:
    """Squared Fisher-Rao distance ``d^2`` between the softmax distributions of two logit tensors.

    This is the quantity FIRE regularizes and the attacks maximize: it has a finite, correct gradient everywhere,
    including ``logits_a == logits_b`` (where the gradient is 0) and saturated logits.

    Args:
        logits_a: logits of the first distribution, shape ``(..., M, ...)``.
        logits_b: logits of the second distribution, same shape.
        dim: the class dimension.

    Returns:
        ``d^2`` with the class dimension removed, in ``[0, pi^2]``, in the input dtype.

    Example:
        >>> a = torch.tensor([[2.0, 0.0, -1.0]])
        >>> fisher_rao_squared(a, a)
        tensor([0.])
    """
    _check_pair(logits_a, logits_b, dim)
    a, b, out_dtype = _wide(logits_a, logits_b)
    s = _sqrt_gap_sq(a, b, dim)
    # d = 4 asin(sqrt(s)/2)  =>  d^2 = 4 s (asin(u)/u)^2 with u = sqrt(s)/2.
    return (4.0 * s * _arcsin_ratio_sq(s)).to(out_dtype)


def fisher_rao(logits_a: Tensor, logits_b: Tensor, dim: int = -1) -> Tensor:
    """Fisher-Rao distance ``d = 2 * arccos(sum_y sqrt(p_y q_y))`` between softmax outputs (Theorem 2).

    Computed as ``4 * arcsin(||sqrt p - sqrt q|| / 2)`` so that nearly equal inputs keep full relative accuracy
    (about 1e-7 relative in float32 for logits that differ by 1e-4). Use :func:`fisher_rao_squared` to
    differentiate through the distance at equality (``d`` itself is not differentiable there; its gradient is
    taken as 0).

    Args:
        logits_a: logits of the first distribution, shape ``(..., M, ...)``.
        logits_b: logits of the second distribution, same shape.
        dim: the class dimension.

    Returns:
        Per-sample distances in ``[0, pi]``, in the input dtype.

    Example:
        >>> fisher_rao(torch.tensor([[10.0, -10.0]]), torch.tensor([[-10.0, 10.0]]))  # nearly disjoint
        tensor([3.1416])
    """
    _check_pair(logits_a, logits_b, dim)
    a, b, out_dtype = _wide(logits_a, logits_b)
    s = _sqrt_gap_sq(a, b, dim)
    zero = s == 0
    norm = torch.sqrt(torch.where(zero, torch.ones_like(s), s))
    norm = torch.where(zero, torch.zeros_like(s), norm)
    return (4.0 * torch.asin((0.5 * norm).clamp(max=1.0))).to(out_dtype)


def hellinger_squared(logits_a: Tensor, logits_b: Tensor, dim: int = -1) -> Tensor:
    """Squared Hellinger distance with the convention of eq. (46): ``H^2 = 2 * (1 - BC)`` in ``[0, 2]``.

    Theorem 4: ``H^2 = 2 * (1 - cos(d / 2))`` with ``d`` the Fisher-Rao distance.

    Example:
        >>> hellinger_squared(torch.tensor([[30.0, 0.0]]), torch.tensor([[0.0, 30.0]]))
        tensor([2.])
    """
    _check_pair(logits_a, logits_b, dim)
    a, b, out_dtype = _wide(logits_a, logits_b)
    return _sqrt_gap_sq(a, b, dim).to(out_dtype)


def bhattacharyya(logits_a: Tensor, logits_b: Tensor, dim: int = -1) -> Tensor:
    """Bhattacharyya coefficient ``BC = sum_y sqrt(p_y q_y)`` in ``[0, 1]`` (1 when the distributions agree).

    The Bhattacharyya distance is ``-log(BC)``; the Fisher-Rao distance is ``2 * arccos(BC)``.

    Example:
        >>> a = torch.zeros(1, 4)
        >>> bhattacharyya(a, a)
        tensor([1.])
    """
    _check_pair(logits_a, logits_b, dim)
    a, b, out_dtype = _wide(logits_a, logits_b)
    return (1.0 - 0.5 * _sqrt_gap_sq(a, b, dim)).to(out_dtype)


def kl_divergence(logits_p: Tensor, logits_q: Tensor, dim: int = -1) -> Tensor:
    """Kullback-Leibler divergence ``KL(p || q) = sum_y p_y (log p_y - log q_y)`` on logits, in nats.

    Example:
        >>> p = torch.tensor([[1.0, 0.0]])
        >>> float(kl_divergence(p, p))
        0.0
    """
    _check_pair(logits_p, logits_q, dim, names=("logits_p", "logits_q"))
    a, b, out_dtype = _wide(logits_p, logits_q)
    d_log, log_q = _log_ratio(a, b, dim)
    p = torch.exp(log_q + d_log)
    return (p * d_log).sum(dim=dim).clamp(min=0.0).to(out_dtype)


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
"""Per-sample regularizers ``f(logits_nat, logits_adv)``: fisher_rao -> d^2, kl -> KL(p_nat || p_adv), hellinger -> H^2."""


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

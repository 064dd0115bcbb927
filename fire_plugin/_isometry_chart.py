"""The chart of the partial-isometry regularizer: coordinates of the simplex and the linearization of ``log t``.

Part of :mod:`fire_plugin.isometry` (which re-exports every public name here and documents the derivation):
``theta``, ``mu = T1(theta)``, ``t = T2(mu)`` and ``log t`` computed stably from logits, ``delta_m`` (eq 5), the
scale ``c(x)`` derived from eq 12, and the batched linear maps of ``L = d log t / d x`` (``torch.func`` VJPs, or
``torch.autograd.grad`` for DistributedDataParallel models) from which the penalty's estimators are built.

Example:
    >>> logits = torch.zeros(1, 4)
    >>> t_from_logits(logits), t2(t1(theta_from_logits(logits)))  # the stable form and the direct one agree
    (tensor([[2., 2., 2.]]), tensor([[2., 2., 2.]]))
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "delta_m",
    "isometry_scale",
    "log_t_from_logits",
    "t1",
    "t2",
    "t_from_logits",
    "theta_from_logits",
]


def _check_epsilon(epsilon: float) -> float:
    if isinstance(epsilon, bool) or not isinstance(epsilon, (int, float)) or not math.isfinite(epsilon) or epsilon <= 0:
        raise ValueError(f"epsilon={epsilon!r} is not allowed; allowed: a finite number > 0")
    return float(epsilon)


# ----------------------------------------------------------------------------------------------- constants


def delta_m(num_classes: int) -> float:
    """``delta_m = 2 arccos(1 / sqrt(m + 1))`` (eq 5) for ``num_classes = m + 1``: the largest Fisher-Rao distance
    from a point of the simplex to the decision boundaries.

    >>> round(delta_m(10), 6)
    2.498092
    >>> round(delta_m(2), 6) == round(math.pi / 2, 6)
    True
    """
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"num_classes={num_classes!r} is not allowed; allowed: an int >= 2")
    return 2.0 * math.acos(1.0 / math.sqrt(num_classes))


# ----------------------------------------------------------------------------------------------- coordinates


def theta_from_logits(logits: Tensor) -> Tensor:
    """``theta``: the softmax of ``logits`` without its last component, ``(..., m + 1) -> (..., m)``.

    >>> theta_from_logits(torch.zeros(1, 4))
    tensor([[0.2500, 0.2500, 0.2500]])
    """
    return torch.softmax(logits, dim=-1)[..., :-1]


def t1(theta: Tensor) -> Tensor:
    """``mu = T1(theta) = 2 sqrt(theta)`` (section 3.4), element-wise; ``theta`` in the open simplex (``theta > 0``).

    >>> t1(torch.tensor([0.25, 0.25]))
    tensor([1., 1.])
    """
    return 2.0 * torch.sqrt(theta)


def t2(mu: Tensor) -> Tensor:
    """``t = T2(mu) = 2 mu / (2 - mu^{m+1})`` (eq 12), the stereographic projection of the sphere of radius 2.

    ``mu`` holds the first ``m`` coordinates, ``|mu| < 2``; ``mu^{m+1} = sqrt(4 - |mu|^2)``. Prefer
    :func:`t_from_logits` on logits (stable); this direct form serves as a reference.

    >>> t2(torch.tensor([1.0, 1.0, 1.0]))
    tensor([2., 2., 2.])
    """
    mu_last = torch.sqrt(4.0 - (mu * mu).sum(-1, keepdim=True))
    return 2.0 * mu / (2.0 - mu_last)


def _coordinates(logits: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """``(log t, mu, log(1 - sqrt(theta^{m+1})))`` from logits, in float32 or wider."""
    if logits.dim() < 1 or logits.shape[-1] < 2:
        raise ValueError(f"logits must have at least 2 classes in the last dimension, got shape {tuple(logits.shape)}")
    dtype = torch.promote_types(logits.dtype, torch.float32)
    lsm = torch.log_softmax(logits.to(dtype), dim=-1)
    a, q = lsm[..., :-1], lsm[..., -1:]  # (..., m), (..., 1)
    log_gap = torch.logsumexp(a, dim=-1, keepdim=True) - F.softplus(0.5 * q)  # log(1 - sqrt(theta^{m+1}))
    half_a = 0.5 * a
    log_t = math.log(2.0) + half_a - log_gap
    return log_t, 2.0 * torch.exp(half_a), log_gap.squeeze(-1)


def log_t_from_logits(logits: Tensor) -> Tensor:
    """``log t``, the logarithm of :func:`t_from_logits` (finite for all finite logits), ``(..., m)``.

    >>> log_t_from_logits(torch.zeros(1, 2)).exp()  # 2 sqrt(2) / (2 - sqrt(2))
    tensor([[4.8284]])
    """
    return _coordinates(logits)[0]


def t_from_logits(logits: Tensor) -> Tensor:
    """``t = T2(T1(theta))`` computed stably from ``log_softmax(logits)``, ``(..., m + 1) -> (..., m)``.

    Computed in float32 or wider. Values lie in ``{t^i > 0, |t| > 2}``; ``t`` overflows float32 only when the
    last class beats another by a logit gap above about 170.

    >>> t_from_logits(torch.zeros(1, 4))
    tensor([[2., 2., 2.]])
    """
    return torch.exp(log_t_from_logits(logits))


def isometry_scale(logits: Tensor, *, epsilon: float) -> Tensor:
    """``c(x) = delta_m^2 / (epsilon^2 (1 - sqrt(theta^{m+1}))^2)``: the value of ``J~ J~^T / I`` that eq 10 demands.

    Derived from the conformal metric of eq 12 (see the module docstring); it differs from the paper's eq 13.

    >>> isometry_scale(torch.zeros(1, 2), epsilon=math.pi / 2)  # theta^{m+1} = 1/2, delta_1 = pi / 2
    tensor([11.6569])
    """
    eps = _check_epsilon(epsilon)
    _, _, log_gap = _coordinates(logits)
    log_delta = math.log(delta_m(int(logits.shape[-1])))
    return torch.exp(2.0 * (log_delta - math.log(eps) - log_gap))


# ----------------------------------------------------------------------------------------------- Jacobians


@dataclass
class _Linearization:
    """One forward pass of ``log t`` and the batched linear maps of ``L = d log t / d x`` around it.

    ``vjp(V)``: ``(P, B, m) -> (P, B, *x.shape[1:])``, rows ``L^T v``; ``probe(V)``: ``(L^T v, L L^T v)`` of shapes
    ``(P, B, *x.shape[1:])`` and ``(P, B, m)``, the second by the double-VJP trick (the VJP of the linear map
    ``w -> L^T w``, built at ``w = v`` so that its primal is the first output). Results keep the graph, so they are
    differentiable with respect to the model's parameters.
    """

    log_t: Tensor  # (B, m)
    logits: Tensor  # (B, m + 1)
    vjp: Callable[[Tensor], Tensor]
    probe: Callable[[Tensor], tuple[Tensor, Tensor]]


def _row_chunk(batch: int, device: torch.device) -> int | None:
    """Cotangents per vmapped call: on CPU about 32 samples' worth of rows per call, on GPUs everything in one call.
    Measured with LeNet on one thread (``fire_plugin.bench.bench_isometry``): at B = 32 one row per call and all
    ``m`` rows in one call run at the same rate (45.6 and 46.1 GFLOP/s); at B = 8 all rows in one call is faster
    (48 against 32 GFLOP/s), hence rows are grouped up to 32 samples."""
    return None if device.type == "cuda" else max(1, 32 // max(batch, 1))


def _linearize(model: nn.Module, x: Tensor) -> _Linearization:
    """:class:`_Linearization` of ``x -> log t(model(x))`` with ``torch.func`` (vmap over VJPs).

    A ``DistributedDataParallel`` model cannot run its forward under ``torch.func`` transforms; it gets the same
    maps from ``torch.autograd.grad`` (``is_grads_batched``, i.e. vmap over the backward pass), which keeps DDP's
    forward and its gradient synchronization in the final backward.
    """
    if isinstance(model, nn.parallel.DistributedDataParallel):
        return _linearize_autograd(model, x)

    def fn(inp: Tensor) -> tuple[Tensor, Tensor]:
        logits = model(inp)
        return log_t_from_logits(logits), logits

    log_t, vjp_fn, logits = torch.func.vjp(fn, x, has_aux=True)  # type: ignore[misc]
    chunk = _row_chunk(int(x.shape[0]), x.device)

    def vjp(v: Tensor) -> Tensor:
        return torch.func.vmap(vjp_fn, chunk_size=chunk)(v)[0]

    def one_probe(v: Tensor) -> tuple[Tensor, Tensor]:
        lt_v, vjp_of_vjp = torch.func.vjp(lambda w: vjp_fn(w)[0], v)  # type: ignore[misc]
        return lt_v, vjp_of_vjp(lt_v)[0]

    def probe(v: Tensor) -> tuple[Tensor, Tensor]:
        if v.shape[0] == 1:  # no vmap for a single probe (measured 4% faster on LeNet)
            lt_v, l_lt_v = one_probe(v[0])
            return lt_v.unsqueeze(0), l_lt_v.unsqueeze(0)
        return torch.func.vmap(one_probe, chunk_size=chunk)(v)

    return _Linearization(log_t, logits, vjp, probe)


def _linearize_autograd(model: nn.Module, x: Tensor) -> _Linearization:
    """:func:`_linearize` with ``torch.autograd.grad`` (for models whose forward cannot run under torch.func)."""
    inp = x if x.requires_grad else x.detach().requires_grad_(True)
    logits = model(inp)
    log_t = log_t_from_logits(logits)

    def vjp(v: Tensor) -> Tensor:
        return torch.autograd.grad(log_t, inp, v, is_grads_batched=True, create_graph=True)[0]

    def probe(v: Tensor) -> tuple[Tensor, Tensor]:
        lt_v = vjp(v)
        w = torch.zeros_like(log_t, requires_grad=True)
        lt_w = torch.autograd.grad(log_t, inp, w, create_graph=True)[0]  # L^T w, linear in w
        return lt_v, torch.autograd.grad(lt_w, w, lt_v, is_grads_batched=True, create_graph=True)[0]

    return _Linearization(log_t, logits, vjp, probe)


def _log_t_jacobian(lin: _Linearization) -> Tensor:
    """``L = d log t / d x`` per sample, ``(B, m, n)``: ``m`` VJPs (cotangent ``e_i`` for every sample) under vmap,
    which on CPU evaluates them in chunks of rows (:func:`_row_chunk`)."""
    batch, m = lin.log_t.shape
    eye = torch.eye(m, dtype=lin.log_t.dtype, device=lin.log_t.device).unsqueeze(1).expand(m, batch, m)  # (m, B, m)
    rows = lin.vjp(eye)  # (m, B, *x.shape[1:])
    return rows.reshape(m, batch, -1).transpose(0, 1)  # (B, m, n)

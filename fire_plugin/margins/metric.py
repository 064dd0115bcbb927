"""The data-space Fisher metric of a classifier and the natural-gradient solves of the margin tracer.

See :mod:`fire_plugin.margins` for the metric, the solvers and their costs.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp

from fire_plugin._device import model_device as _model_device

SOLVERS: tuple[str, ...] = ("auto", "exact", "cg", "dense")
_AUTO_EXACT_MAX_CLASSES = 32
_DENSE_MAX_DIM = 4096
_CG_RTOL = 1e-7  # CG stops when ||r|| <= 1e-7 ||g|| for every sample of the batch

# --------------------------------------------------------------------------------------------------
# the log-probability map and its derivatives


class _LogProb:
    """``x (S, n) -> log softmax(model(x)) (S, m)`` with detached parameters (no parameter gradients)."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...]) -> None:
        self.model = model
        self.shape = shape
        self.params = {k: v.detach() for k, v in model.named_parameters()}
        self.buffers = {k: v.detach() for k, v in model.named_buffers()}

    def __call__(self, x: Tensor) -> Tensor:
        logits = functional_call(self.model, (self.params, self.buffers), (x.view(-1, *self.shape),))
        if logits.dim() != 2:
            raise ValueError(f"the model returned logits of shape {tuple(logits.shape)}; allowed: (batch, classes)")
        work = torch.promote_types(logits.dtype, torch.float32)  # information geometry in float32 or wider
        return F.log_softmax(logits.to(work), dim=-1)


def _vjp_graph(fn: Callable[[Tensor], Tensor], x: Tensor) -> tuple[Tensor, Callable[[Tensor], tuple[Tensor]]]:
    """``(log p, vjp_fn)`` at ``x``: one forward pass whose graph every vector-Jacobian product reuses.

    ``vjp_fn(u)`` is ``(u^T d log p / dx,)`` like :func:`torch.func.vjp`'s, through :func:`torch.autograd.grad`
    with ``retain_graph=True``, which ran the 9 VJPs of a SmallCNN (1x28x28, batch 36, 1 thread) in 0.27 s where
    ``torch.func.vjp`` took 0.33 s. ``x`` is copied, so that later in-place edits of it cannot reach the graph.
    """
    leaf = x.detach().clone().requires_grad_(True)
    with torch.enable_grad():
        logp = fn(leaf)

    def vjp_fn(u: Tensor) -> tuple[Tensor]:
        if not logp.requires_grad:  # the output does not depend on the input
            return (torch.zeros_like(leaf),)
        (grad,) = torch.autograd.grad(logp, leaf, u, retain_graph=True, allow_unused=True)
        return (torch.zeros_like(leaf) if grad is None else grad,)

    return logp, vjp_fn


def _jacobian(vjp_fn: Callable[[Tensor], tuple[Tensor, ...]], logp: Tensor) -> Tensor:
    """``L`` of shape ``(S, m, n)`` in float64 from ``m - 1`` vector-Jacobian products on the batch.

    With logits ``z`` and ``Z = dz/dx``, ``L = (I - 1 p^T) Z`` is unchanged when a common row is added to ``Z``, so
    the differences ``Z_c - Z_0`` (the VJPs of ``log p`` with cotangents ``e_c - e_0``, which sum to 0) suffice.
    The VJPs reuse one forward graph and run one after another: ``torch.func.vmap`` over the cotangents was 1.6x
    slower on SmallCNN (1x28x28) and 2.3x slower on the CIFAR ResNet-18 (batch 36, 1 thread; equal on digits_cnn).
    """
    s, m = logp.shape
    eye = torch.eye(m, dtype=logp.dtype, device=logp.device)
    diffs = torch.stack([vjp_fn((eye[c] - eye[0]).expand(s, m))[0] for c in range(1, m)], dim=1)  # (S, m - 1, n)
    diffs = diffs.double()
    p = logp.detach().double().exp()
    mean = (p[:, 1:].unsqueeze(1) @ diffs).squeeze(1)  # sum_c p_c (Z_c - Z_0), (S, n)
    return torch.cat([torch.zeros_like(diffs[:, :1]), diffs], dim=1) - mean.unsqueeze(1)


def _solve_exact(
    fn: _LogProb, x: Tensor, logp: Tensor, vjp_fn: Any, e: Tensor, damping: float, cg_iters: int,
    mask: Tensor | None, cache: dict[str, Tensor],
) -> tuple[Tensor, Tensor]:
    s, m = logp.shape
    if "jac" not in cache:
        cache["jac"] = _jacobian(vjp_fn, logp)  # (S, m, n)
    jac = cache["jac"] if mask is None else cache["jac"] * mask.unsqueeze(1)
    gram = jac @ jac.transpose(1, 2)  # K = L L^T, (S, m, m)
    p = logp.double().exp()
    system = p.unsqueeze(-1) * gram + damping * torch.eye(m, dtype=gram.dtype, device=gram.device)  # D K + lam I
    c = torch.linalg.solve(system, e)  # (S, m)
    v = (c.unsqueeze(1) @ jac).squeeze(1)  # L^T c, (S, n)
    g_v = (e * (gram @ c.unsqueeze(-1)).squeeze(-1)).sum(-1)  # g^T v = e^T K c
    return v, g_v


def _solve_dense(
    fn: _LogProb, x: Tensor, logp: Tensor, vjp_fn: Any, e: Tensor, damping: float, cg_iters: int,
    mask: Tensor | None, cache: dict[str, Tensor],
) -> tuple[Tensor, Tensor]:
    s, m = logp.shape
    n = x.shape[1]
    if n > _DENSE_MAX_DIM:
        raise ValueError(f"solver='dense' builds an n x n matrix; n={n} is too large, allowed: n <= {_DENSE_MAX_DIM}")
    if "jac" not in cache:
        cache["jac"] = _jacobian(vjp_fn, logp)  # (S, m, n)
    jac = cache["jac"] if mask is None else cache["jac"] * mask.unsqueeze(1)
    p = logp.double().exp()
    metric = jac.transpose(1, 2) @ (p.unsqueeze(-1) * jac)  # G_x, (S, n, n)
    metric.diagonal(dim1=1, dim2=2).add_(damping)
    g = (e.unsqueeze(1) @ jac).squeeze(1)  # (S, n)
    v = torch.linalg.solve(metric, g)
    return v, (g * v).sum(-1)


def _fisher_matvec(fn: _LogProb, x: Tensor, p: Tensor, vjp_fn: Any, u: Tensor) -> Tensor:
    """``G_x u = L^T (p * (L u))`` for each sample: one JVP and one VJP. ``u`` (S, n); returns float64."""
    lu = jvp(fn, (x,), (u.to(x.dtype),))[1]  # (S, m)
    (gu,) = vjp_fn((p * lu).to(lu.dtype))
    return gu.double()


def _solve_cg(
    fn: _LogProb, x: Tensor, logp: Tensor, vjp_fn: Any, e: Tensor, damping: float, cg_iters: int,
    mask: Tensor | None, cache: dict[str, Tensor],
) -> tuple[Tensor, Tensor]:
    p = logp.detach().exp()
    if "g" not in cache:
        cache["g"] = vjp_fn(e.to(logp.dtype))[0].double()  # (S, n)
    g = cache["g"] if mask is None else cache["g"] * mask
    v = torch.zeros_like(g)
    r = g.clone()
    d = r.clone()
    rr = (r * r).sum(-1)
    tol = (_CG_RTOL**2) * rr
    for _ in range(cg_iters):
        active = rr > tol
        if not bool(active.any()):
            break
        ad = _fisher_matvec(fn, x, p, vjp_fn, d if mask is None else d * mask)
        ad = (ad if mask is None else ad * mask) + damping * d
        d_ad = (d * ad).sum(-1)
        alpha = torch.where(active, rr / torch.where(active, d_ad, 1.0), 0.0)
        v = v + alpha.unsqueeze(-1) * d
        r = r - alpha.unsqueeze(-1) * ad
        rr_new = (r * r).sum(-1)
        beta = torch.where(active, rr_new / torch.where(active, rr, 1.0), 0.0)
        d = r + beta.unsqueeze(-1) * d
        rr = torch.where(active, rr_new, rr)
    return v, (g * v).sum(-1)


_SOLVE = {"exact": _solve_exact, "cg": _solve_cg, "dense": _solve_dense}


def _check_positive(name: str, value: Any, *, integer: bool = False) -> None:
    if integer:
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"{name}={value!r} is not allowed; allowed: a positive int")
        return
    if isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value) or value <= 0:
        raise ValueError(f"{name}={value!r} is not allowed; allowed: a positive finite number")


def _pick_solver(solver: str, m: int) -> str:
    if solver not in SOLVERS:
        raise ValueError(f"solver={solver!r} is not allowed; allowed: {list(SOLVERS)}")
    if solver == "auto":
        return "exact" if m <= _AUTO_EXACT_MAX_CLASSES else "cg"
    return solver


def _model_float_dtype(model: nn.Module) -> torch.dtype:
    for tensor in (*model.parameters(), *model.buffers()):
        if tensor.is_floating_point():
            return tensor.dtype
    return torch.get_default_dtype()


def _flat_inputs(model: nn.Module, x: Any, name: str = "x") -> tuple[Tensor, tuple[int, ...]]:
    """``x`` flattened to ``(N, n)`` on the model's device, cast to the model's floating dtype; NaN/inf refused."""
    if isinstance(x, np.ndarray) and np.issubdtype(x.dtype, np.floating):
        x = torch.from_numpy(x)
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        what = f"dtype {x.dtype}" if isinstance(x, Tensor | np.ndarray) else f"type {type(x).__name__}"
        raise ValueError(f"{name} of {what} is not allowed; allowed: a floating point tensor (N, ...) of inputs")
    bad = ~torch.isfinite(x.detach()).flatten(1).all(1) if x.numel() else torch.zeros(len(x), dtype=torch.bool)
    if bool(bad.any()):
        raise ValueError(f"{name} has NaN or infinite values in {int(bad.sum())} of {len(x)} inputs (first: input "
                         f"{int(bad.nonzero()[0, 0])}); allowed: finite inputs")
    dtype = _model_float_dtype(model)  # float64 from numpy or float16 inputs run in the model's dtype
    return x.detach().to(device=_model_device(model), dtype=dtype).flatten(1), tuple(x.shape[1:])


def _class_indices(name: str, values: Any) -> Tensor:
    """Integer class indices as an int64 CPU tensor; bools, non-integral numbers and strings are refused (as the
    trainers refuse them): truncating 1.7 to 1 would trace another class than the one asked for."""
    if isinstance(values, Tensor):
        if values.dtype == torch.bool or values.is_complex():
            raise ValueError(f"{name} of dtype {values.dtype} is not allowed; allowed: integer class indices")
        if values.is_floating_point():
            if not bool(torch.isfinite(values).all()) or bool((values != values.round()).any()):
                raise ValueError(f"{name} holds non-integer values; allowed: integer class indices")
        return values.detach().cpu().long()
    array = np.asarray(values, dtype=object) if not isinstance(values, np.ndarray) else values
    flat = array.ravel() if array.dtype == object else None
    if flat is not None:
        for v in flat:
            if isinstance(v, bool | np.bool_) or not isinstance(v, int | float | np.integer | np.floating):
                raise ValueError(f"{name} holds {v!r} ({type(v).__name__}); allowed: integer class indices")
            if not math.isfinite(float(v)) or float(v) != int(v):
                raise ValueError(f"{name} holds {v!r}; allowed: integer class indices")
        return torch.as_tensor(np.asarray(array.tolist(), dtype=np.float64).round().astype(np.int64))
    if array.dtype == np.bool_ or not np.issubdtype(array.dtype, np.number):
        raise ValueError(f"{name} of dtype {array.dtype} is not allowed; allowed: integer class indices")
    if np.issubdtype(array.dtype, np.floating) and (not np.isfinite(array).all() or (array != np.round(array)).any()):
        raise ValueError(f"{name} holds non-integer values; allowed: integer class indices")
    return torch.as_tensor(array.astype(np.int64))


def _first_forward(fn: Callable[[Tensor], Tensor], x0: Tensor, shape: tuple[int, ...], model: nn.Module) -> None:
    """Run the model on one input so that an input of the wrong shape fails with one line naming it."""
    try:
        with torch.no_grad():
            fn(x0[:1])
    except RuntimeError as err:
        expected = ""
        cfg = getattr(model, "pretrained_cfg", None) or getattr(model, "default_cfg", None)
        if isinstance(cfg, Mapping) and cfg.get("input_size"):
            expected = f" (its config says inputs (N, {', '.join(str(s) for s in cfg['input_size'])}))"
        else:
            layer = next((mod for mod in model.modules() if isinstance(mod, nn.Conv2d | nn.Linear)), None)
            if isinstance(layer, nn.Conv2d):
                expected = f" (its first layer takes {layer.in_channels} channels)"
            elif isinstance(layer, nn.Linear):
                expected = f" (its first layer takes {layer.in_features} features)"
        first = str(err).strip().splitlines()[0] if str(err).strip() else type(err).__name__
        raise ValueError(
            f"x of shape (N, {', '.join(str(s) for s in shape)}) (cast to {x0.dtype}) does not fit the model"
            f"{expected}: {first}; allowed: inputs of the shape the model was built for"
        ) from err


def data_fisher_matvec(model: nn.Module, x: Tensor, u: Tensor) -> Tensor:
    """``G_x u`` per input, matrix-free: one Jacobian-vector and one vector-Jacobian product.

    ``G_x = sum_c p_c grad log p_c grad log p_c^T`` is the data-space Fisher information of ``model`` at ``x``.
    The model is used as it is (call ``model.eval()`` first for dropout/batch-norm models).

    Args:
        model: classifier returning logits ``(N, m)``.
        x: inputs ``(N, ...)``.
        u: directions, same shape as ``x``.

    Returns:
        ``G_x u`` in float64, same shape as ``x``.

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))
    >>> data_fisher_matvec(model, torch.rand(4, 3), torch.rand(4, 3)).shape
    torch.Size([4, 3])
    """
    flat, shape = _flat_inputs(model, x)
    if not isinstance(u, Tensor) or u.shape != x.shape:
        raise ValueError(f"u of shape {tuple(getattr(u, 'shape', ()))} is not allowed; allowed: {tuple(x.shape)}")
    fn = _LogProb(model, shape)
    logp, vjp_fn = _vjp_graph(fn, flat)
    gu = _fisher_matvec(fn, flat, logp.detach().exp(), vjp_fn, u.detach().to(flat.device).flatten(1))
    return gu.view(x.shape)


def natural_gradient_direction(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    target: Tensor,
    *,
    damping: float = 1e-3,
    solver: str = "auto",
    cg_iters: int = 20,
) -> tuple[Tensor, Tensor]:
    """Solve ``(G_x + damping I) v = g`` with ``g = grad_x (log p_y - log p_target)``, per input.

    The tracing step is ``-v / sqrt(g^T v)`` (unit length in the damped metric). The model is used as it is.

    Args:
        model: classifier returning logits ``(N, m)``.
        x: inputs ``(N, ...)``.
        y: source classes ``(N,)``.
        target: target classes ``(N,)``.
        damping: ``lambda > 0``.
        solver: ``"auto"``, ``"exact"``, ``"cg"`` or ``"dense"`` (see the module docstring).
        cg_iters: maximum conjugate-gradient iterations.

    Returns:
        ``v`` (float64, shape of ``x``) and ``g^T v`` (float64, ``(N,)``).

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(3, 2))
    >>> v, g_v = natural_gradient_direction(model, torch.rand(4, 3), torch.zeros(4, dtype=torch.long),
    ...                                     torch.ones(4, dtype=torch.long))
    >>> bool((g_v > 0).all())
    True
    """
    _check_positive("damping", damping)
    _check_positive("cg_iters", cg_iters, integer=True)
    flat, shape = _flat_inputs(model, x)
    fn = _LogProb(model, shape)
    logp, vjp_fn = _vjp_graph(fn, flat)
    m = logp.shape[1]
    name = _pick_solver(solver, m)
    yy = torch.as_tensor(y, device=flat.device).long()
    tt = torch.as_tensor(target, device=flat.device).long()
    e = F.one_hot(yy, m).double() - F.one_hot(tt, m).double()
    v, g_v = _SOLVE[name](fn, flat, logp, vjp_fn, e, float(damping), cg_iters, None, {})
    return v.view(x.shape), g_v

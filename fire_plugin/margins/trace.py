"""Fisher-Rao margins by natural-gradient tracing, and class-shielding analysis.

Implements "Problem of Perceived Robustness" (De and Saefken): the data-space Fisher information of a classifier
``p(.|x)`` with ``m`` classes and ``n`` input dimensions,

    G_x = sum_c p_c grad log p_c grad log p_c^T = L^T diag(p) L,

with ``L`` the ``m x n`` Jacobian of the log-probabilities, is a Riemannian metric on the input space; the
Fisher-Rao (FR) margin of ``(x, y)`` is the FR length of the shortest path that changes the predicted class.

:func:`trace_margins` follows, for every input and every target class ``k``, natural-gradient steps on the log-odds
``L_k(x) = log p_y(x) - log p_k(x)`` in the damped metric ``G_x + damping * I`` until the predicted class changes.

Sign of the step. The paper's algorithm solves ``(G_x + lambda I) v = g`` with ``g = grad L_k``, sets
``delta = v / sqrt(g^T v)`` and updates ``x <- x + delta`` (its step 6). Since ``g^T v > 0``, that update *increases*
``L_k`` to first order, i.e. it moves deeper into class ``y`` and away from ``k``, the opposite of what the loop
("while argmax = y") needs. We take ``x <- x - step * delta``, which decreases ``L_k`` (moves toward ``k``);
``step = 1`` gives the paper's unit steps.

Input box. Every point is clamped to ``clamp`` (``[0, 1]`` by default, recorded in the result). Coordinates pinned
at the box that a step would push outward are removed from the problem (``L`` restricted to the free coordinates,
the solve repeated), so paths slide along the faces of the box instead of stalling against them.

Path length. Each step adds the closed-form Fisher-Rao distance (Theorem 2 of Picot et al.,
:func:`fire_plugin.distances.fisher_rao`) between the predictions before and after the step, not the first-order
metric estimate: the sum is exact on a monotone one-dimensional path (binary logistic model), converges to the path
length as ``step`` shrinks, accounts for clamping to the input box, and is never below the FR distance between the
path's end points (triangle inequality). The last step is refined by bisection so that the crossing is located
within 1% of a step; the path ends just past the decision boundary. Where the damping dominates ``G_x`` (saturated
softmax), a step of damped length ``step`` is up to ``step / sqrt(damping)`` long in l2 and can jump across the
whole boundary region in one go; a step that moves the prediction by more than ``2 * step`` (FR distance) is
therefore shortened along its direction, by bisection, to at most ``step``, so that paths follow the geometry and
their lengths converge as ``step`` shrinks.

What the flow does. As ``damping -> 0`` with a Jacobian of full rank ``m - 1``, ``L v`` is proportional to
``e_y / p_y - e_k / p_k``: the step moves probability from ``y`` to ``k`` and leaves every other class unchanged
(to first order). The path then runs along the arc ``p_y + p_k = const`` of the simplex, and another class ``c``
shields ``k`` exactly when ``p_c > (p_y + p_k) / 2`` at the start (the paper's "shielding necessitates
intermediate mass"); larger damping, large steps and the input box make the flow deviate from this.

Solvers for ``(G_x + lambda I) v = g`` (``g = L^T e`` with ``e = e_y - e_k``):

* ``"exact"``: the Woodbury (push-through) identity ``(L^T D L + lambda I)^{-1} L^T = L^T (D K + lambda I)^{-1}``
  with ``D = diag(p)`` and the ``m x m`` Gram matrix ``K = L L^T`` (equivalently, with ``A = D^{1/2} L``,
  ``(A^T A + lambda I)^{-1} A^T = A^T (A A^T + lambda I)^{-1}``), so ``v = L^T c`` with
  ``c = (D K + lambda I)^{-1} e``: ``m - 1`` vector-Jacobian products (on the whole batch of paths) and an
  ``m x m`` solve in float64; no cancellation as ``lambda -> 0`` and no division by ``p``.
* ``"cg"``: conjugate gradients on ``G_x + lambda I`` with matrix-free products ``G_x u = L^T (p * (L u))`` (one
  Jacobian-vector and one vector-Jacobian product per iteration), for many classes.
* ``"auto"``: ``"exact"`` when ``m <= 32``, else ``"cg"``.
* ``"dense"``: a reference that builds the ``n x n`` matrix ``G_x`` and calls ``torch.linalg.solve`` (tests and the
  benchmark baseline only; refused for ``n > 4096``).

:func:`shielding_report` turns a :class:`MarginResult` into the paper's table: shielding %, mean FR margin and mean
``||delta||_2`` per class, vulnerability rank, and the source x first-hit path matrix.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
>>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
>>> result = trace_margins(model, x, y, clamp=None, verbose=False)
>>> len(result), result.num_classes
(4, 3)
"""

from __future__ import annotations

import csv
import functools
import json
import logging
import math
import os
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, jvp, vjp
from tqdm.auto import tqdm

from fire_plugin.distances import fisher_rao

__all__ = [
    "ConvergenceStudy",
    "DEFAULT_DAMPING",
    "DEFAULT_STEP",
    "MODES",
    "SOLVERS",
    "STATUSES",
    "MarginResult",
    "ShieldingReport",
    "arc_margins",
    "convergence_study",
    "data_fisher_matvec",
    "fr_margin",
    "half_step_check",
    "natural_gradient_direction",
    "shielding_report",
    "spearman",
    "trace_margins",
]

_logger = logging.getLogger(__name__)

SOLVERS: tuple[str, ...] = ("auto", "exact", "cg", "dense")
STATUSES: tuple[str, ...] = ("flipped", "max_length", "max_steps", "stalled", "nonfinite", "misclassified")
"""Why a path ended: the prediction changed; the FR length reached ``max_length``; ``max_steps`` steps were taken;
``L_k`` stopped decreasing for ``_STALL_PATIENCE`` consecutive steps (e.g. pinned against the input box); the model
or the solve produced a non-finite value; the input was misclassified to begin with (not traced, margin 0)."""

_AUTO_EXACT_MAX_CLASSES = 32
_DENSE_MAX_DIM = 4096
_BISECT_TOL = 0.01  # the crossing is located within this fraction of a step
_BISECT_ITERS = math.ceil(math.log2(1.0 / _BISECT_TOL))  # 7 halvings: 1/128 < 0.01
_MAX_STEP_RATIO = 2.0  # a step moving the prediction farther than 2 * step (FR distance) is shortened
_SHORTEN_ITERS = 12  # bisection on the step fraction: to 1/4096 of the step
_STALL_PATIENCE = 5  # consecutive steps without a decrease of L_k
_PROGRESS_RTOL = 1e-6  # a decrease of L_k below 1e-6 * (1 + |L_k|) is float32 noise, not progress
_CG_RTOL = 1e-7  # CG stops when ||r|| <= 1e-7 ||g|| for every sample of the batch
_SCHEMA = "fire_plugin.margins/2"
_SCHEMA_V1 = "fire_plugin.margins/1"
MODES: tuple[str, ...] = ("converged", "paper")
"""``"converged"``: FR length of steps of ``step`` (default :data:`DEFAULT_STEP`), last step bisected;
``"paper"``: the paper's algorithm as printed, unit steps counted, no bisection."""
DEFAULT_STEP = 0.05
"""Step of ``"converged"`` mode, chosen by the convergence study of docs/margins.md: on CE, TRADES and FIRE digits
models, the largest step at which halving it changed the shielding % by less than 1 point and the mean margin by
less than 1% (with ``DEFAULT_DAMPING``; 0.1 changed CE's mean margin by 1.9%)."""
DEFAULT_DAMPING = 0.1
"""Damping of the metric ``G_x + damping I``: with 0.1 the margins converge from step 0.05 on (all three digits
models), with 1e-3 only from 0.02 (2.5x the steps) for margins about 3% shorter (docs/margins.md)."""
_MAX_STEPS_LIMIT = 1_000_000
_CHECK_FRACTION = 0.1  # the half-step check retraces every 10th path: measured 1.44x the cost of the trace alone
_CHECK_SHIELDING_POINTS = 1.0  # converged: halving the step changes shielding % by less than 1 point ...
_CHECK_MARGIN_REL = 0.01  # ... and the mean margin by less than 1%


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


def _model_device(model: nn.Module) -> torch.device:
    for param in model.parameters():
        return param.device
    for buffer in model.buffers():
        return buffer.device
    return torch.device("cpu")


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
    logp, vjp_fn, *_ = vjp(fn, flat)
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
    logp, vjp_fn, *_ = vjp(fn, flat)
    m = logp.shape[1]
    name = _pick_solver(solver, m)
    yy = torch.as_tensor(y, device=flat.device).long()
    tt = torch.as_tensor(target, device=flat.device).long()
    e = F.one_hot(yy, m).double() - F.one_hot(tt, m).double()
    v, g_v = _SOLVE[name](fn, flat, logp, vjp_fn, e, float(damping), cg_iters, None, {})
    return v.view(x.shape), g_v


# --------------------------------------------------------------------------------------------------
# results


_COLUMNS = ("index", "source", "target", "flipped", "first_class", "shielded", "margin", "fr_length", "l2", "linf",
            "steps", "status")


@dataclass
class MarginResult:
    """One row per traced (input, target) path; arrays of length ``P``.

    Attributes:
        index: input index of the path (row of ``x``).
        source: the input's label ``y`` (the class the path starts in).
        target: the target class ``k``.
        flipped: the predicted class changed within the budget.
        first_class: the class first reached (the class at the end of the path: the source when not flipped).
        shielded: flipped, and the first class reached is not the target.
        fr_length: traced Fisher-Rao length (sum of closed-form FR distances between successive predictions), in
            both modes.
        margin: the mode's margin of the path: ``fr_length`` in ``"converged"`` mode; in ``"paper"`` mode the
            paper's count, ``step`` times the number of steps taken (the number of steps at the paper's unit
            steps). Defaults to ``fr_length`` when not given.
        l2: ``||x_end - x||_2``.
        linf: ``||x_end - x||_inf``.
        steps: natural-gradient steps taken (the bisected last step counts as one).
        status: one of :data:`STATUSES`.
        num_classes: number of classes ``m`` of the model.
        n_inputs: number of inputs traced.
        damping, step, clamp, solver, max_length, max_steps, mode: the settings; ``clamp`` is the input box
            ``(low, high)`` every point of every path was clamped to, or None (unconstrained).
        convergence: the half-step check of :func:`trace_margins` (``check_convergence=True``): a dict with
            ``converged`` (bool), the shielding % and mean margin at ``step`` and ``step / 2`` on a subsample of
            the paths, and their changes; None when not checked.
        x_end: end points ``(P, ...)`` when traced with ``return_paths=True``, else None.

    >>> r = MarginResult.empty(num_classes=3)
    >>> len(r)
    0
    """

    index: np.ndarray
    source: np.ndarray
    target: np.ndarray
    flipped: np.ndarray
    first_class: np.ndarray
    shielded: np.ndarray
    fr_length: np.ndarray
    l2: np.ndarray
    linf: np.ndarray
    steps: np.ndarray
    status: np.ndarray
    num_classes: int
    n_inputs: int = 0
    damping: float = 1e-3
    step: float = 0.1
    clamp: tuple[float, float] | None = (0.0, 1.0)
    solver: str = "exact"
    max_length: float = 20.0
    max_steps: int = 1000
    mode: str = "converged"
    margin: np.ndarray = field(default=None, repr=False)  # type: ignore[arg-type]  # None: fr_length
    convergence: dict[str, Any] | None = None
    x_end: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"mode={self.mode!r} is not allowed; allowed: {list(MODES)}")
        if self.margin is None:
            self.margin = np.asarray(self.fr_length, dtype=np.float64).copy()
        n = len(self.index)
        for name in _COLUMNS:
            if len(getattr(self, name)) != n:
                raise ValueError(f"MarginResult.{name} has {len(getattr(self, name))} rows; allowed: {n} (as index)")

    def __len__(self) -> int:
        return len(self.index)

    @classmethod
    def empty(cls, num_classes: int, **settings: Any) -> MarginResult:
        """A result without paths."""
        ints = np.zeros(0, dtype=np.int64)
        return cls(
            index=ints, source=ints, target=ints, flipped=np.zeros(0, bool), first_class=ints,
            shielded=np.zeros(0, bool), fr_length=np.zeros(0), l2=np.zeros(0), linf=np.zeros(0), steps=ints,
            status=np.zeros(0, dtype="<U13"), num_classes=num_classes, **settings,
        )

    def settings(self) -> dict[str, Any]:
        """The scalar settings, JSON-ready."""
        return {
            "num_classes": self.num_classes, "n_inputs": self.n_inputs, "damping": self.damping, "step": self.step,
            "clamp": list(self.clamp) if self.clamp is not None else None, "solver": self.solver,
            "max_length": self.max_length, "max_steps": self.max_steps, "mode": self.mode,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"schema", "settings", "paths": {column: list}}`` (without ``x_end``)."""
        paths: dict[str, list[Any]] = {}
        for name in _COLUMNS:
            paths[name] = getattr(self, name).tolist()
        return {"schema": _SCHEMA, "settings": self.settings(), "convergence": self.convergence, "paths": paths}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MarginResult:
        """Inverse of :meth:`to_dict`."""
        if data.get("schema") not in (_SCHEMA, _SCHEMA_V1):
            raise ValueError(f"schema={data.get('schema')!r} is not allowed; allowed: {_SCHEMA!r} or {_SCHEMA_V1!r}")
        paths = dict(data["paths"])
        paths.setdefault("margin", paths["fr_length"])  # schema 1: converged mode only, margin = FR length
        dtypes: dict[str, Any] = {"flipped": bool, "shielded": bool, "fr_length": np.float64, "l2": np.float64,
                                  "linf": np.float64, "margin": np.float64, "status": "<U13"}
        columns: dict[str, Any] = {k: np.asarray(paths[k], dtype=dtypes.get(k, np.int64)) for k in _COLUMNS}
        settings = dict(data["settings"])
        settings["convergence"] = data.get("convergence")
        if settings.get("clamp") is not None:
            settings["clamp"] = tuple(settings["clamp"])
        return cls(**columns, **settings)

    def to_json(self, path: str | os.PathLike[str]) -> Path:
        """Write :meth:`to_dict` as JSON; returns the path."""
        out = Path(path)
        out.write_text(json.dumps(self.to_dict(), indent=2))
        return out

    @classmethod
    def from_json(cls, path: str | os.PathLike[str]) -> MarginResult:
        """Read a file written by :meth:`to_json`."""
        return cls.from_dict(json.loads(Path(path).read_text()))

    def to_csv(self, path: str | os.PathLike[str]) -> Path:
        """One row per path with the columns ``index, source, target, flipped, first_class, shielded, margin,
        fr_length, l2, linf, steps, status``; returns the path."""
        out = Path(path)
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(_COLUMNS)
            for row in zip(*(getattr(self, name).tolist() for name in _COLUMNS), strict=True):
                writer.writerow([f"{v:.9g}" if isinstance(v, float) else v for v in row])
        return out

    def input_margins(self) -> np.ndarray:
        """Per input, the smallest margin (:attr:`margin`, the mode's) over its flipped paths: 0 for a
        misclassified input, ``inf`` when it had paths and none flipped within the budget, NaN when it had no path
        at all (a ``targets`` list holding only its own label). Shape ``(n_inputs,)``."""
        margins = np.full(self.n_inputs, np.nan)
        margins[self.index] = np.inf
        for i, value in zip(self.index[self.flipped], self.margin[self.flipped], strict=True):
            margins[i] = min(margins[i], value)
        margins[self.index[self.status == "misclassified"]] = 0.0
        return margins

    def input_margin_paths(self) -> np.ndarray:
        """Per input, the row of the flipped path realizing its margin (:meth:`input_margins`), -1 when none."""
        best = np.full(self.n_inputs, -1, dtype=np.int64)
        for row in np.nonzero(self.flipped)[0]:
            i = self.index[row]
            if best[i] < 0 or self.margin[row] < self.margin[best[i]]:
                best[i] = row
        return best


# --------------------------------------------------------------------------------------------------
# tracing


def _path_targets(targets: Any, y: Tensor, m: int) -> tuple[Tensor, Tensor]:
    """``(input index, target)`` per path, on the CPU."""
    n = len(y)
    if targets is None:
        classes = torch.arange(m).expand(n, m)
        keep = classes != y.unsqueeze(1)
        return torch.arange(n).unsqueeze(1).expand(n, m)[keep], classes[keep]
    if isinstance(targets, Tensor) and targets.dim() == 2:
        tt = _class_indices("targets", targets)
        if len(tt) != n:
            raise ValueError(f"targets of shape {tuple(tt.shape)} is not allowed; allowed: ({n}, T) or a class list")
        if bool(((tt < 0) | (tt >= m)).any()):
            raise ValueError(f"targets has values outside [0, {m - 1}]; allowed: class indices")
        if bool((tt == y.unsqueeze(1)).any()):
            raise ValueError("targets contains an input's own label y; allowed: classes k != y")
        return torch.arange(n).unsqueeze(1).expand_as(tt).reshape(-1), tt.reshape(-1)
    if isinstance(targets, str | bytes) or not isinstance(targets, Sequence | Tensor | np.ndarray):
        raise ValueError(
            f"targets={targets!r} is not allowed; allowed: None, a sequence of classes, or a (N, T) tensor"
        )
    tt = _class_indices("targets", targets)
    if tt.dim() != 1:
        raise ValueError(f"targets of shape {tuple(tt.shape)} is not allowed; allowed: a class list or ({n}, T)")
    classes_list = tt.tolist()
    if not classes_list or any(k < 0 or k >= m for k in classes_list) or len(set(classes_list)) != len(classes_list):
        raise ValueError(f"targets={classes_list!r} is not allowed; allowed: distinct classes in [0, {m - 1}]")
    classes = torch.tensor(classes_list).expand(n, len(classes_list))
    keep = classes != y.unsqueeze(1)
    no_path = ~keep.any(1)
    if bool(no_path.any()):
        _logger.warning("targets=%s leaves %d input(s) without a path (their label is the only target): their "
                        "margin is NaN (not traced)", classes_list, int(no_path.sum()))
    return torch.arange(n).unsqueeze(1).expand_as(classes)[keep], classes[keep]


def _clamper(clamp: tuple[float, float] | None) -> Callable[[Tensor], Tensor]:
    if clamp is None:
        return lambda t: t
    low, high = clamp
    return lambda t: t.clamp(low, high)


def _check_clamp(clamp: Any) -> tuple[float, float] | None:
    if clamp is None:
        return None
    try:
        low, high = (float(c) for c in clamp)
    except (TypeError, ValueError):
        raise ValueError(f"clamp={clamp!r} is not allowed; allowed: None or (low, high)") from None
    if not (math.isfinite(low) and math.isfinite(high) and low < high):
        raise ValueError(f"clamp={clamp!r} is not allowed; allowed: finite low < high")
    return (low, high)


@torch.no_grad()
def _predict_logp(fn: _LogProb, x: Tensor, batch_size: int) -> Tensor:
    return torch.cat([fn(x[i : i + batch_size]) for i in range(0, len(x), batch_size)])


def _within_fr(logp_start: Tensor, radius: float | Tensor, logp: Tensor) -> Tensor:
    return fisher_rao(logp_start, logp.double()) <= radius


def _predicts(classes: Tensor, logp: Tensor) -> Tensor:
    return logp.argmax(-1) == classes


def _bisect_step(
    fn: Callable[[Tensor], Tensor],
    clip: Callable[[Tensor], Tensor],
    x: Tensor,
    delta: Tensor,
    start: tuple[Tensor, Tensor],
    end: tuple[Tensor, Tensor],
    keep: Callable[[Tensor], Tensor],
    iters: int,
) -> tuple[Tensor, tuple[Tensor, Tensor], tuple[Tensor, Tensor]]:
    """Bisect the fraction ``s`` in [0, 1] of the step ``x -> x + delta`` on the predicate ``keep(logp)``.

    ``keep`` holds at ``s = 0`` and fails at ``s = 1``; after ``iters`` halvings returns ``lo`` (the largest
    fraction known to keep), the point and log-probabilities there (``start`` when none was found), and those of
    the smallest fraction known to fail (``end`` when none was found). Rows are independent.
    """
    xs = x.double()
    lo = torch.zeros(len(x), dtype=torch.float64, device=x.device)
    hi = torch.ones_like(lo)
    (x_lo, logp_lo), (x_hi, logp_hi) = start, end
    for _ in range(iters):
        mid = (lo + hi) / 2
        x_mid = clip((xs + mid.unsqueeze(-1) * delta).to(x.dtype))
        with torch.no_grad():
            logp_mid = fn(x_mid)
        ok = keep(logp_mid)
        lo = torch.where(ok, mid, lo)
        hi = torch.where(ok, hi, mid)
        x_lo = torch.where(ok.unsqueeze(-1), x_mid, x_lo)
        logp_lo = torch.where(ok.unsqueeze(-1), logp_mid, logp_lo)
        x_hi = torch.where(ok.unsqueeze(-1), x_hi, x_mid)
        logp_hi = torch.where(ok.unsqueeze(-1), logp_hi, logp_mid)
    return lo, (x_lo, logp_lo), (x_hi, logp_hi)


def trace_margins(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    targets: Sequence[int] | Tensor | None = None,
    mode: str = "converged",
    damping: float | None = None,
    step: float | None = None,
    max_length: float = 20.0,
    max_steps: int = 1000,
    solver: str = "auto",
    cg_iters: int = 20,
    batch_size: int = 256,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    check_convergence: bool = True,
    return_paths: bool = False,
    progress: Callable[[int], None] | None = None,
    verbose: bool = True,
) -> MarginResult:
    """Trace natural-gradient paths from every input toward every target class; see the module docstring.

    Each step has length ``step`` in the damped metric ``G_x + damping I`` and decreases
    ``L_k = log p_y - log p_k`` (the paper's step 6 has the opposite sign, see the module docstring). Two modes:

    * ``"converged"`` (default): steps of ``step`` (default :data:`DEFAULT_STEP`), each adding the closed-form FR
      distance it covers; a step that moves the prediction farther than ``2 * step`` is shortened; the last step
      is bisected to 1% of a step; ``margin`` is the FR length.
    * ``"paper"``: the paper's algorithm as printed: steps ``-step * v / sqrt(g^T v)`` (default ``step=1``: unit
      steps), solved by conjugate gradients (``solver="auto"`` means ``"cg"`` here), no shortening, no bisection;
      ``margin`` is ``step`` times the number of steps taken until the prediction changes (an integer count at
      unit steps). ``fr_length`` is still the closed-form FR length of the same path.

    A path ends when the predicted class changes, when its margin reaches ``max_length``, after ``max_steps``
    steps, when it stalls (``"converged"``: ``L_k`` stops decreasing for 5 consecutive steps; both modes: no
    descent direction, or a step the input box cancels) or on a non-finite value; only the first is "flipped".
    Inputs the model misclassifies (prediction != ``y``) are not traced (status ``"misclassified"``, margin 0).

    With ``check_convergence`` (default) every tenth traced path is traced again at ``step / 2`` and the result
    records in :attr:`MarginResult.convergence` whether halving the step changed the shielding % by less than 1
    point and the mean margin by less than 1% (measured: 1.44x the time of the trace alone, digits_cnn).

    Up to ``batch_size`` paths advance together; finished paths leave the batch and queued ones take their place.
    The model runs in eval mode (its mode is restored afterwards); parameters get no gradients. Inputs are cast to
    the model's floating dtype (float64 from numpy, float16, ...); NaN or infinite inputs are refused.

    Args:
        model: classifier returning logits ``(N, m)``.
        x: inputs ``(N, ...)``, inside ``clamp``.
        y: integer labels ``(N,)``: the source class of each input (bools, 1.7 or "3" are refused).
        targets: None (every class ``k != y``), a sequence of classes for every input (``y`` itself skipped; an
            input left without a path gets margin NaN), or a ``(N, T)`` tensor of per-input targets (none ``y``).
        mode: ``"converged"`` or ``"paper"`` (see above).
        damping: ``lambda > 0`` of the damped metric (default :data:`DEFAULT_DAMPING`).
        step: length of each step in the damped metric (default :data:`DEFAULT_STEP` in ``"converged"`` mode, 1
            in ``"paper"`` mode).
        max_length: margin at which a path is given up (``pi`` is the largest FR distance between two
            predictions, but a path may wind).
        max_steps: steps after which a path is given up (at most 1,000,000).
        solver: ``"auto"``, ``"exact"``, ``"cg"`` or ``"dense"`` (reference, ``n <= 4096``).
        cg_iters: maximum conjugate-gradient iterations per step (``"cg"``).
        batch_size: paths advanced together.
        clamp: the input domain ``(low, high)`` every point is clamped to (``(0, 1)`` for images), or None.
        check_convergence: retrace a subsample at half the step and record the comparison.
        return_paths: keep the end points in ``MarginResult.x_end``.
        progress: called with the number of paths finished, as they finish (e.g. a progress bar's ``update``).
        verbose: show a tqdm progress bar (counting paths).

    Returns:
        A :class:`MarginResult`, one row per path, ordered by input then target.

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> r = trace_margins(model, torch.rand(3, 4), torch.zeros(3, dtype=torch.long), targets=[1], verbose=False)
    >>> r.target.tolist()
    [1, 1, 1]
    >>> paper = trace_margins(model, torch.rand(3, 4), torch.zeros(3, dtype=torch.long), targets=[1],
    ...                       mode="paper", clamp=None, verbose=False)
    >>> bool(np.all(paper.margin == paper.steps)), paper.solver
    (True, 'cg')
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; allowed: {list(MODES)}")
    paper = mode == "paper"
    damping = DEFAULT_DAMPING if damping is None else damping
    step = (1.0 if paper else DEFAULT_STEP) if step is None else step
    _check_positive("damping", damping)
    _check_positive("step", step)
    _check_positive("max_length", max_length)
    _check_positive("max_steps", max_steps, integer=True)
    if max_steps > _MAX_STEPS_LIMIT:
        raise ValueError(f"max_steps={max_steps} is not allowed; allowed: at most {_MAX_STEPS_LIMIT:,}")
    _check_positive("cg_iters", cg_iters, integer=True)
    _check_positive("batch_size", batch_size, integer=True)
    box = _check_clamp(clamp)
    x0, shape = _flat_inputs(model, x)
    device = x0.device
    yy = _class_indices("y", y)
    if yy.shape != (len(x0),):
        raise ValueError(f"y of shape {tuple(yy.shape)} is not allowed; allowed: ({len(x0)},)")
    if len(x0) == 0:
        raise ValueError("x is empty; allowed: at least one input")
    if box is not None and (float(x0.min()) < box[0] or float(x0.max()) > box[1]):
        raise ValueError(
            f"inputs with values in [{float(x0.min()):.4g}, {float(x0.max()):.4g}] are outside clamp={box}; "
            "allowed: inputs inside the clamp box (or clamp=None)"
        )
    clip = _clamper(box)
    was_training = model.training
    model.eval()
    try:
        fn = _LogProb(model, shape)
        _first_forward(fn, x0, shape, model)
        logp0 = _predict_logp(fn, x0, batch_size)  # (N, m)
        m = logp0.shape[1]
        if m < 2:
            raise ValueError(f"the model has {m} output; allowed: at least 2 classes")
        if bool(((yy < 0) | (yy >= m)).any()):
            raise ValueError(f"y has values outside [0, {m - 1}]; allowed: class indices of the model")
        name = "cg" if paper and solver == "auto" else _pick_solver(solver, m)
        solve = _SOLVE[name]
        pred0 = logp0.argmax(-1).cpu()
        p_input, p_target = _path_targets(targets, yy, m)
        n_paths = len(p_input)
        settings: dict[str, Any] = {"n_inputs": len(x0), "damping": float(damping), "step": float(step), "clamp": box,
                                    "solver": name, "max_length": float(max_length), "max_steps": int(max_steps),
                                    "mode": mode}
        if n_paths == 0:
            return MarginResult.empty(m, **settings)

        todo = torch.nonzero(pred0[p_input] == yy[p_input]).flatten()  # misclassified inputs are not traced
        # The half-step check traces a twin of every tenth traced path at step / 2 in the same batches (each twin
        # right behind its path): the two share every model call, so the check costs little beyond its paths.
        path_step = torch.full((n_paths,), float(step), dtype=torch.float64)
        path_max = torch.full((n_paths,), int(max_steps), dtype=torch.long)
        check_rows = torch.zeros(0, dtype=torch.long)
        if check_convergence and len(todo):
            k = max(1, math.ceil(len(todo) * _CHECK_FRACTION))
            pick = torch.as_tensor(np.unique(np.linspace(0, len(todo) - 1, k).round().astype(np.int64)))
            check_rows = todo[pick]
            twins = n_paths + torch.arange(len(check_rows))
            p_input = torch.cat([p_input, p_input[check_rows]])
            p_target = torch.cat([p_target, p_target[check_rows]])
            path_step = torch.cat([path_step, torch.full((len(twins),), float(step) / 2, dtype=torch.float64)])
            path_max = torch.cat([path_max, torch.full((len(twins),), min(2 * int(max_steps), _MAX_STEPS_LIMIT))])
            order = torch.stack([todo, torch.full_like(todo, -1)], 1)
            order[pick, 1] = twins
            todo = order.flatten()[order.flatten() >= 0]
        n_total = len(p_input)

        # per-path outputs (CPU)
        flipped = torch.zeros(n_total, dtype=torch.bool)
        first = pred0[p_input].clone()
        length = torch.zeros(n_total, dtype=torch.float64)
        steps_out = torch.zeros(n_total, dtype=torch.long)
        status = np.full(n_total, "misclassified", dtype="<U13")
        x_end = x0[p_input.to(device)].cpu().clone() if return_paths else None
        l2 = torch.zeros(n_total, dtype=torch.float64)
        linf = torch.zeros(n_total, dtype=torch.float64)

        p_input_d, p_target_d, y_d = p_input.to(device), p_target.to(device), yy.to(device)
        path_step_d, path_max_d = path_step.to(device), path_max.to(device)
        _logger.info(
            "tracing %d paths (%d inputs, %d of them classified correctly; %d of the paths retraced at half the "
            "step for the convergence check) of %s on %s: mode=%s step=%g damping=%g solver=%s", len(todo),
            len(x0), int((pred0 == yy).sum()), len(check_rows), type(model).__name__, device, mode, step, damping,
            name,
        )
        t_start = time.perf_counter()

        # the batch of active paths
        a_id = torch.zeros(0, dtype=torch.long, device=device)
        a_x = x0[:0]
        a_len = torch.zeros(0, dtype=torch.float64, device=device)
        a_steps = torch.zeros(0, dtype=torch.long, device=device)
        a_stall = torch.zeros(0, dtype=torch.long, device=device)
        a_step = torch.zeros(0, dtype=torch.float64, device=device)
        a_max = torch.zeros(0, dtype=torch.long, device=device)
        ptr = 0
        n_done, first_batch, t_loop = 0, min(batch_size, len(todo)), time.perf_counter()
        bar = tqdm(total=len(todo), desc=f"FR margins ({mode}, {name})", unit="path", disable=not verbose,
                   leave=False)
        try:
            while True:
                free = batch_size - len(a_id)
                if free > 0 and ptr < len(todo):
                    new = todo[ptr : ptr + free].to(device)
                    ptr += len(new)
                    a_id = torch.cat([a_id, new])
                    a_x = torch.cat([a_x, x0[p_input_d[new]]])
                    zeros = torch.zeros(len(new), dtype=torch.long, device=device)
                    a_len = torch.cat([a_len, zeros.double()])
                    a_steps = torch.cat([a_steps, zeros])
                    a_stall = torch.cat([a_stall, zeros])
                    a_step = torch.cat([a_step, path_step_d[new]])
                    a_max = torch.cat([a_max, path_max_d[new]])
                if len(a_id) == 0:
                    break
                src, tgt = y_d[p_input_d[a_id]], p_target_d[a_id]
                rows = torch.arange(len(a_id), device=device)
                logp, vjp_fn, *_ = vjp(fn, a_x)  # (S, m)
                e = F.one_hot(src, m).double() - F.one_hot(tgt, m).double()
                cache: dict[str, Tensor] = {}
                v, g_v = solve(fn, a_x, logp, vjp_fn, e, float(damping), cg_iters, None, cache)
                if box is not None:
                    # coordinates pinned at the box that the step pushes outward leave the problem: solve again
                    # with the metric and the gradient restricted to the free coordinates (projected natural
                    # gradient on the face of the box)
                    blocked = ((a_x <= box[0]) & (v > 0)) | ((a_x >= box[1]) & (v < 0))  # the step is -v
                    if bool(blocked.any()):
                        v, g_v = solve(fn, a_x, logp, vjp_fn, e, float(damping), cg_iters, (~blocked).double(),
                                       cache)
                logp = logp.detach()
                valid = torch.isfinite(g_v) & torch.isfinite(v).all(-1)
                stuck = valid & (g_v <= 0)  # no descent direction for L_k (on the free face of the box): stalled
                ok = valid & ~stuck
                scale = torch.where(ok, -a_step / g_v.clamp_min(1e-300).sqrt(), 0.0)
                delta = torch.nan_to_num(v) * scale.unsqueeze(-1)  # (S, n) float64, decreases L_k
                x_new = clip((a_x.double() + delta).to(a_x.dtype))
                with torch.no_grad():
                    logp_new = fn(x_new)
                # A step moving the prediction by more than _MAX_STEP_RATIO * step in FR distance (where the
                # damping dominates G_x, the step is up to step / sqrt(damping) long in l2) is shortened along its
                # direction to at most `step`, so that the path keeps following the geometry (not in paper mode).
                too_long = ok & (fisher_rao(logp.double(), logp_new.double()) > _MAX_STEP_RATIO * a_step)
                if not paper and bool(too_long.any()):
                    idx = too_long.nonzero().flatten()
                    within = functools.partial(_within_fr, logp[idx].double(), a_step[idx])
                    lo, (x_lo, logp_lo), _ = _bisect_step(
                        fn, clip, a_x[idx], delta[idx], (a_x[idx], logp[idx]), (x_new[idx], logp_new[idx]),
                        within, _SHORTEN_ITERS)
                    delta[idx] = delta[idx] * lo.unsqueeze(-1)
                    x_new[idx], logp_new[idx] = x_lo, logp_lo
                flip = (logp_new.argmax(-1) != src) & ok
                if not paper and bool(flip.any()):
                    idx = flip.nonzero().flatten()
                    same_class = functools.partial(_predicts, src[idx])
                    _, _, (x_hi, logp_hi) = _bisect_step(
                        fn, clip, a_x[idx], delta[idx], (a_x[idx], logp[idx]), (x_new[idx], logp_new[idx]),
                        same_class, _BISECT_ITERS)
                    x_new[idx], logp_new[idx] = x_hi, logp_hi
                finite = valid & torch.isfinite(logp_new).all(-1)
                moved = ok & finite
                if paper:  # a step the input box cancels entirely repeats forever
                    stuck = stuck | (moved & ~flip & (x_new == a_x).all(-1))
                x_new = torch.where(ok.unsqueeze(-1), x_new, a_x)
                increment = fisher_rao(logp.double(), torch.where(moved.unsqueeze(-1), logp_new, logp).double())
                a_len = a_len + torch.where(moved, increment, 0.0)
                a_steps = a_steps + moved.long()
                a_margin = a_steps.double() * a_step if paper else a_len
                gap = (logp[rows, src] - logp[rows, tgt]).double()
                gap_new = (logp_new[rows, src] - logp_new[rows, tgt]).double()
                progress_made = (gap - gap_new) > _PROGRESS_RTOL * (1.0 + gap.abs())
                a_stall = torch.where(progress_made, 0, a_stall + 1)
                a_x = x_new.detach()

                code = torch.full_like(a_id, -1)  # index into STATUSES, -1: continue
                stalled = stuck if paper else (a_stall >= _STALL_PATIENCE) | stuck
                code = torch.where(stalled, STATUSES.index("stalled"), code)
                code = torch.where(a_steps >= a_max, STATUSES.index("max_steps"), code)
                code = torch.where(a_margin >= max_length, STATUSES.index("max_length"), code)
                code = torch.where(flip & finite, STATUSES.index("flipped"), code)
                code = torch.where(~finite, STATUSES.index("nonfinite"), code)
                done = code >= 0
                if bool(done.any()):
                    ids = a_id[done].cpu()
                    disp = (a_x[done] - x0[p_input_d[a_id[done]]]).double()
                    l2[ids] = disp.norm(dim=1).cpu()
                    linf[ids] = disp.abs().amax(dim=1).cpu()
                    length[ids] = a_len[done].cpu()
                    steps_out[ids] = a_steps[done].cpu()
                    fl = (code[done] == STATUSES.index("flipped")).cpu()
                    flipped[ids] = fl
                    first[ids] = torch.where(fl, logp_new[done].argmax(-1).cpu(), yy[p_input[ids]])
                    status[ids.numpy()] = np.asarray(STATUSES)[code[done].cpu().numpy()]
                    if x_end is not None:
                        x_end[ids] = a_x[done].cpu()
                    keep = ~done
                    a_id, a_x, a_len = a_id[keep], a_x[keep], a_len[keep]
                    a_steps, a_stall, a_step, a_max = a_steps[keep], a_stall[keep], a_step[keep], a_max[keep]
                    bar.update(len(ids))
                    if progress is not None:
                        progress(len(ids))
                    n_done += len(ids)
                    if first_batch and n_done >= first_batch:
                        elapsed = time.perf_counter() - t_loop
                        _logger.info("first %d of %d paths done in %.1f s; estimate for all: %.0f s", n_done,
                                     len(todo), elapsed, elapsed * len(todo) / n_done)
                        first_batch = 0
        finally:
            bar.close()
    finally:
        model.train(was_training)

    seconds = time.perf_counter() - t_start
    steps_np = steps_out.numpy().astype(np.int64)
    columns: dict[str, Any] = {
        "index": p_input.numpy().astype(np.int64), "source": yy[p_input].numpy().astype(np.int64),
        "target": p_target.numpy().astype(np.int64), "flipped": flipped.numpy(),
        "first_class": first.numpy().astype(np.int64), "shielded": (flipped & (first != p_target)).numpy(),
        "fr_length": length.numpy(), "margin": steps_np * path_step.numpy() if paper else length.numpy().copy(),
        "l2": l2.numpy(), "linf": linf.numpy(), "steps": steps_np, "status": status,
    }
    result = MarginResult(
        **{k: v[:n_paths] for k, v in columns.items()}, num_classes=m,
        x_end=x_end[:n_paths].view(n_paths, *shape).numpy() if x_end is not None else None, **settings,
    )
    _logger.info(
        "traced %d paths from %d inputs (%s, %s): %d flipped, %d shielded, median margin of flipped %.4g",
        n_paths, len(x0), mode, name, int(result.flipped.sum()), int(result.shielded.sum()),
        float(np.median(result.margin[result.flipped])) if result.flipped.any() else float("nan"),
    )
    if check_convergence:
        half = MarginResult(**{k: v[n_paths:] for k, v in columns.items()}, num_classes=m,
                            **(settings | {"step": float(step) / 2}))
        share = len(half) / max(1, len(half) + n_paths)
        result.convergence = _compare_half_step(result, check_rows.numpy(), half, seconds * share)
    return result


def _subsample_stats(result: MarginResult) -> tuple[float, float, int]:
    """Shielding % and mean margin of the flipped paths of ``result``, and their number."""
    n_flipped = int(result.flipped.sum())
    if n_flipped == 0:
        return float("nan"), float("nan"), 0
    return (100.0 * float(result.shielded.sum()) / n_flipped, float(result.margin[result.flipped].mean()),
            n_flipped)


def half_step_check(
    model: nn.Module, x: Tensor, result: MarginResult, *, solver: str = "auto", cg_iters: int = 20,
    batch_size: int = 256,
) -> dict[str, Any]:
    """Retrace every tenth traced path of ``result`` at half its step (same mode, damping, box; twice the step
    budget) and compare the shielding % and the mean margin of those paths at both steps.

    ``converged`` is True when halving changed the shielding % by less than 1 point, the mean margin by less than
    1% and no path's flip; None when no path was traced. (:func:`trace_margins` runs the same check inside its
    own batches; this function is for results assembled from parts, such as resumed runs.)

    Args:
        model: the model ``result`` was traced on.
        x: the inputs ``result`` was traced from (``result.index`` indexes them).
        result: a :class:`MarginResult`.
        solver, cg_iters, batch_size: as in :func:`trace_margins`.

    Returns:
        A JSON-ready dict (see :attr:`MarginResult.convergence`).

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> x = torch.rand(5, 4)
    >>> r = trace_margins(model, x, torch.zeros(5, dtype=torch.long), clamp=None, check_convergence=False,
    ...                   verbose=False)
    >>> half_step_check(model, x, r)["half_step"]
    0.025
    """
    x = _flat_inputs(model, x)[0].view(len(x), *tuple(x.shape[1:]))
    kw: dict[str, Any] = {"solver": solver, "cg_iters": cg_iters, "batch_size": batch_size, "clamp": result.clamp}
    start = time.perf_counter()
    traced = np.nonzero(result.status != "misclassified")[0]
    out: dict[str, Any] = {"step": result.step, "half_step": result.step / 2, "n_paths": 0, "converged": None,
                           "tolerance": {"shielding_points": _CHECK_SHIELDING_POINTS,
                                         "margin_rel": _CHECK_MARGIN_REL}}
    if len(traced) == 0:
        return out | {"note": "no path was traced (no input classified correctly)"}
    k = max(1, math.ceil(len(traced) * _CHECK_FRACTION))
    sel = traced[np.unique(np.linspace(0, len(traced) - 1, k).round().astype(np.int64))]
    half = trace_margins(
        model, x[torch.as_tensor(result.index[sel], device=x.device)], torch.as_tensor(result.source[sel]),
        targets=torch.as_tensor(result.target[sel]).unsqueeze(1), mode=result.mode, damping=result.damping,
        step=result.step / 2, max_length=result.max_length, max_steps=min(2 * result.max_steps, _MAX_STEPS_LIMIT),
        check_convergence=False, verbose=False, **kw,
    )
    return _compare_half_step(result, sel, half, time.perf_counter() - start)


def _compare_half_step(result: MarginResult, sel: np.ndarray, half: MarginResult, seconds: float) -> dict[str, Any]:
    """The check's verdict from the paths ``sel`` of ``result`` and the same paths ``half`` traced at step / 2."""
    out: dict[str, Any] = {"step": result.step, "half_step": result.step / 2, "n_paths": len(sel), "converged": None,
                           "tolerance": {"shielding_points": _CHECK_SHIELDING_POINTS,
                                         "margin_rel": _CHECK_MARGIN_REL}}
    if len(sel) == 0:
        return out | {"note": "no path was traced (no input classified correctly)"}
    coarse = _subset(result, sel)
    pct, mean, n_fl = _subsample_stats(coarse)
    pct_h, mean_h, n_fl_h = _subsample_stats(half)
    d_points = abs(pct_h - pct)
    d_rel = abs(mean_h - mean) / abs(mean_h) if mean_h else float("inf")
    agree = float(np.mean(coarse.first_class == half.first_class))
    converged = bool(d_points < _CHECK_SHIELDING_POINTS and d_rel < _CHECK_MARGIN_REL and n_fl == n_fl_h)
    out |= {"flipped": n_fl, "flipped_half": n_fl_h, "shielding_pct": pct,
            "shielding_pct_half": pct_h, "mean_margin": mean, "mean_margin_half": mean_h,
            "shielding_change_points": d_points, "mean_margin_rel_change": d_rel,
            "first_class_agreement": agree, "converged": converged, "seconds": seconds}
    level = logging.INFO if converged else logging.WARNING
    _logger.log(level, "half-step check on %d paths (step %g vs %g): shielding %.1f%% vs %.1f%%, mean margin %.4g "
                "vs %.4g (%.2f%%): %s", len(sel), result.step, result.step / 2, pct, pct_h, mean, mean_h,
                100 * d_rel, "converged" if converged else "NOT converged: use a smaller step")
    return _json_ready(out)


def _json_ready(d: dict[str, Any]) -> dict[str, Any]:
    return {k: (None if isinstance(v, float) and not math.isfinite(v) else v) for k, v in d.items()}


def _subset(result: MarginResult, rows: np.ndarray) -> MarginResult:
    """The paths ``rows`` of ``result`` (same settings)."""
    columns = {name: getattr(result, name)[rows] for name in _COLUMNS}
    settings = result.settings()
    settings["clamp"] = result.clamp
    return MarginResult(**columns, **settings)


def fr_margin(model: nn.Module, x: Tensor, y: Tensor, **kwargs: Any) -> np.ndarray:
    """Per input, the smallest traced margin over its target classes (:meth:`MarginResult.input_margins`).

    0 for an input the model misclassifies (it is already past the boundary), ``inf`` when no path flipped within
    the budget (``max_length``, ``max_steps``), NaN for an input without a path. The half-step convergence check
    is off unless ``check_convergence=True`` is passed (the margins alone do not report it).

    Args:
        model: classifier returning logits.
        x: inputs ``(N, ...)``.
        y: labels ``(N,)``.
        **kwargs: passed to :func:`trace_margins`.

    Returns:
        float64 array ``(N,)``.

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> fr_margin(model, torch.rand(2, 4), torch.tensor([0, 1]), clamp=None, verbose=False).shape
    (2,)
    """
    kwargs.setdefault("check_convergence", False)
    return trace_margins(model, x, y, **kwargs).input_margins()


def arc_margins(probs: Tensor | np.ndarray, source: Any, target: Any) -> tuple[np.ndarray, np.ndarray]:
    """FR length and first class reached of the ``damping -> 0`` natural-gradient flow, from the start's
    probabilities alone.

    With a Jacobian of full rank ``m - 1`` along the path and no input box, the flow toward ``k`` moves probability
    from ``y`` to ``k`` only: ``p_y(t) = p_y - t``, ``p_k(t) = p_k + t``, every other class fixed, i.e. along the arc
    ``p_y + p_k = r`` of the simplex at angle ``theta = arctan sqrt(p_k(t) / p_y(t))``, with FR length
    ``2 sqrt(r) |d theta|``. It ends where ``p_y(t)`` meets ``max(p_k(t), q)``, ``q`` the largest other probability:
    at ``theta = pi / 4`` (reaching ``k``) or, when ``q > r / 2``, at ``p_y(t) = q`` (shielded by that class).
    Comparing traced lengths with these tells how much of a model's FR margins its confidence alone explains.

    Args:
        probs: ``(P, m)`` probabilities at the start of each path.
        source: ``(P,)`` source classes (the argmax of ``probs``; NaN is returned otherwise).
        target: ``(P,)`` target classes.

    Returns:
        ``(length, first_class)``, float64 and int64 arrays ``(P,)``.

    >>> length, first = arc_margins(np.array([[0.5, 0.4, 0.1], [0.5, 0.1, 0.4]]), [0, 0], [2, 2])
    >>> first.tolist(), np.round(length, 3).tolist()
    ([1, 2], [0.302, 0.106])
    """
    p = np.asarray(probs, dtype=np.float64)
    src, tgt = np.asarray(source, dtype=np.int64), np.asarray(target, dtype=np.int64)
    if p.ndim != 2 or src.shape != (len(p),) or tgt.shape != (len(p),):
        raise ValueError(f"probs {p.shape}, source {src.shape}, target {tgt.shape}: allowed (P, m), (P,), (P,)")
    rows = np.arange(len(p))
    p_y, p_k = p[rows, src], p[rows, tgt]
    others = p.copy()
    others[rows, src] = -np.inf
    others[rows, tgt] = -np.inf
    shield_class = others.argmax(axis=1)
    q = others[rows, shield_class] if p.shape[1] > 2 else np.zeros(len(p))
    r = p_y + p_k
    shielded = q > r / 2
    with np.errstate(divide="ignore", invalid="ignore"):
        end = np.where(shielded, np.arctan(np.sqrt((r - q) / q)), math.pi / 4)
        length = 2 * np.sqrt(r) * (end - np.arctan(np.sqrt(p_k / p_y)))
    length[p_y < p.max(axis=1)] = np.nan  # the source is not the predicted class
    return length, np.where(shielded, shield_class, tgt)


# --------------------------------------------------------------------------------------------------
# class shielding


def spearman(a: Any, b: Any) -> float:
    """Spearman rank correlation of two samples (average ranks for ties; pairs with a non-finite value left out);
    NaN with fewer than 2 pairs or a constant sample.

    >>> spearman([1, 2, 3, 4], [10, 20, 15, 40])
    0.8
    """
    x, y = np.asarray(a, dtype=np.float64).ravel(), np.asarray(b, dtype=np.float64).ravel()
    if x.shape != y.shape:
        raise ValueError(f"samples of {x.size} and {y.size} values; allowed: the same length")
    keep = np.isfinite(x) & np.isfinite(y)
    x, y = x[keep], y[keep]
    if len(x) < 2:
        return float("nan")
    rx, ry = _average_ranks(x), _average_ranks(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = math.sqrt(float((rx * rx).sum()) * float((ry * ry).sum()))
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def _average_ranks(v: np.ndarray) -> np.ndarray:
    """Ranks 1..n of ``v`` (ascending), ties sharing their average rank."""
    order = np.argsort(v, kind="stable")
    ranks = np.empty(len(v), dtype=np.float64)
    sorted_v = v[order]
    i = 0
    while i < len(v):
        j = i
        while j + 1 < len(v) and sorted_v[j + 1] == sorted_v[i]:
            j += 1
        ranks[order[i : j + 1]] = (i + j) / 2 + 1
        i = j + 1
    return ranks


def _robustness_ranks(n_paths: np.ndarray, n_flipped: np.ndarray, values: np.ndarray) -> np.ndarray:
    """1 = most robust: never-flipped classes (with traced paths) first, then decreasing ``values``; 0 for a class
    without traced paths."""
    m = len(n_paths)
    key = np.where(n_paths == 0, -np.inf, np.where(n_flipped == 0, np.inf, values))
    key = np.where(np.isnan(key), -np.inf, key)
    order = np.argsort(-key, kind="stable")
    ranks = np.zeros(m, dtype=np.int64)
    rank = 1
    for c in order:
        if n_paths[c] > 0:
            ranks[c] = rank
            rank += 1
    return ranks


@dataclass
class ShieldingReport:
    """The class-shielding table of a :class:`MarginResult` (arrays indexed by class).

    Attributes:
        class_names: one name per class.
        n_paths: traced paths whose source is the class (misclassified inputs excluded).
        n_flipped: of those, the successful (flipped) ones.
        n_shields: successful paths, from any source, on which the class was the first intervening label (first
            class reached, not the target).
        shielding_pct: ``100 * n_shields / total_flipped``: the share of all successful paths on which the class was
            the first intervening label.
        mean_fr_margin: mean margin (:attr:`MarginResult.margin`: FR length in ``"converged"`` mode, the step count
            times the step in ``"paper"`` mode) of the class's own successful paths (source = class); NaN if none.
        mean_fr_length: mean closed-form FR length of the same paths (equal to ``mean_fr_margin`` in
            ``"converged"`` mode).
        mean_l2: mean ``||delta||_2`` of the same paths; NaN if none.
        vuln_rank: 1 = most robust: classes ordered by decreasing mean FR margin; a class whose traced paths never
            flipped counts as the most robust; 0 for a class without traced paths.
        l2_rank: the same ordering by decreasing mean ``||delta||_2`` at the flip.
        fr_l2_rank_correlation: Spearman correlation between the classes' mean FR margins and mean ``||delta||_2``
            (classes with both), i.e. between ``vuln_rank`` and ``l2_rank`` (the paper's
            ``rank_FR = rank_l2 + o(1)``); NaN with fewer than 2 classes.
        input_fr_l2_spearman: Spearman correlation, over the inputs with a flipped path, between each input's FR
            margin (its smallest margin) and the ``||delta||_2`` of the path realizing it.
        n_correlated_inputs: the inputs in ``input_fr_l2_spearman``.
        path_matrix: ``(m, m)`` counts of traced paths by source (rows) and first class reached (columns); paths
            that did not flip are on the diagonal.
        total_paths: traced paths.
        total_flipped: successful paths.
        n_inputs: inputs of the result; n_misclassified: of those, misclassified (not traced).
        traced_with: the settings the paths were traced with (mode, step, damping, solver, clamp, budgets).
        convergence: the result's half-step check (:attr:`MarginResult.convergence`), None when not run.

    >>> report = shielding_report(MarginResult.empty(num_classes=2))
    >>> report.total_paths
    0
    """

    class_names: list[str]
    n_paths: np.ndarray
    n_flipped: np.ndarray
    n_shields: np.ndarray
    shielding_pct: np.ndarray
    mean_fr_margin: np.ndarray
    mean_l2: np.ndarray
    vuln_rank: np.ndarray
    path_matrix: np.ndarray
    total_paths: int
    total_flipped: int
    mean_fr_length: np.ndarray = field(default_factory=lambda: np.zeros(0))
    l2_rank: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    fr_l2_rank_correlation: float = float("nan")
    input_fr_l2_spearman: float = float("nan")
    n_correlated_inputs: int = 0
    n_inputs: int = 0
    n_misclassified: int = 0
    traced_with: dict[str, Any] = field(default_factory=dict)
    convergence: dict[str, Any] | None = None

    @property
    def converged(self) -> bool | None:
        """The half-step check's verdict: True, False, or None (not checked, or nothing to check)."""
        return None if self.convergence is None else self.convergence.get("converged")

    def notes(self) -> list[str]:
        """One-line notes: how the paths were traced, the convergence verdict (a WARNING when the step had not
        converged), and why the table is empty when it is."""
        lines = []
        if self.traced_with:
            t = self.traced_with
            lines.append(f"Traced with mode={t.get('mode')}, step={t.get('step'):g}, damping={t.get('damping'):g}, "
                         f"solver={t.get('solver')}, clamp={t.get('clamp')}, max_steps={t.get('max_steps')}, "
                         f"max_length={t.get('max_length'):g}.")
        c = self.convergence
        if c is None:
            lines.append("Convergence in the step: not checked (check_convergence=False).")
        elif c.get("converged") is None:
            lines.append(f"Convergence in the step: not checked ({c.get('note', 'no path')}).")
        else:
            verdict = (f"halving the step ({c['step']:g} -> {c['half_step']:g}) on {c['n_paths']} of the paths "
                       f"changed the shielding % by {_fmt(c.get('shielding_change_points'), '.2f')} points and the "
                       f"mean margin by {_fmt(100 * (c.get('mean_margin_rel_change') or float('nan')), '.2f')}% "
                       f"(tolerance: {c['tolerance']['shielding_points']:g} point, "
                       f"{100 * c['tolerance']['margin_rel']:g}%)")
            if c["converged"]:
                lines.append(f"Convergence in the step: converged: {verdict}.")
            else:
                lines.append(f"WARNING: not converged in the step: {verdict}; these numbers depend on the step "
                             "size: trace again with a smaller step.")
        if self.total_paths == 0:
            if self.n_inputs and self.n_misclassified == self.n_inputs:
                lines.append(f"No path was traced: no input was classified correctly ({self.n_misclassified} of "
                             f"{self.n_inputs} misclassified).")
            else:
                lines.append("No path was traced (no target class left for the inputs).")
        return lines

    @property
    def warning(self) -> str | None:
        """The WARNING line of :meth:`notes`, None when there is none."""
        return next((line for line in self.notes() if line.startswith("WARNING")), None)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""

        def clean(a: np.ndarray) -> list[Any]:
            return [None if isinstance(v, float) and not math.isfinite(v) else v for v in a.tolist()]

        def scalar(v: float) -> float | None:
            return v if math.isfinite(v) else None

        return {
            "class_names": list(self.class_names),
            "n_paths": self.n_paths.tolist(),
            "n_flipped": self.n_flipped.tolist(),
            "n_shields": self.n_shields.tolist(),
            "shielding_pct": clean(self.shielding_pct),
            "mean_fr_margin": clean(self.mean_fr_margin),
            "mean_fr_length": clean(self.mean_fr_length),
            "mean_l2": clean(self.mean_l2),
            "vuln_rank": self.vuln_rank.tolist(),
            "l2_rank": self.l2_rank.tolist(),
            "fr_l2_rank_correlation": scalar(self.fr_l2_rank_correlation),
            "input_fr_l2_spearman": scalar(self.input_fr_l2_spearman),
            "n_correlated_inputs": self.n_correlated_inputs,
            "path_matrix": self.path_matrix.tolist(),
            "total_paths": self.total_paths,
            "total_flipped": self.total_flipped,
            "n_inputs": self.n_inputs,
            "n_misclassified": self.n_misclassified,
            "traced_with": dict(self.traced_with),
            "convergence": self.convergence,
            "converged": self.converged,
            "warning": self.warning,
            "notes": self.notes(),
        }

    def to_markdown(self) -> str:
        """The notes, the paper's table (with the L2 rank), the rank correlations, then the path matrix."""
        lines = [*self.notes(), ""]
        lines += [
            "| class | shielding % | mean FR margin | mean FR length | mean ||delta||_2 | vuln rank (FR) | "
            "rank (L2) | paths | flipped |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for c, cname in enumerate(self.class_names):
            rank = str(int(self.vuln_rank[c])) if self.vuln_rank[c] > 0 else "-"
            l2_rank = str(int(self.l2_rank[c])) if len(self.l2_rank) and self.l2_rank[c] > 0 else "-"
            length = self.mean_fr_length[c] if len(self.mean_fr_length) else float("nan")
            lines.append(
                f"| {cname} | {_fmt(self.shielding_pct[c], '.1f')} | {_fmt(self.mean_fr_margin[c], '.3f')} | "
                f"{_fmt(length, '.3f')} | {_fmt(self.mean_l2[c], '.3f')} | {rank} | {l2_rank} | "
                f"{int(self.n_paths[c])} | {int(self.n_flipped[c])} |"
            )
        lines += ["", f"{self.total_flipped} of {self.total_paths} traced paths flipped.", "",
                  f"Spearman correlation of the classes' FR and L2 ranks (fr_l2_rank_correlation): "
                  f"{_fmt(self.fr_l2_rank_correlation, '.3f')}; per input, FR margin vs ||delta||_2 of the same "
                  f"path: {_fmt(self.input_fr_l2_spearman, '.3f')} ({self.n_correlated_inputs} inputs).", "",
                  "Path matrix (rows: source, columns: first class reached; diagonal: not flipped):", ""]
        lines.append("| source \\ first | " + " | ".join(self.class_names) + " |")
        lines.append("|---|" + "---:|" * len(self.class_names))
        for c, cname in enumerate(self.class_names):
            lines.append(f"| {cname} | " + " | ".join(str(int(v)) for v in self.path_matrix[c]) + " |")
        return "\n".join(lines) + "\n"


def _fmt(v: float | None, fmt: str) -> str:
    return "-" if v is None or not math.isfinite(v) else format(v, fmt)


def shielding_report(result: MarginResult, class_names: Sequence[str] | None = None) -> ShieldingReport:
    """The class-shielding table of the paper from traced paths (see :class:`ShieldingReport` for each column).

    Paths of misclassified inputs are left out.

    Args:
        result: a :class:`MarginResult`.
        class_names: one name per class; ``"0"``, ``"1"``, ... when None.

    Returns:
        A :class:`ShieldingReport`.

    >>> r = MarginResult(index=np.array([0, 0]), source=np.array([0, 0]), target=np.array([1, 2]),
    ...     flipped=np.array([True, True]), first_class=np.array([1, 1]), shielded=np.array([False, True]),
    ...     fr_length=np.array([0.5, 0.7]), l2=np.array([1.0, 2.0]), linf=np.array([0.1, 0.2]),
    ...     steps=np.array([5, 7]), status=np.array(["flipped", "flipped"]), num_classes=3, n_inputs=1)
    >>> shielding_report(r).shielding_pct.tolist()
    [0.0, 50.0, 0.0]
    """
    m = result.num_classes
    if class_names is None:
        names = [str(c) for c in range(m)]
    else:
        names = [str(c) for c in class_names]
        if len(names) != m:
            raise ValueError(f"class_names has {len(names)} names; allowed: {m} (one per class)")
    traced = result.status != "misclassified"
    src, first = result.source[traced], result.first_class[traced]
    flipped, shielded = result.flipped[traced], result.shielded[traced]
    margin, length, l2 = result.margin[traced], result.fr_length[traced], result.l2[traced]
    n_paths = np.bincount(src, minlength=m).astype(np.int64)
    n_flipped = np.bincount(src[flipped], minlength=m).astype(np.int64)
    n_shields = np.bincount(first[shielded], minlength=m).astype(np.int64)
    total_flipped = int(flipped.sum())
    shielding_pct = 100.0 * n_shields / total_flipped if total_flipped else np.full(m, np.nan)
    mean_fr = np.full(m, np.nan)
    mean_len = np.full(m, np.nan)
    mean_l2 = np.full(m, np.nan)
    for c in range(m):
        mine = flipped & (src == c)
        if mine.any():
            mean_fr[c] = float(margin[mine].mean())
            mean_len[c] = float(length[mine].mean())
            mean_l2[c] = float(l2[mine].mean())
    vuln_rank = _robustness_ranks(n_paths, n_flipped, mean_fr)
    l2_rank = _robustness_ranks(n_paths, n_flipped, mean_l2)
    best = result.input_margin_paths()
    best = best[best >= 0]
    path_matrix = np.zeros((m, m), dtype=np.int64)
    np.add.at(path_matrix, (src, first), 1)
    misclassified = np.unique(result.index[result.status == "misclassified"])
    return ShieldingReport(
        class_names=names, n_paths=n_paths, n_flipped=n_flipped, n_shields=n_shields, shielding_pct=shielding_pct,
        mean_fr_margin=mean_fr, mean_fr_length=mean_len, mean_l2=mean_l2, vuln_rank=vuln_rank, l2_rank=l2_rank,
        fr_l2_rank_correlation=spearman(mean_fr, mean_l2),
        input_fr_l2_spearman=spearman(result.margin[best], result.l2[best]), n_correlated_inputs=len(best),
        path_matrix=path_matrix, total_paths=int(traced.sum()), total_flipped=total_flipped,
        n_inputs=result.n_inputs, n_misclassified=len(misclassified),
        traced_with={k: v for k, v in result.settings().items() if k not in ("num_classes", "n_inputs")},
        convergence=result.convergence,
    )


# --------------------------------------------------------------------------------------------------
# convergence in the step and the damping


@dataclass
class ConvergenceStudy:
    """Shielding and margins of the same inputs traced at several steps and dampings (:func:`convergence_study`).

    Attributes:
        rows: one dict per ``(step, damping)``, steps decreasing within each damping: ``step``, ``damping``,
            ``mode``, ``solver``, ``shielding_pct`` (share of flipped paths whose first class is not the target),
            ``class_shielding_pct`` (per class, as :attr:`ShieldingReport.shielding_pct`), ``mean_margin``,
            ``median_margin``, ``mean_fr_length``, ``mean_l2`` (at the flip), ``n_paths``, ``n_flipped``,
            ``fr_l2_rank_correlation``, ``input_fr_l2_spearman``, ``seconds``; and, against the next finer step
            of the same damping, ``shielding_change_points`` and ``mean_margin_rel_change`` (None for the finest).
        class_names: one name per class.
        n_inputs: inputs traced at every setting.
        inputs_note: where the inputs come from (``"SYNTHETIC ..."`` for synthetic inputs), or None.

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> study = convergence_study(model, torch.rand(3, 4), torch.zeros(3, dtype=torch.long), steps=(0.2, 0.1),
    ...                           dampings=(1e-3,), clamp=None, verbose=False)
    >>> [row["step"] for row in study.rows]
    [0.2, 0.1]
    """

    rows: list[dict[str, Any]]
    class_names: list[str]
    n_inputs: int
    inputs_note: str | None = None

    def dampings(self) -> list[float]:
        """The dampings of the study, in the order given."""
        return list(dict.fromkeys(row["damping"] for row in self.rows))

    def converged_step(self, damping: float, tol: float = 0.01, shielding_points: float = 1.0) -> float | None:
        """The largest step from which on every refinement (each step against the next finer one of the study)
        changes the shielding % by less than ``shielding_points`` and the mean margin by less than ``tol``
        (relative); None when even the two finest steps disagree (or the study has one step)."""
        rows = [r for r in self.rows if r["damping"] == damping]
        if not rows:
            raise ValueError(f"damping={damping!r} is not in the study; allowed: {self.dampings()}")
        best = None
        for row in reversed(rows[:-1]):  # from the second finest step up
            if not _row_agrees(row, tol, shielding_points):
                break
            best = row["step"]
        return best

    def converged(self, tol: float = 0.01, shielding_points: float = 1.0) -> bool:
        """True when, for every damping, the two finest steps agree within the tolerances (a converged step
        exists): the finest rows are then trustworthy to about ``tol`` and ``shielding_points``."""
        return all(self.converged_step(d, tol, shielding_points) is not None for d in self.dampings())

    def to_dict(self, tol: float = 0.01, shielding_points: float = 1.0) -> dict[str, Any]:
        """JSON-ready: the rows, the class names, the converged step per damping and the verdict."""
        return {
            "schema": "fire_plugin.margins.convergence/1", "inputs": self.inputs_note, "n_inputs": self.n_inputs,
            "class_names": list(self.class_names),
            "tolerance": {"margin_rel": tol, "shielding_points": shielding_points},
            "converged": self.converged(tol, shielding_points),
            "converged_step": {str(d): self.converged_step(d, tol, shielding_points) for d in self.dampings()},
            "rows": [_json_ready(dict(row)) for row in self.rows],
        }

    def to_json(self, path: str | os.PathLike[str] | None = None, **tolerances: float) -> str:
        """:meth:`to_dict` as JSON text; also written to ``path`` when given."""
        text = json.dumps(self.to_dict(**tolerances), indent=2)
        if path is not None:
            Path(path).write_text(text)
        return text

    def to_markdown(self, tol: float = 0.01, shielding_points: float = 1.0) -> str:
        """The study as a Markdown table, one line per setting, with the converged step per damping."""
        mode = self.rows[0]["mode"] if self.rows else "-"
        margin = "mean margin (steps x step)" if mode == "paper" else "mean FR margin"
        lines = []
        if self.inputs_note:
            lines += [f"Inputs: {self.inputs_note}", ""]
        lines += [
            f"mode={mode}, {self.n_inputs} inputs; change = against the next finer step of the same damping.", "",
            f"| damping | step | shielding % | {margin} | median | mean FR length | mean L2 | flipped / paths | "
            "FR-L2 rank rho | per-input rho | change (points) | change (margin) | s |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for r in self.rows:
            rel = r.get("mean_margin_rel_change")
            lines.append(
                f"| {r['damping']:g} | {r['step']:g} | {_fmt(r['shielding_pct'], '.1f')} | "
                f"{_fmt(r['mean_margin'], '.4f')} | {_fmt(r['median_margin'], '.4f')} | "
                f"{_fmt(r['mean_fr_length'], '.4f')} | {_fmt(r['mean_l2'], '.3f')} | {r['n_flipped']} / "
                f"{r['n_paths']} | {_fmt(r['fr_l2_rank_correlation'], '.2f')} | "
                f"{_fmt(r['input_fr_l2_spearman'], '.2f')} | {_fmt(r.get('shielding_change_points'), '.2f')} | "
                f"{'-' if rel is None else format(100 * rel, '.2f') + '%'} | {r['seconds']:.1f} |"
            )
        lines.append("")
        for d in self.dampings():
            s = self.converged_step(d, tol, shielding_points)
            lines.append(f"damping {d:g}: " + (f"converged from step {s:g} on" if s is not None else
                                                "NOT converged at the finest step of the study") +
                         f" (tolerance {shielding_points:g} point of shielding %, {100 * tol:g}% of mean margin).")
        return "\n".join(lines) + "\n"

    def plot(self) -> Any:
        """The figure of :func:`fire_plugin.plots.plot_convergence_study`."""
        from fire_plugin.plots import plot_convergence_study

        return plot_convergence_study(self)


def _row_agrees(row: Mapping[str, Any], tol: float, shielding_points: float) -> bool:
    d_points, d_rel = row.get("shielding_change_points"), row.get("mean_margin_rel_change")
    return d_points is not None and d_rel is not None and d_points < shielding_points and d_rel < tol


def convergence_study(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    steps: Sequence[float] = (1.0, 0.5, 0.2, 0.1, 0.05, 0.02),
    dampings: Sequence[float] = (1e-3, 1e-1),
    mode: str = "converged",
    class_names: Sequence[str] | None = None,
    inputs_note: str | None = None,
    verbose: bool = True,
    **trace_kwargs: Any,
) -> ConvergenceStudy:
    """Trace the same inputs at every ``(step, damping)`` and tabulate shielding and margins (no half-step check:
    the study is the check).

    Args:
        model: classifier returning logits.
        x: inputs ``(N, ...)``.
        y: labels ``(N,)``.
        steps: step lengths (sorted decreasing in the rows).
        dampings: dampings of the metric.
        mode: ``"converged"`` or ``"paper"`` (see :func:`trace_margins`).
        class_names: one name per class.
        inputs_note: where the inputs come from (kept in the outputs).
        verbose: a progress bar over the settings.
        **trace_kwargs: passed to :func:`trace_margins` (``targets``, ``max_length``, ``max_steps``, ``solver``,
            ``batch_size``, ``clamp``, ...).

    Returns:
        A :class:`ConvergenceStudy`.
    """
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; allowed: {list(MODES)}")
    for key in ("step", "damping", "mode", "check_convergence", "verbose", "progress"):
        if key in trace_kwargs:
            raise ValueError(f"{key}= is set by convergence_study itself; allowed: the other trace_margins options")
    step_list = sorted({float(s) for s in steps}, reverse=True)
    damp_list = list(dict.fromkeys(float(d) for d in dampings))
    if not step_list or not damp_list:
        raise ValueError("steps and dampings must each hold at least one value")
    for s in step_list:
        _check_positive("steps", s)
    for d in damp_list:
        _check_positive("dampings", d)
    rows: list[dict[str, Any]] = []
    names: list[str] | None = None
    n_inputs = 0
    grid = [(d, s) for d in damp_list for s in step_list]
    for d, s in tqdm(grid, desc=f"convergence study ({mode})", unit="setting", disable=not verbose, leave=False):
        start = time.perf_counter()
        result = trace_margins(model, x, y, step=s, damping=d, mode=mode, check_convergence=False, verbose=False,
                               **trace_kwargs)
        seconds = time.perf_counter() - start
        report = shielding_report(result, class_names)
        names, n_inputs = report.class_names, result.n_inputs
        fl = result.flipped
        n_fl = int(fl.sum())
        rows.append(_json_ready({
            "damping": d, "step": s, "mode": mode, "solver": result.solver,
            "shielding_pct": 100.0 * float(result.shielded.sum()) / n_fl if n_fl else float("nan"),
            "class_shielding_pct": [None if not math.isfinite(v) else v for v in report.shielding_pct.tolist()],
            "mean_margin": float(result.margin[fl].mean()) if n_fl else float("nan"),
            "median_margin": float(np.median(result.margin[fl])) if n_fl else float("nan"),
            "mean_fr_length": float(result.fr_length[fl].mean()) if n_fl else float("nan"),
            "mean_l2": float(result.l2[fl].mean()) if n_fl else float("nan"),
            "n_paths": int((result.status != "misclassified").sum()), "n_flipped": n_fl,
            "fr_l2_rank_correlation": report.fr_l2_rank_correlation,
            "input_fr_l2_spearman": report.input_fr_l2_spearman, "seconds": seconds,
        }))
        _logger.info("study %s damping=%g step=%g: shielding %s%%, mean margin %s (%.1f s)", mode, d, s,
                     _fmt(rows[-1]["shielding_pct"], ".1f"), _fmt(rows[-1]["mean_margin"], ".4f"), seconds)
    for d in damp_list:
        mine = [r for r in rows if r["damping"] == d]
        for coarse, fine in zip(mine[:-1], mine[1:], strict=True):
            a, b = coarse["shielding_pct"], fine["shielding_pct"]
            ma, mb = coarse["mean_margin"], fine["mean_margin"]
            coarse["shielding_change_points"] = abs(a - b) if a is not None and b is not None else None
            coarse["mean_margin_rel_change"] = abs(ma - mb) / abs(mb) if ma is not None and mb else None
        mine[-1]["shielding_change_points"] = mine[-1]["mean_margin_rel_change"] = None
    return ConvergenceStudy(rows=rows, class_names=names or [], n_inputs=n_inputs, inputs_note=inputs_note)

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
    "SOLVERS",
    "STATUSES",
    "MarginResult",
    "ShieldingReport",
    "arc_margins",
    "data_fisher_matvec",
    "fr_margin",
    "natural_gradient_direction",
    "shielding_report",
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
_SCHEMA = "fire_plugin.margins/1"


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


def _flat_inputs(model: nn.Module, x: Tensor) -> tuple[Tensor, tuple[int, ...]]:
    if not isinstance(x, Tensor) or not x.is_floating_point() or x.dim() < 2:
        raise ValueError(
            f"x of type {type(x).__name__} is not allowed; allowed: a floating point tensor (N, ...) of inputs"
        )
    return x.detach().to(_model_device(model)).flatten(1), tuple(x.shape[1:])


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


_COLUMNS = ("index", "source", "target", "flipped", "first_class", "shielded", "fr_length", "l2", "linf", "steps",
            "status")


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
        fr_length: traced Fisher-Rao length (sum of closed-form FR distances between successive predictions).
        l2: ``||x_end - x||_2``.
        linf: ``||x_end - x||_inf``.
        steps: natural-gradient steps taken (the bisected last step counts as one).
        status: one of :data:`STATUSES`.
        num_classes: number of classes ``m`` of the model.
        n_inputs: number of inputs traced.
        damping, step, clamp, solver, max_length, max_steps: the settings; ``clamp`` is the input box
            ``(low, high)`` every point of every path was clamped to, or None (unconstrained).
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
    x_end: np.ndarray | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
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
            "max_length": self.max_length, "max_steps": self.max_steps,
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready: ``{"schema", "settings", "paths": {column: list}}`` (without ``x_end``)."""
        paths: dict[str, list[Any]] = {}
        for name in _COLUMNS:
            paths[name] = getattr(self, name).tolist()
        return {"schema": _SCHEMA, "settings": self.settings(), "paths": paths}

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> MarginResult:
        """Inverse of :meth:`to_dict`."""
        if data.get("schema") != _SCHEMA:
            raise ValueError(f"schema={data.get('schema')!r} is not allowed; allowed: {_SCHEMA!r}")
        paths = data["paths"]
        dtypes: dict[str, Any] = {"flipped": bool, "shielded": bool, "fr_length": np.float64, "l2": np.float64,
                                  "linf": np.float64, "status": "<U13"}
        columns: dict[str, Any] = {k: np.asarray(paths[k], dtype=dtypes.get(k, np.int64)) for k in _COLUMNS}
        settings = dict(data["settings"])
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
        """One row per path with the columns ``index, source, target, flipped, first_class, shielded, fr_length,
        l2, linf, steps, status``; returns the path."""
        out = Path(path)
        with out.open("w", newline="") as fh:
            writer = csv.writer(fh)
            writer.writerow(_COLUMNS)
            for row in zip(*(getattr(self, name).tolist() for name in _COLUMNS), strict=True):
                writer.writerow([f"{v:.9g}" if isinstance(v, float) else v for v in row])
        return out

    def input_margins(self) -> np.ndarray:
        """Per input, the smallest traced FR length over its flipped paths: 0 for a misclassified input, ``inf``
        when no path flipped within the budget. Shape ``(n_inputs,)``."""
        margins = np.full(self.n_inputs, np.inf)
        for i, length in zip(self.index[self.flipped], self.fr_length[self.flipped], strict=True):
            margins[i] = min(margins[i], length)
        margins[self.index[self.status == "misclassified"]] = 0.0
        return margins


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
        tt = targets.long().cpu()
        if len(tt) != n:
            raise ValueError(f"targets of shape {tuple(tt.shape)} is not allowed; allowed: ({n}, T) or a class list")
        if bool(((tt < 0) | (tt >= m)).any()):
            raise ValueError(f"targets has values outside [0, {m - 1}]; allowed: class indices")
        if bool((tt == y.unsqueeze(1)).any()):
            raise ValueError("targets contains an input's own label y; allowed: classes k != y")
        return torch.arange(n).unsqueeze(1).expand_as(tt).reshape(-1), tt.reshape(-1)
    try:
        classes_list = [int(k) for k in targets]
    except (TypeError, ValueError):
        raise ValueError(
            f"targets={targets!r} is not allowed; allowed: None, a sequence of classes, or a (N, T) tensor"
        ) from None
    if not classes_list or any(k < 0 or k >= m for k in classes_list) or len(set(classes_list)) != len(classes_list):
        raise ValueError(f"targets={classes_list!r} is not allowed; allowed: distinct classes in [0, {m - 1}]")
    classes = torch.tensor(classes_list).expand(n, len(classes_list))
    keep = classes != y.unsqueeze(1)
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


def _within_fr(logp_start: Tensor, radius: float, logp: Tensor) -> Tensor:
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
    damping: float = 1e-3,
    step: float = 0.1,
    max_length: float = 20.0,
    max_steps: int = 1000,
    solver: str = "auto",
    cg_iters: int = 20,
    batch_size: int = 256,
    clamp: tuple[float, float] | None = (0.0, 1.0),
    return_paths: bool = False,
    verbose: bool = True,
) -> MarginResult:
    """Trace natural-gradient paths from every input toward every target class; see the module docstring.

    Each step has length ``step`` in the damped metric ``G_x + damping I`` and decreases
    ``L_k = log p_y - log p_k`` (the paper's step 6 has the opposite sign, see the module docstring). A path ends
    when the predicted class changes (the last step is bisected to 1% of a step), when its FR length reaches
    ``max_length``, after ``max_steps`` steps, when ``L_k`` stops decreasing for 5 consecutive steps (status
    ``"stalled"``, e.g. pinned against the input box) or on a non-finite value; only the first is "flipped".
    Inputs the model misclassifies (prediction != ``y``) are not traced (status ``"misclassified"``, length 0).

    Up to ``batch_size`` paths advance together; finished paths leave the batch and queued ones take their place.
    The model runs in eval mode (its mode is restored afterwards); parameters get no gradients.

    Args:
        model: classifier returning logits ``(N, m)``.
        x: inputs ``(N, ...)``, inside ``clamp``.
        y: labels ``(N,)``: the source class of each input.
        targets: None (every class ``k != y``), a sequence of classes for every input (``y`` itself skipped), or
            a ``(N, T)`` tensor of per-input targets (none equal to ``y``).
        damping: ``lambda > 0`` of the damped metric.
        step: length of each step in the damped metric (1 = the paper's unit steps).
        max_length: FR length at which a path is given up (``pi`` is the largest FR distance between two
            predictions, but a path may wind).
        max_steps: steps after which a path is given up.
        solver: ``"auto"``, ``"exact"``, ``"cg"`` or ``"dense"`` (reference, ``n <= 4096``).
        cg_iters: maximum conjugate-gradient iterations per step (``"cg"``).
        batch_size: paths advanced together.
        clamp: the input domain ``(low, high)`` every point is clamped to (``(0, 1)`` for images), or None.
        return_paths: keep the end points in ``MarginResult.x_end``.
        verbose: show a tqdm progress bar.

    Returns:
        A :class:`MarginResult`, one row per path, ordered by input then target.

    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
    >>> r = trace_margins(model, torch.rand(3, 4), torch.zeros(3, dtype=torch.long), targets=[1], verbose=False)
    >>> r.target.tolist()
    [1, 1, 1]
    """
    _check_positive("damping", damping)
    _check_positive("step", step)
    _check_positive("max_length", max_length)
    _check_positive("max_steps", max_steps, integer=True)
    _check_positive("cg_iters", cg_iters, integer=True)
    _check_positive("batch_size", batch_size, integer=True)
    box = _check_clamp(clamp)
    x0, shape = _flat_inputs(model, x)
    device = x0.device
    yy = torch.as_tensor(y).long().cpu()
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
        logp0 = _predict_logp(fn, x0, batch_size)  # (N, m)
        m = logp0.shape[1]
        if m < 2:
            raise ValueError(f"the model has {m} output; allowed: at least 2 classes")
        if bool(((yy < 0) | (yy >= m)).any()):
            raise ValueError(f"y has values outside [0, {m - 1}]; allowed: class indices of the model")
        name = _pick_solver(solver, m)
        solve = _SOLVE[name]
        pred0 = logp0.argmax(-1).cpu()
        p_input, p_target = _path_targets(targets, yy, m)
        n_paths = len(p_input)
        settings: dict[str, Any] = {"n_inputs": len(x0), "damping": float(damping), "step": float(step), "clamp": box,
                    "solver": name, "max_length": float(max_length), "max_steps": int(max_steps)}
        if n_paths == 0:
            return MarginResult.empty(m, **settings)

        # per-path outputs (CPU)
        flipped = torch.zeros(n_paths, dtype=torch.bool)
        first = pred0[p_input].clone()
        length = torch.zeros(n_paths, dtype=torch.float64)
        steps_out = torch.zeros(n_paths, dtype=torch.long)
        status = np.full(n_paths, "misclassified", dtype="<U13")
        x_end = x0[p_input.to(device)].cpu().clone() if return_paths else None
        l2 = torch.zeros(n_paths, dtype=torch.float64)
        linf = torch.zeros(n_paths, dtype=torch.float64)

        todo = torch.nonzero(pred0[p_input] == yy[p_input]).flatten()  # misclassified inputs are not traced
        p_input_d, p_target_d, y_d = p_input.to(device), p_target.to(device), yy.to(device)

        # the batch of active paths
        a_id = torch.zeros(0, dtype=torch.long, device=device)
        a_x = x0[:0]
        a_len = torch.zeros(0, dtype=torch.float64, device=device)
        a_steps = torch.zeros(0, dtype=torch.long, device=device)
        a_stall = torch.zeros(0, dtype=torch.long, device=device)
        ptr = 0
        bar = tqdm(total=len(todo), desc=f"FR margins ({name})", disable=not verbose, leave=False)
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
                scale = torch.where(ok, -float(step) / g_v.clamp_min(1e-300).sqrt(), 0.0)
                delta = torch.nan_to_num(v) * scale.unsqueeze(-1)  # (S, n) float64, decreases L_k
                x_new = clip((a_x.double() + delta).to(a_x.dtype))
                with torch.no_grad():
                    logp_new = fn(x_new)
                # A step moving the prediction by more than _MAX_STEP_RATIO * step in FR distance (where the
                # damping dominates G_x, the step is up to step / sqrt(damping) long in l2) is shortened along its
                # direction to at most `step`, so that the path keeps following the geometry.
                too_long = ok & (fisher_rao(logp.double(), logp_new.double()) > _MAX_STEP_RATIO * step)
                if bool(too_long.any()):
                    idx = too_long.nonzero().flatten()
                    within = functools.partial(_within_fr, logp[idx].double(), step)
                    lo, (x_lo, logp_lo), _ = _bisect_step(
                        fn, clip, a_x[idx], delta[idx], (a_x[idx], logp[idx]), (x_new[idx], logp_new[idx]),
                        within, _SHORTEN_ITERS)
                    delta[idx] = delta[idx] * lo.unsqueeze(-1)
                    x_new[idx], logp_new[idx] = x_lo, logp_lo
                flip = (logp_new.argmax(-1) != src) & ok
                if bool(flip.any()):
                    idx = flip.nonzero().flatten()
                    same_class = functools.partial(_predicts, src[idx])
                    _, _, (x_hi, logp_hi) = _bisect_step(
                        fn, clip, a_x[idx], delta[idx], (a_x[idx], logp[idx]), (x_new[idx], logp_new[idx]),
                        same_class, _BISECT_ITERS)
                    x_new[idx], logp_new[idx] = x_hi, logp_hi
                finite = valid & torch.isfinite(logp_new).all(-1)
                moved = ok & finite
                x_new = torch.where(ok.unsqueeze(-1), x_new, a_x)
                increment = fisher_rao(logp.double(), torch.where(moved.unsqueeze(-1), logp_new, logp).double())
                a_len = a_len + torch.where(moved, increment, 0.0)
                a_steps = a_steps + moved.long()
                gap = (logp[rows, src] - logp[rows, tgt]).double()
                gap_new = (logp_new[rows, src] - logp_new[rows, tgt]).double()
                progress = (gap - gap_new) > _PROGRESS_RTOL * (1.0 + gap.abs())
                a_stall = torch.where(progress, 0, a_stall + 1)
                a_x = x_new.detach()

                code = torch.full_like(a_id, -1)  # index into STATUSES, -1: continue
                code = torch.where((a_stall >= _STALL_PATIENCE) | stuck, STATUSES.index("stalled"), code)
                code = torch.where(a_steps >= max_steps, STATUSES.index("max_steps"), code)
                code = torch.where(a_len >= max_length, STATUSES.index("max_length"), code)
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
                    a_steps, a_stall = a_steps[keep], a_stall[keep]
                    bar.update(len(ids))
        finally:
            bar.close()
    finally:
        model.train(was_training)

    source = yy[p_input]
    result = MarginResult(
        index=p_input.numpy().astype(np.int64),
        source=source.numpy().astype(np.int64),
        target=p_target.numpy().astype(np.int64),
        flipped=flipped.numpy(),
        first_class=first.numpy().astype(np.int64),
        shielded=(flipped & (first != p_target)).numpy(),
        fr_length=length.numpy(),
        l2=l2.numpy(),
        linf=linf.numpy(),
        steps=steps_out.numpy().astype(np.int64),
        status=status,
        num_classes=m,
        x_end=x_end.view(n_paths, *shape).numpy() if x_end is not None else None,
        **settings,
    )
    _logger.info(
        "traced %d paths from %d inputs (%s): %d flipped, %d shielded, median FR length of flipped %.4g",
        n_paths, len(x0), name, int(result.flipped.sum()), int(result.shielded.sum()),
        float(np.median(result.fr_length[result.flipped])) if result.flipped.any() else float("nan"),
    )
    return result


def fr_margin(model: nn.Module, x: Tensor, y: Tensor, **kwargs: Any) -> np.ndarray:
    """Per input, the smallest traced Fisher-Rao length over its target classes.

    0 for an input the model misclassifies (it is already past the boundary), ``inf`` when no path flipped within
    the budget (``max_length``, ``max_steps``).

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
        mean_fr_margin: mean traced FR length of the class's own successful paths (source = class); NaN if none.
        mean_l2: mean ``||delta||_2`` of the same paths; NaN if none.
        vuln_rank: 1 = most robust: classes ordered by decreasing mean FR margin; a class whose traced paths never
            flipped counts as the most robust; 0 for a class without traced paths.
        path_matrix: ``(m, m)`` counts of traced paths by source (rows) and first class reached (columns); paths
            that did not flip are on the diagonal.
        total_paths: traced paths.
        total_flipped: successful paths.

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

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready (NaN becomes None)."""

        def clean(a: np.ndarray) -> list[Any]:
            return [None if isinstance(v, float) and not math.isfinite(v) else v for v in a.tolist()]

        return {
            "class_names": list(self.class_names),
            "n_paths": self.n_paths.tolist(),
            "n_flipped": self.n_flipped.tolist(),
            "n_shields": self.n_shields.tolist(),
            "shielding_pct": clean(self.shielding_pct),
            "mean_fr_margin": clean(self.mean_fr_margin),
            "mean_l2": clean(self.mean_l2),
            "vuln_rank": self.vuln_rank.tolist(),
            "path_matrix": self.path_matrix.tolist(),
            "total_paths": self.total_paths,
            "total_flipped": self.total_flipped,
        }

    def to_markdown(self) -> str:
        """The paper's table, then the path matrix, as Markdown."""

        def num(v: float, fmt: str) -> str:
            return "-" if not math.isfinite(v) else format(v, fmt)

        lines = [
            "| class | shielding % | mean FR margin | mean ||delta||_2 | vuln rank | paths | flipped |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for c, cname in enumerate(self.class_names):
            rank = str(int(self.vuln_rank[c])) if self.vuln_rank[c] > 0 else "-"
            lines.append(
                f"| {cname} | {num(self.shielding_pct[c], '.1f')} | {num(self.mean_fr_margin[c], '.3f')} | "
                f"{num(self.mean_l2[c], '.3f')} | {rank} | {int(self.n_paths[c])} | {int(self.n_flipped[c])} |"
            )
        lines += ["", f"{self.total_flipped} of {self.total_paths} traced paths flipped.", "",
                  "Path matrix (rows: source, columns: first class reached; diagonal: not flipped):", ""]
        lines.append("| source \\ first | " + " | ".join(self.class_names) + " |")
        lines.append("|---|" + "---:|" * len(self.class_names))
        for c, cname in enumerate(self.class_names):
            lines.append(f"| {cname} | " + " | ".join(str(int(v)) for v in self.path_matrix[c]) + " |")
        return "\n".join(lines) + "\n"


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
    length, l2 = result.fr_length[traced], result.l2[traced]
    n_paths = np.bincount(src, minlength=m).astype(np.int64)
    n_flipped = np.bincount(src[flipped], minlength=m).astype(np.int64)
    n_shields = np.bincount(first[shielded], minlength=m).astype(np.int64)
    total_flipped = int(flipped.sum())
    shielding_pct = 100.0 * n_shields / total_flipped if total_flipped else np.full(m, np.nan)
    mean_fr = np.full(m, np.nan)
    mean_l2 = np.full(m, np.nan)
    for c in range(m):
        mine = flipped & (src == c)
        if mine.any():
            mean_fr[c] = float(length[mine].mean())
            mean_l2[c] = float(l2[mine].mean())
    # robustness key: never-flipped classes (with traced paths) first, then decreasing mean FR margin
    key = np.where(n_paths == 0, -np.inf, np.where(n_flipped == 0, np.inf, mean_fr))
    order = np.argsort(-key, kind="stable")
    vuln_rank = np.zeros(m, dtype=np.int64)
    rank = 1
    for c in order:
        if n_paths[c] > 0:
            vuln_rank[c] = rank
            rank += 1
    path_matrix = np.zeros((m, m), dtype=np.int64)
    np.add.at(path_matrix, (src, first), 1)
    return ShieldingReport(
        class_names=names, n_paths=n_paths, n_flipped=n_flipped, n_shields=n_shields, shielding_pct=shielding_pct,
        mean_fr_margin=mean_fr, mean_l2=mean_l2, vuln_rank=vuln_rank, path_matrix=path_matrix,
        total_paths=int(traced.sum()), total_flipped=total_flipped,
    )

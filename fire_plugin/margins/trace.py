"""Natural-gradient tracing of Fisher-Rao margins (:func:`trace_margins`, :func:`fr_margin`).

See :mod:`fire_plugin.margins` for the algorithm, the sign of the step and the two modes.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from fire_plugin.margins.metric import (
    _SOLVE,
    _check_positive,
    _class_indices,
    _first_forward,
    _flat_inputs,
    _LogProb,
    _pick_solver,
)
from fire_plugin.margins.results import (
    _CHECK_FRACTION,
    DEFAULT_DAMPING,
    DEFAULT_STEP,
    MODES,
    MarginResult,
    _compare_half_step,
)
from fire_plugin.margins.stepping import _Outputs, _Plan, _Tracer

_logger = logging.getLogger(__name__)

_MAX_STEPS_LIMIT = 1_000_000

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


def _check_trace_settings(
    mode: str, damping: float | None, step: float | None, max_length: float, max_steps: int, cg_iters: int,
    batch_size: int, clamp: Any,
) -> tuple[float, float, tuple[float, float] | None]:
    """``(damping, step, box)`` with the mode's defaults filled in; one-line errors for bad settings."""
    if mode not in MODES:
        raise ValueError(f"mode={mode!r} is not allowed; allowed: {list(MODES)}")
    damping = DEFAULT_DAMPING if damping is None else damping
    step = (1.0 if mode == "paper" else DEFAULT_STEP) if step is None else step
    _check_positive("damping", damping)
    _check_positive("step", step)
    _check_positive("max_length", max_length)
    _check_positive("max_steps", max_steps, integer=True)
    if max_steps > _MAX_STEPS_LIMIT:
        raise ValueError(f"max_steps={max_steps} is not allowed; allowed: at most {_MAX_STEPS_LIMIT:,}")
    _check_positive("cg_iters", cg_iters, integer=True)
    _check_positive("batch_size", batch_size, integer=True)
    return damping, step, _check_clamp(clamp)


def _check_inputs(
    model: nn.Module, x: Any, y: Any, box: tuple[float, float] | None
) -> tuple[Tensor, tuple[int, ...], Tensor]:
    """``(x0, shape, yy)``: the inputs flattened to ``(N, n)`` on the model's device and dtype, their shape and
    the labels as int64 (CPU), checked against each other and the box."""
    x0, shape = _flat_inputs(model, x)
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
    return x0, shape, yy


def _plan_paths(
    p_input: Tensor, p_target: Tensor, pred0: Tensor, yy: Tensor, step: float, max_steps: int,
    check_convergence: bool,
) -> _Plan:
    """The paths of the inputs the model classifies correctly (``pred0 == yy``; the others are not traced).

    The half-step check traces a twin of every tenth traced path at step / 2 in the same batches (each twin
    right behind its path): the two share every model call, so the check costs little beyond its paths."""
    todo = torch.nonzero(pred0[p_input] == yy[p_input]).flatten()  # misclassified inputs are not traced
    n_paths = len(p_input)
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
    return _Plan(p_input, p_target, path_step, path_max, todo, check_rows)


def _first_predictions(
    fn: _LogProb, x0: Tensor, shape: tuple[int, ...], model: nn.Module, yy: Tensor, batch_size: int
) -> tuple[int, Tensor]:
    """``(m, predicted classes (CPU))`` at the inputs; one-line errors for a wrong input shape or labels."""
    _first_forward(fn, x0, shape, model)
    logp0 = _predict_logp(fn, x0, batch_size)  # (N, m)
    m = logp0.shape[1]
    if m < 2:
        raise ValueError(f"the model has {m} output; allowed: at least 2 classes")
    if bool(((yy < 0) | (yy >= m)).any()):
        raise ValueError(f"y has values outside [0, {m - 1}]; allowed: class indices of the model")
    return m, logp0.argmax(-1).cpu()


def _run_plan(
    fn: _LogProb, x0: Tensor, m: int, plan: _Plan, model: nn.Module, pred0: Tensor, yy: Tensor,
    settings: dict[str, Any], cg_iters: int, batch_size: int, return_paths: bool,
    progress: Callable[[int], None] | None, verbose: bool,
) -> tuple[_Outputs, float]:
    """Trace the plan with the settings under a progress bar: the per-path outputs and the seconds it took."""
    mode, name, box, device = settings["mode"], settings["solver"], settings["clamp"], x0.device
    tracer = _Tracer(fn=fn, solve=_SOLVE[name], clip=_clamper(box), box=box, damping=settings["damping"],
                     cg_iters=cg_iters, paper=mode == "paper", max_length=settings["max_length"], m=m, x0=x0,
                     y_d=yy.to(device), p_input_d=plan.p_input.to(device), p_target_d=plan.p_target.to(device),
                     jacobian=name in ("exact", "dense"))
    out = _Outputs.start(plan.p_input, pred0, x0, return_paths)
    _logger.info(
        "tracing %d paths (%d inputs, %d of them classified correctly; %d of the paths retraced at half the "
        "step for the convergence check) of %s on %s: mode=%s step=%g damping=%g solver=%s", len(plan.todo),
        len(x0), int((pred0 == yy).sum()), len(plan.check_rows), type(model).__name__, x0.device, mode,
        settings["step"], settings["damping"], name,
    )
    t_start = time.perf_counter()
    bar = tqdm(total=len(plan.todo), desc=f"FR margins ({mode}, {name})", unit="path", disable=not verbose,
               leave=False)
    try:
        tracer.run(plan, out, yy, batch_size, bar, progress)
    finally:
        bar.close()
    return out, time.perf_counter() - t_start


def _assemble(
    plan: _Plan, out: _Outputs, yy: Tensor, m: int, n_paths: int, shape: tuple[int, ...], settings: dict[str, Any],
    seconds: float, check_convergence: bool,
) -> MarginResult:
    """The :class:`MarginResult` of the first ``n_paths`` paths, with the half-step verdict from their twins."""
    paper = settings["mode"] == "paper"
    steps_np = out.steps.numpy().astype(np.int64)
    length = out.length
    columns: dict[str, Any] = {
        "index": plan.p_input.numpy().astype(np.int64), "source": yy[plan.p_input].numpy().astype(np.int64),
        "target": plan.p_target.numpy().astype(np.int64), "flipped": out.flipped.numpy(),
        "first_class": out.first.numpy().astype(np.int64),
        "shielded": (out.flipped & (out.first != plan.p_target)).numpy(),
        "fr_length": length.numpy(), "margin": steps_np * plan.path_step.numpy() if paper else length.numpy().copy(),
        "l2": out.l2.numpy(), "linf": out.linf.numpy(), "steps": steps_np, "status": out.status,
    }
    x_end = out.x_end
    result = MarginResult(
        **{k: v[:n_paths] for k, v in columns.items()}, num_classes=m,
        x_end=x_end[:n_paths].view(n_paths, *shape).numpy() if x_end is not None else None, **settings,
    )
    _logger.info(
        "traced %d paths from %d inputs (%s, %s): %d flipped, %d shielded, median margin of flipped %.4g",
        n_paths, settings["n_inputs"], settings["mode"], settings["solver"], int(result.flipped.sum()),
        int(result.shielded.sum()),
        float(np.median(result.margin[result.flipped])) if result.flipped.any() else float("nan"),
    )
    if check_convergence:
        half = MarginResult(**{k: v[n_paths:] for k, v in columns.items()}, num_classes=m,
                            **(settings | {"step": settings["step"] / 2}))
        share = len(half) / max(1, len(half) + n_paths)
        result.convergence = _compare_half_step(result, plan.check_rows.numpy(), half, seconds * share)
    return result


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
    damping, step, box = _check_trace_settings(mode, damping, step, max_length, max_steps, cg_iters, batch_size, clamp)
    x0, shape, yy = _check_inputs(model, x, y, box)
    was_training = model.training
    model.eval()
    try:
        fn = _LogProb(model, shape)
        m, pred0 = _first_predictions(fn, x0, shape, model, yy, batch_size)
        name = "cg" if mode == "paper" and solver == "auto" else _pick_solver(solver, m)
        p_input, p_target = _path_targets(targets, yy, m)
        settings: dict[str, Any] = {"n_inputs": len(x0), "damping": float(damping), "step": float(step), "clamp": box,
                                    "solver": name, "max_length": float(max_length), "max_steps": int(max_steps),
                                    "mode": mode}
        if len(p_input) == 0:
            return MarginResult.empty(m, **settings)
        plan = _plan_paths(p_input, p_target, pred0, yy, step, max_steps, check_convergence)
        out, seconds = _run_plan(fn, x0, m, plan, model, pred0, yy, settings, cg_iters, batch_size, return_paths,
                                 progress, verbose)
    finally:
        model.train(was_training)
    return _assemble(plan, out, yy, m, len(p_input), shape, settings, seconds, check_convergence)


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

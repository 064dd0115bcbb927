"""Natural-gradient tracing of Fisher-Rao margins (:func:`trace_margins`, :func:`fr_margin`).

See :mod:`fire_plugin.margins` for the algorithm, the sign of the step and the two modes.
"""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import vjp
from tqdm.auto import tqdm

from fire_plugin.distances import fisher_rao
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
    STATUSES,
    MarginResult,
    _compare_half_step,
)

_logger = logging.getLogger(__name__)

_BISECT_TOL = 0.01  # the crossing is located within this fraction of a step
_BISECT_ITERS = math.ceil(math.log2(1.0 / _BISECT_TOL))  # 7 halvings: 1/128 < 0.01
_MAX_STEP_RATIO = 2.0  # a step moving the prediction farther than 2 * step (FR distance) is shortened
_SHORTEN_ITERS = 12  # bisection on the step fraction: to 1/4096 of the step
_STALL_PATIENCE = 5  # consecutive steps without a decrease of L_k
_PROGRESS_RTOL = 1e-6  # a decrease of L_k below 1e-6 * (1 + |L_k|) is float32 noise, not progress
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

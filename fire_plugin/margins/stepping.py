"""The batched stepping of the margin tracer: the active paths advance together, one natural-gradient step per
model call; converged mode shortens too long steps and bisects the step that flips the prediction."""

from __future__ import annotations

import functools
import logging
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from fire_plugin.distances import fisher_rao
from fire_plugin.margins.metric import _jacobian, _LogProb, _vjp_graph
from fire_plugin.margins.results import STATUSES

_logger = logging.getLogger(__name__)

_BISECT_TOL = 0.01  # the crossing is located within this fraction of a step
_BISECT_ITERS = math.ceil(math.log2(1.0 / _BISECT_TOL))  # 7 halvings: 1/128 < 0.01
_MAX_STEP_RATIO = 2.0  # a step moving the prediction farther than 2 * step (FR distance) is shortened
_SHORTEN_ITERS = 12  # bisection on the step fraction: to 1/4096 of the step
_STALL_PATIENCE = 5  # consecutive steps without a decrease of L_k
_PROGRESS_RTOL = 1e-6  # a decrease of L_k below 1e-6 * (1 + |L_k|) is float32 noise, not progress


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


@dataclass
class _Plan:
    """The paths to trace (CPU): per path its input, target, step and step budget; ``todo``, the traced rows in
    order (each half-step twin right behind its path); ``check_rows``, the paths that have a twin."""

    p_input: Tensor
    p_target: Tensor
    path_step: Tensor
    path_max: Tensor
    todo: Tensor
    check_rows: Tensor


@dataclass
class _Outputs:
    """Per-path outputs (CPU), filled in as the paths finish."""

    flipped: Tensor
    first: Tensor
    length: Tensor
    steps: Tensor
    status: np.ndarray
    x_end: Tensor | None
    l2: Tensor
    linf: Tensor

    @classmethod
    def start(cls, p_input: Tensor, pred0: Tensor, x0: Tensor, return_paths: bool) -> _Outputs:
        n_total = len(p_input)
        return cls(
            flipped=torch.zeros(n_total, dtype=torch.bool), first=pred0[p_input].clone(),
            length=torch.zeros(n_total, dtype=torch.float64), steps=torch.zeros(n_total, dtype=torch.long),
            status=np.full(n_total, "misclassified", dtype="<U13"),
            x_end=x0[p_input.to(x0.device)].cpu().clone() if return_paths else None,
            l2=torch.zeros(n_total, dtype=torch.float64), linf=torch.zeros(n_total, dtype=torch.float64),
        )


@dataclass
class _Active:
    """The batch of active paths (on the device): path id, point, FR length, steps, steps without progress, step
    and step budget."""

    id: Tensor
    x: Tensor
    length: Tensor
    steps: Tensor
    stall: Tensor
    step: Tensor
    max: Tensor

    @classmethod
    def empty(cls, x0: Tensor) -> _Active:
        ints = torch.zeros(0, dtype=torch.long, device=x0.device)
        floats = torch.zeros(0, dtype=torch.float64, device=x0.device)
        return cls(id=ints, x=x0[:0], length=floats, steps=ints, stall=ints, step=floats, max=ints)

    def add(self, new: Tensor, x: Tensor, step: Tensor, max_steps: Tensor) -> None:
        zeros = torch.zeros(len(new), dtype=torch.long, device=new.device)
        self.id = torch.cat([self.id, new])
        self.x = torch.cat([self.x, x])
        self.length = torch.cat([self.length, zeros.double()])
        self.steps = torch.cat([self.steps, zeros])
        self.stall = torch.cat([self.stall, zeros])
        self.step = torch.cat([self.step, step])
        self.max = torch.cat([self.max, max_steps])

    def keep(self, keep: Tensor) -> None:
        self.id, self.x, self.length, self.steps = self.id[keep], self.x[keep], self.length[keep], self.steps[keep]
        self.stall, self.step, self.max = self.stall[keep], self.step[keep], self.max[keep]


@dataclass
class _Carry:
    """The forward graph at the points the last step reached, kept for the next step's Jacobian (the Jacobian
    solvers): the path ids of its rows, their log-probabilities with the graph, its VJP, and which rows still hold
    (a row that a bisection moved or that did not move has no graph at its point)."""

    ids: Tensor
    logp: Tensor
    vjp_fn: Callable[[Tensor], tuple[Tensor, ...]]
    valid: Tensor


def _positions(ids: Tensor, wanted: Tensor) -> Tensor:
    """The row of each of ``wanted`` in ``ids`` (path ids, unique), -1 where absent."""
    size = int(max(int(ids.max()), int(wanted.max()))) + 1
    lookup = torch.full((size,), -1, dtype=torch.long, device=ids.device)
    lookup[ids] = torch.arange(len(ids), device=ids.device)
    return lookup[wanted]


@dataclass
class _Tracer:
    """Advances batches of paths: the model's log-probabilities ``fn``, the solve, the box and the settings; the
    plan's per-path tensors on the device."""

    fn: _LogProb
    solve: Callable[..., tuple[Tensor, Tensor]]
    clip: Callable[[Tensor], Tensor]
    box: tuple[float, float] | None
    damping: float
    cg_iters: int
    paper: bool
    max_length: float
    m: int
    x0: Tensor
    y_d: Tensor
    p_input_d: Tensor
    p_target_d: Tensor
    jacobian: bool = False  # the solve takes the Jacobian ("exact", "dense"): graphs are carried and shared
    carry: _Carry | None = field(default=None, repr=False)

    def _logp_and_jacobian(self, a: _Active) -> tuple[Tensor, Tensor]:
        """``(log p (S, m), L (S, m, n) float64)`` at the active points with the fewest model calls: rows the last
        step reached reuse its forward graph (when at least half of its rows are still wanted), and paths that have
        not moved from their input share one Jacobian per input (the ``m - 1`` paths of an input, and the
        half-step twins, all start there)."""
        carry, self.carry = self.carry, None
        n_rows = len(a.id)
        todo = torch.ones(n_rows, dtype=torch.bool, device=a.x.device)
        parts: list[tuple[Tensor, Tensor, Tensor]] = []  # (rows, log p, L)
        if carry is not None:
            pos = _positions(carry.ids, a.id)
            use = (pos >= 0) & carry.valid[pos.clamp_min(0)]
            if 2 * int(use.sum()) >= len(carry.ids):
                rows = use.nonzero().flatten()
                jac = _jacobian(carry.vjp_fn, carry.logp)
                parts.append((rows, carry.logp.detach()[pos[rows]], jac[pos[rows]]))
                todo[rows] = False
        del carry  # frees the graph
        rows = todo.nonzero().flatten()
        if len(rows):
            at_input = (a.x[rows] == self.x0[self.p_input_d[a.id[rows]]]).all(-1)
            order = torch.arange(len(rows), device=rows.device)
            key = torch.where(at_input, self.p_input_d[a.id[rows]], -1 - order)  # moved rows: keys of their own
            _, inverse = torch.unique(key, return_inverse=True)
            first = torch.full((int(inverse.max()) + 1,), len(rows), dtype=torch.long, device=rows.device)
            first = first.scatter_reduce(0, inverse, order, reduce="amin")
            logp_u, vjp_u = _vjp_graph(self.fn, a.x[rows[first]])
            jac = _jacobian(vjp_u, logp_u)
            parts.append((rows, logp_u.detach()[inverse], jac[inverse]))
        logp = torch.empty((n_rows, self.m), dtype=parts[0][1].dtype, device=a.x.device)
        jac = torch.empty((n_rows, *parts[0][2].shape[1:]), dtype=torch.float64, device=a.x.device)
        for rows, logp_rows, jac_rows in parts:
            logp[rows], jac[rows] = logp_rows, jac_rows
        return logp, jac

    def direction(self, a: _Active, src: Tensor, tgt: Tensor) -> tuple[Tensor, Tensor, Tensor]:
        """``(logp, v, g^T v)`` at the active points: the natural gradient of ``L_k``, on the free face of the box."""
        fn = self.fn
        cache: dict[str, Tensor] = {}
        vjp_fn: Callable[[Tensor], tuple[Tensor, ...]] | None = None
        if self.jacobian:
            logp, cache["jac"] = self._logp_and_jacobian(a)
        else:
            logp, vjp_fn = _vjp_graph(fn, a.x)  # (S, m)
        e = F.one_hot(src, self.m).double() - F.one_hot(tgt, self.m).double()
        v, g_v = self.solve(fn, a.x, logp, vjp_fn, e, self.damping, self.cg_iters, None, cache)
        if self.box is not None:
            # coordinates pinned at the box that the step pushes outward leave the problem: solve again with the
            # metric and the gradient restricted to the free coordinates (projected natural gradient on the face of
            # the box)
            box = self.box
            blocked = ((a.x <= box[0]) & (v > 0)) | ((a.x >= box[1]) & (v < 0))  # the step is -v
            if bool(blocked.any()):
                v, g_v = self.solve(fn, a.x, logp, vjp_fn, e, self.damping, self.cg_iters, (~blocked).double(), cache)
        return logp.detach(), v, g_v

    def move(
        self, a: _Active, logp: Tensor, v: Tensor, g_v: Tensor, src: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """One step from the active points: ``(x_new, logp_new, flip, valid, ok, stuck)`` (converged mode: too long
        steps shortened, the step that flips the prediction bisected to just past the crossing)."""
        fn, clip = self.fn, self.clip
        valid = torch.isfinite(g_v) & torch.isfinite(v).all(-1)
        stuck = valid & (g_v <= 0)  # no descent direction for L_k (on the free face of the box): stalled
        ok = valid & ~stuck
        scale = torch.where(ok, -a.step / g_v.clamp_min(1e-300).sqrt(), 0.0)
        delta = torch.nan_to_num(v) * scale.unsqueeze(-1)  # (S, n) float64, decreases L_k
        x_new = clip((a.x.double() + delta).to(a.x.dtype))
        if self.jacobian:  # the next step's Jacobian reuses this forward pass (see _logp_and_jacobian)
            logp_graph, vjp_new = _vjp_graph(fn, x_new)
            logp_new = logp_graph.detach().clone()  # edited in place below; the graph keeps its own
            self.carry = _Carry(ids=a.id, logp=logp_graph, vjp_fn=vjp_new,
                                valid=ok.clone())  # a row that does not move has no graph at its point
        else:
            with torch.no_grad():
                logp_new = fn(x_new)
        # A step moving the prediction by more than _MAX_STEP_RATIO * step in FR distance (where the damping
        # dominates G_x, the step is up to step / sqrt(damping) long in l2) is shortened along its direction to at
        # most `step`, so that the path keeps following the geometry (not in paper mode).
        too_long = ok & (fisher_rao(logp.double(), logp_new.double()) > _MAX_STEP_RATIO * a.step)
        if not self.paper and bool(too_long.any()):
            idx = too_long.nonzero().flatten()
            within = functools.partial(_within_fr, logp[idx].double(), a.step[idx])
            lo, (x_lo, logp_lo), _ = _bisect_step(
                fn, clip, a.x[idx], delta[idx], (a.x[idx], logp[idx]), (x_new[idx], logp_new[idx]), within,
                _SHORTEN_ITERS)
            delta[idx] = delta[idx] * lo.unsqueeze(-1)
            x_new[idx], logp_new[idx] = x_lo, logp_lo
            if self.carry is not None:
                self.carry.valid[idx] = False
        flip = (logp_new.argmax(-1) != src) & ok
        if not self.paper and bool(flip.any()):
            idx = flip.nonzero().flatten()
            same_class = functools.partial(_predicts, src[idx])
            _, _, (x_hi, logp_hi) = _bisect_step(
                fn, clip, a.x[idx], delta[idx], (a.x[idx], logp[idx]), (x_new[idx], logp_new[idx]), same_class,
                _BISECT_ITERS)
            x_new[idx], logp_new[idx] = x_hi, logp_hi
            if self.carry is not None:
                self.carry.valid[idx] = False
        return x_new, logp_new, flip, valid, ok, stuck

    def advance(self, a: _Active) -> tuple[Tensor, Tensor]:
        """One step of every active path (``a`` updated in place): ``(code, logp_new)``, ``code`` the index into
        :data:`STATUSES` of a path that ended, -1 for one that continues."""
        src, tgt = self.y_d[self.p_input_d[a.id]], self.p_target_d[a.id]
        rows = torch.arange(len(a.id), device=a.x.device)
        logp, v, g_v = self.direction(a, src, tgt)
        x_new, logp_new, flip, valid, ok, stuck = self.move(a, logp, v, g_v, src)
        finite = valid & torch.isfinite(logp_new).all(-1)
        moved = ok & finite
        if self.paper:  # a step the input box cancels entirely repeats forever
            stuck = stuck | (moved & ~flip & (x_new == a.x).all(-1))
        x_new = torch.where(ok.unsqueeze(-1), x_new, a.x)
        increment = fisher_rao(logp.double(), torch.where(moved.unsqueeze(-1), logp_new, logp).double())
        a.length = a.length + torch.where(moved, increment, 0.0)
        a.steps = a.steps + moved.long()
        a_margin = a.steps.double() * a.step if self.paper else a.length
        gap = (logp[rows, src] - logp[rows, tgt]).double()
        gap_new = (logp_new[rows, src] - logp_new[rows, tgt]).double()
        progress_made = (gap - gap_new) > _PROGRESS_RTOL * (1.0 + gap.abs())
        a.stall = torch.where(progress_made, 0, a.stall + 1)
        a.x = x_new.detach()

        code = torch.full_like(a.id, -1)  # index into STATUSES, -1: continue
        stalled = stuck if self.paper else (a.stall >= _STALL_PATIENCE) | stuck
        code = torch.where(stalled, STATUSES.index("stalled"), code)
        code = torch.where(a.steps >= a.max, STATUSES.index("max_steps"), code)
        code = torch.where(a_margin >= self.max_length, STATUSES.index("max_length"), code)
        code = torch.where(flip & finite, STATUSES.index("flipped"), code)
        code = torch.where(~finite, STATUSES.index("nonfinite"), code)
        return code, logp_new

    def retire(self, a: _Active, code: Tensor, logp_new: Tensor, out: _Outputs, plan: _Plan, yy: Tensor) -> Tensor:
        """Record the paths that ended (``code >= 0``) in ``out`` and drop them from ``a``; returns their ids."""
        done = code >= 0
        ids = a.id[done].cpu()
        disp = (a.x[done] - self.x0[self.p_input_d[a.id[done]]]).double()
        out.l2[ids] = disp.norm(dim=1).cpu()
        out.linf[ids] = disp.abs().amax(dim=1).cpu()
        out.length[ids] = a.length[done].cpu()
        out.steps[ids] = a.steps[done].cpu()
        fl = (code[done] == STATUSES.index("flipped")).cpu()
        out.flipped[ids] = fl
        out.first[ids] = torch.where(fl, logp_new[done].argmax(-1).cpu(), yy[plan.p_input[ids]])
        out.status[ids.numpy()] = np.asarray(STATUSES)[code[done].cpu().numpy()]
        if out.x_end is not None:
            out.x_end[ids] = a.x[done].cpu()
        a.keep(~done)
        return ids

    def run(
        self, plan: _Plan, out: _Outputs, yy: Tensor, batch_size: int, bar: Any,
        progress: Callable[[int], None] | None,
    ) -> None:
        """Trace ``plan.todo``, ``batch_size`` paths at a time (finished paths leave, queued ones take their place)."""
        todo, device = plan.todo, self.x0.device
        path_step_d, path_max_d = plan.path_step.to(device), plan.path_max.to(device)
        a = _Active.empty(self.x0)
        ptr = 0
        n_done, first_batch, t_loop = 0, min(batch_size, len(todo)), time.perf_counter()
        while True:
            free = batch_size - len(a.id)
            if free > 0 and ptr < len(todo):
                new = todo[ptr : ptr + free].to(device)
                ptr += len(new)
                a.add(new, self.x0[self.p_input_d[new]], path_step_d[new], path_max_d[new])
            if len(a.id) == 0:
                break
            code, logp_new = self.advance(a)
            if bool((code >= 0).any()):
                ids = self.retire(a, code, logp_new, out, plan, yy)
                bar.update(len(ids))
                if progress is not None:
                    progress(len(ids))
                n_done += len(ids)
                if first_batch and n_done >= first_batch:
                    elapsed = time.perf_counter() - t_loop
                    _logger.info("first %d of %d paths done in %.1f s; estimate for all: %.0f s", n_done, len(todo),
                                 elapsed, elapsed * len(todo) / n_done)
                    first_batch = 0
        self.carry = None

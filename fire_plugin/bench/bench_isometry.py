"""Partial-isometry training cost, measured in one run against vanilla cross-entropy training on the same engine.

Model: the paper's LeNet (``lenet_pi``: conv 32, conv 64, fc 128; section 4.2) on 1x28x28 synthetic inputs,
10 classes (m = 9), SGD. Rows:

(a) ``engine.fit`` time of N steps with :class:`fire_plugin.isometry.PartialIsometryObjective` / the same N steps
    with ``CrossEntropyObjective``, batch 32 and 128: exact estimator (target <= 10; the paper reports ~12x), the
    default estimator (:data:`fire_plugin.isometry.DEFAULT_ESTIMATOR`, one Rademacher probe; target <= 4) and
    ``deflated`` with 2 products (information).
(d) FLOPs (``torch.utils.flop_counter.FlopCounterMode``) of one training step (forward + backward) with each
    estimator over one CE step, and the measured time ratio of (a) over that FLOP ratio: 1 means as fast per FLOP
    as CE training, so the rest of the gap is arithmetic the algorithm needs.
(b) :func:`fire_plugin.isometry.isometry_jacobian` vs a naive per-sample, per-row autograd loop computing the same
    differentiable Jacobian (``create_graph=True``), batch 32: the loop's time / ours (target >= 5), with the GFLOP/s
    of both; and the same with the vmap over all ``m`` rows in one call and over one row per call.
(c) relative error of the default (one probe) and of ``deflated`` (2 products) estimates of the batch-mean penalty
    (squared and eq 14's norm) against the exact value, batch 128: the median over 100 draws (the detail gives the
    90th percentile).

Why (a) cannot reach 10x for exact on this model: the exact penalty needs the Jacobian (one forward pass and
m = 9 VJPs through conv2) and its weight gradient (reverse over reverse), 10.05x the FLOPs of a CE step by
FlopCounterMode's count; the measured time ratio was 1.4x that FLOP ratio in the last perf run. One probe costs 3.3x
the FLOPs of a CE step (measured 3.7x-3.95x the time). Why (b) stays near 3x: both compute the same FLOPs (conv2's
input gradients); on one CPU thread the vmapped call runs them at about 46 GFLOP/s (85% of a CE step's rate), the
per-sample loop at about 15, and 5x would need the loop below 10. Chunking does not change it at batch 32 (all rows
in one call and one row per call: 46.1 and 45.6 GFLOP/s); at batch 8 all rows in one call is faster (48 vs 32).
On a GPU, where the loop launches B * m small kernels, the gap is far larger.

Timing: the contenders alternate over rounds (median of repeats per round, median over rounds); one torch thread
and the process CPU time by default (``_timing.choose_clock``).

Run: ``python -m fire_plugin.bench.bench_isometry [--quick]``; ``run(quick)`` returns the rows (``fire-plugin bench``).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable
from typing import Any

import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

import fire_plugin  # noqa: F401  (registers lenet_pi)
from fire_plugin.bench._timing import add_timing_args, choose_clock, format_table, interleaved_times, row
from fire_plugin.engine import CrossEntropyObjective, Objective, fit
from fire_plugin.isometry import (
    DEFAULT_ESTIMATOR,
    PAPER_DELTA_OVER_EPSILON,
    PartialIsometryObjective,
    delta_m,
    isometry_jacobian,
    partial_isometry_penalty,
    t_from_logits,
)

EPSILON = delta_m(10) / PAPER_DELTA_OVER_EPSILON  # the paper's MNIST setting


def _lenet(seed: int = 0) -> torch.nn.Module:
    torch.manual_seed(seed)
    return timm.create_model("lenet_pi", num_classes=10)


def _loader(batch: int, steps: int, seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch * steps, 1, 28, 28, generator=gen)
    y = torch.randint(0, 10, (batch * steps,), generator=gen)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def _fit_fn(objective: Objective, batch: int, steps: int) -> Callable[[], object]:
    model = _lenet()
    # lr = 0: every call does the same work on the same weights (the optimizer step still runs)
    optimizer = torch.optim.SGD(model.parameters(), lr=0.0)
    loader = _loader(batch, steps)
    return lambda: fit(model, loader, epochs=1, objective=objective, optimizer=optimizer, verbose=False)


def naive_jacobian(model: torch.nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The peer of (b): one forward pass per sample and one autograd call per row, graph kept for training."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].clone().requires_grad_(True)
        t = t_from_logits(model(xb))[0]
        rows = [torch.autograd.grad(t[i], xb, create_graph=True, retain_graph=True)[0].flatten()
                for i in range(t.shape[0])]
        out.append(torch.stack(rows))
    return torch.stack(out)


class _GlobalOnly:
    """Stands in for FlopCounterMode's module tracker: its module hooks break ``torch.autograd.grad`` inside the
    context (the penalty's VJPs), so every FLOP is attributed to "Global" only."""

    parents = {"Global"}

    def __enter__(self) -> _GlobalOnly:
        return self

    def __exit__(self, *args: object) -> None:
        return None


def step_flops(objective: Objective, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> int:
    """FLOPs of one training step's forward and backward (``torch.utils.flop_counter.FlopCounterMode``)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    with counter:
        objective(model, x, y).loss.backward()
    model.zero_grad()
    return int(counter.get_total_flops())


def _jacobian_flops(fn: Callable[[], object]) -> int:
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    counter.mod_tracker = _GlobalOnly()  # type: ignore[assignment]
    with counter:
        fn()
    return int(counter.get_total_flops())


_Estimators = dict[str, tuple[str, int, str, str]]  # key -> (estimator, probes, label, target)


def _estimators() -> _Estimators:
    """The estimators of (a) and (d): exact, one Rademacher probe (the default), deflated with 2 products."""
    estimators = {"exact": ("exact", 1, "exact", "<= 10")}
    for name in dict.fromkeys(("hutchinson", DEFAULT_ESTIMATOR)):
        target = "<= 4" if name == DEFAULT_ESTIMATOR else ""
        label = f"{name}, 1 probe" + (" (the default)" if name == DEFAULT_ESTIMATOR else "")
        estimators[name] = (name, 1, label, target)
    estimators["deflated"] = ("deflated", 2, "deflated, 2 products", "")
    return estimators


def _training_rows(estimators: _Estimators, batches: tuple[int, ...], quick: bool, timing: dict[str, Any],
                   how: str) -> tuple[list[dict[str, object]], dict[tuple[str, int], float]]:
    """(a): ``engine.fit`` time of each estimator over CE, per batch size; also the ratios, for (d)."""
    rows, ratios = [], {}
    for batch in batches:
        steps = max(1, (128 if quick else 256) // batch)  # 8 and 2 steps (quick: 4 and 1)
        fns = {"ce": _fit_fn(CrossEntropyObjective(), batch, steps)}
        for key, (est, probes, _, _) in estimators.items():
            fns[key] = _fit_fn(PartialIsometryObjective(epsilon=EPSILON, estimator=est, n_probes=probes), batch, steps)
        t = interleaved_times(fns, **timing)
        for key, (_, _, label, target) in estimators.items():
            ratios[(key, batch)] = t[key] / t["ce"]
            rows.append(row(f"partial-isometry training ({label}), LeNet, batch {batch}", t[key] / t["ce"], target,
                            "CrossEntropyObjective on the same engine.fit",
                            f"{steps} steps: {t[key]:.3f} s vs {t['ce']:.3f} s; {how}"))
    return rows, ratios


def _flop_rows(model: torch.nn.Module, estimators: _Estimators, fbatch: int,
               ratios: dict[tuple[str, int], float]) -> list[dict[str, object]]:
    """(d) FLOP floor: one step's FLOPs against one CE step's, and the measured time ratio over the FLOP ratio."""
    rows = []
    x = torch.rand(fbatch, 1, 28, 28, generator=torch.Generator().manual_seed(4))
    y = torch.randint(0, 10, (fbatch,), generator=torch.Generator().manual_seed(5))
    ce_flops = step_flops(CrossEntropyObjective(), model, x, y)
    for key, (est, probes, label, _) in estimators.items():
        flops = step_flops(PartialIsometryObjective(epsilon=EPSILON, estimator=est, n_probes=probes), model, x, y)
        rows.append(row(f"FLOPs of one training step ({label}) / one CE step, LeNet, batch {fbatch}", flops / ce_flops,
                        "", "FlopCounterMode count of the CE step",
                        f"{flops / 1e9:.2f} vs {ce_flops / 1e9:.2f} GFLOP (forward + backward)"))
        rows.append(row(f"time ratio / FLOP ratio ({label}), LeNet, batch {fbatch}",
                        ratios[(key, fbatch)] / (flops / ce_flops), "", "1 = as fast per FLOP as a CE step",
                        f"time ratio {ratios[(key, fbatch)]:.2f} over FLOP ratio {flops / ce_flops:.2f}"))
    return rows


def _jacobian_rows(model: torch.nn.Module, quick: bool, timing: dict[str, Any], how: str) -> list[dict[str, object]]:
    """(b): isometry_jacobian against the naive per-sample, per-row loop, and with other vmap chunkings."""
    batch = 8 if quick else 32
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    ref = naive_jacobian(model, x)
    ours = isometry_jacobian(model, x)
    err = float((ours - ref).detach().abs().max() / ref.detach().abs().max())
    if err > 1e-4:
        raise AssertionError(f"isometry_jacobian differs from the naive loop by {err:.2e} (relative)")
    import fire_plugin._isometry_chart as chart  # where the linearization reads its chunk size

    default_chunk = chart._row_chunk

    def chunked(rows_per_call: int | None) -> Callable[[], object]:
        def fn() -> object:
            chart._row_chunk = lambda b, d: rows_per_call  # type: ignore[assignment]
            try:
                return isometry_jacobian(model, x)
            finally:
                chart._row_chunk = default_chunk
        return fn

    fns = {"ours": lambda: isometry_jacobian(model, x), "all rows": chunked(None), "1 row": chunked(1),
           "naive": lambda: naive_jacobian(model, x)}
    t = interleaved_times(fns, **timing)
    gflop = _jacobian_flops(fns["ours"]) / 1e9
    gflop_naive = _jacobian_flops(fns["naive"]) / 1e9
    rows = [row(f"isometry_jacobian speed-up over a per-sample loop, LeNet, batch {batch}", t["naive"] / t["ours"],
                ">= 5", "per-sample, per-row torch.autograd.grad loop (create_graph)",
                f"{t['naive']:.3f} s vs {t['ours']:.3f} s ({gflop_naive / t['naive']:.1f} vs "
                f"{gflop / t['ours']:.1f} GFLOP/s for {gflop_naive:.3f} vs {gflop:.3f} GFLOP); max rel. "
                f"difference {err:.1e}; {how}")]
    for key in ("all rows", "1 row"):
        rows.append(row(f"isometry_jacobian with vmap over {key} per call / the per-sample loop, batch {batch}",
                        t["naive"] / t[key], "", "per-sample, per-row torch.autograd.grad loop (create_graph)",
                        f"{t[key]:.3f} s ({gflop / t[key]:.1f} GFLOP/s); {how}"))
    return rows


def _estimator_error_rows(model: torch.nn.Module, quick: bool) -> list[dict[str, object]]:
    """(c): the error of each stochastic estimator over draws (not one draw): median and 90th percentile."""
    rows = []
    batch = 32 if quick else 128
    draws = 10 if quick else 100
    x = torch.rand(batch, 1, 28, 28, generator=torch.Generator().manual_seed(2))
    for squared in (True, False):
        with torch.no_grad():
            exact = partial_isometry_penalty(model, x, epsilon=EPSILON, squared=squared).item()
        what = "squared penalty" if squared else "eq 14 penalty"
        for est, probes in dict.fromkeys(((DEFAULT_ESTIMATOR, 1), ("hutchinson", 1), ("deflated", 2))):
            torch.manual_seed(3)
            with torch.no_grad():
                errors = [abs(partial_isometry_penalty(model, x, epsilon=EPSILON, estimator=est, n_probes=probes,
                                                       squared=squared).item() - exact) / exact
                          for _ in range(draws)]
            med, p90 = statistics.median(errors), statistics.quantiles(errors, n=10)[-1]
            rows.append(row(f"{est} ({probes} product{'s' if probes > 1 else ''}) relative error, {what}, batch "
                            f"{batch}, median of {draws} draws", med,
                            "", "exact estimator",
                            f"90th percentile {p90:.4f}; exact {exact:.4g} (untrained LeNet, 1x28x28 uniform noise)"))
    return rows


def run(quick: bool = False, *, rounds: int = 5, repeats: int = 2, threads: int = 1, clock: str = "auto",
        batches: tuple[int, ...] = (32, 128)) -> list[dict[str, object]]:
    """Rows of the perf-suite contract (see the module docstring). ``quick``: 1 round of 1 call, fewer steps."""
    if quick:
        rounds, repeats = 1, 1
    clock_fn, clock_label = choose_clock(clock, threads=threads, device="cpu")
    how = f"cpu, {torch.get_num_threads()} thread(s), {clock_label} clock, median of {rounds}x{repeats}"
    timing: dict[str, Any] = {"rounds": rounds, "repeats": repeats, "clock": clock_fn}
    estimators = _estimators()
    rows, ratios = _training_rows(estimators, batches, quick, timing, how)
    model = _lenet()  # (untrained; the FLOP counts leave its weights and gradients as they were)
    rows += _flop_rows(model, estimators, batches[0], ratios)
    rows += _jacobian_rows(model, quick, timing, how)
    rows += _estimator_error_rows(model, quick)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round of 1 call, fewer steps")
    add_timing_args(parser, rounds=5, repeats=2)
    args = parser.parse_args()
    print(format_table(run(args.quick, rounds=args.rounds, repeats=args.repeats, threads=args.threads,
                           clock=args.clock)))


if __name__ == "__main__":
    main()

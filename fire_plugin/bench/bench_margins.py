"""Fisher-Rao margin tracing: paths per second of the "exact" (Woodbury) and "cg" solvers against a dense baseline.

Peer: the dense baseline builds the explicit ``n x n`` data-space Fisher information ``G_x`` per path and calls
``torch.linalg.solve`` (``trace_margins(..., solver="dense")``), in the same tracing loop, same run. Models: timm
``digits_cnn`` (1x8x8, n = 64) and ``small_cnn`` (1x28x28, n = 784), random weights (timing does not depend on
them), 4 inputs x 9 targets = 36 paths advancing together, each path exactly ``STEPS`` natural-gradient steps
(a tiny step length, so that no path flips or stalls before), damping 1e-3 (CG needs more iterations at small
damping; the exact and dense costs do not depend on it). One torch thread; process CPU time
(``time.process_time``), so other jobs on the shared cores do not count.

Targets: exact >= 10x the dense baseline at n = 784 and >= 2x cg.

Two more rows on a ``digits_cnn`` trained for 3 epochs here (Adam, a few seconds; paths of realistic length), 8
test digits x 9 targets, library defaults: the cost of the default half-step convergence check as a ratio of the
same trace without it (target <= 1.5: the check retraces a tenth of the paths at half the step, in the same
batches), and paths/second of ``mode="paper"`` (unit steps, CG, no bisection) against the default
``mode="converged"`` (information only).

Run: ``python -m fire_plugin.bench.bench_margins`` (about a minute; ``--quick`` for a smoke run).
"""

from __future__ import annotations

import argparse
import time
from typing import Any

import timm
import torch

import fire_plugin.models  # noqa: F401  (registers the architectures with timm)
from fire_plugin.bench._timing import interleaved_times
from fire_plugin.margins import trace_margins

STEPS = 3
N_INPUTS = 4
SOLVERS = ("exact", "cg", "dense")
MODELS = (("digits_cnn", 8), ("small_cnn", 28))


def _workload(name: str, size: int, solver: str) -> Any:
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model(name, num_classes=10, in_chans=1).eval()
        x = torch.rand(N_INPUTS, 1, size, size)
    with torch.no_grad():
        y = model(x).argmax(1)  # every input starts "correct", so all 9 paths per input are traced

    def run() -> object:
        result = trace_margins(model, x, y, step=1e-4, damping=1e-3, max_steps=STEPS, solver=solver, batch_size=64,
                               check_convergence=False, verbose=False)
        assert (result.steps == STEPS).all(), "a benchmark path ended early"
        return result

    return run


def _trained_digits() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    import torch.nn.functional as F

    from fire_plugin.data import DATASETS, load_dataset

    info = DATASETS["digits"]
    x_train, y_train = load_dataset("digits", split="train").tensors  # type: ignore[attr-defined]
    x_test, y_test = load_dataset("digits", split="test").tensors  # type: ignore[attr-defined]
    with torch.random.fork_rng():
        torch.manual_seed(0)
        model = timm.create_model("digits_cnn", num_classes=10, mean=info.mean, std=info.std)
        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(3):
            perm = torch.randperm(len(x_train))
            for i in range(0, len(x_train), 128):
                idx = perm[i : i + 128]
                loss = F.cross_entropy(model(x_train[idx]), y_train[idx])
                opt.zero_grad()
                loss.backward()
                opt.step()
    return model.eval(), x_test[:8], y_test[:8]


def _mode_rows(quick: bool) -> list[dict[str, Any]]:
    model, x, y = _trained_digits()
    n_paths = int((model(x).argmax(1) == y).sum()) * 9

    def trace(**kw: Any) -> Any:
        return lambda: trace_margins(model, x, y, verbose=False, **kw)

    fns = {"trace": trace(check_convergence=False), "trace+check": trace(),
           "paper": trace(mode="paper", check_convergence=False)}
    times = interleaved_times(fns, rounds=1 if quick else 3, repeats=1 if quick else 3, clock=time.process_time)
    rate = {k: n_paths / t for k, t in times.items()}
    common = {"n_paths": n_paths, "threads": 1, "seconds_trace": times["trace"],
              "seconds_trace_and_check": times["trace+check"], "seconds_paper": times["paper"],
              "paths_per_s_converged": rate["trace"], "paths_per_s_paper": rate["paper"]}
    return [
        {"name": "margins convergence check cost (digits_cnn, defaults)",
         "ratio": times["trace+check"] / times["trace"], "target": "<= 1.5",
         "peer": "the same trace_margins call with check_convergence=False", **common},
        {"name": "margins paper vs converged mode paths/s (digits_cnn)", "ratio": rate["paper"] / rate["trace"],
         "target": "", "peer": "mode='converged' at the default step (exact solver, bisected last step)",
         **common},
    ]


def run(quick: bool = False) -> list[dict[str, Any]]:
    """Measure paths/second of each solver on each model; rows ``{"name", "ratio", "target", "peer"}`` plus the
    absolute rates. ``ratio`` is a speed-up (higher is better)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    rows: list[dict[str, Any]] = []
    try:
        for name, size in MODELS:
            fns = {solver: _workload(name, size, solver) for solver in SOLVERS}
            times = interleaved_times(fns, rounds=1 if quick else 3, repeats=1 if quick else 3,
                                      clock=time.process_time)
            n_paths = N_INPUTS * 9
            rate = {s: n_paths / t for s, t in times.items()}
            n = size * size
            common = {f"paths_per_s_{s}": rate[s] for s in SOLVERS} | {"steps_per_path": STEPS, "threads": 1}
            rows.append({"name": f"margins exact vs dense ({name}, n={n})", "ratio": rate["exact"] / rate["dense"],
                         "target": ">= 10" if n == 784 else "", "peer": "dense n x n G_x + torch.linalg.solve",
                         **common})
            rows.append({"name": f"margins exact vs cg ({name}, n={n})", "ratio": rate["exact"] / rate["cg"],
                         "target": ">= 2", "peer": "conjugate gradients (20 iterations, JVP + VJP)", **common})
        rows += _mode_rows(quick)
    finally:
        torch.set_num_threads(previous)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="one round, one repeat")
    args = parser.parse_args()
    rows = run(quick=args.quick)
    print(f"{'benchmark':56s} {'ratio':>8s} {'target':>7s} {'exact/s':>9s} {'cg/s':>9s} {'dense/s':>9s}")
    for r in rows:
        target = r["target"] or "-"
        if "paths_per_s_exact" in r:
            print(f"{r['name']:56s} {r['ratio']:7.2f}x {target:>7s} {r['paths_per_s_exact']:9.2f} "
                  f"{r['paths_per_s_cg']:9.2f} {r['paths_per_s_dense']:9.2f}")
        else:
            print(f"{r['name']:56s} {r['ratio']:7.2f}x {target:>7s}  converged {r['paths_per_s_converged']:.2f}/s, "
                  f"paper {r['paths_per_s_paper']:.2f}/s, trace {r['seconds_trace']:.2f} s, with check "
                  f"{r['seconds_trace_and_check']:.2f} s ({r['n_paths']} paths)")
    print(f"(paths of {STEPS} steps, 1 torch thread, process CPU time; ratio = speed-up of exact over the peer)")


if __name__ == "__main__":
    main()

"""Shared timing helper for the perf suite: median wall time of a callable, synchronized on CUDA.

``clock`` selects the clock: ``time.perf_counter`` (wall time, the default) or ``time.process_time`` (CPU time of
this process; on a CPU shared with other jobs and with one torch thread it does not count the time others hold
the core).
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable

import torch


def median_time(fn: Callable[[], object], *, repeats: int = 20, warmup: int = 3, device: str = "cpu",
                clock: Callable[[], float] = time.perf_counter) -> float:
    """Median seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = clock()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        times.append(clock() - start)
    return statistics.median(times)


def interleaved_times(fns: dict[str, Callable[[], object]], *, rounds: int = 5, repeats: int = 5,
                      device: str = "cpu", clock: Callable[[], float] = time.perf_counter) -> dict[str, float]:
    """Median times of several callables measured in alternating rounds, so drift hits all of them alike."""
    acc: dict[str, list[float]] = {k: [] for k in fns}
    for fn in fns.values():
        fn()
    for _ in range(rounds):
        for name, fn in fns.items():
            acc[name].append(median_time(fn, repeats=repeats, warmup=0, device=device, clock=clock))
    return {k: statistics.median(v) for k, v in acc.items()}

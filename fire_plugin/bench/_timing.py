"""Shared timing helper for the perf suite: median wall time of a callable, synchronized on CUDA.

``clock`` selects the clock: ``time.perf_counter`` (wall time, the default) or ``time.process_time`` (CPU time of
this process; on a CPU shared with other jobs and with one torch thread it does not count the time others hold
the core).
"""

from __future__ import annotations

import argparse
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


# --------------------------------------------------------------------------------------------------
# the perf-suite contract: every bench_*.py has ``run(quick: bool = False) -> list[dict]`` returning rows
# {"name": str, "ratio": float, "target": str, "peer": str} (optional "detail": str); "" as target: information only

_OPS = {"<=": float.__le__, ">=": float.__ge__, "<": float.__lt__, ">": float.__gt__}


def choose_clock(clock: str = "auto", *, threads: int = 1, device: str = "cpu") -> tuple[Callable[[], float], str]:
    """Set torch's CPU threads (``threads > 0``) and pick the clock: ``(clock function, label)``.

    ``auto`` is the process CPU time on a CPU run with one torch thread (the time other jobs hold the core is not
    counted) and the wall clock otherwise.
    """
    if clock not in ("auto", "wall", "cpu"):
        raise ValueError(f"clock={clock!r} is not allowed; allowed: 'auto', 'wall', 'cpu'")
    if threads > 0:
        torch.set_num_threads(threads)
    cpu = clock == "cpu" or (clock == "auto" and device == "cpu" and torch.get_num_threads() == 1)
    return (time.process_time, "process CPU") if cpu else (time.perf_counter, "wall")


def row(name: str, ratio: float, target: str, peer: str, detail: str = "") -> dict[str, object]:
    """One result row of the perf-suite contract."""
    target_met(ratio, target)  # validates the target string
    return {"name": name, "ratio": float(ratio), "target": target, "peer": peer, "detail": detail}


def target_met(ratio: float | None, target: str | None) -> bool | None:
    """Whether ``ratio`` meets ``target`` (``"<= 1.2"``, ``">= 1"``, ``"< 2"``, ``"> 0.5"``); None without a target."""
    if target is None or target == "" or ratio is None:
        return None
    if not isinstance(target, str):
        raise ValueError(f"target={target!r} is not allowed; allowed: a string '<= x', '>= x', '< x', '> x' or ''")
    text = target.strip()
    for op in ("<=", ">=", "<", ">"):
        if text.startswith(op):
            try:
                bound = float(text[len(op):])
            except ValueError:
                break
            return bool(_OPS[op](float(ratio), bound))
    raise ValueError(f"target={target!r} is not allowed; allowed: '<= x', '>= x', '< x', '> x' or ''")


def format_table(rows: list[dict[str, object]]) -> str:
    """A markdown table of result rows: benchmark, ratio, target, met, peer, detail or note."""
    lines = ["| benchmark | ratio | target | met | peer | detail |", "|---|---:|---|---|---|---|"]
    for r in rows:
        ratio = r.get("ratio")
        met = r["met"] if "met" in r else target_met(ratio, r.get("target"))  # type: ignore[arg-type]
        cells = [str(r.get("name", "")), "-" if ratio is None else f"{ratio:.3f}", str(r.get("target") or "-"),
                 "yes" if met is True else "NO" if met is False else "-", str(r.get("peer", "")),
                 str(r.get("note") or r.get("detail") or "")]
        lines.append("| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


def add_timing_args(parser: argparse.ArgumentParser, *, rounds: int, repeats: int | None = None) -> None:
    """The timing options every benchmark takes: ``--rounds`` (, ``--repeats``), ``--threads`` and ``--clock``."""
    parser.add_argument("--rounds", type=int, default=rounds)
    if repeats is not None:
        parser.add_argument("--repeats", type=int, default=repeats)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch CPU threads (default 1: steadier on a shared machine; 0 keeps torch's default)")
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                        help="cpu: process CPU time (steady on a shared CPU with one thread); auto: cpu on a CPU with "
                        "one thread, wall otherwise")

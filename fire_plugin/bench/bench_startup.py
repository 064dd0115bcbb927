"""Start-up time of the CLI and of the package's imports, each against the import it cannot avoid.

Every case is a fresh interpreter (``sys.executable``) that imports this checkout's ``fire_plugin``:

- ``python -m fire_plugin.cli --help`` (what the ``fire-plugin`` script runs) vs ``python -c "import argparse"``:
  the CLI answers without importing torch (``<= 10``: importing torch alone is 30-50x ``import argparse``).
- ``import fire_plugin.distances`` vs ``import torch``: the distances need torch only (``<= 1.2``).
- ``import fire_plugin`` and every name of its ``__all__`` (which loads every public submodule) vs
  ``import torch, timm, torchattacks, art``, the dependencies those names wrap (``<= 1.1``).
- For information: a bare ``import fire_plugin`` (lazy: nothing loaded) vs ``import argparse``.

Timing: the cases alternate over ``--rounds`` rounds and each keeps its best (smallest) time, the usual estimate of
a start-up cost on a machine shared with other jobs. The ratio uses the child's user + system CPU time (from
``wait4``; it does not count the time other jobs hold the cores, as the suite's process-CPU clock); ``--clock wall``
uses its wall time, which is what a user waits on an idle machine. The detail gives both. Disk caches are warm
after the first round.

Run: ``python -m fire_plugin.bench.bench_startup [--quick]``; ``run(quick)`` returns the rows (``fire-plugin bench``).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

import fire_plugin
from fire_plugin.bench._timing import format_table, row

_ALL = "import fire_plugin; [getattr(fire_plugin, n) for n in fire_plugin.__all__]"

#: case -> the code after ``python`` (``-c CODE`` or ``-m MODULE ...``)
CASES: dict[str, list[str]] = {
    "cli_help": ["-m", "fire_plugin.cli", "--help"],
    "argparse": ["-c", "import argparse"],
    "distances": ["-c", "import fire_plugin.distances"],
    "torch": ["-c", "import torch"],
    "package_all": ["-c", _ALL],
    "dependencies": ["-c", "import torch, timm, torchattacks, art"],
    "package": ["-c", "import fire_plugin"],
}

#: (name, case, peer case, target, peer's name)
ROWS = (
    ("fire-plugin --help (python -m fire_plugin.cli --help)", "cli_help", "argparse", "<= 10",
     'python -c "import argparse"'),
    ("import fire_plugin.distances", "distances", "torch", "<= 1.2", "import torch"),
    ("import fire_plugin + every name of __all__", "package_all", "dependencies", "<= 1.1",
     "import torch, timm, torchattacks, art"),
    ("import fire_plugin (lazy)", "package", "argparse", "", 'python -c "import argparse"'),
)


def _env() -> dict[str, str]:
    """The environment of the children: this checkout's fire_plugin first, warnings and threads as in the suite."""
    root = str(Path(fire_plugin.__file__).resolve().parents[1])
    path = os.environ.get("PYTHONPATH", "")
    return {**os.environ, "PYTHONPATH": root + (os.pathsep + path if path else ""), "PYTHONWARNINGS": "ignore",
            "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS", "1")}


def time_once(args: list[str], *, env: dict[str, str]) -> tuple[float, float]:
    """``(wall seconds, child CPU seconds)`` of one ``python ARGS`` run; raises if it fails."""
    start = time.perf_counter()
    proc = subprocess.Popen([sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    _, status, usage = os.wait4(proc.pid, 0)
    wall = time.perf_counter() - start
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = proc.stderr.read().decode(errors="replace") if proc.stderr else ""
    if proc.stderr:
        proc.stderr.close()
    if proc.returncode != 0:
        raise RuntimeError(f"python {' '.join(args)} exited with {proc.returncode}: {err[-500:]}")
    return wall, usage.ru_utime + usage.ru_stime


def best_times(cases: dict[str, list[str]], *, rounds: int) -> dict[str, dict[str, float]]:
    """Each case's smallest wall and CPU times over ``rounds`` alternating rounds: ``{case: {"wall", "cpu"}}``."""
    env = _env()
    best = {name: {"wall": float("inf"), "cpu": float("inf")} for name in cases}
    for _ in range(rounds):
        for name, args in cases.items():
            wall, cpu = time_once(args, env=env)
            best[name] = {"wall": min(best[name]["wall"], wall), "cpu": min(best[name]["cpu"], cpu)}
    return best


def run(quick: bool = False, *, rounds: int = 5, clock: str = "cpu") -> list[dict[str, object]]:
    """Rows of the perf-suite contract (see the module docstring). ``quick``: 1 round (a smoke run, noisy)."""
    if clock not in ("wall", "cpu"):
        raise ValueError(f"clock={clock!r} is not allowed; allowed: 'cpu', 'wall'")
    if quick:
        rounds = 1
    t = best_times(CASES, rounds=rounds)
    rows = []
    for name, case, peer, target, peer_name in ROWS:
        detail = (f"cpu {t[case]['cpu']:.2f} s vs {t[peer]['cpu']:.2f} s, wall {t[case]['wall']:.2f} s vs "
                  f"{t[peer]['wall']:.2f} s; best of {rounds} fresh interpreter(s), ratio on the {clock} clock")
        rows.append(row(name, t[case][clock] / t[peer][clock], target, peer_name, detail))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="smoke run: 1 round")
    parser.add_argument("--rounds", type=int, default=5, help="alternating rounds; each case keeps its best (5)")
    parser.add_argument("--clock", choices=["cpu", "wall"], default="cpu",
                        help="clock of the ratio: cpu (the child's user + system CPU time) or wall")
    args = parser.parse_args()
    print(format_table(run(args.quick, rounds=args.rounds, clock=args.clock)))


if __name__ == "__main__":
    main()

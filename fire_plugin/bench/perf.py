"""One perf table: every ``fire_plugin/bench/bench_*.py`` run in one process, each ratio against its named peer.

Each benchmark module exposes ``run(quick: bool = False) -> list[dict]`` returning rows
``{"name": str, "ratio": float, "target": str, "peer": str}`` (optionally ``"detail"``); an empty target marks a
row given for information. This runner imports whichever of them exist (a missing one gets a note row), runs them
in the order of :data:`BENCHMARKS` (then any other ``bench_*.py``), checks each row against its target and prints
one markdown table; ``--json PATH`` saves it with the run's settings.

- ``bench_trainers``: FIRETrainer vs ART's TRADES trainer, Fisher-Rao vs KL in the engine, engine vs a bare loop.
  It runs first: its step comparison is sensitive to the state the process is left in by other work.
- ``bench_distances``: the divergences vs the TRADES ``F.kl_div`` term.
- ``bench_attacks``: FRPGD vs ``torchattacks.PGD``.
- ``bench_isometry``: partial-isometry training vs vanilla.
- ``bench_margins``: margin tracing, exact vs CG vs dense.
- ``bench_startup``: ``fire-plugin --help`` and the package's imports vs the imports they cannot avoid (fresh
  interpreters).

Timing follows each benchmark (1 torch thread and the process CPU time on a CPU); the runner also sets one torch
thread. ``--quick`` runs every benchmark's reduced version (a smoke run: its ratios are noisy).

Run: ``fire-plugin bench [--quick] [--json runs/perf.json] [--only attacks --only distances] [--strict]`` (or
``python -m fire_plugin.bench.perf ...``, ``make bench``).
From Python: ``run_all(quick) -> list[dict]`` (no printing), ``main(argv) -> exit code``.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import logging
import math
import os
import platform
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from types import ModuleType
from typing import Any

from fire_plugin.bench._timing import format_table, target_met

BENCH_DIR = Path(__file__).resolve().parent

#: Benchmarks of the suite, in the order they run (``bench_<name>.py``).
BENCHMARKS: tuple[str, ...] = ("trainers", "distances", "attacks", "isometry", "margins", "startup")
ROW_KEYS = ("name", "ratio", "target", "peer")

_logger = logging.getLogger("perf")


def discover(bench_dir: Path = BENCH_DIR) -> list[str]:
    """The suite's names (:data:`BENCHMARKS`, present or not) followed by any other ``bench_*.py`` in ``bench_dir``."""
    others = sorted(p.stem[len("bench_"):] for p in bench_dir.glob("bench_*.py"))
    return list(BENCHMARKS) + [n for n in others if n not in BENCHMARKS]


def load_benchmark(name: str, bench_dir: Path = BENCH_DIR) -> ModuleType | None:
    """Import ``bench_dir/bench_<name>.py`` by path; None if the file does not exist."""
    path = bench_dir / f"bench_{name}.py"
    if not path.is_file():
        return None
    if str(bench_dir) not in sys.path:
        sys.path.insert(0, str(bench_dir))
    module_name = f"_perf_bench_{name}"
    spec = importlib.util.spec_from_file_location(module_name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[module_name] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop(module_name, None)
        raise
    return module


def _note(name: str, note: str) -> dict[str, Any]:
    return {"bench": name, "name": f"bench_{name}.py", "ratio": None, "target": "", "peer": "", "met": None,
            "note": note}


def _check_row(row: Any) -> str | None:
    """What is wrong with a benchmark's row, or None."""
    if not isinstance(row, dict):
        return f"a row of type {type(row).__name__}, not dict"
    missing = [k for k in ROW_KEYS if k not in row]
    if missing:
        return f"a row without {missing}"
    ratio = row["ratio"]
    if isinstance(ratio, bool) or not isinstance(ratio, int | float) or not math.isfinite(ratio) or ratio <= 0:
        return f"row {row['name']!r}: ratio={ratio!r} is not a positive finite number"
    return None


def _with_verdict(name: str, row: dict[str, Any], seconds: float) -> dict[str, Any]:
    """The row with ``bench``, ``met`` and ``wall_seconds``; a target outside the contract keeps the measured
    ratio but gets ``met`` None and a ``failed: ...`` note (its direction cannot be guessed)."""
    out = {"bench": name, **row, "ratio": float(row["ratio"]), "wall_seconds": round(seconds, 1)}
    try:
        out["met"] = target_met(out["ratio"], row["target"])
    except ValueError as exc:
        out["met"] = None
        out["note"] = f"failed: {exc}"
    return out


def run_all(quick: bool = False, *, names: Sequence[str] | None = None,
            bench_dir: str | Path | None = None) -> list[dict[str, Any]]:
    """Run the benchmarks in one process; rows get ``bench``, ``met`` (True/False/None) and ``wall_seconds``
    (of the whole benchmark module).

    A missing module, one without ``run``, one that raises or returns a malformed row gives a row with a ``note``
    (``"skipped: ..."`` or ``"failed: ..."``) and ``ratio`` None; the others still run. A row whose only fault is
    its target (not a string such as ``"<= 1.2"``) keeps its ratio, with ``met`` None and a ``failed`` note.
    """
    import torch

    torch.set_num_threads(1)
    bench_dir = BENCH_DIR if bench_dir is None else Path(bench_dir)
    rows: list[dict[str, Any]] = []
    for name in names if names is not None else discover(bench_dir):
        try:
            module = load_benchmark(name, bench_dir)
        except Exception as exc:  # an import error of one benchmark must not stop the others
            _logger.exception("bench_%s.py could not be imported", name)
            rows.append(_note(name, f"failed: import raised {type(exc).__name__}: {exc}"))
            continue
        if module is None:
            rows.append(_note(name, f"skipped: bench_{name}.py not found in {bench_dir}"))
            continue
        if not callable(getattr(module, "run", None)):
            rows.append(_note(name, f"skipped: bench_{name}.py has no run(quick)"))
            continue
        _logger.info("running bench_%s.py%s", name, " (quick)" if quick else "")
        start = time.perf_counter()
        try:
            out = module.run(quick=quick)
        except Exception as exc:
            _logger.exception("bench_%s.py failed", name)
            rows.append(_note(name, f"failed: run raised {type(exc).__name__}: {exc}"))
            continue
        seconds = time.perf_counter() - start
        problems = [p for p in (_check_row(r) for r in out or []) if p] if isinstance(out, list) else [
            f"run returned {type(out).__name__}, not list"]
        if not out or problems:
            rows.append(_note(name, "failed: " + ("; ".join(problems) or "run returned no rows")))
            continue
        rows.extend(_with_verdict(name, r, seconds) for r in out)
        _logger.info("bench_%s.py: %d rows in %.0f s (wall)", name, len(out), seconds)
    return rows


def check_json_path(path: Path) -> None:
    """``--json PATH`` must be a writable file path (checked before the suite runs, not after it)."""
    if path.is_dir():
        raise ValueError(f"--json {str(path)!r} is a folder; pass a file path such as {str(path / 'perf.json')!r}")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir() or not os.access(parent, os.W_OK):
        raise ValueError(f"--json {str(path)!r} cannot be written ({str(parent)!r} is not a writable folder)")


def main(argv: Sequence[str] | None = None) -> int:
    """Run the suite, print the table, optionally save JSON. Exit code 1 if a benchmark failed (or, with
    ``--strict``, if a target is missed), else 0."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="each benchmark's reduced smoke version")
    parser.add_argument("--json", type=Path, help="save the table (and the run's settings) as JSON here")
    parser.add_argument("--only", action="append", metavar="NAME",
                        help=f"run only bench_NAME.py (repeatable); names: {', '.join(BENCHMARKS)}")
    parser.add_argument("--strict", action="store_true", help="exit code 1 when a target is missed")
    parser.add_argument("--bench-dir", type=Path, default=BENCH_DIR, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.json is not None:
        try:
            check_json_path(args.json)
        except ValueError as err:
            parser.error(str(err))
    if not _logger.handlers:  # progress of the runner only; the benchmarks' own logging stays as configured
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(message)s"))
        _logger.addHandler(handler)
        _logger.setLevel(logging.INFO)

    import torch

    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    t0 = time.perf_counter()
    rows = run_all(args.quick, names=args.only, bench_dir=args.bench_dir)
    meta = {
        "started": started,
        "wall_seconds": round(time.perf_counter() - t0, 1),
        "quick": args.quick,
        "torch_threads": torch.get_num_threads(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "torch": torch.__version__,
        "python": platform.python_version(),
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
    }
    print(f"perf suite{' (quick)' if args.quick else ''}: {meta['device']}, {meta['torch_threads']} torch thread(s), "
          f"{meta['wall_seconds']:.0f} s wall")
    print(format_table(rows))
    missed = [r["name"] for r in rows if r["met"] is False]
    failed = [r["name"] for r in rows if str(r.get("note", "")).startswith("failed")]
    with_target = [r for r in rows if r["met"] is not None]
    print(f"targets met: {len(with_target) - len(missed)} of {len(with_target)}"
          + (f"; failed benchmarks: {failed}" if failed else ""))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        from fire_plugin.runfolder import atomic_write_text, environment_info, write_environment

        meta["environment"] = environment_info()
        atomic_write_text(args.json, json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
        write_environment(args.json.parent)
        print(f"saved {args.json} (and {args.json.parent / 'environment.json'})")
    return 1 if failed or (args.strict and missed) else 0


if __name__ == "__main__":
    sys.exit(main())

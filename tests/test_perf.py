"""The perf-suite runner (fire_plugin/bench/perf.py) and the bench_*.py contract: run(quick) -> rows."""

from __future__ import annotations

import json
import math
import os
import sys
from pathlib import Path

import pytest

from fire_plugin.bench import perf

BENCH_DIR = Path(perf.__file__).resolve().parent

FAKES = {
    "good": 'def run(quick=False):\n'
            '    return [{"name": "fast thing", "ratio": 0.5 if quick else 0.9, "target": "<= 0.8", "peer": "slow"},\n'
            '            {"name": "info", "ratio": 2, "target": "", "peer": "other"}]\n',
    "raises": "def run(quick=False):\n    raise RuntimeError('boom')\n",
    "numeric_target": 'def run(quick=False):\n    return [{"name": "x", "ratio": 1.0, "target": 2.0, "peer": "p"}]\n',
    "no_peer": 'def run(quick=False):\n    return [{"name": "x", "ratio": 1.0, "target": ""}]\n',
    "nan": 'def run(quick=False):\n    return [{"name": "x", "ratio": float("nan"), "target": "", "peer": "p"}]\n',
    "no_run": "X = 1\n",
}


@pytest.fixture()
def fake_dir(tmp_path: Path) -> Path:
    for name, code in FAKES.items():
        (tmp_path / f"bench_{name}.py").write_text(code)
    return tmp_path


def test_target_met() -> None:
    met = perf.target_met
    assert met(1.2, "<= 1.2") is True and met(1.2001, "<= 1.2") is False
    assert met(1.0, ">= 1") is True and met(0.99, ">= 1.0") is False
    assert met(1.0, "< 1") is False and met(1.01, "> 1") is True
    assert met(5.0, "") is None and met(5.0, None) is None and met(None, "<= 1") is None
    for bad in ("about 1", "<= x", 2.0):
        with pytest.raises(ValueError, match="target="):
            met(1.0, bad)


def test_run_all_contract_and_notes(fake_dir: Path) -> None:
    names = ["good", "missing", "raises", "numeric_target", "no_peer", "nan", "no_run"]
    rows = perf.run_all(quick=True, names=names, bench_dir=fake_dir)
    by_bench: dict[str, list[dict]] = {}
    for r in rows:
        by_bench.setdefault(r["bench"], []).append(r)
    assert list(by_bench) == names  # every benchmark accounted for, in order
    good = by_bench["good"]
    assert [(r["ratio"], r["met"]) for r in good] == [(0.5, True), (2.0, None)]
    assert all(r["peer"] and r["target"] is not None for r in good)
    # a target outside the contract: the ratio is kept, the verdict is not guessed, the note says why
    numeric = by_bench.pop("numeric_target")
    assert [(r["ratio"], r["met"]) for r in numeric] == [(1.0, None)]
    assert numeric[0]["note"].startswith("failed") and "target=2.0" in numeric[0]["note"]
    notes = {b: rs[0].get("note", "") for b, rs in by_bench.items() if b != "good"}
    assert notes["missing"].startswith("skipped") and "bench_missing.py" in notes["missing"]
    assert notes["no_run"].startswith("skipped")
    assert notes["raises"].startswith("failed") and "boom" in notes["raises"]
    assert "['peer']" in notes["no_peer"]
    assert "ratio=nan" in notes["nan"]
    assert all(by_bench[b][0]["ratio"] is None for b in notes)
    # full (not quick) mode reaches the benchmark: the same target is missed there
    assert perf.run_all(quick=False, names=["good"], bench_dir=fake_dir)[0]["met"] is False


def test_main_json_and_exit_codes(fake_dir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out" / "perf.json"
    code = perf.main(["--quick", "--bench-dir", str(fake_dir), "--only", "good", "--only", "missing",
                      "--json", str(out)])
    assert code == 0
    saved = json.loads(out.read_text())
    assert saved["meta"]["quick"] is True and saved["meta"]["torch_threads"] == 1
    assert [r["bench"] for r in saved["rows"]] == ["good", "good", "missing"]
    printed = capsys.readouterr().out
    assert "| fast thing | 0.500 | <= 0.8 | yes | slow |" in printed and "targets met: 1 of 1" in printed
    assert perf.main(["--bench-dir", str(fake_dir), "--only", "good", "--strict"]) == 1  # 0.9 misses <= 0.8
    assert perf.main(["--bench-dir", str(fake_dir), "--only", "raises"]) == 1
    assert perf.main(["--bench-dir", str(fake_dir), "--only", "numeric_target"]) == 1
    assert "| x | 1.000 | 2.0 | - | p | failed: target=2.0" in capsys.readouterr().out


def test_discover_lists_the_suite_first() -> None:
    names = perf.discover()
    assert names[:5] == ["trainers", "distances", "attacks", "isometry", "margins"]
    assert {"trainers", "distances", "attacks"} <= {p.stem[6:] for p in BENCH_DIR.glob("bench_*.py")}


def _check_rows(rows: list[dict]) -> None:
    assert rows
    for r in rows:
        assert isinstance(r["name"], str) and r["name"]
        assert isinstance(r["peer"], str) and r["peer"]
        assert isinstance(r["ratio"], float) and math.isfinite(r["ratio"]) and r["ratio"] > 0
        perf.target_met(r["ratio"], r["target"])


def test_bench_distances_quick_rows() -> None:
    """The real distances benchmark, quick: one with a target per shape, ratios of real timings (about 1 s)."""
    rows = perf.run_all(quick=True, names=["distances"])
    _check_rows(rows)
    with_target = [r for r in rows if r["target"]]
    assert [r["target"] for r in with_target] == ["<= 1.2", "<= 1.2"]
    assert all(r["name"].startswith("fisher_rao_squared") and r["peer"].startswith("TRADES") for r in with_target)


@pytest.mark.slow
def test_perf_quick_runs_every_benchmark(tmp_path: Path) -> None:
    """``perf.py --quick`` end to end: every suite benchmark present gives contract rows (about 1-2 min here)."""
    out = tmp_path / "perf.json"
    perf.main(["--quick", "--json", str(out)])
    rows = json.loads(out.read_text())["rows"]
    present = {p.stem[6:] for p in BENCH_DIR.glob("bench_*.py")}
    assert {r["bench"] for r in rows} >= set(perf.BENCHMARKS) | present
    for name in ("trainers", "distances", "attacks"):
        mine = [r for r in rows if r["bench"] == name]
        assert not any("note" in r for r in mine), mine
        _check_rows(mine)
    targets = {r["target"] for r in rows if r["bench"] in ("trainers", "attacks")}
    assert targets >= {"<= 0.75", "<= 1.02", "<= 1.05"}


def test_fire_plugin_bench_runs_from_the_package_alone(tmp_path: Path) -> None:
    """``fire-plugin bench`` from a copy of the package with no source checkout beside it (as an installed wheel)."""
    import shutil
    import subprocess

    shutil.copytree(BENCH_DIR.parent, tmp_path / "site" / "fire_plugin",
                    ignore=shutil.ignore_patterns("__pycache__"))
    env = {**os.environ, "PYTHONPATH": str(tmp_path / "site"), "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-m", "fire_plugin.cli", "bench", "--quick", "--only", "distances",
                           "--json", str(tmp_path / "perf.json")], capture_output=True, text=True, env=env,
                          cwd=tmp_path, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    rows = json.loads((tmp_path / "perf.json").read_text())["rows"]
    assert rows and all(r["bench"] == "distances" and r["ratio"] > 0 for r in rows)
    assert "site" in done.stdout or "fisher_rao_squared" in done.stdout

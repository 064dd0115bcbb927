"""benchmarks/gpu_check.py: the dry run (the same code on the CPU, tiny shapes) runs every section cleanly."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _gpu_check():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("_test_gpu_check", ROOT / "benchmarks" / "gpu_check.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_dry_run_every_section(tmp_path, capsys):
    gpu_check = _gpu_check()
    out = tmp_path / "gpu_check.json"
    assert gpu_check.main(["--dry-run", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    rows = report["rows"]
    assert report["meta"]["dry_run"] is True and report["meta"]["device"] == "cpu"
    assert not [r for r in rows if str(r["detail"]).startswith("failed") or r.get("failed")], rows
    tests = [r for r in rows if r["section"] == "cuda tests"]
    assert len(tests) == 1 and tests[0]["value"] >= 5  # the CUDA tests' code ran on the CPU (5 skip: CUDA only)
    epochs = [r for r in rows if r["section"] == "epoch cost" and r["peer"]]
    assert len(epochs) == 6 and all(r["value"] > 0 for r in epochs)  # FIRE and TRADES in three modes
    ratios = [r for r in rows if r["section"] == "ratios"]
    names = " ".join(r["name"] + " " + r["peer"] for r in ratios)
    for what in ("FIRETrainer", "ART", "FRPGD", "torchattacks.PGD", "partial isometry (exact)", "default estimator",
                 "trace_margins", "cg"):
        assert what in names, what
    assert all(r["unit"] == "x" and r["value"] > 0 for r in ratios)
    printed = capsys.readouterr().out
    assert "| check | result | peer / reference | detail |" in printed
    assert json.loads(printed.strip().splitlines()[-1])["rows"] == rows  # the JSON printed after the table


def test_without_cuda_the_full_run_says_what_to_do():
    gpu_check = _gpu_check()
    import torch

    if torch.cuda.is_available():
        pytest.skip("a CUDA device is present")
    with pytest.raises(ValueError, match="--dry-run"):
        gpu_check.run(dry_run=False)


@pytest.mark.slow
def test_every_cuda_test_runs_on_the_cpu_in_dry_run_mode():
    """All of tests/test_cuda.py with FIRE_PLUGIN_CUDA_TESTS_ON_CPU=1 (the dry run leaves the slowest two out)."""
    env = {**os.environ, "FIRE_PLUGIN_CUDA_TESTS_ON_CPU": "1"}
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(ROOT / "tests" / "test_cuda.py"),
                           "-p", "no:cacheprovider"], capture_output=True, text=True, env=env, cwd=ROOT, timeout=900)
    assert done.returncode == 0, done.stdout[-3000:]
    assert " passed" in done.stdout and "failed" not in done.stdout

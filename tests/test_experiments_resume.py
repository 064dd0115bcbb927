"""Exact resume in every pipeline: a run killed with SIGKILL after a checkpoint and rerun ends with the weights and
result files of an uninterrupted run, bit for bit (the same computation repeated: bit equality is required here).

Timing fields (``seconds``, ``samples_per_s``, ``wall_seconds``, ...) are the only ones left out of the comparison.
"""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fire_plugin.engine import CrossEntropyObjective, fit, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TIMING_KEYS = ("seconds", "samples_per_s", "wall_seconds", "train_seconds", "eval_seconds", "train_seconds_all_runs",
               "times")


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep
            + os.environ.get("PYTHONPATH", "")}


def _without_timing(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _without_timing(v) for k, v in value.items() if k not in TIMING_KEYS}
    if isinstance(value, list):
        return [_without_timing(v) for v in value]
    return value


def _kill_after_checkpoint(cmd: list[str], checkpoint: Path, *, cwd: Path, timeout: float = 300) -> None:
    """Start ``cmd`` in its own session, SIGKILL the whole session as soon as ``checkpoint`` exists (the engine
    writes it atomically: existing means complete), and check that the run had not finished."""
    proc = subprocess.Popen(cmd, cwd=cwd, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                            start_new_session=True)
    deadline = time.monotonic() + timeout
    while not checkpoint.exists():
        if proc.poll() is not None:
            raise AssertionError(f"the run ended ({proc.returncode}) before its first checkpoint: "
                                 f"{proc.stderr.read().decode()[-2000:] if proc.stderr else ''}")
        if time.monotonic() > deadline:
            os.killpg(proc.pid, signal.SIGKILL)
            raise AssertionError("no checkpoint within the timeout")
        time.sleep(0.005)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=60)
    assert proc.returncode == -signal.SIGKILL, "the run finished before it could be killed: make it longer"
    if proc.stderr:
        proc.stderr.close()


def _assert_same_checkpoints(a: Path, b: Path) -> None:
    sa, sb = load_checkpoint(a), load_checkpoint(b)
    assert sa["epoch"] == sb["epoch"]
    for part in ("model", "ema"):
        if sa.get(part) is None:
            assert sb.get(part) is None
            continue
        wa = sa[part]["module"] if part == "ema" else sa[part]
        wb = sb[part]["module"] if part == "ema" else sb[part]
        assert wa.keys() == wb.keys()
        for name in wa:
            assert torch.equal(wa[name], wb[name]), (part, name)
    assert _without_timing(sa["history"]) == _without_timing(sb["history"])
    assert torch.equal(sa["rng"]["torch"], sb["rng"]["torch"])


def _train_cmd(out: str, epochs: int = 3) -> list[str]:
    return [sys.executable, "-m", "fire_plugin.cli", "train", "--dataset", "digits", "--model", "digits_cnn",
            "--method", "trades", "--eps", "0.1", "--steps", "1", "--epochs", str(epochs), "--batch-size", "128",
            "--lr", "0.05", "--quiet", "--out", out]


# ----------------------------------------------------------------------------------------------- engine


def _generator_loader(x: torch.Tensor, y: torch.Tensor, seed: int) -> DataLoader:
    return DataLoader(TensorDataset(x, y), batch_size=64, shuffle=True,
                      generator=torch.Generator().manual_seed(seed))


def test_fit_restores_the_loader_generator(digits_train, tmp_path):
    """A loader with its own generator (as run_one builds): the resumed epoch must not replay epoch 0's order."""
    x, y = digits_train[0][:256], digits_train[1][:256]

    def run(epochs: int, ckpt: Path | None) -> torch.nn.Module:
        torch.manual_seed(0)
        model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
        fit(model, _generator_loader(x, y, seed=3), epochs=epochs, objective=CrossEntropyObjective(),
            optimizer=opt, checkpoint_dir=ckpt, verbose=False)
        return model

    straight = run(2, None)
    run(1, tmp_path)
    resumed = run(2, tmp_path)  # a fresh loader whose generator starts at the seed again, as in a new process
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b), name


# ----------------------------------------------------------------------------------------------- train (fast)


def test_train_killed_after_a_checkpoint_resumes_bit_for_bit(tmp_path):
    """``fire-plugin train`` killed (SIGKILL) after its first epoch's checkpoint, then rerun: the weights, the
    optimizer and the summary (timings aside) are those of an uninterrupted run."""
    from fire_plugin.experiments import train

    _kill_after_checkpoint(_train_cmd("killed"), tmp_path / "killed" / "checkpoints" / "last.pt", cwd=tmp_path)
    assert not (tmp_path / "killed" / "summary.json").exists()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # as the subprocess (OMP_NUM_THREADS=1)
    try:
        kwargs = {"dataset": "digits", "model": "digits_cnn", "method": "trades", "eps": 0.1, "steps": 1,
                  "epochs": 3, "batch_size": 128, "lr": 0.05, "verbose": False}
        resumed = train(out=tmp_path / "killed", **kwargs)
        straight = train(out=tmp_path / "straight", **kwargs)
    finally:
        torch.set_num_threads(threads)
    assert len(resumed["history"]) == len(straight["history"]) == 3
    _assert_same_checkpoints(tmp_path / "killed" / "checkpoints" / "last.pt",
                             tmp_path / "straight" / "checkpoints" / "last.pt")
    sa = json.loads((tmp_path / "killed" / "summary.json").read_text())
    sb = json.loads((tmp_path / "straight" / "summary.json").read_text())
    assert _without_timing({**sa, "checkpoint": None}) == _without_timing({**sb, "checkpoint": None})
    opt_a = load_checkpoint(tmp_path / "killed" / "checkpoints" / "last.pt")["optimizer"]
    opt_b = load_checkpoint(tmp_path / "straight" / "checkpoints" / "last.pt")["optimizer"]
    for k, v in opt_a["state"].items():
        assert torch.equal(v["momentum_buffer"], opt_b["state"][k]["momentum_buffer"])


# ----------------------------------------------------------------------------------------------- slow pipelines


RUN_ONE_SCRIPT = """
import sys, torch
torch.set_num_threads(1)
from fire_plugin.experiments import DigitsRecipe, EvalSpec, run_one
recipe = DigitsRecipe(epochs=3, steps=2, eps_step=0.05, model="digits_cnn")
spec = EvalSpec(n_eval=40, pgd_steps=3, aa_attacks=("apgd-ce",), aa_standard_n=0, margin_n=2)
run_one("trades", out=sys.argv[1], recipe=recipe, spec=spec, verbose=False)
"""


@pytest.mark.slow
def test_run_one_killed_after_a_checkpoint_resumes_bit_for_bit(tmp_path):
    """run_one (the demo's, run_many's and the digits tables' unit) killed after a checkpoint, rerun: result.json
    (timings aside) and model.pt equal an uninterrupted run's."""
    script = tmp_path / "run_one.py"
    script.write_text(RUN_ONE_SCRIPT)
    _kill_after_checkpoint([sys.executable, str(script), "killed"], tmp_path / "killed" / "checkpoints" / "last.pt",
                           cwd=tmp_path)
    for out in ("killed", "straight"):
        subprocess.run([sys.executable, str(script), out], cwd=tmp_path, env=_env(), check=True, timeout=600)
    ra = json.loads((tmp_path / "killed" / "result.json").read_text())
    rb = json.loads((tmp_path / "straight" / "result.json").read_text())
    assert _without_timing(ra) == _without_timing(rb)
    wa = torch.load(tmp_path / "killed" / "model.pt", weights_only=True)
    wb = torch.load(tmp_path / "straight" / "model.pt", weights_only=True)
    assert all(torch.equal(wa[k], wb[k]) for k in wa) and wa.keys() == wb.keys()


PRESET_ARGS = ["--preset", "mnist-smallcnn-fire", "--set", "dataset=digits", "--set", "model=digits_cnn",
               "--set", "epochs=3", "--set", "batch_size=64", "--set", "val_size=100", "--set", "ema=true",
               "--set", "augment=true", "--set", "workers=2", "--set", "attack_steps=2", "--set", "eval_n=40",
               "--set", "eval_attacks=clean,pgd", "--set", "eval_pgd_steps=3", "--set", "eps=0.1",
               "--set", "eps_step=0.05", "--quiet"]


@pytest.mark.slow
def test_preset_killed_after_a_checkpoint_resumes_bit_for_bit(tmp_path):
    """A preset with augmentation in 2 persistent workers, EMA and best.pt selection: killed after a checkpoint and
    rerun, its checkpoints, results.json and results.csv (timings aside) equal an uninterrupted run's."""
    cmd = [sys.executable, "-m", "fire_plugin.cli", "train", *PRESET_ARGS]
    _kill_after_checkpoint([*cmd, "--out", "killed"], tmp_path / "killed" / "checkpoints" / "last.pt", cwd=tmp_path)
    for out in ("killed", "straight"):
        subprocess.run([*cmd, "--out", out], cwd=tmp_path, env=_env(), check=True, timeout=600,
                       stdout=subprocess.DEVNULL)
    for name in ("last.pt", "best.pt"):
        a, b = (load_checkpoint(tmp_path / out / "checkpoints" / name) for out in ("killed", "straight"))
        assert a["epoch"] == b["epoch"] and all(torch.equal(a["model"][k], b["model"][k]) for k in a["model"])
    _assert_same_checkpoints(tmp_path / "killed" / "checkpoints" / "last.pt",
                             tmp_path / "straight" / "checkpoints" / "last.pt")
    ra, rb = (json.loads((tmp_path / out / "results.json").read_text()) for out in ("killed", "straight"))
    paths = ("paths",)
    assert _without_timing({k: v for k, v in ra.items() if k not in paths}) == _without_timing(
        {k: v for k, v in rb.items() if k not in paths})
    ca, cb = (list(csv.DictReader((tmp_path / out / "results.csv").open())) for out in ("killed", "straight"))
    assert len(ca) == len(cb) == 1 and _without_timing(ca) == _without_timing(cb)


@pytest.mark.slow
def test_torchrun_two_gloo_ranks_killed_after_a_checkpoint_resume_bit_for_bit(tmp_path):
    """``torchrun --nproc_per_node=2 fire-plugin train`` on CPU (gloo): the launcher and both ranks killed after a
    checkpoint, rerun: the final weights and summary equal an uninterrupted 2-rank run's."""
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--standalone", "-m",
                "fire_plugin.cli"]
    base = _train_cmd("x", epochs=3)[3:-1]  # the train arguments without the interpreter and --out's value
    _kill_after_checkpoint([*torchrun, *base, "killed"], tmp_path / "killed" / "checkpoints" / "last.pt",
                           cwd=tmp_path)
    for out in ("killed", "straight"):
        subprocess.run([*torchrun, *base, out], cwd=tmp_path, env=_env(), check=True, timeout=600,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    _assert_same_checkpoints(tmp_path / "killed" / "checkpoints" / "last.pt",
                             tmp_path / "straight" / "checkpoints" / "last.pt")
    sa, sb = (json.loads((tmp_path / out / "summary.json").read_text()) for out in ("killed", "straight"))
    assert _without_timing({**sa, "checkpoint": None}) == _without_timing({**sb, "checkpoint": None})

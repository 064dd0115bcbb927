"""Run folders: one writer per folder (lock file), SIGTERM like Ctrl-C, demo workers ending with their parent,
atomic result files that follow the umask, torn result files recomputed, environment.json."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from fire_plugin.cli import main
from fire_plugin.engine import save_checkpoint
from fire_plugin.runfolder import LOCK_NAME, RunLockedError, atomic_write_text, environment_info, run_lock

ROOT = Path(__file__).resolve().parents[1]


def _env() -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT) + os.pathsep
            + os.environ.get("PYTHONPATH", "")}


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


# ----------------------------------------------------------------------------------------------- lock


def test_a_second_writer_is_refused_while_the_first_runs(tmp_path):
    with run_lock(tmp_path / "run", command="train"):
        held = json.loads((tmp_path / "run" / LOCK_NAME).read_text())
        assert held["pid"] == os.getpid() and held["command"] == "train"
        with pytest.raises(RunLockedError, match=rf"is in use by process {os.getpid()} since .*\(train\).*--out"):
            with run_lock(tmp_path / "run"):
                pass
    assert not (tmp_path / "run" / LOCK_NAME).exists()  # released: the folder holds only what the run wrote
    with run_lock(tmp_path / "run"):  # and can be taken again
        pass


def test_two_trains_on_one_out_the_second_exits_2_naming_the_first(tmp_path, capsys):
    """Two ``fire-plugin train`` with different --lr on one --out: before, both exited 0 and one result vanished."""
    out = tmp_path / "run"
    with run_lock(out, command="train"):  # the first run, still going
        status = main(["train", "--dataset", "digits", "--model", "digits_cnn", "--method", "ce", "--epochs", "1",
                       "--lr", "0.01", "--out", str(out), "--quiet"])
    err = capsys.readouterr().err
    assert status == 2
    assert f"fire-plugin: error: '{out}' is in use by process {os.getpid()} since " in err
    assert not (out / "checkpoints").exists()  # nothing was written by the refused run


@pytest.mark.parametrize("command", ["evaluate", "demo", "margins", "preset"])
def test_every_pipeline_takes_the_lock(tmp_path, capsys, command):
    out = tmp_path / "run"
    argv = {"evaluate": ["evaluate", "--model", "digits_cnn", "--dataset", "digits", "--n-examples", "4",
                         "--attacks", "clean", "--out", str(out)],
            "demo": ["demo", "--quick", "--out", str(out), "--quiet"],
            "margins": ["margins", "--model", "digits_cnn", "--dataset", "digits", "--n-inputs", "2", "--out",
                        str(out), "--quiet"],
            "preset": ["train", "--preset", "mnist-smallcnn-fire", "--smoke", "--out", str(out), "--quiet"]}[command]
    with run_lock(out, command="other"):
        assert main(argv) == 2
    assert "is in use by process" in capsys.readouterr().err


def test_a_lock_left_by_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    folder = tmp_path / "run"
    folder.mkdir()
    pid = _dead_pid()
    (folder / LOCK_NAME).write_text(json.dumps({"pid": pid, "since": "2026-01-01T00:00:00+00:00"}))
    with pytest.warns(RuntimeWarning, match=rf"taking over the lock .* from process {pid} since 2026-01-01"):
        with run_lock(folder):
            assert json.loads((folder / LOCK_NAME).read_text())["pid"] == os.getpid()


# ----------------------------------------------------------------------------------------------- files


def test_checkpoints_and_result_files_follow_the_umask(tmp_path):
    """Checkpoints were 0600 (mkstemp) where every other output follows the umask."""
    previous = os.umask(0o022)
    try:
        save_checkpoint(tmp_path / "last.pt", {"w": torch.zeros(2)})
        atomic_write_text(tmp_path / "result.json", "{}")
    finally:
        os.umask(previous)
    assert (tmp_path / "last.pt").stat().st_mode & 0o777 == 0o644
    assert (tmp_path / "result.json").stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.pt", "result.json"]  # no temporary files left


def test_a_replaced_file_keeps_its_mode_and_margin_tables_are_written_atomically(tmp_path, monkeypatch):
    import numpy as np

    from fire_plugin import runfolder
    from fire_plugin.margins import MarginResult

    path = tmp_path / "result.json"
    atomic_write_text(path, "{}")
    path.chmod(0o600)
    atomic_write_text(path, '{"a": 1}')
    assert path.stat().st_mode & 0o777 == 0o600 and path.read_text() == '{"a": 1}'
    figure = tmp_path / "figure.png"
    figure.write_bytes(b"old")
    figure.chmod(0o640)
    with runfolder.atomic_path(figure) as tmp:
        tmp.write_bytes(b"new")
    assert figure.stat().st_mode & 0o777 == 0o640 and figure.read_bytes() == b"new"

    result = MarginResult(index=np.array([0]), source=np.array([1]), target=np.array([2]), flipped=np.array([True]),
                          first_class=np.array([2]), fr_length=np.array([0.5]), l2=np.array([0.1]),
                          linf=np.array([0.05]), steps=np.array([5]), status=np.array(["flipped"]),
                          shielded=np.array([False]), num_classes=3)
    renamed: list[str] = []
    original = os.replace

    def spy(src, dst):  # an atomic write is a rename of a finished temporary file onto the target
        renamed.append(Path(dst).name)
        return original(src, dst)

    monkeypatch.setattr(os, "replace", spy)
    result.to_json(tmp_path / "m.json")
    result.to_csv(tmp_path / "m.csv")
    assert renamed == ["m.json", "m.csv"]
    assert MarginResult.from_json(tmp_path / "m.json").fr_length.tolist() == [0.5]
    assert (tmp_path / "m.csv").read_bytes().splitlines()[1].startswith(b"0,1,2,True,2,")


def test_a_torn_preset_results_file_is_recomputed(tmp_path, caplog):
    from fire_plugin.presets import run_preset

    first = run_preset("mnist-smallcnn-fire", out=tmp_path, smoke=True, verbose=False)
    path = tmp_path / "results.json"
    path.write_text(path.read_text()[:100])  # a torn write (the old non-atomic write could leave this)
    with caplog.at_level("WARNING"):
        again = run_preset("mnist-smallcnn-fire", out=tmp_path, smoke=True, verbose=False)
    assert f"{path} is unreadable" in caplog.text  # named, then evaluated again from the checkpoint
    untimed = {k: v for k, v in first["eval"].items() if k != "times"}
    assert {k: v for k, v in again["eval"].items() if k != "times"} == untimed
    assert {k: v for k, v in json.loads(path.read_text())["eval"].items() if k != "times"} == untimed


def test_a_torn_run_one_result_is_recomputed(tmp_path, caplog):
    from fire_plugin.experiments import DigitsRecipe, EvalSpec, run_one

    recipe, spec = DigitsRecipe(epochs=1, steps=1, eps_step=0.1), EvalSpec(n_eval=10, aa_attacks=("apgd-ce",),
                                                                           aa_standard_n=0, margin_n=0, pgd_steps=2)
    first = run_one("ce", out=tmp_path, recipe=recipe, spec=spec, verbose=False)
    (tmp_path / "result.json").write_text("{\"config\": ")
    with caplog.at_level("WARNING"):
        again = run_one("ce", out=tmp_path, recipe=recipe, spec=spec, verbose=False)
    assert "result.json is unreadable" in caplog.text
    assert {k: v for k, v in again["eval"].items() if k != "times"} == {
        k: v for k, v in first["eval"].items() if k != "times"}


def test_environment_names_the_machine():
    info = environment_info()
    assert info["torch"] == torch.__version__
    assert info["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    assert info["torch_threads"] == torch.get_num_threads() and info["cpu_model"]
    if (ROOT / ".git").exists():
        assert info["git"] is not None and len(info["git"]["commit"]) == 40


# ----------------------------------------------------------------------------------------------- signals


@pytest.mark.slow
def test_sigterm_keeps_the_checkpoint_and_exits_143_with_the_resume_hint(tmp_path):
    cmd = [sys.executable, "-m", "fire_plugin.cli", "train", "--dataset", "digits", "--model", "digits_cnn",
           "--method", "ce", "--epochs", "200", "--out", "run", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=tmp_path, env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    ckpt = tmp_path / "run" / "checkpoints" / "last.pt"
    deadline = time.monotonic() + 300
    while not ckpt.exists() and proc.poll() is None and time.monotonic() < deadline:
        time.sleep(0.02)
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 143, err.decode()
    assert "terminated (SIGTERM); rerun the same command to resume" in err.decode()
    assert ckpt.exists() and not (tmp_path / "run" / LOCK_NAME).exists()


DEMO_SCRIPT = """
import sys
from fire_plugin.experiments import DigitsRecipe, EvalSpec, run_many
recipe = DigitsRecipe(epochs=500, model="digits_cnn")
jobs = [{"method": "ce", "out": f"{sys.argv[1]}/job{i}", "weight": 0.0, "seed": i, "recipe": recipe,
         "spec": EvalSpec()} for i in range(2)]
if __name__ == "__main__":
    run_many(jobs, 2, verbose=False)
"""


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False
    return "\nState:\tZ" not in state  # a zombie has ended


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc").exists(), reason="reads worker states from /proc")
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGTERM])
def test_demo_workers_end_with_their_parent(tmp_path, sig):
    """Before, killing the demo's parent left its two workers training and writing checkpoints."""
    script = tmp_path / "many.py"
    script.write_text(DEMO_SCRIPT)
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], env=_env(), stderr=subprocess.DEVNULL)
    locks = [tmp_path / f"job{i}" / LOCK_NAME for i in range(2)]
    deadline = time.monotonic() + 300
    pids: list[int] = []
    while len(pids) < 2 and time.monotonic() < deadline:  # each worker holds its run's lock: the pid is in it
        pids = []
        for lock in locks:
            try:
                pids.append(json.loads(lock.read_text())["pid"])
            except (OSError, ValueError, KeyError):
                pass
        time.sleep(0.05)
    assert len(pids) == 2 and parent.pid not in pids
    parent.send_signal(sig)
    parent.wait(timeout=60)
    deadline = time.monotonic() + 30
    while any(_alive(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(_alive(p) for p in pids)

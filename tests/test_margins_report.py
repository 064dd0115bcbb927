"""The margins pipeline (fire_plugin.margins.report) and the ``fire-plugin margins`` command: resume after an
interruption, what the outputs say, the figures, and the command line's refusals."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

import fire_plugin.margins.report as margins_report
from fire_plugin.cli import build_parser, main
from fire_plugin.margins import MarginResult, shielding_report
from fire_plugin.margins.report import run_margins
from fire_plugin.plots import plot_class_margins, plot_margin_histograms

TRACE = {"targets": [0, 1], "max_steps": 40, "batch_size": 3}  # chunks of 3 // 2 = 1 input


@pytest.fixture(scope="module")
def digits_model(digits_train, train_digits_cnn) -> torch.nn.Module:
    return train_digits_cnn(*digits_train, epochs=4)


@pytest.fixture(scope="module")
def checkpoint(digits_model, tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("ckpt") / "digits_cnn.pt"
    torch.save(digits_model.state_dict(), path)
    return str(path)


def _same_result(a: MarginResult, b: MarginResult) -> None:
    for name in ("index", "source", "target", "flipped", "first_class", "margin", "fr_length", "l2", "steps",
                 "status"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name), err_msg=name)
    if a.convergence is not None and b.convergence is not None:
        assert a.convergence == {**b.convergence, "seconds": a.convergence["seconds"]}


# ------------------------------------------------------------------------------------------ resume


def test_interrupted_run_resumes_to_the_same_result(digits_model, digits_test, tmp_path, monkeypatch):
    x, y = digits_test[0][:3], digits_test[1][:3]
    whole = run_margins(digits_model, x, y, tmp_path / "whole", verbose=False, **TRACE)

    real = margins_report.trace_margins
    calls = []

    def interrupted(*args, **kwargs):
        if len(calls) == 1:
            raise KeyboardInterrupt  # Ctrl-C while the second chunk is traced
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(margins_report, "trace_margins", interrupted)
    with pytest.raises(KeyboardInterrupt):
        run_margins(digits_model, x, y, tmp_path / "cut", verbose=False, **TRACE)
    lines = (tmp_path / "cut" / "paths.jsonl").read_text().splitlines()
    assert len(lines) == 2 and json.loads(lines[1])["chunk"] == 0  # the header and the finished chunk
    assert not (tmp_path / "cut" / "margins.json").exists()

    traced = []

    def counting(*args, **kwargs):
        traced.append(len(args[1]))
        return real(*args, **kwargs)

    monkeypatch.setattr(margins_report, "trace_margins", counting)
    resumed = run_margins(digits_model, x, y, tmp_path / "cut", verbose=False, **TRACE)
    assert traced == [1, 1]  # only the two missing chunks (one input each) were traced again
    _same_result(resumed["result"], whole["result"])  # the same computation: bit for bit
    whole_md = (tmp_path / "whole" / "shielding.md").read_text()
    assert (tmp_path / "cut" / "shielding.md").read_text() == whole_md

    # a torn last line (killed while writing) is traced again; a file of other settings is not reused
    path = tmp_path / "cut" / "paths.jsonl"
    text = path.read_text().splitlines()
    path.write_text("\n".join([*text[:-1], text[-1][: len(text[-1]) // 2]]) + "\n")
    traced.clear()
    again = run_margins(digits_model, x, y, tmp_path / "cut", verbose=False, check_convergence=False, **TRACE)
    assert traced == [1]
    _same_result(again["result"], whole["result"])
    traced.clear()
    run_margins(digits_model, x, y, tmp_path / "cut", verbose=False, check_convergence=False,
                **{**TRACE, "max_steps": 30})
    assert traced == [1, 1, 1]


# ------------------------------------------------------------------------------------------ outputs and figures


def test_synthetic_inputs_say_so_everywhere(digits_model, tmp_path):
    x, y = margins_report.synthetic_inputs(digits_model, (1, 8, 8), 2)
    note = "SYNTHETIC: 2 smooth random images"
    run_margins(digits_model, x, y, tmp_path, inputs_note=note, verbose=False, check_convergence=False,
                targets=[0, 1], max_steps=3)
    assert (tmp_path / "margins.csv").read_text().startswith("# inputs: SYNTHETIC")
    assert (tmp_path / "shielding.md").read_text().startswith("Inputs: SYNTHETIC")
    payload = json.loads((tmp_path / "margins.json").read_text())
    assert payload["synthetic"] is True and payload["inputs"].startswith("SYNTHETIC")
    with pytest.raises(FileNotFoundError, match="--synthetic always"):
        margins_report.margin_inputs("cifar10", model=digits_model, n_inputs=2, data_dir=tmp_path / "none")


def test_empty_table_says_why(digits_model, digits_test, tmp_path):
    x = digits_test[0][:3]
    with torch.no_grad():
        wrong = (digits_model(x).argmax(1) + 1) % 10  # every label wrong: nothing is classified correctly
    out = run_margins(digits_model, x, wrong, tmp_path, verbose=False)
    text = (tmp_path / "shielding.md").read_text()
    assert "No path was traced: no input was classified correctly (3 of 3 misclassified)" in text
    assert out["report"].total_paths == 0 and "no input" in json.dumps(out["report"].to_dict()["notes"])


def test_class_margins_figure_shows_shielding_and_blank_classes():
    r = MarginResult(index=np.array([0, 0, 1]), source=np.array([0, 0, 1]), target=np.array([1, 2, 2]),
                     flipped=np.array([True, True, False]), first_class=np.array([1, 1, 1]),
                     shielded=np.array([False, True, False]), fr_length=np.array([0.5, 0.7, 2.0]),
                     l2=np.array([1.0, 2.0, 3.0]), linf=np.array([0.1, 0.2, 0.3]), steps=np.array([5, 7, 9]),
                     status=np.array(["flipped", "flipped", "max_steps"]), num_classes=3, n_inputs=2)
    report = shielding_report(r, ["a", "b", "c"])
    fig = plot_class_margins(report, note="SYNTHETIC inputs")
    ax_sh = fig.axes[0]
    heights = [patch.get_height() for patch in ax_sh.patches]
    np.testing.assert_allclose(heights, report.shielding_pct)  # [0, 50, 0]: the shielding % it is named for
    assert "shielding" in ax_sh.get_ylabel()
    assert "SYNTHETIC" in fig._suptitle.get_text()
    assert fig._supxlabel.get_text() == "blank: no successful path from b, c"
    hist = plot_margin_histograms({"ce": r, "fire": r})
    assert hist._suptitle.get_text().startswith("Fisher-Rao margins")
    labels = hist.axes[0].get_legend_handles_labels()[1]
    assert labels == ["ce (2 paths)", "fire (2 paths)"]


# ------------------------------------------------------------------------------------------ command line


def test_every_margins_flag_has_help():
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["margins"]
    missing = [a.option_strings for a in sub._actions if a.help is None]
    assert not missing


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--targets", "a"], "argument --targets: must be class indices"),
        (["--targets", "1.7"], "argument --targets: must be class indices"),
        (["--max-steps", "2000000"], "argument --max-steps: must be an int in [1, 1000000]"),
        (["--mode", "exact"], "argument --mode: invalid choice"),
    ],
)
def test_cli_refuses_bad_flags(extra, message, capsys, tmp_path):
    with pytest.raises(SystemExit) as info:
        main(["margins", "--model", "digits_cnn", "--out", str(tmp_path), *extra])
    assert info.value.code == 2 and message in capsys.readouterr().err


def test_cli_errors_name_the_argument(checkpoint, tmp_path, capsys):
    def error(argv):
        assert main(["margins", *argv, "--quiet"]) == 2
        return capsys.readouterr().err.strip().splitlines()[-1]

    base = ["--model", "digits_cnn", "--checkpoint", checkpoint, "--dataset", "digits", "--n-inputs", "2"]
    out_file = tmp_path / "a_file"
    out_file.write_text("x")
    assert "is an existing file" in error([*base, "--out", str(out_file)])
    assert "--model 'nosuch'" in error(["--model", "nosuch", "--dataset", "digits", "--out", str(tmp_path / "o")])
    line = error(["--model", "lenet_pi", "--checkpoint", checkpoint, "--dataset", "digits", "--out",
                  str(tmp_path / "o")])
    assert checkpoint in line and "another architecture" in line and "lenet_pi" in line.lower()
    assert "cifar10" in error(["--model", "autoattack-resnet18", "--dataset", "cifar10", "--data-dir",
                               str(tmp_path / "nodata"), "--out", str(tmp_path / "o")])
    nan = torch.rand(2, 1, 8, 8)
    nan[1, 0, 0, 0] = float("nan")
    torch.save((nan, torch.tensor([1, 2])), tmp_path / "nan.pt")
    assert "NaN" in error([*base, "--inputs", str(tmp_path / "nan.pt"), "--out", str(tmp_path / "o")])
    torch.save((torch.rand(2, 1, 8, 8), torch.tensor([1.7, 2.0])), tmp_path / "float.pt")
    assert "integer class indices" in error([*base, "--inputs", str(tmp_path / "float.pt"), "--out",
                                             str(tmp_path / "o")])
    torch.save((torch.rand(2, 3, 8, 8), torch.tensor([1, 2])), tmp_path / "rgb.pt")
    assert "(1, 8, 8)" in error([*base, "--inputs", str(tmp_path / "rgb.pt"), "--out", str(tmp_path / "o")])
    assert "inputs file" in error([*base, "--inputs", str(tmp_path / "none.pt"), "--out", str(tmp_path / "o")])
    (tmp_path / "junk.pt").write_bytes(b"not a torch file")
    assert "inputs file" in error([*base, "--inputs", str(tmp_path / "junk.pt"), "--out", str(tmp_path / "o")])


def test_cli_paper_mode_and_convergence_study(checkpoint, tmp_path, capsys):
    base = ["--model", "digits_cnn", "--checkpoint", checkpoint, "--dataset", "digits", "--n-inputs", "2",
            "--targets", "3,5", "--quiet"]
    assert main(["margins", *base, "--mode", "paper", "--out", str(tmp_path / "p")]) == 0
    printed = capsys.readouterr().out
    assert "Traced with mode=paper, step=1" in printed and "solver=cg" in printed
    payload = json.loads((tmp_path / "p" / "margins.json").read_text())
    assert payload["report"]["traced_with"]["mode"] == "paper"
    margins = np.array(payload["result"]["paths"]["margin"])
    np.testing.assert_array_equal(margins, np.round(margins))
    assert main(["margins", *base, "--convergence", "--steps", "0.5 0.2", "--dampings", "0.1",
                 "--out", str(tmp_path / "c")]) == 0
    study = json.loads((tmp_path / "c" / "convergence.json").read_text())
    assert [r["step"] for r in study["rows"]] == [0.5, 0.2] and study["rows"][0]["damping"] == 0.1
    assert (tmp_path / "c" / "convergence.png").read_bytes()[:4] == b"\x89PNG"
    assert "| 0.1 | 0.5 |" in (tmp_path / "c" / "convergence.md").read_text()


@pytest.mark.slow
def test_killed_cli_run_resumes_to_the_same_result(checkpoint, tmp_path):
    """kill -9 after the first chunk was written, rerun: the same files as an uninterrupted run."""
    import os
    import signal
    import subprocess
    import sys
    import time

    def argv(out):
        return [sys.executable, "-m", "fire_plugin.cli", "margins", "--model", "digits_cnn", "--checkpoint",
                checkpoint, "--dataset", "digits", "--n-inputs", "12", "--targets", "0,1", "--batch-size", "2",
                "--out", str(out), "--quiet"]

    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    whole = tmp_path / "whole"
    subprocess.run(argv(whole), check=True, env=env, capture_output=True)
    cut = tmp_path / "cut"
    proc = subprocess.Popen(argv(cut), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    progress = cut / "paths.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:
        if progress.exists() and len(progress.read_text().splitlines()) >= 2:
            break
        time.sleep(0.02)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    written = len(progress.read_text().splitlines())
    assert 2 <= written < 13 and not (cut / "margins.json").exists()  # killed part-way
    subprocess.run(argv(cut), check=True, env=env, capture_output=True)
    a = json.loads((whole / "margins.json").read_text())
    b = json.loads((cut / "margins.json").read_text())
    assert a["result"]["paths"] == b["result"]["paths"]  # the same computation: bit for bit
    assert a["report"]["notes"] == b["report"]["notes"]
    assert (whole / "shielding.md").read_text() == (cut / "shielding.md").read_text()

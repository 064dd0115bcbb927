"""Bad input gets one line naming the argument or the file and what to do (exit 2), never a bare OS or int() error,
and no setting is silently ignored."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fire_plugin.cli import main


def _error(capsys) -> str:
    return capsys.readouterr().err


def test_targets_that_are_not_class_indices(tmp_path, capsys):
    """Was: 'invalid literal for int() with base 10: 'a''."""
    with pytest.raises(SystemExit) as stop:  # argparse's usage error
        main(["margins", "--model", "digits_cnn", "--targets", "a", "--out", str(tmp_path / "m")])
    assert stop.value.code == 2 and "--targets: must be class indices such as '3,5', got 'a'" in _error(capsys)


@pytest.mark.parametrize("command", [["gaussian"], ["margins", "--model", "digits_cnn"],
                                     ["train", "--dataset", "digits", "--epochs", "1"],
                                     ["evaluate", "--model", "digits_cnn", "--dataset", "digits"]])
def test_out_that_is_a_file(tmp_path, capsys, command):
    """Was: '[Errno 17] File exists'."""
    (tmp_path / "taken").write_text("x")
    assert main([*command, "--out", str(tmp_path / "taken")]) == 2
    assert f"fire-plugin: error: --out '{tmp_path / 'taken'}' is an existing file; pass a folder" in _error(capsys)


@pytest.mark.parametrize("command", ["evaluate", "margins"])
def test_an_unknown_model_is_named_as_the_model_not_as_a_zoo_problem(tmp_path, capsys, command):
    """Was: "dataset='digits' has no RobustBench zoo" for a mistyped architecture."""
    assert main([command, "--model", "digits_cnm", "--dataset", "digits", "--out", str(tmp_path / "o")]) == 2
    err = _error(capsys)
    assert "--model 'digits_cnm' is not an architecture" in err and "digits_cnn" in err


def test_inputs_problems_name_the_inputs_file(tmp_path):
    """Was: "checkpoint 'x.pt' is corrupt" for the file given to --inputs."""
    from fire_plugin.margins.report import load_inputs

    (tmp_path / "x.pt").write_bytes(b"\x80\x02not a torch file")
    with pytest.raises(ValueError, match=r"^inputs file .*x\.pt'") as info:
        load_inputs(tmp_path / "x.pt")
    assert "checkpoint" not in str(info.value) and "weights_only" not in str(info.value)


def test_bench_only_a_bogus_name_exits_2_listing_the_names(capsys):
    """Was: nothing run, exit 0."""
    assert main(["bench", "--only", "bogus"]) == 2
    err = _error(capsys)
    assert "--only 'bogus' is not a benchmark; allowed: ['trainers', 'distances'" in err


def test_bench_json_into_a_folder_is_refused_before_the_run(tmp_path, capsys):
    """Was: refused only after the whole suite had run."""
    assert main(["bench", "--only", "distances", "--json", str(tmp_path)]) == 2
    assert f"--json '{tmp_path}' is a folder" in _error(capsys)


def test_extra_data_on_a_preset_without_extra_fraction_is_refused(tmp_path):
    """Was: silently ignored (the run trained without the extra data)."""
    from fire_plugin.presets import load_preset

    np.savez(tmp_path / "extra.npz", image=np.zeros((2, 28, 28, 1), np.uint8), label=np.zeros(2, np.int64))
    with pytest.raises(ValueError, match=r"extra_data=.* is given but extra_fraction=0, so it would not be used"):
        load_preset("mnist-smallcnn-fire", overrides=[f"extra_data={tmp_path / 'extra.npz'}"])
    cfg = load_preset("mnist-smallcnn-fire", overrides=[f"extra_data={tmp_path / 'extra.npz'}",
                                                        "extra_fraction=0.5"])
    assert cfg["extra_fraction"] == 0.5


def test_art_trainer_fit_on_an_empty_x_names_x():
    """Was: torch's 'num_samples should be a positive integer value, but got num_samples=0'."""
    from art.estimators.classification import PyTorchClassifier

    from fire_plugin.trainers import FIRETrainer

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    classifier = PyTorchClassifier(model, loss=torch.nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                                   clip_values=(0.0, 1.0), optimizer=torch.optim.SGD(model.parameters(), lr=0.1))
    trainer = FIRETrainer(classifier, lam=1.0, eps=0.1, eps_step=0.03, max_iter=1, verbose=False)
    with pytest.raises(ValueError, match=r"^x holds no samples \(shape \(0, 1, 8, 8\)\)"):
        trainer.fit(np.zeros((0, 1, 8, 8), np.float32), np.zeros(0, np.int64), nb_epochs=1)

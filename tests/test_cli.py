"""The fire-plugin console script: subcommand listing, a tiny train + evaluate round trip, argument errors."""

from __future__ import annotations

import json

import pytest

from fire_plugin import __version__
from fire_plugin.cli import SUBCOMMANDS, main
from fire_plugin.robustbench_io import read_model_info


def test_no_arguments_lists_version_and_subcommands(capsys):
    assert main([]) == 0
    out = capsys.readouterr().out
    assert __version__ in out
    for name in SUBCOMMANDS:
        assert name in out


def test_train_then_evaluate_roundtrip(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", "--dataset", "digits", "--model", "digits_cnn", "--method", "fire", "--lam", "1",
                 "--eps", "0.1", "--steps", "2", "--epochs", "1", "--batch-size", "256", "--lr", "0.05",
                 "--out", str(run), "--quiet"]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "fire" and len(summary["history"]) == 1
    assert (run / "checkpoints" / "last.pt").exists() and (run / "training.png").exists()
    capsys.readouterr()
    out = tmp_path / "eval"
    assert main(["evaluate", "--model", "digits_cnn", "--checkpoint", str(run / "checkpoints" / "last.pt"),
                 "--dataset", "digits", "--eps", "0.1", "--attacks", "clean", "pgd", "frpgd",
                 "--n-examples", "40", "--out", str(out), "--quiet"]) == 0
    result = json.loads((out / "eval.json").read_text())
    assert 0 <= result["pgd_acc"] <= result["clean_acc"] <= 1
    assert result["frpgd_acc"] is not None


def test_evaluate_writes_model_info_with_autoattack(tmp_path, monkeypatch):
    """AutoAttack (two of its attacks, to stay fast) on a freshly trained model, and the RobustBench JSON."""
    run = tmp_path / "run"
    main(["train", "--dataset", "digits", "--model", "digits_cnn", "--method", "ce", "--epochs", "1",
          "--batch-size", "128", "--lr", "0.05", "--out", str(run), "--quiet"])
    import fire_plugin.cli as cli
    from fire_plugin import evaluation

    real = evaluation.evaluate
    monkeypatch.setattr(evaluation, "evaluate",
                        lambda *a, **k: real(*a, **k, autoattack_attacks=("apgd-ce",)))
    with pytest.warns(UserWarning):
        cli.main(["evaluate", "--model", "digits_cnn", "--checkpoint", str(run / "checkpoints" / "last.pt"),
                  "--dataset", "digits", "--eps", "0.1", "--attacks", "clean", "autoattack", "--n-examples", "20",
                  "--model-id", "Test2026Digits", "--out", str(tmp_path / "eval"), "--quiet"])
    info = read_model_info(tmp_path / "eval" / "model_info" / "digits" / "Linf" / "Test2026Digits.json")
    assert info.dataset == "digits" and info.eps == "0.1"
    assert float(info.autoattack_acc) <= float(info.clean_acc)


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--out", "x", "--epochs", "0"])
    assert "epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--out", "x", "--method", "pgd"])

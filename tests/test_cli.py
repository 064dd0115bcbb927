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
    with pytest.warns(UserWarning):  # a subset of AutoAttack is not what RobustBench reports: said in the file
        assert main(["evaluate", "--model", "digits_cnn", "--checkpoint", str(run / "checkpoints" / "last.pt"),
                     "--dataset", "digits", "--eps", "0.1", "--attacks", "clean", "autoattack", "--n-examples", "20",
                     "--aa-attacks", "apgd-ce", "--model-id", "Test2026Digits", "--out", str(tmp_path / "eval"),
                     "--quiet"]) == 0
    info = read_model_info(tmp_path / "eval" / "model_info" / "digits" / "Linf" / "Test2026Digits.json")
    assert info.dataset == "digits" and info.eps == "0.1"
    assert float(info.autoattack_acc) <= float(info.clean_acc)


def test_bad_arguments_exit_with_usage(capsys):
    with pytest.raises(SystemExit):
        main(["train", "--out", "x", "--epochs", "0"])
    assert "epochs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["train", "--out", "x", "--method", "pgd"])


_TINY = ["--dataset", "digits", "--model", "digits_cnn", "--eps", "0.1", "--steps", "1", "--epochs", "1",
         "--batch-size", "512", "--lr", "0.05", "--quiet"]


def test_user_errors_print_one_line_and_exit_2(tmp_path, capsys):
    status = main(["train", *_TINY, "--model", "no_such_net", "--out", str(tmp_path / "a")])
    err = capsys.readouterr().err
    assert status == 2 and err.startswith("fire-plugin: error: ") and err.count("\n") == 1
    assert "no_such_net" in err and "digits_cnn" in err and "Traceback" not in err
    # -v adds the traceback
    assert main(["-v", "train", *_TINY, "--model", "no_such_net", "--out", str(tmp_path / "a")]) == 2
    assert "Traceback" in capsys.readouterr().err


def test_out_must_be_writable_before_training(tmp_path, capsys):
    target = tmp_path / "file.txt"
    target.write_text("x")
    assert main(["train", *_TINY, "--out", str(target)]) == 2
    assert "is an existing file" in capsys.readouterr().err
    # user-chosen dirs may contain '..'
    (tmp_path / "runs").mkdir()
    assert main(["train", *_TINY, "--method", "ce", "--out", str(tmp_path / "runs" / ".." / "runs" / "e")]) == 0
    assert (tmp_path / "runs" / "e" / "summary.json").exists()


def test_resume_with_another_configuration_is_refused(tmp_path, capsys):
    out = str(tmp_path / "run")
    assert main(["train", *_TINY, "--out", out]) == 0
    capsys.readouterr()
    assert main(["train", *_TINY, "--method", "trades", "--lam", "0.5", "--lr", "1e6", "--epochs", "2",
                 "--out", out]) == 2
    err = capsys.readouterr().err
    assert "method" in err and "lr" in err and "--no-resume" in err
    assert main(["train", *_TINY, "--method", "trades", "--lam", "0.5", "--epochs", "1", "--no-resume",
                 "--out", out]) == 0


def test_one_epoch_trains_at_the_base_learning_rate(tmp_path):
    run = tmp_path / "run"
    assert main(["train", *_TINY, "--method", "ce", "--out", str(run)]) == 0
    history = json.loads((run / "summary.json").read_text())["history"]
    assert history[0]["lr"] == pytest.approx(0.05)


def test_model_id_is_checked_before_evaluating(tmp_path, capsys):
    for bad in ("Bad/Id", "Trailing\n", ".."):
        assert main(["evaluate", "--model", "digits_cnn", "--dataset", "digits", "--eps", "0.1", "--model-id", bad,
                     "--attacks", "clean", "autoattack", "--out", str(tmp_path / "e")]) == 2
        assert "model_id" in capsys.readouterr().err
    assert main(["evaluate", "--model", "digits_cnn", "--dataset", "digits", "--eps", "0.1", "--model-id",
                 "Good2026Id", "--attacks", "clean", "--out", str(tmp_path / "e")]) == 2
    assert "autoattack" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["train", "evaluate"])
@pytest.mark.parametrize("eps", ["0", "inf", "nan", "-1"])
def test_eps_must_be_positive_and_finite_everywhere(command, eps, capsys):
    with pytest.raises(SystemExit) as info:
        main([command, "--model", "digits_cnn", "--out", "x", "--eps", eps])
    assert info.value.code == 2 and "--eps" in capsys.readouterr().err


def test_checkpoint_errors_name_the_file(tmp_path, capsys):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    assert main(["evaluate", "--model", "digits_cnn", "--checkpoint", str(empty), "--dataset", "digits",
                 "--eps", "0.1", "--attacks", "clean", "--out", str(tmp_path / "e")]) == 2
    assert "empty.pt" in capsys.readouterr().err
    assert main(["evaluate", "--model", "digits_cnn", "--checkpoint", str(tmp_path), "--dataset", "digits",
                 "--eps", "0.1", "--attacks", "clean", "--out", str(tmp_path / "e")]) == 2
    assert "directory" in capsys.readouterr().err


def test_train_preset_smoke_and_bad_overrides(tmp_path, capsys):
    out = tmp_path / "p"
    assert main(["train", "--preset", "mnist-smallcnn-trades", "--smoke", "--out", str(out), "--quiet"]) == 0
    assert (out / "config.json").exists()
    capsys.readouterr()
    assert main(["train", "--preset", "mnist-smallcnn-trades", "--smoke", "--set", "no_such_key=1",
                 "--out", str(tmp_path / "q"), "--quiet"]) == 2
    assert "no_such_key" in capsys.readouterr().err
    assert main(["train", "--set", "epochs=3", "--out", str(tmp_path / "r")]) == 2
    assert "--preset" in capsys.readouterr().err


def test_margins_on_digits_and_on_the_shipped_resnet18(tmp_path, capsys):
    run = tmp_path / "run"
    assert main(["train", *_TINY, "--method", "ce", "--out", str(run)]) == 0
    out = tmp_path / "m"
    assert main(["margins", "--model", "digits_cnn", "--checkpoint", str(run / "checkpoints" / "last.pt"),
                 "--dataset", "digits", "--n-inputs", "4", "--max-steps", "30", "--out", str(out), "--quiet"]) == 0
    printed = capsys.readouterr().out
    assert "digits test images" in printed
    data = json.loads((out / "margins.json").read_text())
    assert len(data["result"]["paths"]["source"]) == 4 * 9  # every other class of every input
    assert all((out / name).exists() for name in ("path_matrix.png", "class_margins.png", "margin_histograms.png"))
    # a file of inputs instead of test images
    import torch

    torch.save((torch.rand(2, 1, 8, 8), torch.tensor([1, 2])), tmp_path / "in.pt")
    assert main(["margins", "--model", "digits_cnn", "--checkpoint", str(run / "checkpoints" / "last.pt"),
                 "--dataset", "digits", "--inputs", str(tmp_path / "in.pt"), "--targets", "3",
                 "--max-steps", "5", "--out", str(tmp_path / "m2"), "--quiet"]) == 0
    assert "2 inputs from" in capsys.readouterr().out
    assert main(["margins", "--model", "autoattack-resnet18", "--dataset", "cifar10", "--n-inputs", "2",
                 "--synthetic", "always", "--targets", "3", "--max-steps", "2", "--out", str(tmp_path / "r18"),
                 "--quiet"]) == 0
    assert "SYNTHETIC" in capsys.readouterr().out


def _write_info(path, dataset="cifar10", clean="83.50", aa="52.00"):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({
        "link": "", "name": "test model", "authors": "", "additional_data": False, "number_forward_passes": 1,
        "dataset": dataset, "venue": "N/A", "architecture": "WideResNet-34-10", "eps": "8/255", "clean_acc": clean,
        "reported": aa, "autoattack_acc": aa}))


def test_leaderboard_places_a_file_and_refuses_digits(tmp_path, capsys):
    info = tmp_path / "model_info" / "cifar10" / "Linf" / "Test2026Model.json"
    _write_info(info)
    assert main(["leaderboard", "--model-info", str(info), "--out", str(tmp_path / "lb")]) == 0
    out = capsys.readouterr().out
    assert "**Test2026Model**" in out and (tmp_path / "lb" / "placement.png").exists()
    digits = tmp_path / "model_info" / "digits" / "Linf" / "Test2026Digits.json"
    _write_info(digits, dataset="digits")
    assert main(["leaderboard", "--model-info", str(digits), "--out", str(tmp_path / "lb2")]) == 2
    assert "digits" in capsys.readouterr().err


def test_bench_quick_runs_one_benchmark(tmp_path, capsys):
    assert main(["bench", "--quick", "--only", "distances", "--json", str(tmp_path / "perf.json")]) == 0
    rows = json.loads((tmp_path / "perf.json").read_text())["rows"]
    assert rows and all(r["ratio"] > 0 for r in rows if r.get("ratio") is not None)


def test_train_isometry_method(tmp_path):
    run = tmp_path / "iso"
    assert main(["train", *_TINY, "--method", "isometry", "--out", str(run)]) == 0
    summary = json.loads((run / "summary.json").read_text())
    assert summary["method"] == "isometry" and summary["history"][0]["adv_acc"] is None
    assert (summary["estimator"], summary["n_probes"]) == ("hutchinson", 1)  # the default estimator
    exact = tmp_path / "exact"
    assert main(["train", *_TINY, "--method", "isometry", "--estimator", "exact", "--out", str(exact)]) == 0
    assert json.loads((exact / "summary.json").read_text())["estimator"] == "exact"


def test_train_estimator_flags_need_the_isometry_method(tmp_path, capsys):
    assert main(["train", *_TINY, "--estimator", "exact", "--out", str(tmp_path / "x")]) == 2
    assert "--estimator and --probes apply to --method isometry, not --method fire" in capsys.readouterr().err
    assert main(["train", *_TINY, "--method", "isometry", "--estimator", "deflated", "--out", str(tmp_path / "d")]) == 2
    assert "n_probes=1 is not allowed with estimator='deflated'" in capsys.readouterr().err


# ------------------------------------------------------------------------------------------- issue 22 / 16


def test_eps_accepts_fractions_wherever_eps_is_given():
    from fire_plugin.cli import build_parser

    parser = build_parser()
    for argv in (["train", "--eps", "8/255"], ["evaluate", "--model", "m", "--eps", "8/255"],
                 ["gaussian", "--eps", "1/10"]):
        args = parser.parse_args(argv)
        assert args.eps == pytest.approx(float(argv[-1].split("/")[0]) / float(argv[-1].split("/")[1]), rel=1e-15)
    with pytest.raises(SystemExit):
        parser.parse_args(["evaluate", "--model", "m", "--eps", "8/0"])


def test_train_flags_with_a_preset_are_applied_as_set_and_said(tmp_path, capsys, caplog):
    out = tmp_path / "p"
    with caplog.at_level("WARNING", logger="fire_plugin.cli"):
        assert main(["train", "--preset", "mnist-smallcnn-fire", "--smoke", "--epochs", "1", "--lr", "0.01",
                     "--method", "ace", "--eps", "8/255", "--out", str(out), "--quiet"]) == 0
    assert "--set method=madry --set eps=0.03137254901960784 --set epochs=1 --set lr=0.01" in caplog.text
    cfg = json.loads((out / "config.json").read_text())
    assert (cfg["method"], cfg["lr"], cfg["eps"]) == ("madry", 0.01, 8 / 255)
    capsys.readouterr()
    assert main(["train", "--preset", "mnist-smallcnn-fire", "--norm", "L2", "--out", str(tmp_path / "q")]) == 2
    assert "--norm cannot be combined with --preset" in capsys.readouterr().err
    assert main(["train", "--preset", "mnist-smallcnn-fire", "--epochs", "2", "--set", "epochs=3",
                 "--out", str(tmp_path / "q")]) == 2
    assert "--set epochs and the train flag" in capsys.readouterr().err
    assert main(["train", "--preset", "mnist-smallcnn-fire", "--method", "mart", "--out", str(tmp_path / "q")]) == 2
    assert "--method mart cannot be combined with --preset" in capsys.readouterr().err
    assert not (tmp_path / "q").exists()  # refused before any work


def test_presets_list_and_show(capsys):
    from fire_plugin.presets import SCHEMA, list_presets

    assert main(["presets", "list"]) == 0
    out = capsys.readouterr().out
    assert all(name in out for name in list_presets()) and all(key in out for key in SCHEMA if key != "description")
    assert main(["presets", "show", "mnist-lenet-isometry"]) == 0
    out = capsys.readouterr().out
    assert "delta_over_epsilon  * 0.001" in out and "n_train" in out
    assert main(["presets", "show"]) == 2
    assert "needs a NAME among ['cifar10-wrn28-extra-fire'" in capsys.readouterr().err
    assert main(["presets", "show", "bogus"]) == 2
    assert "got 'bogus'" in capsys.readouterr().err


def test_train_defaults_are_the_library_defaults():
    """The CLI keeps torch-free copies of train's defaults (its flags default to None, to see them with --preset)."""
    import inspect

    from fire_plugin.cli import TRAIN_DEFAULTS
    from fire_plugin.experiments import train

    params = inspect.signature(train).parameters
    library_name = {"probes": "n_probes"}  # flag -> keyword of experiments.train where they differ
    assert {k: params[library_name.get(k, k)].default for k in TRAIN_DEFAULTS} == TRAIN_DEFAULTS


def test_smoke_keeps_checkpoints_only_when_asked(tmp_path, capsys):
    # (without the flag no checkpoints stay: tests/test_presets.py::test_smoke_keeps_no_checkpoints_unless_asked)
    assert main(["train", "--preset", "mnist-smallcnn-fire", "--smoke", "--keep-checkpoints", "--out",
                 str(tmp_path / "b"), "--quiet"]) == 0
    assert (tmp_path / "b" / "checkpoints" / "last.pt").exists()
    capsys.readouterr()
    assert main(["train", "--preset", "mnist-smallcnn-fire", "--keep-checkpoints", "--out", str(tmp_path / "c")]) == 2
    assert "--keep-checkpoints applies to --smoke" in capsys.readouterr().err


def test_the_peers_info_lines_are_quiet_unless_verbose(monkeypatch):
    """`fire-plugin bench` printed ART's "Inferred 3 hidden layers" for every classifier it built."""
    import logging

    from fire_plugin import cli

    monkeypatch.setattr(logging.getLogger("art"), "level", logging.NOTSET)
    assert cli.main(["presets", "list"]) == 0
    assert logging.getLogger("art").getEffectiveLevel() == logging.WARNING
    logging.getLogger("art").setLevel(logging.NOTSET)
    assert cli.main(["-v", "presets", "list"]) == 0
    assert logging.getLogger("art").level == logging.NOTSET

"""Start-up: what ``fire-plugin --help`` and ``import fire_plugin.<module>`` import (fresh interpreters)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import fire_plugin
from fire_plugin import _compat, cli

HEAVY = ("torch", "timm", "torchattacks", "art", "robustbench", "pyautoattack", "scipy", "matplotlib", "sklearn")
TIMM_WARNING = "`torch.jit.interface` is deprecated"


def _probe(code: str, *flags: str) -> subprocess.CompletedProcess[str]:
    """Run ``code`` in a fresh interpreter (this checkout first on the path); the last stdout line is JSON."""
    root = str(Path(fire_plugin.__file__).resolve().parents[1])
    return subprocess.run([sys.executable, *flags, "-c", f"import sys; sys.path.insert(0, {root!r})\n" + code],
                          capture_output=True, text=True, timeout=300)


def _json_tail(done: subprocess.CompletedProcess[str]) -> dict:
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_cli_help_version_and_argument_errors_import_no_torch():
    # Before: `fire-plugin --help` imported fire_plugin (everything: torch, timm, torchattacks, ART): 8-15 s.
    code = textwrap.dedent(
        f"""
        import contextlib, io, json, sys
        from fire_plugin.cli import main
        codes = {{}}
        for argv in (["--help"], ["--version"], ["train", "--help"], ["bench", "--help"], ["margins", "--help"],
                     ["train", "--epochs", "0"], ["train", "--method", "bogus"], ["evaluate"], ["nope"], []):
            with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()) as err:
                try:
                    codes[" ".join(argv)] = main(argv)
                except SystemExit as exc:
                    codes[" ".join(argv)] = exc.code
        import fire_plugin
        names = dir(fire_plugin)
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        print(json.dumps({{"codes": codes, "heavy": heavy, "dir_ok": set(fire_plugin.__all__) <= set(names)}}))
        """
    )
    out = _json_tail(_probe(code))
    assert out["heavy"] == [], out
    assert out["codes"] == {"--help": 0, "--version": 0, "train --help": 0, "bench --help": 0, "margins --help": 0,
                            "train --epochs 0": 2, "train --method bogus": 2, "evaluate": 2, "nope": 2, "": 0}
    assert out["dir_ok"]


def test_distances_and_losses_import_torch_only_and_timm_registration_follows_the_users_import():
    code = textwrap.dedent(
        f"""
        import json, sys
        import fire_plugin.distances, fire_plugin.losses
        after_losses = sorted(m for m in {HEAVY!r} if m in sys.modules)
        import timm  # the user's own import: our architectures get registered, its warning is not ours to hide
        print(json.dumps({{"after_losses": after_losses, "registered": timm.is_model("wrn34_10"),
                          "digits": timm.create_model("digits_cnn", num_classes=3).num_classes}}))
        """
    )
    done = _probe(code, "-W", "always::FutureWarning")
    out = _json_tail(done)
    assert out["after_losses"] == ["torch"]
    assert out["registered"] and out["digits"] == 3
    assert TIMM_WARNING in done.stderr  # the user's import of timm is left alone


def test_our_import_of_timm_is_silent():
    done = _probe("import fire_plugin.models, timm, json; print(json.dumps(timm.is_model('small_cnn')))",
                  "-W", "always::FutureWarning")
    assert _json_tail(done) is True
    assert TIMM_WARNING not in done.stderr, done.stderr[-2000:]


# ------------------------------------------------------------------------------------------ in this process


def test_every_public_name_loads_lazily_from_its_module():
    import importlib

    assert sorted(fire_plugin.__all__) == sorted(["__version__", *fire_plugin._LAZY])
    assert len(set(fire_plugin.__all__)) == len(fire_plugin.__all__)
    for name, module in fire_plugin._LAZY.items():
        assert getattr(fire_plugin, name) is getattr(importlib.import_module(f"fire_plugin.{module}"), name), name
    assert set(fire_plugin.__all__) <= set(dir(fire_plugin))
    assert fire_plugin.engine is importlib.import_module("fire_plugin.engine")  # submodules as attributes
    with pytest.raises(AttributeError, match="no attribute 'not_a_name'"):
        _ = fire_plugin.not_a_name


def test_cli_torch_free_names_match_the_library():
    from fire_plugin.data import DATASETS
    from fire_plugin.experiments import METHODS
    from fire_plugin.methods import ALIASES
    from fire_plugin.presets import list_presets

    assert set(cli.METHOD_CHOICES) == set(METHODS) | set(ALIASES)
    assert set(cli.DATASET_CHOICES) == set(DATASETS)
    assert cli.preset_names() == list_presets()
    from fire_plugin.bench.perf import BENCHMARKS, discover

    assert set(cli.BENCH_NAMES) == set(BENCHMARKS) == set(discover())


def test_autoattack_finder_leaves_a_real_autoattack_alone(tmp_path, monkeypatch):
    finder = _compat._AutoattackFinder()
    spec = finder.find_spec("autoattack")
    assert spec is not None and isinstance(spec.loader, _compat._AliasLoader)  # no real one here: the alias
    package = tmp_path / "autoattack"
    package.mkdir()
    (package / "__init__.py").write_text("REAL = True\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    assert finder.find_spec("autoattack") is None  # a real autoattack on the path: found by the other finders


def test_bench_startup_times_a_fresh_interpreter_and_reports_its_failures():
    from fire_plugin.bench import bench_startup as bench

    env = bench._env()
    wall, cpu = bench.time_once(["-c", "sum(range(3_000_000))"], env=env)
    assert wall > 0 and 0 < cpu <= wall * 1.5  # one thread: its CPU time cannot much exceed its wall time
    with pytest.raises(RuntimeError, match="exited with 3"):
        bench.time_once(["-c", "raise SystemExit(3)"], env=env)
    assert set(bench.CASES) == {case for r in bench.ROWS for case in r[1:3]}  # every case is in a row


def test_every_flag_of_every_subcommand_has_a_help_text():
    import argparse

    def walk(parser: argparse.ArgumentParser, path: str) -> list[str]:
        missing = []
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    missing += walk(sub, f"{path} {name}")
                continue
            if action.help == argparse.SUPPRESS:
                continue
            if not (action.help or "").strip():
                missing.append(f"{path} {'/'.join(action.option_strings) or action.dest}")
        return missing

    parser = cli.build_parser()
    subcommands = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    assert set(cli.SUBCOMMANDS) <= set(subcommands.choices)  # the walk reaches every subcommand
    assert walk(parser, "fire-plugin") == []


def test_the_margins_package_imports_torch_only_and_leaves_its_report_pipeline_unloaded():
    # fire_plugin.margins is a package since issue 18; its __init__ loads the tracing modules (torch, numpy), not
    # report (data, plots, pretrained: matplotlib, timm), which the CLI and the examples import on their own.
    code = textwrap.dedent(
        f"""
        import json, sys
        import fire_plugin.margins
        heavy = sorted(m for m in {HEAVY!r} if m in sys.modules)
        ours = sorted(m for m in sys.modules if m.startswith("fire_plugin."))
        print(json.dumps({{"heavy": heavy, "ours": ours}}))
        """
    )
    out = _json_tail(_probe(code))
    assert out["heavy"] == ["torch"]
    assert "fire_plugin.margins.report" not in out["ours"] and "fire_plugin.plots" not in out["ours"]
    assert "fire_plugin.margins.trace" in out["ours"]

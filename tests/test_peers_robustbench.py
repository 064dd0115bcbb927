"""RobustBench's own code on our files: its leaderboard consumers, and ``import robustbench`` after ours.

The consumers are those of the installed robustbench package: ``utils.get_leaderboard_latex``,
``utils.get_leaderboard_bibtex`` and ``leaderboard.template.generate_leaderboard`` (whose HTML template is not
shipped in the wheel: a template that dumps each model runs its real loading and sorting code). They read
``./model_info/<dataset>/<threat_model>/*.json``; each test runs them on a folder that mixes RobustBench's real
files with files our writer produced.
"""

from __future__ import annotations

import contextlib
import io
import json
import shutil
import subprocess
import sys
import textwrap
import types
from pathlib import Path
from typing import Any

import jinja2
import pytest

from fire_plugin._compat import ensure_autoattack_alias, import_robustbench
from fire_plugin.evaluation import EvalResult
from fire_plugin.robustbench_io import ModelInfo, model_info_from_result, read_model_info, write_model_info

REAL = Path(__file__).resolve().parent / "data" / "robustbench_model_info"


def _quiet(fn: Any, *args: Any) -> Any:
    with contextlib.redirect_stdout(io.StringIO()):  # robustbench prints what it returns
        return fn(*args)


def _ours() -> dict[str, tuple[str, ModelInfo]]:
    """model id -> (threat model, info) as users produce them."""
    plain = EvalResult(n_examples=100, eps=8 / 255, norm="Linf", clean_acc=0.8712, autoattack_acc=0.5004)
    l2 = EvalResult(n_examples=100, eps=0.5, norm="L2", clean_acc=0.9031, autoattack_acc=0.7311)
    flagged = ModelInfo(
        link="https://arxiv.org/abs/2106.06685",
        name="Adversarial Robustness via Fisher-Rao Regularization",
        authors="Marine Picot, Francisco Messina, Malik Boudiaf",
        additional_data=False,
        number_forward_passes=1,
        dataset="cifar10",
        venue="TPAMI 2022",
        architecture="WideResNet-34-10",
        eps="8/255",
        clean_acc="86.97",
        reported="53.00",
        autoattack_acc="52.53",
        footnote="Evaluated by fire_plugin.",
        unreliable=True,
    )
    flagged.extra["external"] = "52.10"
    corr = ModelInfo.from_dict({**flagged.to_dict(), "eps": None, "autoattack_acc": None, "unreliable": None})
    corr.extra.pop("external")
    corr.extra["corruptions_acc"] = "81.30"
    return {
        # model_info_from_result with its default arguments (link, authors, venue left out)
        "Ours2026Defaults": ("Linf", model_info_from_result(plain, dataset="cifar10", name="A", architecture="RN-18")),
        "Ours2026L2": ("L2", model_info_from_result(l2, dataset="cifar10", name="B", architecture="WideResNet-28-10")),
        "Picot2022Adversarial": ("Linf", flagged),
        "Picot2022Corruptions": ("corruptions", corr),
    }


@pytest.fixture
def leaderboard(tmp_path, monkeypatch) -> Path:
    """tmp_path/model_info/cifar10/{Linf,L2,corruptions}: the real files plus ours; the working directory."""
    shutil.copytree(REAL / "cifar10", tmp_path / "model_info" / "cifar10")
    for model_id, (threat_model, info) in _ours().items():
        write_model_info(tmp_path, model_id, info, threat_model=threat_model)
    monkeypatch.chdir(tmp_path)
    return tmp_path


def _generate_leaderboard(monkeypatch, threat_model: str) -> list[dict[str, Any]]:
    """robustbench's generate_leaderboard; returns the models in the order it ranks them."""
    template = import_robustbench("leaderboard.template")
    dump = "{% for model in models %}{{ model | tojson }}\n{% endfor %}"
    monkeypatch.setattr(template, "PackageLoader", lambda *a, **k: jinja2.DictLoader({"leaderboard.html.j2": dump}))
    html = _quiet(template.generate_leaderboard, "cifar10", threat_model)
    return [json.loads(line) for line in html.splitlines() if line.strip()]


def _rank_key(model: dict[str, Any], threat_model: str) -> float:
    # RobustBench's ranking: external (AutoAttack + an external attack) when present, else autoattack_acc.
    if threat_model == "corruptions":
        return float(model["corruptions_acc"])
    return float(model["external"] if "external" in model else model["autoattack_acc"])


@pytest.mark.parametrize("threat_model", ["Linf", "L2", "corruptions"])
def test_generate_leaderboard_ranks_our_files(leaderboard, monkeypatch, threat_model):
    ranked = _generate_leaderboard(monkeypatch, threat_model)
    files = sorted((leaderboard / "model_info" / "cifar10" / threat_model).glob("*.json"))
    assert len(ranked) == len(files)
    keys = [_rank_key(m, threat_model) for m in ranked]
    assert keys == sorted(keys, reverse=True)
    ours = [info for (tm, info) in _ours().values() if tm == threat_model]
    for info in ours:
        assert json.loads(info.to_json()) in ranked
        assert all("unreliable" not in m or isinstance(m["unreliable"], bool) for m in ranked)


@pytest.mark.parametrize("threat_model", ["Linf", "L2"])
def test_leaderboard_latex_reads_our_files(leaderboard, threat_model):
    rows = _quiet(import_robustbench("utils").get_leaderboard_latex, "cifar10", threat_model).splitlines()
    files = sorted((leaderboard / "model_info" / "cifar10" / threat_model).glob("*.json"))
    assert len(rows) == len(files)
    by_rank = [float(row.split(" & ")[2]) for row in rows]  # "rank &\\citet{id} & clean & external & ..."
    assert by_rank == sorted(by_rank, reverse=True)
    for model_id, (tm, info) in _ours().items():
        if tm == threat_model:
            row = next(r for r in rows if f"\\citet{{{model_id.split('_')[0]}}}" in r)
            assert f" & {info.clean_acc} & " in row and (" & N & " in row)


@pytest.mark.parametrize("threat_model", ["Linf", "L2"])
def test_leaderboard_bibtex_reads_our_files(leaderboard, threat_model):
    entries, text = _quiet(import_robustbench("utils").get_leaderboard_bibtex, "cifar10", threat_model)
    assert len(entries) >= 1 and len(text) > 0
    if threat_model == "Linf":
        assert any(e.startswith("@article{Picot2022Adversarial,") and "year\t= {2022}" in e for e in entries)
    # venue "N/A" (model_info_from_result's default, as RobustBench's Standard entries) is skipped, not broken
    assert not any(e.startswith("@article{Ours2026") for e in entries)


# What RobustBench's consumers cannot read, written around our writer: each must fail validation, naming the field.
BROKEN = [
    ("external", None, "generate_leaderboard", TypeError),  # float(None)
    ("venue", None, "get_leaderboard_bibtex", AttributeError),  # None.split
    ("authors", None, "get_leaderboard_bibtex", AttributeError),  # None.replace
    ("architecture", None, "get_leaderboard_latex", AttributeError),  # None.replace
    ("autoattack_acc", "NaN", "generate_leaderboard", None),  # float("NaN") sorts anywhere: a wrong ranking
]


@pytest.mark.parametrize(("field", "value", "consumer", "error"), BROKEN, ids=[b[0] for b in BROKEN])
def test_what_robustbench_cannot_read_is_refused(leaderboard, monkeypatch, field, value, consumer, error):
    path = leaderboard / "model_info" / "cifar10" / "Linf" / "Picot2022Adversarial.json"
    raw = json.loads(path.read_text())
    raw[field] = value
    path.write_text(json.dumps(raw))
    if consumer == "generate_leaderboard":
        run = lambda: _generate_leaderboard(monkeypatch, "Linf")  # noqa: E731
    else:
        run = lambda: _quiet(getattr(import_robustbench("utils"), consumer), "cifar10", "Linf")  # noqa: E731
    if error is not None:
        with pytest.raises(error):
            run()
    with pytest.raises(ValueError, match=field) as err:
        read_model_info(path)
    assert str(path) in str(err.value)
    with pytest.raises(ValueError, match=field):
        write_model_info(leaderboard / "again", "Picot2022Adversarial", ModelInfo.from_dict(raw))


# ----------------------------------------------------------------------------------------------- autoattack alias


def test_import_fire_plugin_makes_import_robustbench_work():
    # Before: ModuleNotFoundError: No module named 'autoattack' unless _compat.import_robustbench was used.
    # A fresh interpreter, as a user's script: nothing but `import fire_plugin` before `import robustbench`.
    script = textwrap.dedent(
        """
        import fire_plugin
        import robustbench, robustbench.eval, autoattack, pyautoattack
        assert autoattack is pyautoattack, autoattack
        assert robustbench.eval.AutoAttack is pyautoattack.AutoAttack
        print("ok")
        """
    )
    done = subprocess.run([sys.executable, "-W", "ignore", "-c", script], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr[-2000:]


def test_real_autoattack_on_path_is_not_shadowed(tmp_path, monkeypatch):
    # In this process (a fresh interpreter costs 5 s of CPU): forget the alias, put a "real" autoattack on sys.path.
    package = tmp_path / "autoattack"
    package.mkdir()
    (package / "__init__.py").write_text("REAL = True\nclass AutoAttack:\n    pass\n")
    (package / "state.py").write_text("class EvaluationState:\n    pass\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.delitem(sys.modules, "autoattack", raising=False)
    monkeypatch.delitem(sys.modules, "autoattack.state", raising=False)
    ensure_autoattack_alias()
    assert "autoattack" not in sys.modules  # nothing registered: the real package is importable
    import autoattack
    import autoattack.state

    assert getattr(autoattack, "REAL", False) and autoattack.__file__ == str(package / "__init__.py")
    assert autoattack.state.__file__ == str(package / "state.py")
    ensure_autoattack_alias()  # called again (as by import_robustbench): still the real one
    assert sys.modules["autoattack"] is autoattack and sys.modules["autoattack.state"] is autoattack.state


def test_imported_real_autoattack_keeps_its_submodules(monkeypatch):
    # Before: with a real autoattack imported but not yet its .state, the alias set autoattack.state to
    # pyautoattack.state, mixing two packages.
    real = types.ModuleType("autoattack")
    monkeypatch.setitem(sys.modules, "autoattack", real)
    monkeypatch.delitem(sys.modules, "autoattack.state", raising=False)
    ensure_autoattack_alias()
    assert sys.modules["autoattack"] is real
    assert "autoattack.state" not in sys.modules

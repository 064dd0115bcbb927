"""`fire-plugin submit`: the RobustBench bundle, its checks (each refusal), and RobustBench's own readers on it.

The data is a fake CIFAR-10 folder in torchvision's on-disk format (``cifar-10-batches-py``) written here with random
images; the model is the CIFAR-10 ResNet-18 shipped in pyautoattack. The accuracies mean nothing: the labels are
chosen so that the first image is classified correctly and the others are not (clean accuracy 1/N). Only the
fast-suite tests below set AutoAttack's number by hand (the checks compare files and recompute the clean accuracy;
they do not rerun AutoAttack); the slow end-to-end test runs standard AutoAttack through ``fire-plugin evaluate``.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pickle
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import torch

from fire_plugin._compat import import_robustbench
from fire_plugin.cli import main
from fire_plugin.evaluation import EvalResult
from fire_plugin.experiments import evaluate_checkpoint
from fire_plugin.leaderboard import place
from fire_plugin.pretrained import autoattack_checkpoint_path, load_pretrained
from fire_plugin.robustbench_io import model_info_from_result, read_model_info, write_model_info
from fire_plugin.submit import ZOO_ARCHITECTURES, SubmitError, submit

N_TEST = 4  # images in the fake test set
N_EVAL = 3  # images evaluated (a subset: --allow-subset)
MODEL_ID = "Fake2026Random"
BUNDLE_FILES = ["CHECKS.md", "NEW_MODEL.md", f"model_info/cifar10/Linf/{MODEL_ID}.json", "model_zoo_entry.py",
                f"models/cifar10/Linf/{MODEL_ID}.pt"]


def write_fake_cifar10(root: Path, images: np.ndarray, labels: list[int]) -> Path:
    """torchvision's ``cifar-10-batches-py`` layout: 5 train batches, ``test_batch``, ``batches.meta``."""
    folder = root / "cifar-10-batches-py"
    folder.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(1)

    def dump(name: str, data: np.ndarray, labs: list[int]) -> None:
        with (folder / name).open("wb") as handle:
            pickle.dump({"batch_label": name, "labels": labs, "data": data.reshape(len(data), 3072),
                         "filenames": [f"{i}.png" for i in range(len(data))]}, handle)

    for i in range(1, 6):
        dump(f"data_batch_{i}", rng.integers(0, 256, (2, 3, 32, 32), dtype=np.uint8), [0, 1])
    dump("test_batch", images, labels)
    with (folder / "batches.meta").open("wb") as handle:
        pickle.dump({"label_names": [f"class{i}" for i in range(10)], "num_cases_per_batch": len(images),
                     "num_vis": 3072}, handle)
    return root


@pytest.fixture(scope="module", autouse=True)
def _fake_files_pass_integrity() -> Iterator[None]:
    # torchvision checks the real files' md5 sums; the fake files only have to exist.
    import torchvision.datasets.cifar as cifar

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(cifar, "check_integrity", lambda fpath, md5=None: os.path.isfile(fpath))
        yield


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images = np.random.default_rng(0).integers(0, 256, (N_TEST, 3, 32, 32), dtype=np.uint8)
    model = load_pretrained("autoattack-resnet18")
    with torch.no_grad():
        predicted = model(torch.from_numpy(images).float() / 255).argmax(1)
    labels = [int(predicted[0])] + [int(p + 1) % 10 for p in predicted[1:]]  # first right, others wrong
    return write_fake_cifar10(tmp_path_factory.mktemp("data"), images, labels)


def _complete_run(run: Path, *, autoattack_acc: float = 0.0, version: str = "standard", **info_fields: object) -> Path:
    """A finished evaluate output from a clean-only one: AutoAttack's number set by hand (see the module doc)."""
    record = json.loads((run / "eval.json").read_text())
    result = EvalResult(n_examples=record["n_examples"], eps=record["eps"], norm="Linf",
                        clean_acc=record["clean_acc"], autoattack_acc=autoattack_acc)
    result.autoattack_version = version
    record.update(autoattack_acc=autoattack_acc, autoattack_version=version)
    (run / "eval.json").write_text(json.dumps(record))
    info = model_info_from_result(result, dataset="cifar10", name=MODEL_ID, architecture="resnet18_cifar",
                                  n_test=record["run"]["n_test"])
    for key, value in info_fields.items():
        setattr(info, key, value)
    return write_model_info(run, MODEL_ID, info)


@pytest.fixture(scope="module")
def clean_run(tmp_path_factory: pytest.TempPathFactory, data_dir: Path) -> Path:
    run = tmp_path_factory.mktemp("run")
    evaluate_checkpoint(model="resnet18_cifar", checkpoint=str(autoattack_checkpoint_path()), out=run,
                        dataset="cifar10", attacks=("clean",), n_examples=N_EVAL, data_dir=str(data_dir),
                        verbose=False)
    return run


@pytest.fixture()
def run(clean_run: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "run"
    shutil.copytree(clean_run, copy)
    _complete_run(copy)
    return copy


# The installed robustbench (1.1.1) does not ship its leaderboard.html.j2, so generate_leaderboard cannot render as
# installed. This stand-in reads the fields that RobustBench's template reads, and fails on a missing one.
_STAND_IN_TEMPLATE = (
    "{% for model in models %}{{ loop.index }}|{{ model.name }}|{{ model.link }}|{{ model.clean_acc }}|"
    "{{ model[acc_field] }}|{{ model.additional_data }}|{{ model.architecture }}|{{ model.venue }}|"
    "{{ model.footnote if model.footnote is defined else '' }}\n{% endfor %}"
)


def _robustbench_readers(bundle: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, str]:
    """RobustBench's HTML leaderboard, LaTeX table and BibTeX on the bundle's model_info folder."""
    import jinja2

    template = import_robustbench("leaderboard.template")
    rb_utils = import_robustbench("utils")
    monkeypatch.setattr(template, "PackageLoader",
                        lambda *args: jinja2.DictLoader({"leaderboard.html.j2": _STAND_IN_TEMPLATE}))
    monkeypatch.setattr(template, "Environment",
                        lambda **kwargs: jinja2.Environment(undefined=jinja2.StrictUndefined, **kwargs))
    monkeypatch.chdir(bundle)  # its LaTeX and BibTeX readers read ./model_info
    with contextlib.redirect_stdout(io.StringIO()):
        html = template.generate_leaderboard("cifar10", "Linf", models_folder=str(bundle / "model_info"))
        latex = rb_utils.get_leaderboard_latex("cifar10", "Linf")
        _, bibtex = rb_utils.get_leaderboard_bibtex("cifar10", "Linf")
    return html, latex, bibtex


# ----------------------------------------------------------------------------------------------- the bundle


def test_bundle_from_an_evaluate_run(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "bundle"
    result = submit(out, run=run, allow_subset=True, paper_title="Random Noise Is Not Robust",
                    paper_url="https://arxiv.org/abs/0000.00000", authors="A. Author, B. Author",
                    venue="arXiv, Dec 2026")
    assert result.files == BUNDLE_FILES and result.subset
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == BUNDLE_FILES
    assert [c.status for c in result.checks] == ["passed"] * len(result.checks)
    assert not list(tmp_path.glob(".bundle.staging-*"))

    info = read_model_info(out / BUNDLE_FILES[2])
    assert (info.name, info.link, info.authors, info.venue) == (
        "Random Noise Is Not Robust", "https://arxiv.org/abs/0000.00000", "A. Author, B. Author", "arXiv, Dec 2026")
    assert (info.architecture, info.eps, info.clean_acc, info.autoattack_acc) == ("ResNet-18", "8/255", "33.33", "0.00")
    assert info.extra["n_examples"] == N_EVAL and "first 3 of the 10,000 test images" in (info.footnote or "")

    # the checkpoint: a plain state dict of RobustBench's ResNet18 (what its zoo stores)
    state = torch.load(out / BUNDLE_FILES[4], map_location="cpu", weights_only=True)
    assert isinstance(state, dict) and all(isinstance(v, torch.Tensor) for v in state.values())
    reference = torch.load(autoattack_checkpoint_path(), map_location="cpu", weights_only=True)
    assert state.keys() == reference.keys() and all(torch.equal(state[k], reference[k]) for k in state)
    resnet = import_robustbench("model_zoo.architectures.resnet")
    resnet.ResNet18().load_state_dict(state)  # strict

    # the zoo entry runs, names the bundle, and builds a network the checkpoint loads into
    namespace: dict[str, object] = {}
    exec((out / "model_zoo_entry.py").read_text(), namespace)  # noqa: S102 - the file under test
    name, entry = namespace["ENTRY"]  # type: ignore[misc]
    assert name == MODEL_ID and "TODO" in entry["gdrive_id"]
    entry["model"]().load_state_dict(state)
    assert "`linf` OrderedDict of robustbench/model_zoo/cifar10.py" in (out / "model_zoo_entry.py").read_text()

    new_model = (out / "NEW_MODEL.md").read_text()
    for line in ("- **Paper Title**: Random Noise Is Not Robust", "- **Paper authors**: A. Author, B. Author",
                 "- **Architecture**: ResNet-18", "- **Threat Model**: Linf", "- **eps**: 8/255",
                 "- **Clean accuracy**: 33.33%", "- **Robust accuracy**: 0.00%", "- **Additional data**: false",
                 "**Subset: 3 of the 10,000 test images", "- [x] I use an architecture"):
        assert line in new_model, line
    checks = (out / "CHECKS.md").read_text()
    for check in result.checks:
        assert f"| {check.name} | passed |" in checks
    assert "standard AutoAttack, run by `fire-plugin evaluate`" in new_model
    assert "Note: model_info fields" not in checks  # all four given

    # RobustBench's own readers on the bundle's model_info folder
    html, latex, bibtex = _robustbench_readers(out, monkeypatch)
    assert html.startswith("1|Random Noise Is Not Robust|https://arxiv.org/abs/0000.00000|33.33|0.00|False|ResNet-18|")
    assert latex.startswith("1 &\\citet{Fake2026Random} & 33.33 & 0.00 & N & RN-18 & arXiv, Dec 2026 & N/A\\\\")
    assert "journal\t= {arXiv}" in bibtex and "year\t= {2026}" in bibtex and "A. Author and B. Author" in bibtex
    # and ours: the subset is flagged
    with pytest.warns(UserWarning, match="evaluated on 3 test images"):
        assert any("not comparable" in n for n in place(out / BUNDLE_FILES[2]).notes)


# ----------------------------------------------------------------------------------------------- refusals


def _refused(out: Path, match: str, **kwargs: object) -> None:
    with pytest.raises(SubmitError, match=match):
        submit(out, **kwargs)  # type: ignore[arg-type]
    assert not out.exists() and not list(out.parent.glob(f".{out.name}.staging-*"))  # nothing written


def _edit_info(run: Path, **fields: object) -> Path:
    path = run / "model_info" / "cifar10" / "Linf" / f"{MODEL_ID}.json"
    data = json.loads(path.read_text())
    data.update(fields)
    path.write_text(json.dumps(data))
    return path


def test_subset_refused_without_allow_subset(run: Path, tmp_path: Path) -> None:
    _refused(tmp_path / "b", r"test images: evaluated on 3 of the 10,000 test images .* pass --allow-subset", run=run)


def test_custom_autoattack_refused(clean_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    with pytest.warns(UserWarning, match="not 'standard'"):
        _complete_run(run, version="custom:apgd-ce")
    _refused(tmp_path / "b", r"AutoAttack: the run used AutoAttack 'custom:apgd-ce', not 'standard'", run=run,
             allow_subset=True)


def test_autoattack_above_clean_refused(clean_run: Path, tmp_path: Path) -> None:
    run = tmp_path / "run"
    shutil.copytree(clean_run, run)
    _complete_run(run, autoattack_acc=2 / 3)
    _refused(tmp_path / "b", r"accuracies possible: autoattack_acc 66.67 is above clean_acc 33.33", run=run,
             allow_subset=True)


def test_other_eps_refused(run: Path, tmp_path: Path) -> None:
    _edit_info(run, eps="4/255")
    _refused(tmp_path / "b", r"eps: eps=4/255 but the cifar10 Linf leaderboard uses eps=8/255", run=run,
             allow_subset=True)


def test_file_that_differs_from_the_run_refused(run: Path, tmp_path: Path) -> None:
    _edit_info(run, clean_acc="66.67")
    _refused(tmp_path / "b", r"AutoAttack: clean_acc 66.67 in the file, 33.33 in the run", run=run, allow_subset=True)


def test_clean_accuracy_that_the_checkpoint_does_not_give_refused(run: Path, tmp_path: Path) -> None:
    # file and run agree, the weights do not: the recomputed clean accuracy names both
    _edit_info(run, clean_acc="66.67")
    record = json.loads((run / "eval.json").read_text())
    (run / "eval.json").write_text(json.dumps({**record, "clean_acc": 2 / 3}))
    _refused(tmp_path / "b", r"clean accuracy: the file says clean_acc 66.67 but models/cifar10/Linf/"
             rf"{MODEL_ID}.pt classifies 1/3 = 33.33% of the 3 evaluated images", run=run, allow_subset=True)


def test_changed_checkpoint_refused(data_dir: Path, tmp_path: Path) -> None:
    ckpt = tmp_path / "weights.pt"
    shutil.copyfile(autoattack_checkpoint_path(), ckpt)
    run = tmp_path / "run"
    evaluate_checkpoint(model="resnet18_cifar", checkpoint=str(ckpt), out=run, dataset="cifar10",
                        attacks=("clean",), n_examples=N_EVAL, data_dir=str(data_dir), verbose=False)
    _complete_run(run)
    state = torch.load(ckpt, map_location="cpu", weights_only=True)
    state["linear.bias"] = state["linear.bias"] + 1.0
    torch.save(state, ckpt)
    _refused(tmp_path / "b", r"evaluated checkpoint: .*weights.pt changed since it was evaluated", run=run,
             allow_subset=True)


def test_broken_zoo_entry_refused(run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # a zoo entry whose network the checkpoint does not fit: RobustBench's load_model fails, the bundle is refused
    spec = ZOO_ARCHITECTURES["resnet18_cifar"]
    monkeypatch.setitem(ZOO_ARCHITECTURES, "resnet18_cifar",
                        type(spec)(spec.module, "ResNet34", lambda n: "ResNet34()"))
    _refused(tmp_path / "b", r"reload with robustbench.utils.load_model: .*(Missing|Unexpected) key", run=run,
             allow_subset=True)


def test_dataset_field_that_disagrees_with_the_folder_refused(run: Path, tmp_path: Path) -> None:
    path = _edit_info(run)
    moved = run / "model_info" / "cifar100" / "Linf" / path.name
    moved.parent.mkdir(parents=True)
    path.rename(moved)
    _refused(tmp_path / "b", r"model_info file: .* says dataset='cifar10' but sits in the 'cifar100' folder", run=run,
             allow_subset=True)


def test_dataset_without_leaderboard_refused(tmp_path: Path) -> None:
    run = tmp_path / "run"
    evaluate_checkpoint(model="digits_cnn", out=run, dataset="digits", attacks=("clean",), n_examples=5,
                        checkpoint=_digits_checkpoint(tmp_path), verbose=False)
    record = json.loads((run / "eval.json").read_text())
    result = EvalResult(n_examples=5, eps=0.1, norm="Linf", clean_acc=record["clean_acc"], autoattack_acc=0.0)
    record.update(autoattack_acc=0.0, autoattack_version="standard")
    (run / "eval.json").write_text(json.dumps(record))
    with pytest.warns(UserWarning, match="no RobustBench leaderboard"):
        write_model_info(run, "Digits", model_info_from_result(result, dataset="digits", name="d",
                                                                architecture="digits_cnn"))
    _refused(tmp_path / "b", r"leaderboard: RobustBench has no 'digits' 'Linf' leaderboard", run=run)


def _digits_checkpoint(tmp_path: Path) -> str:
    import timm

    import fire_plugin.models  # noqa: F401

    path = tmp_path / "digits.pt"
    torch.manual_seed(0)
    torch.save(timm.create_model("digits_cnn", num_classes=10, in_chans=1).state_dict(), path)
    return str(path)


def test_bad_arguments(run: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="give run="):
        submit(tmp_path / "b", run=run, model="resnet18_cifar")
    with pytest.raises(ValueError, match="give run="):
        submit(tmp_path / "b", checkpoint="x.pt")
    (tmp_path / "full").mkdir()
    (tmp_path / "full" / "x").write_text("")
    with pytest.raises(ValueError, match="exists and is not an empty folder"):
        submit(tmp_path / "full", run=run, allow_subset=True)
    with pytest.raises(ValueError, match="neither eval.json"):
        submit(tmp_path / "b", run=tmp_path / "full")


# ----------------------------------------------------------------------------------------------- files, CLI


def test_bundle_from_checkpoint_and_a_robustbench_written_model_info(data_dir: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # RobustBench's update_json writes "eps" as a number; the paper fields are filled in by hand, as its README says
    rb_utils = import_robustbench("utils")
    enums = import_robustbench("model_zoo.enums")
    monkeypatch.chdir(tmp_path)
    rb_utils.update_json(enums.BenchmarkDataset.cifar_10, enums.ThreatModel.Linf, MODEL_ID, 1 / 3, 0.0, 8 / 255)
    path = tmp_path / "model_info" / "cifar10" / "Linf" / f"{MODEL_ID}.json"
    data = json.loads(path.read_text())
    assert isinstance(data["eps"], float)
    data.update(link="", name="Random", authors="", additional_data=False, number_forward_passes=1, venue="N/A",
                architecture="ResNet-18", n_examples=N_EVAL)
    path.write_text(json.dumps(data))
    result = submit(tmp_path / "b", checkpoint=autoattack_checkpoint_path(), model_info=path,
                    model="resnet18_cifar", data_dir=data_dir, allow_subset=True, model_id=MODEL_ID)
    status = {c.name: c.status for c in result.checks}
    assert status["AutoAttack"] == "unverified" and status["clean accuracy"] == "passed"
    assert list(status.values()).count("passed") == len(status) - 1
    assert read_model_info(tmp_path / "b" / BUNDLE_FILES[2]).eps == "8/255"  # RobustBench's own files' form
    new_model = (tmp_path / "b" / "NEW_MODEL.md").read_text()
    assert "AutoAttack <TODO: how it was run" in new_model  # not claimed: the file does not record it
    assert "| AutoAttack | unverified |" in (tmp_path / "b" / "CHECKS.md").read_text()
    odd = submit(tmp_path / "odd", checkpoint=autoattack_checkpoint_path(), model_info=path, model="resnet18_cifar",
                 data_dir=data_dir, allow_subset=True, model_id="my_model")
    assert "models/cifar10/Linf/my_model.pt" in odd.files
    assert "'my_model' is not of that form: pass --model-id" in (tmp_path / "odd" / "CHECKS.md").read_text()
    assert "- **eps**: 8/255" in (tmp_path / "b" / "NEW_MODEL.md").read_text()


def test_cli_submit(run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["submit", "--run", str(run), "--out", str(tmp_path / "b")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("fire-plugin: error: refused, nothing written") and err.count("\n") == 1
    assert main(["submit", "--model", "resnet18_cifar", "--out", str(tmp_path / "b")]) == 2
    assert "all of --checkpoint, --model-info and --model" in capsys.readouterr().err
    assert main(["submit", "--run", str(run), "--out", str(tmp_path / "b"), "--allow-subset"]) == 0
    printed = capsys.readouterr().out
    assert all(name in printed for name in BUNDLE_FILES) and "not a leaderboard result" in printed
    text = (tmp_path / "b" / "NEW_MODEL.md").read_text()  # no paper fields given: visible placeholders
    assert "- **Paper Title**: <TODO: the paper title (pass --paper-title)>" in text
    assert "- **Paper URL**: <TODO: the paper URL (pass --paper-url)>" in text
    assert "- **Paper authors**: <TODO: the authors, comma separated (pass --authors)>" in text
    assert f"Note: model_info fields kept from the evaluated file: name='{MODEL_ID}', link=''" in \
        (tmp_path / "b" / "CHECKS.md").read_text()


# ----------------------------------------------------------------------------------------------- end to end


@pytest.mark.slow
def test_end_to_end_evaluate_submit_reload_and_robustbench_readers(
        data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    # Standard AutoAttack on 3 of the 4 fake images (one classified correctly: about 15 s on one CPU thread).
    run, out = tmp_path / "run", tmp_path / "bundle"
    assert main(["evaluate", "--model", "resnet18_cifar", "--checkpoint", str(autoattack_checkpoint_path()),
                 "--dataset", "cifar10", "--attacks", "clean", "autoattack", "--n-examples", str(N_EVAL),
                 "--data-dir", str(data_dir), "--model-id", MODEL_ID, "--out", str(run), "--quiet"]) == 0
    info = read_model_info(run / BUNDLE_FILES[2])
    assert info.extra["n_examples"] == N_EVAL and "first 3 of the 10,000" in (info.footnote or "")
    assert main(["leaderboard", "--model-info", str(run / BUNDLE_FILES[2]), "--out", str(tmp_path / "lb")]) == 0
    assert "evaluated on 3 test images, not the 10,000" in capsys.readouterr().out

    assert main(["submit", "--run", str(run), "--out", str(out), "--allow-subset", "--paper-title", "Noise",
                 "--venue", "arXiv, Dec 2026"]) == 0
    assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == BUNDLE_FILES
    checks = (out / "CHECKS.md").read_text()
    assert checks.count("| passed |") == 10 and "| failed |" not in checks
    bundle_info = read_model_info(out / BUNDLE_FILES[2])
    assert (bundle_info.clean_acc, bundle_info.autoattack_acc) == (info.clean_acc, info.autoattack_acc)

    # reload from the bundle's layout, through both loaders
    x = torch.rand(2, 3, 32, 32)
    ours = load_pretrained("resnet18_cifar", checkpoint=out / BUNDLE_FILES[4])
    evaluated = load_pretrained("autoattack-resnet18")
    with torch.no_grad():
        assert torch.equal(ours(x), evaluated(x))  # the same network and weights on the same batch
    rb_utils = import_robustbench("utils")
    enums = import_robustbench("model_zoo.enums")
    namespace: dict[str, object] = {}
    exec((out / "model_zoo_entry.py").read_text(), namespace)  # noqa: S102 - the file under test
    name, entry = namespace["ENTRY"]  # type: ignore[misc]
    monkeypatch.setitem(rb_utils.all_models[enums.BenchmarkDataset.cifar_10][enums.ThreatModel.Linf], name, entry)
    with contextlib.redirect_stdout(io.StringIO()):
        rb_model = rb_utils.load_model(name, model_dir=str(out / "models"), dataset="cifar10", threat_model="Linf")
    with torch.no_grad():
        # RobustBench pools with avg_pool2d, ours with adaptive_avg_pool2d: measured max difference ~1e-6
        torch.testing.assert_close(rb_model.eval()(x), evaluated(x), rtol=1e-4, atol=1e-4)

    html, latex, bibtex = _robustbench_readers(out, monkeypatch)
    assert "Noise" in html and f"\\citet{{{MODEL_ID}}} & {info.clean_acc} & {info.autoattack_acc}" in latex
    assert "journal\t= {arXiv}" in bibtex and "year\t= {2026}" in bibtex


def test_preset_smoke_run_refused(tmp_path: Path) -> None:
    from fire_plugin.presets import run_preset

    run_preset("cifar10-wrn34-fire", out=tmp_path / "run", smoke=True, tiny=True, verbose=False)
    _refused(tmp_path / "b", r"AutoAttack: the run is a --smoke run on synthetic data: not a result",
             run=tmp_path / "run", allow_subset=True)


def test_preset_run_submits_the_weights_it_evaluated(data_dir: Path, tmp_path: Path) -> None:
    # A preset output laid out as run_preset writes it; with ema on and select_best off it evaluated the EMA
    # weights of last.pt (here pyautoattack's), not the raw ones (here a fresh network's).
    from fire_plugin.models import create_model_for_dataset
    from fire_plugin.presets import load_preset

    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    evaluated = torch.load(autoattack_checkpoint_path(), map_location="cpu", weights_only=True)
    raw = create_model_for_dataset("resnet18_cifar", "cifar10").state_dict()
    torch.save({"model": raw, "ema": {"module": evaluated, "updates": 1, "decay": 0.999, "warmup": True}},
               run / "checkpoints" / "last.pt")
    cfg = load_preset("cifar10-wrn34-madry", overrides=["model=resnet18_cifar", "select_best=false", "ema=true",
                                                         f"data_dir={data_dir}", f"eval_n={N_EVAL}"])
    result = EvalResult(n_examples=N_EVAL, eps=cfg["eps"], norm="Linf", clean_acc=1 / 3, autoattack_acc=0.0)
    result.autoattack_version = "standard"
    (run / "results.json").write_text(json.dumps({"preset": "cifar10-wrn34-madry", "smoke": False, "config": cfg,
                                                  "eval": result.to_dict(), "weights": "last (ema)"}))
    write_model_info(run, MODEL_ID, model_info_from_result(result, dataset="cifar10", name="m",
                                                           architecture="ResNet-18"))
    out = submit(tmp_path / "b", run=run, allow_subset=True)
    state = torch.load(out.out / BUNDLE_FILES[4], map_location="cpu", weights_only=True)
    assert all(torch.equal(state[k], evaluated[k]) for k in evaluated)
    assert {c.name: c.status for c in out.checks}["clean accuracy"] == "passed"

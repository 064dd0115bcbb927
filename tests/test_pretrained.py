"""Tests of fire_plugin.pretrained: offline loading, RobustBench zoo, checkpoints (damaged, interrupted)."""

from __future__ import annotations

import os
import pickle
from pathlib import Path

import pytest
import timm
import torch

from fire_plugin._compat import import_robustbench
from fire_plugin.pretrained import (
    CheckpointNotFoundError,
    CorruptCheckpointError,
    load_pretrained,
    load_state_dict_from_checkpoint,
)


def _zoo(dataset: str = "cifar10", threat_model: str = "Linf") -> dict:
    rb_utils = import_robustbench("utils")
    enums = import_robustbench("model_zoo.enums")
    return rb_utils.all_models[enums.BenchmarkDataset(dataset)][enums.ThreatModel(threat_model)]


def test_shipped_resnet18_offline_and_deterministic():
    model = load_pretrained("autoattack-resnet18")
    assert not model.training
    torch.manual_seed(1)
    x = torch.rand(8, 3, 32, 32)
    with torch.no_grad():
        first, second = model(x), model(x)
        again = load_pretrained("autoattack-resnet18")(x)
    assert torch.equal(first, second) and torch.equal(first, again)
    assert first.shape == (8, 10) and torch.isfinite(first).all()
    # trained weights, not an initialisation: the BN running statistics were updated
    assert model.bn1.num_batches_tracked.item() > 0
    # the weights load here, not through timm: models.py knows nothing of pretrained.py (no import circle)
    with pytest.raises(ValueError, match=r"load_pretrained\('autoattack-resnet18'\)"):
        timm.create_model("resnet18_cifar", pretrained=True)


class _TinyZooNet(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc = torch.nn.Linear(3 * 32 * 32, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(x.flatten(1))


@pytest.fixture
def tiny_zoo_entry(monkeypatch):
    """A cheap model registered in RobustBench's cifar10/Linf zoo; robustbench's own loading code runs."""
    monkeypatch.setitem(_zoo(), "Tiny2024Test", {"model": _TinyZooNet, "gdrive_id": "1-not-a-real-id"})
    return "Tiny2024Test"


def _offline_download(gdrive_id, fname_save):
    import requests

    Path(fname_save).write_bytes(b"\x80\x02partial")  # what an interrupted download leaves
    raise requests.exceptions.ConnectionError("Failed to establish a new connection: Name or service not known")


def test_missing_zoo_checkpoint_clear_error(tmp_path, monkeypatch, tiny_zoo_entry):
    monkeypatch.setattr(import_robustbench("utils"), "download_gdrive_new", _offline_download)
    model_dir = tmp_path / "models"
    with pytest.raises(CheckpointNotFoundError) as err:
        load_pretrained(tiny_zoo_entry, model_dir=model_dir)
    message = str(err.value)
    expected = model_dir / "cifar10" / "Linf" / f"{tiny_zoo_entry}.pt"
    assert str(expected) in message
    assert f"load_pretrained({tiny_zoo_entry!r}" in message  # how to obtain it
    assert "ConnectionError" in message and "Traceback" not in message
    assert not model_dir.exists()  # no partial file, no empty folders


def test_missing_real_zoo_checkpoint(tmp_path, monkeypatch):
    monkeypatch.setattr(import_robustbench("utils"), "download_gdrive_new", _offline_download)
    with pytest.raises(CheckpointNotFoundError) as err:
        load_pretrained("Zhang2019Theoretically", model_dir=tmp_path / "models")
    assert str(tmp_path / "models" / "cifar10" / "Linf" / "Zhang2019Theoretically.pt") in str(err.value)
    assert not (tmp_path / "models").exists()


def test_missing_zoo_checkpoint_keeps_existing_files(tmp_path, monkeypatch, tiny_zoo_entry):
    monkeypatch.setattr(import_robustbench("utils"), "download_gdrive_new", _offline_download)
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    (folder / "Other.pt").write_bytes(b"keep me")
    with pytest.raises(CheckpointNotFoundError):
        load_pretrained(tiny_zoo_entry, model_dir=tmp_path)
    assert [p.name for p in folder.iterdir()] == ["Other.pt"]


def test_zoo_checkpoint_on_disk_is_used(tmp_path, monkeypatch, tiny_zoo_entry):
    torch.manual_seed(0)
    reference = _TinyZooNet().eval()
    path = tmp_path / "cifar10" / "Linf" / f"{tiny_zoo_entry}.pt"
    path.parent.mkdir(parents=True)
    torch.save({"state_dict": {f"module.{k}": v for k, v in reference.state_dict().items()}}, path)

    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the checkpoint is on disk")

    monkeypatch.setattr(import_robustbench("utils"), "download_gdrive_new", no_network)
    model = load_pretrained(tiny_zoo_entry, model_dir=tmp_path)
    assert not model.training
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(model(x), reference(x))


def test_unknown_zoo_name_suggests(tmp_path):
    with pytest.raises(ValueError, match="Zhang2019Theoretically"):
        load_pretrained("Zhang2019Theoretical", model_dir=tmp_path)
    assert not any(tmp_path.iterdir())


@pytest.mark.parametrize("name", ["../Zhang2019Theoretically", "a/b", "..", "a\\b", ""])
def test_name_with_path_separator_rejected(tmp_path, name):
    with pytest.raises(ValueError, match="name="):
        load_pretrained(name, model_dir=tmp_path)


def test_own_checkpoints_load(tmp_path):
    torch.manual_seed(0)
    model = timm.create_model("digits_cnn").eval()
    x = torch.rand(5, 1, 8, 8)
    with torch.no_grad():
        expected = model(x)
    engine = tmp_path / "engine.pt"
    ddp_state = {f"module.{k}": v for k, v in model.state_dict().items()}
    torch.save({"model": ddp_state, "epoch": 3, "optimizer": {"lr": 0.1}}, engine)
    plain = tmp_path / "plain.pt"
    torch.save(model.state_dict(), plain)
    for path in (engine, plain):
        loaded = load_pretrained("digits_cnn", dataset="digits", checkpoint=path)
        assert not loaded.training
        with torch.no_grad():
            assert torch.equal(loaded(x), expected)


class _Exploit:
    def __reduce__(self):
        return (Path.touch, (Path(os.environ["FIRE_EXPLOIT_MARK"]),))


def test_checkpoint_with_code_is_refused(tmp_path, monkeypatch):
    mark = tmp_path / "pwned"
    monkeypatch.setenv("FIRE_EXPLOIT_MARK", str(mark))
    path = tmp_path / "evil.pt"
    torch.save({"model": {"fc.weight": torch.zeros(1)}, "payload": _Exploit()}, path)
    with pytest.raises(pickle.UnpicklingError):
        load_pretrained("digits_cnn", dataset="digits", checkpoint=path)
    assert not mark.exists()


def test_checkpoint_errors(tmp_path):
    with pytest.raises(CheckpointNotFoundError, match="does not exist"):
        load_pretrained("digits_cnn", dataset="digits", checkpoint=tmp_path / "missing.pt")
    with pytest.raises(ValueError, match="not a timm architecture"):
        load_pretrained("no_such_arch", dataset="digits", checkpoint=tmp_path / "x.pt")
    with pytest.raises(ValueError, match="holds no state dict"):
        load_state_dict_from_checkpoint({"epoch": 3})
    with pytest.raises(ValueError, match="dataset='mnist'"):
        load_pretrained("autoattack-resnet18", dataset="mnist")


def test_checkpoint_with_code_names_the_file(tmp_path, monkeypatch):
    monkeypatch.setenv("FIRE_EXPLOIT_MARK", str(tmp_path / "pwned"))
    path = tmp_path / "evil.pt"
    torch.save({"model": {"fc.weight": torch.zeros(1)}, "payload": _Exploit()}, path)
    with pytest.raises(pickle.UnpicklingError, match="could run code") as err:
        load_pretrained("digits_cnn", dataset="digits", checkpoint=path)
    assert str(path) in str(err.value)


# ------------------------------------------------------------------------------------- damaged files


def _damaged(path: Path, kind: str) -> Path:
    """Write a damaged checkpoint of the given kind at ``path``."""
    torch.manual_seed(0)
    state = timm.create_model("digits_cnn").state_dict()
    if kind == "empty":
        path.write_bytes(b"")
    elif kind == "random":
        path.write_bytes(bytes(torch.randint(0, 256, (4096,), generator=torch.Generator().manual_seed(0)).tolist()))
    elif kind == "html":  # what a download that hit a quota page saves
        path.write_bytes(b"<!DOCTYPE html><html><title>Google Drive - Quota exceeded</title></html>")
    else:
        torch.save(state, path, _use_new_zipfile_serialization=kind != "truncated_legacy")
        data = path.read_bytes()
        cut = {"truncated_half": len(data) // 2, "truncated_head": 100, "truncated_legacy": len(data) // 2}[kind]
        path.write_bytes(data[:cut])
    return path


DAMAGED = ["empty", "random", "html", "truncated_half", "truncated_head", "truncated_legacy"]


@pytest.mark.parametrize("kind", DAMAGED)
def test_damaged_own_checkpoint_names_file_and_remedy(tmp_path, kind):
    # Before: torch's raw EOFError / OSError(22) / RuntimeError / UnpicklingError / IndexError, without the path.
    path = _damaged(tmp_path / "last.pt", kind)
    with pytest.raises(CorruptCheckpointError) as err:
        load_pretrained("digits_cnn", dataset="digits", checkpoint=path)
    message = str(err.value)
    assert str(path) in message and ("corrupt" in message or "empty" in message)
    assert "delete it" in message
    assert isinstance(err.value, ValueError)
    assert path.exists()  # the user's file is reported, not deleted


def test_checkpoint_directory_is_named_as_such(tmp_path):
    # Before: "does not exist", although it does (as a directory).
    run = tmp_path / "run" / "checkpoints"
    run.mkdir(parents=True)
    torch.save(timm.create_model("digits_cnn").state_dict(), run / "last.pt")
    with pytest.raises(CheckpointNotFoundError, match="is a directory") as err:
        load_pretrained("digits_cnn", dataset="digits", checkpoint=run)
    assert str(run) in str(err.value) and "last.pt" in str(err.value)


@pytest.mark.parametrize("kind", ["empty", "truncated_half", "random"])
def test_damaged_zoo_checkpoint_names_file(tmp_path, monkeypatch, tiny_zoo_entry, kind):
    # Before: robustbench's torch.load error surfaced raw (EOFError, OSError(22), UnpicklingError).
    path = tmp_path / "cifar10" / "Linf" / f"{tiny_zoo_entry}.pt"
    path.parent.mkdir(parents=True)
    _damaged(path, kind)

    def no_network(*args, **kwargs):
        raise AssertionError("must not download when the checkpoint is on disk")

    monkeypatch.setattr(import_robustbench("utils"), "download_gdrive_new", no_network)
    with pytest.raises(CorruptCheckpointError) as err:
        load_pretrained(tiny_zoo_entry, model_dir=tmp_path)
    message = str(err.value)
    assert str(path) in message and "delete it" in message and f"load_pretrained({tiny_zoo_entry!r}" in message
    assert path.exists()


def test_zoo_checkpoint_path_is_a_directory(tmp_path, tiny_zoo_entry):
    path = tmp_path / "cifar10" / "Linf" / f"{tiny_zoo_entry}.pt"
    path.mkdir(parents=True)
    with pytest.raises(CheckpointNotFoundError, match="is a directory") as err:
        load_pretrained(tiny_zoo_entry, model_dir=tmp_path)
    assert str(path) in str(err.value)


def _interrupted_download(gdrive_id, fname_save):
    # What gdown leaves when stopped: its temporary file <name>.pt<random>tmp, here also a temporary folder.
    Path(f"{fname_save}x1y2z3a4tmp").write_bytes(b"\x80\x02partial")
    (Path(fname_save).parent / f"{Path(fname_save).name}.parts").mkdir()
    raise KeyboardInterrupt


def test_ctrl_c_during_zoo_download_leaves_nothing(tmp_path, monkeypatch, tiny_zoo_entry):
    # Before: only Exception was caught, so Ctrl-C left the temporary file and the folders behind.
    monkeypatch.setattr(import_robustbench("utils"), "download_gdrive_new", _interrupted_download)
    model_dir = tmp_path / "models"
    with pytest.raises(KeyboardInterrupt):
        load_pretrained(tiny_zoo_entry, model_dir=model_dir)
    assert not model_dir.exists()
    folder = tmp_path / "cifar10" / "Linf"
    folder.mkdir(parents=True)
    (folder / "Other.pt").write_bytes(b"keep me")
    with pytest.raises(KeyboardInterrupt):
        load_pretrained(tiny_zoo_entry, model_dir=tmp_path)
    assert [p.name for p in folder.iterdir()] == ["Other.pt"]


# ------------------------------------------------------------------------------------- names and paths


@pytest.mark.parametrize("name", ["digits_cnn\n", "Zhang2019Theoretically\n", "digits_cnn\r\n"])
def test_name_with_trailing_newline_rejected(tmp_path, name):
    # Before: accepted by the name check ("$" matches before a final newline).
    with pytest.raises(ValueError, match="allowed: letters, digits"):
        load_pretrained(name, dataset="digits", checkpoint=tmp_path / "x.pt")
    with pytest.raises(ValueError, match="allowed: letters, digits"):
        load_pretrained(name, model_dir=tmp_path)


def test_user_paths_may_contain_dotdot(tmp_path, monkeypatch, tiny_zoo_entry):
    torch.manual_seed(0)
    model = timm.create_model("digits_cnn").eval()
    (tmp_path / "runs").mkdir()
    torch.save(model.state_dict(), tmp_path / "runs" / "last.pt")
    loaded = load_pretrained("digits_cnn", dataset="digits", checkpoint=tmp_path / "runs" / ".." / "runs" / "last.pt")
    x = torch.rand(2, 1, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))
    reference = _TinyZooNet().eval()
    path = tmp_path / "models" / "cifar10" / "Linf" / f"{tiny_zoo_entry}.pt"
    path.parent.mkdir(parents=True)
    torch.save(reference.state_dict(), path)
    zoo_model = load_pretrained(tiny_zoo_entry, model_dir=tmp_path / "models" / ".." / "models")
    x = torch.rand(2, 3, 32, 32)
    with torch.no_grad():
        assert torch.equal(zoo_model(x), reference(x))

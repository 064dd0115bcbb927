"""Tests of fire_plugin.models: every registered architecture, RobustBench parity, pretrained loading."""

from __future__ import annotations

import os
import pickle
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from fire_plugin._compat import import_robustbench
from fire_plugin.models import (
    MODEL_NAMES,
    CheckpointNotFoundError,
    InputNormalization,
    WideResNet,
    autoattack_checkpoint_path,
    load_pretrained,
    load_state_dict_from_checkpoint,
)

INPUT_SHAPES = {
    "small_cnn": (1, 28, 28),
    "lenet_pi": (1, 28, 28),
    "digits_cnn": (1, 8, 8),
    "resnet18_cifar": (3, 32, 32),
    "wrn34_10": (3, 32, 32),
    "wrn28_10": (3, 32, 32),
}
# The CIFAR networks end in global average pooling: 16x16 inputs exercise every layer at a quarter of the cost.
GRAD_SHAPES = {**INPUT_SHAPES, "resnet18_cifar": (3, 16, 16), "wrn34_10": (3, 16, 16), "wrn28_10": (3, 16, 16)}


def test_names():
    assert set(MODEL_NAMES) == set(INPUT_SHAPES)


@pytest.mark.parametrize("name", MODEL_NAMES)
def test_forward_backward_every_parameter(name):
    torch.manual_seed(0)
    model = timm.create_model(name, num_classes=7)
    x = torch.rand(2, *GRAD_SHAPES[name])
    out = model(x)
    assert out.shape == (2, 7)
    assert torch.isfinite(out).all()
    out.logsumexp(dim=1).sum().backward()
    for pname, param in model.named_parameters():
        assert param.grad is not None, pname
        assert torch.isfinite(param.grad).all(), pname
        assert param.grad.abs().sum() > 0, pname


@pytest.mark.parametrize("name", ["small_cnn", "lenet_pi", "digits_cnn", "resnet18_cifar"])
def test_in_chans(name):
    _, h, w = INPUT_SHAPES[name]
    model = timm.create_model(name, num_classes=3, in_chans=2)
    assert model(torch.rand(2, 2, h, w)).shape == (2, 3)


@pytest.mark.parametrize("name", ["digits_cnn", "small_cnn", "resnet18_cifar"])
def test_normalization_is_input_standardization(name):
    torch.manual_seed(0)
    chans = INPUT_SHAPES[name][0]
    mean, std = [0.3 + 0.1 * c for c in range(chans)], [0.2 + 0.05 * c for c in range(chans)]
    plain = timm.create_model(name).eval()
    normed = timm.create_model(name, mean=mean, std=std).eval()
    assert normed.state_dict().keys() == plain.state_dict().keys()  # statistics are not persistent
    normed.load_state_dict(plain.state_dict())
    x = torch.rand(3, *INPUT_SHAPES[name])
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    torch.testing.assert_close(normed(x), plain((x - m) / s), rtol=1e-5, atol=1e-5)


def test_input_normalization_validation():
    with pytest.raises(ValueError, match="give both"):
        InputNormalization(mean=(0.5,))
    with pytest.raises(ValueError, match="std="):
        InputNormalization(mean=(0.5,), std=(0.0,), in_chans=1)
    with pytest.raises(ValueError, match="in_chans=3"):
        InputNormalization(mean=(0.5, 0.5), std=(1.0, 1.0), in_chans=3)


def test_invalid_model_arguments():
    with pytest.raises(ValueError, match="num_classes=0"):
        timm.create_model("digits_cnn", num_classes=0)
    with pytest.raises(ValueError, match="pretrained=True"):
        timm.create_model("small_cnn", pretrained=True)


def test_registered_after_import_fire_plugin():
    code = (
        "import timm, fire_plugin, torch\n"
        f"names = {list(MODEL_NAMES)!r}\n"
        "assert all(timm.is_model(n) for n in names), [n for n in names if not timm.is_model(n)]\n"
        "print(timm.create_model('digits_cnn', num_classes=4)(torch.rand(1, 1, 8, 8)).shape[1])\n"
    )
    env = {**os.environ, "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=120)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "4"


# ------------------------------------------------------------------------------------- RobustBench parity


def _zoo(dataset: str = "cifar10", threat_model: str = "Linf") -> dict:
    rb_utils = import_robustbench("utils")
    enums = import_robustbench("model_zoo.enums")
    return rb_utils.all_models[enums.BenchmarkDataset(dataset)][enums.ThreatModel(threat_model)]


@pytest.mark.parametrize(("name", "zoo_name"), [("wrn34_10", "Wu2020Adversarial"), ("wrn28_10", "Standard")])
def test_wrn_parameters_match_robustbench_zoo(name, zoo_name):
    with torch.device("meta"):  # shapes only: no memory, no initialisation cost
        reference = _zoo()[zoo_name]["model"]()
        ours = timm.create_model(name)
    assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in reference.parameters())
    ours_shapes = {k: v.shape for k, v in ours.state_dict().items()}
    assert ours_shapes == {k: v.shape for k, v in reference.state_dict().items()}


def test_wrn_forward_matches_robustbench():
    arch = import_robustbench("model_zoo.architectures.wide_resnet")
    torch.manual_seed(0)
    reference = arch.WideResNet(depth=10, widen_factor=2, num_classes=5).eval()
    ours = WideResNet(depth=10, widen_factor=2, num_classes=5).eval()
    ours.load_state_dict(reference.state_dict())
    x = torch.rand(3, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-5, atol=1e-5)


def test_resnet18_matches_robustbench_resnet18():
    arch = import_robustbench("model_zoo.architectures.resnet")
    reference = arch.ResNet18().eval()
    state = torch.load(autoattack_checkpoint_path(), map_location="cpu", weights_only=True)
    reference.load_state_dict(state)
    ours = load_pretrained("autoattack-resnet18")
    x = torch.rand(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(ours(x), reference(x), rtol=1e-4, atol=1e-4)


# ------------------------------------------------------------------------------------- pretrained


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
    via_timm = timm.create_model("resnet18_cifar", pretrained=True).eval()
    with torch.no_grad():
        assert torch.equal(via_timm(x), first)


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

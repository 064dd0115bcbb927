"""Tests of fire_plugin.models: every registered architecture, RobustBench parity (loading: test_pretrained.py)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch

from fire_plugin import pretrained
from fire_plugin._compat import import_robustbench
from fire_plugin.models import MODEL_NAMES, InputNormalization, WideResNet
from fire_plugin.pretrained import autoattack_checkpoint_path, load_pretrained

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


# ------------------------------------------------------------------------------------- the split


def test_loading_lives_in_pretrained_only():
    # The silent re-export shim is gone: fire_plugin.models holds the architectures, fire_plugin.pretrained the
    # loading (it imports models, never the other way).
    import fire_plugin
    import fire_plugin.models as models

    for name in pretrained.__all__:
        assert name not in models.__all__ and not hasattr(models, name), name
    assert fire_plugin.load_pretrained is pretrained.load_pretrained
    with pytest.raises(AttributeError, match="load_pretrained"):
        models.load_pretrained  # noqa: B018
    assert "def load_pretrained" not in Path(models.__file__).read_text()


# ------------------------------------------------------------------------- built for a dataset (issue 22)

_DATASETS = ("digits", "mnist", "cifar10", "cifar100")


def _pairs() -> list[tuple[str, str]]:
    # the global-pooling networks (ResNet-18, WideResNets) on fewer datasets: each build takes about a second, and
    # their 3-channel 32x32 builds are covered by test_forward_backward_every_parameter
    small = [(m, d) for m in ("small_cnn", "lenet_pi", "digits_cnn") for d in _DATASETS]
    return [*small, ("resnet18_cifar", "digits"), ("resnet18_cifar", "cifar100"), ("wrn34_10", "digits"),
            ("wrn28_10", "mnist")]


@pytest.mark.parametrize(("name", "dataset"), _pairs())
def test_every_model_is_built_for_every_dataset_or_refused(name, dataset, tmp_path):
    from fire_plugin.data import DATASETS
    from fire_plugin.models import create_model_for_dataset

    info = DATASETS[dataset]
    if name == "small_cnn" and info.image_size < 14:  # two valid convs and two pools: 8x8 leaves nothing
        with pytest.raises(ValueError, match=rf"model 'small_cnn' cannot take {dataset} images \(1x8x8\)"):
            create_model_for_dataset(name, dataset)
        return
    torch.manual_seed(0)
    model = create_model_for_dataset(name, dataset).eval()
    x = torch.rand(2, info.in_chans, info.image_size, info.image_size)
    assert model(x).shape == (2, info.num_classes)
    assert model.pretrained_cfg["input_size"] == (info.in_chans, info.image_size, info.image_size)
    if not name.startswith("wrn"):  # the path of evaluate and margins: a checkpoint of this pair loads back into it
        torch.save({"model": model.state_dict(), "config": {"model": name, "dataset": dataset}}, tmp_path / "c.pt")
        loaded = load_pretrained(name, dataset=dataset, checkpoint=tmp_path / "c.pt")
        torch.testing.assert_close(loaded(x), model(x))  # same weights, same computation


def test_a_checkpoint_of_another_architecture_or_size_is_refused_naming_both(tmp_path):
    from fire_plugin.models import create_model_for_dataset

    state = create_model_for_dataset("lenet_pi", "mnist").state_dict()
    torch.save({"model": state, "config": {"model": "lenet_pi", "dataset": "mnist"}}, tmp_path / "engine.pt")
    with pytest.raises(ValueError, match=r"holds lenet_pi on mnist; it does not fit model 'lenet_pi' built for "
                                         r"digits \(1x8x8\): fc1.weight is \(128, 9216\) in the checkpoint and "
                                         r"\(128, 256\) in the model"):
        load_pretrained("lenet_pi", dataset="digits", checkpoint=tmp_path / "engine.pt")
    torch.save(state, tmp_path / "plain.pt")  # a plain state dict says nothing about its origin
    with pytest.raises(ValueError, match=r"holds another architecture or image size; it does not fit model "
                                         r"'digits_cnn' built for mnist \(1x28x28\): conv1.weight"):
        load_pretrained("digits_cnn", dataset="mnist", checkpoint=tmp_path / "plain.pt")
    extra = {**state, "extra.weight": torch.zeros(1)}
    torch.save(extra, tmp_path / "extra.pt")
    with pytest.raises(ValueError, match=r"1 unexpected keys \(e.g. extra.weight\)"):
        load_pretrained("lenet_pi", dataset="mnist", checkpoint=tmp_path / "extra.pt")


def test_model_kwargs_for_dataset_sizes_only_our_architectures():
    from fire_plugin.models import model_kwargs_for_dataset

    assert model_kwargs_for_dataset("lenet_pi", "digits") == {"num_classes": 10, "in_chans": 1, "img_size": 8}
    assert model_kwargs_for_dataset("wrn34_10", "cifar100") == {"num_classes": 100, "in_chans": 3, "img_size": 32}
    assert model_kwargs_for_dataset("resnet18", "mnist") == {"num_classes": 10, "in_chans": 1}  # timm's own
    with pytest.raises(ValueError, match=r"dataset='svhn' is not allowed"):
        model_kwargs_for_dataset("lenet_pi", "svhn")

"""Architectures registered with timm.

Importing this module registers them with timm; so does ``import fire_plugin`` as soon as timm is imported (by
anyone, see :func:`fire_plugin._compat.register_models_with_timm`). ``timm.create_model(name, num_classes=...,
in_chans=...)`` then builds:

========================  ==========================================================================
name                      architecture
========================  ==========================================================================
``small_cnn``             TRADES' MNIST CNN (used in the FIRE paper): conv32-conv32-pool-conv64-conv64-pool-
                          fc200-fc200-fc, 1x28x28 inputs
``lenet_pi``              LeNet of the partial-isometry paper: conv32, conv64, pool, fc128, 1x28x28 inputs
``digits_cnn``            a small CNN for sklearn's 1x8x8 digits
``resnet18_cifar``        CIFAR ResNet-18 (3x3 stem, no max-pool, ``linear`` head), RobustBench's blocks
``wrn34_10``              WideResNet-34-10 (RobustBench's ``WideResNet``), 3x32x32 inputs
``wrn28_10``              WideResNet-28-10 (RobustBench's ``WideResNet``), 3x32x32 inputs
========================  ==========================================================================

Every model takes [0, 1] images; an optional ``mean``/``std`` adds an input normalization as the first
step. Its statistics are non-persistent buffers, so state dicts stay those of the plain architecture.

Pretrained and offline loading (RobustBench zoo, local checkpoints, pyautoattack's CIFAR-10 ResNet-18:
``load_pretrained("autoattack-resnet18")``) lives in :mod:`fire_plugin.pretrained`, which imports this module (never
the other way). ``pretrained=True`` is refused by every entry point here, with the call to use instead.
"""

from __future__ import annotations

import logging
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from timm.models import register_model
from torch import nn

from fire_plugin._compat import import_robustbench

__all__ = [
    "MODEL_NAMES",
    "DigitsCNN",
    "InputNormalization",
    "LeNetPI",
    "ResNet18CIFAR",
    "SmallCNN",
    "WideResNet",
    "create_model_for_dataset",
    "model_kwargs_for_dataset",
]

_logger = logging.getLogger(__name__)

MODEL_NAMES = ("small_cnn", "lenet_pi", "digits_cnn", "resnet18_cifar", "wrn34_10", "wrn28_10")


# --------------------------------------------------------------------------------------------------
# building blocks


class InputNormalization(nn.Module):
    """``(x - mean) / std`` per channel; the identity when ``mean`` and ``std`` are None.

    The statistics are non-persistent buffers: they follow ``.to(device)`` but stay out of state dicts.

    Args:
        mean: per-channel means (one value, or one per channel), or None.
        std: per-channel standard deviations, positive, or None.
        in_chans: number of input channels, to check the lengths.

    Shape:
        input ``(B, C, H, W)``, output the same.

    >>> norm = InputNormalization(mean=(0.5,), std=(0.25,), in_chans=1)
    >>> norm(torch.ones(1, 1, 2, 2)).flatten().tolist()
    [2.0, 2.0, 2.0, 2.0]
    """

    mean: torch.Tensor | None
    std: torch.Tensor | None

    def __init__(
        self,
        *,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        in_chans: int = 3,
    ) -> None:
        super().__init__()
        if (mean is None) != (std is None):
            raise ValueError(f"mean={mean!r} and std={std!r}: give both or neither")
        if mean is None or std is None:
            self.register_buffer("mean", None, persistent=False)
            self.register_buffer("std", None, persistent=False)
            return
        mean_t = torch.as_tensor(list(mean), dtype=torch.float32).flatten()
        std_t = torch.as_tensor(list(std), dtype=torch.float32).flatten()
        for label, value, tensor in (("mean", mean, mean_t), ("std", std, std_t)):
            if tensor.numel() not in (1, in_chans):
                raise ValueError(f"{label}={value!r} has {tensor.numel()} values; allowed: 1 or in_chans={in_chans}")
        if not bool((std_t > 0).all()):
            raise ValueError(f"std={std!r} is not allowed; allowed: positive values")
        self.register_buffer("mean", mean_t.view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", std_t.view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.mean is None or self.std is None:
            return x
        return (x - self.mean.to(x.dtype)) / self.std.to(x.dtype)

    def extra_repr(self) -> str:
        if self.mean is None or self.std is None:
            return "identity"
        return f"mean={self.mean.flatten().tolist()}, std={self.std.flatten().tolist()}"


def _check_common(num_classes: int, in_chans: int) -> None:
    if not isinstance(num_classes, int) or num_classes < 1:
        raise ValueError(f"num_classes={num_classes!r} is not allowed; allowed: a positive int")
    if not isinstance(in_chans, int) or in_chans < 1:
        raise ValueError(f"in_chans={in_chans!r} is not allowed; allowed: a positive int")


def _check_size(img_size: int, minimum: int) -> None:
    if isinstance(img_size, bool) or not isinstance(img_size, int) or img_size < minimum:
        raise ValueError(f"img_size={img_size!r} is too small; allowed: >= {minimum}")


def _data_cfg(in_chans: int, img_size: int, num_classes: int) -> dict[str, Any]:
    """A timm-style ``pretrained_cfg``: inputs are [0, 1] images (normalization happens inside)."""
    return {
        "input_size": (in_chans, img_size, img_size),
        "num_classes": num_classes,
        "mean": (0.0,) * in_chans,
        "std": (1.0,) * in_chans,
        "interpolation": "bilinear",
        "crop_pct": 1.0,
    }


# --------------------------------------------------------------------------------------------------
# small CNNs


class SmallCNN(nn.Module):
    """TRADES' MNIST CNN, the 7-layer network of the FIRE paper's MNIST experiments.

    conv3x3(32) - conv3x3(32) - maxpool2 - conv3x3(64) - conv3x3(64) - maxpool2 - fc(200) - dropout -
    fc(200) - fc(num_classes), ReLU activations, no padding. Layer names follow TRADES'
    ``feature_extractor`` / ``classifier`` so its checkpoints load. Unlike TRADES, the last layer is not
    zero-initialised (a zero last layer gives every other parameter a zero gradient at step 0).

    Args:
        num_classes: number of outputs.
        in_chans: input channels.
        img_size: input height (= width); 28 for MNIST.
        drop_rate: dropout between the first two fully connected layers.
        mean: optional per-channel input mean (inputs are [0, 1] images).
        std: optional per-channel input standard deviation.

    Shape:
        input ``(B, in_chans, img_size, img_size)``, output ``(B, num_classes)``.

    >>> SmallCNN()(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 28,
        drop_rate: float = 0.5,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_common(num_classes, in_chans)
        feat = ((img_size - 4) // 2 - 4) // 2
        if feat < 1:
            raise ValueError(f"img_size={img_size!r} is too small; allowed: >= 14")
        self.num_classes = num_classes
        self.pretrained_cfg = _data_cfg(in_chans, img_size, num_classes)
        self.normalize = InputNormalization(mean=mean, std=std, in_chans=in_chans)
        # TRADES' layer names, so that its state dicts load.
        self.feature_extractor = nn.Sequential(
            OrderedDict(
                [
                    ("conv1", nn.Conv2d(in_chans, 32, 3)),
                    ("relu1", nn.ReLU()),
                    ("conv2", nn.Conv2d(32, 32, 3)),
                    ("relu2", nn.ReLU()),
                    ("maxpool1", nn.MaxPool2d(2)),
                    ("conv3", nn.Conv2d(32, 64, 3)),
                    ("relu3", nn.ReLU()),
                    ("conv4", nn.Conv2d(64, 64, 3)),
                    ("relu4", nn.ReLU()),
                    ("maxpool2", nn.MaxPool2d(2)),
                ]
            )
        )
        self.classifier = nn.Sequential(
            OrderedDict(
                [
                    ("fc1", nn.Linear(64 * feat * feat, 200)),
                    ("relu1", nn.ReLU()),
                    ("drop", nn.Dropout(drop_rate)),
                    ("fc2", nn.Linear(200, 200)),
                    ("relu2", nn.ReLU()),
                    ("fc3", nn.Linear(200, num_classes)),
                ]
            )
        )
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, nonlinearity="relu")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.feature_extractor(self.normalize(x))  # (B, 64, f, f)
        return self.classifier(x.flatten(1))  # (B, num_classes)


class LeNetPI(nn.Module):
    """The LeNet of the partial-isometry paper (section 4.2): conv 32, conv 64, one hidden layer of 128.

    conv3x3(32) - ReLU - conv3x3(64) - ReLU - maxpool2 - fc(128) - ReLU - fc(num_classes). The paper gives
    the widths only; kernel size 3 and one max-pool are our choice (PyTorch's classic MNIST LeNet).

    Args:
        num_classes: number of outputs.
        in_chans: input channels.
        img_size: input height (= width); 28 for MNIST.
        mean: optional per-channel input mean (inputs are [0, 1] images).
        std: optional per-channel input standard deviation.

    Shape:
        input ``(B, in_chans, img_size, img_size)``, output ``(B, num_classes)``.

    >>> LeNetPI()(torch.rand(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 28,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_common(num_classes, in_chans)
        feat = (img_size - 4) // 2
        if feat < 1:
            raise ValueError(f"img_size={img_size!r} is too small; allowed: >= 6")
        self.num_classes = num_classes
        self.pretrained_cfg = _data_cfg(in_chans, img_size, num_classes)
        self.normalize = InputNormalization(mean=mean, std=std, in_chans=in_chans)
        self.conv1 = nn.Conv2d(in_chans, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.fc1 = nn.Linear(64 * feat * feat, 128)
        self.fc2 = nn.Linear(128, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(self.normalize(x)))  # (B, 32, H-2, W-2)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 64, f, f)
        x = F.relu(self.fc1(x.flatten(1)))  # (B, 128)
        return self.fc2(x)  # (B, num_classes)


class DigitsCNN(nn.Module):
    """A small CNN for sklearn's 8x8 digits (about 38k parameters; trains in seconds on a CPU).

    conv3x3(16, pad 1) - ReLU - conv3x3(32, pad 1) - ReLU - maxpool2 - fc(64) - ReLU - fc(num_classes).

    Args:
        num_classes: number of outputs.
        in_chans: input channels.
        img_size: input height (= width), even; 8 for digits.
        mean: optional per-channel input mean (inputs are [0, 1] images).
        std: optional per-channel input standard deviation.

    Shape:
        input ``(B, in_chans, img_size, img_size)``, output ``(B, num_classes)``.

    >>> DigitsCNN()(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 1,
        img_size: int = 8,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_common(num_classes, in_chans)
        if img_size < 2:
            raise ValueError(f"img_size={img_size!r} is too small; allowed: >= 2")
        feat = img_size // 2
        self.num_classes = num_classes
        self.pretrained_cfg = _data_cfg(in_chans, img_size, num_classes)
        self.normalize = InputNormalization(mean=mean, std=std, in_chans=in_chans)
        self.conv1 = nn.Conv2d(in_chans, 16, 3, padding=1)
        self.conv2 = nn.Conv2d(16, 32, 3, padding=1)
        self.fc1 = nn.Linear(32 * feat * feat, 64)
        self.fc2 = nn.Linear(64, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = F.relu(self.conv1(self.normalize(x)))  # (B, 16, H, W)
        x = F.max_pool2d(F.relu(self.conv2(x)), 2)  # (B, 32, H/2, W/2)
        x = F.relu(self.fc1(x.flatten(1)))  # (B, 64)
        return self.fc2(x)  # (B, num_classes)


# --------------------------------------------------------------------------------------------------
# CIFAR architectures built from RobustBench's blocks (robustbench is imported on first use only)


def _stem(in_chans: int, out_chans: int) -> nn.Conv2d:
    return nn.Conv2d(in_chans, out_chans, kernel_size=3, stride=1, padding=1, bias=False)


class ResNet18CIFAR(nn.Module):
    """CIFAR ResNet-18: 3x3 stem, no max-pool, four stages of two basic blocks, ``linear`` head.

    The stages are RobustBench's (``robustbench.model_zoo.architectures.resnet``), with its state dict
    layout, so the AutoAttack ``model_test.pt`` and RobustBench ResNet-18 checkpoints load. Global average
    pooling makes the network accept any input size (32x32 in the original).

    Args:
        num_classes: number of outputs.
        in_chans: input channels.
        img_size: the input height (= width) recorded in ``pretrained_cfg`` (32 for CIFAR); global average
            pooling makes the network itself accept any size >= 8.
        mean: optional per-channel input mean (inputs are [0, 1] images).
        std: optional per-channel input standard deviation.

    Shape:
        input ``(B, in_chans, H, W)``, output ``(B, num_classes)``.

    >>> ResNet18CIFAR()(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int = 32,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_common(num_classes, in_chans)
        _check_size(img_size, 8)
        rb = import_robustbench("model_zoo.architectures.resnet")
        net = rb.ResNet(rb.BasicBlock, [2, 2, 2, 2], num_classes=num_classes)
        self.num_classes = num_classes
        self.pretrained_cfg = _data_cfg(in_chans, img_size, num_classes)
        self.normalize = InputNormalization(mean=mean, std=std, in_chans=in_chans)
        self.conv1 = net.conv1 if in_chans == 3 else _stem(in_chans, 64)
        self.bn1 = net.bn1
        self.layer1, self.layer2, self.layer3, self.layer4 = net.layer1, net.layer2, net.layer3, net.layer4
        self.linear = net.linear

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = F.relu(self.bn1(self.conv1(self.normalize(x))))  # (B, 64, H, W)
        out = self.layer4(self.layer3(self.layer2(self.layer1(out))))  # (B, 512, H/8, W/8)
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, 512)
        return self.linear(out)  # (B, num_classes)


class WideResNet(nn.Module):
    """WideResNet-depth-widen_factor of Zagoruyko & Komodakis as in TRADES and the RobustBench zoo.

    The blocks and their initialisation are RobustBench's (``architectures.wide_resnet``); the state dict
    equals that of RobustBench's ``WideResNet(depth, widen_factor=..., sub_block1=False)``.

    Args:
        depth: 6n + 4 layers (28 or 34 in the FIRE paper).
        widen_factor: width multiplier (10 in the FIRE paper).
        num_classes: number of outputs.
        in_chans: input channels.
        img_size: the input height (= width) recorded in ``pretrained_cfg`` (32 for CIFAR); global average
            pooling makes the network itself accept any size >= 4.
        drop_rate: dropout inside the blocks.
        mean: optional per-channel input mean (inputs are [0, 1] images).
        std: optional per-channel input standard deviation.

    Shape:
        input ``(B, in_chans, H, W)``, output ``(B, num_classes)``.

    >>> WideResNet(depth=10, widen_factor=1)(torch.rand(2, 3, 32, 32)).shape
    torch.Size([2, 10])
    """

    def __init__(
        self,
        *,
        depth: int = 34,
        widen_factor: int = 10,
        num_classes: int = 10,
        in_chans: int = 3,
        img_size: int = 32,
        drop_rate: float = 0.0,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        _check_common(num_classes, in_chans)
        _check_size(img_size, 4)
        if depth < 10 or (depth - 4) % 6 != 0:
            raise ValueError(f"depth={depth!r} is not allowed; allowed: 6n + 4 with n >= 1 (28, 34, ...)")
        if widen_factor < 1:
            raise ValueError(f"widen_factor={widen_factor!r} is not allowed; allowed: a positive int")
        rb = import_robustbench("model_zoo.architectures.wide_resnet")
        net = rb.WideResNet(depth=depth, num_classes=num_classes, widen_factor=widen_factor, dropRate=drop_rate)
        self.num_classes = num_classes
        self.pretrained_cfg = _data_cfg(in_chans, img_size, num_classes)
        self.normalize = InputNormalization(mean=mean, std=std, in_chans=in_chans)
        self.conv1 = net.conv1 if in_chans == 3 else _stem(in_chans, 16)
        self.block1, self.block2, self.block3 = net.block1, net.block2, net.block3
        self.bn1, self.relu, self.fc = net.bn1, net.relu, net.fc

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.conv1(self.normalize(x))  # (B, 16, H, W)
        out = self.block3(self.block2(self.block1(out)))  # (B, 64 * k, H/4, W/4)
        out = self.relu(self.bn1(out))
        out = F.adaptive_avg_pool2d(out, 1).flatten(1)  # (B, 64 * k)
        return self.fc(out)  # (B, num_classes)


# --------------------------------------------------------------------------------------------------
# timm entry points


def _no_pretrained(name: str, pretrained: bool, kwargs: dict[str, Any]) -> None:
    kwargs.pop("pretrained_cfg", None)
    kwargs.pop("pretrained_cfg_overlay", None)
    if pretrained:
        raise ValueError(
            f"pretrained=True is not available for {name!r}; use fire_plugin.pretrained.load_pretrained("
            f"{name!r}, checkpoint=...) for your own weights"
        )


@register_model
def small_cnn(pretrained: bool = False, **kwargs: Any) -> SmallCNN:
    """TRADES' MNIST CNN (see :class:`SmallCNN`).

    >>> import timm
    >>> timm.create_model("small_cnn", num_classes=10).num_classes
    10
    """
    _no_pretrained("small_cnn", pretrained, kwargs)
    return SmallCNN(**kwargs)


@register_model
def lenet_pi(pretrained: bool = False, **kwargs: Any) -> LeNetPI:
    """The partial-isometry paper's LeNet (see :class:`LeNetPI`).

    >>> import timm
    >>> timm.create_model("lenet_pi").fc2.out_features
    10
    """
    _no_pretrained("lenet_pi", pretrained, kwargs)
    return LeNetPI(**kwargs)


@register_model
def digits_cnn(pretrained: bool = False, **kwargs: Any) -> DigitsCNN:
    """A small CNN for 8x8 digits (see :class:`DigitsCNN`).

    >>> import timm
    >>> timm.create_model("digits_cnn", num_classes=10)(torch.rand(1, 1, 8, 8)).shape
    torch.Size([1, 10])
    """
    _no_pretrained("digits_cnn", pretrained, kwargs)
    return DigitsCNN(**kwargs)


@register_model
def resnet18_cifar(pretrained: bool = False, **kwargs: Any) -> ResNet18CIFAR:
    """CIFAR ResNet-18 (see :class:`ResNet18CIFAR`).

    Its CIFAR-10 weights shipped with pyautoattack: ``fire_plugin.pretrained.load_pretrained("autoattack-resnet18")``.

    >>> import timm
    >>> timm.create_model("resnet18_cifar", num_classes=100).linear.out_features
    100
    """
    if pretrained:
        raise ValueError("pretrained=True is not available for 'resnet18_cifar'; its CIFAR-10 weights (pyautoattack's) "
                         "load with fire_plugin.pretrained.load_pretrained('autoattack-resnet18')")
    _no_pretrained("resnet18_cifar", pretrained, kwargs)
    return ResNet18CIFAR(**kwargs)


@register_model
def wrn34_10(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WideResNet-34-10, the FIRE paper's CIFAR model (see :class:`WideResNet`).

    >>> import timm
    >>> timm.create_model("wrn34_10").fc.in_features
    640
    """
    _no_pretrained("wrn34_10", pretrained, kwargs)
    return WideResNet(depth=34, widen_factor=10, **kwargs)


@register_model
def wrn28_10(pretrained: bool = False, **kwargs: Any) -> WideResNet:
    """WideResNet-28-10, the FIRE paper's model with additional data (see :class:`WideResNet`).

    >>> import timm
    >>> timm.create_model("wrn28_10").fc.in_features
    640
    """
    _no_pretrained("wrn28_10", pretrained, kwargs)
    return WideResNet(depth=28, widen_factor=10, **kwargs)


# --------------------------------------------------------------------------------------------------
# one place that builds an architecture for a dataset


def _dataset_info(dataset: str) -> Any:
    from fire_plugin.data import DATASETS

    if dataset not in DATASETS:
        raise ValueError(f"dataset={dataset!r} is not allowed; allowed: {sorted(DATASETS)}")
    return DATASETS[dataset]


def model_kwargs_for_dataset(name: str, dataset: str) -> dict[str, Any]:
    """The constructor arguments that make architecture ``name`` fit ``dataset``'s images and labels.

    ``num_classes`` and ``in_chans`` for every timm architecture, and ``img_size`` (the image height) for ours
    (:data:`MODEL_NAMES`), whose fully connected layers depend on it. Every pipeline that builds a model for a
    dataset (``train``, ``evaluate``, ``margins``, presets, the digits runs) takes its arguments from here.

    Args:
        name: a timm architecture name.
        dataset: a key of :data:`fire_plugin.data.DATASETS`.

    >>> model_kwargs_for_dataset("lenet_pi", "digits")
    {'num_classes': 10, 'in_chans': 1, 'img_size': 8}
    >>> model_kwargs_for_dataset("resnet18", "cifar100")
    {'num_classes': 100, 'in_chans': 3}
    """
    info = _dataset_info(dataset)
    kwargs: dict[str, Any] = {"num_classes": info.num_classes, "in_chans": info.in_chans}
    if name in MODEL_NAMES:
        kwargs["img_size"] = info.image_size
    return kwargs


def create_model_for_dataset(name: str, dataset: str, **overrides: Any) -> nn.Module:
    """Architecture ``name`` built for ``dataset`` (see :func:`model_kwargs_for_dataset`), on the CPU.

    An unknown name, or an architecture that cannot take the dataset's images (``small_cnn`` needs at least
    14x14, digits are 8x8), raises a ``ValueError`` naming both.

    Args:
        name: a timm architecture name (ours: :data:`MODEL_NAMES`).
        dataset: a key of :data:`fire_plugin.data.DATASETS`.
        **overrides: replace or add constructor arguments (e.g. ``mean``/``std``).

    >>> create_model_for_dataset("lenet_pi", "digits")(torch.rand(2, 1, 8, 8)).shape
    torch.Size([2, 10])
    >>> create_model_for_dataset("small_cnn", "digits")
    Traceback (most recent call last):
    ...
    ValueError: model 'small_cnn' cannot take digits images (1x8x8): img_size=8 is too small; allowed: >= 14
    """
    import timm

    info = _dataset_info(dataset)
    if not isinstance(name, str) or not timm.is_model(name):
        raise ValueError(f"model {name!r} is not a registered timm architecture; ours: {list(MODEL_NAMES)} (any "
                         "timm name works, e.g. 'resnet18'; see timm.list_models())")
    kwargs = {**model_kwargs_for_dataset(name, dataset), **overrides}
    try:
        model: nn.Module = timm.create_model(name, **kwargs)
    except ValueError as err:
        raise ValueError(f"model {name!r} cannot take {dataset} images "
                         f"({info.in_chans}x{info.image_size}x{info.image_size}): {err}") from err
    return model

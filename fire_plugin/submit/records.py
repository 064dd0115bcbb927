"""What :func:`~fire_plugin.submit.submit` works with: RobustBench's leaderboards and the architectures its zoo
ships, the result and check records, the refusal, and the evaluated source read from a run or from files.

>>> LEADERBOARD_EPS["cifar10", "Linf"], ZOO_ARCHITECTURES["wrn34_10"].constructor(100)
('8/255', 'WideResNet(depth=34, widen_factor=10, num_classes=100)')
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from torch import nn

from fire_plugin.robustbench_io import ModelInfo

__all__ = ["LEADERBOARD_EPS", "ZOO_ARCHITECTURES", "Check", "SubmitError", "SubmitResult"]

#: The leaderboards RobustBench keeps and their radius (``robustbench.model_zoo``: no CIFAR-100 or ImageNet L2).
LEADERBOARD_EPS: dict[tuple[str, str], str] = {
    ("cifar10", "Linf"): "8/255",
    ("cifar10", "L2"): "0.5",
    ("cifar100", "Linf"): "8/255",
    ("imagenet", "Linf"): "4/255",
}
_EPS_RTOL = 0.02  # RobustBench's own CIFAR-10 files hold 0.031 for 8/255 (1.2% apart): the same leaderboard
_ZOO_DICT = {"Linf": "linf", "L2": "l2"}  # the OrderedDict of robustbench/model_zoo/<dataset>.py per threat model
_DATASET_TITLE = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "imagenet": "ImageNet"}
_ARCHITECTURE_TITLE = {"resnet18_cifar": "ResNet-18", "wrn34_10": "WideResNet-34-10", "wrn28_10": "WideResNet-28-10"}
_TEMPLATE_URL = "https://github.com/RobustBench/robustbench/issues/new?template=new-model.md"
_ARCHITECTURES_URL = "https://github.com/RobustBench/robustbench/tree/master/robustbench/model_zoo/architectures"
# The RobustBench model rebuilds our architecture from its own modules but pools with avg_pool2d instead of
# adaptive_avg_pool2d: the same numbers up to float32 rounding. Measured on the pyautoattack ResNet-18 with
# CIFAR-shaped inputs: max |difference| 0 to 2e-6 for logits of magnitude ~10; 1e-4 relative leaves room.
_RB_LOGIT_RTOL = 1e-4
_RB_NAME = re.compile(r"[A-Z][A-Za-z-]*[0-9]{4}[A-Z][A-Za-z0-9_-]*")  # Zhang2019Theoretically, Cui2020Learnable_34_10


@dataclass(frozen=True)
class _ZooArchitecture:
    module: str  # where RobustBench defines it
    names: str  # what to import from there
    constructor: Callable[[int], str]  # the 'model' expression for num_classes


def _resnet18(num_classes: int) -> str:
    return "ResNet18()" if num_classes == 10 else f"ResNet(BasicBlock, [2, 2, 2, 2], num_classes={num_classes})"


def _wrn(depth: int) -> Callable[[int], str]:
    def expression(num_classes: int) -> str:
        extra = "" if num_classes == 10 else f", num_classes={num_classes}"
        return f"WideResNet(depth={depth}, widen_factor=10{extra})"

    return expression


#: Our architectures that RobustBench ships, as RobustBench constructs them (same state dict layout).
ZOO_ARCHITECTURES: dict[str, _ZooArchitecture] = {
    "resnet18_cifar": _ZooArchitecture("robustbench.model_zoo.architectures.resnet", "BasicBlock, ResNet, ResNet18",
                                       _resnet18),
    "wrn34_10": _ZooArchitecture("robustbench.model_zoo.architectures.wide_resnet", "WideResNet", _wrn(34)),
    "wrn28_10": _ZooArchitecture("robustbench.model_zoo.architectures.wide_resnet", "WideResNet", _wrn(28)),
}


class SubmitError(ValueError):
    """A check failed: nothing was written. The message names each check that failed and what differs."""


@dataclass
class Check:
    """One verification of :func:`submit`.

    Attributes:
        name: what is checked.
        status: ``"passed"``, ``"failed"``, ``"skipped"`` (does not apply) or ``"unverified"`` (the inputs do not
            record what it needs; said in CHECKS.md, not a refusal).
        detail: what was compared, with the numbers.
    """

    name: str
    status: str
    detail: str

    @property
    def failed(self) -> bool:
        """Whether this check refuses the submission."""
        return self.status == "failed"


@dataclass
class SubmitResult:
    """What :func:`submit` wrote: the bundle folder, the model id, the files (relative paths) and the checks."""

    out: Path
    model_id: str
    files: list[str]
    checks: list[Check]
    subset: bool = False

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready summary."""
        return {"out": str(self.out), "model_id": self.model_id, "files": list(self.files), "subset": self.subset,
                "checks": [{"name": c.name, "status": c.status, "detail": c.detail} for c in self.checks]}


@dataclass
class _Source:
    """What was evaluated, read from a run folder or given as files."""

    description: str
    arch: str  # the timm architecture name the weights load into
    info_path: Path
    info: ModelInfo
    threat_model: str
    load_evaluated: Callable[[], nn.Module]
    data_dir: Path
    n_examples: int | None  # None: not recorded
    autoattack_version: str | None  # None: not recorded
    run_accuracies: dict[str, float | None] | None = None  # fractions from the run's own result file
    batch_size: int = 256
    checkpoint_record: dict[str, Any] | None = None
    checkpoint_path: Path | None = None
    smoke: bool = False
    evaluated_by: str = "fire_plugin"  # what ran AutoAttack, for NEW_MODEL.md's "Evaluation method"
    notes: list[str] = field(default_factory=list)


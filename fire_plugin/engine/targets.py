"""Self-adaptive training targets (Huang et al., NeurIPS 2020) and the indexed dataset they need."""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor
from torch.utils.data import Dataset

__all__ = ["IndexedDataset", "SelfAdaptiveTargets"]


class SelfAdaptiveTargets:
    """Self-adaptive training targets (Huang et al., NeurIPS 2020): an EMA of the model's predictions.

    For the first ``warmup`` epochs the targets are the one-hot labels; afterwards each sample's target becomes
    ``momentum * t + (1 - momentum) * softmax(logits_nat)``, and that soft target replaces the one-hot label in
    the loss. Batches must then carry the sample indices: ``(x, y, index)``.

    Example:
        >>> sat = SelfAdaptiveTargets(num_samples=4, num_classes=3, warmup=0)
        >>> sat.update(torch.tensor([0, 1]), torch.tensor([0, 2]), torch.zeros(2, 3), epoch=0).shape
        torch.Size([2, 3])
    """

    def __init__(self, num_samples: int, num_classes: int, *, warmup: int = 10, momentum: float = 0.9) -> None:
        if not 0.0 <= momentum < 1.0:
            raise ValueError(f"momentum must be in [0, 1), got {momentum!r}")
        if warmup < 0:
            raise ValueError(f"warmup must be >= 0, got {warmup!r}")
        self.warmup = warmup
        self.momentum = momentum
        self.num_classes = num_classes
        self.targets = torch.zeros(num_samples, num_classes)
        self.initialized = torch.zeros(num_samples, dtype=torch.bool)

    def update(self, index: Tensor, y: Tensor, logits_nat: Tensor, *, epoch: int) -> Tensor:
        """Return the targets for this batch (one-hot during warm-up) and update the EMA afterwards."""
        index = index.cpu()
        onehot = F.one_hot(y.cpu(), self.num_classes).float() if y.dim() == 1 else y.cpu().float()
        fresh = ~self.initialized[index]
        self.targets[index[fresh]] = onehot[fresh]
        self.initialized[index] = True
        if epoch >= self.warmup:
            probs = F.softmax(logits_nat.detach().float(), dim=-1).cpu()
            self.targets[index] = self.momentum * self.targets[index] + (1 - self.momentum) * probs
        return self.targets[index].to(logits_nat.device)

    def state_dict(self) -> dict[str, Any]:
        return {"targets": self.targets, "initialized": self.initialized}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        self.targets = state["targets"]
        self.initialized = state["initialized"]


class IndexedDataset(Dataset[tuple[Any, ...]]):
    """Wrap a dataset so that items become ``(*item, index)`` (needed by self-adaptive training)."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        return (*item, index)

"""Framework-free training core: objectives, one step, one epoch, checkpoints with exact resume, and DDP.

There is one training loop (:func:`fit`); a method is an :class:`Objective` (``objective(model, x, y)`` returns the
loss and the logits the bookkeeping reads): :class:`AdversarialObjective` (attack + loss: FIRE, TRADES, Hellinger,
ACE, MART), :class:`CrossEntropyObjective` (natural training), and the partial-isometry objective of
:mod:`fire_plugin.isometry`. Nothing here imports ART; :mod:`fire_plugin.trainers` wraps it for ART users, the
CLI and benchmarks call it directly. Launched by ``torchrun`` (``WORLD_SIZE > 1``), :func:`fit` initializes the
process group (nccl on CUDA, gloo on CPU), wraps the model in ``DistributedDataParallel``, shards the data with
``DistributedSampler``, and only rank 0 logs, shows progress and writes checkpoints.

Modern recipe and GPU fast paths, all options of :func:`fit`: an exponential moving average of the weights
(:class:`ModelEMA`, ``ema=``), model selection on a held-out validation split (``select_best=True`` writes
``best.pt``), bfloat16 or float16 autocast (``amp=``), channels-last memory format, ``cudnn.benchmark`` and
``torch.compile`` of the model (``compile=``).

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> from fire_plugin.attacks import FRPGD
    >>> from fire_plugin.losses import FIRELoss
    >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    >>> data = DataLoader(TensorDataset(torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,))), batch_size=16)
    >>> history = fit(model, data, epochs=1, loss=FIRELoss(lam=1.0), attack=FRPGD(model, eps=0.1, alpha=0.02),
    ...               optimizer=torch.optim.SGD(model.parameters(), lr=0.1), verbose=False)
    >>> sorted(history[0])[:3]
    ['adv_acc', 'diverged', 'epoch']
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import functools
import logging
import math
import os
import pickle
import random
import secrets
import time
import types
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler
from tqdm.auto import tqdm

__all__ = [
    "AMP_DTYPES",
    "BEST_CHECKPOINT_NAME",
    "CHECKPOINT_NAME",
    "AdversarialObjective",
    "ConfigMismatchError",
    "CrossEntropyObjective",
    "EpochStats",
    "IndexedDataset",
    "ModelEMA",
    "NonFiniteLossError",
    "Objective",
    "ObjectiveOutput",
    "SelfAdaptiveTargets",
    "StepResult",
    "adversarial_step",
    "autocast_context",
    "distributed_info",
    "evaluate_accuracy",
    "fit",
    "load_checkpoint",
    "lr_scheduler",
    "save_checkpoint",
    "resolve_amp_dtype",
    "setup_distributed",
    "train_epoch",
    "training_step",
    "unwrap_model",
]

_logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "last.pt"
BEST_CHECKPOINT_NAME = "best.pt"
AMP_DTYPES: dict[str, torch.dtype] = {"bf16": torch.bfloat16, "bfloat16": torch.bfloat16, "fp16": torch.float16,
                                      "float16": torch.float16}
"""Names accepted by ``fit(amp=...)`` for the autocast dtype."""
LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
LossTerm = Callable[[Tensor, Tensor], Tensor]
AttackFn = Callable[[Tensor, Tensor], Tensor]


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite; names the epoch and the batch."""


class ConfigMismatchError(ValueError):
    """Raised when a run would resume from a checkpoint written with another configuration."""


@dataclass
class StepResult:
    """Outcome of one :func:`adversarial_step` (sums over the batch, no host sync needed until read)."""

    loss: Tensor  # scalar, detached
    nat_correct: Tensor  # scalar count
    adv_correct: Tensor | None  # scalar count; None for objectives without an adversarial batch
    batch_size: int


@dataclass
class EpochStats:
    """Per-epoch record: training loss and accuracies (on the training-mode logits of the step), throughput."""

    epoch: int
    loss: float
    nat_acc: float
    adv_acc: float | None  # None when the objective has no adversarial batch (plain CE, partial isometry)
    samples_per_s: float
    seconds: float
    lr: float
    val_nat_acc: float | None = None
    val_adv_acc: float | None = None
    val_ema_nat_acc: float | None = None  # the same accuracies of the EMA weights (fit(..., ema=...))
    val_ema_adv_acc: float | None = None
    diverged: bool = False  # set by fit when the loss blew up and the accuracy collapsed (see fit's docstring)

    def as_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)


# ----------------------------------------------------------------------------------------------- distributed


@dataclass(frozen=True)
class DistInfo:
    world_size: int
    rank: int
    local_rank: int

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def distributed_info() -> DistInfo:
    """World size, rank and local rank from torchrun's environment (1, 0, 0 when not launched by torchrun)."""
    return DistInfo(
        world_size=int(os.environ.get("WORLD_SIZE", "1")),
        rank=int(os.environ.get("RANK", "0")),
        local_rank=int(os.environ.get("LOCAL_RANK", "0")),
    )


def setup_distributed() -> DistInfo:
    """Initialize the default process group when launched by torchrun (idempotent); nccl on CUDA, gloo on CPU.

    On CUDA it also selects the device ``cuda:LOCAL_RANK``.
    """
    info = distributed_info()
    if info.enabled and not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if torch.cuda.is_available():
            torch.cuda.set_device(info.local_rank)
        dist.init_process_group(backend=backend)
        _logger.info("initialized process group: backend=%s world_size=%d", backend, info.world_size)
    return info


def unwrap_model(model: nn.Module) -> nn.Module:
    """The module inside a ``DistributedDataParallel`` / ``DataParallel`` wrapper (or the model itself)."""
    return model.module if isinstance(model, (nn.parallel.DistributedDataParallel, nn.DataParallel)) else model


def _distributed_loader(loader: DataLoader, *, seed: int) -> DataLoader:
    """The same loader, sharded over ranks with a DistributedSampler (shuffling when the original did).

    A loader whose batch sampler has a ``shard(num_replicas, rank)`` method (the mixed original/extra batches of
    :func:`fire_plugin.data.mixed_loader`) is sharded by that method instead, so that every batch keeps its mix.
    """
    workers: dict[str, Any] = {"num_workers": loader.num_workers, "collate_fn": loader.collate_fn,
                               "pin_memory": loader.pin_memory, "persistent_workers": loader.persistent_workers}
    if loader.num_workers > 0:
        workers["prefetch_factor"] = loader.prefetch_factor
    # worker seeds come from this generator (checkpointed by fit), not from the global RNG the attacks draw from
    workers["generator"] = loader.generator if loader.generator is not None else torch.Generator().manual_seed(seed)
    shard = getattr(loader.batch_sampler, "shard", None)
    if callable(shard):
        info = distributed_info()
        return DataLoader(loader.dataset, batch_sampler=shard(info.world_size, info.rank), **workers)
    shuffle = not isinstance(loader.sampler, torch.utils.data.SequentialSampler)
    sampler: DistributedSampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler, drop_last=loader.drop_last,
                      **workers)


# ----------------------------------------------------------------------------------------------- precision


def _model_device(model: nn.Module) -> torch.device:
    param = next(model.parameters(), None)
    return param.device if param is not None else torch.device("cpu")


def autocast_context(
    device: torch.device, enabled: bool, dtype: torch.dtype | None = None
) -> contextlib.AbstractContextManager[Any]:
    """``torch.autocast`` in ``dtype`` (float16 when None) on CUDA when enabled; bfloat16 autocast also on CPU.

    Otherwise ``nullcontext()``: CPU trains in full precision unless bfloat16 is asked for explicitly.

    Example:
        >>> with autocast_context(torch.device("cpu"), True, torch.bfloat16):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.bfloat16
        >>> with autocast_context(torch.device("cpu"), True):
        ...     (torch.ones(2, 2) @ torch.ones(2, 2)).dtype
        torch.float32
    """
    if enabled and device.type == "cuda":
        return torch.autocast(device_type="cuda", dtype=dtype or torch.float16)
    if enabled and device.type == "cpu" and dtype == torch.bfloat16:
        return torch.autocast(device_type="cpu", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def resolve_amp_dtype(amp: bool | str | torch.dtype | None, device: torch.device) -> torch.dtype | None:
    """The autocast dtype of ``fit(amp=...)`` on ``device``; None means full precision.

    ``None`` or ``True``: on CUDA bfloat16 where the GPU supports it (Ampere and later: no GradScaler needed),
    else float16 (with a GradScaler); full precision on CPU. ``False`` or ``"off"``: full precision.
    ``"bf16"``: bfloat16 autocast (CUDA, or CPU autocast). ``"fp16"``: float16 autocast with a GradScaler, CUDA
    only.

    Example:
        >>> resolve_amp_dtype(None, torch.device("cpu")) is None
        True
        >>> resolve_amp_dtype("bf16", torch.device("cpu"))
        torch.bfloat16
    """
    if amp is None or amp is True:
        if device.type != "cuda":
            return None
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    if amp is False or amp == "off":
        return None
    dtype = AMP_DTYPES.get(amp) if isinstance(amp, str) else amp
    if dtype not in (torch.bfloat16, torch.float16):
        raise ValueError(f"amp={amp!r} is not allowed; allowed: None (auto), True, False, 'off', "
                         f"{sorted(AMP_DTYPES)} or torch.bfloat16 / torch.float16")
    if dtype == torch.float16 and device.type != "cuda":
        raise ValueError(f"amp={amp!r} (float16 autocast with a GradScaler) needs a CUDA model, the model is on "
                         f"{device}; allowed there: 'bf16' (CPU bfloat16 autocast) or False")
    return dtype


# ----------------------------------------------------------------------------------------------- self-adaptive


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


# ----------------------------------------------------------------------------------------------- weight averaging


class ModelEMA:
    """An exponential moving average of a model's weights, updated after every optimizer step.

    After the ``t``-th update (``t = 0, 1, ...``) every parameter is ``e <- d_t e + (1 - d_t) w`` with
    ``d_t = min(decay, (1 + t) / (10 + t))`` when ``warmup`` (the early average follows the fast-moving weights,
    as in timm's and TF's EMA), ``d_t = decay`` otherwise; buffers (BatchNorm running statistics) are copied from
    the model. ``ema.module`` is an eval-mode copy that evaluation and ``best.pt`` use; :func:`fit` updates it
    (``fit(..., ema=ModelEMA(model))``), saves it in every checkpoint under ``"ema"`` and restores it on resume.
    The average is kept in the parameters' dtype (float32 for float32 models).

    Args:
        model: the model to average (a DDP wrapper is unwrapped); it is copied once here.
        decay: the decay once warmed up (0.999 for CIFAR-scale runs of a few hundred steps per epoch).
        warmup: use ``min(decay, (1 + t) / (10 + t))``.

    Example:
        >>> model = torch.nn.Linear(2, 1)
        >>> ema = ModelEMA(model, decay=0.9)
        >>> with torch.no_grad():
        ...     _ = model.weight.add_(1.0)
        >>> ema.current_decay(), ema.update(model), ema.updates
        (0.1, None, 1)
    """

    def __init__(self, model: nn.Module, *, decay: float = 0.999, warmup: bool = True) -> None:
        if not isinstance(model, nn.Module):
            raise ValueError(f"model must be the torch.nn.Module to average, got {type(model).__name__}")
        if isinstance(decay, bool) or not isinstance(decay, (int, float)) or not 0.0 < decay < 1.0:
            raise ValueError(f"decay={decay!r} is not allowed; allowed: a number in (0, 1), e.g. 0.999")
        if not isinstance(warmup, bool):
            raise ValueError(f"warmup={warmup!r} is not allowed; allowed: True or False")
        self.module = copy.deepcopy(unwrap_model(model)).eval()
        self.module.requires_grad_(False)
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.updates = 0
        self._param_names = [name for name, _ in self.module.named_parameters()]

    def current_decay(self) -> float:
        """The decay the next :meth:`update` uses."""
        t = self.updates
        return min(self.decay, (1.0 + t) / (10.0 + t)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Average ``model``'s parameters into the EMA and copy its buffers (call after each optimizer step)."""
        decay = self.current_decay()
        source = dict(unwrap_model(model).named_parameters())
        mine = dict(self.module.named_parameters())
        averaged: list[Tensor] = [mine[name] for name in self._param_names if mine[name].is_floating_point()]
        current: list[Tensor] = [source[name].detach() for name in self._param_names if mine[name].is_floating_point()]
        if averaged:
            torch._foreach_mul_(averaged, decay)
            torch._foreach_add_(averaged, current, alpha=1.0 - decay)
        buffers = dict(unwrap_model(model).named_buffers())
        for name, buffer in self.module.named_buffers():
            buffer.copy_(buffers[name])
        self.updates += 1

    def state_dict(self) -> dict[str, Any]:
        """The averaged weights and buffers, the update count and the settings (saved under ``"ema"``)."""
        return {"module": self.module.state_dict(), "updates": self.updates, "decay": self.decay,
                "warmup": self.warmup}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict` (the settings must match: they define the run)."""
        missing = [k for k in ("module", "updates", "decay", "warmup") if not isinstance(state, dict) or k not in state]
        if missing:
            raise ValueError(f"an EMA state needs the keys {missing} (the dict ModelEMA.state_dict() returns); got "
                             + (f"the keys {sorted(state)}" if isinstance(state, dict) else type(state).__name__))
        updates = state["updates"]
        if isinstance(updates, bool) or not isinstance(updates, (int, Tensor)) or int(updates) < 0:
            raise ValueError(f"an EMA state's 'updates' must be an int >= 0 (the number of averaged steps), got "
                             f"{updates!r}")
        if float(state["decay"]) != self.decay or bool(state["warmup"]) != self.warmup:
            raise ConfigMismatchError(f"the checkpoint's EMA has decay={state['decay']!r}, warmup={state['warmup']!r};"
                                      f" this run has decay={self.decay!r}, warmup={self.warmup!r}")
        self.module.load_state_dict(state["module"])
        self.updates = int(state["updates"])


# ----------------------------------------------------------------------------------------------- step / epoch


def _split_batch(batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    if isinstance(batch, (list, tuple)) and len(batch) in (2, 3):
        return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)
    raise ValueError("batches must be (x, y) or (x, y, index) tuples")


@dataclass
class ObjectiveOutput:
    """What an :class:`Objective` returns for one batch.

    ``loss`` is the scalar the optimizer minimizes (with its graph); ``logits_nat`` (and ``logits_adv`` when the
    objective has an adversarial batch) are the training-mode logits the accuracy bookkeeping reads, so no forward
    pass is spent on bookkeeping.
    """

    loss: Tensor  # scalar, with graph
    logits_nat: Tensor  # (B, K)
    logits_adv: Tensor | None = None  # (B, K) or None


class Objective:
    """A training objective: ``objective(model, x, y, targets_fn=None) -> ObjectiveOutput``.

    The engine owns everything around it (optimizer step, non-finite check, AMP, DDP, self-adaptive targets,
    progress, history, checkpoints); an objective only says what the loss of a batch is. It puts the model in
    training mode itself before the forward passes the optimizer step uses (an attack may first run in eval mode).
    Objectives may hold per-epoch state: :func:`fit` calls :meth:`set_epoch` before every epoch and saves
    :meth:`state_dict` in the checkpoint, so that a resumed run is bit-identical.

    Subclasses implement :meth:`__call__`; ``targets_fn(logits_nat) -> targets`` (self-adaptive training) replaces
    ``y`` in the loss when given; an objective that cannot use soft targets raises ``ValueError``.

    Example:
        >>> class MSE(Objective):
        ...     def __call__(self, model, x, y, *, targets_fn=None):
        ...         model.train()
        ...         logits = model(x)
        ...         return ObjectiveOutput(((logits - F.one_hot(y, 10)) ** 2).mean(), logits)
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> MSE()(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1])).logits_nat.shape
        torch.Size([2, 10])
    """

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, targets_fn: Callable[[Tensor], Tensor] | None = None
    ) -> ObjectiveOutput:
        raise NotImplementedError

    def set_epoch(self, epoch: int, epochs: int) -> None:
        """Called by :func:`fit` before epoch ``epoch`` (0-based) of ``epochs``; stateless objectives ignore it."""

    def state_dict(self) -> dict[str, Any]:
        """State that a resumed run needs (saved in the checkpoint under ``"objective"``)."""
        return {}

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Restore :meth:`state_dict`."""

    def config(self) -> dict[str, Any]:
        """Hyperparameters that define the run (compared on resume); JSON-friendly values."""
        return {"objective": type(self).__name__}


class CrossEntropyObjective(Objective):
    """Natural training: ``loss = natural_loss(model(x), y)`` (cross-entropy by default); no adversarial batch.

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> out = CrossEntropyObjective()(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
        >>> out.loss.shape, out.logits_adv is None
        (torch.Size([]), True)
    """

    def __init__(self, natural_loss: LossTerm | None = None) -> None:
        self.natural_loss = natural_loss

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, targets_fn: Callable[[Tensor], Tensor] | None = None
    ) -> ObjectiveOutput:
        from fire_plugin.losses import cross_entropy

        model.train()
        logits = model(x)
        target = y if targets_fn is None else targets_fn(logits)
        value = (self.natural_loss or cross_entropy)(logits, target)
        return ObjectiveOutput(value, logits)


def _at_least_float32(t: Tensor) -> Tensor:
    return t.float() if t.is_floating_point() and t.dtype in (torch.float16, torch.bfloat16) else t


class AdversarialObjective(Objective):
    """Attack, then ``loss(logits_nat, logits_adv, y)``: FIRE, TRADES, Hellinger, ACE, MART in one objective.

    Exactly two training-mode forward passes (natural and adversarial batch, as TRADES/FIRE need both). The attack
    runs outside autocast unless ``attack_autocast=True`` (it then uses the same mixed precision as the training
    forward passes).

    Args:
        loss: ``loss(logits_nat, logits_adv, labels_or_targets) -> scalar`` (e.g.
            :class:`fire_plugin.losses.FIRELoss`).
        attack: ``attack(x, y) -> x_adv`` built on the raw model (e.g. :class:`fire_plugin.attacks.FRPGD`).
        attack_autocast: run the attack under the engine's autocast too.

    Example:
        >>> from fire_plugin.attacks import FRPGD
        >>> from fire_plugin.losses import FIRELoss
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> objective = AdversarialObjective(FIRELoss(lam=3.0), FRPGD(model, eps=0.1, alpha=0.02, steps=2))
        >>> out = objective(model, torch.rand(2, 1, 8, 8), torch.tensor([0, 1]))
        >>> out.logits_adv.shape
        torch.Size([2, 10])
    """

    def __init__(self, loss: LossFn, attack: AttackFn, *, attack_autocast: bool = False) -> None:
        if not callable(loss):
            raise ValueError(f"loss must be callable as loss(logits_nat, logits_adv, y), got {type(loss).__name__}")
        if not callable(attack):
            raise ValueError(f"attack must be callable as attack(x, y) -> x_adv, got {type(attack).__name__}")
        self.loss = loss
        self.attack = attack
        self.attack_autocast = attack_autocast

    def __call__(
        self, model: nn.Module, x: Tensor, y: Tensor, *, targets_fn: Callable[[Tensor], Tensor] | None = None
    ) -> ObjectiveOutput:
        if self.attack_autocast:
            x_adv = self.attack(x, y)
        else:
            with torch.autocast(device_type=x.device.type, enabled=False):
                x_adv = self.attack(x, y)
        model.train()
        logits_nat = model(x)
        logits_adv = model(x_adv)
        # information-geometric quantities in float32 or wider, whatever the autocast dtype of the forward passes
        with torch.autocast(device_type=x.device.type, enabled=False):
            nat, adv = _at_least_float32(logits_nat), _at_least_float32(logits_adv)
            value = self.loss(nat, adv, y if targets_fn is None else targets_fn(nat))
        return ObjectiveOutput(value, logits_nat, logits_adv)

    def config(self) -> dict[str, Any]:
        out: dict[str, Any] = {"objective": type(self).__name__}
        for name, obj in (("loss", self.loss), ("attack", self.attack)):
            if not isinstance(obj, (types.FunctionType, types.MethodType, functools.partial)):
                out[name] = type(obj).__name__
        for name in ("weight", "divergence_name", "beta"):
            value = getattr(self.loss, name, None)
            if isinstance(value, (int, float, str)):
                out[f"loss.{name}"] = value
        for name in ("eps", "alpha", "steps", "norm", "divergence"):
            value = getattr(self.attack, name, None)
            if isinstance(value, (int, float, str)):
                out[f"attack.{name}"] = value
        return out


def training_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    objective: Objective,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    targets_fn: Callable[[Tensor], Tensor] | None = None,
    amp: bool = False,
    amp_dtype: torch.dtype | None = None,
    ema: ModelEMA | None = None,
) -> StepResult:
    """One optimizer step of ``objective`` on the batch ``(x, y)``: loss, non-finite check, backward, step.

    Args:
        model: the (possibly DDP-wrapped) model, on the device of ``x``.
        x: images in [0, 1], ``(B, C, H, W)``.
        y: class indices ``(B,)``.
        objective: an :class:`Objective`.
        optimizer: the optimizer of ``model``'s parameters.
        scaler: a GradScaler for float16 mixed precision on CUDA (optional).
        targets_fn: ``targets_fn(logits_nat) -> targets`` replacing ``y`` in the loss (self-adaptive training).
        amp: run the objective under autocast (see :func:`autocast_context`).
        amp_dtype: the autocast dtype (float16 when None; bfloat16 needs no ``scaler``).
        ema: a :class:`ModelEMA` updated after the optimizer step.

    Raises:
        NonFiniteLossError: the loss is NaN/inf; it is checked before backward, so the weights are not touched
            (one host sync per step).
    """
    optimizer.zero_grad(set_to_none=True)
    with autocast_context(x.device, amp, amp_dtype):
        out = objective(model, x, y, targets_fn=targets_fn)
    value = out.loss
    if not torch.isfinite(value).item():
        raise NonFiniteLossError(f"non-finite training loss ({value.item()}); the weights were not updated with it")
    if scaler is not None:
        scaler.scale(value).backward()
        scaler.step(optimizer)
        scaler.update()
    else:
        value.backward()
        optimizer.step()
    if ema is not None:
        ema.update(model)
    with torch.no_grad():
        nat_correct = (out.logits_nat.argmax(-1) == y).sum()
        adv_correct = (out.logits_adv.argmax(-1) == y).sum() if out.logits_adv is not None else None
    return StepResult(value.detach(), nat_correct, adv_correct, int(x.shape[0]))


def adversarial_step(
    model: nn.Module,
    x: Tensor,
    y: Tensor,
    *,
    loss: LossFn,
    attack: AttackFn,
    optimizer: torch.optim.Optimizer,
    scaler: torch.amp.GradScaler | None = None,
    targets_fn: Callable[[Tensor], Tensor] | None = None,
    amp: bool = False,
) -> StepResult:
    """One adversarial training step: :func:`training_step` of ``AdversarialObjective(loss, attack)``.

    Kept for callers of the attack + loss form; see :class:`AdversarialObjective`.
    """
    return training_step(model, x, y, objective=AdversarialObjective(loss, attack), optimizer=optimizer,
                         scaler=scaler, targets_fn=targets_fn, amp=amp)


def _resolve_objective(objective: Objective | None, loss: LossFn | None, attack: AttackFn | None) -> Objective:
    if objective is not None:
        if loss is not None or attack is not None:
            raise ValueError("pass either objective=... or loss=... and attack=..., not both")
        if not isinstance(objective, Objective):
            raise ValueError(f"objective must be a fire_plugin.engine.Objective, got {type(objective).__name__}")
        return objective
    if loss is None or attack is None:
        raise ValueError("pass objective=... (e.g. AdversarialObjective(loss, attack)) or both loss=... and attack=...")
    return AdversarialObjective(loss, attack)


def train_epoch(
    model: nn.Module,
    loader: Iterable[Any],
    *,
    objective: Objective | None = None,
    loss: LossFn | None = None,
    attack: AttackFn | None = None,
    optimizer: torch.optim.Optimizer,
    epoch: int = 0,
    scaler: torch.amp.GradScaler | None = None,
    amp: bool = False,
    amp_dtype: torch.dtype | None = None,
    self_adaptive: SelfAdaptiveTargets | None = None,
    ema: ModelEMA | None = None,
    channels_last: bool = False,
    verbose: bool = True,
) -> EpochStats:
    """Train one epoch of ``objective`` over ``loader`` (batches ``(x, y)`` or ``(x, y, index)``).

    ``loss`` and ``attack`` instead of ``objective`` build an :class:`AdversarialObjective`. Images are moved to
    the model's device without blocking (pinned loaders overlap the copy), in channels-last memory format when
    ``channels_last``; ``ema`` is updated after every optimizer step.

    Raises:
        NonFiniteLossError: the loss became NaN/inf (message names the epoch and the batch); the optimizer step
            of that batch is not taken.
    """
    objective = _resolve_objective(objective, loss, attack)
    device = _model_device(model)
    info = distributed_info()
    start = time.perf_counter()
    loss_sum = torch.zeros((), device=device, dtype=torch.float64)
    nat_sum = torch.zeros((), device=device, dtype=torch.long)
    adv_sum = torch.zeros((), device=device, dtype=torch.long)
    has_adv = True
    count = 0
    bar = tqdm(loader, desc=f"epoch {epoch + 1}", leave=False, disable=not verbose or not info.is_main)
    for batch_idx, batch in enumerate(bar):
        x, y, index = _split_batch(batch)
        x = x.to(device, non_blocking=True)
        y = y.to(device, non_blocking=True)
        if channels_last and x.dim() == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        if self_adaptive is not None and index is None:
            raise ValueError("self-adaptive training needs batches of (x, y, index)")
        targets_fn = None
        if self_adaptive is not None and index is not None:  # soft targets from this step's natural logits
            targets_fn = functools.partial(self_adaptive.update, index, y, epoch=epoch)
        try:
            result = training_step(model, x, y, objective=objective, optimizer=optimizer, scaler=scaler,
                                   targets_fn=targets_fn, amp=amp, amp_dtype=amp_dtype, ema=ema)
        except NonFiniteLossError as err:
            raise NonFiniteLossError(
                f"{err} (epoch {epoch + 1}, batch {batch_idx}); no checkpoint was written for this epoch"
            ) from err
        loss_sum += result.loss.double() * result.batch_size
        nat_sum += result.nat_correct
        if result.adv_correct is None:
            has_adv = False
        else:
            adv_sum += result.adv_correct
        count += result.batch_size
        if verbose and info.is_main and batch_idx % 10 == 0:
            bar.set_postfix(loss=f"{result.loss.item():.4f}")
    if count == 0 and not info.enabled:
        raise ValueError(f"the training loader yielded no batch in epoch {epoch + 1} (an empty dataset, or fewer "
                         "samples than batch_size with drop_last=True); nothing was trained")
    totals = torch.stack([loss_sum, nat_sum.double(), adv_sum.double(), torch.tensor(float(count), device=device,
                                                                                    dtype=torch.float64)])
    if info.enabled and dist.is_initialized():
        dist.all_reduce(totals)
    seconds = time.perf_counter() - start
    loss_total, nat_total, adv_total, n = totals.tolist()
    n = max(n, 1.0)
    return EpochStats(
        epoch=epoch,
        loss=loss_total / n,
        nat_acc=nat_total / n,
        adv_acc=adv_total / n if has_adv else None,
        samples_per_s=n / max(seconds, 1e-12),
        seconds=seconds,
        lr=float(optimizer.param_groups[0]["lr"]),
    )


def evaluate_accuracy(
    model: nn.Module, loader: Iterable[Any], *, attack: AttackFn | None = None, verbose: bool = False
) -> tuple[float, float | None]:
    """Natural accuracy and (when ``attack`` is given) adversarial accuracy of ``model`` over ``loader``."""
    device = _model_device(model)
    was_training = model.training
    nat = adv = n = 0
    for batch in tqdm(loader, desc="validate", leave=False, disable=not verbose):
        x, y, _ = _split_batch(batch)
        x, y = x.to(device), y.to(device)
        model.eval()
        with torch.no_grad():
            nat += int((model(x).argmax(-1) == y).sum())
        if attack is not None:
            x_adv = attack(x, y)
            model.eval()
            with torch.no_grad():
                adv += int((model(x_adv).argmax(-1) == y).sum())
        n += int(x.shape[0])
    model.train(was_training)
    n = max(n, 1)
    return nat / n, (adv / n if attack is not None else None)


# ----------------------------------------------------------------------------------------------- checkpoints


def _rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)), *map(float, np_state[2:])],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate((state["python_version"], tuple(state["python"]), None))


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a DataLoader draws from (its own, its sampler's, its batch sampler's), once each.

    A DataLoader built with ``generator=`` (or a sampler with one) draws its shuffling order and worker seeds from
    it; :func:`fit` saves their states with every checkpoint and restores them on resume, so that the resumed
    epochs see the same batches as an uninterrupted run.
    """
    found: list[torch.Generator] = []
    objects = [loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)]
    objects.append(getattr(objects[2], "sampler", None))
    for obj in objects:
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and not any(gen is g for g in found):
            found.append(gen)
    return found


def _rng_states_of_all_ranks(info: DistInfo) -> list[dict[str, Any]] | None:
    """Every rank's RNG state (a collective under DDP: all ranks call it); None in a single process."""
    if not (info.enabled and dist.is_initialized()):
        return None
    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, _rng_state())
    return states


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically: to a temporary file in the same directory, then ``os.replace``.

    An interrupted write never leaves a truncated checkpoint in place of a good one. The file gets the permissions
    of any new file (``0o666`` minus the umask), like the run's other outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = str(path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp"))
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(state, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def load_checkpoint(path: str | Path, *, map_location: str | torch.device | None = "cpu",
                    what: str = "checkpoint") -> dict[str, Any]:
    """Load a checkpoint written by :func:`fit` with ``weights_only=True`` (no code from the file is run).

    ``what`` names the file in error messages (e.g. ``"--inputs file"`` for a file that is not a checkpoint).

    Raises:
        FileNotFoundError: ``path`` does not exist; ``IsADirectoryError``: it is a directory.
        ValueError: the file is empty, truncated or not a torch checkpoint (the message names the file).
    """
    path = Path(path)
    if path.is_dir():
        raise IsADirectoryError(f"{what} {str(path)!r} is a directory; pass the file inside it"
                                + (f" (e.g. {str(path / CHECKPOINT_NAME)!r})" if what == "checkpoint" else ""))
    if not path.exists():
        raise FileNotFoundError(f"{what} {str(path)!r} does not exist")
    if path.stat().st_size == 0:
        raise ValueError(f"{what} {str(path)!r} is empty (an interrupted copy?); delete it or pass another file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as err:
        text = str(err)
        if "unsupported global" in text.lower():
            # torch's message advises weights_only=False, i.e. running the file's code: never passed on
            found = next((line.strip() for line in text.splitlines() if "unsupported global" in line.lower()), "")
            raise ValueError(
                f"{what} {str(path)!r} holds objects other than tensors and plain containers"
                + (f" ({found})" if found else "") + "; it was refused because loading it could run code (load "
                "only files you trust, outside this package)"
            ) from None
        raise ValueError(f"{what} {str(path)!r} is corrupt or not a torch file; delete it or pass another file "
                         f"({_first_line(text)})") from None
    except Exception as err:  # torch's unpickler raises many types on damaged bytes (EOFError, IndexError, ...)
        raise ValueError(f"{what} {str(path)!r} is corrupt or truncated; delete it or pass another file "
                         f"({type(err).__name__}: {_first_line(str(err))})") from None


def _first_line(text: str) -> str:
    """The first informative line of an error text; never torch's advice to load with ``weights_only=False``."""
    skip = ("weights only load failed", "check the documentation")
    lines = [t.strip() for t in text.splitlines() if t.strip()]
    line = next((t for t in lines if "weights_only" not in t and not t.lower().startswith(skip)), "")
    return line[:300]


def lr_scheduler(
    optimizer: torch.optim.Optimizer, kind: str, epochs: int
) -> torch.optim.lr_scheduler.LRScheduler | None:
    """A per-epoch decaying learning-rate schedule, right for every epoch count.

    ``"multistep"``: the paper's lr / 10 after 75% and 90% of the epochs (75 and 90 of 100), milestones that fall on
    epoch 0 or past the end dropped, duplicates merged (2 epochs keep the base lr; 3 epochs decay once, after
    epoch 2). ``"cosine"``: cosine annealing to 0 over ``epochs``. ``"constant"``: ``None`` (no schedule; a constant
    learning rate can make adversarial training diverge late, see :func:`fit`).

    Example:
        >>> opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
        >>> sorted(lr_scheduler(opt, "multistep", 100).milestones)
        [75, 90]
        >>> sorted(lr_scheduler(opt, "multistep", 1).milestones)
        []
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 1:
        raise ValueError(f"epochs must be an int >= 1, got {epochs!r}")
    if kind == "multistep":
        milestones = sorted({m for m in (int(0.75 * epochs + 0.5), int(0.9 * epochs + 0.5)) if 0 < m < epochs})
        return torch.optim.lr_scheduler.MultiStepLR(optimizer, milestones=milestones, gamma=0.1)
    if kind == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=epochs)
    if kind == "constant":
        return None
    raise ValueError(f"schedule must be one of ['multistep', 'cosine', 'constant'], got {kind!r}")


# ----------------------------------------------------------------------------------------------- fit


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    return {str(k): (v if isinstance(v, (bool, int, float, str)) or v is None else repr(v)) for k, v in config.items()}


def _check_config(saved: dict[str, Any] | None, current: dict[str, Any], ckpt_path: Path) -> None:
    if saved is None:
        return
    keys = sorted(set(saved) & set(current))  # a field one side does not record (a plain function) is not compared
    differing = [k for k in keys if saved.get(k) != current.get(k)]
    if differing:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in differing)
        raise ConfigMismatchError(
            f"{str(ckpt_path)!r} was written by a run with another configuration ({details}); resume with the same "
            "settings, or start fresh with resume=False (CLI: --no-resume) or another output directory (--out)"
        )


DIVERGENCE_LOSS_FACTOR = 2.0  # epoch loss above this multiple of the best epoch loss so far ...
DIVERGENCE_ACC_DROP = 0.25  # ... while natural accuracy fell this far below its best: the run is diverging


def _diverged(history: list[dict[str, Any]], record: dict[str, Any]) -> bool:
    """Loss far above its best and natural training accuracy collapsing (e.g. 0.73 -> 2.28 and 0.97 -> 0.23)."""
    if not history:
        return False
    best_loss = min(float(r["loss"]) for r in history)
    best_acc = max(float(r["nat_acc"]) for r in history)
    return (float(record["loss"]) > DIVERGENCE_LOSS_FACTOR * max(best_loss, 1e-3)
            and float(record["nat_acc"]) < best_acc - DIVERGENCE_ACC_DROP)


def fit(
    model: nn.Module,
    train_loader: DataLoader,
    *,
    epochs: int,
    objective: Objective | None = None,
    loss: LossFn | None = None,
    attack: AttackFn | None = None,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    val_loader: Iterable[Any] | None = None,
    val_attack: AttackFn | None = None,
    val_attack_factory: Callable[[nn.Module], AttackFn] | None = None,
    select_best: bool = False,
    checkpoint_dir: str | Path | None = None,
    resume: bool = True,
    config: dict[str, Any] | None = None,
    amp: bool | str | torch.dtype | None = None,
    ema: ModelEMA | None = None,
    channels_last: bool | None = None,
    cudnn_benchmark: bool | None = None,
    compile: bool | str = False,
    self_adaptive: SelfAdaptiveTargets | None = None,
    sync_batchnorm: bool = False,
    seed: int = 0,
    verbose: bool = True,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
) -> list[dict[str, Any]]:
    """Train ``model`` on ``objective`` for ``epochs`` epochs; return the per-epoch history (list of dicts).

    This is the one training loop of the package: every method (FIRE, TRADES, Hellinger, ACE, MART, partial
    isometry, plain CE) is an :class:`Objective` trained here.

    Args:
        model: the model (raw module; it is wrapped in DDP here when launched by torchrun).
        train_loader: a DataLoader of ``(x, y)`` or ``(x, y, index)`` batches of [0, 1] images. A sampler or batch
            sampler with a ``set_epoch(epoch)`` method is told the epoch before each one (reshuffles that resume
            exactly).
        epochs: total number of epochs (including those of a resumed run).
        objective: the training :class:`Objective` (e.g. :class:`AdversarialObjective`).
        loss, attack: instead of ``objective``: ``loss(logits_nat, logits_adv, y)`` and ``attack(x, y) -> x_adv``
            (built on the raw model), trained as ``AdversarialObjective(loss, attack)``.
        optimizer: optimizer over ``model``'s parameters.
        scheduler: any ``torch.optim.lr_scheduler.LRScheduler``, stepped once per epoch (see :func:`lr_scheduler`).
        val_loader: optional validation data (a split held out from the training data, never the test set);
            natural and adversarial accuracy after every epoch, of the raw weights and (with ``ema``) of the EMA.
        val_attack: the attack of the raw model's validation accuracy (default: the objective's attack).
        val_attack_factory: ``factory(model) -> attack`` building the validation attack of a given model (the raw
            one and the EMA one); takes precedence over ``val_attack``. Needed for the EMA's adversarial accuracy.
        select_best: keep ``checkpoint_dir/best.pt`` (written atomically) with the weights of the epoch of highest
            validation adversarial accuracy so far (the EMA weights when ``ema`` is given), its ``epoch``,
            ``val_adv_acc`` and ``val_nat_acc`` (Rice et al. 2020: select on held-out data, not on the test set).
            Needs ``val_loader``, a validation attack and ``checkpoint_dir``; ties keep the earlier epoch.
        checkpoint_dir: where ``last.pt`` is written atomically after every epoch (rank 0 only).
        resume: continue from ``checkpoint_dir/last.pt`` when it exists. Two epochs in one go and one epoch plus
            a resumed one give identical weights (and EMA) on CPU: the checkpoint holds the RNG states of every
            rank (torch, CUDA, numpy, Python) and of the loader's generators (:func:`_loader_generators`); a
            sampler with ``set_epoch`` derives its order from the epoch. Random augmentation inside persistent
            DataLoader workers is not restored: derive it from the epoch and the index as
            :func:`fire_plugin.data.epoch_loader` does.
        config: the run's configuration (JSON-friendly values), saved with the checkpoint together with the
            objective's :meth:`Objective.config`. Resuming from a checkpoint written with another configuration
            raises :class:`ConfigMismatchError` naming the differing fields.
        amp: autocast (see :func:`resolve_amp_dtype`): ``None`` is bfloat16 on GPUs that support it, float16 with a
            GradScaler on older ones, full precision on CPU; ``"bf16"``, ``"fp16"`` or ``False`` choose.
            Attacks run outside autocast (see :class:`AdversarialObjective`); losses are computed in float32.
        ema: a :class:`ModelEMA` of ``model``, updated after every optimizer step, validated, checkpointed under
            ``"ema"`` and resumed.
        channels_last: channels-last memory format for the model (and EMA) and the image batches; ``None`` means
            on for CUDA, off for CPU.
        cudnn_benchmark: ``torch.backends.cudnn.benchmark`` during training (restored afterwards); ``None`` means on
            for CUDA. Fixed-shape batches (``drop_last=True``) avoid re-tuning on the last batch.
        compile: ``torch.compile`` the model in place (``model.compile()``: the attack, the objective and the
            evaluation all call the compiled forward; the state dict keeps its keys); a string names the backend
            (``"inductor"`` is the default of ``True``). Off by default: the first steps compile for minutes.
        self_adaptive: optional :class:`SelfAdaptiveTargets` (batches must carry indices).
        sync_batchnorm: convert BatchNorm to SyncBatchNorm under DDP.
        seed: seed of the DistributedSampler shuffling under DDP.
        verbose: tqdm bars over epochs and batches and per-epoch log lines (rank 0 only).
        on_epoch_end: callback receiving each epoch's :class:`EpochStats`.

    Every record says ``diverged=True`` (and a warning is logged and issued) when the epoch's loss is more than
    twice the best epoch loss so far while the natural training accuracy fell more than 0.25 below its best: the
    signature of a run that blew up (a constant learning rate does this to TRADES on digits near epoch 28).

    Raises:
        NonFiniteLossError: the loss became non-finite; the last good checkpoint is kept.
        ConfigMismatchError: resuming with another configuration than the checkpoint's.
    """
    if isinstance(epochs, bool) or not isinstance(epochs, int) or epochs < 0:
        raise ValueError(f"epochs must be an int >= 0, got {epochs!r}")
    if scheduler is not None and not isinstance(scheduler, torch.optim.lr_scheduler.LRScheduler):
        raise ValueError(f"scheduler must be a torch.optim.lr_scheduler.LRScheduler, got {type(scheduler).__name__}")
    if ema is not None and not isinstance(ema, ModelEMA):
        raise ValueError(f"ema must be a fire_plugin.engine.ModelEMA or None, got {type(ema).__name__}")
    if ema is not None:
        _check_ema_of(ema, model)
    if not isinstance(compile, (bool, str)):
        raise ValueError(f"compile={compile!r} is not allowed; allowed: True, False or a torch.compile backend name")
    objective = _resolve_objective(objective, loss, attack)
    run_config = _jsonable({**objective.config(), **(config or {})})
    if ema is not None:
        run_config.update({"ema.decay": ema.decay, "ema.warmup": ema.warmup})
    if val_attack is None and val_attack_factory is None and isinstance(objective, AdversarialObjective):
        val_attack = objective.attack
    val_attacks: dict[str, AttackFn | None] = {}
    if val_loader is not None:
        val_attacks["raw"] = val_attack_factory(model) if val_attack_factory is not None else val_attack
        if ema is not None:
            val_attacks["ema"] = val_attack_factory(ema.module) if val_attack_factory is not None else None
    selected = "ema" if ema is not None else "raw"
    if select_best and (checkpoint_dir is None or val_attacks.get(selected) is None):
        raise ValueError(
            "select_best=True needs checkpoint_dir, val_loader and a validation attack of the selected weights ("
            + ("val_attack_factory, for the EMA weights" if ema is not None else "val_attack or val_attack_factory")
            + f"); got checkpoint_dir={checkpoint_dir!r}, val_loader={'set' if val_loader is not None else None}"
        )
    info = setup_distributed()
    device = _model_device(model)
    amp_dtype = resolve_amp_dtype(amp, device)
    scaler = torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None
    use_channels_last = (device.type == "cuda") if channels_last is None else bool(channels_last)
    use_benchmark = (device.type == "cuda") if cudnn_benchmark is None else bool(cudnn_benchmark)

    ckpt_path = Path(checkpoint_dir) / CHECKPOINT_NAME if checkpoint_dir is not None else None
    best_path = Path(checkpoint_dir) / BEST_CHECKPOINT_NAME if checkpoint_dir is not None else None
    history: list[dict[str, Any]] = []
    start_epoch = 0
    saved_generators: list[Tensor] | None = None
    if ckpt_path is not None and resume and ckpt_path.exists():
        state = load_checkpoint(ckpt_path, map_location=device)
        _check_config(state.get("config"), run_config, ckpt_path)
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        if scheduler is not None and state.get("scheduler") is not None:
            scheduler.load_state_dict(state["scheduler"])
        if scaler is not None and state.get("scaler") is not None:
            scaler.load_state_dict(state["scaler"])
        if self_adaptive is not None and state.get("self_adaptive") is not None:
            self_adaptive.load_state_dict(state["self_adaptive"])
        if ema is not None:
            if state.get("ema") is not None:
                ema.load_state_dict(state["ema"])
            else:
                ema.module.load_state_dict(state["model"])
                _logger.warning("%s holds no EMA (written without ema=...); the EMA restarts from its weights",
                                ckpt_path)
        objective.load_state_dict(state.get("objective") or {})
        history = list(state["history"])
        start_epoch = int(state["epoch"]) + 1
        ranks = state.get("rng_ranks")
        _set_rng_state(ranks[info.rank] if ranks is not None and len(ranks) == info.world_size else state["rng"])
        saved_generators = state.get("loader_rng")
        if info.is_main:
            _logger.info("resumed from %s at epoch %d", ckpt_path, start_epoch + 1)

    if use_channels_last:
        model.to(memory_format=torch.channels_last)
        if ema is not None:
            ema.module.to(memory_format=torch.channels_last)
    if compile and start_epoch < epochs:
        model.compile(**({"backend": compile} if isinstance(compile, str) else {}))
    train_model: nn.Module = model
    loader = train_loader
    if info.enabled:
        if sync_batchnorm:
            model = nn.SyncBatchNorm.convert_sync_batchnorm(model)
        device_ids = [info.local_rank] if device.type == "cuda" else None
        train_model = nn.parallel.DistributedDataParallel(model, device_ids=device_ids)
        loader = _distributed_loader(train_loader, seed=seed)
    generators = _loader_generators(loader)
    if start_epoch > 0 and saved_generators is not None and len(saved_generators) == len(generators):
        for gen, gen_state in zip(generators, saved_generators, strict=True):
            gen.set_state(gen_state)
    elif start_epoch > 0 and generators:
        _logger.warning("%s holds no state of the DataLoader's generator (an older checkpoint?); the resumed epochs "
                        "may see other batches than an uninterrupted run", ckpt_path)

    previous_benchmark = torch.backends.cudnn.benchmark
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = use_benchmark
    try:
        epoch_bar = tqdm(range(start_epoch, epochs), desc="training", disable=not verbose or not info.is_main)
        for epoch in epoch_bar:
            for sampler in (getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)):
                if callable(getattr(sampler, "set_epoch", None)):
                    sampler.set_epoch(epoch)  # type: ignore[union-attr]
            objective.set_epoch(epoch, epochs)
            stats = train_epoch(
                train_model, loader, objective=objective, optimizer=optimizer, epoch=epoch, scaler=scaler,
                amp=amp_dtype is not None, amp_dtype=amp_dtype, self_adaptive=self_adaptive, ema=ema,
                channels_last=use_channels_last, verbose=verbose,
            )
            if scheduler is not None:
                scheduler.step()
            if val_loader is not None:
                stats.val_nat_acc, stats.val_adv_acc = evaluate_accuracy(model, val_loader, attack=val_attacks["raw"],
                                                                         verbose=False)
                if ema is not None:
                    stats.val_ema_nat_acc, stats.val_ema_adv_acc = evaluate_accuracy(
                        ema.module, val_loader, attack=val_attacks["ema"], verbose=False)
            record = stats.as_dict()
            if _diverged(history, record):
                stats.diverged = record["diverged"] = True
                message = (f"training is diverging at epoch {epoch + 1}: loss {record['loss']:.4g} (best "
                           f"{min(r['loss'] for r in history):.4g}), natural accuracy {record['nat_acc']:.3f} (best "
                           f"{max(r['nat_acc'] for r in history):.3f}); use a decaying learning rate or a smaller one")
                if info.is_main:
                    _logger.warning(message)
                    warnings.warn(message, RuntimeWarning, stacklevel=2)
            is_best = select_best and _is_best(history, record, selected)
            history.append(record)
            if verbose and info.is_main:
                postfix = {"loss": f"{stats.loss:.4f}", "nat": f"{stats.nat_acc:.3f}"}
                if stats.adv_acc is not None:
                    postfix["adv"] = f"{stats.adv_acc:.3f}"
                epoch_bar.set_postfix(postfix)
                _logger.info("epoch %d: %s", epoch + 1, _format_record(record))
            rng_ranks = _rng_states_of_all_ranks(info) if ckpt_path is not None else None
            if ckpt_path is not None and info.is_main:
                if not (math.isfinite(stats.loss) and _all_finite(model)):
                    raise NonFiniteLossError(f"non-finite weights or loss after epoch {epoch + 1}; checkpoint kept")
                if is_best and best_path is not None:  # before last.pt: a crash in between redoes this epoch
                    prefix = "val_ema_" if selected == "ema" else "val_"
                    weights = ema.module if ema is not None else unwrap_model(model)
                    save_checkpoint(best_path, {
                        "model": weights.state_dict(), "epoch": epoch, "weights": selected,
                        "val_adv_acc": record[prefix + "adv_acc"], "val_nat_acc": record[prefix + "nat_acc"],
                        "config": run_config,
                    })
                    _logger.info("epoch %d is the best so far (validation adversarial accuracy %.4f): %s",
                                 epoch + 1, record[prefix + "adv_acc"], best_path)
                save_checkpoint(
                    ckpt_path,
                    {
                        "model": unwrap_model(model).state_dict(),
                        "optimizer": optimizer.state_dict(),
                        "scheduler": scheduler.state_dict() if scheduler is not None else None,
                        "scaler": scaler.state_dict() if scaler is not None else None,
                        "self_adaptive": self_adaptive.state_dict() if self_adaptive is not None else None,
                        "ema": ema.state_dict() if ema is not None else None,
                        "objective": objective.state_dict(),
                        "config": run_config,
                        "epoch": epoch,
                        "history": history,
                        "rng": _rng_state(),
                        "rng_ranks": rng_ranks,
                        "loader_rng": [gen.get_state() for gen in generators],
                    },
                )
            if info.enabled:
                dist.barrier()
            if on_epoch_end is not None:
                on_epoch_end(stats)
    finally:
        torch.backends.cudnn.benchmark = previous_benchmark
    return history


def _check_ema_of(ema: ModelEMA, model: nn.Module) -> None:
    """``ema`` must average ``model``: the same parameter and buffer names and shapes."""
    def shapes(module: nn.Module) -> dict[str, tuple[int, ...]]:
        items = [*module.named_parameters(), *module.named_buffers()]
        return {name: tuple(t.shape) for name, t in items}

    mine, theirs = shapes(ema.module), shapes(unwrap_model(model))
    if mine != theirs:
        differ = sorted(k for k in set(mine) | set(theirs) if mine.get(k) != theirs.get(k))[:5]
        raise ValueError(f"ema is a ModelEMA of another model (parameters or buffers differ: {differ}); build it "
                         "from the model being trained: fit(model, ..., ema=ModelEMA(model))")


def _is_best(history: list[dict[str, Any]], record: dict[str, Any], selected: str) -> bool:
    """Whether ``record`` has a strictly higher validation adversarial accuracy than every earlier epoch."""
    key = "val_ema_adv_acc" if selected == "ema" else "val_adv_acc"
    if record.get(key) is None:
        return False
    earlier = [r[key] for r in history if r.get(key) is not None]
    return not earlier or record[key] > max(earlier)


def _format_record(record: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())


class IndexedDataset(Dataset[tuple[Any, ...]]):
    """Wrap a dataset so that items become ``(*item, index)`` (needed by self-adaptive training)."""

    def __init__(self, dataset: Dataset[Any]) -> None:
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, index: int) -> tuple[Any, ...]:
        item = self.dataset[index]
        return (*item, index)

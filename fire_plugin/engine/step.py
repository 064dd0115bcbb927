"""One optimizer step, one epoch of training, and the accuracy of a model over a loader."""

from __future__ import annotations

import dataclasses
import functools
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from tqdm.auto import tqdm

from fire_plugin._device import model_device as _model_device
from fire_plugin.engine.distributed import distributed_info
from fire_plugin.engine.ema import ModelEMA
from fire_plugin.engine.objectives import AdversarialObjective, AttackFn, LossFn, Objective, _resolve_objective
from fire_plugin.engine.precision import autocast_context
from fire_plugin.engine.targets import SelfAdaptiveTargets

__all__ = [
    "EpochStats",
    "NonFiniteLossError",
    "StepResult",
    "adversarial_step",
    "evaluate_accuracy",
    "train_epoch",
    "training_step",
]


class NonFiniteLossError(FloatingPointError):
    """Raised when the training loss becomes NaN or infinite; names the epoch and the batch."""


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


def _split_batch(batch: Any) -> tuple[Tensor, Tensor, Tensor | None]:
    if isinstance(batch, (list, tuple)) and len(batch) in (2, 3):
        return batch[0], batch[1], (batch[2] if len(batch) == 3 else None)
    raise ValueError("batches must be (x, y) or (x, y, index) tuples")


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

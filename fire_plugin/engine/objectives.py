"""Training objectives: what the loss of a batch is (:class:`Objective`, :class:`AdversarialObjective`,
:class:`CrossEntropyObjective`); the engine owns everything around it."""

from __future__ import annotations

import functools
import types
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor, nn

__all__ = ["AdversarialObjective", "CrossEntropyObjective", "Objective", "ObjectiveOutput"]


LossFn = Callable[[Tensor, Tensor, Tensor], Tensor]
LossTerm = Callable[[Tensor, Tensor], Tensor]
AttackFn = Callable[[Tensor, Tensor], Tensor]


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
        >>> import torch.nn.functional as F
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

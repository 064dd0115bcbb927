"""An exponential moving average of the weights (:class:`ModelEMA`), updated after every optimizer step."""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import Tensor, nn

from fire_plugin.engine.checkpoints import ConfigMismatchError
from fire_plugin.engine.distributed import unwrap_model

__all__ = ["ModelEMA"]


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

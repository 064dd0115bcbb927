"""The option groups of :func:`fire_plugin.engine.fit`: validation, checkpoints, fast paths and DDP.

``fit(model, loader, epochs=..., objective=..., optimizer=..., validation=Validation(val_loader), ...)`` and the
flat keyword form (``fit(..., val_loader=val_loader, checkpoint_dir="ckpt", amp="bf16")``) are the same call:
:func:`group_keywords` folds the flat keywords into these groups, and giving a group together with one of its
flat keywords is refused.

Example:
    >>> opts = group_keywords({"checkpoint_dir": "runs/x", "amp": "off"})
    >>> opts.checkpoints.dir, opts.checkpoints.resume, opts.fast.amp, opts.validation is None
    ('runs/x', True, 'off', True)
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypedDict

import torch
from torch import nn

from fire_plugin.engine.objectives import AttackFn, LossFn

__all__ = ["Checkpointing", "DDPOptions", "FastPaths", "FitKeywords", "FitOptions", "Validation", "group_keywords"]


@dataclass(frozen=True)
class Validation:
    """Validation after every epoch on data held out from the training set (never the test set).

    Args:
        loader: the validation data (None: no validation); natural and adversarial accuracy of the raw weights
            and (with ``ema``) of the EMA weights after every epoch.
        attack: the attack of the raw model's validation accuracy (default: the objective's attack).
        attack_factory: ``factory(model) -> attack`` building the validation attack of a given model (the raw one
            and the EMA one); takes precedence over ``attack``. Needed for the EMA's adversarial accuracy.
        select_best: keep ``best.pt`` (written atomically) with the weights of the epoch of highest validation
            adversarial accuracy so far (the EMA weights when ``ema`` is given); needs a validation attack of the
            selected weights and a checkpoint directory. Ties keep the earlier epoch.
    """

    loader: Iterable[Any] | None = None
    attack: AttackFn | None = None
    attack_factory: Callable[[nn.Module], AttackFn] | None = None
    select_best: bool = False


@dataclass(frozen=True)
class Checkpointing:
    """Where and how :func:`fit` checkpoints.

    Args:
        dir: where ``last.pt`` (and ``best.pt``) are written atomically after every epoch (rank 0 only); None: no
            checkpoints.
        resume: continue from ``dir/last.pt`` when it exists.
        config: the run's configuration (JSON-friendly values), saved with the checkpoint together with the
            objective's ``config()``; resuming from a checkpoint of another configuration is refused.
    """

    dir: str | Path | None = None
    resume: bool = True
    config: dict[str, Any] | None = None


@dataclass(frozen=True)
class FastPaths:
    """Mixed precision and the GPU fast paths of :func:`fit` (``None``: the device's default).

    Args:
        amp: autocast (see :func:`fire_plugin.engine.resolve_amp_dtype`).
        channels_last: channels-last memory format of the model (and EMA) and the batches; None: on for CUDA.
        cudnn_benchmark: ``torch.backends.cudnn.benchmark`` during training (restored afterwards); None: on for CUDA.
        compile: ``torch.compile`` the model in place; a string names the backend.
    """

    amp: bool | str | torch.dtype | None = None
    channels_last: bool | None = None
    cudnn_benchmark: bool | None = None
    compile: bool | str = False


@dataclass(frozen=True)
class DDPOptions:
    """What :func:`fit` does under torchrun: SyncBatchNorm, and the seed of the sharded sampler's shuffling."""

    sync_batchnorm: bool = False
    seed: int = 0


class FitKeywords(TypedDict, total=False):
    """The flat keywords of :func:`fit` that :func:`group_keywords` folds into the option groups."""

    loss: LossFn | None
    attack: AttackFn | None
    val_loader: Iterable[Any] | None
    val_attack: AttackFn | None
    val_attack_factory: Callable[[nn.Module], AttackFn] | None
    select_best: bool
    checkpoint_dir: str | Path | None
    resume: bool
    config: dict[str, Any] | None
    amp: bool | str | torch.dtype | None
    channels_last: bool | None
    cudnn_benchmark: bool | None
    compile: bool | str
    sync_batchnorm: bool
    seed: int


@dataclass(frozen=True)
class FitOptions:
    """Every option group of one :func:`fit` call, defaults filled in (``validation`` None: no validation)."""

    validation: Validation | None = None
    checkpoints: Checkpointing = Checkpointing()
    fast: FastPaths = FastPaths()
    ddp: DDPOptions = DDPOptions()
    loss: LossFn | None = None
    attack: AttackFn | None = None


# flat keyword -> (group, field of the group)
_FLAT: dict[str, tuple[str, str]] = {
    "val_loader": ("validation", "loader"), "val_attack": ("validation", "attack"),
    "val_attack_factory": ("validation", "attack_factory"), "select_best": ("validation", "select_best"),
    "checkpoint_dir": ("checkpoints", "dir"), "resume": ("checkpoints", "resume"),
    "config": ("checkpoints", "config"), "amp": ("fast", "amp"), "channels_last": ("fast", "channels_last"),
    "cudnn_benchmark": ("fast", "cudnn_benchmark"), "compile": ("fast", "compile"),
    "sync_batchnorm": ("ddp", "sync_batchnorm"), "seed": ("ddp", "seed"),
}
_GROUPS: dict[str, type] = {"validation": Validation, "checkpoints": Checkpointing, "fast": FastPaths,
                            "ddp": DDPOptions}


def group_keywords(keywords: dict[str, Any], **groups: Any) -> FitOptions:
    """Fold ``fit``'s flat keywords into :class:`FitOptions`, over the groups given (``validation=...`` etc.).

    Raises:
        TypeError: an unknown keyword (as Python does for any function).
        ValueError: a group given together with one of its flat keywords, or a group of the wrong type.
    """
    unknown = sorted(set(keywords) - set(_FLAT) - {"loss", "attack"})
    if unknown:
        raise TypeError(f"fit() got an unexpected keyword argument {unknown[0]!r}")
    values: dict[str, Any] = {}
    for name, cls in _GROUPS.items():
        group = groups.get(name)
        flat = {field: keywords[key] for key, (g, field) in _FLAT.items() if g == name and key in keywords}
        if group is not None:
            if not isinstance(group, cls):
                raise ValueError(f"{name} must be a fire_plugin.engine.{cls.__name__}, got {type(group).__name__}")
            if flat:
                given = sorted(k for k, (g, _) in _FLAT.items() if g == name and k in keywords)
                raise ValueError(f"pass either {name}={cls.__name__}(...) or {given}, not both")
            values[name] = group
        elif name == "validation":
            values[name] = Validation(**flat) if flat else None
        else:
            values[name] = cls(**flat)
    return FitOptions(**values, loss=keywords.get("loss"), attack=keywords.get("attack"))


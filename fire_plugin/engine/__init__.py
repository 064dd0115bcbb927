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
``torch.compile`` of the model (``compile=``). The options come in groups, :class:`Validation`,
:class:`Checkpointing`, :class:`FastPaths` and :class:`DDPOptions` (``fit(..., validation=Validation(val_loader),
checkpoints=Checkpointing("runs/x"))``); the flat keywords (``val_loader=``, ``checkpoint_dir=``, ``amp=``, ...)
are the same call.

Sub-modules: ``loop`` (:func:`fit`, :func:`lr_scheduler`), ``options`` (the option groups), ``step`` (one step,
one epoch, accuracy), ``objectives``, ``checkpoints``, ``ema``, ``precision``, ``distributed``, ``targets``.

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

from fire_plugin.engine.checkpoints import (
    BEST_CHECKPOINT_NAME,
    CHECKPOINT_NAME,
    CheckpointIsADirectoryError,
    CheckpointNotFoundError,
    ConfigMismatchError,
    CorruptCheckpointError,
    UnsafeCheckpointError,
    load_checkpoint,
    save_checkpoint,
)
from fire_plugin.engine.distributed import DistInfo, distributed_info, setup_distributed, unwrap_model
from fire_plugin.engine.ema import ModelEMA
from fire_plugin.engine.loop import fit, lr_scheduler
from fire_plugin.engine.objectives import AdversarialObjective, CrossEntropyObjective, Objective, ObjectiveOutput
from fire_plugin.engine.options import Checkpointing, DDPOptions, FastPaths, FitOptions, Validation
from fire_plugin.engine.precision import AMP_DTYPES, autocast_context, resolve_amp_dtype
from fire_plugin.engine.step import (
    EpochStats,
    NonFiniteLossError,
    StepResult,
    adversarial_step,
    evaluate_accuracy,
    train_epoch,
    training_step,
)
from fire_plugin.engine.targets import IndexedDataset, SelfAdaptiveTargets

__all__ = [
    "AMP_DTYPES",
    "BEST_CHECKPOINT_NAME",
    "CHECKPOINT_NAME",
    "AdversarialObjective",
    "CheckpointIsADirectoryError",
    "CheckpointNotFoundError",
    "Checkpointing",
    "ConfigMismatchError",
    "CorruptCheckpointError",
    "CrossEntropyObjective",
    "DDPOptions",
    "DistInfo",
    "EpochStats",
    "FastPaths",
    "FitOptions",
    "IndexedDataset",
    "ModelEMA",
    "NonFiniteLossError",
    "Objective",
    "ObjectiveOutput",
    "SelfAdaptiveTargets",
    "StepResult",
    "UnsafeCheckpointError",
    "Validation",
    "adversarial_step",
    "autocast_context",
    "distributed_info",
    "evaluate_accuracy",
    "fit",
    "load_checkpoint",
    "lr_scheduler",
    "resolve_amp_dtype",
    "save_checkpoint",
    "setup_distributed",
    "train_epoch",
    "training_step",
    "unwrap_model",
]

"""The one train-and-evaluate pipeline: a declarative :class:`PipelineSpec` in, :func:`run_pipeline` trains it
with :func:`fire_plugin.engine.fit` and (optionally) evaluates the final weights with
:func:`fire_plugin.evaluation.evaluate`.

``experiments.train`` (``fire-plugin train``), ``experiments.run_one`` (the digits runs: demo, tables) and
``presets.run_preset`` are configurations of it: each builds its spec, calls :func:`run_pipeline` and writes its
own result files; what may change on resume and when a finished run is read back stay their decisions.

The order of one run, which fixes its numbers: seed the generators (``spec.seed``), build the model (and move it
to ``spec.model.device``), the objective, the SGD optimizer and its schedule, the EMA; call ``spec.on_start``
(main rank), train, pick the final weights (the EMA's when kept; ``best.pt`` with ``select_best``), evaluate.
The data loaders come built in ``spec.data`` (building them draws nothing from the global generators).

Example:
    >>> import torch
    >>> from torch.utils.data import DataLoader, TensorDataset
    >>> data = TensorDataset(torch.rand(32, 1, 8, 8), torch.randint(0, 10, (32,)))
    >>> spec = PipelineSpec(model=ModelSpec("digits_cnn", "digits"), data=DataSpec(DataLoader(data, batch_size=16)),
    ...                     method=MethodSpec("fire", eps=0.1, steps=2), optimizer=OptimizerSpec(lr=0.05),
    ...                     fit=FitSpec(epochs=1), evaluation=EvaluationSpec(data.tensors, eps=0.1, attacks=("clean",)),
    ...                     verbose=False)
    >>> out = run_pipeline(spec)
    >>> len(out.history), out.evaluation.n_examples
    (1, 32)
"""

from __future__ import annotations

import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader

if TYPE_CHECKING:  # the engine is imported when a run starts
    from fire_plugin.engine import (
        Checkpointing,
        DDPOptions,
        FastPaths,
        ModelEMA,
        Objective,
        SelfAdaptiveTargets,
        Validation,
    )
    from fire_plugin.evaluation import EvalResult

__all__ = [
    "DataSpec",
    "EvaluationSpec",
    "FitSpec",
    "MethodSpec",
    "ModelSpec",
    "OptimizerSpec",
    "PipelineResult",
    "PipelineSpec",
    "run_pipeline",
    "seed_everything",
]

_WRN_DEPTHS = {"wrn34_10": 34, "wrn28_10": 28}


def seed_everything(seed: int) -> None:
    """Seed torch, numpy and Python's global generators (fit checkpoints all three; a resume restores them).

    >>> seed_everything(0); a = torch.rand(1); seed_everything(0); bool(torch.rand(1) == a)
    True
    """
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


@dataclass(frozen=True)
class ModelSpec:
    """The model: architecture ``name`` sized for ``dataset`` (:func:`fire_plugin.models.create_model_for_dataset`).

    Args:
        name: a registered architecture (``digits_cnn``, ``wrn34_10``, any timm name).
        dataset: the dataset it is sized for (image size, channels, classes).
        narrow: WideResNets at their depth with widen factor 1 (the presets' ``smoke="tiny"``); other
            architectures are built as usual.
        device: where the model trains; None leaves it where it was built (the CPU).
    """

    name: str
    dataset: str
    narrow: bool = False
    device: torch.device | None = None

    def build(self) -> nn.Module:
        """The freshly initialized model (draws its weights from torch's global generator), on ``device``."""
        from fire_plugin.models import WideResNet, create_model_for_dataset, model_kwargs_for_dataset

        depth = _WRN_DEPTHS.get(self.name)
        if self.narrow and depth is not None:
            model: nn.Module = WideResNet(depth=depth, widen_factor=1,
                                          **model_kwargs_for_dataset(self.name, self.dataset))
        else:
            model = create_model_for_dataset(self.name, self.dataset)
        return model.to(self.device) if self.device is not None else model


@dataclass(frozen=True)
class MethodSpec:
    """The training method and its settings: the keywords of :func:`fire_plugin.methods.build_objective`
    (the same defaults; the isometry keys apply to ``"isometry"``, the attack keys to the adversarial methods)."""

    name: str
    weight: float | None = None
    eps: float = 8 / 255
    eps_step: float | None = None
    steps: int = 10
    norm: str = "Linf"
    isometry_epsilon: float | None = None
    eta_min: float = 0.02
    eta_max: float = 0.06
    estimator: str | None = None
    n_probes: int = 1

    def objective(self, model: nn.Module, num_classes: int) -> Objective:
        """The training objective of ``model`` (``num_classes`` sizes the isometry penalty)."""
        from fire_plugin.methods import build_objective

        return build_objective(self.name, model, weight=self.weight, eps=self.eps, eps_step=self.eps_step,
                               steps=self.steps, norm=self.norm, isometry_epsilon=self.isometry_epsilon,
                               num_classes=num_classes, eta_min=self.eta_min, eta_max=self.eta_max,
                               estimator=self.estimator, n_probes=self.n_probes)


@dataclass(frozen=True)
class OptimizerSpec:
    """SGD and its per-epoch learning-rate schedule (:func:`fire_plugin.engine.lr_scheduler`)."""

    lr: float
    momentum: float = 0.9
    weight_decay: float = 5e-4
    nesterov: bool = False
    schedule: str = "multistep"

    def build(self, model: nn.Module, epochs: int) -> tuple[torch.optim.Optimizer, Any]:
        """The optimizer over ``model``'s parameters and its scheduler (None for ``"constant"``)."""
        from fire_plugin.engine import lr_scheduler

        optimizer = torch.optim.SGD(model.parameters(), lr=self.lr, momentum=self.momentum,
                                    weight_decay=self.weight_decay, nesterov=self.nesterov)
        return optimizer, lr_scheduler(optimizer, self.schedule, epochs)


@dataclass(frozen=True)
class DataSpec:
    """The training data: the loader, its number of classes, and the self-adaptive targets of an indexed loader."""

    train_loader: DataLoader[Any]
    num_classes: int = 10
    self_adaptive: SelfAdaptiveTargets | None = None


@dataclass(frozen=True)
class FitSpec:
    """The options of :func:`fire_plugin.engine.fit`: its option groups (None: fit's defaults; no checkpoints,
    no validation) and the EMA decay (None: no EMA)."""

    epochs: int
    validation: Validation | None = None
    checkpoints: Checkpointing | None = None
    fast: FastPaths | None = None
    ddp: DDPOptions | None = None
    ema: float | None = None


@dataclass(frozen=True)
class EvaluationSpec:
    """What :func:`fire_plugin.evaluation.evaluate` runs on the final weights (on the main rank).

    Args:
        data: the test images and labels ``(x, y)``, or a Dataset (stacked by ``data.dataset_to_tensors``).
        n_examples: the first images evaluated (None: all).
        eps, norm, attacks, pgd_steps, batch_size, seed, autoattack_attacks: as in ``evaluate``.
        eps_step: the PGD step size (None: ``evaluate``'s default).
    """

    data: tuple[Tensor, Tensor] | Any
    eps: float
    n_examples: int | None = None
    norm: str = "Linf"
    attacks: tuple[str, ...] = ("clean", "pgd", "autoattack")
    pgd_steps: int = 20
    eps_step: float | None = None
    batch_size: int = 256
    seed: int = 0
    autoattack_attacks: tuple[str, ...] | None = None

    def tensors(self) -> tuple[Tensor, Tensor]:
        """The evaluated images and labels: the first ``n_examples``."""
        if isinstance(self.data, tuple):
            x, y = self.data
            return (x, y) if self.n_examples is None else (x[: self.n_examples], y[: self.n_examples])
        from fire_plugin.data import dataset_to_tensors

        return dataset_to_tensors(self.data, n_examples=self.n_examples)


@dataclass(frozen=True)
class PipelineSpec:
    """One train-and-evaluate run (see :func:`run_pipeline`).

    Args:
        model, data, method, optimizer, fit: what trains, on what, how (see each class).
        evaluation: what is evaluated after training (None: nothing).
        seed: seeds the global generators before the model is built.
        seed_all: seed numpy and Python's ``random`` too (:func:`seed_everything`), not only torch.
        on_start: called on the main rank once the model is built, right before training (e.g. to write the
            run's configuration file).
        verbose: progress bars and per-epoch log lines.
    """

    model: ModelSpec
    data: DataSpec
    method: MethodSpec
    optimizer: OptimizerSpec
    fit: FitSpec
    evaluation: EvaluationSpec | None = None
    seed: int = 0
    seed_all: bool = True
    on_start: Callable[[], None] | None = None
    verbose: bool = True


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` returns.

    Attributes:
        history: the per-epoch records of :func:`fit` (of all runs of a resumed one).
        model: the final weights in eval mode (the EMA's when kept, ``best.pt``'s with ``select_best``); None on
            ranks other than the main one.
        best: the ``best.pt`` checkpoint loaded with ``select_best`` (its ``epoch``, ``weights``,
            ``val_adv_acc``), else None.
        evaluation: the evaluation (None without ``spec.evaluation`` and on other ranks).
        test: the evaluated ``(x, y)``.
        seconds: wall time of ``"train"`` (this call's :func:`fit`) and ``"evaluate"``.
        is_main: whether this process is the main rank (the one that writes files).
    """

    history: list[dict[str, Any]]
    model: nn.Module | None = None
    best: dict[str, Any] | None = None
    evaluation: EvalResult | None = None
    test: tuple[Tensor, Tensor] | None = None
    seconds: dict[str, float] = field(default_factory=dict)
    is_main: bool = True


def _prepare(spec: PipelineSpec) -> tuple[nn.Module, Objective, torch.optim.Optimizer, Any, ModelEMA | None]:
    """Seed, then build the model, objective, optimizer, schedule and EMA, in that order."""
    from fire_plugin.engine import ModelEMA

    if spec.seed_all:
        seed_everything(spec.seed)
    else:
        torch.manual_seed(spec.seed)
    model = spec.model.build()
    objective = spec.method.objective(model, spec.data.num_classes)
    optimizer, scheduler = spec.optimizer.build(model, spec.fit.epochs)
    ema = ModelEMA(model, decay=spec.fit.ema) if spec.fit.ema is not None else None
    return model, objective, optimizer, scheduler, ema


def _final_weights(model: nn.Module, spec: FitSpec) -> tuple[nn.Module, dict[str, Any] | None]:
    """The evaluated weights: ``best.pt`` with ``select_best``, else the last ones; in eval mode."""
    from fire_plugin._device import model_device
    from fire_plugin.engine import BEST_CHECKPOINT_NAME, load_checkpoint

    best = None
    if spec.validation is not None and spec.validation.select_best and spec.checkpoints is not None \
            and spec.checkpoints.dir is not None:
        best = load_checkpoint(Path(spec.checkpoints.dir) / BEST_CHECKPOINT_NAME, map_location=model_device(model))
        model.load_state_dict(best["model"])
    return model.eval(), best


def run_pipeline(spec: PipelineSpec) -> PipelineResult:
    """Train ``spec`` with :func:`fire_plugin.engine.fit`, then evaluate the final weights when asked.

    Resuming (``spec.fit.checkpoints``) is :func:`fit`'s: it continues from ``last.pt`` bit for bit and refuses
    a checkpoint of another configuration (:class:`fire_plugin.engine.ConfigMismatchError`). Writes nothing but
    the checkpoints (and what ``spec.on_start`` writes).

    Returns:
        a :class:`PipelineResult` (history, final model, evaluation, timings).
    """
    from fire_plugin.engine import distributed_info, fit

    model, objective, optimizer, scheduler, ema = _prepare(spec)
    is_main = distributed_info().is_main
    if spec.on_start is not None and is_main:
        spec.on_start()
    start = time.perf_counter()
    history = fit(model, spec.data.train_loader, epochs=spec.fit.epochs, objective=objective, optimizer=optimizer,
                  scheduler=scheduler, validation=spec.fit.validation, checkpoints=spec.fit.checkpoints,
                  fast=spec.fit.fast, ddp=spec.fit.ddp, ema=ema, self_adaptive=spec.data.self_adaptive,
                  verbose=spec.verbose)
    result = PipelineResult(history=history, seconds={"train": time.perf_counter() - start}, is_main=is_main)
    if not is_main:
        return result
    result.model, result.best = _final_weights(ema.module if ema is not None else model, spec.fit)
    if spec.evaluation is not None:
        result.test = spec.evaluation.tensors()
        start = time.perf_counter()
        result.evaluation = _evaluate(result.model, result.test, spec.evaluation, verbose=spec.verbose)
        result.seconds["evaluate"] = time.perf_counter() - start
    return result


def _evaluate(model: nn.Module, test: tuple[Tensor, Tensor], spec: EvaluationSpec, *, verbose: bool) -> EvalResult:
    from fire_plugin.evaluation import evaluate

    x, y = test
    return evaluate(model, x, y, eps=spec.eps, norm=spec.norm, attacks=spec.attacks, pgd_steps=spec.pgd_steps,
                    eps_step=spec.eps_step, batch_size=spec.batch_size, seed=spec.seed,
                    autoattack_attacks=spec.autoattack_attacks, verbose=verbose)

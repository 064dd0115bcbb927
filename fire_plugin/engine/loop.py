"""The one training loop (:func:`fit`): resume, validation, ``best.pt`` selection, divergence warning,
checkpoints after every epoch; and the per-epoch learning-rate schedules."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from fire_plugin._device import model_device as _model_device
from fire_plugin.engine.checkpoints import (
    BEST_CHECKPOINT_NAME,
    CHECKPOINT_NAME,
    _check_config,
    _jsonable,
    _loader_generators,
    _rng_state,
    _rng_states_of_all_ranks,
    _set_rng_state,
    load_checkpoint,
    save_checkpoint,
)
from fire_plugin.engine.distributed import DistInfo, _distributed_loader, setup_distributed, unwrap_model
from fire_plugin.engine.ema import ModelEMA, _check_ema_of
from fire_plugin.engine.objectives import AdversarialObjective, AttackFn, Objective, _resolve_objective
from fire_plugin.engine.options import (
    Checkpointing,
    DDPOptions,
    FastPaths,
    FitKeywords,
    FitOptions,
    Validation,
    group_keywords,
)
from fire_plugin.engine.precision import resolve_amp_dtype
from fire_plugin.engine.step import EpochStats, NonFiniteLossError, evaluate_accuracy, train_epoch
from fire_plugin.engine.targets import SelfAdaptiveTargets

if TYPE_CHECKING:
    from typing import Unpack

__all__ = ["fit", "lr_scheduler"]


_logger = logging.getLogger(__name__)


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


def _all_finite(model: nn.Module) -> bool:
    return all(bool(torch.isfinite(p).all()) for p in model.parameters())


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
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler | None = None,
    validation: Validation | None = None,
    checkpoints: Checkpointing | None = None,
    fast: FastPaths | None = None,
    ddp: DDPOptions | None = None,
    ema: ModelEMA | None = None,
    self_adaptive: SelfAdaptiveTargets | None = None,
    verbose: bool = True,
    on_epoch_end: Callable[[EpochStats], None] | None = None,
    **keywords: Unpack[FitKeywords],
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
        objective: the training :class:`Objective` (e.g. :class:`AdversarialObjective`); or, in the flat form,
            ``loss=`` (``loss(logits_nat, logits_adv, y)``) and ``attack=`` (``attack(x, y) -> x_adv``), trained as
            ``AdversarialObjective(loss, attack)``.
        optimizer: optimizer over ``model``'s parameters.
        scheduler: any ``torch.optim.lr_scheduler.LRScheduler``, stepped once per epoch (see :func:`lr_scheduler`).
        validation: a :class:`Validation` (flat form: ``val_loader``, ``val_attack``, ``val_attack_factory``,
            ``select_best``): accuracies after every epoch and ``best.pt`` selection (Rice et al. 2020: select on
            held-out data, not on the test set); ``best.pt`` holds the weights, ``epoch``, ``weights`` (raw or
            ema), ``val_adv_acc`` and ``val_nat_acc``.
        checkpoints: a :class:`Checkpointing` (flat form: ``checkpoint_dir``, ``resume``, ``config``). Two epochs
            in one go and one epoch plus a resumed one give identical weights (and EMA) on CPU: the checkpoint holds
            the RNG states of every rank (torch, CUDA, numpy, Python) and of the loader's generators; a sampler
            with ``set_epoch`` derives its order from the epoch. Random augmentation inside persistent DataLoader
            workers is not restored: derive it from the epoch and the index as
            :func:`fire_plugin.data.epoch_loader` does. Resuming from a checkpoint written with another
            configuration raises :class:`ConfigMismatchError` naming the differing fields.
        fast: a :class:`FastPaths` (flat form: ``amp``, ``channels_last``, ``cudnn_benchmark``, ``compile``).
            ``amp=None`` is bfloat16 on GPUs that support it, float16 with a GradScaler on older ones, full
            precision on CPU. Attacks run outside autocast (see :class:`AdversarialObjective`); losses are computed
            in float32. ``compile`` compiles in place (``model.compile()``; the state dict keeps its keys); off by
            default: the first steps compile for minutes.
        ddp: a :class:`DDPOptions` (flat form: ``sync_batchnorm``, ``seed`` of the sharded sampler).
        ema: a :class:`ModelEMA` of ``model``, updated after every optimizer step, validated, checkpointed under
            ``"ema"`` and resumed.
        self_adaptive: optional :class:`SelfAdaptiveTargets` (batches must carry indices).
        verbose: tqdm bars over epochs and batches and per-epoch log lines (rank 0 only).
        on_epoch_end: callback receiving each epoch's :class:`EpochStats`.

    Every record says ``diverged=True`` (and a warning is logged and issued) when the epoch's loss is more than
    twice the best epoch loss so far while the natural training accuracy fell more than 0.25 below its best: the
    signature of a run that blew up (a constant learning rate does this to TRADES on digits near epoch 28).

    Raises:
        NonFiniteLossError: the loss became non-finite; the last good checkpoint is kept.
        ConfigMismatchError: resuming with another configuration than the checkpoint's.
    """
    options = group_keywords(dict(keywords), validation=validation, checkpoints=checkpoints, fast=fast, ddp=ddp)
    _check_arguments(model, epochs=epochs, scheduler=scheduler, ema=ema, compile=options.fast.compile)
    run = _Run.start(model, train_loader, epochs=epochs, objective=_resolve_objective(objective, options.loss,
                     options.attack), optimizer=optimizer, scheduler=scheduler, options=options, ema=ema,
                     self_adaptive=self_adaptive, verbose=verbose)
    previous_benchmark = torch.backends.cudnn.benchmark
    if run.device.type == "cuda":
        torch.backends.cudnn.benchmark = run.use_benchmark
    try:
        epoch_bar = tqdm(range(run.start_epoch, epochs), desc="training", disable=not verbose or not run.info.is_main)
        for epoch in epoch_bar:
            stats, record, is_best = run.train_one_epoch(epoch)
            if verbose and run.info.is_main:
                postfix = {"loss": f"{stats.loss:.4f}", "nat": f"{stats.nat_acc:.3f}"}
                if stats.adv_acc is not None:
                    postfix["adv"] = f"{stats.adv_acc:.3f}"
                epoch_bar.set_postfix(postfix)
                _logger.info("epoch %d: %s", epoch + 1, _format_record(record))
            run.save(epoch, stats, record, is_best)
            if run.info.enabled:
                dist.barrier()
            if on_epoch_end is not None:
                on_epoch_end(stats)
    finally:
        torch.backends.cudnn.benchmark = previous_benchmark
    return run.history


def _check_arguments(model: nn.Module, *, epochs: int, scheduler: Any, ema: Any, compile: Any) -> None:
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


def _validation_attacks(model: nn.Module, objective: Objective, validation: Validation | None,
                        ema: ModelEMA | None) -> dict[str, AttackFn | None]:
    """The validation attacks of the raw weights (``"raw"``) and of the EMA (``"ema"``); empty without validation."""
    if validation is None or validation.loader is None:
        return {}
    factory, attack = validation.attack_factory, validation.attack
    if attack is None and factory is None and isinstance(objective, AdversarialObjective):
        attack = objective.attack
    attacks: dict[str, AttackFn | None] = {"raw": factory(model) if factory is not None else attack}
    if ema is not None:
        attacks["ema"] = factory(ema.module) if factory is not None else None
    return attacks


@dataclass
class _Run:
    """The state of one :func:`fit` call: what it trains, where it writes, what it has done so far."""

    model: nn.Module  # the raw module (SyncBatchNorm-converted under DDP when asked)
    train_model: nn.Module  # what the steps call: the model, or its DDP wrapper
    loader: Any
    epochs: int
    objective: Objective
    optimizer: torch.optim.Optimizer
    scheduler: torch.optim.lr_scheduler.LRScheduler | None
    options: FitOptions
    ema: ModelEMA | None
    self_adaptive: SelfAdaptiveTargets | None
    verbose: bool
    info: DistInfo
    device: torch.device
    amp_dtype: torch.dtype | None
    scaler: torch.amp.GradScaler | None
    use_channels_last: bool
    use_benchmark: bool
    run_config: dict[str, Any]
    val_attacks: dict[str, AttackFn | None]
    selected: str  # "ema" or "raw": the weights best.pt selects
    history: list[dict[str, Any]] = field(default_factory=list)
    start_epoch: int = 0
    generators: list[torch.Generator] = field(default_factory=list)

    @classmethod
    def start(cls, model: nn.Module, train_loader: Any, *, epochs: int, objective: Objective,
              optimizer: torch.optim.Optimizer, scheduler: torch.optim.lr_scheduler.LRScheduler | None,
              options: FitOptions, ema: ModelEMA | None, self_adaptive: SelfAdaptiveTargets | None,
              verbose: bool) -> _Run:
        """Check the options, resume from the last checkpoint, prepare the model and the loader."""
        ckpt = options.checkpoints
        run_config = _jsonable({**objective.config(), **(ckpt.config or {})})
        if ema is not None:
            run_config.update({"ema.decay": ema.decay, "ema.warmup": ema.warmup})
        val_attacks = _validation_attacks(model, objective, options.validation, ema)
        selected = "ema" if ema is not None else "raw"
        validation = options.validation
        if validation is not None and validation.select_best and (ckpt.dir is None
                                                                  or val_attacks.get(selected) is None):
            raise ValueError(
                "select_best=True needs checkpoint_dir, val_loader and a validation attack of the selected weights ("
                + ("val_attack_factory, for the EMA weights" if ema is not None else "val_attack or val_attack_factory")
                + f"); got checkpoint_dir={ckpt.dir!r}, val_loader={'set' if validation.loader is not None else None}"
            )
        info = setup_distributed()
        device = _model_device(model)
        amp_dtype = resolve_amp_dtype(options.fast.amp, device)
        run = cls(
            model=model, train_model=model, loader=train_loader, epochs=epochs, objective=objective,
            optimizer=optimizer, scheduler=scheduler, options=options, ema=ema, self_adaptive=self_adaptive,
            verbose=verbose, info=info, device=device, amp_dtype=amp_dtype,
            scaler=torch.amp.GradScaler("cuda") if amp_dtype == torch.float16 else None,
            use_channels_last=(device.type == "cuda") if options.fast.channels_last is None
            else bool(options.fast.channels_last),
            use_benchmark=(device.type == "cuda") if options.fast.cudnn_benchmark is None
            else bool(options.fast.cudnn_benchmark),
            run_config=run_config, val_attacks=val_attacks, selected=selected,
        )
        saved_generators = run.resume() if ckpt.dir is not None and ckpt.resume and run.last_path.exists() else None
        run.prepare(train_loader, saved_generators)
        return run

    @property
    def last_path(self) -> Path:
        return Path(self.options.checkpoints.dir or ".") / CHECKPOINT_NAME

    @property
    def best_path(self) -> Path:
        return Path(self.options.checkpoints.dir or ".") / BEST_CHECKPOINT_NAME

    @property
    def select_best(self) -> bool:
        return self.options.validation is not None and self.options.validation.select_best

    def resume(self) -> list[Tensor] | None:
        """Restore everything from ``last.pt``; return the saved states of the loader's generators."""
        ckpt_path = self.last_path
        state = load_checkpoint(ckpt_path, map_location=self.device)
        _check_config(state.get("config"), self.run_config, ckpt_path)
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        for name, obj in (("scheduler", self.scheduler), ("scaler", self.scaler),
                          ("self_adaptive", self.self_adaptive)):
            if obj is not None and state.get(name) is not None:
                obj.load_state_dict(state[name])
        if self.ema is not None:
            if state.get("ema") is not None:
                self.ema.load_state_dict(state["ema"])
            else:
                self.ema.module.load_state_dict(state["model"])
                _logger.warning("%s holds no EMA (written without ema=...); the EMA restarts from its weights",
                                ckpt_path)
        self.objective.load_state_dict(state.get("objective") or {})
        self.history = list(state["history"])
        self.start_epoch = int(state["epoch"]) + 1
        ranks = state.get("rng_ranks")
        info = self.info
        _set_rng_state(ranks[info.rank] if ranks is not None and len(ranks) == info.world_size else state["rng"])
        if info.is_main:
            _logger.info("resumed from %s at epoch %d", ckpt_path, self.start_epoch + 1)
        return state.get("loader_rng")

    def prepare(self, train_loader: Any, saved_generators: list[Tensor] | None) -> None:
        """Memory format, compilation, the DDP wrapper and sharded loader, the loader's generators."""
        fast, info = self.options.fast, self.info
        if self.use_channels_last:
            self.model.to(memory_format=torch.channels_last)
            if self.ema is not None:
                self.ema.module.to(memory_format=torch.channels_last)
        if fast.compile and self.start_epoch < self.epochs:
            self.model.compile(**({"backend": fast.compile} if isinstance(fast.compile, str) else {}))
        if info.enabled:
            if self.options.ddp.sync_batchnorm:
                self.model = nn.SyncBatchNorm.convert_sync_batchnorm(self.model)
            device_ids = [info.local_rank] if self.device.type == "cuda" else None
            self.train_model = nn.parallel.DistributedDataParallel(self.model, device_ids=device_ids)
            self.loader = _distributed_loader(train_loader, seed=self.options.ddp.seed)
        self.generators = _loader_generators(self.loader)
        if self.start_epoch > 0 and saved_generators is not None and len(saved_generators) == len(self.generators):
            for gen, gen_state in zip(self.generators, saved_generators, strict=True):
                gen.set_state(gen_state)
        elif self.start_epoch > 0 and self.generators:
            _logger.warning("%s holds no state of the DataLoader's generator (an older checkpoint?); the resumed "
                            "epochs may see other batches than an uninterrupted run", self.last_path)

    def train_one_epoch(self, epoch: int) -> tuple[EpochStats, dict[str, Any], bool]:
        """Train and validate epoch ``epoch``; append its record; return it with whether it is the best so far."""
        for sampler in (getattr(self.loader, "sampler", None), getattr(self.loader, "batch_sampler", None)):
            if callable(getattr(sampler, "set_epoch", None)):
                sampler.set_epoch(epoch)  # type: ignore[union-attr]
        self.objective.set_epoch(epoch, self.epochs)
        stats = train_epoch(
            self.train_model, self.loader, objective=self.objective, optimizer=self.optimizer, epoch=epoch,
            scaler=self.scaler, amp=self.amp_dtype is not None, amp_dtype=self.amp_dtype,
            self_adaptive=self.self_adaptive, ema=self.ema, channels_last=self.use_channels_last,
            verbose=self.verbose,
        )
        if self.scheduler is not None:
            self.scheduler.step()
        validation = self.options.validation
        if validation is not None and validation.loader is not None:
            stats.val_nat_acc, stats.val_adv_acc = evaluate_accuracy(
                self.model, validation.loader, attack=self.val_attacks["raw"], verbose=False)
            if self.ema is not None:
                stats.val_ema_nat_acc, stats.val_ema_adv_acc = evaluate_accuracy(
                    self.ema.module, validation.loader, attack=self.val_attacks["ema"], verbose=False)
        record = stats.as_dict()
        if _diverged(self.history, record):
            stats.diverged = record["diverged"] = True
            self._warn_diverging(epoch, record)
        is_best = self.select_best and _is_best(self.history, record, self.selected)
        self.history.append(record)
        return stats, record, is_best

    def _warn_diverging(self, epoch: int, record: dict[str, Any]) -> None:
        history = self.history
        message = (f"training is diverging at epoch {epoch + 1}: loss {record['loss']:.4g} (best "
                   f"{min(r['loss'] for r in history):.4g}), natural accuracy {record['nat_acc']:.3f} (best "
                   f"{max(r['nat_acc'] for r in history):.3f}); use a decaying learning rate or a smaller one")
        if self.info.is_main:
            _logger.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=4)  # fit's caller <- fit <- train_one_epoch <- here

    def save(self, epoch: int, stats: EpochStats, record: dict[str, Any], is_best: bool) -> None:
        """``best.pt`` (when this epoch is the best so far), then ``last.pt``; rank 0 writes, every rank joins."""
        if self.options.checkpoints.dir is None:
            return
        rng_ranks = _rng_states_of_all_ranks(self.info)
        if not self.info.is_main:
            return
        if not (math.isfinite(stats.loss) and _all_finite(self.model)):
            raise NonFiniteLossError(f"non-finite weights or loss after epoch {epoch + 1}; checkpoint kept")
        if is_best:  # before last.pt: a crash in between redoes this epoch
            prefix = "val_ema_" if self.selected == "ema" else "val_"
            weights = self.ema.module if self.ema is not None else unwrap_model(self.model)
            save_checkpoint(self.best_path, {
                "model": weights.state_dict(), "epoch": epoch, "weights": self.selected,
                "val_adv_acc": record[prefix + "adv_acc"], "val_nat_acc": record[prefix + "nat_acc"],
                "config": self.run_config,
            })
            _logger.info("epoch %d is the best so far (validation adversarial accuracy %.4f): %s",
                         epoch + 1, record[prefix + "adv_acc"], self.best_path)
        save_checkpoint(self.last_path, {
            "model": unwrap_model(self.model).state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict() if self.scheduler is not None else None,
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "self_adaptive": self.self_adaptive.state_dict() if self.self_adaptive is not None else None,
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "objective": self.objective.state_dict(),
            "config": self.run_config,
            "epoch": epoch,
            "history": self.history,
            "rng": _rng_state(),
            "rng_ranks": rng_ranks,
            "loader_rng": [gen.get_state() for gen in self.generators],
        })


def _is_best(history: list[dict[str, Any]], record: dict[str, Any], selected: str) -> bool:
    """Whether ``record`` has a strictly higher validation adversarial accuracy than every earlier epoch."""
    key = "val_ema_adv_acc" if selected == "ema" else "val_adv_acc"
    if record.get(key) is None:
        return False
    earlier = [r[key] for r in history if r.get(key) is not None]
    return not earlier or record[key] > max(earlier)


def _format_record(record: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())

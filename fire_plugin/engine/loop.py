"""The one training loop (:func:`fit`): resume, validation, ``best.pt`` selection, divergence warning,
checkpoints after every epoch; and the per-epoch learning-rate schedules."""

from __future__ import annotations

import logging
import math
import warnings
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

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
from fire_plugin.engine.distributed import _distributed_loader, setup_distributed, unwrap_model
from fire_plugin.engine.ema import ModelEMA, _check_ema_of
from fire_plugin.engine.objectives import AdversarialObjective, AttackFn, LossFn, Objective, _resolve_objective
from fire_plugin.engine.precision import _model_device, resolve_amp_dtype
from fire_plugin.engine.step import EpochStats, NonFiniteLossError, evaluate_accuracy, train_epoch
from fire_plugin.engine.targets import SelfAdaptiveTargets

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


def _is_best(history: list[dict[str, Any]], record: dict[str, Any], selected: str) -> bool:
    """Whether ``record`` has a strictly higher validation adversarial accuracy than every earlier epoch."""
    key = "val_ema_adv_acc" if selected == "ema" else "val_adv_acc"
    if record.get(key) is None:
        return False
    earlier = [r[key] for r in history if r.get(key) is not None]
    return not earlier or record[key] > max(earlier)


def _format_record(record: dict[str, Any]) -> str:
    return " ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in record.items())

"""Running a preset: :func:`run_preset` is a configuration of :func:`fire_plugin.pipeline.run_pipeline` (train,
select ``best.pt`` on a held-out validation split, evaluate the test set); it writes the results and the
RobustBench ``model_info`` JSON.
"""

from __future__ import annotations

import csv
import dataclasses
import json
import logging
import shutil
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported where it is used: listing and showing presets does not need it
    from torch import Tensor, nn

    from fire_plugin.pipeline import MethodSpec, PipelineResult, PipelineSpec

from fire_plugin.presets.config import (
    _ARCHITECTURES,
    RUNTIME_KEYS,
    load_preset,
)

__all__ = ["random_crop_flip", "run_preset"]

_logger = logging.getLogger(__name__)


# ----------------------------------------------------------------------------------------------- pieces


def random_crop_flip(x: Tensor, *, padding: int = 4) -> Tensor:
    """The paper's augmentation of one ``(C, H, W)`` image: random crop after zero padding, random flip.

    >>> import torch
    >>> random_crop_flip(torch.ones(3, 8, 8)).shape
    torch.Size([3, 8, 8])
    """
    import torch

    _, h, w = x.shape
    padded = torch.nn.functional.pad(x, (padding, padding, padding, padding))
    top, left = (int(v) for v in torch.randint(0, 2 * padding + 1, (2,)))
    out = padded[:, top : top + h, left : left + w]
    return out.flip(-1) if bool(torch.rand(()) < 0.5) else out.contiguous()


class _Augmented:
    """A map-style dataset (what DataLoader needs) applying ``transform`` to the images of ``dataset``."""

    def __init__(self, dataset: Any, transform: Callable[[Tensor], Tensor]) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> tuple[Tensor, Any]:
        x, y = self.dataset[index]
        return self.transform(x), y


def _method_spec(cfg: dict[str, Any], num_classes: int, *, smoke: bool) -> MethodSpec:
    """The preset's method, as the pipeline's :class:`~fire_plugin.pipeline.MethodSpec` (the keywords of
    :func:`fire_plugin.methods.build_objective` from the preset's keys)."""
    from fire_plugin.pipeline import MethodSpec

    if cfg["method"] == "isometry":
        from fire_plugin.isometry import delta_m

        return MethodSpec("isometry", isometry_epsilon=delta_m(num_classes) / cfg["delta_over_epsilon"],
                          eta_min=cfg["eta_min"], eta_max=cfg["eta_max"], estimator=cfg["estimator"],
                          n_probes=cfg["n_probes"])
    steps = min(cfg["attack_steps"], 2) if smoke else cfg["attack_steps"]
    return MethodSpec(cfg["method"], weight=cfg["lam"], eps=cfg["eps"], eps_step=cfg["eps_step"], steps=steps)


def _split_train_val(dataset: Any, val_size: int, seed: int) -> tuple[Any, Any]:
    import torch
    from torch.utils.data import Subset

    n = len(dataset)
    if val_size >= n:
        raise ValueError(f"val_size={val_size!r} is not allowed for a training set of {n} images; allowed: < {n}")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    return Subset(dataset, sorted(order[val_size:])), (Subset(dataset, sorted(order[:val_size])) if val_size else None)


def _synthetic(info: Any, n: int, seed: int) -> Any:
    import torch
    from torch.utils.data import TensorDataset

    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n, info.in_chans, info.image_size, info.image_size, generator=gen)
    return TensorDataset(x, torch.randint(0, info.num_classes, (n,), generator=gen))


_IDENTITY_KEYS = ("dataset", "model", "method")


def _changed_identity(name: str, cfg: dict[str, Any]) -> dict[str, Any]:
    """The dataset / model / method that overrides changed from preset ``name``'s own (empty when none)."""
    own = load_preset(name)
    return {key: cfg[key] for key in _IDENTITY_KEYS if cfg[key] != own[key]}


def _model_id(name: str, cfg: dict[str, Any] | None = None) -> str:
    """``FirePlugin<Preset>``, or, when overrides changed the dataset, model or method, a name built from what
    was actually trained (``FirePluginCifar10Resnet18CifarFire``), so that files name the model they describe.

    >>> _model_id("cifar10-wrn34-fire")
    'FirePluginCifar10Wrn34Fire'
    >>> _model_id("cifar10-wrn34-fire", load_preset("cifar10-wrn34-fire", overrides=["model=resnet18_cifar"]))
    'FirePluginCifar10Resnet18CifarFire'
    """
    parts = name.replace("_", "-").split("-")
    if cfg is not None and _changed_identity(name, cfg):
        parts = [cfg["dataset"], *cfg["model"].split("_"), cfg["method"]]
    return "FirePlugin" + "".join(part[:1].upper() + part[1:] for part in parts)


def _write_csv(path: Path, row: dict[str, Any]) -> None:
    from fire_plugin.runfolder import atomic_path

    with atomic_path(path) as tmp, tmp.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=list(row))
        writer.writeheader()
        writer.writerow(row)


# ----------------------------------------------------------------------------------------------- run


def run_preset(
    name: str,
    *,
    overrides: Sequence[str] | dict[str, Any] = (),
    out: str | Path,
    smoke: bool | str = False,
    tiny: bool = False,
    keep_checkpoints: bool | None = None,
    resume: bool = True,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train and evaluate preset ``name``; write ``config.json``, ``results.json``, ``results.csv`` and the
    RobustBench ``model_info`` JSON under ``out``; return the results dict.

    Rerunning with the same ``out`` resumes from ``out/checkpoints/last.pt`` (a changed configuration raises
    :class:`fire_plugin.engine.ConfigMismatchError`; keys in ``RUNTIME_KEYS`` may change); a finished run returns
    its saved results. Under torchrun the global batch is split over the ranks and only rank 0 evaluates and writes.

    Args:
        name: a preset of :func:`list_presets`.
        overrides: ``["key=value", ...]`` as given to ``--set`` (or a dict).
        out: output folder.
        smoke: a check that the preset runs, not a result: CPU, synthetic data of the preset's shape (2 batches
            of 2 images, 1 epoch, training attack of at most 2 steps), the preset's architecture, and a reduced
            evaluation on 4 images (PGD-2; AutoAttack's APGD-CE alone instead of the standard four attacks).
            Measured: see the README (the cost is that of building and stepping the full-size model).
            ``smoke="tiny"``: the same with WideResNets at their depth but widen factor 1 (under a second; for
            tests); ``tiny=True`` with ``smoke=True`` is its older spelling.
        tiny: with ``smoke=True``, the same as ``smoke="tiny"``.
        keep_checkpoints: keep ``out/checkpoints``; None: keep them except for smoke runs (whose checkpoints,
            550 MB for a WRN-34-10, go to ``out/.smoke-checkpoints`` and are deleted at the end).
        resume: continue from ``out/checkpoints/last.pt`` when it exists.
        verbose: progress bars and per-epoch log lines.

    Returns:
        ``{"preset", "config", "eval", "weights", "train_seconds", "wall_seconds", "history", "paths"}``.

    Raises:
        ValueError: bad preset, key or value; extra data required but not given.
        FileNotFoundError: the extra data file does not exist.
        fire_plugin.data.DatasetNotFoundError: the dataset is not under ``data_dir`` and cannot be downloaded.
    """
    from fire_plugin.runfolder import run_lock

    if smoke == "tiny":
        smoke, tiny = True, True
    elif not isinstance(smoke, bool):
        raise ValueError(f"smoke={smoke!r} is not allowed; allowed: False, True or 'tiny'")

    load_preset(name, overrides=overrides)  # a bad name or value is reported before the folder is created
    with run_lock(out, command=f"train --preset {name}"):  # rank 0 only, under torchrun
        return _run_preset_locked(name, overrides=overrides, out=out, smoke=smoke, tiny=tiny, resume=resume,
                                  keep_checkpoints=keep_checkpoints, verbose=verbose)


def _run_preset_locked(name: str, *, overrides: Sequence[str] | dict[str, Any], out: str | Path, smoke: bool,
                       tiny: bool, resume: bool, keep_checkpoints: bool | None, verbose: bool) -> dict[str, Any]:
    import torch

    from fire_plugin.data import DATASETS
    from fire_plugin.engine import distributed_info
    from fire_plugin.pipeline import run_pipeline

    wall_start = time.perf_counter()
    cfg = load_preset(name, overrides=overrides)
    if smoke:
        cfg.update({"epochs": 1, "batch_size": 2, "val_size": 2 if cfg["select_best"] else 0, "val_pgd_steps": 1,
                    "eval_n": 4, "eval_pgd_steps": 2, "eval_batch_size": 4,
                    "workers": 0, "amp": "off", "channels_last": "off", "cudnn_benchmark": "off"})
    out = Path(out)
    keep = (not smoke) if keep_checkpoints is None else bool(keep_checkpoints)
    run = _PresetRun(name=name, cfg=cfg, out=out, smoke=smoke, tiny=smoke and tiny, keep=keep,
                     checkpoint_dir=out / ("checkpoints" if keep else ".smoke-checkpoints"))
    saved = run.finished() if resume else None
    if saved is not None:
        return saved
    run.check_extra_data()

    info = distributed_info()
    data_info = DATASETS[cfg["dataset"]]
    cuda = torch.cuda.is_available() and not smoke
    device = torch.device("cuda", info.local_rank) if cuda else torch.device("cpu")
    if cfg["batch_size"] % info.world_size:
        raise ValueError(f"batch_size={cfg['batch_size']} is not divisible by the {info.world_size} torchrun ranks")
    loader, val_loader, test_set = run.data(data_info, cfg["batch_size"] // info.world_size, cuda=cuda)
    trained = run_pipeline(run.spec(data_info, loader, val_loader, test_set, device=device, resume=resume,
                                    verbose=verbose))
    if not trained.is_main:
        return {"preset": name, "config": cfg, "history": trained.history}
    return run.write(trained, wall_start=wall_start)


@dataclass
class _PresetRun:
    """One :func:`run_preset` call: the configuration, where it writes, and the steps around training."""

    name: str
    cfg: dict[str, Any]
    out: Path
    smoke: bool
    tiny: bool  # smoke with WideResNets of widen factor 1
    keep: bool  # keep the checkpoints
    checkpoint_dir: Path
    weights: str = "last"

    @property
    def results_path(self) -> Path:
        return self.out / "results.json"

    def compared(self) -> dict[str, Any]:
        """The configuration a resumed run must match (the runtime keys may change)."""
        compared = {k: v for k, v in self.cfg.items() if k not in RUNTIME_KEYS}
        compared["preset"] = self.name
        compared["smoke"] = self.smoke
        compared["tiny"] = self.tiny
        if self.cfg["n_train"] is None:  # runs from before the key existed resume
            del compared["n_train"]
        return compared

    def finished(self) -> dict[str, Any] | None:
        """The saved results of this configuration when the run is finished; None means run (or resume) it."""
        saved: Any = None
        if self.results_path.exists():
            try:
                saved = json.loads(self.results_path.read_text(encoding="utf-8"))
            except (OSError, ValueError) as err:  # torn or damaged: the checkpoints still hold the run
                _logger.warning("%s is unreadable (%s); evaluating the run's checkpoint again", self.results_path,
                                err)
        if not isinstance(saved, dict):
            return None
        same = {k: v for k, v in saved.get("config", {}).items() if k not in RUNTIME_KEYS} == {
            k: v for k, v in self.cfg.items() if k not in RUNTIME_KEYS}
        if same and saved.get("smoke") == self.smoke and saved.get("tiny", False) == self.tiny:
            _logger.info("%s is finished (%s); delete it to evaluate again", self.name, self.results_path)
            return dict(saved)
        return None

    def check_extra_data(self) -> None:
        cfg, name = self.cfg, self.name
        if cfg["extra_fraction"] > 0 and cfg["extra_data"] is None and not self.smoke:
            raise ValueError(f"preset {name!r} trains on extra data: give it with --set extra_data=PATH (an .npz with "
                             "'image', uint8 N x 32 x 32 x 3, and 'label'; see the README), or set extra_fraction=0")
        if cfg["extra_data"] is not None and not Path(cfg["extra_data"]).is_file() and not self.smoke:
            raise FileNotFoundError(f"extra_data={cfg['extra_data']!r} does not exist; expected an .npz with 'image' "
                                    "(uint8 N x H x W x C) and 'label'")

    def data(self, data_info: Any, batch_size: int, *, cuda: bool) -> tuple[Any, Any, Any]:
        """The training loader (the training set minus a held-out validation split, never the test set), the
        validation loader (None without a split) and the test set."""
        import torch
        from torch.utils.data import DataLoader

        from fire_plugin.data import epoch_loader, load_dataset, mixed_loader

        cfg = self.cfg
        if self.smoke:
            full_train = _synthetic(data_info, 4 + cfg["val_size"], cfg["seed"])
            test_set = _synthetic(data_info, cfg["eval_n"], cfg["seed"] + 1)
        else:
            full_train = load_dataset(cfg["dataset"], split="train", data_dir=cfg["data_dir"])
            test_set = load_dataset(cfg["dataset"], split="test", data_dir=cfg["data_dir"])
        train_set, val_set = _split_train_val(full_train, cfg["val_size"], cfg["seed"])
        if cfg["n_train"] is not None:
            if cfg["n_train"] < batch_size:
                raise ValueError(f"n_train={cfg['n_train']} is smaller than a batch ({batch_size} images per rank), so "
                                 "no batch would train; allowed: n_train >= batch_size (or --set batch_size=...)")
            train_set = torch.utils.data.Subset(train_set, range(min(cfg["n_train"], len(train_set))))
        transform = random_crop_flip if cfg["augment"] else None
        workers = {"num_workers": cfg["workers"], "pin_memory": cuda}
        if cfg["extra_fraction"] > 0:
            extra = self._smoke_extra(data_info) if self.smoke else cfg["extra_data"]
            loader = mixed_loader(train_set, extra, batch_size=batch_size, extra_fraction=cfg["extra_fraction"],
                                  seed=cfg["seed"], transform=transform, num_classes=data_info.num_classes, **workers)
        else:  # order and augmentation drawn from (seed, epoch): resumes bit for bit, whatever the workers
            loader = epoch_loader(train_set, batch_size=batch_size, seed=cfg["seed"], drop_last=True,
                                  transform=transform, **workers)
        val_loader = (DataLoader(val_set, batch_size=cfg["eval_batch_size"], shuffle=False, **workers)
                      if val_set is not None else None)
        return loader, val_loader, test_set

    def _smoke_extra(self, data_info: Any) -> Path:
        """A synthetic .npz of extra images, read through the same file path as real extra data."""
        import numpy as np

        extra = self.out / "smoke_extra.npz"
        extra.parent.mkdir(parents=True, exist_ok=True)
        gen = np.random.default_rng(self.cfg["seed"])
        size = (8, data_info.image_size, data_info.image_size, data_info.in_chans)
        np.savez(extra, image=gen.integers(0, 256, size=size, dtype=np.uint8),
                 label=gen.integers(0, data_info.num_classes, size=8))
        return extra

    def spec(self, data_info: Any, loader: Any, val_loader: Any, test_set: Any, *, device: Any, resume: bool,
             verbose: bool) -> PipelineSpec:
        """The run as a :class:`~fire_plugin.pipeline.PipelineSpec`: seeded with torch's generator only, the
        model built after the data, ``config.json`` written before training, evaluated on ``eval_n`` test images."""
        from fire_plugin.engine import Checkpointing, DDPOptions, FastPaths, Validation
        from fire_plugin.pipeline import DataSpec, EvaluationSpec, FitSpec, ModelSpec, OptimizerSpec, PipelineSpec

        cfg = self.cfg

        def val_attack(m: nn.Module) -> Any:
            import torchattacks

            return torchattacks.PGD(m, eps=cfg["eps"], alpha=cfg["eps"] / 4, steps=cfg["val_pgd_steps"],
                                    random_start=True)

        def auto(key: str) -> bool | None:
            return {"auto": None, "on": True, "off": False}[cfg[key]]

        fit = FitSpec(cfg["epochs"], ema=cfg["ema_decay"] if cfg["ema"] else None,
                      validation=Validation(val_loader, attack_factory=val_attack if val_loader is not None else None,
                                            select_best=cfg["select_best"]),
                      checkpoints=Checkpointing(self.checkpoint_dir, resume=resume, config=self.compared()),
                      fast=FastPaths(amp={"auto": None, "off": False}.get(cfg["amp"], cfg["amp"]),
                                     channels_last=auto("channels_last"), cudnn_benchmark=auto("cudnn_benchmark"),
                                     compile=cfg["compile"]),
                      ddp=DDPOptions(seed=cfg["seed"]))
        evaluation = EvaluationSpec(test_set, eps=cfg["eps"], n_examples=cfg["eval_n"],
                                    attacks=tuple(cfg["eval_attacks"]), batch_size=cfg["eval_batch_size"],
                                    pgd_steps=cfg["eval_pgd_steps"], eps_step=cfg["eval_eps_step"] or None,
                                    seed=cfg["seed"], autoattack_attacks=("apgd-ce",) if self.smoke else None)
        return PipelineSpec(
            model=ModelSpec(cfg["model"], cfg["dataset"], narrow=self.tiny, device=device),
            data=DataSpec(loader, num_classes=data_info.num_classes),
            method=_method_spec(cfg, data_info.num_classes, smoke=self.smoke),
            optimizer=OptimizerSpec(lr=cfg["lr"], momentum=cfg["momentum"], weight_decay=cfg["weight_decay"],
                                    nesterov=cfg["nesterov"] and cfg["momentum"] > 0, schedule=cfg["schedule"]),
            fit=fit, evaluation=evaluation, seed=cfg["seed"], seed_all=False, on_start=self.write_config,
            verbose=verbose)

    def write_config(self) -> None:
        """``config.json`` before training starts (a resumed run keeps the first one until it finishes)."""
        from fire_plugin.runfolder import atomic_write_text

        self.out.mkdir(parents=True, exist_ok=True)
        if not (self.out / "config.json").exists():
            atomic_write_text(self.out / "config.json",
                              json.dumps({"preset": self.name, "smoke": self.smoke, **self.cfg}, indent=2))

    def write(self, trained: PipelineResult, *, wall_start: float) -> dict[str, Any]:
        """Write model_info, results.csv, config.json and results.json of the evaluated run; return the results."""
        from fire_plugin.runfolder import atomic_write_text

        cfg, out, result, history = self.cfg, self.out, trained.evaluation, trained.history
        assert result is not None and trained.test is not None  # the main rank evaluates
        best = trained.best
        if best is None:
            self.weights = "last" + (" (ema)" if cfg["ema"] else "")
        else:
            self.weights = (f"best.pt (epoch {int(best['epoch']) + 1}, {best['weights']} weights, validation PGD "
                            f"accuracy {float(best['val_adv_acc']):.4f})")
        eval_seconds = trained.seconds["evaluate"]
        info_path = self._write_model_info(result, len(trained.test[0]))
        total_train = float(sum(r["seconds"] for r in history))
        results = {
            "preset": self.name, "smoke": self.smoke, "tiny": self.tiny, "config": cfg,
            "eval": dataclasses.asdict(result), "weights": self.weights,
            "train_seconds": trained.seconds["train"], "train_seconds_all_runs": total_train,
            "eval_seconds": eval_seconds, "wall_seconds": time.perf_counter() - wall_start, "history": history,
            "paths": {"config": str(out / "config.json"), "results": str(self.results_path),
                      "csv": str(out / "results.csv"), "model_info": str(info_path) if info_path else None,
                      "checkpoints": str(self.checkpoint_dir) if self.keep else None},
        }
        row = {"preset": self.name, "dataset": cfg["dataset"], "model": cfg["model"], "method": cfg["method"],
               "eps": cfg["eps"], "epochs": cfg["epochs"], "clean_acc": result.clean_acc, "pgd_acc": result.pgd_acc,
               "autoattack_acc": result.autoattack_acc, "avg_acc": result.avg_acc, "n_examples": result.n_examples,
               "weights": self.weights, "train_seconds": round(total_train, 3), "eval_seconds": round(eval_seconds, 3),
               "smoke": self.smoke}
        _write_csv(out / "results.csv", row)
        atomic_write_text(out / "config.json", json.dumps({"preset": self.name, "smoke": self.smoke, **cfg}, indent=2))
        atomic_write_text(self.results_path, json.dumps(results, indent=2))
        if not self.keep:
            shutil.rmtree(self.checkpoint_dir, ignore_errors=True)
            _logger.info("smoke run: checkpoints not kept (keep_checkpoints=True / --keep-checkpoints keeps them)")
        _logger.info("%s: clean %s, PGD-%d %s, AutoAttack %s (%s); results in %s", self.name, result.clean_acc,
                     cfg["eval_pgd_steps"], result.pgd_acc, result.autoattack_acc, self.weights, out)
        return results

    def _write_model_info(self, result: Any, n_test: int) -> Path | None:
        """The RobustBench model_info JSON (it needs the AutoAttack accuracy: the isometry preset runs PGD only)."""
        from fire_plugin.robustbench_io import PRESET_VENUE, model_info_from_result, write_model_info

        if result.autoattack_acc is None:
            return None
        cfg, name = self.cfg, self.name
        architecture = _ARCHITECTURES.get(cfg["model"], cfg["model"])
        if self.tiny and cfg["model"].startswith("wrn"):
            architecture += " (smoke: widen factor 1)"
        with warnings.catch_warnings():  # mnist has no leaderboard (the file is still written); smoke: APGD-CE
            warnings.filterwarnings("ignore", message="dataset=.*has no RobustBench leaderboard")
            warnings.filterwarnings("ignore", message="autoattack_acc comes from AutoAttack 'custom")
            model_info = model_info_from_result(
                result, dataset=cfg["dataset"], architecture=architecture, venue=PRESET_VENUE,
                name=f"{architecture} {cfg['method'].upper()} (fire_plugin preset {name}"
                + "".join(f", --set {k}={v}" for k, v in _changed_identity(name, cfg).items()) + ")",
                additional_data=cfg["extra_fraction"] > 0,
                footnote=("Smoke run on synthetic data; not a result. " if self.smoke else "")
                + f"Evaluated on the first {n_test} test images; weights: {self.weights}.",
            )
            return write_model_info(self.out, _model_id(name, cfg), model_info, threat_model="Linf")

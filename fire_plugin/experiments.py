"""The runs the CLI and the benchmarks call: :func:`train`, the digits runs :func:`run_one` / :func:`run_many`
(configurations of :func:`fire_plugin.pipeline.run_pipeline` writing their own files), :func:`evaluate_checkpoint`.

Library code: no argparse, no printing; the CLI (:mod:`fire_plugin.cli`) parses arguments, calls these functions
and prints what they return.

Weights: every method's default weight is its matched value (see :data:`DEFAULT_WEIGHTS`): FIRE ``lam = 3`` on
``d^2`` (d = 2 arccos BC), TRADES ``beta = 6`` on KL, Hellinger ``lam = 12`` on ``H^2 = 2 (1 - BC)``; near equality
``d^2 ~ 2 KL ~ 4 H^2``, so these regularize with the same local strength.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from fire_plugin.methods import METHODS as _REGISTRY
from fire_plugin.methods import (
    build_objective,
    canonical_name,
    default_eps_step,
    method_attack,
    method_loss,
)
from fire_plugin.pipeline import (
    DataSpec,
    EvaluationSpec,
    FitSpec,
    MethodSpec,
    ModelSpec,
    OptimizerSpec,
    PipelineSpec,
    run_pipeline,
)
from fire_plugin.runfolder import atomic_path, atomic_write_text, run_lock

__all__ = [
    "DEFAULT_WEIGHTS",
    "METHODS",
    "build_objective",
    "DigitsRecipe",
    "EvalSpec",
    "check_model_name",
    "check_output_dir",
    "paired_differences",
    "run_many",
    "run_one",
    "summarize",
    "evaluate_checkpoint",
    "method_attack",
    "method_loss",
    "train",
]

_logger = logging.getLogger(__name__)

METHODS = tuple(_REGISTRY)
"""The method names (:data:`fire_plugin.methods.METHODS`); ``"ace"`` is accepted as an alias of ``"madry"``."""
# Matched weights (d^2 ~ 2 KL ~ 4 H^2 near equality): FIRE lam on d^2 = TRADES beta / 2 = Hellinger lam / 4.
DEFAULT_WEIGHTS = {name: method.default_weight for name, method in _REGISTRY.items()}


def check_output_dir(path: str | os.PathLike[str]) -> Path:
    """Create ``path`` if needed and check that files can be written in it, before any long work starts.

    User-chosen directories may contain ``..``; an existing file, or a directory without write permission, raises
    a ``ValueError`` naming it.
    """
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ValueError(f"output directory {str(out)!r} is an existing file; pass a directory")
    try:
        out.mkdir(parents=True, exist_ok=True)
        fd, probe = tempfile.mkstemp(dir=out, prefix=".write-test-")
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"output directory {str(out)!r} is not writable ({err.strerror or err}); pick another "
                         "one") from err
    return out


def check_model_name(model: str, *, dataset: str, checkpoint: str | os.PathLike[str] | None) -> None:
    """Refuse a ``model`` name that can name nothing for ``dataset`` before any loading starts.

    Without a checkpoint a name is an architecture with shipped weights or a RobustBench zoo entry; a dataset
    without a zoo (digits, mnist) then needs ``checkpoint`` and an architecture name. The message names ``--model``
    (instead of reporting a zoo problem for a mistyped architecture).
    """
    import timm

    import fire_plugin.models  # noqa: F401  (registers our architectures)
    from fire_plugin.data import DATASETS
    from fire_plugin.pretrained import AUTOATTACK_RESNET18

    info = DATASETS.get(dataset)
    if model == AUTOATTACK_RESNET18 or timm.is_model(model) or info is None or info.robustbench:
        return
    ours = list(fire_plugin.models.MODEL_NAMES)
    raise ValueError(f"--model {model!r} is not an architecture, and dataset={dataset!r} has no RobustBench zoo to "
                     f"look it up in; allowed: an architecture ({ours} or any timm.list_models() name) with "
                     "--checkpoint")


def _device() -> torch.device:
    from fire_plugin.engine import distributed_info

    return torch.device("cuda", distributed_info().local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _create_model(name: str, dataset: str) -> nn.Module:
    """``name`` sized for ``dataset`` (the model of the pipeline's :class:`~fire_plugin.pipeline.ModelSpec`)."""
    return ModelSpec(name, dataset).build()


def _isometry_config(method: str, estimator: str | None, n_probes: int) -> dict[str, Any]:
    """The isometry penalty's estimator for a run's configuration (other methods: nothing, so their saved
    configurations stay as they were)."""
    if method != "isometry":
        return {}
    from fire_plugin.isometry import DEFAULT_ESTIMATOR

    return {"estimator": estimator or DEFAULT_ESTIMATOR, "n_probes": n_probes}


def train(
    *,
    out: str | os.PathLike[str],
    dataset: str = "digits",
    model: str = "digits_cnn",
    method: str = "fire",
    weight: float | None = None,
    eps: float = 8 / 255,
    eps_step: float | None = None,
    steps: int = 10,
    norm: str = "Linf",
    epochs: int = 100,
    batch_size: int = 128,
    lr: float = 0.1,
    weight_decay: float = 5e-4,
    schedule: str = "multistep",
    self_adaptive: bool = False,
    sat_warmup: int = 10,
    amp: bool | None = None,
    sync_bn: bool = False,
    validate: bool = False,
    resume: bool = True,
    workers: int = 0,
    data_dir: str | os.PathLike[str] = "data",
    seed: int = 0,
    ema: float | None = None,
    compile: bool = False,
    estimator: str | None = None,
    n_probes: int = 1,
    verbose: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` with ``method``; write ``summary.json``, ``training.png`` and checkpoints.

    The run's configuration is saved with the checkpoint: rerunning with the same arguments resumes, with other
    arguments it is refused (:class:`fire_plugin.engine.ConfigMismatchError`) unless ``resume=False``.
    ``estimator`` and ``n_probes`` apply to ``method="isometry"`` (see :func:`build_objective`).
    Returns the summary (configuration, wall time, per-epoch history, checkpoint path).
    """
    from fire_plugin.data import DATASETS

    method = canonical_name(method)
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    out_dir = check_output_dir(out)
    with run_lock(out_dir, command="train"):
        return _train_locked(out_dir, dataset=dataset, model=model, method=method, weight=weight, eps=eps,
                             eps_step=eps_step, steps=steps, norm=norm, epochs=epochs, batch_size=batch_size, lr=lr,
                             weight_decay=weight_decay, schedule=schedule, self_adaptive=self_adaptive,
                             sat_warmup=sat_warmup, amp=amp, sync_bn=sync_bn, validate=validate, resume=resume,
                             workers=workers, data_dir=data_dir, seed=seed, ema=ema, compile=compile,
                             estimator=estimator, n_probes=n_probes, verbose=verbose)


def _train_locked(out_dir: Path, *, dataset: str, model: str, method: str, weight: float | None, eps: float,
                  eps_step: float | None, steps: int, norm: str, epochs: int, batch_size: int, lr: float,
                  weight_decay: float, schedule: str, self_adaptive: bool, sat_warmup: int, amp: bool | None,
                  sync_bn: bool, validate: bool, resume: bool, workers: int, data_dir: str | os.PathLike[str],
                  seed: int, ema: float | None, compile: bool, estimator: str | None, n_probes: int,
                  verbose: bool) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from fire_plugin.data import DATASETS, load_dataset
    from fire_plugin.engine import Checkpointing, DDPOptions, FastPaths, IndexedDataset, SelfAdaptiveTargets, Validation

    info = DATASETS[dataset]
    weight = DEFAULT_WEIGHTS[method] if weight is None else float(weight)
    step = eps_step if eps_step is not None else default_eps_step(eps, steps)
    train_set: Any = load_dataset(dataset, split="train", data_dir=data_dir)
    test_set = load_dataset(dataset, split="test", data_dir=data_dir) if validate else None
    sat = None
    if self_adaptive:
        train_set = IndexedDataset(train_set)
        sat = SelfAdaptiveTargets(len(train_set), info.num_classes, warmup=sat_warmup)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers)
    val_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False) if test_set is not None else None
    config = {"method": method, "model": model, "dataset": dataset, "weight": weight, "eps": eps, "eps_step": step,
              "steps": steps, "norm": norm, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "schedule": schedule, "self_adaptive": self_adaptive, "seed": seed,
              "ema": ema, **_isometry_config(method, estimator, n_probes)}
    run = run_pipeline(PipelineSpec(
        model=ModelSpec(model, dataset, device=_device()),
        data=DataSpec(loader, num_classes=info.num_classes, self_adaptive=sat),
        method=MethodSpec(method, weight=weight, eps=eps, eps_step=step, steps=steps, norm=norm, estimator=estimator,
                          n_probes=n_probes),
        optimizer=OptimizerSpec(lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True, schedule=schedule),
        fit=FitSpec(epochs, validation=Validation(val_loader), ema=ema,
                    checkpoints=Checkpointing(out_dir / "checkpoints", resume=resume,
                                              config={k: v for k, v in config.items() if k != "epochs"}),
                    fast=FastPaths(amp=amp, compile=compile), ddp=DDPOptions(sync_batchnorm=sync_bn, seed=seed)),
        seed=seed, verbose=verbose))
    summary = {**config, "lam": weight, "seconds": run.seconds["train"], "history": run.history,
               "checkpoint": str(out_dir / "checkpoints" / "last.pt")}
    if run.is_main:
        atomic_write_text(out_dir / "summary.json", json.dumps(summary, indent=2))
        save_history_plot(run.history, out_dir / "training.png")
    return summary


def save_history_plot(history: list[dict[str, Any]], path: Path) -> None:
    """Training curves (loss, accuracies, learning rate) as a PNG; nothing when the history is empty."""
    from fire_plugin.plots import plot_training_history

    if history:
        with atomic_path(path) as tmp:
            plot_training_history(history).savefig(tmp, dpi=120)


def evaluate_checkpoint(
    *,
    model: str,
    out: str | os.PathLike[str],
    checkpoint: str | None = None,
    dataset: str = "cifar10",
    eps: float = 8 / 255,
    norm: str = "Linf",
    attacks: tuple[str, ...] = ("clean", "pgd", "frpgd", "autoattack"),
    n_examples: int | None = None,
    batch_size: int = 256,
    autoattack_attacks: tuple[str, ...] | None = None,
    model_dir: str = "models",
    data_dir: str = "data",
    model_id: str | None = None,
    name: str | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluate a model (architecture + checkpoint, zoo name, or ``autoattack-resnet18``) and write ``eval.json``.

    With ``model_id`` (checked before any attack runs; needs ``"autoattack"`` in ``attacks``) it also writes a
    RobustBench ``model_info`` JSON. ``autoattack_attacks`` (None: standard AutoAttack) runs a subset of its
    sub-attacks with the standard settings, for quick checks (recorded as ``custom`` in the files).
    """
    from fire_plugin.robustbench_io import model_info_path

    check_model_name(model, dataset=dataset, checkpoint=checkpoint)
    if model_id is not None:
        model_info_path(out, model_id, dataset=dataset, threat_model=norm)  # raises on a bad id, before any work
        if "autoattack" not in attacks:
            raise ValueError(f"model_id={model_id!r} writes a RobustBench model_info file, which needs the "
                             "AutoAttack accuracy: add 'autoattack' to the attacks")
    out_dir = check_output_dir(out)
    with run_lock(out_dir, command="evaluate"):
        return _evaluate_locked(out_dir, model=model, checkpoint=checkpoint, dataset=dataset, eps=eps, norm=norm,
                                attacks=attacks, n_examples=n_examples, batch_size=batch_size,
                                autoattack_attacks=autoattack_attacks, model_dir=model_dir, data_dir=data_dir,
                                model_id=model_id, name=name, seed=seed, verbose=verbose)


def _evaluate_locked(out_dir: Path, *, model: str, checkpoint: str | None, dataset: str, eps: float, norm: str,
                     attacks: tuple[str, ...], n_examples: int | None, batch_size: int,
                     autoattack_attacks: tuple[str, ...] | None, model_dir: str,
                     data_dir: str, model_id: str | None, name: str | None, seed: int,
                     verbose: bool) -> dict[str, Any]:
    from fire_plugin.data import dataset_to_tensors, load_dataset
    from fire_plugin.evaluation import evaluate
    from fire_plugin.pretrained import load_pretrained
    from fire_plugin.robustbench_io import model_info_from_result, write_model_info

    net = load_pretrained(model, dataset=dataset, threat_model=norm, model_dir=model_dir, checkpoint=checkpoint)
    net = net.to(_device()).eval()
    test_set = load_dataset(dataset, split="test", data_dir=data_dir)
    n_test = len(test_set)  # type: ignore[arg-type]
    x, y = dataset_to_tensors(test_set, n_examples=n_examples)
    result = evaluate(net, x, y, eps=eps, norm=norm, attacks=tuple(attacks), batch_size=batch_size, seed=seed,
                      autoattack_attacks=autoattack_attacks, verbose=verbose)
    payload = dataclasses.asdict(result)
    # what was evaluated, for `fire-plugin submit --run OUT` (it reloads the model and rechecks the numbers)
    payload["run"] = {"command": "evaluate", "model": model, "checkpoint": _file_record(checkpoint),
                      "dataset": dataset, "data_dir": str(Path(data_dir).resolve()), "n_test": n_test,
                      "norm": norm, "model_dir": str(Path(model_dir).resolve()), "model_id": model_id,
                      "batch_size": batch_size}
    atomic_write_text(out_dir / "eval.json", json.dumps(payload, indent=2))
    if result.autoattack_acc is not None and model_id:
        info_obj = model_info_from_result(result, dataset=dataset, name=name or model_id, architecture=model,
                                          n_test=n_test)
        payload["model_info"] = str(write_model_info(out_dir, model_id, info_obj, threat_model=norm))
    return payload


def _file_record(path: str | os.PathLike[str] | None) -> dict[str, Any] | None:
    """``{"path", "sha256"}`` of a file (the evaluated checkpoint), None for None."""
    if path is None:
        return None
    import hashlib

    resolved = Path(path).resolve()
    digest = hashlib.sha256()
    with resolved.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return {"path": str(resolved), "sha256": digest.hexdigest()}


# --------------------------------------------------------------------------------------------------- digits runs


@dataclass(frozen=True)
class DigitsRecipe:
    """The training recipe of the digits experiments (demo, weight sweep, 5-seed table).

    A decaying learning rate (cosine by default): with a constant lr 0.05 TRADES beta = 6 diverges on digits near
    epoch 28. ``eps = 0.1`` on [0, 1] 8x8 digits; the training attack takes ``steps`` steps of ``eps_step``.
    """

    model: str = "lenet_pi"
    epochs: int = 30
    batch_size: int = 64
    lr: float = 0.05
    momentum: float = 0.9
    weight_decay: float = 5e-4
    schedule: str = "cosine"
    eps: float = 0.1
    steps: int = 10
    eps_step: float = 0.025
    isometry_epsilon: float | None = None  # None: delta_m(10), i.e. delta_m / epsilon = 1 (see build_objective)
    isometry_eta: tuple[float, float] = (0.02, 0.06)  # eta_min, eta_max of the geometric schedule

    def model_kwargs(self) -> dict[str, Any]:
        """The constructor arguments of ``model`` for the 8x8 digits (see ``models.model_kwargs_for_dataset``)."""
        from fire_plugin.models import model_kwargs_for_dataset

        return model_kwargs_for_dataset(self.model, "digits")


@dataclass(frozen=True)
class EvalSpec:
    """What the digits runs evaluate on the test split (450 images).

    ``aa_attacks`` run on the whole split with AutoAttack's standard settings (APGD-CE + APGD-T: standard AutoAttack
    adds FAB-T and Square, which cost about 9x more here); ``aa_standard_n`` first images get standard AutoAttack
    (``0`` skips it, ``None`` runs it on the whole split). ``margin_n`` first images get the Fisher-Rao margin.
    """

    n_eval: int | None = None  # None: the whole test split
    pgd_steps: int = 20
    aa_attacks: tuple[str, ...] | None = ("apgd-ce", "apgd-t")
    aa_standard_n: int | None = 100
    margin_n: int = 30
    batch_size: int = 256


def _result_matches(path: Path, config: dict[str, Any]) -> dict[str, Any] | None:
    """The finished result at ``path`` when it was computed with ``config``; None means compute it (again)."""
    if not path.exists():
        return None
    try:
        result = json.loads(path.read_text())
    except (OSError, ValueError) as err:
        _logger.warning("%s is unreadable (%s); computing it again from the run's checkpoints", path, err)
        return None
    if not isinstance(result, dict):
        _logger.warning("%s holds no result dict; computing it again from the run's checkpoints", path)
        return None
    if result.get("config") == config and not (path.parent / "model.pt").exists():
        _logger.warning("%s has no model.pt beside it; computing the result again", path)
        return None
    return result if result.get("config") == config else None


def run_one(
    method: str,
    *,
    out: str | os.PathLike[str],
    weight: float | None = None,
    seed: int = 0,
    recipe: DigitsRecipe = DigitsRecipe(),
    spec: EvalSpec = EvalSpec(),
    verbose: bool = True,
) -> dict[str, Any]:
    """Train ``method`` on the embedded digits under ``recipe`` and evaluate it under ``spec``; resumable.

    Writes ``out/result.json`` (configuration, evaluation, training curves, seconds) and checkpoints under
    ``out/checkpoints``. A finished run with the same configuration is read back, not repeated; an interrupted
    one continues from its last epoch.

    Returns:
        the result dict: ``config``, ``eval`` (accuracies as fractions), ``aa_label``, ``fr_margin`` (mean and
        median over the first ``spec.margin_n`` test images), ``train_seconds``, ``history``.
    """
    method = canonical_name(method)
    weight = DEFAULT_WEIGHTS[method] if weight is None else float(weight)
    out_dir = check_output_dir(out)
    with run_lock(out_dir, command=f"run_one {method}"):
        return _run_one_locked(method, out_dir, weight=weight, seed=seed, recipe=recipe, spec=spec, verbose=verbose)


def _run_one_locked(method: str, out_dir: Path, *, weight: float, seed: int, recipe: DigitsRecipe, spec: EvalSpec,
                    verbose: bool) -> dict[str, Any]:
    from torch.utils.data import DataLoader

    from fire_plugin.data import load_dataset
    from fire_plugin.engine import Checkpointing, save_checkpoint
    from fire_plugin.evaluation import evaluate

    config = json.loads(json.dumps({"method": method, "weight": weight, "seed": seed,  # tuples become lists
                                    "recipe": dataclasses.asdict(recipe), "spec": dataclasses.asdict(spec),
                                    **_isometry_config(method, None, 1)}))
    done = _result_matches(out_dir / "result.json", config)
    if done is not None:
        return done

    x_test, y_test = load_dataset("digits", split="test").tensors  # type: ignore[attr-defined]
    loader = DataLoader(load_dataset("digits", split="train"), batch_size=recipe.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    run = run_pipeline(PipelineSpec(
        model=ModelSpec(recipe.model, "digits"), data=DataSpec(loader),
        method=MethodSpec(method, weight=weight, eps=recipe.eps, eps_step=recipe.eps_step, steps=recipe.steps,
                          isometry_epsilon=recipe.isometry_epsilon, eta_min=recipe.isometry_eta[0],
                          eta_max=recipe.isometry_eta[1]),
        optimizer=OptimizerSpec(lr=recipe.lr, momentum=recipe.momentum, weight_decay=recipe.weight_decay,
                                schedule=recipe.schedule),
        fit=FitSpec(recipe.epochs, checkpoints=Checkpointing(out_dir / "checkpoints", config=config)),
        evaluation=EvaluationSpec((x_test, y_test), eps=recipe.eps, n_examples=spec.n_eval,
                                  attacks=("clean", "pgd", "frpgd", "autoattack"), pgd_steps=spec.pgd_steps,
                                  autoattack_attacks=spec.aa_attacks, batch_size=spec.batch_size, seed=seed),
        seed=seed, verbose=verbose))
    net, history = run.model, run.history
    assert net is not None and run.evaluation is not None and run.test is not None  # one process: the main rank
    (x_test, y_test), evaluation = run.test, run.evaluation.to_dict()
    aa_label = "AA standard" if spec.aa_attacks is None else "AA " + "+".join(a.upper() for a in spec.aa_attacks)
    standard: dict[str, Any] | None = None
    if spec.aa_attacks is not None and spec.aa_standard_n != 0:
        n_std = len(x_test) if spec.aa_standard_n is None else min(spec.aa_standard_n, len(x_test))
        std = evaluate(net, x_test[:n_std], y_test[:n_std], eps=recipe.eps, attacks=("clean", "autoattack"),
                       batch_size=spec.batch_size, seed=seed, verbose=verbose)
        standard = {"n_examples": n_std, "clean_acc": std.clean_acc, "autoattack_acc": std.autoattack_acc,
                    "seconds": std.times.get("autoattack")}
    margin: dict[str, Any] | None = None
    if spec.margin_n > 0:
        from fire_plugin.margins import fr_margin

        start = time.perf_counter()
        values = fr_margin(net, x_test[: spec.margin_n], y_test[: spec.margin_n], verbose=False)
        correct = values[(values > 0) & (values < float("inf"))]  # misclassified inputs have margin 0
        margin = {"n_examples": int(min(spec.margin_n, len(x_test))), "n_correct_flipped": int(correct.size),
                  "mean": float(correct.mean()) if correct.size else None,
                  "median": float(np.median(values)) if values.size else None,
                  "unflipped": int((values == float("inf")).sum()), "seconds": time.perf_counter() - start}
    payload = {"config": config, "eval": evaluation, "aa_label": aa_label, "aa_standard_subset": standard,
               "fr_margin": margin, "train_seconds": float(sum(r["seconds"] for r in history)),
               "diverged": any(r.get("diverged") for r in history), "history": history}
    text = json.dumps(payload, indent=2)
    save_checkpoint(out_dir / "model.pt", net.state_dict())  # before result.json: a finished run has both
    atomic_write_text(out_dir / "result.json", text)
    return json.loads(text)  # the same object a later call reads back


def _metrics(result: dict[str, Any]) -> dict[str, float | None]:
    ev = result["eval"]
    margin = result.get("fr_margin") or {}
    std = result.get("aa_standard_subset") or {}
    return {"clean": ev["clean_acc"], "pgd": ev["pgd_acc"], "frpgd": ev["frpgd_acc"], "aa": ev["autoattack_acc"],
            "avg": ev["avg_acc"], "aa_standard_subset": std.get("autoattack_acc"), "fr_margin": margin.get("mean"),
            "train_seconds": result.get("train_seconds")}


def summarize(results: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Mean and sample standard deviation of each metric over runs (e.g. seeds): ``{metric: {mean, std, n}}``."""
    table: dict[str, dict[str, float | None]] = {}
    rows = [_metrics(r) for r in results]
    for key in rows[0] if rows else []:
        values = np.array([r[key] for r in rows if r[key] is not None], dtype=np.float64)
        table[key] = {"mean": float(values.mean()) if values.size else None,
                      "std": float(values.std(ddof=1)) if values.size > 1 else None, "n": float(values.size)}
    return table


def paired_differences(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> dict[str, dict[str, float | None]]:
    """Per-seed differences ``a - b`` (runs paired by their seed) with mean, std and min/max per metric."""
    by_seed = {r["config"]["seed"]: r for r in b}
    pairs = [(_metrics(r), _metrics(by_seed[r["config"]["seed"]])) for r in a if r["config"]["seed"] in by_seed]
    out: dict[str, dict[str, float | None]] = {}
    for key in ("clean", "aa", "avg", "pgd", "fr_margin"):
        diffs = np.array([float(x[key]) - float(y[key]) for x, y in pairs  # type: ignore[arg-type]
                          if x[key] is not None and y[key] is not None])
        out[key] = {"mean": float(diffs.mean()) if diffs.size else None,
                    "std": float(diffs.std(ddof=1)) if diffs.size > 1 else None,
                    "min": float(diffs.min()) if diffs.size else None,
                    "max": float(diffs.max()) if diffs.size else None, "n": float(diffs.size)}
    return out


# --------------------------------------------------------------------------------------------------- runs


def _run_job(job: dict[str, Any]) -> dict[str, Any]:
    torch.set_num_threads(1)
    return run_one(job["method"], out=job["out"], weight=job["weight"], seed=job["seed"], recipe=job["recipe"],
                   spec=job["spec"], verbose=False)


def _run_indexed_job(item: tuple[int, dict[str, Any]]) -> tuple[int, dict[str, Any]]:
    return item[0], _run_job(item[1])


def _worker_start() -> None:
    """In each worker of :func:`run_many`: end with the parent, however it ends; leave Ctrl-C to the parent.

    SIGTERM raises ``SystemExit`` (locks are released, the last checkpoint stays); the parent's death sends it
    (``PR_SET_PDEATHSIG`` on Linux, and a once-a-second check of the parent process elsewhere).
    """
    import signal
    import threading

    parent = os.getppid()

    def stop(signum: int, frame: Any) -> None:
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent gets Ctrl-C and terminates the pool
    try:
        import ctypes

        ctypes.CDLL(None, use_errno=True).prctl(1, int(signal.SIGTERM))  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):  # not Linux: the watchdog below does it
        pass

    def watch() -> None:
        while True:
            time.sleep(1.0)
            if os.getppid() != parent:
                os.kill(os.getpid(), signal.SIGTERM)
                return

    threading.Thread(target=watch, name="fire-plugin-parent-watch", daemon=True).start()
    if os.getppid() != parent:  # the parent died before the death signal was armed
        os.kill(os.getpid(), signal.SIGTERM)


def run_many(jobs: list[dict[str, Any]], workers: int, verbose: bool, desc: str = "runs") -> list[dict[str, Any]]:
    """Run independent :func:`run_one` jobs, ``workers`` processes at a time (each resumable on its own).

    Each job is a dict with ``method``, ``out``, ``weight``, ``seed``, ``recipe`` and ``spec``; results come back
    in the order of ``jobs``. The worker processes end with this one: on an error, Ctrl-C or SIGTERM here they are
    terminated (their last checkpoints stay, a rerun resumes), and a worker whose parent died (SIGKILL) ends too.
    """
    from tqdm.auto import tqdm

    results: list[dict[str, Any] | None] = [None] * len(jobs)
    bar = tqdm(total=len(jobs), desc=desc, disable=not verbose)
    if workers <= 1:
        for i, job in enumerate(jobs):
            results[i] = _run_job(job)
            bar.update()
    else:
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        pool = context.Pool(processes=workers, initializer=_worker_start)
        try:
            for i, result in pool.imap_unordered(_run_indexed_job, list(enumerate(jobs))):
                results[i] = result
                bar.update()
            pool.close()
        except BaseException:
            pool.terminate()
            raise
        finally:
            pool.join()
    bar.close()
    return [r for r in results if r is not None]

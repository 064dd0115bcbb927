"""The pipelines the CLI and the benchmarks run: train a method, evaluate a checkpoint, the digits demo.

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
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from fire_plugin.engine import AdversarialObjective, CrossEntropyObjective, Objective

__all__ = [
    "DEFAULT_WEIGHTS",
    "METHODS",
    "build_objective",
    "check_output_dir",
    "run_demo",
    "evaluate_checkpoint",
    "method_attack",
    "method_loss",
    "train",
]

_logger = logging.getLogger(__name__)

METHODS = ("fire", "trades", "hellinger", "mart", "ace", "ce", "isometry")
# Matched weights (d^2 ~ 2 KL ~ 4 H^2 near equality): FIRE lam on d^2 = TRADES beta / 2 = Hellinger lam / 4.
DEFAULT_WEIGHTS = {"fire": 3.0, "trades": 6.0, "hellinger": 12.0, "mart": 6.0, "ace": 0.0, "ce": 0.0,
                   "isometry": 0.0}
_DIVERGENCE_OF = {"fire": "fisher_rao", "trades": "kl", "hellinger": "hellinger"}


def _check_method(method: str) -> None:
    if method not in METHODS:
        raise ValueError(f"method must be one of {list(METHODS)}, got {method!r}")


def method_loss(method: str, weight: float) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The loss of an adversarial ``method`` (``fire``, ``trades``, ``hellinger``, ``mart``, ``ace``)."""
    from fire_plugin import losses

    _check_method(method)
    if method in _DIVERGENCE_OF:
        return losses.DivergenceRegularizedLoss(_DIVERGENCE_OF[method], weight)
    if method == "mart":
        return losses.MARTLoss(beta=weight)
    if method == "ace":
        return losses.ACELoss()
    raise ValueError(f"method {method!r} has no adversarial loss (it is not attack + loss)")


def method_attack(method: str, model: nn.Module, *, eps: float, eps_step: float, steps: int,
                  norm: str) -> Callable[[Tensor, Tensor], Tensor]:
    """The training attack of ``method``: the divergence-maximizing PGD for FIRE/TRADES/Hellinger, CE-PGD else."""
    import torchattacks

    from fire_plugin.attacks import DivergencePGD

    _check_method(method)
    if method in ("mart", "ace"):  # CE-maximizing PGD, as in Madry et al. and MART
        cls = torchattacks.PGD if norm == "Linf" else torchattacks.PGDL2
        return cls(model, eps=eps, alpha=eps_step, steps=steps, random_start=True)
    return DivergencePGD(model, divergence=_DIVERGENCE_OF[method], eps=eps, alpha=eps_step, steps=steps, norm=norm)


def build_objective(
    method: str,
    model: nn.Module,
    *,
    weight: float | None = None,
    eps: float = 8 / 255,
    eps_step: float | None = None,
    steps: int = 10,
    norm: str = "Linf",
    isometry_epsilon: float | None = None,
    num_classes: int = 10,
    eta_min: float = 0.002,
    eta_max: float = 0.006,
    estimator: str = "exact",
    n_probes: int = 1,
) -> Objective:
    """The training :class:`~fire_plugin.engine.Objective` of ``method`` for ``model``.

    ``weight`` defaults to :data:`DEFAULT_WEIGHTS`; ``eps_step`` to ``2.5 * eps / steps``. For ``"isometry"``,
    ``isometry_epsilon`` defaults to ``delta_m(num_classes) / 1e-3`` (the paper's delta_m / epsilon = 1e-3).

    Example:
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> type(build_objective("trades", model, eps=0.1)).__name__
        'AdversarialObjective'
    """
    _check_method(method)
    weight = DEFAULT_WEIGHTS[method] if weight is None else float(weight)
    if method == "ce":
        return CrossEntropyObjective()
    if method == "isometry":
        from fire_plugin.isometry import PartialIsometryObjective, delta_m

        epsilon = isometry_epsilon if isometry_epsilon is not None else delta_m(num_classes) / 1e-3
        return PartialIsometryObjective(epsilon=epsilon, eta_min=eta_min, eta_max=eta_max, estimator=estimator,
                                        n_probes=n_probes)
    step = eps_step if eps_step is not None else 2.5 * eps / steps
    return AdversarialObjective(method_loss(method, weight),
                                method_attack(method, model, eps=eps, eps_step=step, steps=steps, norm=norm))


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


def _device() -> torch.device:
    from fire_plugin.engine import distributed_info

    return torch.device("cuda", distributed_info().local_rank) if torch.cuda.is_available() else torch.device("cpu")


def _create_model(name: str, **kwargs: Any) -> nn.Module:
    import timm

    import fire_plugin.models  # noqa: F401  (registers our architectures)

    if not timm.is_model(name):
        ours = list(fire_plugin.models.MODEL_NAMES)
        raise ValueError(f"model {name!r} is not a registered timm architecture; ours: {ours} (any timm name works, "
                         "e.g. 'resnet18'; see timm.list_models())")
    return timm.create_model(name, **kwargs)


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
    verbose: bool = True,
) -> dict[str, Any]:
    """Train ``model`` on ``dataset`` with ``method``; write ``summary.json``, ``training.png`` and checkpoints.

    The run's configuration is saved with the checkpoint: rerunning with the same arguments resumes, with other
    arguments it is refused (:class:`fire_plugin.engine.ConfigMismatchError`) unless ``resume=False``.
    Returns the summary (configuration, wall time, per-epoch history, checkpoint path).
    """
    from torch.utils.data import DataLoader

    from fire_plugin.data import DATASETS, load_dataset
    from fire_plugin.engine import IndexedDataset, SelfAdaptiveTargets, distributed_info, fit, lr_scheduler

    _check_method(method)
    if dataset not in DATASETS:
        raise ValueError(f"dataset must be one of {sorted(DATASETS)}, got {dataset!r}")
    out_dir = check_output_dir(out)
    info = DATASETS[dataset]
    weight = DEFAULT_WEIGHTS[method] if weight is None else float(weight)
    step = eps_step if eps_step is not None else 2.5 * eps / steps
    torch.manual_seed(seed)
    net = _create_model(model, num_classes=info.num_classes, in_chans=info.in_chans).to(_device())
    train_set: Any = load_dataset(dataset, split="train", data_dir=data_dir)
    test_set = load_dataset(dataset, split="test", data_dir=data_dir) if validate else None
    sat = None
    if self_adaptive:
        train_set = IndexedDataset(train_set)
        sat = SelfAdaptiveTargets(len(train_set), info.num_classes, warmup=sat_warmup)
    loader = DataLoader(train_set, batch_size=batch_size, shuffle=True, num_workers=workers)
    val_loader = DataLoader(test_set, batch_size=batch_size, shuffle=False) if test_set is not None else None
    optimizer = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9, weight_decay=weight_decay, nesterov=True)
    scheduler = lr_scheduler(optimizer, schedule, epochs)
    objective = build_objective(method, net, weight=weight, eps=eps, eps_step=step, steps=steps, norm=norm,
                                num_classes=info.num_classes)
    config = {"method": method, "model": model, "dataset": dataset, "weight": weight, "eps": eps, "eps_step": step,
              "steps": steps, "norm": norm, "epochs": epochs, "batch_size": batch_size, "lr": lr,
              "weight_decay": weight_decay, "schedule": schedule, "self_adaptive": self_adaptive, "seed": seed}
    start = time.perf_counter()
    history = fit(
        net, loader, epochs=epochs, objective=objective, optimizer=optimizer, scheduler=scheduler,
        val_loader=val_loader, checkpoint_dir=out_dir / "checkpoints", resume=resume,
        config={k: v for k, v in config.items() if k != "epochs"}, amp=amp, self_adaptive=sat,
        sync_batchnorm=sync_bn, seed=seed, verbose=verbose,
    )
    summary = {**config, "lam": weight, "seconds": time.perf_counter() - start, "history": history,
               "checkpoint": str(out_dir / "checkpoints" / "last.pt")}
    if distributed_info().is_main:
        (out_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        save_history_plot(history, out_dir / "training.png")
    return summary


def save_history_plot(history: list[dict[str, Any]], path: Path) -> None:
    """Training curves (loss, accuracies, learning rate) as a PNG; nothing when the history is empty."""
    import matplotlib.pyplot as plt

    from fire_plugin.plots import plot_training_history

    if history:
        fig = plot_training_history(history)
        fig.savefig(path, dpi=120)
        plt.close(fig)


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
    model_dir: str = "models",
    data_dir: str = "data",
    model_id: str | None = None,
    name: str | None = None,
    seed: int = 0,
    verbose: bool = True,
) -> dict[str, Any]:
    """Evaluate a model (architecture + checkpoint, zoo name, or ``autoattack-resnet18``) and write ``eval.json``.

    With ``model_id`` (checked before any attack runs; needs ``"autoattack"`` in ``attacks``) it also writes a
    RobustBench ``model_info`` JSON.
    """
    from fire_plugin.data import dataset_to_tensors, load_dataset
    from fire_plugin.evaluation import evaluate
    from fire_plugin.models import load_pretrained
    from fire_plugin.robustbench_io import model_info_from_result, model_info_path, write_model_info

    if model_id is not None:
        model_info_path(out, model_id, dataset=dataset, threat_model=norm)  # raises on a bad id, before any work
        if "autoattack" not in attacks:
            raise ValueError(f"model_id={model_id!r} writes a RobustBench model_info file, which needs the "
                             "AutoAttack accuracy: add 'autoattack' to the attacks")
    out_dir = check_output_dir(out)
    net = load_pretrained(model, dataset=dataset, threat_model=norm, model_dir=model_dir, checkpoint=checkpoint)
    net = net.to(_device()).eval()
    x, y = dataset_to_tensors(load_dataset(dataset, split="test", data_dir=data_dir), n_examples=n_examples)
    result = evaluate(net, x, y, eps=eps, norm=norm, attacks=tuple(attacks), batch_size=batch_size, seed=seed,
                      verbose=verbose)
    payload = dataclasses.asdict(result)
    (out_dir / "eval.json").write_text(json.dumps(payload, indent=2))
    if result.autoattack_acc is not None and model_id:
        info_obj = model_info_from_result(result, dataset=dataset, name=name or model_id, architecture=model)
        payload["model_info"] = str(write_model_info(out_dir, model_id, info_obj, threat_model=norm))
    return payload


def run_demo(out: Path, *, epochs: int = 8, n_eval: int = 100, quiet: bool = False) -> dict[str, Any]:
    """The main job on sklearn's embedded digits: CE and FIRE training, evaluation, model_info JSON, figures.

    Resumable: rerunning continues from the checkpoints under ``out``.
    """
    import dataclasses

    import timm
    import torch
    from torch.utils.data import DataLoader

    from fire_plugin.attacks import FRPGD
    from fire_plugin.data import load_dataset
    from fire_plugin.distances import fisher_rao
    from fire_plugin.engine import fit
    from fire_plugin.evaluation import evaluate
    from fire_plugin.losses import FIRELoss
    from fire_plugin.robustbench_io import model_info_from_result, write_model_info

    eps = 0.1
    out.mkdir(parents=True, exist_ok=True)
    train_set = load_dataset("digits", split="train")
    x_test, y_test = load_dataset("digits", split="test").tensors  # type: ignore[attr-defined]
    report: dict[str, Any] = {"dataset": "digits", "eps": eps, "epochs": epochs, "models": {}}
    for method, lam in (("ce", 0.0), ("fire", 6.0)):
        torch.manual_seed(0)
        model = timm.create_model("digits_cnn", num_classes=10)
        optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        attack = FRPGD(model, eps=eps, alpha=0.025, steps=10)
        loss = FIRELoss(lam=lam)  # lam = 0 is plain natural cross-entropy
        _logger.info("training %s (lam=%s) for %d epochs on digits", method, lam, epochs)
        history = fit(model, DataLoader(train_set, batch_size=64, shuffle=True), epochs=epochs, loss=loss,
                      attack=attack if method == "fire" else (lambda x, y: x), optimizer=optimizer,
                      checkpoint_dir=out / method / "checkpoints", verbose=not quiet)
        model.eval()
        result = evaluate(model, x_test[:n_eval], y_test[:n_eval], eps=eps,
                          attacks=("clean", "pgd", "frpgd", "autoattack"), verbose=not quiet)
        adv = FRPGD(model, eps=eps, alpha=0.025, steps=10)(x_test[:n_eval], y_test[:n_eval])
        with torch.no_grad():
            frd = fisher_rao(model(x_test[:n_eval]), model(adv)).mean().item()
        info = model_info_from_result(result, dataset="digits", name=f"digits_cnn {method.upper()} (demo)",
                                      architecture="digits_cnn", venue="fire_plugin demo",
                                      link="https://arxiv.org/abs/2106.06685",
                                      footnote=f"Evaluated on the first {n_eval} digits test images.")
        json_path = write_model_info(out, f"Demo2026{method.capitalize()}", info, threat_model="Linf")
        save_history_plot(history, out / method / "training.png")
        report["models"][method] = {"eval": dataclasses.asdict(result), "mean_frd_under_frpgd": frd,
                                    "model_info": str(json_path), "history": history}
    (out / "demo_report.json").write_text(json.dumps(report, indent=2))
    from fire_plugin.plots import plot_accuracy_bars

    bars = {m: entry["eval"] for m, entry in report["models"].items()}
    plot_accuracy_bars(bars).savefig(out / "accuracy.png", dpi=120)
    return report

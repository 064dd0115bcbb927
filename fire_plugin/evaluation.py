"""Robustness evaluation as in the FIRE paper (section 5.1): clean, PGD-20, AutoAttack, Avg. Acc., FRPGD.

:func:`evaluate` runs the requested attacks on the same examples and returns an :class:`EvalResult`:

* ``clean``: accuracy on the unperturbed images (always computed; the attacks need it);
* ``pgd``: PGD with cross-entropy, random start, ``pgd_steps`` (20) steps of ``eps_step`` (``eps / 4``)
  through ``torchattacks.PGD`` / ``torchattacks.PGDL2``;
* ``frpgd``: the Fisher-Rao PGD of FIRE (:class:`fire_plugin.attacks.FRPGD` / ``FRPGDL2``), same budget;
* ``autoattack``: AutoAttack ``version="standard"`` (APGD-CE, APGD-T, FAB-T, Square) through
  ``pyautoattack.AutoAttack`` directly (``robustbench.benchmark`` does not work with pyautoattack);
* ``fr_margin``: the Fisher-Rao margin of :func:`fire_plugin.margins.fr_margin` (natural-gradient tracing toward
  every other class), mean and median over the examples; not an accuracy.

A robust accuracy counts the examples classified correctly both clean and after the attack (AutoAttack's
rule: an example already misclassified is not robust), so every robust accuracy is at most the clean one.
``avg_acc = (clean_acc + autoattack_acc) / 2`` is the paper's Avg. Acc. Accuracies are fractions in [0, 1].
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

import torch
import torchattacks
from pyautoattack import AutoAttack
from torch import nn
from torch.utils.data import Dataset
from tqdm.auto import tqdm

from fire_plugin._device import model_device as _model_device
from fire_plugin.attacks import FRPGD, FRPGDL2
from fire_plugin.data import dataset_to_tensors
from fire_plugin.margins import fr_margin

__all__ = ["ATTACKS", "AUTOATTACK_STANDARD", "NORMS", "EvalResult", "evaluate"]

_logger = logging.getLogger(__name__)

ATTACKS: tuple[str, ...] = ("clean", "pgd", "frpgd", "autoattack", "fr_margin")
NORMS: tuple[str, ...] = ("Linf", "L2")
AUTOATTACK_STANDARD: tuple[str, ...] = ("apgd-ce", "apgd-t", "fab-t", "square")
"""The attacks of AutoAttack's ``version="standard"``, in their order."""


@dataclass
class EvalResult:
    """Accuracies (fractions in [0, 1]; None when the attack was not run) and wall time per attack.

    Attributes:
        n_examples: number of evaluated examples.
        eps: perturbation radius.
        norm: ``"Linf"`` or ``"L2"``.
        clean_acc: accuracy on the clean images.
        pgd_acc: accuracy under PGD-``pgd_steps`` (cross-entropy, random start).
        frpgd_acc: accuracy under Fisher-Rao PGD with the same budget.
        autoattack_acc: accuracy under standard AutoAttack.
        avg_acc: ``(clean_acc + autoattack_acc) / 2``, the paper's Avg. Acc. (None without AutoAttack).
        times: seconds of wall time per attack name (``"clean"``, ``"pgd"``, ...).
        pgd_steps: steps of PGD and FRPGD.
        pgd_alpha: step size of PGD and FRPGD (the ``eps_step`` of :func:`evaluate`; the field keeps its name, the
            key of saved results).
        autoattack_version: ``"standard"``, or ``"custom:<attacks>"`` for a subset run with
            ``autoattack_attacks`` (not valid for RobustBench); None without AutoAttack.
        fr_margin_mean: mean Fisher-Rao margin over the examples (0 for a misclassified example; an example
            that no path flipped within the tracing budget counts as ``max_length``, a lower bound); None when
            not run.
        fr_margin_median: median of the same margins.

    >>> r = EvalResult(n_examples=10, eps=0.1, norm="Linf", clean_acc=0.9, autoattack_acc=0.5)
    >>> round(r.avg_acc, 6)
    0.7
    """

    n_examples: int
    eps: float
    norm: str
    clean_acc: float | None = None
    pgd_acc: float | None = None
    frpgd_acc: float | None = None
    autoattack_acc: float | None = None
    avg_acc: float | None = field(init=False, default=None)
    times: dict[str, float] = field(default_factory=dict)
    pgd_steps: int = 20
    pgd_alpha: float | None = None
    autoattack_version: str | None = None
    fr_margin_mean: float | None = None
    fr_margin_median: float | None = None

    def __post_init__(self) -> None:
        self._update_avg()

    def _update_avg(self) -> None:
        if self.clean_acc is not None and self.autoattack_acc is not None:
            self.avg_acc = (self.clean_acc + self.autoattack_acc) / 2.0

    def to_dict(self) -> dict[str, Any]:
        """A JSON-ready dict of all fields."""
        return asdict(self)


@contextmanager
def _seeded(seed: int, device: torch.device) -> Iterator[None]:
    """Seed torch's generators inside the block and restore the caller's RNG state afterwards."""
    devices = (
        [device.index if device.index is not None else torch.cuda.current_device()] if (device.type == "cuda") else []
    )
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(seed)
        yield


def _collect(
    data: torch.Tensor | Iterable[Any] | Dataset,
    y: torch.Tensor | None,
    n_examples: int | None,
) -> tuple[torch.Tensor, torch.Tensor]:
    if isinstance(data, torch.Tensor):
        if y is None:
            raise ValueError("y=None is not allowed when data is a tensor; allowed: labels of shape (N,)")
        x, labels = data, torch.as_tensor(y)
        if labels.dim() != 1 or len(labels) != len(x):
            raise ValueError(
                f"y of shape {tuple(labels.shape)} is not allowed; allowed: shape ({len(x)},) matching data"
            )
    else:
        if y is not None:
            raise ValueError("y is not allowed with a loader or dataset; allowed: None (labels come from data)")
        if isinstance(data, Dataset):
            x, labels = dataset_to_tensors(data, n_examples=n_examples)
        else:
            xs: list[torch.Tensor] = []
            ys: list[torch.Tensor] = []
            count = 0
            for batch in data:
                xb, yb = batch[0], batch[1]
                xs.append(torch.as_tensor(xb).detach().cpu())
                ys.append(torch.as_tensor(yb).detach().cpu())
                count += len(xb)
                if n_examples is not None and count >= n_examples:
                    break
            if not xs:
                raise ValueError("data is empty; allowed: a loader yielding (x, y) batches")
            x, labels = torch.cat(xs), torch.cat(ys)
    if n_examples is not None:
        x, labels = x[:n_examples], labels[:n_examples]
    if x.dim() < 2 or not x.is_floating_point():
        raise ValueError(
            f"images of shape {tuple(x.shape)} and dtype {x.dtype} are not allowed; allowed: float tensors (N, C, H, W)"
        )
    if len(x) == 0:
        raise ValueError("no examples to evaluate")
    if float(x.min()) < 0.0 or float(x.max()) > 1.0:
        raise ValueError(
            f"images with values in [{float(x.min()):.4g}, {float(x.max()):.4g}] are not allowed; allowed: "
            "[0, 1] (put the normalization inside the model)"
        )
    return x.detach(), labels.long()


def _check_params(
    eps: float,
    norm: str,
    attacks: Sequence[str],
    n_examples: int | None,
    batch_size: int,
    pgd_steps: int,
    autoattack_attacks: Sequence[str] | None,
) -> None:
    if isinstance(eps, bool) or not isinstance(eps, int | float) or not math.isfinite(eps) or eps <= 0:
        raise ValueError(f"eps={eps!r} is not allowed; allowed: a positive finite number")
    if norm not in NORMS:
        raise ValueError(f"norm={norm!r} is not allowed; allowed: {list(NORMS)}")
    if isinstance(attacks, str) or not attacks or any(a not in ATTACKS for a in attacks):
        raise ValueError(f"attacks={attacks!r} is not allowed; allowed: a non-empty sequence of {list(ATTACKS)}")
    if n_examples is not None and (not isinstance(n_examples, int) or n_examples < 1):
        raise ValueError(f"n_examples={n_examples!r} is not allowed; allowed: a positive int or None")
    if not isinstance(batch_size, int) or batch_size < 1:
        raise ValueError(f"batch_size={batch_size!r} is not allowed; allowed: a positive int")
    if not isinstance(pgd_steps, int) or pgd_steps < 1:
        raise ValueError(f"pgd_steps={pgd_steps!r} is not allowed; allowed: a positive int")
    if autoattack_attacks is not None and (
        isinstance(autoattack_attacks, str)
        or not autoattack_attacks
        or any(a not in AUTOATTACK_STANDARD for a in autoattack_attacks)
    ):
        raise ValueError(
            f"autoattack_attacks={autoattack_attacks!r} is not allowed; allowed: None (standard) or a "
            f"non-empty subset of {list(AUTOATTACK_STANDARD)}"
        )


@torch.no_grad()
def _predict(model: nn.Module, x: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    preds = [model(x[i : i + batch_size].to(device)).argmax(dim=1).cpu() for i in range(0, len(x), batch_size)]
    return torch.cat(preds)


def _batch_slices(n: int, batch_size: int) -> list[slice]:
    return [slice(i, min(i + batch_size, n)) for i in range(0, n, batch_size)]


def _attack_correct(
    attack: Any,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int,
    desc: str,
    verbose: bool,
) -> torch.Tensor:
    """Per example, whether ``model`` still predicts ``y`` on ``attack(x, y)``."""
    correct = torch.zeros(len(x), dtype=torch.bool)
    with tqdm(total=len(x), desc=desc, unit="example", disable=not verbose, leave=False) as bar:
        for sl in _batch_slices(len(x), batch_size):
            x_adv = attack(x[sl].to(device), y[sl].to(device))
            correct[sl] = _predict(model, x_adv, device, batch_size) == y[sl]
            bar.update(sl.stop - sl.start)
    return correct


# Per-example cost of AutoAttack's later sub-attacks relative to apgd-ce with the standard settings, measured on the
# digits LeNet (fire-plugin evaluate on 450 images, 1 thread): apgd-t 12x (9 target classes), fab-t 20x, square 27x
# (up to 5000 queries). Only a rough guide for the log's upper bound; the per-sub-attack estimates are measured.
_AA_RELATIVE_COST = {"apgd-t": 12, "fab-t": 20, "square": 27}


def _describe_model(model: nn.Module) -> str:
    n_params = sum(p.numel() for p in model.parameters())
    return f"{type(model).__name__} ({n_params / 1e6:.2f}M parameters)"


def _autoattack_correct(
    adversary: Any,
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    device: torch.device,
    batch_size: int,
    verbose: bool,
) -> torch.Tensor:
    """Per example, whether ``model`` resists every sub-attack of ``adversary`` (AutoAttack's rule).

    The sub-attacks run one after the other, each on the examples that resisted the ones before (as AutoAttack's
    ``run_standard_evaluation`` does on the whole set), through ``run_standard_evaluation`` with one attack at a
    time, so that the settings stay AutoAttack's. The work is logged before it starts and, after the first batch
    of each sub-attack, an estimate of that sub-attack's time; the progress bar counts examples per sub-attack.
    """
    sub_attacks = list(adversary.attacks_to_run)
    robust = torch.ones(len(x), dtype=torch.bool)
    _logger.info("AutoAttack (%s: %s) on %d correctly classified examples of %s, batch %d: up to %d x %d "
                 "attack runs, each sub-attack on the examples that resisted the ones before",
                 adversary.version, ", ".join(sub_attacks), len(x), _describe_model(model), batch_size, len(x),
                 len(sub_attacks))
    version = adversary.version
    try:
        adversary.version = "custom"  # run_standard_evaluation runs attacks_to_run as they are
        for attack in sub_attacks:
            todo = robust.nonzero().flatten()
            if len(todo) == 0:
                _logger.info("AutoAttack: no example left to attack; %s skipped", attack)
                continue
            adversary.attacks_to_run = [attack]
            start = time.perf_counter()
            with tqdm(total=len(todo), desc=f"AutoAttack {attack}", unit="example", disable=not verbose,
                      leave=False) as bar:
                for i, sl in enumerate(_batch_slices(len(todo), batch_size)):
                    idx = todo[sl]
                    x_adv, _ = adversary.run_standard_evaluation(x[idx].to(device), y[idx].to(device),
                                                                 batch_size=len(idx))
                    robust[idx] &= _predict(model, x_adv, device, batch_size) == y[idx]
                    bar.update(len(idx))
                    if i == 0:
                        first = time.perf_counter() - start
                        _logger.info("AutoAttack %s: the first %d examples took %.1f s; about %.0f s for the %d "
                                     "examples it attacks", attack, len(idx), first, first * len(todo) / len(idx),
                                     len(todo))
                        later = [a for a in sub_attacks[sub_attacks.index(attack) + 1 :] if a in _AA_RELATIVE_COST]
                        if attack == "apgd-ce" and later:
                            bound = first * len(todo) / len(idx) * (1 + sum(_AA_RELATIVE_COST[a] for a in later))
                            _logger.info("AutoAttack: at most about %.0f s in all if no example breaks (a rough "
                                         "guide: %s cost %s times apgd-ce per example on the digits LeNet here); "
                                         "less as examples break", bound, ", ".join(later),
                                         ", ".join(str(_AA_RELATIVE_COST[a]) for a in later))
            _logger.info("AutoAttack %s: %d of %d examples still robust (%.1f s)", attack, int(robust.sum()),
                         len(x), time.perf_counter() - start)
    finally:
        adversary.attacks_to_run, adversary.version = sub_attacks, version
    return robust


@dataclass
class _Targets:
    """What the attacks of one :func:`evaluate` call share: the model (in eval mode) on ``device``, the examples to
    attack (the ``idx``-th of the ``n`` examples: those classified correctly, ``x_ok`` and ``y_ok``), the batch
    size, the seed of the random starts and AutoAttack, and whether to show progress bars."""

    model: nn.Module
    device: torch.device
    n: int
    idx: torch.Tensor
    x_ok: torch.Tensor
    y_ok: torch.Tensor
    batch_size: int
    seed: int
    verbose: bool


@contextmanager
def _timed(result: EvalResult, name: str) -> Iterator[None]:
    """Record the wall time of the block as ``result.times[name]`` (when the block completes)."""
    start = time.perf_counter()
    yield
    result.times[name] = time.perf_counter() - start


def _eps_step(eps_step: float | None, pgd_alpha: float | None, eps: float) -> float:
    """The step of PGD and FRPGD: ``eps_step``, or its older name ``pgd_alpha``, or ``eps / 4`` when neither is set."""
    if eps_step is not None and pgd_alpha is not None:
        raise ValueError(f"eps_step={eps_step!r} and pgd_alpha={pgd_alpha!r} are both given; allowed: one of them "
                         "(pgd_alpha is the older name of eps_step)")
    name, step = ("pgd_alpha", pgd_alpha) if pgd_alpha is not None else ("eps_step", eps_step)
    if step is None:
        return eps / 4.0
    if not (math.isfinite(step) and step > 0):
        raise ValueError(f"{name}={step!r} is not allowed; allowed: a positive number or None")
    return float(step)


def _pgd_like_accuracy(t: _Targets, name: str, *, eps: float, norm: str, eps_step: float, steps: int) -> float:
    """Robust accuracy under PGD (cross-entropy, ``name="pgd"``) or FRPGD (Fisher-Rao, ``"frpgd"``): both share
    budget, steps, step size and random-start seed."""
    label, attack_cls = {
        "pgd": ("PGD", torchattacks.PGD if norm == "Linf" else torchattacks.PGDL2),
        "frpgd": ("FRPGD", FRPGD if norm == "Linf" else FRPGDL2),
    }[name]
    attack = attack_cls(t.model, eps=eps, alpha=eps_step, steps=steps, random_start=True)
    with _seeded(t.seed, t.device):
        ok = _attack_correct(attack, t.model, t.x_ok, t.y_ok, t.device, t.batch_size, label, t.verbose)
    return ok.sum().item() / t.n


def _autoattack_accuracy(
    t: _Targets, *, eps: float, norm: str, autoattack_attacks: Sequence[str] | None
) -> tuple[float, str]:
    """Robust accuracy under AutoAttack and its version: ``"standard"``, or ``"custom:<attacks>"`` for a subset run
    with the standard settings (restarts, target classes, queries)."""
    adversary = AutoAttack(t.model, norm=norm, eps=eps, version="standard", device=t.device, seed=t.seed)
    version = "standard"
    if autoattack_attacks is not None and set(autoattack_attacks) != set(AUTOATTACK_STANDARD):
        adversary.attacks_to_run = [a for a in AUTOATTACK_STANDARD if a in autoattack_attacks]
        adversary.version = "custom"
        version = "custom:" + ",".join(adversary.attacks_to_run)
    with _seeded(t.seed, t.device):
        ok = _autoattack_correct(adversary, t.model, t.x_ok, t.y_ok, t.device, t.batch_size, t.verbose)
    return ok.sum().item() / t.n, version


def _margin_stats(t: _Targets, margin_kwargs: Mapping[str, Any] | None) -> tuple[float, float]:
    """Mean and median Fisher-Rao margin over the ``n`` examples: 0 for a misclassified one, ``max_length`` (a lower
    bound) for one that no path flipped within the tracing budget."""
    kwargs = {"batch_size": t.batch_size, "verbose": t.verbose, **(margin_kwargs or {})}
    max_length = float(kwargs.get("max_length", 20.0))
    margins = torch.zeros(t.n, dtype=torch.float64)  # misclassified examples: margin 0
    if len(t.idx):
        traced = torch.as_tensor(fr_margin(t.model, t.x_ok, t.y_ok, **kwargs))
        margins[t.idx] = traced.clamp(max=max_length)  # not flipped within the budget: >= max_length
    return margins.mean().item(), margins.median().item()


def _log_result(result: EvalResult) -> None:
    _logger.info(
        "evaluated %d examples (%s, eps=%.4g): clean=%s pgd=%s frpgd=%s autoattack=%s avg=%s fr_margin=%s times=%s",
        result.n_examples,
        result.norm,
        result.eps,
        result.clean_acc,
        result.pgd_acc,
        result.frpgd_acc,
        result.autoattack_acc,
        result.avg_acc,
        result.fr_margin_mean,
        {k: round(v, 2) for k, v in result.times.items()},
    )


def evaluate(
    model: nn.Module,
    data: torch.Tensor | Iterable[Any] | Dataset,
    y: torch.Tensor | None = None,
    *,
    eps: float,
    norm: str = "Linf",
    attacks: Sequence[str] = ("clean", "pgd", "autoattack"),
    n_examples: int | None = None,
    batch_size: int = 256,
    seed: int = 0,
    pgd_steps: int = 20,
    eps_step: float | None = None,
    autoattack_attacks: Sequence[str] | None = None,
    margin_kwargs: Mapping[str, Any] | None = None,
    verbose: bool = True,
    pgd_alpha: float | None = None,
) -> EvalResult:
    """Clean, PGD, FRPGD and AutoAttack accuracy of ``model`` on the same examples, with wall times.

    The model runs in eval mode on its own device (its training flag is restored afterwards); it must take
    [0, 1] images. Attacks only target examples that are classified correctly, and an example counts as
    robust when it is correct clean and under attack. Random starts and AutoAttack draw from torch generators
    seeded with ``seed`` inside the call; the caller's RNG state is left unchanged.

    Args:
        model: classifier returning logits.
        data: images ``(N, C, H, W)`` in [0, 1] with ``y``, or a DataLoader / iterable of ``(x, y)`` batches,
            or a Dataset of ``(image, label)`` pairs.
        y: labels ``(N,)`` when ``data`` is a tensor.
        eps: perturbation radius (Linf: 8/255 CIFAR, 0.3 MNIST in the paper; L2: 0.5 CIFAR).
        norm: ``"Linf"`` or ``"L2"``.
        attacks: any of ``"clean"``, ``"pgd"``, ``"frpgd"``, ``"autoattack"``, ``"fr_margin"``.
        n_examples: evaluate the first ``n_examples`` only (RobustBench uses 10,000 on CIFAR).
        batch_size: examples per forward/attack batch.
        seed: seed of the random starts and of AutoAttack.
        pgd_steps: steps of PGD and FRPGD (PGD-20 by default).
        eps_step: step size of PGD and FRPGD; ``eps / 4`` when None (recorded as ``EvalResult.pgd_alpha``).
        autoattack_attacks: None for standard AutoAttack (what RobustBench and the paper report), or a
            subset of ``AUTOATTACK_STANDARD`` run with the standard settings, for quick checks.
        margin_kwargs: keyword arguments of :func:`fire_plugin.margins.trace_margins` for ``"fr_margin"``
            (``damping``, ``step``, ``max_length``, ``targets``, ...); ``eps`` and ``norm`` do not apply to it.
        verbose: show tqdm progress bars.
        pgd_alpha: the older name of ``eps_step``, still accepted (giving both is a ValueError).

    Returns:
        An :class:`EvalResult`.

    >>> from fire_plugin.models import DigitsCNN
    >>> model = DigitsCNN()
    >>> x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
    >>> r = evaluate(model, x, y, eps=0.1, attacks=("clean", "pgd"), eps_step=0.025, verbose=False)
    >>> r.pgd_acc <= r.clean_acc
    True
    """
    _check_params(eps, norm, attacks, n_examples, batch_size, pgd_steps, autoattack_attacks)
    step = _eps_step(eps_step, pgd_alpha, float(eps))
    x, labels = _collect(data, y, n_examples)
    eps = float(eps)
    device = _model_device(model)
    result = EvalResult(n_examples=len(x), eps=eps, norm=norm, pgd_steps=pgd_steps, pgd_alpha=step)
    was_training = model.training
    model.eval()
    try:
        with _timed(result, "clean"):
            clean_correct = _predict(model, x, device, batch_size) == labels
        result.clean_acc = clean_correct.sum().item() / len(x)
        idx = clean_correct.nonzero().flatten()  # only correctly classified examples are attacked
        t = _Targets(model, device, len(x), idx, x[idx], labels[idx], batch_size, seed, verbose)
        for name in ("pgd", "frpgd"):
            if name in attacks:
                with _timed(result, name):
                    acc = _pgd_like_accuracy(t, name, eps=eps, norm=norm, eps_step=step, steps=pgd_steps)
                setattr(result, f"{name}_acc", acc)
        if "autoattack" in attacks:
            with _timed(result, "autoattack"):
                result.autoattack_acc, result.autoattack_version = _autoattack_accuracy(
                    t, eps=eps, norm=norm, autoattack_attacks=autoattack_attacks)
        if "fr_margin" in attacks:
            with _timed(result, "fr_margin"):
                result.fr_margin_mean, result.fr_margin_median = _margin_stats(t, margin_kwargs)
    finally:
        model.train(was_training)
    result._update_avg()
    _log_result(result)
    return result

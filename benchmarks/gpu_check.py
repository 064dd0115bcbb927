"""One command for a lent GPU: the CUDA tests, the WRN-34-10 epoch cost, and the GPU ratios against the peers.

Sections (each row of the printed table is one measurement; the JSON has the same rows and the run's settings):

1. ``tests/test_cuda.py`` under ``pytest -m cuda``: passed / failed / skipped, the failures named.
2. Epoch cost of FIRE and TRADES (10-step inner attack) on WRN-34-10, CIFAR-shaped synthetic data, batch 128:
   eager float32, bf16 autocast + channels-last, and + ``torch.compile``, each through ``engine.fit``. Each training
   step is timed (CUDA synchronized) from one call of the objective to the next, the warm-up steps (compilation
   included) left out; the median step times ``ceil(49,000 / 128)`` steps is the epoch. Beside it: the README's
   on-paper estimate (45 s on an H100 at 40% of the dense bf16 peak) and the achieved rate by the same FLOP count
   (27 forward passes per image per step, counted here with ``FlopCounterMode``).
3. ``FIRETrainer`` epoch / ART ``AdversarialTrainerTRADESPyTorch`` epoch (SmallCNN, 1x28x28, batch 128).
4. ``FRPGD`` / ``torchattacks.PGD``, same model, batch, eps, steps (ResNet-18, 3x32x32).
5. Partial isometry (exact, and the objective's default estimator) / cross-entropy, ``engine.fit`` steps (LeNet).
6. Margin tracing: exact solver / CG solver (ResNet-18, 3x32x32).

``--dry-run`` runs the same code on the CPU with tiny shapes (a WideResNet-10-1, batch 8, 2 attack steps,
``compile="eager"``: dynamo without code generation) in well under 2 minutes; ``make test`` runs it
(``tests/test_gpu_check.py``). Its timings say nothing about a GPU. In the dry run the CUDA tests run on the CPU
(``FIRE_PLUGIN_CUDA_TESTS_ON_CPU=1``), the slowest two left out (``--tests-k``).

Run on a GPU (at most 8 minutes on one H200): ``python benchmarks/gpu_check.py --json runs/gpu_check.json``.
``docs/reproducing.md`` says how to carry the packages the device machine lacks.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import fire_plugin  # noqa: E402,F401  (registers our timm architectures as soon as timm is imported)

EPOCH_IMAGES = 49_000  # CIFAR-10's 50,000 training images minus the validation split
README_ESTIMATE_S = 45.0  # README: WRN-34-10, FIRE/TRADES K = 10, H100 SXM at 40% of 989 TFLOP/s dense bf16
DRY_RUN_TESTS_K = "not test_margins_on_cuda_match_cpu and not test_resume_is_bit_identical_on_cuda"


@dataclass(frozen=True)
class Settings:
    """Shapes and counts of one run (:data:`FULL` on a GPU, :data:`DRY` on the CPU)."""

    device: str
    wrn: tuple[int, int]  # depth, widen factor
    batch: int
    attack_steps: int
    warmup_steps: int
    timed_steps: int
    compile_backend: str
    trainer_samples: int
    attack_batch: int
    isometry_batch: int
    isometry_steps: int
    margin_inputs: int
    margin_steps: int
    rounds: int
    resnet18: bool  # the ResNet-18 of the ratio sections; a WideResNet-10-1 otherwise


FULL = Settings(device="cuda", wrn=(34, 10), batch=128, attack_steps=10, warmup_steps=3, timed_steps=8,
                compile_backend="inductor", trainer_samples=2048, attack_batch=256, isometry_batch=128,
                isometry_steps=8, margin_inputs=64, margin_steps=30, rounds=5, resnet18=True)
DRY = Settings(device="cpu", wrn=(10, 1), batch=8, attack_steps=2, warmup_steps=1, timed_steps=2,
               compile_backend="eager", trainer_samples=128, attack_batch=8, isometry_batch=8, isometry_steps=2,
               margin_inputs=2, margin_steps=5, rounds=1, resnet18=False)


def _sync(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def timed(fn: Callable[[], object], device: str) -> float:
    """Seconds of one ``fn()`` call, synchronized on CUDA."""
    _sync(device)
    start = time.perf_counter()
    fn()
    _sync(device)
    return time.perf_counter() - start


def interleaved(fns: dict[str, Callable[[], object]], *, rounds: int, device: str) -> dict[str, float]:
    """Median seconds of each callable over ``rounds`` alternating rounds, after one warm-up call each."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            times[name].append(timed(fn, device))
    return {k: statistics.median(v) for k, v in times.items()}


def result(section: str, name: str, value: float | None, unit: str, peer: str = "", detail: str = "",
           **extra: Any) -> dict[str, Any]:
    """One row of the table: ``value`` in ``unit`` (``"x"`` for a ratio against ``peer``)."""
    return {"section": section, "name": name, "value": value, "unit": unit, "peer": peer, "detail": detail, **extra}


# --------------------------------------------------------------------------------------------- 1. CUDA tests


def run_cuda_tests(dry_run: bool, tests_k: str | None) -> list[dict[str, Any]]:
    """``pytest -m cuda tests/test_cuda.py`` in a fresh interpreter; one row with the counts."""
    with tempfile.TemporaryDirectory() as tmp:
        junit = Path(tmp) / "cuda.xml"
        cmd = [sys.executable, "-m", "pytest", "-q", "-m", "cuda", str(ROOT / "tests" / "test_cuda.py"),
               "-p", "no:cacheprovider", f"--junitxml={junit}"]
        if tests_k:
            cmd += ["-k", tests_k]
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
        if dry_run:
            env["FIRE_PLUGIN_CUDA_TESTS_ON_CPU"] = "1"
        start = time.perf_counter()
        done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=ROOT, timeout=1200)
        seconds = time.perf_counter() - start
        if not junit.exists():
            return [result("cuda tests", "tests/test_cuda.py", None, "", detail="pytest wrote no report: "
                           + (done.stdout + done.stderr)[-300:].replace("\n", " "), failed=["(pytest)"])]
        cases = ET.parse(junit).getroot().iter("testcase")
        passed, failed, skipped = [], [], []
        for case in cases:
            name = case.get("name", "?")
            if case.find("failure") is not None or case.find("error") is not None:
                failed.append(name)
            elif case.find("skipped") is not None:
                skipped.append(name)
            else:
                passed.append(name)
    where = "on the CPU (dry run)" if dry_run else "on CUDA"
    detail = f"{len(passed)} passed, {len(failed)} failed, {len(skipped)} skipped {where} in {seconds:.0f} s" + (
        f"; failed: {', '.join(failed)}" if failed else "") + (f"; -k {tests_k!r}" if tests_k else "")
    return [result("cuda tests", "tests/test_cuda.py (pytest -m cuda)", float(len(passed)), "passed",
                   detail=detail, failed=failed, skipped=skipped)]


# --------------------------------------------------------------------------------------------- 2. epoch cost


def _wrn(s: Settings) -> nn.Module:
    from fire_plugin.models import WideResNet

    torch.manual_seed(0)
    return WideResNet(depth=s.wrn[0], widen_factor=s.wrn[1], num_classes=10).to(s.device)


def forward_flops(model: nn.Module, shape: tuple[int, ...], device: str) -> float:
    """FLOPs of one forward pass of one input of ``shape`` (``torch.utils.flop_counter``)."""
    from torch.utils.flop_counter import FlopCounterMode

    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(torch.rand(1, *shape, device=device))
    return float(counter.get_total_flops())


def step_seconds(s: Settings, method: str, *, amp: str, channels_last: bool, compile_: bool | str) -> list[float]:
    """Seconds of each timed ``engine.fit`` training step (warm-up steps dropped) of ``method`` on the WRN."""
    from fire_plugin.attacks import DivergencePGD
    from fire_plugin.engine import AdversarialObjective, fit
    from fire_plugin.losses import FIRELoss, TRADESLoss

    stamps: list[float] = []

    class Timed(AdversarialObjective):
        def __call__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, targets_fn: Any = None) -> Any:
            _sync(s.device)
            stamps.append(time.perf_counter())
            return super().__call__(model, x, y, targets_fn=targets_fn)

    if compile_:
        torch._dynamo.reset()
    model = _wrn(s)
    eps = 8 / 255
    divergence, loss = ("fisher_rao", FIRELoss(lam=3.0)) if method == "fire" else ("kl", TRADESLoss(beta=6.0))
    attack = DivergencePGD(model, eps, 2.5 * eps / s.attack_steps, s.attack_steps, True, divergence=divergence)
    n = s.batch * (s.warmup_steps + s.timed_steps)
    gen = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.rand(n, 3, 32, 32, generator=gen), torch.randint(0, 10, (n,), generator=gen))
    loader = DataLoader(data, batch_size=s.batch, shuffle=True, drop_last=True, generator=gen,
                        pin_memory=s.device == "cuda")
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
    fit(model, loader, epochs=1, objective=Timed(loss, attack), optimizer=opt, amp=amp, channels_last=channels_last,
        compile=compile_, verbose=False)
    _sync(s.device)
    stamps.append(time.perf_counter())
    steps = [b - a for a, b in zip(stamps, stamps[1:], strict=False)]
    return steps[s.warmup_steps:]


def epoch_cost(s: Settings, deadline: float) -> list[dict[str, Any]]:
    """Section 2: seconds per 49,000-image epoch of FIRE and TRADES in three modes, beside the estimate."""
    flops = forward_flops(_wrn(s), (3, 32, 32), s.device)
    per_epoch_flops = 27 * flops * EPOCH_IMAGES
    steps_per_epoch = math.ceil(EPOCH_IMAGES / s.batch)
    amp = "bf16"
    modes = [("eager fp32", "off", False, False), ("bf16 + channels_last", amp, True, False),
             (f"bf16 + channels_last + compile ({s.compile_backend})", amp, True, s.compile_backend)]
    arch = f"WRN-{s.wrn[0]}-{s.wrn[1]}"
    rows = [result("epoch cost", "README's on-paper estimate: WRN-34-10 epoch, FIRE/TRADES K=10, H100 at 40% of "
                   "the bf16 peak", README_ESTIMATE_S, "s", detail=f"not measured; the model timed here ({arch}): "
                   f"{flops / 1e9:.2f} GFLOPs per forward pass, {per_epoch_flops:.3g} FLOPs per epoch by the README's "
                   "count (27 forward passes per image)")]
    for method in ("fire", "trades"):
        for label, amp_mode, cl, comp in modes:
            name = f"{method.upper()} epoch, {arch}, batch {s.batch}, K={s.attack_steps}, {label}"
            if time.perf_counter() > deadline:
                rows.append(result("epoch cost", name, None, "s", detail="skipped: the time budget is spent"))
                continue
            try:
                steps = step_seconds(s, method, amp=amp_mode, channels_last=cl, compile_=comp)
            except Exception as exc:  # one failing mode (say compile) must not hide the others
                rows.append(result("epoch cost", name, None, "s", detail=f"failed: {type(exc).__name__}: {exc}"))
                continue
            step = statistics.median(steps)
            epoch = step * steps_per_epoch
            rows.append(result("epoch cost", name, epoch, "s", peer="README estimate",
                               detail=f"median step {step * 1e3:.1f} ms of {len(steps)} x {steps_per_epoch} steps; "
                               f"{per_epoch_flops / epoch / 1e12:.1f} TFLOP/s achieved by the README's count"))
    return rows


# --------------------------------------------------------------------------------------------- 3-6. ratios


def _small_cnn(device: str) -> nn.Module:
    import timm

    torch.manual_seed(0)
    return timm.create_model("small_cnn", num_classes=10).to(device)


def trainers_ratio(s: Settings) -> list[dict[str, Any]]:
    """Section 3: FIRETrainer epoch / ART's TRADES trainer epoch, same model, data, batch, eps and steps."""
    from art.attacks.evasion import ProjectedGradientDescent
    from art.defences.trainer import AdversarialTrainerTRADESPyTorch
    from art.estimators.classification import PyTorchClassifier

    from fire_plugin.trainers import FIRETrainer

    gen = np.random.default_rng(0)
    x = gen.random((s.trainer_samples, 1, 28, 28), dtype=np.float32)
    y = gen.integers(0, 10, s.trainer_samples)
    bs, steps, eps = min(128, s.trainer_samples), s.attack_steps, 0.3
    eps_step = 2.5 * eps / steps

    def classifier() -> PyTorchClassifier:
        model = _small_cnn("cpu")
        return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                                 optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                                 clip_values=(0.0, 1.0), device_type="gpu" if s.device == "cuda" else "cpu")

    def art() -> Callable[[], object]:
        clf = classifier()
        pgd = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=eps_step, max_iter=steps, batch_size=bs,
                                       verbose=False)
        trainer = AdversarialTrainerTRADESPyTorch(clf, pgd, beta=6.0)
        return lambda: trainer.fit(x, y, nb_epochs=1, batch_size=bs)

    def ours() -> Callable[[], object]:
        trainer = FIRETrainer(classifier(), lam=6.0, eps=eps, eps_step=eps_step, max_iter=steps, verbose=False)
        return lambda: trainer.fit(x, y, nb_epochs=1, batch_size=bs)

    art_fit, our_fit = art(), ours()
    t = interleaved({"art": art_fit, "ours": our_fit}, rounds=s.rounds, device=s.device)
    return [result("ratios", f"FIRETrainer epoch, SmallCNN 1x28x28, {len(x)} samples, batch {bs}, {steps} steps",
                   t["ours"] / t["art"], "x", "ART AdversarialTrainerTRADESPyTorch epoch (beta 6)",
                   f"{t['ours']:.3f} s vs {t['art']:.3f} s, median of {s.rounds}")]


def _cifar_model(s: Settings) -> nn.Module:
    from fire_plugin.models import ResNet18CIFAR, WideResNet

    torch.manual_seed(0)
    model = ResNet18CIFAR(num_classes=10) if s.resnet18 else WideResNet(depth=10, widen_factor=1, num_classes=10)
    return model.to(s.device).eval()


def attacks_ratio(s: Settings) -> list[dict[str, Any]]:
    """Section 4: FRPGD / torchattacks.PGD, same model, batch, eps, step size and steps."""
    import torchattacks

    from fire_plugin.attacks import FRPGD

    model = _cifar_model(s)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(s.attack_batch, 3, 32, 32, generator=gen).to(s.device)
    y = torch.randint(0, 10, (s.attack_batch,), generator=gen).to(s.device)
    eps, steps = 8 / 255, s.attack_steps
    ours = FRPGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps)
    peer = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, random_start=True)
    t = interleaved({"ours": lambda: ours(x, y), "peer": lambda: peer(x, y)}, rounds=s.rounds, device=s.device)
    arch = "ResNet-18" if s.resnet18 else "WRN-10-1"
    return [result("ratios", f"FRPGD, {arch} 3x32x32, batch {s.attack_batch}, {steps} steps", t["ours"] / t["peer"],
                   "x", "torchattacks.PGD (same eps, step, steps)",
                   f"{t['ours'] * 1e3:.1f} ms vs {t['peer'] * 1e3:.1f} ms, median of {s.rounds}")]


def isometry_ratio(s: Settings) -> list[dict[str, Any]]:
    """Section 5: partial-isometry training steps (exact; default estimator) / cross-entropy steps."""
    import timm

    from fire_plugin.engine import CrossEntropyObjective, Objective, fit
    from fire_plugin.isometry import PartialIsometryObjective, delta_m

    gen = torch.Generator().manual_seed(0)
    n = s.isometry_batch * s.isometry_steps
    loader = DataLoader(TensorDataset(torch.rand(n, 1, 28, 28, generator=gen), torch.randint(0, 10, (n,),
                        generator=gen)), batch_size=s.isometry_batch, pin_memory=s.device == "cuda")

    def fit_fn(objective: Objective) -> Callable[[], object]:
        torch.manual_seed(0)
        model = timm.create_model("lenet_pi", num_classes=10).to(s.device)
        opt = torch.optim.SGD(model.parameters(), lr=0.0)  # lr 0: every call does the same work on the same weights
        return lambda: fit(model, loader, epochs=1, objective=objective, optimizer=opt, verbose=False)

    default = PartialIsometryObjective(epsilon=delta_m(10))
    fns = {"ce": fit_fn(CrossEntropyObjective()), "exact": fit_fn(PartialIsometryObjective(epsilon=delta_m(10),
           estimator="exact")), "default": fit_fn(default)}
    t = interleaved(fns, rounds=s.rounds, device=s.device)
    setting = f"LeNet 1x28x28, batch {s.isometry_batch}, {s.isometry_steps} steps"
    return [result("ratios", f"partial isometry ({label}), {setting}", t[key] / t["ce"], "x",
                   "CrossEntropyObjective, same engine.fit", f"{t[key]:.3f} s vs {t['ce']:.3f} s, median of {s.rounds}")
            for key, label in (("exact", "exact"), ("default", f"default estimator: {default.estimator}"))]


def margins_ratio(s: Settings) -> list[dict[str, Any]]:
    """Section 6: margin tracing with the exact solver / with the CG solver, same model and inputs."""
    from fire_plugin.margins import trace_margins

    model = _cifar_model(s)
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(s.margin_inputs, 3, 32, 32, generator=gen).to(s.device)
    with torch.no_grad():
        y = model(x).argmax(1)  # trace from the predicted class
    fns = {solver: (lambda solver=solver: trace_margins(model, x, y, solver=solver, max_steps=s.margin_steps,
                                                         verbose=False)) for solver in ("exact", "cg")}
    t = interleaved(fns, rounds=s.rounds, device=s.device)
    arch = "ResNet-18" if s.resnet18 else "WRN-10-1"
    return [result("ratios", f"trace_margins exact, {arch}, {s.margin_inputs} inputs x 9 targets, "
                   f"{s.margin_steps} steps at most", t["exact"] / t["cg"], "x", "trace_margins solver='cg'",
                   f"{t['exact']:.2f} s vs {t['cg']:.2f} s, median of {s.rounds}")]


# --------------------------------------------------------------------------------------------- driver


def format_table(rows: list[dict[str, Any]]) -> str:
    """The rows as one markdown table."""
    lines = ["| check | result | peer / reference | detail |", "|---|---:|---|---|"]
    for r in rows:
        value = r["value"]
        shown = "-" if value is None else (f"{value:.3f} x" if r["unit"] == "x" else
                                           f"{value:.1f} {r['unit']}" if r["unit"] == "s" else
                                           f"{value:g} {r['unit']}")
        cells = [r["name"], shown, r["peer"], r["detail"]]
        lines.append("| " + " | ".join(str(c).replace("|", "\\|") for c in cells) + " |")
    return "\n".join(lines)


SECTIONS: dict[str, Callable[[Settings], list[dict[str, Any]]]] = {
    "trainers": trainers_ratio, "attacks": attacks_ratio, "isometry": isometry_ratio, "margins": margins_ratio}


def run(*, dry_run: bool, budget_s: float = 480.0, skip: tuple[str, ...] = (), tests_k: str | None = None,
        ) -> dict[str, Any]:
    """Every section in order; returns ``{"meta": ..., "rows": [...]}``. A section that raises gives a row saying so.

    ``budget_s``: after this many seconds the remaining epoch-cost modes are skipped (with a note), so that the
    whole run stays inside one device command.
    """
    settings = DRY if dry_run else FULL
    if settings.device == "cuda" and not torch.cuda.is_available():
        raise ValueError("no CUDA device: run on a GPU, or pass --dry-run for the CPU smoke run")
    tf32 = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False  # float32 means float32 in the "eager fp32" rows
    torch.backends.cudnn.allow_tf32 = False
    if dry_run:
        torch.set_num_threads(1)
    try:
        return _run(settings, dry_run=dry_run, budget_s=budget_s, skip=skip, tests_k=tests_k)
    finally:
        torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = tf32


def _run(settings: Settings, *, dry_run: bool, budget_s: float, skip: tuple[str, ...],
         tests_k: str | None) -> dict[str, Any]:
    start = time.perf_counter()
    deadline = start + budget_s
    rows: list[dict[str, Any]] = []
    if "tests" not in skip:
        rows += run_cuda_tests(dry_run, tests_k if tests_k is not None else (DRY_RUN_TESTS_K if dry_run else None))
    steps: list[tuple[str, Callable[[Settings], list[dict[str, Any]]]]] = [
        ("epoch", lambda st: epoch_cost(st, deadline)), *SECTIONS.items()]
    for name, fn in steps:
        if name in skip:
            continue
        try:
            rows += fn(settings)
        except Exception as exc:  # report and go on: one broken section must not hide the others
            rows.append(result(name, f"section {name}", None, "", detail=f"failed: {type(exc).__name__}: {exc}"))
    meta = {
        "dry_run": dry_run, "device": torch.cuda.get_device_name() if settings.device == "cuda" else "cpu",
        "torch": torch.__version__, "python": platform.python_version(), "settings": settings.__dict__,
        "wall_seconds": round(time.perf_counter() - start, 1), "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    return {"meta": meta, "rows": rows}


def main(argv: list[str] | None = None) -> int:
    """Run, print the table and the JSON; exit 1 when a test or a section failed."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dry-run", action="store_true", help="the same code on the CPU with tiny shapes (< 2 min)")
    parser.add_argument("--json", type=Path, default=None, help="also save the JSON here")
    parser.add_argument("--budget", type=float, default=480.0,
                        help="seconds after which the remaining epoch-cost modes are skipped (480)")
    parser.add_argument("--skip", action="append", default=[], choices=["tests", "epoch", *SECTIONS],
                        help="leave a section out (repeatable)")
    parser.add_argument("--tests-k", default=None, help="pytest -k expression for the CUDA tests (dry run: "
                                                        "the two slowest left out)")
    args = parser.parse_args(argv)
    report = run(dry_run=args.dry_run, budget_s=args.budget, skip=tuple(args.skip), tests_k=args.tests_k)
    print(f"gpu check{' (dry run, CPU: timings say nothing about a GPU)' if args.dry_run else ''}: "
          f"{report['meta']['device']}, torch {report['meta']['torch']}, {report['meta']['wall_seconds']:.0f} s")
    print(format_table(report["rows"]))
    print(json.dumps(report, default=str))
    if args.json is not None:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    failed = [r for r in report["rows"] if r.get("failed") or str(r["detail"]).startswith("failed")]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())

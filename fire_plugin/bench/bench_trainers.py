"""Trainer speed, measured in one run on the same model, data, batch, eps and steps.

(a) FIRETrainer epoch time / ART ``AdversarialTrainerTRADESPyTorch`` epoch time (target <= 0.75);
(b) FIRETrainer(divergence="fisher_rao") / FIRETrainer(divergence="kl") epoch time (target <= 1.02);
(c) ``engine.adversarial_step`` / a minimal hand-written PGD-training step with the same forward and backward
    passes and the same Fisher-Rao divergence (target <= 1.05).

Model: the TRADES MNIST SmallCNN on 1x28x28 inputs (sklearn digits upsampled to 28x28, so nothing is downloaded),
batch 128. The paper's MNIST attack has 40 steps; on a CPU this benchmark uses ``--steps 10`` by default (pass
``--steps 40`` on a GPU). Rounds alternate between the contenders so that drift of a shared machine hits all alike.

Only the thing named is timed: ``fit`` for one epoch (the classifier and trainer are built outside the timer), one
training step. Run: ``python -m fire_plugin.bench.bench_trainers [--quick] [--steps 10] [--samples 512] [--rounds 7]``;
``run(quick)`` returns the rows (``fire-plugin bench``).
"""

from __future__ import annotations

import argparse
import statistics
from collections.abc import Callable

import numpy as np
import timm
import torch
import torch.nn.functional as F
from art.attacks.evasion import ProjectedGradientDescent
from art.defences.trainer import AdversarialTrainerTRADESPyTorch
from art.estimators.classification import PyTorchClassifier
from torch import nn

import fire_plugin  # noqa: F401  (registers small_cnn)
from fire_plugin.attacks import FRPGD
from fire_plugin.bench._timing import add_timing_args, choose_clock, format_table, row
from fire_plugin.data import load_dataset
from fire_plugin.distances import fisher_rao_squared
from fire_plugin.engine import adversarial_step
from fire_plugin.losses import FIRELoss
from fire_plugin.trainers import FIRETrainer


def digits28(n: int) -> tuple[np.ndarray, np.ndarray]:
    x, y = load_dataset("digits", split="train").tensors  # type: ignore[attr-defined]
    x = F.interpolate(x[:n], size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)
    return x.numpy().astype(np.float32), y[:n].numpy()


def make_classifier(seed: int = 0) -> PyTorchClassifier:
    torch.manual_seed(seed)
    model = timm.create_model("small_cnn", num_classes=10)
    return PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 28, 28), nb_classes=10,
                             optimizer=torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9),
                             clip_values=(0.0, 1.0))


def timed(fn: Callable[[], object], clock: Callable[[], float]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = clock()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return clock() - start


def run(quick: bool = False, *, steps: int = 10, samples: int = 512, batch_size: int = 128, rounds: int = 7,
        step_rounds: int = 16, skip_epochs: bool = False, threads: int = 1,
        clock: str = "auto") -> list[dict[str, object]]:
    """Rows of the perf-suite contract: (c) engine step / hand-written step, then (a) and (b) epoch ratios.

    ``quick``: 2 attack steps, 128 samples (one batch), 1 epoch round, 4 step rounds.
    """
    if quick:
        steps, samples, rounds, step_rounds = 2, 128, 1, 4
    device = "cuda" if torch.cuda.is_available() else "cpu"
    clock_fn, clock_label = choose_clock(clock, threads=threads, device=device)
    eps, eps_step, bs = 0.3, 0.75 / steps, batch_size
    x, y = digits28(samples)
    setting = f"SmallCNN 1x28x28, batch {bs}, eps {eps}, {steps} PGD steps"
    how = f"{device}, {torch.get_num_threads()} thread(s), {clock_label} clock"
    # (c) runs first: after the ART epochs, the state of the process (allocator, caches) moved this ratio from
    # about 1.00 to as much as 1.09 here, so both step contenders are measured in the same fresh state.
    rows = [compare_steps(x, y, eps, eps_step, steps, bs, step_rounds=step_rounds, clock=clock_fn, setting=setting,
                          how=how)]
    if not skip_epochs:
        rows += compare_epochs(x, y, eps, eps_step, steps, bs, rounds=rounds, clock=clock_fn,
                               setting=f"{setting}, {len(x)} samples", how=how)
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="smoke run: 2 steps, 128 samples, 1 round, 4 step rounds")
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    add_timing_args(parser, rounds=7)
    parser.add_argument("--step-rounds", type=int, default=16, help="rounds of the (c) step comparison")
    parser.add_argument("--skip-epochs", action="store_true", help="run only the (c) step comparison")
    args = parser.parse_args()
    rows = run(args.quick, steps=args.steps, samples=args.samples, batch_size=args.batch_size, rounds=args.rounds,
               step_rounds=args.step_rounds, skip_epochs=args.skip_epochs, threads=args.threads, clock=args.clock)
    print(format_table(rows))


def compare_epochs(x: np.ndarray, y: np.ndarray, eps: float, eps_step: float, steps: int, bs: int, *, rounds: int,
                   clock: Callable[[], float], setting: str, how: str) -> list[dict[str, object]]:
    """(a) and (b): one training epoch per contender, rounds interleaved.

    Each contender is built (fresh classifier, attack, trainer) outside the timer; only ``fit`` for one epoch is
    timed.
    """

    def art_trades() -> Callable[[], None]:
        clf = make_classifier()
        pgd = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=eps_step, max_iter=steps, batch_size=bs,
                                       verbose=False)
        trainer = AdversarialTrainerTRADESPyTorch(clf, pgd, beta=6.0)
        return lambda: trainer.fit(x, y, nb_epochs=1, batch_size=bs)

    def ours(divergence: str) -> Callable[[], Callable[[], None]]:
        def build() -> Callable[[], None]:
            clf = make_classifier()
            trainer = FIRETrainer(clf, lam=6.0, divergence=divergence, eps=eps, eps_step=eps_step, max_iter=steps,
                                  verbose=False)
            return lambda: trainer.fit(x, y, nb_epochs=1, batch_size=bs)
        return build

    contenders = {"art_trades": art_trades, "fire": ours("fisher_rao"), "fire_kl": ours("kl")}
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for build in contenders.values():  # warm-up
        build()()
    for _ in range(rounds):
        for name, build in contenders.items():
            times[name].append(timed(build(), clock))
    med = {k: statistics.median(v) for k, v in times.items()}
    detail = f"{how}, median of {rounds} rounds; epoch s: " + ", ".join(f"{k} {v:.2f}" for k, v in med.items())
    return [
        row(f"(a) FIRETrainer epoch, {setting}", med["fire"] / med["art_trades"], "<= 0.75",
            "ART AdversarialTrainerTRADESPyTorch epoch (beta 6)", detail),
        row(f"(b) FIRETrainer(divergence='fisher_rao') epoch, {setting}", med["fire"] / med["fire_kl"], "<= 1.02",
            "FIRETrainer(divergence='kl') epoch", detail),
    ]


def compare_steps(x: np.ndarray, y: np.ndarray, eps: float, eps_step: float, steps: int, bs: int, *,
                  step_rounds: int, clock: Callable[[], float], setting: str, how: str) -> dict[str, object]:
    """(c): one engine step vs a minimal hand-written step with the same passes and divergence."""
    torch.manual_seed(0)
    model = timm.create_model("small_cnn", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    xb, yb = torch.tensor(x[:bs]), torch.tensor(y[:bs])
    attack = FRPGD(model, eps=eps, alpha=eps_step, steps=steps)
    loss = FIRELoss(lam=6.0)

    def engine_step() -> None:
        adversarial_step(model, xb, yb, loss=loss, attack=attack, optimizer=opt)

    def hand_step() -> None:
        model.eval()
        with torch.no_grad():
            nat = model(xb)
        adv = (xb + 0.001 * torch.randn_like(xb)).clamp(0, 1)
        for _ in range(steps):
            adv.requires_grad_(True)
            grad, = torch.autograd.grad(fisher_rao_squared(nat, model(adv)).sum(), adv)
            adv = torch.min(torch.max(adv.detach() + eps_step * grad.sign(), xb - eps), xb + eps).clamp(0, 1)
        model.train()
        opt.zero_grad()
        ln, la = model(xb), model(adv)
        (F.cross_entropy(ln, yb) + 6.0 * fisher_rao_squared(ln, la).mean()).backward()
        opt.step()

    step_times: dict[str, list[float]] = {"engine": [], "hand": []}
    for _ in range(2):
        engine_step()
        hand_step()
    for i in range(step_rounds):  # ABBA order, so neither side always runs first
        order = [("engine", engine_step), ("hand", hand_step)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            step_times[name].append(timed(fn, clock))
    e, h = statistics.median(step_times["engine"]), statistics.median(step_times["hand"])
    return row(f"(c) engine.adversarial_step (FIRE, lam 6), {setting}", e / h, "<= 1.05",
               "hand-written PGD-training step, same passes and divergence",
               f"{e * 1e3:.1f} ms vs {h * 1e3:.1f} ms; {how}, median of {step_rounds} ABBA rounds")


if __name__ == "__main__":
    main()

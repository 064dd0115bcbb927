"""Trainer speed, measured in one run on the same model, data, batch, eps and steps.

(a) FIRETrainer epoch time / ART ``AdversarialTrainerTRADESPyTorch`` epoch time (target <= 0.75);
(b) FIRETrainer(divergence="fisher_rao") / FIRETrainer(divergence="kl") epoch time (target <= 1.02);
(c) ``engine.adversarial_step`` / a minimal hand-written PGD-training step with the same forward and backward
    passes and the same Fisher-Rao divergence (target <= 1.05).

Model: the TRADES MNIST SmallCNN on 1x28x28 inputs (sklearn digits upsampled to 28x28, so nothing is downloaded),
batch 128. The paper's MNIST attack has 40 steps; on a CPU this benchmark uses ``--steps 10`` by default (pass
``--steps 40`` on a GPU). Rounds alternate between the contenders so that drift of a shared machine hits all alike.

Run: ``python benchmarks/bench_trainers.py [--steps 10] [--samples 512] [--rounds 3]``.
"""

from __future__ import annotations

import argparse
import statistics
import time
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


CLOCK: Callable[[], float] = time.perf_counter


def timed(fn: Callable[[], object]) -> float:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    start = CLOCK()
    fn()
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    return CLOCK() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--samples", type=int, default=512)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--step-rounds", type=int, default=16, help="rounds of the (c) step comparison")
    parser.add_argument("--skip-epochs", action="store_true", help="run only the (c) step comparison")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on CPU (1: CPU-time clock is exact)")
    parser.add_argument("--clock", choices=["auto", "wall", "cpu"], default="auto",
                        help="auto: process CPU time on a 1-thread CPU run (immune to other jobs), else wall time")
    args = parser.parse_args()
    global CLOCK
    if not torch.cuda.is_available():
        torch.set_num_threads(args.threads)
    use_cpu = args.clock == "cpu" or (args.clock == "auto" and not torch.cuda.is_available() and args.threads == 1)
    CLOCK = time.process_time if use_cpu else time.perf_counter
    eps, eps_step, steps, bs = 0.3, 0.75 / args.steps, args.steps, args.batch_size
    x, y = digits28(args.samples)
    print(f"SmallCNN 1x28x28, {len(x)} samples, batch {bs}, eps {eps}, {steps} steps, "
          f"threads {torch.get_num_threads()}, device {'cuda' if torch.cuda.is_available() else 'cpu'}, "
          f"clock: {'process CPU time' if use_cpu else 'wall time'}")

    # (c) runs first: after the ART epochs, the state of the process (allocator, caches) moved this ratio from
    # about 1.00 to as much as 1.09 here, so both step contenders are measured in the same fresh state.
    compare_steps(args, x, y, eps, eps_step, steps, bs)
    if not args.skip_epochs:
        compare_epochs(args, x, y, eps, eps_step, steps, bs)


def compare_epochs(args: argparse.Namespace, x: np.ndarray, y: np.ndarray, eps: float, eps_step: float, steps: int,
                   bs: int) -> None:
    """(a) and (b): one training epoch per contender, rounds interleaved."""

    def art_trades() -> None:
        clf = make_classifier()
        pgd = ProjectedGradientDescent(clf, norm=np.inf, eps=eps, eps_step=eps_step, max_iter=steps, batch_size=bs,
                                       verbose=False)
        AdversarialTrainerTRADESPyTorch(clf, pgd, beta=6.0).fit(x, y, nb_epochs=1, batch_size=bs)

    def ours(divergence: str) -> Callable[[], None]:
        def run() -> None:
            clf = make_classifier()
            FIRETrainer(clf, lam=6.0, divergence=divergence, eps=eps, eps_step=eps_step, max_iter=steps,
                        verbose=False).fit(x, y, nb_epochs=1, batch_size=bs)
        return run

    contenders = {"art_trades": art_trades, "fire": ours("fisher_rao"), "fire_kl": ours("kl")}
    times: dict[str, list[float]] = {k: [] for k in contenders}
    for fn in contenders.values():  # warm-up
        fn()
    for _ in range(args.rounds):
        for name, fn in contenders.items():
            times[name].append(timed(fn))
    med = {k: statistics.median(v) for k, v in times.items()}
    print(f"epoch seconds (median of {args.rounds}): " + ", ".join(f"{k} {v:.2f}" for k, v in med.items()))
    print(f"(a) FIRETrainer / ART AdversarialTrainerTRADESPyTorch = {med['fire'] / med['art_trades']:.3f} "
          "(target <= 0.75)")
    print(f"(b) FIRETrainer(fisher_rao) / FIRETrainer(kl)         = {med['fire'] / med['fire_kl']:.3f} "
          "(target <= 1.02)")


def compare_steps(args: argparse.Namespace, x: np.ndarray, y: np.ndarray, eps: float, eps_step: float, steps: int,
                  bs: int) -> None:
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
    for i in range(args.step_rounds):  # ABBA order, so neither side always runs first
        order = [("engine", engine_step), ("hand", hand_step)]
        for name, fn in order if i % 2 == 0 else order[::-1]:
            step_times[name].append(timed(fn))
    e, h = statistics.median(step_times["engine"]), statistics.median(step_times["hand"])
    print(f"(c) engine step / hand-written step = {e / h:.3f} (target <= 1.05; {e * 1e3:.1f} ms vs {h * 1e3:.1f} ms)")


if __name__ == "__main__":
    main()

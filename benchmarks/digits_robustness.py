"""CE vs TRADES vs FIRE on sklearn's embedded digits (eps = 0.1): clean and PGD-20 accuracy, one run.

Same model (digits_cnn), data, optimizer, epochs and seed for every method; the adversarial methods train with a
divergence-maximizing PGD of ``--steps`` steps through the ART trainers. Run:
``python benchmarks/digits_robustness.py [--epochs 10] [--steps 5]``.
"""

from __future__ import annotations

import argparse
import json
import time

import timm
import torch
import torchattacks
from art.estimators.classification import PyTorchClassifier
from torch import nn

import fire_plugin  # noqa: F401  (registers digits_cnn)
from fire_plugin.data import load_dataset
from fire_plugin.trainers import FIRETrainer


def train_and_eval(method: str, *, epochs: int, steps: int, eps: float, lam: float, seed: int = 0) -> dict:
    x, y = load_dataset("digits", split="train").tensors  # type: ignore[attr-defined]
    xt, yt = load_dataset("digits", split="test").tensors  # type: ignore[attr-defined]
    torch.manual_seed(seed)
    model = timm.create_model("digits_cnn", num_classes=10)
    clf = PyTorchClassifier(model, loss=nn.CrossEntropyLoss(), input_shape=(1, 8, 8), nb_classes=10,
                            optimizer=torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9),
                            clip_values=(0.0, 1.0))
    start = time.perf_counter()
    if method == "ce":
        clf.fit(x.numpy(), y.numpy(), batch_size=64, nb_epochs=epochs, verbose=False)
    else:
        divergence = {"trades": "kl", "fire": "fisher_rao"}[method]
        FIRETrainer(clf, lam=lam, divergence=divergence, eps=eps, eps_step=2.5 * eps / steps, max_iter=steps,
                    verbose=False).fit(x.numpy(), y.numpy(), batch_size=64, nb_epochs=epochs)
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        clean = float((model(xt).argmax(1) == yt).float().mean())
    torch.manual_seed(0)
    adv = torchattacks.PGD(model, eps=eps, alpha=eps / 4, steps=20, random_start=True)(xt, yt)
    with torch.no_grad():
        robust = float((model(adv).argmax(1) == yt).float().mean())
    return {"method": method, "clean": clean, "pgd20": robust, "train_seconds": seconds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--steps", type=int, default=5)
    parser.add_argument("--eps", type=float, default=0.1)
    parser.add_argument("--lam", type=float, default=6.0)
    args = parser.parse_args()
    rows = [train_and_eval(m, epochs=args.epochs, steps=args.steps, eps=args.eps, lam=args.lam)
            for m in ("ce", "trades", "fire")]
    for r in rows:
        print(f"{r['method']:>6}: clean {r['clean']:.3f}  PGD-20 {r['pgd20']:.3f}  ({r['train_seconds']:.1f} s)")
    print(json.dumps(rows))


if __name__ == "__main__":
    main()

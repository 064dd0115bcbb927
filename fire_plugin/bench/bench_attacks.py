"""FRPGD against torchattacks.PGD (and TPGD) on TRADES' MNIST SmallCNN: time ratio and Fisher-Rao distance reached.

Peer: ``torchattacks.PGD`` with the same eps, alpha and steps (the paper's MNIST setting: 40 steps of 0.01 at
eps 0.3), batch 128, 1x28x28 inputs, timed in interleaved rounds of the same run. Target: FRPGD / PGD <= 1.05.

MNIST cannot be downloaded here, so the SmallCNN is first trained for a few hundred steps on sklearn's 8x8 digits
upsampled to 28x28 (a random-weight network makes the distance comparison meaningless). The FRD is the mean
Fisher-Rao distance ``2 * arccos(sum sqrt(p * q))`` between the clean and the adversarial predictions on held-out
digits; FRPGD maximizes it, PGD maximizes the cross-entropy of the label, TPGD the KL divergence.

Run: ``python -m fire_plugin.bench.bench_attacks`` (about 2 to 3 minutes on 2 CPU cores; ``--quick`` for a smoke run);
``run(quick)`` returns the rows (``fire-plugin bench``).
"""

from __future__ import annotations

import argparse
import functools
from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
import torch.nn.functional as F
import torchattacks
from torch import nn

from fire_plugin.attacks import FRPGD
from fire_plugin.bench._timing import add_timing_args, choose_clock, format_table, interleaved_times, row
from fire_plugin.distances import fisher_rao


def small_cnn() -> nn.Module:
    """TRADES' SmallCNN from fire_plugin.models (timm registry), or the same layers defined here."""
    try:
        import timm

        import fire_plugin.models  # noqa: F401  (registers the architectures with timm)

        return timm.create_model("small_cnn", num_classes=10)
    except (ImportError, RuntimeError):
        pass
    layers = [
        nn.Conv2d(1, 32, 3), nn.ReLU(), nn.Conv2d(32, 32, 3), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(32, 64, 3), nn.ReLU(), nn.Conv2d(64, 64, 3), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
        nn.Linear(64 * 4 * 4, 200), nn.ReLU(), nn.Dropout(0.5), nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, 10),
    ]
    return nn.Sequential(*layers)


def digits_28(device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """sklearn's digits as (N, 1, 28, 28) images in [0, 1] (bilinear upsampling), shuffled with a fixed seed."""
    from sklearn.datasets import load_digits

    bunch = load_digits()
    x = torch.as_tensor(bunch.images, dtype=torch.float32).unsqueeze(1) / 16.0  # (N, 1, 8, 8)
    x = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False).clamp(0, 1)  # (N, 1, 28, 28)
    y = torch.as_tensor(bunch.target, dtype=torch.long)
    perm = torch.randperm(len(y), generator=torch.Generator().manual_seed(0))
    return x[perm].to(device), y[perm].to(device)


def train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, steps: int, batch_size: int = 128) -> None:
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    gen = torch.Generator().manual_seed(0)
    model.train()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch_size,), generator=gen).to(x.device)
        loss = F.cross_entropy(model(x[idx]), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    model.eval()


def run(quick: bool = False, *, eps: float = 0.3, alpha: float = 0.01, steps: int = 40, batch_size: int = 128,
        train_steps: int = 300, n_eval: int = 256, rounds: int = 5, repeats: int = 1, threads: int = 1,
        clock: str = "auto") -> list[dict[str, object]]:
    """Rows of the perf-suite contract: FRPGD time / torchattacks.PGD (and TPGD), and the FRD each reaches.

    ``quick``: 5 attack steps, 50 training steps, 128 held-out images, 2 rounds.
    """
    if quick:
        steps, train_steps, n_eval, rounds, repeats = 5, 50, 128, 2, 1
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    clock_fn, clock_label = choose_clock(clock, threads=threads, device=device.type)
    torch.manual_seed(0)
    x, y = digits_28(device)
    x_train, y_train = x[:1297], y[:1297]
    x_test, y_test = x[1297 : 1297 + n_eval], y[1297 : 1297 + n_eval]
    model = small_cnn().to(device)
    train(model, x_train, y_train, steps=train_steps)
    with torch.no_grad():
        clean_acc = (model(x_test).argmax(1) == y_test).float().mean().item()
    setting = f"SmallCNN, batch {batch_size}, eps {eps}, alpha {alpha}, {steps} steps"
    how = (f"{device.type}, {torch.get_num_threads()} thread(s), {clock_label} clock, median of {rounds} rounds; "
           f"SmallCNN trained {train_steps} steps, held-out clean accuracy {clean_acc:.3f}")

    kw: dict[str, Any] = {"eps": eps, "alpha": alpha, "steps": steps}
    attacks = OrderedDict(
        [
            ("FRPGD", FRPGD(model, **kw)),
            ("PGD", torchattacks.PGD(model, **kw)),
            ("TPGD", torchattacks.TPGD(model, **kw)),
        ]
    )

    # --- time, FRPGD relative to PGD (and TPGD), interleaved rounds
    xb, yb = x_test[:batch_size], y_test[:batch_size]
    fns: dict[str, Callable[[], object]] = {name: functools.partial(atk, xb, yb) for name, atk in attacks.items()}
    times = interleaved_times(fns, rounds=rounds, repeats=repeats, device=str(device), clock=clock_fn)
    rows = [
        row(f"FRPGD attack time, {setting}", times["FRPGD"] / times["PGD"], "<= 1.05", "torchattacks.PGD",
            f"{times['FRPGD'] * 1e3:.0f} ms vs {times['PGD'] * 1e3:.0f} ms per batch; {how}"),
        row(f"FRPGD attack time, {setting}", times["FRPGD"] / times["TPGD"], "", "torchattacks.TPGD",
            f"{times['FRPGD'] * 1e3:.0f} ms vs {times['TPGD'] * 1e3:.0f} ms per batch; {how}"),
    ]

    # --- Fisher-Rao distance reached on the held-out digits
    with torch.no_grad():
        logits_nat = model(x_test)
        pred = logits_nat.argmax(1, keepdim=True)
        p_pred = logits_nat.softmax(1).gather(1, pred).squeeze(1)
    frd: dict[str, float] = {}
    robust: dict[str, float] = {}
    surer: dict[str, float] = {}
    for name, atk in attacks.items():
        torch.manual_seed(0)
        adv = torch.cat([atk(x_test[i : i + batch_size], y_test[i : i + batch_size])
                         for i in range(0, len(x_test), batch_size)])
        with torch.no_grad():
            logits_adv = model(adv)
        frd[name] = fisher_rao(logits_nat, logits_adv).mean().item()
        robust[name] = (logits_adv.argmax(1) == y_test).float().mean().item()
        # samples driven to a larger probability of the clean prediction: a label-free ascent from a tiny random
        # start goes either way along the most sensitive direction, and "more confident" saturates quickly
        surer[name] = (logits_adv.softmax(1).gather(1, pred).squeeze(1) > p_pred).float().mean().item()
    for peer in ("PGD", "TPGD"):
        rows.append(row(
            f"mean Fisher-Rao distance reached by FRPGD, {len(x_test)} held-out digits, {steps} steps",
            frd["FRPGD"] / frd[peer], "", f"torchattacks.{peer}",
            f"FRD {frd['FRPGD']:.3f} vs {frd[peer]:.3f}; robust accuracy {robust['FRPGD']:.3f} vs {robust[peer]:.3f}; "
            f"more confident than clean {surer['FRPGD']:.3f} vs {surer[peer]:.3f}"))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--eps", type=float, default=0.3)
    parser.add_argument("--alpha", type=float, default=0.01)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--train-steps", type=int, default=300)
    parser.add_argument("--n-eval", type=int, default=256, help="held-out images for the FRD comparison")
    add_timing_args(parser, rounds=5, repeats=1)
    parser.add_argument("--quick", action="store_true", help="smoke run: 5 steps, 50 training steps, 2 rounds")
    args = parser.parse_args()
    rows = run(args.quick, eps=args.eps, alpha=args.alpha, steps=args.steps, batch_size=args.batch_size,
               train_steps=args.train_steps, n_eval=args.n_eval, rounds=args.rounds, repeats=args.repeats,
               threads=args.threads, clock=args.clock)
    print(format_table(rows))


if __name__ == "__main__":
    main()

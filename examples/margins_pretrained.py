"""Fisher-Rao margins and class shielding: a pretrained CIFAR-10 ResNet-18, and digits models trained with CE vs FIRE.

Part 1 traces natural-gradient paths (``fire_plugin.margins``) from CIFAR-10 inputs toward every other class on the
ResNet-18 that ships inside pyautoattack (``load_pretrained("autoattack-resnet18")``, offline). It uses the CIFAR-10
test images when ``--data-dir`` holds them (``cifar-10-batches-py``); otherwise it is skipped with a note, unless
``--synthetic always`` asks for a few smooth random CIFAR-shaped inputs labelled with the model's own predictions
(every output then says SYNTHETIC: such inputs are not CIFAR-10 data, their table says nothing about CIFAR-10
classes).

Part 2 trains two ``digits_cnn`` models on sklearn's embedded 8x8 digits with the same recipe, one with plain
cross-entropy and one with FIRE (``FIRELoss(lam=3.0)``, FRPGD with eps 0.1, 10 steps of eps / 4): SGD, lr 0.05,
momentum 0.9, cosine decay, ``--epochs`` epochs. It traces the margins of the test digits under both and prints the
two shielding tables: does FIRE raise Fisher-Rao margins, does it change which classes shield?

Run: ``python examples/margins_pretrained.py`` (a few minutes on one CPU core; ``--cifar-inputs 2 --epochs 3
--digits-inputs 40`` for a quick look). Files go to ``--out`` (default ``runs/margins_example``).
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import numpy as np
import timm
import torch
from torch.utils.data import DataLoader

import fire_plugin  # noqa: F401  (registers digits_cnn with timm)
from fire_plugin.attacks import FRPGD
from fire_plugin.data import DATASETS, load_dataset
from fire_plugin.engine import AdversarialObjective, CrossEntropyObjective, fit, lr_scheduler
from fire_plugin.losses import FIRELoss
from fire_plugin.margins import arc_margins
from fire_plugin.margins.report import CLASS_NAMES, margin_inputs, run_margins
from fire_plugin.plots import plot_class_margins, plot_margin_histograms
from fire_plugin.pretrained import load_pretrained


def part_cifar(args: argparse.Namespace, out: Path) -> None:
    model = load_pretrained("autoattack-resnet18")
    try:
        x, y, what = margin_inputs("cifar10", model=model, n_inputs=args.cifar_inputs, data_dir=args.data_dir,
                                   synthetic=args.synthetic)
    except FileNotFoundError as err:
        print(f"\n=== CIFAR-10 ResNet-18: skipped ({err})")
        return
    print(f"\n=== CIFAR-10 ResNet-18 (pyautoattack's model_test.pt) on {what}")
    start = time.process_time()
    run = run_margins(model, x, y, out / "resnet18", class_names=CLASS_NAMES["cifar10"], n_inputs=None,
                      inputs_note=what, step=args.step)
    print(f"traced {run['summary']['n_paths']} paths in {time.process_time() - start:.1f} s CPU; "
          f"files in {out / 'resnet18'}")
    print(run["report"].to_markdown())


def train_digits(method: str, epochs: int, seed: int = 0) -> torch.nn.Module:
    info = DATASETS["digits"]
    torch.manual_seed(seed)
    model = timm.create_model("digits_cnn", num_classes=10, mean=info.mean, std=info.std)
    loader = DataLoader(load_dataset("digits", split="train"), batch_size=128, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    if method == "fire":
        objective = AdversarialObjective(FIRELoss(lam=3.0), FRPGD(model, eps=0.1, alpha=0.025, steps=10))
    else:
        objective = CrossEntropyObjective()
    fit(model, loader, epochs=epochs, objective=objective, optimizer=optimizer,
        scheduler=lr_scheduler(optimizer, "cosine", epochs), verbose=False)
    return model.eval()


def part_digits(args: argparse.Namespace, out: Path) -> None:
    x, y = load_dataset("digits", split="test").tensors  # type: ignore[attr-defined]
    results, reports = {}, {}
    for method in ("ce", "fire"):
        start = time.process_time()
        model = train_digits(method, args.epochs)
        with torch.no_grad():
            acc = (model(x).argmax(1) == y).double().mean().item()
        train_s = time.process_time() - start
        start = time.process_time()
        run = run_margins(model, x, y, out / f"digits_{method}", class_names=CLASS_NAMES["digits"],
                          n_inputs=args.digits_inputs, inputs_note=f"digits test images 0..{args.digits_inputs - 1}",
                          step=args.step)
        results[method], reports[method] = run["result"], run["report"]
        result = run["result"]
        with torch.no_grad():
            probs = torch.softmax(model(x[: result.n_inputs]).double(), dim=1)
        arc, arc_first = arc_margins(probs[torch.as_tensor(result.index)], result.source, result.target)
        done = result.flipped & np.isfinite(arc)
        deviation = np.abs(result.fr_length[done] / arc[done] - 1)
        s = run["summary"]
        print(f"\n=== digits_cnn trained with {method.upper()} ({args.epochs} epochs, {train_s:.0f} s CPU; clean "
              f"test accuracy {acc:.3f}); {s['n_flipped']} of {s['n_traced']} paths flipped, {s['n_shielded']} "
              f"shielded; per-input FR margin mean {s['input_margin_mean']:.3f}, median "
              f"{s['input_margin_median']:.3f}; traced in {time.process_time() - start:.1f} s CPU")
        print(f"confidence alone (arc_margins, from p(x)): median |traced / predicted - 1| "
              f"{np.median(deviation):.4f}, correlation {np.corrcoef(result.fr_length[done], arc[done])[0, 1]:.3f}, "
              f"first class predicted on {(arc_first == result.first_class)[done].mean():.1%} of the paths; "
              f"median max-probability {probs.max(1).values.median().item():.4f}")
        print(run["report"].to_markdown())
    ce, fire = results["ce"].input_margins(), results["fire"].input_margins()
    both = np.isfinite(ce) & np.isfinite(fire) & (ce > 0) & (fire > 0)
    print(f"inputs correct under both: {int(both.sum())}; FIRE margin > CE margin on {int((fire > ce)[both].sum())}; "
          f"median ratio FIRE / CE {np.median(fire[both] / ce[both]):.3f}")
    plot_class_margins(reports).savefig(out / "digits_class_margins_ce_vs_fire.png", dpi=120)
    plot_margin_histograms(results).savefig(out / "digits_margin_histograms_ce_vs_fire.png", dpi=120)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default="data", help="folder holding cifar-10-batches-py (optional)")
    parser.add_argument("--cifar-inputs", type=int, default=4, help="CIFAR-10 test images to trace")
    parser.add_argument("--digits-inputs", type=int, default=450, help="test digits to trace (450 = all)")
    parser.add_argument("--epochs", type=int, default=15, help="training epochs of the digits models")
    parser.add_argument("--step", type=float, default=None,
                        help="step length in the damped Fisher metric (default: the library's)")
    parser.add_argument("--synthetic", default="never", choices=["never", "always"],
                        help="part 1 on synthetic CIFAR-shaped inputs when the test images are not on disk")
    parser.add_argument("--skip-cifar", action="store_true", help="skip part 1 (the ResNet-18)")
    parser.add_argument("--skip-digits", action="store_true", help="skip part 2 (CE vs FIRE digits models)")
    parser.add_argument("--out", default="runs/margins_example", help="output folder")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    torch.set_num_threads(1)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    if not args.skip_cifar:
        part_cifar(args, out)
    if not args.skip_digits:
        part_digits(args, out)


if __name__ == "__main__":
    main()

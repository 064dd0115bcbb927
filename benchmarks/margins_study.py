"""The convergence study of docs/margins.md: CE, TRADES and FIRE digits models, both tracing modes.

Trains ``lenet_pi`` on sklearn's embedded digits with the demo's recipe (``fire_plugin.experiments.DigitsRecipe``:
30 epochs, SGD lr 0.05 cosine, eps 0.1; CE, TRADES beta 6, FIRE at its matched weight) through
``experiments.run_one`` (resumable; a short evaluation on 60 test images), then runs
``fire_plugin.margins.convergence_study`` on the first ``--n-inputs`` test digits in ``"converged"`` and ``"paper"``
mode over steps x dampings, and writes per model and mode ``<method>_<mode>.json/.md/.png`` plus
``summary.md`` (every table) and ``convergence_digits.png`` (all models) under ``--out``.

Paper mode runs with the exact solver here: it returns the solution conjugate gradients converge to (the
paper's solver, ``solver="cg"``), at a fraction of the cost.

Run: ``python benchmarks/margins_study.py --out runs/margins_study`` (about 20 minutes on one core; ``--methods
ce --n-inputs 10`` for a quick look).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import timm
import torch
from matplotlib.figure import Figure

import fire_plugin.models  # noqa: F401  (registers lenet_pi with timm)
from fire_plugin.data import load_dataset
from fire_plugin.experiments import DigitsRecipe, EvalSpec, run_one
from fire_plugin.margins import convergence_study

STEPS = {"converged": (1.0, 0.5, 0.2, 0.1, 0.05, 0.02, 0.01), "paper": (1.0, 0.5, 0.2, 0.1, 0.05, 0.02)}
DAMPINGS = (1e-3, 1e-1)


def train(method: str, out: Path) -> torch.nn.Module:
    spec = EvalSpec(n_eval=60, aa_attacks=("apgd-ce",), aa_standard_n=0, margin_n=0)
    run_one(method, out=out / method, recipe=DigitsRecipe(), spec=spec, verbose=False)
    net = timm.create_model("lenet_pi", num_classes=10, **DigitsRecipe().model_kwargs())
    net.load_state_dict(torch.load(out / method / "model.pt", weights_only=True))
    return net.eval()


def figure(studies: dict[str, dict], path: Path) -> None:
    fig = Figure(figsize=(10.0, 6.4), layout="constrained")
    axes = fig.subplots(2, 2)
    for col, mode in enumerate(("converged", "paper")):
        for label, by_mode in studies.items():
            rows = by_mode.get(mode, [])
            for damping, style in zip(DAMPINGS, ("-", "--"), strict=True):
                mine = [r for r in rows if r["damping"] == damping]
                xs = [r["step"] for r in mine]
                for row, key in ((0, "shielding_pct"), (1, "mean_margin")):
                    ys = [np.nan if r[key] is None else r[key] for r in mine]
                    axes[row, col].plot(xs, ys, style, marker="o", ms=3, label=f"{label}, damping {damping:g}")
        axes[0, col].set_title(f"{mode} mode", fontsize=10)
        axes[0, col].set_ylabel("shielding % of flipped paths")
        axes[1, col].set_ylabel("mean margin" + (" (steps x step)" if mode == "paper" else " (FR length)"))
        for row in (0, 1):
            axes[row, col].set_xscale("log")
            axes[row, col].set_xlabel("step (damped-metric length)")
            axes[row, col].grid(alpha=0.3, which="both")
    axes[0, 0].legend(fontsize=7)
    fig.suptitle("digits (lenet_pi, demo recipe): shielding and margins against the step", fontsize=11)
    fig.savefig(path, dpi=110)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", default="runs/margins_study", help="output folder")
    parser.add_argument("--methods", default="ce,trades,fire", help="comma-separated methods")
    parser.add_argument("--modes", default="converged,paper", help="comma-separated modes")
    parser.add_argument("--n-inputs", type=int, default=60, help="test digits traced (x 9 targets)")
    parser.add_argument("--threads", type=int, default=1, help="torch threads")
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    x, y = load_dataset("digits", split="test").tensors  # type: ignore[attr-defined]
    x, y = x[: args.n_inputs], y[: args.n_inputs]
    studies: dict[str, dict] = {}
    summary = []
    for method in args.methods.split(","):
        net = train(method, out)
        for mode in args.modes.split(","):
            start = time.perf_counter()
            note = f"digits test images 0..{len(x) - 1}, lenet_pi trained with {method} (demo recipe)"
            study = convergence_study(net, x, y, steps=STEPS[mode], dampings=DAMPINGS, mode=mode, verbose=False,
                                      inputs_note=note, **({"solver": "exact"} if mode == "paper" else {}))
            study.to_json(out / f"{method}_{mode}.json")
            (out / f"{method}_{mode}.md").write_text(study.to_markdown())
            study.plot().savefig(out / f"{method}_{mode}.png", dpi=110)
            studies.setdefault(method, {})[mode] = study.rows
            summary.append(f"## {method}, {mode} mode\n\n{study.to_markdown()}")
            print(f"{method} {mode}: {time.perf_counter() - start:.0f} s", file=sys.stderr)
    (out / "summary.md").write_text("\n".join(summary))
    (out / "studies.json").write_text(json.dumps(studies, indent=1))
    figure(studies, out / "convergence_digits.png")
    print(f"written to {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Is a stochastic partial-isometry penalty as good as the exact one? Five seeds on digits, paired by seed.

Every run trains ``lenet_pi`` on sklearn's digits with the project's isometry recipe (the demo's:
:class:`fire_plugin.experiments.DigitsRecipe`, i.e. 30 epochs, batch 64, SGD 0.05 with momentum 0.9, weight decay
5e-4, cosine decay, epsilon = delta_m(10), eta 0.02 -> 0.06) with one penalty estimator, then evaluates it on the
450 test digits: clean accuracy, PGD-Linf with 40 steps of 0.01 (the paper's attack, random start) at eps 0.05,
0.1 and 0.2, and AutoAttack's APGD-CE + APGD-T (standard settings) at eps 0.1. Training seconds are the process
CPU time of ``engine.fit`` with one torch thread (the wall time is recorded too; the machine is shared).

The seed fixes the initial weights and the loader's shuffling, so two estimators with the same seed start from the
same model and see the same batches: the table reports each estimator's paired differences against exact (mean,
sample standard deviation, min, max over seeds).

    python benchmarks/isometry_parity.py run --out runs/isometry_parity              # every variant, seeds 0-4
    python benchmarks/isometry_parity.py run --out runs/isometry_parity --variants exact,hutchinson-1
    python benchmarks/isometry_parity.py table --out runs/isometry_parity            # parity.json + parity.md

Each run writes ``<out>/<variant>/seed<k>/result.json`` and checkpoints; a finished run is read back, an
interrupted one resumes from its last epoch. Not part of CI (30 runs: about 30 minutes of one CPU core).
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

VARIANTS: dict[str, tuple[str, int]] = {
    "exact": ("exact", 1),
    "hutchinson-1": ("hutchinson", 1),
    "hutchinson-2": ("hutchinson", 2),
    "hutchinson-4": ("hutchinson", 4),
    "orthogonal-1": ("orthogonal", 1),
    "deflated-2": ("deflated", 2),
}
"""label -> (estimator, n_probes) of the table's rows."""
SEEDS = (0, 1, 2, 3, 4)
PGD_EPS = (0.05, 0.1, 0.2)
PGD_STEPS, PGD_ALPHA = 40, 0.01
AA_EPS = 0.1
AA_ATTACKS = ("apgd-ce", "apgd-t")
METRICS = ("clean", "pgd_0.05", "pgd_0.1", "pgd_0.2", "aa_0.1", "train_cpu_seconds")


def run_variant(label: str, seed: int, out: Path, *, verbose: bool = False) -> dict[str, Any]:
    """Train and evaluate one (variant, seed); resumable; returns the result dict (also in ``result.json``)."""
    from torch.utils.data import DataLoader

    from fire_plugin.data import load_dataset
    from fire_plugin.engine import fit, lr_scheduler
    from fire_plugin.evaluation import evaluate
    from fire_plugin.experiments import DigitsRecipe, _create_model, build_objective

    estimator, n_probes = VARIANTS[label]
    recipe = DigitsRecipe()
    run_dir = out / label / f"seed{seed}"
    run_dir.mkdir(parents=True, exist_ok=True)
    config = json.loads(json.dumps({"variant": label, "estimator": estimator, "n_probes": n_probes, "seed": seed,
                                    "recipe": recipe.__dict__, "pgd": [PGD_EPS, PGD_STEPS, PGD_ALPHA],
                                    "aa": [AA_EPS, AA_ATTACKS]}))
    path = run_dir / "result.json"
    if path.exists():
        done = json.loads(path.read_text())
        if done.get("config") == config:
            return done  # type: ignore[no-any-return]

    torch.set_num_threads(1)
    torch.manual_seed(seed)
    net = _create_model(recipe.model, "digits")
    train_set = load_dataset("digits", split="train")
    x_test, y_test = load_dataset("digits", split="test").tensors  # type: ignore[attr-defined]
    loader = DataLoader(train_set, batch_size=recipe.batch_size, shuffle=True,
                        generator=torch.Generator().manual_seed(seed))
    optimizer = torch.optim.SGD(net.parameters(), lr=recipe.lr, momentum=recipe.momentum,
                                weight_decay=recipe.weight_decay)
    objective = build_objective("isometry", net, isometry_epsilon=recipe.isometry_epsilon,
                                eta_min=recipe.isometry_eta[0], eta_max=recipe.isometry_eta[1],
                                estimator=estimator, n_probes=n_probes)
    ckpt = run_dir / "checkpoints"
    resumed = ckpt.is_dir() and any(ckpt.iterdir())  # then the times below cover the remaining epochs only
    cpu0, wall0 = time.process_time(), time.perf_counter()
    history = fit(net, loader, epochs=recipe.epochs, objective=objective, optimizer=optimizer,
                  scheduler=lr_scheduler(optimizer, recipe.schedule, recipe.epochs),
                  checkpoint_dir=ckpt, config=config, verbose=verbose)
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    net.eval()
    metrics: dict[str, Any] = {}
    for eps in PGD_EPS:
        r = evaluate(net, x_test, y_test, eps=eps, attacks=("clean", "pgd"), pgd_steps=PGD_STEPS,
                     eps_step=PGD_ALPHA, seed=seed, verbose=verbose)
        metrics["clean"] = r.clean_acc
        metrics[f"pgd_{eps:g}"] = r.pgd_acc
    r = evaluate(net, x_test, y_test, eps=AA_EPS, attacks=("clean", "autoattack"), autoattack_attacks=AA_ATTACKS,
                 seed=seed, verbose=verbose)
    metrics[f"aa_{AA_EPS:g}"] = r.autoattack_acc
    metrics["train_cpu_seconds"] = cpu
    payload = {"config": config, "metrics": metrics, "train_wall_seconds": wall,
               "engine_seconds": float(sum(h["seconds"] for h in history)), "resumed": resumed,
               "n_test": int(len(y_test)), "final_loss": history[-1]["loss"] if history else None,
               "diverged": any(h.get("diverged") for h in history)}
    path.write_text(json.dumps(payload, indent=2))
    return payload


def _stats(values: list[float]) -> dict[str, float | None]:
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()) if a.size else None, "std": float(a.std(ddof=1)) if a.size > 1 else None,
            "min": float(a.min()) if a.size else None, "max": float(a.max()) if a.size else None,
            "n": int(a.size)}


def summarize(out: Path, labels: list[str] | None = None) -> dict[str, Any]:
    """Per-variant mean/std of every metric and paired (by seed) differences against ``exact``."""
    labels = labels or list(VARIANTS)
    results: dict[str, dict[int, dict[str, Any]]] = {}
    for label in labels:
        for path in sorted((out / label).glob("seed*/result.json")):
            r = json.loads(path.read_text())
            results.setdefault(label, {})[int(r["config"]["seed"])] = r["metrics"]
    summary: dict[str, Any] = {"variants": {}, "paired_vs_exact": {}}
    exact = results.get("exact", {})
    for label, by_seed in results.items():
        summary["variants"][label] = {"estimator": VARIANTS[label][0], "n_probes": VARIANTS[label][1],
                                      "seeds": sorted(by_seed),
                                      **{k: _stats([m[k] for m in by_seed.values()]) for k in METRICS}}
        if label != "exact":
            seeds = [s for s in by_seed if s in exact]
            diffs = {k: _stats([by_seed[s][k] - exact[s][k] for s in seeds])
                     for k in METRICS if k != "train_cpu_seconds"}
            diffs["train_time_ratio"] = _stats([by_seed[s]["train_cpu_seconds"] / exact[s]["train_cpu_seconds"]
                                                for s in seeds])
            summary["paired_vs_exact"][label] = {"seeds": seeds, **diffs}
    return summary


def _pm(cell: dict[str, Any], scale: float = 100.0, digits: int = 1, sign: bool = False) -> str:
    if cell.get("mean") is None:
        return "-"
    fmt = f"{{:{'+' if sign else ''}.{digits}f}}"
    text = fmt.format(scale * cell["mean"])
    return text + (f" ± {scale * cell['std']:.{digits}f}" if cell.get("std") is not None else "")


def markdown(summary: dict[str, Any]) -> str:
    """The two tables: mean ± sd per estimator, and paired differences against exact."""
    cols = ("clean", "pgd_0.05", "pgd_0.1", "pgd_0.2", "aa_0.1")
    head = ("| estimator | seeds | clean | PGD-40 eps 0.05 | PGD-40 eps 0.1 | PGD-40 eps 0.2 | "
            "APGD-CE + APGD-T eps 0.1 |")
    lines = [head + " train CPU s |", "|---|---|---|---|---|---|---|---|"]
    for label, v in summary["variants"].items():
        cells = [_pm(v[c]) for c in cols] + [_pm(v["train_cpu_seconds"], scale=1.0, digits=1)]
        lines.append(f"| {label} | {len(v['seeds'])} | " + " | ".join(cells) + " |")
    lines += ["", "| estimator - exact, paired by seed | clean | PGD eps 0.05 | PGD eps 0.1 | PGD eps 0.2 | "
              "APGD eps 0.1 | train time / exact |", "|---|---|---|---|---|---|---|"]
    for label, d in summary["paired_vs_exact"].items():
        cells = [_pm(d[c], sign=True) for c in cols] + [_pm(d["train_time_ratio"], scale=1.0, digits=2)]
        lines.append(f"| {label} ({len(d['seeds'])} seeds) | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("command", choices=["run", "table"])
    parser.add_argument("--out", type=Path, default=Path("runs/isometry_parity"))
    parser.add_argument("--variants", default=",".join(VARIANTS), help=f"comma-separated of {list(VARIANTS)}")
    parser.add_argument("--seeds", default=",".join(map(str, SEEDS)))
    args = parser.parse_args()
    labels = [v for v in args.variants.split(",") if v]
    unknown = [v for v in labels if v not in VARIANTS]
    if unknown:
        parser.error(f"--variants: unknown {unknown}; allowed: {list(VARIANTS)}")
    if args.command == "run":
        for label in labels:
            for seed in (int(s) for s in args.seeds.split(",")):
                t0 = time.perf_counter()
                r = run_variant(label, seed, args.out)
                m = r["metrics"]
                print(f"{label:<14} seed {seed}: clean {m['clean']:.3f} pgd0.1 {m['pgd_0.1']:.3f} "
                      f"aa {m['aa_0.1']:.3f} train {m['train_cpu_seconds']:.1f} s cpu "
                      f"({time.perf_counter() - t0:.0f} s wall for this call)", flush=True)
    summary = summarize(args.out, labels)
    (args.out / "parity.json").write_text(json.dumps(summary, indent=2))
    text = markdown(summary)
    (args.out / "parity.md").write_text(text + "\n")
    print(text)
    assert all(math.isfinite(v["clean"]["mean"]) for v in summary["variants"].values())


if __name__ == "__main__":
    main()

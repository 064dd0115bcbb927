"""The honest answer on digits: a weight sweep and a 5-seed table of every method (not in CI; resumable per run).

    python benchmarks/digits_table.py sweep --out runs/digits_sweep     # FIRE lam sweep beside TRADES / Hellinger
    python benchmarks/digits_table.py table --out runs/digits_table     # 5 seeds x 6 methods, standard AutoAttack

Each run is `fire_plugin.experiments.run_one` (train + evaluate, resumable); rerunning continues where it stopped.
Results: one JSON per run under --out, plus summary.json and a markdown table printed at the end.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from fire_plugin.experiments import (
    DEFAULT_WEIGHTS,
    DigitsRecipe,
    EvalSpec,
    paired_differences,
    run_many,
    run_one,
    summarize,
)
from fire_plugin.runfolder import atomic_write_text, write_environment

TABLE_METHODS = ("ce", "madry", "trades", "hellinger", "fire", "isometry")


def _fmt(cell: dict | None, scale: float = 100.0) -> str:
    if not cell or cell.get("mean") is None:
        return "-"
    std = cell.get("std")
    return f"{scale * cell['mean']:.1f}" + (f" +- {scale * std:.1f}" if std is not None else "")


def sweep(out: Path, models: list[str], lams: list[float], epochs: int) -> dict:
    spec = EvalSpec(aa_standard_n=0, margin_n=0)
    runs: list[tuple[str, str, float]] = []
    for model in models:
        runs += [(model, "ce", 0.0), (model, "trades", 6.0)]
        runs += [(model, "fire", lam) for lam in lams]
        runs += [(model, "hellinger", 4 * lam) for lam in (1.5, 3.0)]
    rows = []
    for model, method, weight in tqdm(runs, desc="sweep"):
        recipe = DigitsRecipe(model=model, epochs=epochs)
        r = run_one(method, weight=weight, out=out / model / f"{method}_{weight:g}", recipe=recipe, spec=spec,
                    verbose=False)
        ev = r["eval"]
        rows.append({"model": model, "method": method, "weight": weight, "clean": ev["clean_acc"],
                     "pgd": ev["pgd_acc"], "frpgd": ev["frpgd_acc"], "aa": ev["autoattack_acc"],
                     "aa_label": r["aa_label"], "train_seconds": r["train_seconds"], "diverged": r["diverged"]})
    print(f"{'model':<11}{'method':<11}{'weight':>7}{'clean':>8}{'PGD-20':>8}{'FRPGD':>8}{'AA*':>8}")
    for row in rows:
        print(f"{row['model']:<11}{row['method']:<11}{row['weight']:>7g}{100 * row['clean']:>8.1f}"
              f"{100 * row['pgd']:>8.1f}{100 * row['frpgd']:>8.1f}{100 * row['aa']:>8.1f}")
    print("AA* =", rows[0]["aa_label"] if rows else "")
    return {"rows": rows}


def table(out: Path, seeds: int, epochs: int, model: str, standard_full: bool, workers: int) -> dict:
    spec = EvalSpec(aa_attacks=None if standard_full else ("apgd-ce", "apgd-t"),
                    aa_standard_n=None if standard_full else 100, margin_n=30)
    recipe = DigitsRecipe(model=model, epochs=epochs)
    jobs = [{"method": m, "out": str(out / m / f"seed{s}"), "weight": None, "seed": s, "recipe": recipe,
             "spec": spec} for s in range(seeds) for m in TABLE_METHODS]
    results: dict[str, list[dict]] = {m: [] for m in TABLE_METHODS}
    for job, result in zip(jobs, run_many(jobs, workers, verbose=True), strict=True):
        results[job["method"]].append(result)
    summary = {m: summarize(rs) for m, rs in results.items()}
    diff = paired_differences(results["fire"], results["trades"])
    label = results["fire"][0]["aa_label"]
    print(f"| method | weight | clean | PGD-20 | {label} | Avg. | mean FR margin | train s |")
    print("|---|---|---|---|---|---|---|---|")
    for m in TABLE_METHODS:
        s = summary[m]
        print(f"| {m} | {DEFAULT_WEIGHTS[m]:g} | {_fmt(s['clean'])} | {_fmt(s['pgd'])} | {_fmt(s['aa'])} | "
              f"{_fmt(s['avg'])} | {_fmt(s['fr_margin'], 1.0)} | {_fmt(s['train_seconds'], 1.0)} |")
    print("\nFIRE - TRADES, paired by seed (percentage points):")
    for key, cell in diff.items():
        if cell["mean"] is not None:
            scale = 1.0 if key == "fr_margin" else 100.0
            print(f"  {key:<10} {scale * cell['mean']:+.2f} +- {scale * (cell['std'] or 0):.2f} "
                  f"(min {scale * cell['min']:+.2f}, max {scale * cell['max']:+.2f}, n={int(cell['n'])})")
    return {"summary": summary, "fire_minus_trades": diff, "aa_label": label}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("sweep")
    p.add_argument("--out", type=Path, default=Path("runs/digits_sweep"))
    p.add_argument("--models", nargs="+", default=["lenet_pi", "digits_cnn"])
    p.add_argument("--lams", type=float, nargs="+", default=[1.0, 2.0, 3.0, 4.0, 6.0])
    p.add_argument("--epochs", type=int, default=DigitsRecipe.epochs)
    p = sub.add_parser("table")
    p.add_argument("--out", type=Path, default=Path("runs/digits_table"))
    p.add_argument("--seeds", type=int, default=5)
    p.add_argument("--epochs", type=int, default=DigitsRecipe.epochs)
    p.add_argument("--model", default=DigitsRecipe.model)
    p.add_argument("--standard-full", action="store_true",
                   help="standard AutoAttack on all 450 test images (about 3 min per run on one core)")
    p.add_argument("--workers", type=int, default=2, help="runs in parallel processes (1 torch thread each)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    write_environment(args.out, torch_threads_per_run=1, workers=getattr(args, "workers", 1))  # beside the results
    start = time.perf_counter()
    if args.command == "sweep":
        payload = sweep(args.out, args.models, args.lams, args.epochs)
    else:
        payload = table(args.out, args.seeds, args.epochs, args.model, args.standard_full, args.workers)
    payload["wall_seconds"] = time.perf_counter() - start
    payload["torch_threads"] = torch.get_num_threads()
    args.out.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out / "summary.json", json.dumps(payload, indent=2))
    print(f"wall time {payload['wall_seconds']:.0f} s, {payload['torch_threads']} torch thread(s); "
          f"{args.out / 'summary.json'}")


if __name__ == "__main__":
    main()

"""The digits demo: every method under one recipe and budget, trained, evaluated and compared (``fire-plugin demo``).

Example:
    >>> [label for label, _, _ in DEMO_METHODS][:2]
    ['CE', 'Madry PGD-AT']
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import time
import warnings
from pathlib import Path
from typing import Any

from fire_plugin.experiments import DEFAULT_WEIGHTS, DigitsRecipe, EvalSpec, check_output_dir, run_many
from fire_plugin.methods import METHODS as _REGISTRY
from fire_plugin.methods import canonical_name, get_method
from fire_plugin.runfolder import atomic_path, atomic_write_text, run_lock

__all__ = ["DEMO_METHODS", "DEMO_TRADEOFF_LAMS", "run_demo"]

_logger = logging.getLogger(__name__)


DEMO_METHODS: tuple[tuple[str, str, float | None], ...] = tuple(
    (_REGISTRY[name].display, name, weight) for name, weight in
    (("ce", None), ("madry", None), ("trades", 6.0), ("hellinger", 12.0), ("fire", 3.0), ("isometry", None))
)
"""(label, method, weight) of the demo's rows: every method at its matched weight (None: the method's default)."""
DEMO_TRADEOFF_LAMS = (1.0, 6.0)  # extra FIRE weights of the lam trade-off figure (with lam = 3 of the table)
_RECIPE, _SPEC = DigitsRecipe(), EvalSpec()  # the defaults of run_demo (frozen)


def run_demo(
    out: str | os.PathLike[str],
    *,
    recipe: DigitsRecipe = _RECIPE,
    spec: EvalSpec = _SPEC,
    methods: tuple[tuple[str, str, float | None], ...] = DEMO_METHODS,
    tradeoff_lams: tuple[float, ...] = DEMO_TRADEOFF_LAMS,
    seed: int = 0,
    workers: int | None = None,
    verbose: bool = True,
) -> dict[str, Any]:
    """The main job on sklearn's embedded digits: every method under one recipe and budget, evaluated and compared.

    Trains CE, Madry PGD-AT, TRADES (beta = 6), Hellinger and FIRE at their matched weights, and partial isometry;
    evaluates each on the test split (clean, PGD-20, FRPGD-20, AutoAttack as ``spec`` says, Avg. Acc., mean
    Fisher-Rao margin) and writes ``demo_table.csv``, ``demo_report.json``, ``config.json``, one RobustBench
    ``model_info`` JSON per method and the figures ``scatter.png``, ``training_curves.png`` and
    ``fire_tradeoff.png`` (FIRE at ``tradeoff_lams`` beside TRADES). Every run is resumable: rerunning continues.

    Returns:
        the report: ``rows`` (one dict per method), ``table`` (markdown), ``files`` and ``wall_seconds``.
    """
    out_dir = check_output_dir(out)
    with run_lock(out_dir, command="demo"):
        return _run_demo_locked(out_dir, recipe=recipe, spec=spec, methods=methods, tradeoff_lams=tradeoff_lams,
                                seed=seed, workers=workers, verbose=verbose)


def _run_demo_locked(out_dir: Path, *, recipe: DigitsRecipe, spec: EvalSpec,
                     methods: tuple[tuple[str, str, float | None], ...], tradeoff_lams: tuple[float, ...], seed: int,
                     workers: int | None, verbose: bool) -> dict[str, Any]:
    import csv

    from fire_plugin.evaluation import EvalResult
    from fire_plugin.plots import plot_robustness_scatter, plot_training_curves, plot_weight_tradeoff
    from fire_plugin.robustbench_io import DEMO_VENUE, model_info_from_result, write_model_info
    from fire_plugin.runfolder import write_environment

    start = time.perf_counter()
    workers = workers if workers is not None else min(2, os.cpu_count() or 1)
    jobs: list[dict[str, Any]] = []
    for label, name, weight in methods:
        method = canonical_name(name)
        w = DEFAULT_WEIGHTS[method] if weight is None else weight
        jobs.append({"label": label, "method": method, "weight": w, "seed": seed, "recipe": recipe, "spec": spec,
                     "out": str(out_dir / "runs" / f"{method}_{w:g}")})
    fire_weights = {job["weight"] for job in jobs if job["method"] == "fire"}
    tradeoff_spec = dataclasses.replace(spec, aa_standard_n=0, margin_n=0)
    for lam in tradeoff_lams:
        if lam not in fire_weights:
            jobs.append({"label": f"FIRE lam={lam:g}", "method": "fire", "weight": lam, "seed": seed,
                         "recipe": recipe, "spec": tradeoff_spec, "out": str(out_dir / "runs" / f"fire_{lam:g}")})
    config = {"recipe": dataclasses.asdict(recipe), "spec": dataclasses.asdict(spec), "seed": seed,
              "methods": [[label, method, weight] for label, method, weight in methods],
              "tradeoff_lams": list(tradeoff_lams), "torch_threads_per_run": 1, "workers": workers}
    atomic_write_text(out_dir / "config.json", json.dumps(config, indent=2))
    write_environment(out_dir, torch_threads_per_run=1, workers=workers)
    results = run_many(jobs, workers, verbose, desc="demo runs")

    rows: list[dict[str, Any]] = []
    files: dict[str, str] = {}
    for job, result in zip(jobs[: len(methods)], results[: len(methods)], strict=True):
        ev, margin, std = result["eval"], result.get("fr_margin") or {}, result.get("aa_standard_subset") or {}
        rows.append({"label": job["label"], "method": job["method"], "weight": job["weight"],
                     "clean": ev["clean_acc"], "pgd": ev["pgd_acc"], "frpgd": ev["frpgd_acc"],
                     "aa": ev["autoattack_acc"], "avg": ev["avg_acc"], "aa_label": result["aa_label"],
                     "aa_standard_subset": std.get("autoattack_acc"), "aa_standard_n": std.get("n_examples"),
                     "fr_margin": margin.get("mean"), "train_seconds": result["train_seconds"],
                     "diverged": result["diverged"], "n_eval": ev["n_examples"]})
        footnote = (f"Embedded sklearn digits (8x8), {ev['n_examples']} test images, eps = {recipe.eps} Linf. "
                    f"autoattack_acc is {result['aa_label']} with AutoAttack's standard settings"
                    + (f"; standard AutoAttack on the first {std['n_examples']} images: "
                       f"{100 * std['autoattack_acc']:.2f}%." if std else "."))
        eval_result = EvalResult(n_examples=ev["n_examples"], eps=recipe.eps, norm="Linf",
                                 clean_acc=ev["clean_acc"], autoattack_acc=ev["autoattack_acc"])
        info = model_info_from_result(eval_result, dataset="digits", name=f"{recipe.model} {job['label']} (demo)",
                                      architecture=recipe.model, venue=DEMO_VENUE,
                                      link="https://arxiv.org/abs/2106.06685", footnote=footnote)
        model_id = "Demo2026" + "".join(ch for ch in job["label"].title() if ch.isalnum())
        with warnings.catch_warnings():  # digits has no leaderboard: said once below, not once per file
            warnings.filterwarnings("ignore", message=".*has no RobustBench leaderboard.*")
            path = write_model_info(out_dir, model_id, info, threat_model="Linf")
        files[f"model_info_{job['method']}"] = str(path)
    _logger.info("model_info files use RobustBench's schema; digits has no RobustBench leaderboard to submit to")

    columns = ["label", "method", "weight", "clean", "pgd", "frpgd", "aa", "avg", "aa_label", "aa_standard_subset",
               "aa_standard_n", "fr_margin", "train_seconds", "diverged", "n_eval"]
    with atomic_path(out_dir / "demo_table.csv") as tmp, open(tmp, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    files["csv"] = str(out_dir / "demo_table.csv")

    fire_rows = [{"weight": job["weight"], "clean": r["eval"]["clean_acc"], "aa": r["eval"]["autoattack_acc"]}
                 for job, r in zip(jobs, results, strict=True) if job["method"] == "fire"]
    references = [{"method": row["label"], "clean": row["clean"], "aa": row["aa"]} for row in rows
                  if row["method"] == "trades"]
    figures = {
        "scatter": plot_robustness_scatter([{**row, "method": row["label"]} for row in rows],
                                           y_label=f"robust accuracy ({rows[0]['aa_label'] if rows else 'AA'})"),
        "training_curves": plot_training_curves({job["label"]: r["history"] for job, r in
                                                 zip(jobs[: len(methods)], results, strict=False)}),
        "fire_tradeoff": plot_weight_tradeoff(fire_rows, references=references),
    }
    for name, fig in figures.items():
        with atomic_path(out_dir / f"{name}.png") as tmp:
            fig.savefig(tmp, dpi=120)
        files[name] = str(out_dir / f"{name}.png")

    table = _markdown_table(rows)
    report = {"rows": rows, "tradeoff": fire_rows, "table": table, "files": files, "config": config,
              "wall_seconds": time.perf_counter() - start}
    atomic_write_text(out_dir / "demo_report.json", json.dumps(report, indent=2))
    return report


def _markdown_table(rows: list[dict[str, Any]]) -> str:
    def pct(value: float | None) -> str:
        return "-" if value is None else f"{100 * value:.1f}"

    aa_label = rows[0]["aa_label"] if rows else "AA"
    std_n = next((row["aa_standard_n"] for row in rows if row["aa_standard_n"]), None)
    head = (f"| method | weight | clean | PGD-20 | FRPGD-20 | {aa_label} | Avg. | "
            + (f"AA standard (first {std_n}) | " if std_n else "") + "mean FR margin | train s |")
    lines = [head, "|" + "---|" * (head.count("|") - 1)]
    for row in rows:
        margin = "-" if row["fr_margin"] is None else f"{row['fr_margin']:.3f}"
        weight = f"{row['weight']:g}" if get_method(row["method"]).weight_name else "-"
        lines.append(f"| {row['label']} | {weight} | {pct(row['clean'])} | {pct(row['pgd'])} | "
                     f"{pct(row['frpgd'])} | {pct(row['aa'])} | {pct(row['avg'])} | "
                     + (f"{pct(row['aa_standard_subset'])} | " if std_n else "")
                     + f"{margin} | {row['train_seconds']:.0f} |" + (" diverged" if row["diverged"] else ""))
    return "\n".join(lines)

"""The digits pipelines: run_one (resumable), the demo end to end (reduced), summaries and paired differences."""

from __future__ import annotations

import csv
import json

import pytest
import torch

from fire_plugin.demo import DEMO_METHODS, run_demo
from fire_plugin.distances import fisher_rao_squared, hellinger_squared, kl_divergence
from fire_plugin.engine import ConfigMismatchError
from fire_plugin.experiments import (
    DEFAULT_WEIGHTS,
    DigitsRecipe,
    EvalSpec,
    paired_differences,
    run_one,
    summarize,
)
from fire_plugin.robustbench_io import read_model_info, validate_model_info

TINY = DigitsRecipe(epochs=1, steps=2, eps_step=0.05)
TINY_SPEC = EvalSpec(n_eval=30, aa_attacks=("apgd-ce",), aa_standard_n=0, margin_n=3)


@pytest.mark.parametrize("dtype", [torch.float64])
def test_local_weight_ratios_from_the_distance_functions(dtype):
    """d^2 / KL -> 2 and d^2 / H^2 -> 4 as the perturbation -> 0: the matched weights lam = beta / 2 = lam_H / 4."""
    torch.manual_seed(0)
    a = torch.randn(64, 10, dtype=dtype)
    direction = torch.randn(64, 10, dtype=dtype)
    previous = None
    for t in (1e-1, 1e-2, 1e-3):
        b = a + t * direction
        d2 = fisher_rao_squared(a, b)
        r_kl = (d2 / kl_divergence(a, b)).mean().item()
        r_h = (d2 / hellinger_squared(a, b)).mean().item()
        if previous is not None:  # the error shrinks with the perturbation (first order in t)
            assert abs(r_kl - 2) < abs(previous[0] - 2) + 1e-9 and abs(r_h - 4) < abs(previous[1] - 4) + 1e-9
        previous = (r_kl, r_h)
    assert previous[0] == pytest.approx(2.0, abs=1e-3) and previous[1] == pytest.approx(4.0, abs=1e-5)
    assert DEFAULT_WEIGHTS["fire"] == DEFAULT_WEIGHTS["trades"] / 2 == DEFAULT_WEIGHTS["hellinger"] / 4


def test_run_one_is_resumable_and_reads_back(tmp_path):
    first = run_one("fire", out=tmp_path / "r", recipe=TINY, spec=TINY_SPEC, verbose=False)
    assert 0 <= first["eval"]["autoattack_acc"] <= first["eval"]["clean_acc"] <= 1
    assert first["config"]["weight"] == DEFAULT_WEIGHTS["fire"] and len(first["history"]) == 1
    again = run_one("fire", out=tmp_path / "r", recipe=TINY, spec=TINY_SPEC, verbose=False)
    assert again == first  # read back, not retrained
    with pytest.raises(ConfigMismatchError, match="weight"):  # another run in the same directory: refused
        run_one("fire", out=tmp_path / "r", weight=1.0, recipe=TINY, spec=TINY_SPEC, verbose=False)


def test_summaries():
    runs = [{"config": {"seed": s}, "eval": {"clean_acc": c, "pgd_acc": 0.5, "frpgd_acc": 0.5,
                                            "autoattack_acc": a, "avg_acc": (c + a) / 2},
             "fr_margin": {"mean": 0.1}, "train_seconds": 1.0} for s, c, a in ((0, 0.9, 0.5), (1, 0.8, 0.6))]
    table = summarize(runs)
    assert table["clean"]["mean"] == pytest.approx(0.85) and table["clean"]["std"] == pytest.approx(0.0707107, 1e-5)
    other = [{**r, "eval": {**r["eval"], "clean_acc": r["eval"]["clean_acc"] - 0.1}} for r in runs]
    diff = paired_differences(runs, other)
    assert diff["clean"]["mean"] == pytest.approx(0.1) and diff["clean"]["std"] == pytest.approx(0.0, abs=1e-12)


def test_demo_end_to_end_reduced(tmp_path):
    methods = tuple(m for m in DEMO_METHODS if m[1] != "isometry")
    report = run_demo(tmp_path / "demo", recipe=TINY, spec=TINY_SPEC, methods=methods, tradeoff_lams=(1.0,),
                      workers=1, verbose=False)
    out = tmp_path / "demo"
    assert [row["method"] for row in report["rows"]] == [m[1] for m in methods]
    with open(out / "demo_table.csv") as handle:
        rows = list(csv.DictReader(handle))
    assert len(rows) == len(methods)
    assert {"label", "method", "weight", "clean", "pgd", "frpgd", "aa", "avg", "fr_margin", "train_seconds"} <= set(
        rows[0])
    for name in ("scatter", "training_curves", "fire_tradeoff"):
        assert (out / f"{name}.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    for key, path in report["files"].items():
        if key.startswith("model_info_"):
            info = read_model_info(path)
            validate_model_info(info)
            assert info.dataset == "digits" and "APGD-CE" in (info.footnote or "")
    assert json.loads((out / "config.json").read_text())["recipe"]["epochs"] == 1
    env = json.loads((out / "environment.json").read_text())  # the machine the numbers came from
    assert env["aten_cpu_capability"] == torch.backends.cpu.get_cpu_capability() and env["torch_threads_per_run"] == 1
    assert "| FIRE | 3 |" in report["table"]
    assert len(report["tradeoff"]) == 2  # lam = 3 of the table and lam = 1

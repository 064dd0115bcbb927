"""The method registry (fire_plugin.methods): one name per method, the same objective in every pipeline, aliases."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from fire_plugin import cli, presets
from fire_plugin.methods import (
    ALIASES,
    METHODS,
    build_objective,
    canonical_name,
    default_eps_step,
    get_method,
    method_loss,
)
from fire_plugin.presets import run as preset_run


def test_default_weights_regularize_with_the_same_local_strength():
    # Independent float64 reference: for q close to p, lam_FIRE * d^2 = beta_TRADES * KL(p||q) = lam_H * H^2 to first
    # order (d = 2 arccos BC, H^2 = 2 (1 - BC)). The registry's matched defaults must agree; measured relative
    # spread 7.0e-5 at a perturbation of 1e-3 (the next order), 1e-2 leaves room.
    rng = np.random.default_rng(0)
    p = rng.dirichlet(np.ones(10))
    q = p * np.exp(1e-3 * rng.standard_normal(10))
    q /= q.sum()
    bc = float(np.sum(np.sqrt(p * q)))
    strength = {"fire": (2 * math.acos(min(bc, 1.0))) ** 2, "trades": float(np.sum(p * np.log(p / q))),
                "hellinger": 2 * (1 - bc)}
    weighted = [get_method(name).default_weight * value for name, value in strength.items()]
    assert max(weighted) / min(weighted) - 1 < 1e-2, weighted


def test_each_loss_carries_its_methods_default_weight_under_its_name():
    for name, method in METHODS.items():
        if method.loss_class is None:
            assert not method.adversarial or name == "madry"
            continue
        loss = method_loss(name)
        assert type(loss).__name__ == method.loss_class
        if method.weight_name is not None:
            assert getattr(loss, method.weight_name) == method.default_weight


def test_one_name_per_method_and_the_aliases_resolve():
    assert canonical_name("ace") == "madry" and get_method("ace") is METHODS["madry"]
    assert set(ALIASES).isdisjoint(METHODS) and set(ALIASES.values()) <= set(METHODS)
    with pytest.raises(ValueError, match=r"--method must be one of \['fire', .*ace = madry.*got 'pgd'"):
        canonical_name("pgd", option="--method")
    assert set(presets.METHODS) <= set(METHODS)
    assert presets.SCHEMA["method"].choices == presets.METHODS


def test_presets_and_experiments_build_the_same_objective():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    for name in ("cifar10-wrn34-fire", "cifar10-wrn34-trades", "cifar10-wrn34-hellinger", "cifar10-wrn34-madry"):
        cfg = presets.load_preset(name)
        from_preset = preset_run._method_spec(cfg, 10, smoke=False).objective(model, 10)
        direct = build_objective(cfg["method"], model, weight=cfg["lam"], eps=cfg["eps"], eps_step=cfg["eps_step"],
                                 steps=cfg["attack_steps"])
        assert from_preset.config() == direct.config(), name
    cfg = presets.load_preset("mnist-lenet-isometry")
    iso = preset_run._method_spec(cfg, 10, smoke=False).objective(model, 10)
    assert iso.config()["objective"] == "PartialIsometryObjective"


def test_the_default_step_is_madrys():
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    objective = build_objective("fire", model, eps=0.3, steps=10)
    assert objective.attack.alpha == pytest.approx(default_eps_step(0.3, 10)) == pytest.approx(0.075)


def test_preset_aliases_ace_and_eval_pgd_alpha():
    cfg = presets.load_preset("cifar10-wrn34-fire", overrides=["method=ace", "eval_pgd_alpha=0.01"])
    assert cfg["method"] == "madry" and cfg["eval_eps_step"] == 0.01 and "eval_pgd_alpha" not in cfg
    assert presets.parse_overrides(["eval_pgd_alpha=1/255"]) == {"eval_eps_step": 1 / 255}
    with pytest.raises(ValueError, match="eval_eps_step=.*not allowed"):
        presets.parse_overrides(["eval_pgd_alpha=-1"])


def test_cli_smoke_and_its_older_name_quick_are_one_flag():
    parser = cli.build_parser()
    for sub in ("demo", "bench"):
        new = parser.parse_args([sub, "--smoke", *(["--out", "x"] if sub == "demo" else [])])
        old = parser.parse_args([sub, "--quick", *(["--out", "x"] if sub == "demo" else [])])
        assert new.smoke is True and old.smoke is True, sub
    assert parser.parse_args(["train", "--method", "ace", "--out", "x"]).method == "ace"  # resolved by train


def test_run_preset_smoke_tiny_is_smoke_with_tiny(tmp_path):
    res = presets.run_preset("mnist-smallcnn-fire", out=tmp_path, smoke="tiny", verbose=False)
    assert res["smoke"] is True and res["tiny"] is True
    with pytest.raises(ValueError, match="smoke='yes' is not allowed"):
        presets.run_preset("mnist-smallcnn-fire", out=tmp_path / "b", smoke="yes", verbose=False)


def test_the_readme_weight_table_states_the_registrys_defaults():
    from pathlib import Path

    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    header = next(line for line in readme.splitlines() if line.startswith("| paper lambda"))
    row = next(line for line in readme.splitlines() if "(the paper's choice)" in line)
    columns = [c.strip() for c in header.strip("|").split("|")]
    cells = [c.strip() for c in row.strip("|").split("|")]
    defaults = {col: float(cell.split("**")[1]) for col, cell in zip(columns, cells, strict=True) if "**" in cell}
    assert defaults == {"our `lam` on d^2": get_method("fire").default_weight,
                        "TRADES `beta` (KL)": get_method("trades").default_weight,
                        "Hellinger `lam` (H^2)": get_method("hellinger").default_weight}

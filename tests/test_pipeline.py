"""The one train-and-evaluate pipeline (fire_plugin.pipeline): what it builds, seeds, resumes, selects and
evaluates. That train, run_one and run_preset go through it is checked by their own tests (files, resume)."""

from __future__ import annotations

import random

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fire_plugin.engine import Checkpointing, ConfigMismatchError, Validation, load_checkpoint
from fire_plugin.pipeline import (
    DataSpec,
    EvaluationSpec,
    FitSpec,
    MethodSpec,
    ModelSpec,
    OptimizerSpec,
    PipelineSpec,
    run_pipeline,
    seed_everything,
)


def _data(n: int = 32, seed: int = 0) -> TensorDataset:
    gen = torch.Generator().manual_seed(seed)
    return TensorDataset(torch.rand(n, 1, 8, 8, generator=gen), torch.randint(0, 10, (n,), generator=gen))


_FIRE = MethodSpec("fire", eps=0.1, steps=2)


def _spec(tmp_path=None, *, epochs: int = 2, method: MethodSpec = _FIRE, **kw):
    data = _data()
    loader = DataLoader(data, batch_size=16, shuffle=True, generator=torch.Generator().manual_seed(0))
    checkpoints = Checkpointing(tmp_path / "ckpt", config={"run": "test"}) if tmp_path is not None else Checkpointing()
    fit = kw.pop("fit", FitSpec(epochs, checkpoints=checkpoints))
    return PipelineSpec(model=ModelSpec("digits_cnn", "digits"), data=DataSpec(loader), method=method,
                        optimizer=OptimizerSpec(lr=0.05, schedule="cosine"), fit=fit, verbose=False, **kw)


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    """Two state dicts hold the same tensors bit for bit (used where the same computation repeats)."""
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_seed_everything_seeds_torch_numpy_and_random():
    seed_everything(5)
    first = (torch.rand(3), np.random.rand(3), random.random())
    seed_everything(5)
    again = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], again[0]) and np.array_equal(first[1], again[1]) and first[2] == again[2]


def test_seed_all_false_seeds_torch_only():
    np.random.seed(123)
    expected = np.random.rand(2)
    np.random.seed(123)
    run_pipeline(_spec(epochs=1, method=MethodSpec("ce"), seed=4, seed_all=False))
    assert np.array_equal(np.random.rand(2), expected)  # numpy's generator untouched (the run draws nothing from it)
    np.random.seed(123)
    run_pipeline(_spec(epochs=1, method=MethodSpec("ce"), seed=4, seed_all=True))
    got = np.random.rand(2)
    np.random.seed(4)
    assert np.array_equal(got, np.random.rand(2))  # seeded with the run's seed


def test_the_model_is_built_after_seeding_with_the_seed():
    # two runs with the same seed start from the same weights (zero epochs trained is not allowed: compare results)
    a = run_pipeline(_spec(epochs=1, method=MethodSpec("ce"), seed=3))
    b = run_pipeline(_spec(epochs=1, method=MethodSpec("ce"), seed=3))
    c = run_pipeline(_spec(epochs=1, method=MethodSpec("ce"), seed=4))
    assert _same(a.model.state_dict(), b.model.state_dict())  # the same computation repeated
    assert not _same(a.model.state_dict(), c.model.state_dict())


def test_result_without_evaluation_and_with_it():
    plain = run_pipeline(_spec(epochs=2))
    assert len(plain.history) == 2 and plain.evaluation is None and plain.test is None and plain.best is None
    assert plain.is_main and not plain.model.training and set(plain.seconds) == {"train"}
    data = _data(20, seed=1)
    spec = _spec(epochs=1, evaluation=EvaluationSpec(data.tensors, eps=0.1, n_examples=12, attacks=("clean", "pgd"),
                                                       pgd_steps=2))
    out = run_pipeline(spec)
    x, y = out.test
    assert torch.equal(x, data.tensors[0][:12]) and torch.equal(y, data.tensors[1][:12])
    assert out.evaluation.n_examples == 12 and out.evaluation.pgd_acc <= out.evaluation.clean_acc
    with torch.no_grad():
        correct = int((out.model(x).argmax(1) == y).sum())  # the final model is the evaluated one
    assert out.evaluation.clean_acc == pytest.approx(correct / 12, abs=1e-6)  # a count over 12: exact up to float32
    assert set(out.seconds) == {"train", "evaluate"} and out.seconds["evaluate"] > 0


def test_evaluation_of_a_dataset_stacks_its_first_images():
    data = _data(10, seed=2)
    x, y = EvaluationSpec(data, eps=0.1, n_examples=6).tensors()
    assert torch.equal(x, data.tensors[0][:6]) and torch.equal(y, data.tensors[1][:6])


def test_a_rerun_resumes_and_a_changed_method_is_refused(tmp_path):
    first = run_pipeline(_spec(tmp_path, epochs=2))
    again = run_pipeline(_spec(tmp_path, epochs=2))  # finished: nothing left to train, the same weights come back
    assert again.history == first.history
    assert _same(first.model.state_dict(), again.model.state_dict())
    with pytest.raises(ConfigMismatchError):
        run_pipeline(_spec(tmp_path, epochs=2, method=MethodSpec("fire", eps=0.2, steps=2)))


def test_select_best_evaluates_best_pt(tmp_path):
    val = DataLoader(_data(16, seed=3), batch_size=16)
    fit = FitSpec(3, validation=Validation(val, select_best=True), checkpoints=Checkpointing(tmp_path / "ckpt"))
    out = run_pipeline(_spec(fit=fit))
    saved = load_checkpoint(tmp_path / "ckpt" / "best.pt")
    assert out.best is not None and out.best["epoch"] == saved["epoch"]
    best_acc = max(r["val_adv_acc"] for r in out.history)
    assert out.history[int(saved["epoch"])]["val_adv_acc"] == best_acc
    assert _same(out.model.state_dict(), saved["model"])
    if int(saved["epoch"]) < 2:  # here epoch 0 (random labels: every epoch 0.0, ties keep the earlier one)
        assert not _same(out.model.state_dict(), load_checkpoint(tmp_path / "ckpt" / "last.pt")["model"])


def test_ema_weights_are_the_final_model(tmp_path):
    out = run_pipeline(_spec(fit=FitSpec(1, ema=0.5, checkpoints=Checkpointing(tmp_path / "ckpt"))))
    saved = load_checkpoint(tmp_path / "ckpt" / "last.pt")
    assert _same(out.model.state_dict(), saved["ema"]["module"])
    raw = run_pipeline(_spec(fit=FitSpec(1)))  # the same run without EMA ends at other (the raw) weights
    assert not _same(raw.model.state_dict(), out.model.state_dict())


def test_on_start_runs_once_before_training(tmp_path):
    seen = []
    run_pipeline(_spec(tmp_path, epochs=1, on_start=lambda: seen.append((tmp_path / "ckpt" / "last.pt").exists())))
    assert seen == [False]


def test_narrow_model_spec_builds_widen_factor_1_wideresnets_only():
    narrow = ModelSpec("wrn34_10", "cifar10", narrow=True).build()
    assert sum(p.numel() for p in narrow.parameters()) < 1e6  # measured: 466,714 (widen factor 10: 46,160,474)
    assert narrow(torch.rand(1, 3, 32, 32)).shape == (1, 10)
    small = ModelSpec("digits_cnn", "digits", narrow=True).build()
    assert type(small) is type(ModelSpec("digits_cnn", "digits").build())


def test_method_spec_builds_build_objectives_objective():
    from fire_plugin.methods import build_objective

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    spec = MethodSpec("trades", weight=4.0, eps=0.2, eps_step=0.05, steps=3, norm="L2")
    direct = build_objective("trades", model, weight=4.0, eps=0.2, eps_step=0.05, steps=3, norm="L2")
    assert spec.objective(model, 10).config() == direct.config()
    iso = MethodSpec("isometry", eta_min=0.01, eta_max=0.03).objective(model, 100)
    assert iso.config() == build_objective("isometry", model, num_classes=100, eta_min=0.01, eta_max=0.03).config()

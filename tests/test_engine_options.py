"""fit's option groups (Validation, Checkpointing, FastPaths, DDPOptions): the grouped form is the flat keyword form."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fire_plugin.engine import (
    BEST_CHECKPOINT_NAME,
    Checkpointing,
    CrossEntropyObjective,
    DDPOptions,
    FastPaths,
    Validation,
    fit,
    load_checkpoint,
)
from fire_plugin.engine.options import group_keywords


def _run(digits_train, tmp_path, name, **kwargs):
    torch.manual_seed(0)
    x, y = digits_train
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loader = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=32, shuffle=True)
    val = DataLoader(TensorDataset(x[128:192], y[128:192]), batch_size=64)

    def factory(m):  # a deterministic "attack": the validation adversarial accuracy is that of a shifted input
        return lambda xb, yb: (xb + 0.5).clamp(0, 1)

    grouped = kwargs.pop("grouped")
    if grouped:
        kwargs.update(validation=Validation(val, attack_factory=factory, select_best=True),
                      checkpoints=Checkpointing(tmp_path / name, resume=True, config={"run": "x"}),
                      fast=FastPaths(amp="off", channels_last=False), ddp=DDPOptions(seed=3))
    else:
        kwargs.update(val_loader=val, val_attack_factory=factory, select_best=True, checkpoint_dir=tmp_path / name,
                      resume=True, config={"run": "x"}, amp="off", channels_last=False, seed=3)
    hist = fit(model, loader, epochs=2, objective=CrossEntropyObjective(), optimizer=opt, verbose=False, **kwargs)
    return model, hist


def test_grouped_options_train_exactly_like_the_flat_keywords(digits_train, tmp_path):
    # the same computation twice (same seed, same data order): bit equality is the right check
    model_a, hist_a = _run(digits_train, tmp_path, "flat", grouped=False)
    model_b, hist_b = _run(digits_train, tmp_path, "grouped", grouped=True)
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert torch.equal(pa, pb)
    strip = [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in hist_a]
    assert strip == [{k: v for k, v in r.items() if k not in ("seconds", "samples_per_s")} for r in hist_b]
    assert all(r["val_adv_acc"] is not None for r in hist_b)
    best_a = load_checkpoint(tmp_path / "flat" / BEST_CHECKPOINT_NAME)
    best_b = load_checkpoint(tmp_path / "grouped" / BEST_CHECKPOINT_NAME)
    assert best_a["epoch"] == best_b["epoch"] and best_a["config"] == best_b["config"]
    assert best_b["config"]["run"] == "x"


def test_a_group_and_its_flat_keyword_together_are_refused(digits_train, tmp_path):
    with pytest.raises(ValueError, match=r"either checkpoints=Checkpointing\(...\) or \['checkpoint_dir'\]"):
        _run(digits_train, tmp_path, "both", grouped=True, checkpoint_dir=tmp_path / "other")


def test_unknown_keyword_is_a_type_error_naming_it(digits_train, tmp_path):
    with pytest.raises(TypeError, match="unexpected keyword argument 'val_loaderr'"):
        _run(digits_train, tmp_path, "typo", grouped=False, val_loaderr=None)


def test_group_of_the_wrong_type_is_refused():
    with pytest.raises(ValueError, match="fast must be a fire_plugin.engine.FastPaths, got dict"):
        group_keywords({}, fast={"amp": "off"})


def test_flat_keywords_fold_into_their_groups():
    opts = group_keywords({"select_best": True, "resume": False, "compile": "eager", "sync_batchnorm": True})
    assert opts.validation == Validation(None, select_best=True)
    assert opts.checkpoints == Checkpointing(None, resume=False)
    assert opts.fast == FastPaths(compile="eager") and opts.ddp == DDPOptions(sync_batchnorm=True)
    assert group_keywords({}).validation is None


def test_select_best_without_a_validation_loader_is_still_refused_naming_val_loader(digits_train, tmp_path):
    x, y = digits_train
    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    loader = DataLoader(TensorDataset(x[:32], y[:32]), batch_size=32)
    with pytest.raises(ValueError, match="val_loader=None"):
        fit(model, loader, epochs=1, objective=CrossEntropyObjective(), optimizer=torch.optim.SGD(
            model.parameters(), lr=0.1), select_best=True, checkpoint_dir=tmp_path, verbose=False)

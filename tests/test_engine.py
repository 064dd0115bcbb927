"""Training engine: step accounting, checkpoints and exact resume, non-finite losses, DDP (slow)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import timm
import torch
from torch.utils.data import DataLoader, TensorDataset

import fire_plugin  # noqa: F401  (registers the timm models)
from fire_plugin.attacks import FRPGD
from fire_plugin.engine import (
    CHECKPOINT_NAME,
    IndexedDataset,
    NonFiniteLossError,
    SelfAdaptiveTargets,
    adversarial_step,
    fit,
    load_checkpoint,
)
from fire_plugin.losses import FIRELoss


def _setup(digits_train, n=192, seed=0):
    torch.manual_seed(seed)
    x, y = digits_train
    model = timm.create_model("digits_cnn", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=64, shuffle=True)
    attack = FRPGD(model, eps=0.1, alpha=0.03, steps=3)
    return model, opt, loader, attack


def test_step_uses_exactly_the_needed_forward_passes(digits_train):
    model, opt, loader, attack = _setup(digits_train)
    calls = {"train": 0, "eval": 0}

    def hook(module, args, out):
        calls["train" if module.training else "eval"] += 1

    model.register_forward_hook(hook)
    x, y = next(iter(loader))
    result = adversarial_step(model, x, y, loss=FIRELoss(lam=1.0), attack=attack, optimizer=opt)
    # attack: 1 clean eval pass + 3 steps; training: natural + adversarial pass, nothing else
    assert calls == {"eval": 1 + 3, "train": 2}
    assert 0 <= int(result.nat_correct) <= len(x) and torch.isfinite(result.loss)
    assert model.training


def test_resume_gives_identical_weights(digits_train, tmp_path):
    model_a, opt_a, loader_a, attack_a = _setup(digits_train)
    scheduler_a = torch.optim.lr_scheduler.StepLR(opt_a, step_size=1, gamma=0.5)
    hist_a = fit(model_a, loader_a, epochs=2, loss=FIRELoss(lam=1.0), attack=attack_a, optimizer=opt_a,
                 scheduler=scheduler_a, verbose=False)

    ckpt = tmp_path / "run"
    model_b, opt_b, loader_b, attack_b = _setup(digits_train)
    scheduler_b = torch.optim.lr_scheduler.StepLR(opt_b, step_size=1, gamma=0.5)
    fit(model_b, loader_b, epochs=1, loss=FIRELoss(lam=1.0), attack=attack_b, optimizer=opt_b,
        scheduler=scheduler_b, checkpoint_dir=ckpt, verbose=False)
    # a brand-new process state: fresh model/optimizer, RNG disturbed, then resume
    torch.manual_seed(1234)
    model_c, opt_c, loader_c, attack_c = _setup(digits_train, seed=99)
    scheduler_c = torch.optim.lr_scheduler.StepLR(opt_c, step_size=1, gamma=0.5)
    hist_c = fit(model_c, loader_c, epochs=2, loss=FIRELoss(lam=1.0), attack=attack_c, optimizer=opt_c,
                 scheduler=scheduler_c, checkpoint_dir=ckpt, verbose=False)
    for (name, pa), pc in zip(model_a.state_dict().items(), model_c.state_dict().values(), strict=True):
        assert torch.equal(pa, pc), name
    assert len(hist_c) == 2 and hist_c[1]["loss"] == hist_a[1]["loss"]
    state = load_checkpoint(ckpt / CHECKPOINT_NAME)  # weights_only=True inside
    assert state["epoch"] == 1 and set(state) >= {"model", "optimizer", "scheduler", "history", "rng"}
    assert not [p for p in ckpt.iterdir() if p.name != CHECKPOINT_NAME]  # no temporary files left


def test_non_finite_loss_stops_and_keeps_checkpoint(digits_train, tmp_path):
    model, opt, loader, attack = _setup(digits_train)
    fit(model, loader, epochs=1, loss=FIRELoss(lam=1.0), attack=attack, optimizer=opt, checkpoint_dir=tmp_path,
        verbose=False)
    good = (tmp_path / CHECKPOINT_NAME).read_bytes()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    calls = {"n": 0}

    def bad_loss(nat, adv, y):
        calls["n"] += 1
        value = FIRELoss(lam=1.0)(nat, adv, y)
        return value * float("nan") if calls["n"] == 2 else value

    with pytest.raises(NonFiniteLossError, match=r"epoch 2, batch 1"):
        fit(model, loader, epochs=2, loss=bad_loss, attack=attack, optimizer=opt, checkpoint_dir=tmp_path,
            verbose=False)
    assert (tmp_path / CHECKPOINT_NAME).read_bytes() == good
    # the NaN batch did not reach the weights (the first batch of epoch 2 did update them, finitely)
    assert all(torch.isfinite(v).all() for v in model.state_dict().values())
    assert any(not torch.equal(weights[k], v) for k, v in model.state_dict().items())


def test_self_adaptive_targets_train(digits_train):
    model, opt, _, attack = _setup(digits_train)
    x, y = digits_train
    data = IndexedDataset(TensorDataset(x[:128], y[:128]))
    sat = SelfAdaptiveTargets(len(data), 10, warmup=1, momentum=0.9)
    hist = fit(model, DataLoader(data, batch_size=64, shuffle=True), epochs=2, loss=FIRELoss(lam=1.0),
               attack=attack, optimizer=opt, self_adaptive=sat, verbose=False)
    assert len(hist) == 2
    # after the warm-up epoch the targets are soft (not one-hot) but still distributions
    assert torch.allclose(sat.targets.sum(-1), torch.ones(128), atol=1e-5)
    assert (sat.targets.max(-1).values < 1).all()


def test_bad_arguments(digits_train):
    model, opt, loader, attack = _setup(digits_train)
    with pytest.raises(ValueError, match="epochs"):
        fit(model, loader, epochs=-1, loss=FIRELoss(), attack=attack, optimizer=opt)
    with pytest.raises(ValueError, match="scheduler"):
        fit(model, loader, epochs=1, loss=FIRELoss(), attack=attack, optimizer=opt, scheduler="cosine")  # type: ignore
    with pytest.raises(ValueError, match="momentum"):
        SelfAdaptiveTargets(4, 2, momentum=1.5)


DDP_SCRIPT = r'''
import os, sys, torch, timm
from torch.utils.data import DataLoader, TensorDataset
import fire_plugin
from fire_plugin.attacks import FRPGD
from fire_plugin.data import load_dataset
from fire_plugin.engine import fit
from fire_plugin.losses import FIRELoss
torch.manual_seed(0)
x, y = load_dataset("digits", split="train").tensors
model = timm.create_model("digits_cnn", num_classes=10)
opt = torch.optim.SGD(model.parameters(), lr=0.05)
hist = fit(model, DataLoader(TensorDataset(x[:256], y[:256]), batch_size=32, shuffle=True), epochs=1,
           loss=FIRELoss(lam=1.0), attack=FRPGD(model, eps=0.1, alpha=0.03, steps=2), optimizer=opt,
           verbose=False)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
torch.save(flat, os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
torch.save(hist, os.path.join(sys.argv[1], f"hist{os.environ['RANK']}.pt"))
'''


@pytest.mark.slow
def test_ddp_two_ranks_gloo_identical_weights(tmp_path):
    script = tmp_path / "ddp_run.py"
    script.write_text(DDP_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(torchrun), "--nproc_per_node=2", "--standalone", str(script), str(tmp_path)], check=True,
                   env=env, timeout=600)
    w0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    w1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(w0, w1)
    h0 = torch.load(tmp_path / "hist0.pt", weights_only=True)
    # both ranks saw half the data each; the reported stats cover all 256 samples
    assert h0[0]["samples_per_s"] > 0 and 0 <= h0[0]["nat_acc"] <= 1

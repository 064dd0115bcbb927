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
    AdversarialObjective,
    ConfigMismatchError,
    CrossEntropyObjective,
    IndexedDataset,
    NonFiniteLossError,
    Objective,
    ObjectiveOutput,
    SelfAdaptiveTargets,
    adversarial_step,
    fit,
    load_checkpoint,
    lr_scheduler,
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


def test_resume_with_another_configuration_is_refused(digits_train, tmp_path):
    model, opt, loader, attack = _setup(digits_train)
    fit(model, loader, epochs=1, loss=FIRELoss(lam=1.0), attack=attack, optimizer=opt, checkpoint_dir=tmp_path,
        config={"lr": 0.05, "method": "fire"}, verbose=False)
    # another weight (a TRADES run on a FIRE checkpoint) and another lr: refused, naming both fields
    from fire_plugin.losses import TRADESLoss

    with pytest.raises(ConfigMismatchError, match=r"lr: checkpoint 0.05 vs now 1000000.0.*--no-resume") as info:
        fit(model, loader, epochs=2, loss=TRADESLoss(beta=0.5), attack=attack, optimizer=opt,
            checkpoint_dir=tmp_path, config={"lr": 1e6, "method": "trades"}, verbose=False)
    assert "loss.weight" in str(info.value) and "method" in str(info.value)
    # the same configuration resumes
    hist = fit(model, loader, epochs=2, loss=FIRELoss(lam=1.0), attack=attack, optimizer=opt,
               checkpoint_dir=tmp_path, config={"lr": 0.05, "method": "fire"}, verbose=False)
    assert len(hist) == 2


@pytest.mark.parametrize(("epochs", "expected"), [(1, [0.1]), (2, [0.1, 0.1]), (3, [0.1, 0.1, 0.01]),
                                                  (100, [0.1] * 75 + [0.01] * 15 + [0.001] * 10)])
def test_multistep_schedule_is_right_for_every_epoch_count(epochs, expected):
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched = lr_scheduler(opt, "multistep", epochs)
    seen = []
    for _ in range(epochs):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen == pytest.approx(expected)


def test_cosine_schedule_decays_to_zero():
    opt = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=0.1)
    sched = lr_scheduler(opt, "cosine", 4)
    seen = []
    for _ in range(4):
        seen.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert seen[0] == pytest.approx(0.1) and all(a > b for a, b in zip(seen, seen[1:], strict=False))
    assert opt.param_groups[0]["lr"] == pytest.approx(0.0, abs=1e-12)
    with pytest.raises(ValueError, match="schedule must be one of"):
        lr_scheduler(opt, "linear", 4)


def _digits_ce_run(digits_train, epochs, on_epoch_end=None):
    torch.manual_seed(0)
    x, y = digits_train
    model = timm.create_model("digits_cnn", num_classes=10)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
    hook = (lambda s: on_epoch_end(s, opt)) if on_epoch_end else None
    return fit(model, loader, epochs=epochs, objective=CrossEntropyObjective(), optimizer=opt, verbose=False,
               on_epoch_end=hook)


def test_divergence_is_flagged(digits_train):
    """A constructed run that blows up: lr 0.05 -> 2.0 after 3 good epochs (measured: loss 0.197 -> 849, training
    accuracy 0.937 -> 0.125, then about 2.5 / 0.10); a healthy run is not flagged."""

    def explode(stats, opt):
        if stats.epoch == 2:
            for group in opt.param_groups:
                group["lr"] = 2.0

    with pytest.warns(RuntimeWarning, match="diverging at epoch 4"):
        hist = _digits_ce_run(digits_train, 5, explode)
    assert [r["diverged"] for r in hist] == [False, False, False, True, True]
    assert not any(r["diverged"] for r in _digits_ce_run(digits_train, 4))


def test_cross_entropy_objective_has_no_adversarial_accuracy(digits_train):
    model, opt, loader, _ = _setup(digits_train)
    hist = fit(model, loader, epochs=1, objective=CrossEntropyObjective(), optimizer=opt, verbose=False)
    assert hist[0]["adv_acc"] is None and 0 <= hist[0]["nat_acc"] <= 1


class _CountingObjective(Objective):
    """An objective with per-epoch state: a weight that doubles every epoch, saved with the checkpoint."""

    def __init__(self):
        self.weight = 1.0
        self.calls = 0

    def set_epoch(self, epoch, epochs):
        self.weight = 2.0 ** epoch

    def state_dict(self):
        return {"calls": self.calls}

    def load_state_dict(self, state):
        self.calls = state["calls"]

    def __call__(self, model, x, y, *, targets_fn=None):
        self.calls += 1
        model.train()
        logits = model(x)
        return ObjectiveOutput(self.weight * torch.nn.functional.cross_entropy(logits, y), logits)


def test_objective_state_resumes_bit_identically(digits_train, tmp_path):
    model_a, opt_a, loader_a, _ = _setup(digits_train, seed=1)
    obj_a = _CountingObjective()
    fit(model_a, loader_a, epochs=2, objective=obj_a, optimizer=opt_a, verbose=False)
    model_b, opt_b, loader_b, _ = _setup(digits_train, seed=1)
    fit(model_b, loader_b, epochs=1, objective=_CountingObjective(), optimizer=opt_b, checkpoint_dir=tmp_path,
        verbose=False)
    model_c, opt_c, loader_c, _ = _setup(digits_train, seed=99)  # other init: everything must come from the file
    obj_c = _CountingObjective()
    fit(model_c, loader_c, epochs=2, objective=obj_c, optimizer=opt_c, checkpoint_dir=tmp_path, verbose=False)
    assert obj_c.calls == obj_a.calls == 6 and obj_c.weight == obj_a.weight == 2.0
    for pa, pc in zip(model_a.parameters(), model_c.parameters(), strict=True):
        assert torch.equal(pa, pc)


def test_objective_and_loss_attack_are_exclusive(digits_train):
    model, opt, loader, attack = _setup(digits_train)
    with pytest.raises(ValueError, match="either objective"):
        fit(model, loader, epochs=1, objective=CrossEntropyObjective(), loss=FIRELoss(), attack=attack, optimizer=opt)
    with pytest.raises(ValueError, match="objective="):
        fit(model, loader, epochs=1, optimizer=opt)
    with pytest.raises(ValueError, match="attack must be callable"):
        AdversarialObjective(FIRELoss(), attack=3)  # type: ignore[arg-type]


def test_user_chosen_checkpoint_dir_may_contain_dotdot(digits_train, tmp_path):
    model, opt, loader, attack = _setup(digits_train, n=64)
    (tmp_path / "runs").mkdir()
    fit(model, loader, epochs=1, loss=FIRELoss(lam=1.0), attack=attack, optimizer=opt,
        checkpoint_dir=tmp_path / "runs" / ".." / "runs" / "e", verbose=False)
    assert (tmp_path / "runs" / "e" / CHECKPOINT_NAME).exists()


def test_bad_checkpoint_files_are_named(tmp_path):
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    with pytest.raises(ValueError, match=r"empty\.pt.*empty"):
        load_checkpoint(empty)
    noise = tmp_path / "noise.pt"
    noise.write_bytes(bytes(torch.randint(0, 256, (256,), generator=torch.Generator().manual_seed(0)).tolist()))
    with pytest.raises(ValueError, match=r"noise\.pt.*corrupt"):
        load_checkpoint(noise)
    good = tmp_path / "good.pt"
    torch.save({"w": torch.ones(1000)}, good)
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(good.read_bytes()[:300])
    with pytest.raises(ValueError, match=r"truncated\.pt.*corrupt"):
        load_checkpoint(truncated)
    with pytest.raises(IsADirectoryError, match="is a directory"):
        load_checkpoint(tmp_path)
    with pytest.raises(FileNotFoundError, match="missing.pt"):
        load_checkpoint(tmp_path / "missing.pt")


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


# ------------------------------------------------------------------------------- modern recipe and fast paths

from fire_plugin.engine import BEST_CHECKPOINT_NAME, ModelEMA, autocast_context  # noqa: E402


class _BNNet(torch.nn.Module):
    """A tiny net with a BatchNorm layer (buffers the EMA must copy, not average)."""

    def __init__(self):
        super().__init__()
        self.fc1 = torch.nn.Linear(64, 16)
        self.bn = torch.nn.BatchNorm1d(16)
        self.fc2 = torch.nn.Linear(16, 10)

    def forward(self, x):
        return self.fc2(torch.relu(self.bn(self.fc1(x.flatten(1)))))


def test_ema_matches_a_hand_computed_average(digits_train):
    torch.manual_seed(0)
    x, y = digits_train
    model = _BNNet()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    ema = ModelEMA(model, decay=0.6)  # small decay: the warm-up min((1+t)/(10+t), 0.6) switches at t = 12.5
    expected = {k: v.detach().double().clone() for k, v in model.named_parameters()}
    snapshots = []
    opt.register_step_post_hook(lambda *_: snapshots.append({k: v.detach().double().clone()
                                                             for k, v in model.named_parameters()}))
    loader = DataLoader(TensorDataset(x[:320], y[:320]), batch_size=16, shuffle=True)
    fit(model, loader, epochs=1, objective=CrossEntropyObjective(), optimizer=opt, ema=ema, verbose=False)
    assert len(snapshots) == ema.updates == 20
    for t, weights in enumerate(snapshots):  # the formula, in float64, from the weights after every step
        d = min(0.6, (1 + t) / (10 + t))
        expected = {k: d * expected[k] + (1 - d) * weights[k] for k in expected}
    for name, value in ema.module.named_parameters():
        torch.testing.assert_close(value.double(), expected[name], rtol=1e-5, atol=1e-6)
        assert not torch.equal(value, dict(model.named_parameters())[name])  # an average, not a copy
    for name, buffer in ema.module.named_buffers():  # BatchNorm statistics are copied
        assert torch.equal(buffer, dict(model.named_buffers())[name]), name
    assert not ema.module.training and not any(p.requires_grad for p in ema.module.parameters())
    with pytest.raises(ValueError, match="decay=1.5"):
        ModelEMA(model, decay=1.5)


def _ce_run_with_val(digits_train, tmp_path, *, epochs, ema_decay=None, explode_at=None, resume_dir=None, seed=0):
    import torchattacks

    torch.manual_seed(seed)
    x, y = digits_train
    model = timm.create_model("digits_cnn", num_classes=10)
    torch.manual_seed(0)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    train = DataLoader(TensorDataset(x[:1000], y[:1000]), batch_size=50, shuffle=True)
    val = DataLoader(TensorDataset(x[1000:1200], y[1000:1200]), batch_size=100)
    ema = ModelEMA(model, decay=ema_decay) if ema_decay else None
    snapshots = []

    def on_end(stats):
        snapshots.append({k: v.clone() for k, v in (ema.module if ema else model).state_dict().items()})
        if explode_at is not None and stats.epoch == explode_at:
            for group in opt.param_groups:
                group["lr"] = 2.0

    def factory(m):  # deterministic PGD (no random start): the accuracies can be recomputed exactly
        return torchattacks.PGD(m, eps=0.1, alpha=0.03, steps=3, random_start=False)

    hist = fit(model, train, epochs=epochs, objective=CrossEntropyObjective(), optimizer=opt, val_loader=val,
               val_attack_factory=factory, select_best=True, ema=ema, checkpoint_dir=resume_dir or tmp_path,
               on_epoch_end=on_end, verbose=False)
    return model, ema, hist, snapshots, val, factory


@pytest.mark.filterwarnings("ignore:training is diverging")
def test_best_checkpoint_is_the_epoch_of_highest_validation_pgd_accuracy(digits_train, tmp_path):
    # lr 0.05 -> 2.0 after the third epoch: later epochs get worse, so the best epoch is not the last one
    model, _, hist, snapshots, val, factory = _ce_run_with_val(digits_train, tmp_path, epochs=5, explode_at=2)
    recomputed = []
    for weights in snapshots:  # independent recomputation from the weights saved at the end of each epoch
        probe = timm.create_model("digits_cnn", num_classes=10)
        probe.load_state_dict(weights)
        probe.eval()
        correct = n = 0
        for xb, yb in val:
            adv = factory(probe)(xb, yb)
            with torch.no_grad():
                correct += int((probe(adv).argmax(-1) == yb).sum())
            n += len(yb)
        recomputed.append(correct / n)
    assert [r["val_adv_acc"] for r in hist] == pytest.approx(recomputed, abs=0)
    best_epoch = max(range(len(recomputed)), key=lambda i: (recomputed[i], -i))  # first maximum
    assert best_epoch < 4, recomputed  # measured: [0.2, 0.235, 0.34, 0.1, 0.1] (1 thread): epoch 2
    best = load_checkpoint(tmp_path / BEST_CHECKPOINT_NAME)
    assert best["epoch"] == best_epoch and best["val_adv_acc"] == recomputed[best_epoch]
    assert best["weights"] == "raw"
    for name, value in snapshots[best_epoch].items():
        assert torch.equal(best["model"][name], value), name
    with pytest.raises(ValueError, match="select_best=True needs"):
        fit(model, val, epochs=1, objective=CrossEntropyObjective(), optimizer=torch.optim.SGD(model.parameters(),
            lr=0.1), select_best=True, checkpoint_dir=tmp_path / "other", verbose=False)


def test_resume_with_ema_and_selection_is_bit_identical(digits_train, tmp_path):
    model_a, ema_a, hist_a, _, _, _ = _ce_run_with_val(digits_train, tmp_path / "a", epochs=2, ema_decay=0.9)
    run_b = tmp_path / "b"
    _ce_run_with_val(digits_train, tmp_path, epochs=1, ema_decay=0.9, resume_dir=run_b)
    torch.manual_seed(1234)  # disturb the RNG; a fresh model of another init resumes from the file
    model_c, ema_c, hist_c, _, _, _ = _ce_run_with_val(digits_train, tmp_path, epochs=2, ema_decay=0.9,
                                                       resume_dir=run_b, seed=7)
    for (name, a), c in zip(model_a.state_dict().items(), model_c.state_dict().values(), strict=True):
        assert torch.equal(a, c), name
    for (name, a), c in zip(ema_a.state_dict()["module"].items(), ema_c.state_dict()["module"].values(),
                            strict=True):
        assert torch.equal(a, c), name
    assert ema_c.updates == ema_a.updates == 40
    assert hist_c[1]["val_ema_adv_acc"] == hist_a[1]["val_ema_adv_acc"] is not None
    best_a = load_checkpoint(tmp_path / "a" / BEST_CHECKPOINT_NAME)
    best_c = load_checkpoint(run_b / BEST_CHECKPOINT_NAME)
    assert best_a["weights"] == best_c["weights"] == "ema" and best_a["epoch"] == best_c["epoch"]
    # another EMA decay is another run: refused
    with pytest.raises(ConfigMismatchError, match="ema.decay"):
        _ce_run_with_val(digits_train, tmp_path, epochs=3, ema_decay=0.5, resume_dir=run_b)


def test_losses_stay_float32_under_bfloat16_autocast(digits_train):
    model, opt, loader, attack = _setup(digits_train, n=64)
    x, y = next(iter(loader))
    objective = AdversarialObjective(FIRELoss(lam=3.0), attack)
    torch.manual_seed(0)
    with autocast_context(x.device, True, torch.bfloat16):
        out = objective(model, x, y)
    assert out.logits_nat.dtype == torch.bfloat16  # the forward passes ran in bfloat16 ...
    assert out.loss.dtype == torch.float32  # ... the Fisher-Rao loss did not
    reference = FIRELoss(lam=3.0)(out.logits_nat.double(), out.logits_adv.double(), y)
    # float32 on bfloat16-rounded logits against float64 on the same logits; measured 1.1e-7 on a loss of 2.30
    assert abs(out.loss.item() - reference.item()) < 1e-5 * max(1.0, abs(reference.item()))
    hist = fit(model, loader, epochs=1, objective=objective, optimizer=opt, amp="bf16", verbose=False)
    assert hist[0]["loss"] == hist[0]["loss"]  # finite, not NaN
    with pytest.raises(ValueError, match="amp='fp16'.*CUDA"):
        fit(model, loader, epochs=1, objective=objective, optimizer=opt, amp="fp16", verbose=False)
    with pytest.raises(ValueError, match="amp='int8' is not allowed"):
        fit(model, loader, epochs=1, objective=objective, optimizer=opt, amp="int8", verbose=False)


def test_channels_last_trains_like_contiguous(digits_train, tmp_path):
    results = []
    for channels_last in (False, True):
        model, opt, loader, attack = _setup(digits_train, n=128)
        fit(model, loader, epochs=1, loss=FIRELoss(lam=1.0), attack=attack, optimizer=opt,
            channels_last=channels_last, verbose=False)
        results.append(model)
    conv = next(m for m in results[1].modules() if isinstance(m, torch.nn.Conv2d))
    assert conv.weight.is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(results[0].parameters(), results[1].parameters(), strict=True):
        # the same arithmetic in another memory layout: equal up to float32 summation order (measured 7.5e-9)
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_compile_keeps_state_dict_keys_and_trains(digits_train):
    import torch._dynamo

    torch._dynamo.reset()
    model, opt, loader, attack = _setup(digits_train, n=64)
    keys = list(model.state_dict())
    hist = fit(model, loader, epochs=1, loss=FIRELoss(lam=1.0), attack=attack, optimizer=opt, compile="eager",
               verbose=False)
    assert list(model.state_dict()) == keys and hist[0]["loss"] == hist[0]["loss"]
    assert model._compiled_call_impl is not None  # the attack and the objective called the compiled forward
    with pytest.raises(ValueError, match="compile=1"):
        fit(model, loader, epochs=1, loss=FIRELoss(lam=1.0), attack=attack, optimizer=opt, compile=1)


DDP_MIXED_SCRIPT = r'''
import os, sys, torch, timm
from torch.utils.data import DataLoader, TensorDataset
import fire_plugin
from fire_plugin.data import load_dataset, mixed_loader
from fire_plugin.engine import CrossEntropyObjective, ModelEMA, fit
torch.manual_seed(0)
x, y = load_dataset("digits", split="train").tensors
model = timm.create_model("digits_cnn", num_classes=10)
ema = ModelEMA(model, decay=0.9)
sizes = []
class Counting(CrossEntropyObjective):
    def __call__(self, model, x, y, *, targets_fn=None):
        sizes.append(len(x))
        return super().__call__(model, x, y, targets_fn=targets_fn)
loader = mixed_loader(TensorDataset(x[:200], y[:200]), TensorDataset(x[200:600], y[200:600]), batch_size=20,
                      extra_fraction=0.7, seed=0)  # 10 batches per epoch: 5 on each of 2 ranks
opt = torch.optim.SGD(model.parameters(), lr=0.05)
fit(model, loader, epochs=2, objective=Counting(), optimizer=opt, ema=ema, verbose=False)
flat = torch.cat([p.detach().flatten() for p in model.parameters()])
flat_ema = torch.cat([p.detach().flatten() for p in ema.module.parameters()])
torch.save({"w": flat, "ema": flat_ema, "sizes": sizes, "updates": ema.updates},
           os.path.join(sys.argv[1], f"rank{os.environ['RANK']}.pt"))
'''


@pytest.mark.slow
def test_ddp_mixed_loader_and_ema_two_ranks_gloo(tmp_path):
    script = tmp_path / "ddp_mixed.py"
    script.write_text(DDP_MIXED_SCRIPT)
    torchrun = Path(sys.executable).with_name("torchrun")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    subprocess.run([str(torchrun), "--nproc_per_node=2", "--standalone", str(script), str(tmp_path)], check=True,
                   env=env, timeout=600)
    r0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    r1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    assert torch.equal(r0["w"], r1["w"]) and torch.equal(r0["ema"], r1["ema"])
    assert r0["sizes"] == r1["sizes"] == [20] * 10  # whole mixed batches, every 2nd batch per rank, 2 epochs
    assert r0["updates"] == 10


@pytest.mark.slow
def test_compile_with_inductor_on_cpu(digits_train):
    """The default torch.compile backend (inductor, C++ codegen on CPU) on the digits CNN: same training as eager
    up to float32 rounding (measured: largest difference 7.5e-9 after one epoch; 72 s on 1 thread, mostly compiling)."""
    import torch._dynamo

    results = []
    for compile_ in (False, True):
        torch._dynamo.reset()
        model, opt, loader, attack = _setup(digits_train, n=128)
        fit(model, loader, epochs=1, loss=FIRELoss(lam=1.0), attack=attack, optimizer=opt, compile=compile_,
            verbose=False)
        results.append(model)
    for a, b in zip(results[0].parameters(), results[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------------------------- refused inputs


def test_model_ema_refuses_what_it_silently_took():
    from fire_plugin.engine import ModelEMA

    model = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match=r"warmup='no' is not allowed; allowed: True or False"):
        ModelEMA(model, warmup="no")  # was bool("no") = True
    with pytest.raises(ValueError, match=r"model must be the torch.nn.Module to average, got NoneType"):
        ModelEMA(None)  # was AttributeError: 'NoneType' object has no attribute 'eval'
    ema = ModelEMA(model)
    with pytest.raises(ValueError, match=r"an EMA state needs the keys \['module', 'updates', 'decay', 'warmup'\]"):
        ema.load_state_dict({})  # was KeyError: 'decay'
    state = ema.state_dict()
    with pytest.raises(ValueError, match=r"'updates' must be an int >= 0.*got -5"):
        ema.load_state_dict({**state, "updates": -5})  # was a negative decay (1 - 5) / (10 - 5) = -0.8
    ema.load_state_dict(state)
    assert 0 < ema.current_decay() < 1


def test_fit_refuses_an_ema_of_another_model():
    from fire_plugin.engine import CrossEntropyObjective, ModelEMA

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    loader = DataLoader(TensorDataset(torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))), batch_size=4)
    other = ModelEMA(torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 3)))
    with pytest.raises(ValueError, match=r"ema is a ModelEMA of another model .*ema=ModelEMA\(model\)"):
        fit(model, loader, epochs=1, objective=CrossEntropyObjective(), verbose=False, ema=other,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


def test_fit_refuses_a_loader_without_batches():
    """An empty dataset trained nothing and reported loss 0, accuracy 0."""
    from fire_plugin.engine import CrossEntropyObjective

    model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
    empty = DataLoader(TensorDataset(torch.rand(0, 1, 8, 8), torch.zeros(0, dtype=torch.long)), batch_size=4)
    with pytest.raises(ValueError, match=r"yielded no batch in epoch 1"):
        fit(model, empty, epochs=1, objective=CrossEntropyObjective(), verbose=False,
            optimizer=torch.optim.SGD(model.parameters(), lr=0.1))


class _Hostile:
    def __reduce__(self):
        return (os.system, ("true",))


def test_a_hostile_pickle_is_named_as_code_and_unsafe_loading_is_never_advised(tmp_path):
    """torch 2.14 writes 'Unsupported GLOBAL'; the file was called corrupt, with torch's weights_only=False advice."""
    torch.save({"x": _Hostile()}, tmp_path / "hostile.pt")
    with pytest.raises(ValueError, match=r"loading it could run code") as info:
        load_checkpoint(tmp_path / "hostile.pt")
    assert "weights_only" not in str(info.value) and "posix.system" in str(info.value)
    (tmp_path / "junk.pt").write_bytes(bytes(range(256)) * 4)
    with pytest.raises(ValueError, match=r"junk\.pt' is corrupt") as info:
        load_checkpoint(tmp_path / "junk.pt")
    assert "weights_only" not in str(info.value)
    with pytest.raises(ValueError, match=r"^inputs file .*junk\.pt' is corrupt"):
        load_checkpoint(tmp_path / "junk.pt", what="inputs file")

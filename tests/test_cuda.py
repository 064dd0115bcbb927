"""The CUDA paths: distances under autocast, attacks, ``engine.fit`` fast paths, DDP (nccl), margins, isometry.

Every test is marked ``cuda`` and skipped without a CUDA device (``pytest -m cuda`` selects them). With
``FIRE_PLUGIN_CUDA_TESTS_ON_CPU=1`` they run on the CPU instead, as a dry run of the test code
(``benchmarks/gpu_check.py --dry-run`` does this); the parts that need CUDA (float16 training with a GradScaler,
nccl, compile) are then skipped, and the CUDA-vs-CPU comparisons compare the CPU with itself.

TF32 is switched off in these tests, so that float32 on CUDA is float32. The tolerances were sized on the CPU
(no GPU was lent to the task that wrote them): each comment gives the CPU measurement used as the proxy of the
CUDA error (float32 against float64 on the same inputs), and the margin left.
"""

from __future__ import annotations

import copy
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fire_plugin.data import load_dataset
from fire_plugin.distances import bhattacharyya, fisher_rao, fisher_rao_squared, hellinger_squared, kl_divergence

ON_CPU = os.environ.get("FIRE_PLUGIN_CUDA_TESTS_ON_CPU") == "1"
ROOT = Path(__file__).resolve().parents[1]

pytestmark = [
    pytest.mark.cuda,
    pytest.mark.skipif(not torch.cuda.is_available() and not ON_CPU, reason="needs a CUDA device"),
]


@pytest.fixture()
def dev():  # type: ignore[no-untyped-def]
    """The device under test (CUDA; the CPU in the dry run), TF32 off for the test's duration."""
    matmul, cudnn = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
    torch.backends.cuda.matmul.allow_tf32 = False
    torch.backends.cudnn.allow_tf32 = False
    yield torch.device("cpu") if ON_CPU and not torch.cuda.is_available() else torch.device("cuda")
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = matmul, cudnn


def _needs_cuda(dev: torch.device, what: str) -> None:
    if dev.type != "cuda":
        pytest.skip(f"{what} needs CUDA (dry run on the CPU)")


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    x, y = load_dataset("digits", split="train").tensors  # type: ignore[attr-defined]
    return x.clone(), y.clone()


@pytest.fixture(scope="module")
def trained(digits, train_digits_cnn):  # type: ignore[no-untyped-def]
    """A DigitsCNN trained 3 epochs on the CPU (eval mode, float32)."""
    x, y = digits
    return train_digits_cnn(x[:600], y[:600], epochs=3)


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.detach().double().cpu(), b.detach().double().cpu()
    return float((a - b).norm() / b.norm())


# ------------------------------------------------------------------------------------------ distances


@pytest.mark.parametrize(("dtype", "tol"), [(torch.float16, 4e-3), (torch.bfloat16, 8e-3)])
@pytest.mark.parametrize("scale", [1.0, 1e-2])  # far apart, and near equality (where cancellation bites)
def test_divergences_and_gradients_under_autocast_match_float64(dev, dtype, tol, scale):
    # The divergences compute in float32 from half inputs and return the input dtype, so the error is the final
    # rounding: measured on the CPU (same code), at most 9.3e-4 (fp16) and 1.8e-3 (bf16) for values and gradients,
    # relative in norm; the tolerances leave 4x.
    if dev.type == "cpu" and dtype == torch.float16:
        pytest.skip("float16 autocast of nn.Linear is a CUDA feature here")
    gen = torch.Generator().manual_seed(0)
    layer = torch.nn.Linear(32, 10).to(dev)
    feats = torch.randn(512, 32, generator=gen).to(dev)
    shift = scale * torch.randn(512, 32, generator=gen).to(dev)
    for fn in (fisher_rao, fisher_rao_squared, kl_divergence, hellinger_squared, bhattacharyya):
        with torch.autocast(dev.type, dtype=dtype):
            nat = layer(feats)
            adv = layer(feats + shift)
            assert nat.dtype == dtype  # the logits really are half precision
            adv.retain_grad()
            value = fn(nat, adv)
        assert value.dtype == dtype and torch.isfinite(value).all()
        value.float().sum().backward()
        nat64 = nat.detach().double().cpu()
        adv64 = adv.detach().double().cpu().requires_grad_(True)
        ref = fn(nat64, adv64)
        (grad_ref,) = torch.autograd.grad(ref.sum(), adv64)
        assert _rel(value, ref) <= tol, (fn.__name__, _rel(value, ref))
        assert _rel(adv.grad, grad_ref) <= tol, (fn.__name__, _rel(adv.grad, grad_ref))
        layer.zero_grad()


# ------------------------------------------------------------------------------------------ attacks


@pytest.mark.parametrize(("name", "eps", "alpha"), [("FRPGD", 0.1, 0.025), ("FRPGDL2", 1.0, 0.25)])
def test_attack_on_cuda_matches_the_same_attack_on_cpu(dev, trained, digits, monkeypatch, name, eps, alpha):
    # Same weights, same start (the random start's noise drawn once on the CPU), same 10 steps. Proxy, CPU float32
    # vs float64 on these inputs: FRPGD max pixel difference 1.7e-6 eps, mean d^2 relative 1.3e-7; FRPGDL2 max
    # pixel difference 5.0e-3 eps, mean d^2 relative 1.5e-5; predictions on the adversarial images all equal.
    import fire_plugin.attacks as attacks

    x, y = digits
    xt, yt = x[600:728], y[600:728]
    noise = torch.randn(xt.shape, generator=torch.Generator().manual_seed(0))
    calls = []

    def fixed_noise(t: torch.Tensor, **kwargs: object) -> torch.Tensor:
        calls.append(t.device.type)
        return noise.to(t.device, t.dtype)

    monkeypatch.setattr(torch, "randn_like", fixed_noise)
    cls = getattr(attacks, name)
    on_cpu = cls(trained, eps=eps, alpha=alpha, steps=10)(xt, yt)
    model_dev = copy.deepcopy(trained).to(dev)
    on_dev = cls(model_dev, eps=eps, alpha=alpha, steps=10)(xt.to(dev), yt.to(dev))
    assert on_dev.device.type == dev.type and calls == ["cpu", dev.type]
    diff = (on_dev.cpu() - on_cpu).abs()
    assert float(diff.mean()) <= 0.02 * eps, float(diff.mean()) / eps
    with torch.no_grad():
        m64 = copy.deepcopy(trained).double()
        nat = m64(xt.double())
        d_cpu = fisher_rao_squared(nat, m64(on_cpu.double())).mean()
        d_dev = fisher_rao_squared(nat, m64(on_dev.cpu().double())).mean()
        agree = (m64(on_cpu.double()).argmax(1) == m64(on_dev.cpu().double()).argmax(1)).double().mean()
    assert abs(float(d_dev / d_cpu) - 1) <= 1e-3
    assert float(agree) >= 0.97


# ------------------------------------------------------------------------------------------ engine.fit


def _fit_setup(x: torch.Tensor, y: torch.Tensor, dev: torch.device, *, n: int = 512, seed: int = 0):  # type: ignore[no-untyped-def]
    import timm

    import fire_plugin.models  # noqa: F401  (registers digits_cnn)
    from fire_plugin.attacks import FRPGD
    from fire_plugin.engine import AdversarialObjective
    from fire_plugin.losses import FIRELoss

    torch.manual_seed(seed)
    model = timm.create_model("digits_cnn", num_classes=10).to(dev)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(x[:n], y[:n]), batch_size=64, shuffle=True,
                        generator=torch.Generator().manual_seed(seed), pin_memory=dev.type == "cuda")
    objective = AdversarialObjective(FIRELoss(lam=1.0), FRPGD(model, eps=0.1, alpha=0.05, steps=3))
    return model, opt, loader, objective


@pytest.mark.parametrize("amp", ["bf16", "fp16"])
def test_fit_mixed_precision_channels_last_pinned(dev, digits, monkeypatch, amp):
    # Autocast must really run (the conv outputs are half) with channels-last batches from a pinned loader, fp16 with
    # a GradScaler, and train as well as float32: on the CPU float32 reaches a training accuracy of about 0.9 in
    # 3 epochs here; mixed precision must land within 0.1 of the float32 run of the same seed on the same device.
    from fire_plugin.engine import fit

    if amp == "fp16":
        _needs_cuda(dev, "float16 training with a GradScaler")
    x, y = digits
    scaled = []
    real_scale = torch.amp.GradScaler.scale
    monkeypatch.setattr(torch.amp.GradScaler, "scale",
                        lambda self, outputs: scaled.append(1) or real_scale(self, outputs))
    results = {}
    for mode in ("off", amp):
        model, opt, loader, objective = _fit_setup(x, y, dev)
        seen: dict[str, set] = {"dtype": set(), "channels_last": set()}
        conv = next(m for m in model.modules() if isinstance(m, torch.nn.Conv2d))

        def conv_hook(mod, inp, out, seen=seen):  # type: ignore[no-untyped-def]
            if mod.training:
                seen["dtype"].add(out.dtype)

        def input_hook(mod, inp, seen=seen):  # type: ignore[no-untyped-def]
            if mod.training:
                seen["channels_last"].add(inp[0].is_contiguous(memory_format=torch.channels_last))

        conv.register_forward_hook(conv_hook)
        model.register_forward_pre_hook(input_hook)
        hist = fit(model, loader, epochs=3, objective=objective, optimizer=opt, amp=mode, channels_last=True,
                   verbose=False)
        results[mode] = (hist, seen)
    hist, seen = results[amp]
    want = torch.bfloat16 if amp == "bf16" else torch.float16
    assert seen["dtype"] == {want}, seen
    assert results["off"][1]["dtype"] == {torch.float32}
    assert seen["channels_last"] == {True}
    assert (len(scaled) > 0) == (amp == "fp16")  # the GradScaler is used exactly for float16
    assert all(np.isfinite(h["loss"]) for h in hist)
    assert hist[-1]["nat_acc"] >= results["off"][0][-1]["nat_acc"] - 0.1, (hist[-1], results["off"][0][-1])


def test_fit_compile_matches_eager_on_cuda(dev, digits):
    # On the CPU, inductor against eager after one epoch: largest parameter difference 7.5e-9 (test_engine's slow
    # test). CUDA kernels fuse differently; atol 1e-4 and rtol 1e-3 leave four orders of magnitude.
    import torch._dynamo

    from fire_plugin.engine import fit

    _needs_cuda(dev, "torch.compile (72 s on the CPU; test_engine has the CPU test)")
    x, y = digits
    models = []
    for compile_ in (False, True):
        torch._dynamo.reset()
        model, opt, loader, objective = _fit_setup(x, y, dev, n=256)
        fit(model, loader, epochs=1, objective=objective, optimizer=opt, compile=compile_, amp="off",
            cudnn_benchmark=False, verbose=False)
        models.append(model)
    for a, b in zip(models[0].parameters(), models[1].parameters(), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-3, atol=1e-4)


def test_ema_on_cuda_follows_its_formula(dev):
    # float32 EMA updates on the device against the same recursion in float64 on the CPU: 20 updates of a relative
    # rounding of 6e-8 each stay far below 1e-6.
    from fire_plugin.engine import ModelEMA

    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(8, 8), torch.nn.BatchNorm1d(8)).to(dev)
    ema = ModelEMA(model, decay=0.9, warmup=True)
    ref = [p.detach().double().cpu().clone() for p in model.parameters()]
    for t in range(20):
        with torch.no_grad():
            for p in model.parameters():
                p.add_(torch.randn(p.shape, generator=torch.Generator().manual_seed(t)).to(dev))
            model[1].running_mean.fill_(float(t))
        decay = min(0.9, (1.0 + t) / (10.0 + t))
        ema.update(model)
        ref = [decay * r + (1 - decay) * p.detach().double().cpu()
               for r, p in zip(ref, model.parameters(), strict=True)]
    for e, r in zip(ema.module.parameters(), ref, strict=True):
        assert e.device.type == dev.type
        torch.testing.assert_close(e.detach().double().cpu(), r, rtol=1e-6, atol=1e-7)
    assert float(ema.module[1].running_mean[0]) == 19.0  # buffers are copied, not averaged


RESUME_SCRIPT = r'''
import os, sys, torch
sys.path.insert(0, sys.argv[2])
from torch.utils.data import DataLoader, TensorDataset
import timm
import fire_plugin.models
from fire_plugin.attacks import FRPGD
from fire_plugin.data import load_dataset
from fire_plugin.engine import AdversarialObjective, ModelEMA, fit
from fire_plugin.losses import FIRELoss
torch.use_deterministic_algorithms(True)
torch.backends.cudnn.benchmark = False
dev = torch.device(sys.argv[3])
x, y = load_dataset("digits", split="train").tensors
def run(out, epochs_list):
    torch.manual_seed(0)
    model = timm.create_model("digits_cnn", num_classes=10).to(dev)
    ema = ModelEMA(model, decay=0.9)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    loader = DataLoader(TensorDataset(x[:128], y[:128]), batch_size=32, shuffle=True,
                        generator=torch.Generator().manual_seed(0))
    for epochs in epochs_list:  # a fresh objective and attack for each call, as a restarted process has
        objective = AdversarialObjective(FIRELoss(lam=1.0), FRPGD(model, eps=0.1, alpha=0.05, steps=3))
        fit(model, loader, epochs=epochs, objective=objective, optimizer=opt, ema=ema, checkpoint_dir=out,
            amp="bf16" if dev.type == "cuda" else "off", cudnn_benchmark=False, verbose=False)
    return [p.detach().cpu() for p in model.parameters()] + [p.detach().cpu() for p in ema.module.parameters()]
a = run(os.path.join(sys.argv[1], "straight"), [2])
b = run(os.path.join(sys.argv[1], "resumed"), [1, 2])
print("identical" if all(torch.equal(s, t) for s, t in zip(a, b)) else "different")
'''


def test_resume_is_bit_identical_on_cuda(dev, tmp_path):
    # The same computation repeated (deterministic algorithms on): two epochs in one go and one epoch plus a resumed
    # one must give the same bits, EMA included, with bf16 autocast and the attack's random start on the device.
    script = tmp_path / "resume.py"
    script.write_text(RESUME_SCRIPT)
    env = {**os.environ, "CUBLAS_WORKSPACE_CONFIG": ":4096:8", "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(script), str(tmp_path), str(ROOT), dev.type], capture_output=True,
                          text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip().splitlines()[-1] == "identical"


DDP_SCRIPT = r'''
import os, socket, sys, torch
sys.path.insert(0, sys.argv[1])
import torch.distributed as dist
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
import timm
import fire_plugin.models
from fire_plugin import engine
from fire_plugin.engine import CrossEntropyObjective, DistInfo, fit
from fire_plugin.data import load_dataset

class OneRank(DistInfo):  # torchrun with one process: the DDP code path (world size 1 does not take it alone)
    @property
    def enabled(self):
        return True

for name, module in list(sys.modules.items()):  # wherever the engine's modules look the launch up
    if name.startswith("fire_plugin") and hasattr(module, "distributed_info"):
        module.distributed_info = lambda: OneRank(world_size=1, rank=0, local_rank=0)
with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port), RANK="0", WORLD_SIZE="1", LOCAL_RANK="0")
wrapped = []
class CountingDDP(nn.parallel.DistributedDataParallel):
    def __init__(self, *args, **kwargs):
        wrapped.append(kwargs.get("device_ids"))
        super().__init__(*args, **kwargs)
nn.parallel.DistributedDataParallel = CountingDDP
x, y = load_dataset("digits", split="train").tensors
weights = []
for ddp in (True, False):
    torch.manual_seed(0)
    model = timm.create_model("digits_cnn", num_classes=10).cuda()
    opt = torch.optim.SGD(model.parameters(), lr=0.05)
    loader = DataLoader(TensorDataset(x[:256], y[:256]), batch_size=64, shuffle=False)
    if not ddp:
        for name, module in list(sys.modules.items()):
            if name.startswith("fire_plugin") and hasattr(module, "distributed_info"):
                module.distributed_info = lambda: DistInfo(world_size=1, rank=0, local_rank=0)
    hist = fit(model, loader, epochs=1, objective=CrossEntropyObjective(), optimizer=opt, amp="off",
               cudnn_benchmark=False, verbose=False)
    if ddp:
        assert dist.is_initialized() and dist.get_backend() == "nccl", dist.get_backend()
    weights.append(torch.cat([p.detach().flatten().cpu() for p in model.parameters()]))
assert wrapped == [[0]], wrapped
diff = float((weights[0] - weights[1]).abs().max())
print(f"nccl ok {diff:.3e}")
dist.destroy_process_group()
'''


def test_ddp_nccl_one_process(dev, tmp_path):
    # One process is enough to run fit's DDP path on nccl (init, wrap, sharded sampler, all-reduced statistics,
    # barrier); with one rank the all-reduce averages one gradient, so the weights equal those of the plain run up
    # to float32 rounding (1e-5 leaves room for cuDNN's algorithm choice).
    _needs_cuda(dev, "the nccl backend")
    script = tmp_path / "ddp.py"
    script.write_text(DDP_SCRIPT)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONWARNINGS": "ignore"}
    done = subprocess.run([sys.executable, str(script), str(ROOT)], capture_output=True, text=True, env=env,
                          timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    last = done.stdout.strip().splitlines()[-1]
    assert last.startswith("nccl ok") and float(last.split()[-1]) <= 1e-5, last


# ------------------------------------------------------------------------------------------ margins, isometry


@pytest.mark.parametrize("solver", ["exact", "cg"])
def test_margins_on_cuda_match_cpu(dev, trained, digits, solver):
    # Proxy, CPU float32 vs float64 on these 8 inputs (72 paths, about 11 steps each): statuses and first classes
    # all equal; FR lengths relative difference, median 1.8e-7 (exact) and 2.7e-5 (cg), largest 1.0e-6 (exact) and
    # 1.4e-4 (cg). On 16 inputs one CG path differed by 4.4e-2 (CG's truncation amplifies along a path), hence the
    # tolerances: median 1e-3 for both, largest 1e-3 for exact and 0.1 for cg.
    from fire_plugin.margins import trace_margins

    x, y = digits
    xt, yt = x[600:608], y[600:608]
    ref = trace_margins(trained, xt, yt, solver=solver, max_steps=100, verbose=False)
    got = trace_margins(copy.deepcopy(trained).to(dev), xt.to(dev), yt.to(dev), solver=solver, max_steps=100,
                        verbose=False)
    assert np.mean(np.asarray(got.flipped) == np.asarray(ref.flipped)) >= 0.95
    assert np.mean(np.asarray(got.first_class) == np.asarray(ref.first_class)) >= 0.95
    a, b = np.asarray(got.fr_length, dtype=float), np.asarray(ref.fr_length, dtype=float)
    rel = np.abs(a - b) / np.maximum(np.abs(b), 1e-9)
    assert np.median(rel) <= 1e-3, np.median(rel)
    assert rel.max() <= (1e-3 if solver == "exact" else 0.1), rel.max()


def test_isometry_estimators_on_cuda_match_cpu(dev, trained, digits):
    # Proxy, CPU float32 vs float64: Jacobian 1.8e-7, exact penalty 1.8e-6 (relative); tolerances 1e-5 and 1e-4.
    # Hutchinson with 64 probes (drawn on the device) against the exact value: 1.3e-3 on the CPU, one seed; its
    # standard error is about 1% here, so 0.05 is five of them.
    from fire_plugin.isometry import delta_m, isometry_jacobian, partial_isometry_penalty

    x, _ = digits
    xt = x[600:616]
    eps = delta_m(10)
    model = copy.deepcopy(trained).to(dev)
    assert _rel(isometry_jacobian(model, xt.to(dev)), isometry_jacobian(trained, xt)) <= 1e-5
    exact_cpu = partial_isometry_penalty(trained, xt, epsilon=eps)
    exact_dev = partial_isometry_penalty(model, xt.to(dev), epsilon=eps)
    assert exact_dev.device.type == dev.type
    assert abs(float(exact_dev.detach()) / float(exact_cpu.detach()) - 1) <= 1e-4
    torch.manual_seed(0)
    hutch = partial_isometry_penalty(model, xt.to(dev), epsilon=eps, estimator="hutchinson", n_probes=64)
    assert abs(float(hutch.detach()) / float(exact_cpu.detach()) - 1) <= 0.05
    penalty = partial_isometry_penalty(model, xt.to(dev), epsilon=eps)  # trained: gradients reach the weights
    penalty.backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

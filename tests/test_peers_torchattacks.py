"""torchattacks' own code run on our attacks: its wrappers, its save/load utilities, its setters, its call order.

The patterns follow torchattacks' own coverage test (code_coverage/test_atks.py of
Harry24k/adversarial-attacks-pytorch): build every attack of ``__all__`` from the model alone, run it under
``torch.no_grad()``, compare robust and clean accuracy, and try targeted mode only where ``supported_mode`` says so.
A small CNN trained on sklearn's digits for a fraction of a second keeps the file fast.
"""

from __future__ import annotations

import copy
import inspect

import pytest
import torch
import torch.nn.functional as F
import torchattacks
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchattacks.attack import Attack

from fire_plugin import attacks
from fire_plugin.attacks import FRPGD, FRPGDL2, DivergencePGD

EPS, ALPHA, STEPS = 0.1, 0.02, 5
TOL = 1e-6


@pytest.fixture(scope="module")
def model(digits_train: tuple[torch.Tensor, torch.Tensor]) -> nn.Sequential:
    x, y = digits_train
    gen = torch.Generator().manual_seed(0)
    with torch.random.fork_rng():
        torch.manual_seed(0)
        net = nn.Sequential(
            nn.Conv2d(1, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
            nn.Dropout(0.1), nn.Linear(8 * 4 * 4, 10),
        )
        opt = torch.optim.Adam(net.parameters(), lr=1e-2)
        for _ in range(100):
            idx = torch.randint(0, len(x), (128,), generator=gen)
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    return net.eval()


@pytest.fixture(scope="module")
def batch(digits_test: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    x, y = digits_test
    return x[:64].clone(), y[:64].clone()


def _accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).float().mean().item()


def _linf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).flatten(1).abs().amax(dim=1)


# ----------------------------------------------------------------------------------------------------------------
# torchattacks' coverage pattern


BUDGETS = {"DivergencePGD": (0.1, 0.02, 10), "FRPGD": (0.1, 0.02, 10), "FRPGDL2": (1.0, 0.2, 10)}  # for 8x8 digits


@pytest.mark.parametrize("name", attacks.__all__)
def test_every_attack_of_all_built_from_the_model_alone(model, batch, name):
    """torchattacks asserts clean_acc >= robust_acc on all samples. A label-free attack may push a misclassified
    sample to its true class (measured here with FRPGD at 8/255: 0.984 robust > 0.969 clean on these 64 digits),
    so, as our evaluation does, the attack runs on the correctly classified samples."""
    x, y = batch
    with torch.no_grad():
        correct = model(x).argmax(1) == y
    assert correct.float().mean() > 0.8  # the model is trained
    x, y = x[correct], y[correct]
    atk = getattr(attacks, name)(model)  # as torchattacks' test: eval("torchattacks." + name)(model)
    torch.manual_seed(0)
    with torch.no_grad():  # torchattacks' test runs under no_grad; the attack must enable gradients itself
        adv = atk(x, y)
    assert adv.shape == x.shape and adv.dtype == x.dtype
    assert (_linf(adv, x) if atk.norm == "Linf" else (adv - x).flatten(1).norm(dim=1)).max() <= atk.eps + TOL
    assert "targeted" not in atk.supported_mode  # so torchattacks' test does not try targeted mode
    # the default budgets (8/255, L2 0.5) are for CIFAR; a digits-sized one, positional, fools some digits
    strong = getattr(attacks, name)(model, *BUDGETS[name])
    torch.manual_seed(0)
    with torch.no_grad():
        assert _accuracy(model, strong(x, y), y) < 0.9  # measured: 0.63 (Linf 0.1), 0.32 (L2 1.0)


# ----------------------------------------------------------------------------------------------------------------
# positional order of torchattacks.PGD / PGDL2


@pytest.mark.parametrize(("ours", "peer"), [(FRPGD, torchattacks.PGD), (FRPGDL2, torchattacks.PGDL2)])
def test_signature_follows_the_peer(ours, peer):
    ours_params = list(inspect.signature(ours.__init__).parameters.values())[1:]
    peer_params = list(inspect.signature(peer.__init__).parameters.values())[1:]
    assert [p.name for p in ours_params] == [p.name for p in peer_params]
    assert all(p.kind == p.POSITIONAL_OR_KEYWORD for p in ours_params)
    # DivergencePGD: the same positional head, then keyword-only choices
    head = [p.name for p in list(inspect.signature(DivergencePGD.__init__).parameters.values())[1:6]]
    assert head == [p.name for p in inspect.signature(torchattacks.PGD.__init__).parameters.values()][1:6]


@pytest.mark.parametrize(
    ("ours", "peer", "args"),
    [
        (FRPGD, torchattacks.PGD, (EPS, ALPHA, STEPS, False)),
        (FRPGDL2, torchattacks.PGDL2, (0.5, 0.1, STEPS, True, 1e-3)),
    ],
)
def test_the_peers_positional_call_means_the_same(model, ours, peer, args):
    atk, ref = ours(model, *args), peer(model, *args)
    names = ["eps", "alpha", "steps", "random_start", "eps_for_division"][: len(args)]
    assert [getattr(atk, n) for n in names] == [getattr(ref, n) for n in names]


# ----------------------------------------------------------------------------------------------------------------
# wrappers and utilities


def test_multiattack_with_positional_pgd(model, batch):
    x, y = batch
    frpgd = FRPGD(model, EPS, ALPHA, STEPS)
    pgd = torchattacks.PGD(model, EPS, ALPHA, STEPS)
    multi = torchattacks.MultiAttack([frpgd, pgd])
    torch.manual_seed(0)
    adv = multi(x, y)
    assert adv.shape == x.shape and _linf(adv, x).max() <= EPS + TOL and adv.min() >= 0 and adv.max() <= 1
    torch.manual_seed(0)
    first = frpgd(x, y)  # MultiAttack runs FRPGD first on all samples with the same random draws
    fooled_first = (model(first).argmax(1) != y).detach()
    fooled_multi = (model(adv).argmax(1) != y).detach()
    assert fooled_first.any()
    assert (fooled_multi | ~fooled_first).all()  # every sample FRPGD fooled stays fooled
    assert fooled_multi.sum() >= fooled_first.sum()


def test_multiattack_setters_reach_our_attack(model, batch):
    """torchattacks' wrapper_method forwards setters to the sub-attacks: here set_normalization_used(mean, std)."""
    x, y = batch
    normalized = nn.Sequential(_Denormalize(0.25, 0.5), model).eval()  # takes (x - 0.25) / 0.5
    # (eval: MultiAttack, torchattacks' own __call__, puts a model it found in train mode back in train mode)
    frpgd, pgd = FRPGD(normalized, EPS, ALPHA, STEPS), torchattacks.PGD(normalized, EPS, ALPHA, STEPS)
    multi = torchattacks.MultiAttack([frpgd, pgd])
    multi.set_normalization_used([0.25], [0.5])  # positional, as torchattacks' signature (mean, std)
    assert frpgd.normalization_used is not None and frpgd._normalization_applied is True
    torch.manual_seed(0)
    adv = multi((x - 0.25) / 0.5, y) * 0.5 + 0.25  # normalized in, normalized out
    assert _linf(adv, x).max() <= EPS + TOL and adv.min() >= -TOL and adv.max() <= 1 + TOL
    assert frpgd._normalization_applied is True  # still treats inputs as normalized after the call
    torch.manual_seed(0)
    alone = frpgd((x - 0.25) / 0.5, y) * 0.5 + 0.25
    fooled_alone = model(alone).argmax(1) != y
    assert fooled_alone.any() and (model(adv).argmax(1) != y)[fooled_alone].all()


class _Denormalize(nn.Module):
    def __init__(self, mean: float, std: float) -> None:
        super().__init__()
        self.mean, self.std = mean, std

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.std + self.mean


@pytest.mark.parametrize("save_type", ["float", "int"])
def test_save_and_load(model, batch, tmp_path, save_type, capsys):
    """Attack.save(data_loader, save_path, verbose, return_verbose, ...) and Attack.load(load_path, batch_size, ...)."""
    x, y = batch
    loader = DataLoader(TensorDataset(x, y), batch_size=32)
    atk = FRPGD(model, EPS, ALPHA, STEPS)
    path = tmp_path / "adv.pt"
    torch.manual_seed(0)
    rob_acc, l2, _ = atk.save(loader, str(path), False, True, save_type=save_type)  # positional, as the peer's
    torch.manual_seed(0)
    expected = torch.cat([atk(xb, yb) for xb, yb in loader])
    assert rob_acc == pytest.approx(100 * _accuracy(model, expected, y))  # torchattacks reports percents
    assert l2 > 0
    loaded = Attack.load(str(path), 16)  # (load_path, batch_size)
    adv, labels = (torch.cat(t) for t in zip(*loaded, strict=True))
    assert torch.equal(labels, y)
    if save_type == "float":
        assert torch.equal(adv, expected)
    else:  # uint8 round trip: within one grey level
        assert (adv - expected).abs().max() <= 1 / 255 + TOL
    assert _linf(adv, x).max() <= EPS + 1 / 255 + TOL
    capsys.readouterr()  # torchattacks prints the load order


def test_set_model_training_mode(model, batch):
    """The modes torchattacks sets during an attack are the ones PGD sees; ours restores the model afterwards."""
    x, y = batch
    model = copy.deepcopy(model)  # torchattacks.PGD leaves an eval model in train mode after this setter
    seen: dict[str, list[tuple[bool, bool, bool]]] = {}
    bn, dropout = model[1], model[5]

    def record(key: str):
        def hook(module: nn.Module, inputs: object, output: object) -> None:
            seen.setdefault(key, []).append((model.training, bn.training, dropout.training))

        return hook

    for key, atk in (("ours", FRPGD(model, EPS, ALPHA, 2)), ("peer", torchattacks.PGD(model, EPS, ALPHA, 2))):
        atk.set_model_training_mode(True, False, True)  # (model_training, batchnorm_training, dropout_training)
        handle = model[0].register_forward_hook(record(key))
        try:
            model.eval()
            atk(x, y)
            if key == "ours":
                assert not model.training and not bn.training and not dropout.training  # restored
        finally:
            handle.remove()
    assert set(seen["ours"]) == set(seen["peer"]) == {(True, False, True)}

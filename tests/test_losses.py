"""The adversarial loss family against hand-written float64 references."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from fire_plugin.losses import (
    ACELoss,
    DivergenceRegularizedLoss,
    FIRELoss,
    HellingerLoss,
    MARTLoss,
    TRADESLoss,
)


@pytest.fixture()
def batch():
    g = torch.Generator().manual_seed(0)
    nat = torch.randn(16, 10, generator=g, dtype=torch.float64) * 2
    adv = nat + torch.randn(16, 10, generator=g, dtype=torch.float64)
    y = torch.randint(0, 10, (16,), generator=g)
    return nat, adv, y


def _bc(nat, adv):
    return (F.softmax(nat, -1) * F.softmax(adv, -1)).sqrt().sum(-1)


def test_fire_equals_eq7(batch):
    nat, adv, y = batch
    lam = 2.5
    d = 2 * torch.acos(_bc(nat, adv))
    expected = F.cross_entropy(nat, y) + lam * (d**2).mean()
    torch.testing.assert_close(FIRELoss(lam=lam)(nat, adv, y), expected, rtol=1e-10, atol=1e-12)


def test_code_beta_convention(batch):
    """The authors' code: CE + beta * arccos(BC)^2 equals FIRE with lam = beta / 4."""
    nat, adv, y = batch
    beta = 6.0
    code = F.cross_entropy(nat, y) + beta * (torch.acos(_bc(nat, adv)) ** 2).mean()
    torch.testing.assert_close(FIRELoss.from_code_beta(beta)(nat, adv, y), code, rtol=1e-10, atol=1e-12)
    assert FIRELoss.from_code_beta(beta).lam == 1.5


def test_trades_equals_kl_div(batch):
    nat, adv, y = batch
    kl = F.kl_div(F.log_softmax(adv, -1), F.softmax(nat, -1), reduction="batchmean")
    expected = F.cross_entropy(nat, y) + 6.0 * kl
    torch.testing.assert_close(TRADESLoss(beta=6.0)(nat, adv, y), expected, rtol=1e-10, atol=1e-12)


def test_hellinger_eq48(batch):
    nat, adv, y = batch
    expected = F.cross_entropy(nat, y) + 3.0 * (2 * (1 - _bc(nat, adv))).mean()
    torch.testing.assert_close(HellingerLoss(lam=3.0)(nat, adv, y), expected, rtol=1e-10, atol=1e-12)


def test_ace_and_mart(batch):
    nat, adv, y = batch
    torch.testing.assert_close(ACELoss()(nat, adv, y), F.cross_entropy(adv, y))
    p_adv = F.softmax(adv, -1)
    other = p_adv.clone()
    other[torch.arange(16), y] = 0
    bce = F.cross_entropy(adv, y) + (-torch.log(1.0001 - other.max(-1).values)).mean()
    p_nat = F.softmax(nat, -1)
    kl = (p_nat * (F.log_softmax(nat, -1) - F.log_softmax(adv, -1))).sum(-1)
    expected = bce + 5.0 * (kl * (1 - p_nat[torch.arange(16), y])).mean()
    torch.testing.assert_close(MARTLoss(beta=5.0)(nat, adv, y), expected, rtol=1e-10, atol=1e-12)


def test_soft_targets_match_index_labels(batch):
    nat, adv, y = batch
    onehot = F.one_hot(y, 10).double()
    loss = FIRELoss(lam=1.0)
    torch.testing.assert_close(loss(nat, adv, y), loss(nat, adv, onehot))


def test_gradient_finite_at_equality():
    nat = torch.randn(8, 10, requires_grad=True)
    y = torch.randint(0, 10, (8,))
    for loss in (FIRELoss(), TRADESLoss(), HellingerLoss()):
        nat.grad = None
        loss(nat, nat, y).backward()
        assert torch.isfinite(nat.grad).all()


def test_bad_weights_raise():
    with pytest.raises(ValueError, match="lam"):
        FIRELoss(lam=-1.0)
    with pytest.raises(ValueError, match="beta"):
        TRADESLoss(beta=float("nan"))
    with pytest.raises(ValueError, match="divergence must be one of"):
        DivergenceRegularizedLoss("l2", 1.0)

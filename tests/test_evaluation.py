"""Tests of fire_plugin.evaluation on a digits CNN trained in a few seconds."""

from __future__ import annotations

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from fire_plugin.evaluation import AUTOATTACK_STANDARD, EvalResult, evaluate
from fire_plugin.models import DigitsCNN

EPS = 0.1
QUICK_AA = ("apgd-ce", "apgd-t")  # standard settings, two attacks: seconds instead of a minute


@pytest.fixture(scope="module", autouse=True)
def single_thread():
    """AutoAttack on a tiny CNN is dominated by per-step overhead; on a busy 2-core machine two intra-op threads
    make it up to 10x slower than one."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def digits_model(digits_train, train_digits_cnn) -> DigitsCNN:
    return train_digits_cnn(*digits_train, epochs=6)


def reference_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return (model(x).argmax(1) == y).double().mean().item()


def test_trained_model_is_accurate(digits_model, digits_test):
    x, y = digits_test
    assert reference_accuracy(digits_model, x, y) > 0.9


def test_ordering_and_timings(digits_model, digits_test):
    x, y = digits_test
    n = 48
    result = evaluate(
        digits_model,
        x,
        y,
        eps=EPS,
        attacks=("clean", "pgd", "frpgd", "autoattack"),
        n_examples=n,
        batch_size=32,
        autoattack_attacks=QUICK_AA,
        verbose=False,
    )
    assert result.n_examples == n
    assert result.clean_acc == pytest.approx(reference_accuracy(digits_model, x[:n], y[:n]))
    assert result.autoattack_acc <= result.pgd_acc <= result.clean_acc
    assert result.frpgd_acc <= result.clean_acc
    assert result.pgd_acc < result.clean_acc  # eps = 0.1 breaks some digits: the attack does something
    for acc in (result.clean_acc, result.pgd_acc, result.frpgd_acc, result.autoattack_acc):
        assert round(acc * n) == pytest.approx(acc * n)  # a count of examples
    assert result.avg_acc == pytest.approx((result.clean_acc + result.autoattack_acc) / 2)
    assert set(result.times) == {"clean", "pgd", "frpgd", "autoattack"}
    assert all(t > 0 for t in result.times.values())
    assert result.autoattack_version == "custom:apgd-ce,apgd-t"
    assert result.pgd_steps == 20 and result.pgd_alpha == pytest.approx(EPS / 4)


def test_tiny_eps_keeps_clean_accuracy(digits_model, digits_test):
    x, y = digits_test
    result = evaluate(digits_model, x[:64], y[:64], eps=1e-6, attacks=("clean", "pgd"), verbose=False)
    assert result.pgd_acc == result.clean_acc


def test_l2(digits_model, digits_test):
    x, y = digits_test
    small = evaluate(digits_model, x[:40], y[:40], eps=0.2, norm="L2", attacks=("pgd", "frpgd"), verbose=False)
    large = evaluate(digits_model, x[:40], y[:40], eps=2.0, norm="L2", attacks=("pgd", "frpgd"), verbose=False)
    assert large.pgd_acc <= small.pgd_acc <= small.clean_acc
    assert large.frpgd_acc <= small.clean_acc


def test_deterministic_and_rng_untouched(digits_model, digits_test):
    x, y = digits_test
    torch.manual_seed(123)
    state = torch.get_rng_state()
    a = evaluate(digits_model, x[:40], y[:40], eps=EPS, attacks=("pgd",), seed=5, verbose=False)
    assert torch.equal(torch.get_rng_state(), state)
    b = evaluate(digits_model, x[:40], y[:40], eps=EPS, attacks=("pgd",), seed=5, verbose=False)
    assert a.pgd_acc == b.pgd_acc


def test_loader_and_dataset_inputs_agree(digits_model, digits_test):
    x, y = digits_test
    kwargs = {"eps": EPS, "attacks": ("clean", "pgd"), "n_examples": 50, "verbose": False}
    from_tensor = evaluate(digits_model, x, y, **kwargs)
    from_loader = evaluate(digits_model, DataLoader(TensorDataset(x, y), batch_size=16), **kwargs)
    from_dataset = evaluate(digits_model, TensorDataset(x, y), **kwargs)
    assert from_tensor.n_examples == from_loader.n_examples == from_dataset.n_examples == 50
    assert from_tensor.clean_acc == from_loader.clean_acc == from_dataset.clean_acc
    assert from_tensor.pgd_acc == from_loader.pgd_acc == from_dataset.pgd_acc


def test_training_mode_restored_and_inputs_untouched(digits_test):
    x, y = digits_test
    model = DigitsCNN().train()
    x_copy = x[:8].clone()
    evaluate(model, x[:8], y[:8], eps=EPS, attacks=("clean", "pgd"), verbose=False)
    assert model.training
    assert torch.equal(x[:8], x_copy)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"eps": 0.0}, "eps=0.0"),
        ({"eps": float("nan")}, "eps=nan"),
        ({"norm": "L1"}, "norm='L1'"),
        ({"attacks": "pgd"}, "attacks='pgd'"),
        ({"attacks": ("clean", "cw")}, "attacks="),
        ({"n_examples": 0}, "n_examples=0"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"autoattack_attacks": ("apgd-dlr",)}, "autoattack_attacks="),
        ({"eps_step": 0.0}, "eps_step=0.0"),
        ({"pgd_alpha": -1.0}, "pgd_alpha=-1.0"),
        ({"eps_step": 0.01, "pgd_alpha": 0.02}, "eps_step=0.01 and pgd_alpha=0.02"),
    ],
)
def test_invalid_arguments(kwargs, message):
    x, y = torch.rand(4, 1, 8, 8), torch.zeros(4, dtype=torch.long)
    args = {"eps": EPS, **kwargs}
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        evaluate(DigitsCNN(), x, y, verbose=False, **args)


def test_eps_step_reaches_both_attacks_and_pgd_alpha_is_its_older_name(digits_model, digits_test, monkeypatch):
    import fire_plugin.evaluation as evaluation

    steps_seen = []

    class RecordingFRPGD(evaluation.FRPGD):
        def __init__(self, *args, **kwargs):
            steps_seen.append(kwargs["alpha"])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(evaluation, "FRPGD", RecordingFRPGD)
    x, y = digits_test
    kwargs = {"eps": EPS, "attacks": ("pgd", "frpgd"), "pgd_steps": 5, "seed": 3, "verbose": False}
    new = evaluate(digits_model, x[:40], y[:40], eps_step=0.01, **kwargs)
    old = evaluate(digits_model, x[:40], y[:40], pgd_alpha=0.01, **kwargs)
    assert steps_seen == [0.01, 0.01]
    assert new.pgd_alpha == old.pgd_alpha == 0.01
    assert (new.pgd_acc, new.frpgd_acc) == (old.pgd_acc, old.frpgd_acc)  # the same computation, repeated


def test_invalid_data():
    model = DigitsCNN()
    with pytest.raises(ValueError, match="y=None"):
        evaluate(model, torch.rand(4, 1, 8, 8), eps=EPS)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        evaluate(model, torch.rand(4, 1, 8, 8) * 2, torch.zeros(4, dtype=torch.long), eps=EPS)
    with pytest.raises(ValueError, match="shape"):
        evaluate(model, torch.rand(4, 1, 8, 8), torch.zeros(3, dtype=torch.long), eps=EPS)


def test_eval_result_avg_acc():
    assert EvalResult(n_examples=1, eps=0.1, norm="Linf", clean_acc=0.8).avg_acc is None
    result = EvalResult(n_examples=1, eps=0.1, norm="Linf", clean_acc=0.8, autoattack_acc=0.4)
    assert result.avg_acc == pytest.approx(0.6)
    assert result.to_dict()["avg_acc"] == pytest.approx(0.6)


@pytest.mark.slow
def test_standard_autoattack_full_digits(digits_model, digits_test):
    x, y = digits_test
    result = evaluate(digits_model, x, y, eps=EPS, attacks=("clean", "pgd", "frpgd", "autoattack"), verbose=False)
    assert result.autoattack_version == "standard"
    assert result.n_examples == 450
    assert result.autoattack_acc <= result.pgd_acc <= result.clean_acc
    assert set(result.times) == {"clean", "pgd", "frpgd", "autoattack"}
    assert AUTOATTACK_STANDARD == ("apgd-ce", "apgd-t", "fab-t", "square")


def _autoattack_in_turn_against_autoattack(model, x, y, sub_attacks, caplog):
    from pyautoattack import AutoAttack

    with caplog.at_level("INFO", logger="fire_plugin.evaluation"):
        result = evaluate(model, x, y, eps=EPS, attacks=("clean", "autoattack"), batch_size=64,
                          autoattack_attacks=sub_attacks, verbose=False)
    assert f"AutoAttack (custom: {', '.join(sub_attacks)}) on" in caplog.text and "DigitsCNN" in caplog.text
    assert "AutoAttack apgd-ce: the first" in caplog.text and "examples it attacks" in caplog.text
    assert ("at most about" in caplog.text) == (len(sub_attacks) > 1)  # the bound needs later sub-attacks
    ok = (model(x).argmax(1) == y).nonzero().flatten()
    reference = AutoAttack(model, norm="Linf", eps=EPS, version="standard", seed=0, device=torch.device("cpu"))
    reference.attacks_to_run = list(sub_attacks)  # the standard settings, these attacks, all in one call
    with torch.random.fork_rng():
        torch.manual_seed(0)
        x_adv, _ = reference.run_standard_evaluation(x[ok], y[ok], batch_size=len(ok))
    with torch.no_grad():
        robust = int((model(x_adv).argmax(1) == y[ok]).sum())
    assert result.autoattack_acc == robust / len(x)


def test_autoattack_logs_the_work_and_an_estimate_and_agrees_with_autoattack(digits_model, digits_test, caplog):
    """One batch holding every example: the same computation as ``run_standard_evaluation``, the same flags."""
    x, y = digits_test
    _autoattack_in_turn_against_autoattack(digits_model, x[:16], y[:16], ("apgd-ce",), caplog)


@pytest.mark.slow
def test_autoattack_sub_attacks_in_turn_agree_with_autoattack(digits_model, digits_test, caplog):
    """Sub-attacks one at a time (a bar each, counting examples), each on the examples that resisted the ones
    before: AutoAttack's own order, so with one batch the robust flags are those of one AutoAttack call."""
    x, y = digits_test
    _autoattack_in_turn_against_autoattack(digits_model, x[:16], y[:16], QUICK_AA, caplog)

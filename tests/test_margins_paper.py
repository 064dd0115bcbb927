"""Paper mode, the half-step convergence check, the convergence study, rank correlations and input hardening of
fire_plugin.margins."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import scipy.stats
import torch
import torch.nn.functional as F
from torch import nn

from fire_plugin.margins import (
    MarginResult,
    arc_margins,
    convergence_study,
    shielding_report,
    spearman,
    trace_margins,
)


class Logistic(nn.Module):
    """Binary logistic model: logits ``[0, theta^T x + b]``."""

    def __init__(self, theta: torch.Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())
        self.bias = nn.Parameter(torch.tensor(bias, dtype=theta.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1) @ self.theta + self.bias
        return torch.stack([torch.zeros_like(h), h], dim=1)


def hand_count(h0: float, theta_norm: float, damping: float, step: float = 1.0) -> int:
    """The paper's loop on the latent code by hand: ``G = p (1 - p) theta theta^T``, ``g = +-theta``, so
    ``v = g / (p (1 - p) |theta|^2 + lambda)`` and the step ``-step v / sqrt(g^T v)`` moves ``h`` by
    ``-+ step |theta| / sqrt(p (1 - p) |theta|^2 + lambda)``; count the steps until the sign of ``h`` changes."""
    h, sign, count = h0, 1.0 if h0 > 0 else -1.0, 0
    while (h > 0) == (sign > 0):
        p = 1.0 / (1.0 + math.exp(-h))
        h -= sign * step * theta_norm / math.sqrt(p * (1 - p) * theta_norm**2 + damping)
        count += 1
        assert abs(h) > 1e-6, "a hand-counted iterate lands on the boundary: pick another start"
        assert count < 1000
    return count


@pytest.fixture(scope="module")
def digits_model(digits_train, train_digits_cnn) -> nn.Module:
    return train_digits_cnn(*digits_train, epochs=4)


# ------------------------------------------------------------------------------------------ paper mode


def test_paper_mode_counts_steps_as_by_hand():
    torch.manual_seed(0)
    theta = torch.randn(5, dtype=torch.float64)
    h0 = [2.3, -3.7, 6.1]
    x = torch.randn(3, 5, dtype=torch.float64)
    x = x - ((x @ theta - torch.tensor(h0, dtype=torch.float64)) / theta.dot(theta)).unsqueeze(1) * theta
    y = torch.tensor([1, 0, 1])
    for damping in (2.0, 8.0):  # large dampings: steps of about |theta| / sqrt(damping) in h, several per path
        expected = [hand_count(h, float(theta.norm()), damping) for h in h0]
        assert len(set(expected)) > 1  # the three starts need different counts
        result = trace_margins(Logistic(theta), x, y, mode="paper", damping=damping, clamp=None,
                               check_convergence=False, verbose=False)
        assert result.mode == "paper" and result.solver == "cg" and result.step == 1.0
        assert result.flipped.all() and result.steps.tolist() == expected
        assert result.margin.tolist() == [float(c) for c in expected]  # margins are integer step counts
        assert (result.fr_length > 0).all() and not np.array_equal(result.fr_length, result.margin)


def test_paper_margins_are_integers_on_a_cnn(digits_model, digits_test):
    x, y = digits_test[0][:6], digits_test[1][:6]
    result = trace_margins(digits_model, x, y, mode="paper", check_convergence=False, verbose=False)
    traced = result.status != "misclassified"
    assert traced.sum() > 40
    np.testing.assert_array_equal(result.margin, np.round(result.margin))
    np.testing.assert_array_equal(result.margin, result.steps.astype(np.float64))
    margins = result.input_margins()
    assert np.all(margins == np.round(margins))


def linear_softmax(seed: int = 3) -> tuple[nn.Module, torch.Tensor, torch.Tensor, torch.Tensor]:
    torch.manual_seed(seed)
    model = nn.Linear(6, 4).double()
    with torch.no_grad():
        model.weight.mul_(3.0)
    x = torch.randn(8, 6, dtype=torch.float64)
    with torch.no_grad():
        p = F.softmax(model(x), -1)
    return model, x, p.argmax(1), p


def test_both_modes_reach_the_same_class_on_linear_softmax():
    model, x, y, p = linear_softmax()
    kw = {"damping": 1e-9, "step": 0.01, "clamp": None, "check_convergence": False, "verbose": False}
    converged = trace_margins(model, x, y, **kw)
    paper = trace_margins(model, x, y, mode="paper", **kw)
    assert converged.flipped.all() and paper.flipped.all()
    assert converged.shielded.any()  # some paths are shielded: the agreement is not only "first = target"
    np.testing.assert_array_equal(paper.first_class, converged.first_class)
    arc, first = arc_margins(p[torch.as_tensor(paper.index)], paper.source, paper.target)
    np.testing.assert_array_equal(first, paper.first_class)
    # the paper's count overshoots the boundary by up to one step; measured max |paper - arc| 0.008 at step 0.01
    assert np.abs(paper.margin - arc).max() < 0.03


# ------------------------------------------------------------------------------------------ half-step check


def test_half_step_check_by_default_and_its_warning(digits_model, digits_test):
    x, y = digits_test[0][:5], digits_test[1][:5]
    result = trace_margins(digits_model, x, y, mode="paper", verbose=False)
    check = result.convergence
    traced = int((result.status != "misclassified").sum())
    assert check is not None and check["n_paths"] == math.ceil(0.1 * traced)
    assert check["step"] == 1.0 and check["half_step"] == 0.5
    # unit steps in the damped metric jump across the simplex on this model: halving changes the mean margin
    assert check["converged"] is False and check["mean_margin_rel_change"] > 0.01
    report = shielding_report(result)
    assert report.converged is False
    assert "WARNING: not converged" in report.to_markdown()
    as_json = json.loads(json.dumps(report.to_dict()))
    assert as_json["warning"].startswith("WARNING") and as_json["converged"] is False
    assert as_json["traced_with"]["mode"] == "paper" and as_json["traced_with"]["step"] == 1.0
    back = MarginResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert back.convergence == result.convergence and back.mode == "paper"
    np.testing.assert_array_equal(back.margin, result.margin)

    skipped = trace_margins(digits_model, x, y, check_convergence=False, verbose=False)
    assert skipped.convergence is None
    assert "not checked" in shielding_report(skipped).to_markdown()
    assert shielding_report(skipped).warning is None


# ------------------------------------------------------------------------------------------ study


@pytest.mark.parametrize("mode", ["converged", "paper"])
def test_study_converges_to_the_closed_form_flow(mode):
    """damping -> 0 and no box: the flow's FR length and first class are ``arc_margins`` of the start."""
    model, x, y, p = linear_softmax()
    kw = {"dampings": (1e-9,), "clamp": None, "mode": mode, "verbose": False, "max_steps": 5000}
    coarse = convergence_study(model, x, y, steps=(1.0, 0.5), **kw)
    fine = convergence_study(model, x, y, steps=(0.02, 0.01, 0.005), **kw)
    result = trace_margins(model, x, y, damping=1e-9, step=0.005, clamp=None, mode=mode, max_steps=5000,
                           check_convergence=False, verbose=False)
    arc, first = arc_margins(p[torch.as_tensor(result.index)], result.source, result.target)
    exact_mean = float(arc.mean())
    exact_shielding = 100.0 * float((first != result.target).mean())
    errors = [abs(r["mean_margin"] / exact_mean - 1) for r in coarse.rows + fine.rows]
    # the margin error shrinks with the step: measured (converged) 0.037, 0.026 | 0.0011, 0.0005, 0.0003;
    # (paper) 0.26, 0.14 | 0.0046, 0.0014, 0.0012
    assert errors[0] > errors[1] > 0.02 and max(errors[2:]) < 0.01
    assert not coarse.converged()  # 1.0 vs 0.5 disagree: not converged, and indeed far from the closed form
    assert coarse.converged_step(1e-9) is None
    assert fine.converged()  # ... and the fine steps agree, as they agree with the closed form
    assert fine.rows[-1]["shielding_pct"] == pytest.approx(exact_shielding)
    assert fine.converged_step(1e-9) in (0.02, 0.01)
    text = fine.to_markdown()
    assert "converged from step" in text and "| 1e-09 | 0.005 |" in text
    payload = json.loads(fine.to_json())
    assert payload["converged"] is True and len(payload["rows"]) == 3
    assert len(fine.plot().axes) == 2


# ------------------------------------------------------------------------------------------ ranks


def ranked_result() -> MarginResult:
    # 4 classes, 6 inputs, one path each plus extra paths; margins and L2 chosen so that the ranks differ
    index = np.array([0, 0, 1, 2, 2, 3, 4, 5])
    source = np.array([0, 0, 1, 2, 2, 3, 3, 1])
    target = np.array([1, 2, 0, 0, 3, 0, 1, 3])
    margin = np.array([0.9, 0.4, 1.5, 0.7, 2.0, 1.1, 1.3, 0.2])
    l2 = np.array([2.0, 0.5, 1.0, 3.0, 0.1, 2.5, 0.7, 0.9])
    flipped = np.array([True, True, True, True, False, True, True, True])
    first = np.where(flipped, target, source)
    return MarginResult(index=index, source=source, target=target, flipped=flipped, first_class=first,
                        shielded=np.zeros(8, bool), fr_length=margin, l2=l2, linf=l2 / 2,
                        steps=np.ones(8, np.int64), status=np.where(flipped, "flipped", "max_steps"),
                        num_classes=4, n_inputs=6)


def test_rank_columns_and_spearman_against_scipy():
    r = ranked_result()
    report = shielding_report(r)
    mean_fr, mean_l2 = report.mean_fr_margin, report.mean_l2
    # independent reference: per-class means by hand, ranks and correlations by scipy
    np.testing.assert_allclose(mean_fr, [0.65, (1.5 + 0.2) / 2, 0.7, 1.2])
    np.testing.assert_allclose(mean_l2, [1.25, 0.95, 3.0, 1.6])
    expected_fr_rank = scipy.stats.rankdata(-mean_fr, method="ordinal")
    expected_l2_rank = scipy.stats.rankdata(-mean_l2, method="ordinal")
    assert report.vuln_rank.tolist() == expected_fr_rank.tolist()
    assert report.l2_rank.tolist() == expected_l2_rank.tolist()
    rho = scipy.stats.spearmanr(mean_fr, mean_l2).statistic
    assert report.fr_l2_rank_correlation == pytest.approx(rho, abs=1e-12)
    # per input: the smallest flipped margin and the L2 of that path (input 2's unflipped path is left out)
    per_input_margin = [0.4, 1.5, 0.7, 1.1, 1.3, 0.2]
    per_input_l2 = [0.5, 1.0, 3.0, 2.5, 0.7, 0.9]
    np.testing.assert_allclose(r.input_margins(), per_input_margin)
    expected = scipy.stats.spearmanr(per_input_margin, per_input_l2).statistic
    assert report.input_fr_l2_spearman == pytest.approx(expected, abs=1e-12)
    assert report.n_correlated_inputs == 6
    assert "rank (L2)" in report.to_markdown()
    assert report.to_dict()["fr_l2_rank_correlation"] == pytest.approx(rho)


def test_spearman_with_ties_against_scipy():
    gen = np.random.default_rng(0)
    a = gen.integers(0, 5, size=40).astype(float)  # many ties
    b = a + gen.normal(size=40)
    assert spearman(a, b) == pytest.approx(scipy.stats.spearmanr(a, b).statistic, abs=1e-12)
    assert math.isnan(spearman([1.0], [2.0])) and math.isnan(spearman([1.0, 1.0], [1.0, 2.0]))
    assert spearman([1.0, np.nan, 3.0, 2.0], [1.0, 5.0, 2.0, 3.0]) == pytest.approx(
        scipy.stats.spearmanr([1.0, 3.0, 2.0], [1.0, 2.0, 3.0]).statistic)


# ------------------------------------------------------------------------------------------ hardening


def small_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(1, 2, 3, padding=1), nn.Flatten(), nn.Linear(2 * 4 * 4, 3))


@pytest.mark.parametrize(
    ("x_fn", "y", "kwargs", "message"),
    [
        (lambda x: x.index_put_((torch.tensor(1), torch.tensor(0)), torch.tensor(float("nan")))
         .view(-1, 1, 4, 4), [0, 1, 2], {}, "NaN or infinite values in 1 of 3 inputs"),
        (None, [0, 1.7, 2], {}, "y holds 1.7"),
        (None, [0, True, 2], {}, "y holds True"),
        (None, ["0", "1", "2"], {}, "y holds '0'"),
        (None, torch.tensor([0.0, 1.5, 2.0]), {}, "y holds non-integer"),
        (None, torch.tensor([True, False, True]), {}, "y of dtype torch.bool"),
        (None, [0, 1, 2], {"targets": [1.7]}, "targets holds 1.7"),
        (None, [0, 1, 2], {"targets": [True]}, "targets holds True"),
        (None, [0, 1, 2], {"targets": ["35"]}, "targets holds '35'"),
        (None, [0, 1, 2], {"targets": "1"}, "targets='1'"),
        (None, [0, 1, 2], {"targets": torch.tensor([[1.5], [0.0], [0.0]])}, "targets holds non-integer"),
        (None, [0, 1, 2], {"max_steps": 10**7}, "max_steps=10000000"),
        (None, [0, 1, 2], {"mode": "exact"}, "mode='exact'"),
        (lambda x: x.view(-1, 1, 4, 4).expand(-1, 3, 4, 4), [0, 1, 2], {}, "first layer takes 1 channels"),
    ],
)
def test_bad_inputs_are_refused(x_fn, y, kwargs, message):
    x = torch.rand(3, 16)
    x = x_fn(x) if x_fn is not None else x.view(-1, 1, 4, 4)
    with pytest.raises(ValueError, match=message):
        trace_margins(small_model(), x, y, verbose=False, check_convergence=False, **kwargs)


def test_inputs_are_cast_to_the_model_dtype():
    model = small_model()
    x = torch.rand(3, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    kw = {"max_steps": 3, "check_convergence": False, "verbose": False}
    ref = trace_margins(model, x, y, **kw)
    from_numpy = trace_margins(model, x.double().numpy(), y.numpy(), **kw)  # float64 from numpy: cast to float32
    half = trace_margins(model, x.half(), y, **kw)  # float16: cast to float32 (the values are float16's)
    np.testing.assert_array_equal(from_numpy.margin, ref.margin)  # the same float32 computation
    assert half.num_classes == 3 and len(half) == len(ref) and np.isfinite(half.margin).all()


def test_an_input_without_paths_has_no_margin():
    model = small_model()
    x = torch.rand(3, 1, 4, 4)
    with torch.no_grad():
        y = model(x).argmax(1)
    y[0] = 2 if y[0] != 2 else y[0]  # input 0's label is the only target below
    targets = [int(y[0])]
    result = trace_margins(model, x, y, targets=targets, max_steps=2, check_convergence=False, verbose=False)
    margins = result.input_margins()
    assert 0 not in result.index and math.isnan(margins[0])
    assert not np.isinf(margins[0])

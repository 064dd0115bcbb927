"""Tests of fire_plugin.margins (Fisher-Rao margin tracing, class shielding) and fire_plugin.margins.report."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fire_plugin.distances import fisher_rao
from fire_plugin.margins import (
    MarginResult,
    arc_margins,
    data_fisher_matvec,
    fr_margin,
    natural_gradient_direction,
    shielding_report,
    trace_margins,
)
from fire_plugin.models import DigitsCNN


class Logistic(nn.Module):
    """Binary logistic model: logits ``[0, theta^T x + b]``, so ``h = theta^T x + b`` is Theorem 1's latent code."""

    def __init__(self, theta: torch.Tensor, bias: float = 0.0) -> None:
        super().__init__()
        self.theta = nn.Parameter(theta.clone())
        self.bias = nn.Parameter(torch.tensor(bias, dtype=theta.dtype))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = x.flatten(1) @ self.theta + self.bias
        return torch.stack([torch.zeros_like(h), h], dim=1)


def theorem1_margin(h0: torch.Tensor) -> np.ndarray:
    """FR distance from latent code h0 to the boundary h = 0 (Theorem 1 of Picot et al.), float64."""
    return np.array([2.0 * abs(math.atan(math.exp(float(h) / 2.0)) - math.pi / 4.0) for h in h0])


# the settings the measured tolerances below were measured at (the library's defaults before the convergence study)
PINNED = {"damping": 1e-3, "step": 0.1, "check_convergence": False}


@pytest.fixture(scope="module")
def digits_model(digits_train, train_digits_cnn) -> DigitsCNN:
    return train_digits_cnn(*digits_train, epochs=4)


@pytest.fixture(scope="module")
def digits_trace(digits_model, digits_test) -> tuple[torch.Tensor, torch.Tensor, MarginResult]:
    x, y = digits_test[0][:12], digits_test[1][:12]
    return x, y, trace_margins(digits_model, x, y, return_paths=True, verbose=False, **PINNED)


# ------------------------------------------------------------------------------------------ closed form


@pytest.mark.parametrize("solver", ["exact", "cg", "dense"])
def test_logistic_margin_is_theorem1(solver):
    torch.manual_seed(0)
    theta = torch.randn(5, dtype=torch.float64)
    h0 = torch.tensor([-6.0, -3.0, -1.0, -0.5, 0.5, 1.0, 3.0, 6.0], dtype=torch.float64)
    x = torch.randn(8, 5, dtype=torch.float64)
    x = x - ((x @ theta - h0) / theta.dot(theta)).unsqueeze(1) * theta  # latent codes h0
    model = Logistic(theta)
    y = (h0 > 0).long()
    result = trace_margins(model, x, y, damping=1e-8, step=0.1, clamp=None, solver=solver, return_paths=True,
                           verbose=False)
    assert result.flipped.all() and (result.first_class == 1 - y.numpy()).all()
    assert not result.shielded.any()
    expected = theorem1_margin(h0)
    # the end point lies just past the boundary, within 1% of a step: measured excess <= 6e-4 (step 0.1)
    np.testing.assert_allclose(result.fr_length, expected, rtol=0.01)
    assert (result.fr_length >= expected - 1e-9).all() and (result.fr_length <= expected + 0.01 * 0.1).all()
    # crossing located within 1% of the last step: near h = 0 a step of FR length 0.1 moves h by about 0.2
    h_end = torch.as_tensor(result.x_end) @ theta
    signed = torch.where(y.bool(), h_end, -h_end)  # <= 0: past the boundary
    assert (signed <= 0).all() and (signed >= -0.01 * 0.2 * 1.05).all()


def test_linear_softmax_margin_is_the_two_class_arc():
    """With damping -> 0 and a full-rank Jacobian, the natural-gradient flow of log p_y - log p_k changes only p_y and
    p_k (L v is proportional to e_y / p_y - e_k / p_k), so the prediction moves on the arc p_y + p_k = r of the
    simplex: p_y(t) = p_y - t, p_k(t) = p_k + t, at angle theta = arctan sqrt(p_k(t) / p_y(t)), with FR length
    2 sqrt(r) |d theta|. It stops where p_y(t) meets max(p_k(t), q), q the largest other probability: at
    theta = pi/4 (reaching k), or earlier at p_y(t) = q when q > r / 2 (shielded by that class)."""
    torch.manual_seed(3)
    model = nn.Linear(6, 4).double()
    with torch.no_grad():
        model.weight.mul_(3.0)
    x = torch.randn(8, 6, dtype=torch.float64)
    with torch.no_grad():
        p = F.softmax(model(x), -1)
    y = p.argmax(1)
    result = trace_margins(model, x, y, damping=1e-9, step=0.01, clamp=None, verbose=False)
    assert result.flipped.all()
    errors, lengths, firsts = [], [], []
    for i, (idx, k) in enumerate(zip(result.index, result.target, strict=True)):
        probs = p[idx].clone()
        p_y, p_k = float(probs[y[idx]]), float(probs[k])
        r = p_y + p_k
        probs[y[idx]] = probs[k] = -1.0
        q, c = float(probs.max()), int(probs.argmax())
        shield = q > r / 2
        end = math.atan(math.sqrt((r - q) / q)) if shield else math.pi / 4
        expected = 2 * math.sqrt(r) * (end - math.atan(math.sqrt(p_k / p_y)))
        assert result.shielded[i] == shield
        assert result.first_class[i] == (c if shield else k)
        lengths.append(expected)
        firsts.append(c if shield else k)
        errors.append(abs(result.fr_length[i] / expected - 1))
    assert result.shielded.any() and not result.shielded.all()
    # measured: max relative error 0.011 (Euler drift of the other classes near a shield, O(step)); 0.004 without
    # shielding
    assert max(errors) < 0.02
    arc, first = arc_margins(p[torch.as_tensor(result.index)], result.source, result.target)
    np.testing.assert_allclose(arc, lengths, rtol=1e-12)
    assert first.tolist() == firsts


def test_logistic_budget_and_stall_statuses():
    theta = torch.tensor([1.0, 2.0], dtype=torch.float64)
    model = Logistic(theta)
    x = torch.tensor([[1.0, 1.0]], dtype=torch.float64)  # h0 = 3: margin 1.133
    y = torch.tensor([1])
    by_length = trace_margins(model, x, y, damping=1e-8, step=0.1, max_length=0.25, clamp=None, verbose=False)
    assert by_length.status.tolist() == ["max_length"] and not by_length.flipped.any()
    assert 0.25 <= by_length.fr_length[0] < 0.25 + 0.1 + 1e-6
    assert by_length.first_class.tolist() == [1]
    by_steps = trace_margins(model, x, y, damping=1e-8, max_steps=2, clamp=None, verbose=False)
    assert by_steps.status.tolist() == ["max_steps"] and by_steps.steps.tolist() == [2]
    assert not by_steps.flipped.any() and by_steps.first_class.tolist() == [1]
    # pinned: x at the lower corner of the box, class 0 needs x < 0 (theta > 0): no descent direction in the box
    pinned = Logistic(theta, bias=1.0)
    stalled = trace_margins(pinned, torch.zeros(1, 2, dtype=torch.float64), y, verbose=False)
    assert stalled.status.tolist() == ["stalled"] and not stalled.flipped.any()
    assert stalled.fr_length.tolist() == [0.0] and stalled.l2.tolist() == [0.0]


# ------------------------------------------------------------------------------------------ solvers


def test_solvers_agree_with_explicit_fisher():
    torch.manual_seed(1)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 8), nn.Tanh(), nn.Linear(8, 4)).double()
    x = torch.rand(3, 1, 3, 4, dtype=torch.float64)
    y = torch.tensor([0, 1, 2])
    target = torch.tensor([3, 0, 1])
    damping = 1e-3
    u = torch.randn_like(x)
    gu = data_fisher_matvec(model, x, u)
    for i in range(len(x)):
        jac = torch.autograd.functional.jacobian(lambda z: F.log_softmax(model(z.view(1, 1, 3, 4)), -1)[0],
                                                 x[i].flatten())  # (m, n)
        p = F.softmax(model(x[i : i + 1]), -1)[0].detach()
        metric = jac.T @ torch.diag(p) @ jac  # (n, n)
        torch.testing.assert_close(gu[i].flatten(), metric @ u[i].flatten(), rtol=1e-10, atol=1e-12)
        g = jac[y[i]] - jac[target[i]]
        ref = torch.linalg.solve(metric + damping * torch.eye(12, dtype=torch.float64), g)
        for solver, rtol in (("exact", 1e-9), ("dense", 1e-9), ("cg", 1e-5)):
            v, g_v = natural_gradient_direction(model, x, y, target, damping=damping, solver=solver, cg_iters=50)
            torch.testing.assert_close(v[i].flatten(), ref, rtol=rtol, atol=rtol * float(ref.abs().max()))
            torch.testing.assert_close(g_v[i], g @ ref, rtol=rtol, atol=0.0)


def test_carried_and_shared_jacobians_are_the_jacobians_at_the_points(monkeypatch):
    """The exact solver reuses the forward graph of the last step and shares one Jacobian among the paths that start
    at the same input: every Jacobian the tracer solves with must equal a fresh one at its points (float64 model),
    through refills of the batch, retired paths, shortened and bisected steps and the box."""
    import fire_plugin.margins.stepping as stepping
    from fire_plugin.margins.metric import _jacobian, _vjp_graph

    torch.manual_seed(3)
    model = nn.Sequential(nn.Flatten(), nn.Linear(16, 12), nn.Tanh(), nn.Linear(12, 5)).double()
    x = torch.rand(6, 1, 4, 4, dtype=torch.float64)
    y = model(x).argmax(1)
    seen: list[int] = []
    original = stepping._Tracer._logp_and_jacobian

    def checked(self, a):
        logp, jac = original(self, a)
        fresh_logp, vjp_fn = _vjp_graph(self.fn, a.x)
        torch.testing.assert_close(logp, fresh_logp.detach(), rtol=1e-12, atol=1e-12)
        torch.testing.assert_close(jac, _jacobian(vjp_fn, fresh_logp), rtol=1e-10, atol=1e-12)
        seen.append(len(a.id))
        return logp, jac

    monkeypatch.setattr(stepping._Tracer, "_logp_and_jacobian", checked)
    monkeypatch.setattr(stepping, "_MAX_STEP_RATIO", 0.5)  # some steps are shortened: their rows move after the
    # forward pass whose graph the next step would reuse
    jac_rows: list[int] = []

    def counted(vjp_fn, logp):
        jac_rows.append(len(logp))
        return _jacobian(vjp_fn, logp)

    monkeypatch.setattr(stepping, "_jacobian", counted)
    result = trace_margins(model, x, y, step=0.02, damping=1e-4, solver="exact", batch_size=7, clamp=(0.0, 1.0),
                           verbose=False)
    assert result.flipped.sum() >= 10 and len(seen) > 10  # many steps, refills and retirements were checked
    # the first batch (7 paths of 2 inputs: 4 + 3 targets) ran one Jacobian per input, not per path
    assert jac_rows[0] == 2


def test_exact_and_cg_traces_agree(digits_model, digits_test, digits_trace):
    x, y, exact = digits_trace
    cg = trace_margins(digits_model, x[:4], y[:4], solver="cg", verbose=False, **PINNED)
    n = len(cg)
    assert (cg.status == exact.status[:n]).all()
    assert (cg.first_class == exact.first_class[:n]).all()
    # measured on these paths: max |difference| 6.2e-4 (float32 model products inside CG)
    np.testing.assert_allclose(cg.fr_length, exact.fr_length[:n], atol=5e-3)


# ------------------------------------------------------------------------------------------ paths on a CNN


def test_lengths_bound_end_point_distance(digits_model, digits_trace):
    x, y, result = digits_trace
    traced = result.status != "misclassified"
    assert traced.sum() >= 90 and result.flipped[traced].mean() > 0.9
    with torch.no_grad():
        start = digits_model(x)[torch.as_tensor(result.index)]
        end = digits_model(torch.as_tensor(result.x_end))
    direct = fisher_rao(start.double(), end.double()).numpy()
    assert (result.fr_length >= direct - 1e-6).all()
    assert (result.fr_length <= 2 * result.steps * result.step + 1e-6).all()  # longer steps are shortened
    flipped = result.flipped
    assert (end.argmax(1).numpy()[flipped] == result.first_class[flipped]).all()
    assert (result.first_class[flipped] != result.source[flipped]).all()
    np.testing.assert_array_equal(result.shielded, flipped & (result.first_class != result.target))
    disp = (torch.as_tensor(result.x_end) - x[torch.as_tensor(result.index)]).flatten(1).double()
    np.testing.assert_allclose(result.l2, disp.norm(dim=1).numpy(), rtol=1e-12)
    np.testing.assert_allclose(result.linf, disp.abs().amax(1).numpy(), rtol=1e-12)
    assert result.x_end.min() >= 0.0 and result.x_end.max() <= 1.0 and result.clamp == (0.0, 1.0)


def test_halving_the_step(digits_model, digits_test, digits_trace):
    x, y, coarse = digits_trace
    fine = trace_margins(digits_model, x, y, verbose=False, **(PINNED | {"step": 0.05}))
    a, b = coarse.input_margins(), fine.input_margins()
    assert np.array_equal(np.isfinite(a), np.isfinite(b))
    diff = np.abs(a - b)[np.isfinite(a)]
    # measured on 12 test digits: max 1.2e-3, median 3.1e-4
    assert diff.max() < 0.01 and np.median(diff) < 0.002
    assert (coarse.first_class == fine.first_class).all()


def test_fr_margin_and_model_state(digits_model, digits_test, digits_trace):
    x, y, result = digits_trace
    digits_model.train()
    x_copy = x.clone()
    margins = fr_margin(digits_model, x, y, verbose=False, **PINNED)
    assert digits_model.training
    digits_model.eval()
    assert torch.equal(x, x_copy)
    np.testing.assert_allclose(margins, result.input_margins())
    with torch.no_grad():
        wrong = (digits_model(x).argmax(1) != y).numpy()
    assert (margins[wrong] == 0).all() and (margins[~wrong] > 0).all()
    for i in np.nonzero(~wrong)[0]:
        mine = result.flipped & (result.index == i)
        assert margins[i] == pytest.approx(result.fr_length[mine].min())


# ------------------------------------------------------------------------------------------ report


def hand_result() -> MarginResult:
    # 3 classes; inputs 0 (label 0) and 1 (label 1) traced, input 2 misclassified
    return MarginResult(
        index=np.array([0, 0, 1, 1, 2, 2]),
        source=np.array([0, 0, 1, 1, 2, 2]),
        target=np.array([1, 2, 0, 2, 0, 1]),
        flipped=np.array([True, True, True, False, False, False]),
        first_class=np.array([1, 1, 2, 1, 0, 0]),
        shielded=np.array([False, True, True, False, False, False]),
        fr_length=np.array([0.5, 0.7, 1.2, 3.0, 0.0, 0.0]),
        l2=np.array([1.0, 2.0, 4.0, 9.0, 0.0, 0.0]),
        linf=np.array([0.1, 0.2, 0.4, 0.9, 0.0, 0.0]),
        steps=np.array([5, 7, 12, 1000, 0, 0]),
        status=np.array(["flipped", "flipped", "flipped", "max_steps", "misclassified", "misclassified"]),
        num_classes=3,
        n_inputs=3,
    )


def test_shielding_report_by_hand():
    report = shielding_report(hand_result(), class_names=["a", "b", "c"])
    assert report.total_paths == 4 and report.total_flipped == 3
    assert report.n_paths.tolist() == [2, 2, 0] and report.n_flipped.tolist() == [2, 1, 0]
    # shields: path 2 (0 -> target 2, first hit 1) and path 3 (1 -> target 0, first hit 2)
    assert report.n_shields.tolist() == [0, 1, 1]
    np.testing.assert_allclose(report.shielding_pct, [0.0, 100 / 3, 100 / 3])
    np.testing.assert_allclose(report.mean_fr_margin[:2], [0.6, 1.2])
    np.testing.assert_allclose(report.mean_l2[:2], [1.5, 4.0])
    assert math.isnan(report.mean_fr_margin[2])
    assert report.vuln_rank.tolist() == [2, 1, 0]  # b needs the larger FR margin; c has no traced paths
    assert report.path_matrix.tolist() == [[0, 2, 0], [0, 1, 1], [0, 0, 0]]
    markdown = report.to_markdown()
    assert "| b | 33.3 | 1.200 | 1.200 | 4.000 | 1 | 1 | 2 | 1 |" in markdown
    as_dict = report.to_dict()
    assert as_dict["mean_fr_margin"][2] is None
    json.dumps(as_dict)


def test_never_flipped_class_ranks_most_robust():
    r = hand_result()
    r.flipped[2] = False
    r.shielded[2] = False
    r.first_class[2] = 1
    r.status[2] = "max_length"
    report = shielding_report(r)
    assert report.n_flipped.tolist() == [2, 0, 0]
    assert report.vuln_rank.tolist() == [2, 1, 0]


def test_result_files_round_trip(tmp_path):
    result = hand_result()
    back = MarginResult.from_json(result.to_json(tmp_path / "r.json"))
    for name in ("index", "source", "target", "flipped", "first_class", "shielded", "fr_length", "l2", "steps",
                 "status"):
        np.testing.assert_array_equal(getattr(back, name), getattr(result, name))
    assert back.settings() == result.settings()
    lines = result.to_csv(tmp_path / "r.csv").read_text().splitlines()
    assert lines[0] == "index,source,target,flipped,first_class,shielded,margin,fr_length,l2,linf,steps,status"
    assert len(lines) == 1 + len(result) and lines[1].startswith("0,0,1,True,1,False,0.5,0.5,1,")


# ------------------------------------------------------------------------------------------ validation


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"damping": 0.0}, "damping=0.0"),
        ({"step": -1.0}, "step=-1.0"),
        ({"max_steps": 0}, "max_steps=0"),
        ({"solver": "lu"}, "solver='lu'"),
        ({"batch_size": 0}, "batch_size=0"),
        ({"targets": [5]}, "targets="),
        ({"targets": torch.zeros(2, 1, dtype=torch.long)}, "own label"),
        ({"clamp": (1.0, 0.0)}, "clamp="),
    ],
)
def test_invalid_arguments(kwargs, message):
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        trace_margins(model, x, y, verbose=False, **kwargs)


def test_inputs_outside_the_box():
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    with pytest.raises(ValueError, match="outside clamp"):
        trace_margins(model, torch.rand(2, 4) + 1.0, torch.tensor([0, 1]), verbose=False)
    assert len(trace_margins(model, torch.rand(2, 4) + 1.0, torch.tensor([0, 1]), clamp=None, max_steps=1,
                             verbose=False)) == 4


def test_evaluate_fr_margin_entry(digits_model, digits_trace):
    from fire_plugin.evaluation import ATTACKS, evaluate

    x, y, result = digits_trace
    assert "fr_margin" in ATTACKS
    r = evaluate(digits_model, x, y, eps=0.1, attacks=("clean", "fr_margin"), verbose=False, margin_kwargs=PINNED)
    expected = result.input_margins()  # 0 for misclassified; every correct input flipped here
    assert np.isfinite(expected).all()
    assert r.fr_margin_mean == pytest.approx(expected.mean(), rel=1e-12)
    assert r.fr_margin_median == pytest.approx(float(torch.as_tensor(expected).median()), rel=1e-12)
    assert set(r.times) == {"clean", "fr_margin"} and r.times["fr_margin"] > 0
    assert r.pgd_acc is None and r.to_dict()["fr_margin_mean"] == r.fr_margin_mean
    capped = evaluate(digits_model, x, y, eps=0.1, attacks=("fr_margin",), verbose=False,
                      margin_kwargs={"max_length": 0.5})
    assert capped.fr_margin_mean <= 0.5 and capped.fr_margin_median <= 0.5


# ------------------------------------------------------------------------------------------ report pipeline


def test_run_margins_digits(digits_model, digits_test, tmp_path):
    from fire_plugin.margins.report import CLASS_NAMES, run_margins

    x, y = digits_test
    out = run_margins(digits_model, x, y, tmp_path / "digits", class_names=CLASS_NAMES["digits"], n_inputs=6,
                      verbose=False, targets=[0, 1, 2])
    result = out["result"]
    assert result.n_inputs == 6 and len(result) == 6 * 3 - int((y[:6] < 3).sum())
    payload = json.loads((tmp_path / "digits" / "margins.json").read_text())
    assert set(payload) == {"inputs", "synthetic", "summary", "result", "report"}
    assert payload["summary"]["n_paths"] == len(result) and payload["report"]["class_names"][3] == "3"
    back = MarginResult.from_dict(payload["result"])
    np.testing.assert_array_equal(back.fr_length, result.fr_length)
    csv_lines = (tmp_path / "digits" / "margins.csv").read_text().splitlines()
    assert len(csv_lines) == 1 + len(result)
    for name in ("path_matrix", "class_margins", "margin_histograms"):
        assert (tmp_path / "digits" / f"{name}.png").read_bytes()[:4] == b"\x89PNG"
    assert "| class | shielding %" in (tmp_path / "digits" / "shielding.md").read_text()


def test_run_margins_pretrained_resnet18(tmp_path):
    from fire_plugin.margins.report import margins_from_names

    out = margins_from_names("autoattack-resnet18", dataset="cifar10", n_inputs=2, synthetic="always",
                             out_dir=tmp_path, verbose=False, targets=[0], max_steps=2)
    assert out["inputs"].startswith("SYNTHETIC")
    result = out["result"]
    assert result.n_inputs == 2 and result.num_classes == 10 and len(result) == 2  # predicted cat and dog
    assert set(result.status) <= {"flipped", "max_steps"} and (result.steps <= 2).all()
    assert (result.fr_length > 0).all()
    assert out["report"].class_names[0] == "airplane"
    assert json.loads((tmp_path / "margins.json").read_text())["inputs"].startswith("SYNTHETIC")

"""Partial-isometry regularizer: coordinates, metric, Jacobian, penalty (exact and Hutchinson), objective, digits."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from fire_plugin.distances import fisher_rao
from fire_plugin.isometry import (
    PartialIsometryObjective,
    delta_m,
    eta_schedule,
    isometry_jacobian,
    isometry_scale,
    log_t_from_logits,
    partial_isometry_loss,
    partial_isometry_penalty,
    t1,
    t2,
    t_from_logits,
    theta_from_logits,
)

D = torch.float64


def _mlp(n_in: int = 6, classes: int = 4, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(n_in, 7), nn.Tanh(), nn.Linear(7, classes)).to(D)


def _cnn(classes: int = 4, seed: int = 0) -> nn.Module:  # 1x5x5 inputs
    torch.manual_seed(seed)
    return nn.Sequential(
        nn.Conv2d(1, 3, 3), nn.Tanh(), nn.Conv2d(3, 2, 2), nn.ELU(), nn.Flatten(), nn.Linear(2 * 2 * 2, classes)
    ).to(D)


def _naive_jacobian(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Reference: one autograd call per sample and per row, the reference formula t = T2(T1(theta))."""
    out = []
    for b in range(x.shape[0]):
        xb = x[b : b + 1].clone().requires_grad_(True)
        t = t2(t1(theta_from_logits(model(xb))))[0]
        rows = [torch.autograd.grad(t[i], xb, retain_graph=True)[0].flatten() for i in range(t.shape[0])]
        out.append(torch.stack(rows))
    return torch.stack(out)


def _fd_jacobian(model: nn.Module, x: torch.Tensor, h: float = 1e-6) -> torch.Tensor:
    """Central finite differences of t_from_logits(model(x)) over every input coordinate, (B, m, n)."""
    n = x[0].numel()
    eye = torch.eye(n, dtype=D).view(n, *x.shape[1:])
    with torch.no_grad():
        cols = []
        for b in range(x.shape[0]):
            plus = t_from_logits(model(x[b] + h * eye))  # (n, m)
            minus = t_from_logits(model(x[b] - h * eye))
            cols.append(((plus - minus) / (2 * h)).T)
    return torch.stack(cols)


# ----------------------------------------------------------------------------------------------- constants


def test_delta_m_is_the_fisher_rao_distance_from_a_vertex_to_the_centre():
    for k in (2, 3, 10):
        vertex = torch.tensor([[80.0] + [0.0] * (k - 1)], dtype=D)  # softmax within e^-80 of a vertex
        centre = torch.zeros(1, k, dtype=D)
        assert delta_m(k) == pytest.approx(float(fisher_rao(vertex, centre)[0]), rel=1e-12)
    assert delta_m(2) == pytest.approx(math.pi / 2, rel=1e-15)


def test_eta_schedule_is_the_papers_geometric_rule():
    epochs = 30
    etas = [eta_schedule(e, epochs) for e in range(epochs)]
    for e, eta in enumerate(etas):  # the paper's rule with i = e + 1
        i = e + 1
        assert eta == pytest.approx(0.002 * (0.006 / 0.002) ** ((i - 1) / (epochs - 1)), rel=1e-14)
    ratios = [b / a for a, b in zip(etas, etas[1:], strict=False)]
    assert max(ratios) - min(ratios) < 1e-12 and ratios[0] > 1
    assert etas[0] == 0.002 and etas[-1] == 0.006
    assert eta_schedule(0, 1) == 0.002
    assert eta_schedule(3, 5, 0.01, 0.01) == 0.01


@pytest.mark.parametrize(
    ("call", "name"),
    [
        (lambda: delta_m(1), "num_classes"),
        (lambda: eta_schedule(0, 3, 0.5, 0.1), "eta_min"),
        (lambda: eta_schedule(0, 3, 0.1, 1.5), "eta_max"),
        (lambda: eta_schedule(0, 3, -0.1, 0.5), "eta_min"),
        (lambda: eta_schedule(0, 3, 0.0, 0.5), "eta_min"),
        (lambda: eta_schedule(3, 3), "epoch"),
        (lambda: eta_schedule(0, 0), "epochs"),
        (lambda: PartialIsometryObjective(epsilon=0.0), "epsilon"),
        (lambda: PartialIsometryObjective(epsilon=-1.0), "epsilon"),
        (lambda: PartialIsometryObjective(epsilon=float("nan")), "epsilon"),
        (lambda: PartialIsometryObjective(epsilon=1.0, eta_min=0.1, eta_max=0.05), "eta_min"),
        (lambda: PartialIsometryObjective(epsilon=1.0, eta_max=2.0), "eta_max"),
        (lambda: PartialIsometryObjective(epsilon=1.0, estimator="power"), "estimator"),
        (lambda: PartialIsometryObjective(epsilon=1.0, n_probes=0), "n_probes"),
        (lambda: PartialIsometryObjective(epsilon=1.0, n_probes=2.5), "n_probes"),
        (lambda: partial_isometry_penalty(_mlp(), torch.rand(2, 6, dtype=D), epsilon=0.0), "epsilon"),
        (lambda: partial_isometry_loss(_mlp(), torch.rand(2, 6, dtype=D), torch.zeros(2, dtype=torch.long),
                                       epsilon=1.0, eta=1.5), "eta"),
    ],
)
def test_bad_arguments_raise_value_errors_naming_them(call, name):
    with pytest.raises(ValueError, match=rf"\b{name}="):
        call()


# ----------------------------------------------------------------------------------------------- coordinates


def test_stable_chain_matches_the_direct_formulas_and_maps_into_the_domain():
    torch.manual_seed(0)
    logits = 3 * torch.randn(64, 5, dtype=D)
    t_ref = t2(t1(theta_from_logits(logits)))
    torch.testing.assert_close(t_from_logits(logits), t_ref, rtol=1e-12, atol=0)
    t = t_from_logits(logits)
    assert bool((t > 0).all()) and bool((t.norm(dim=-1) > 2).all())
    # inverse stereographic projection recovers theta: t/2 -> unit sphere -> mu / 2 -> theta = (mu / 2)^2
    s2 = (t / 2).square().sum(-1, keepdim=True)
    theta_back = torch.cat([(t / (s2 + 1)).square(), ((s2 - 1) / (s2 + 1)).square()], dim=-1)
    torch.testing.assert_close(theta_back, torch.softmax(logits, -1), rtol=1e-10, atol=1e-14)


def test_extreme_logits_stay_finite_with_finite_gradients():
    logits = torch.tensor([[0.0, -60.0, -60.0], [-60.0, 0.0, -60.0], [-30.0, -30.0, 0.0]], requires_grad=True)
    log_t = log_t_from_logits(logits)
    assert bool(torch.isfinite(log_t).all())
    # the direct formula takes sqrt of 1 - sqrt(theta_last) ~ 0 and loses everything on the last row
    (grad,) = torch.autograd.grad(log_t.sum(), logits)
    assert bool(torch.isfinite(grad).all())
    # row 3 (last class confident): t_i = 2 sqrt(theta_i) (1 + sqrt(theta_last)) / (1 - theta_last) in closed form,
    # with theta_i = e^-30 / z, theta_last = 1 / z, z = 1 + 2 e^-30 (the direct float64 formula, which takes
    # sqrt(4 - |mu|^2), is off by 1.7e-4 here)
    z = 1 + 2 * math.exp(-30)
    ref = 2 * math.exp(-15) / math.sqrt(z) * (1 + 1 / math.sqrt(z)) / (2 * math.exp(-30) / z)
    torch.testing.assert_close(log_t[2].double().exp(), torch.full((2,), ref, dtype=D), rtol=1e-6, atol=0)


def test_the_fisher_metric_is_conformal_in_t_coordinates():
    """J_T^T g_t J_T equals the Fisher metric of eq 2, with g_t = 4 / (1 + |t/2|^2)^2 I (eq 12)."""
    torch.manual_seed(1)
    for k in (2, 4, 10):
        theta_full = torch.distributions.Dirichlet(torch.ones(k, dtype=D)).sample()
        theta = theta_full[:-1]
        jac = torch.autograd.functional.jacobian(lambda th: t2(t1(th)), theta)  # (m, m)
        t = t2(t1(theta))
        g_t = 4.0 / (1.0 + (t / 2).square().sum()) ** 2
        fisher = torch.diag(1.0 / theta) + 1.0 / theta_full[-1]  # eq 2
        torch.testing.assert_close(g_t * jac.T @ jac, fisher, rtol=1e-10, atol=1e-10)


def test_eq13_disagrees_with_the_derivation():
    """c(x) from eq 12 makes the pullback metric (delta/eps)^2 I (eq 10); eq 13 does not (but at theta_last = 1/4)."""
    k, eps = 3, 0.7
    delta = delta_m(k)
    last = torch.tensor([0.05, 0.09, 0.25, 0.5, 0.9], dtype=D)
    theta = torch.stack([(1 - last) * 0.3, (1 - last) * 0.7, last], dim=-1)
    logits = theta.log()
    c = isometry_scale(logits, epsilon=eps)
    t = t_from_logits(logits)
    g_t = 4.0 / (1.0 + (t / 2).square().sum(-1)) ** 2
    # J J^T = c I with a conformal metric g_t I gives the pullback (in an orthonormal basis) c * g_t I
    torch.testing.assert_close(c * g_t, torch.full_like(c, (delta / eps) ** 2), rtol=1e-12, atol=0)
    # the paper's own intermediate form delta^2 (|t/2|^2 + 1)^2 / (4 eps^2) agrees with ours ...
    torch.testing.assert_close(c, delta**2 * ((t / 2).square().sum(-1) + 1) ** 2 / (4 * eps**2), rtol=1e-12, atol=0)
    # ... but eq 13 does not
    eq13 = delta**2 * last / (eps**2 * (2 * last.sqrt() - (1 - last)) ** 2)
    ratio = eq13 / c
    assert ratio[2].item() == pytest.approx(1.0, rel=1e-12)  # theta_last = 1/4: the only agreement
    assert ratio[1].item() == pytest.approx(0.09 / 0.31**2 * 0.7**2, rel=1e-12)  # theta_last = 0.09: 2.2x too small
    assert all(abs(r - 1) > 0.5 for i, r in enumerate(ratio.tolist()) if i != 2)  # 0.12, 0.46, 0.051, 0.00073
    # and eq 13 blows up at theta_last = 3 - 2 sqrt(2) inside the simplex
    root = 3 - 2 * math.sqrt(2)
    assert abs(2 * math.sqrt(root) - (1 - root)) < 1e-15


# ----------------------------------------------------------------------------------------------- Jacobian


@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_isometry_jacobian_matches_finite_differences_and_a_per_row_loop(make):
    model = make()
    torch.manual_seed(2)
    x = torch.rand(5, 6, dtype=D) if make is _mlp else torch.rand(5, 1, 5, 5, dtype=D)
    jac = isometry_jacobian(model, x)
    assert jac.shape == (5, 3, x[0].numel())
    torch.testing.assert_close(jac, _naive_jacobian(model, x), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(jac, _fd_jacobian(model, x), rtol=1e-6, atol=1e-8)


def test_batchnorm_in_training_mode_is_refused_and_eval_mode_works():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(6, 5), nn.BatchNorm1d(5), nn.Linear(5, 3)).to(D)
    x = torch.rand(4, 6, dtype=D)
    with pytest.raises(ValueError, match="BatchNorm"):
        isometry_jacobian(model, x)
    with pytest.raises(ValueError, match="BatchNorm"):
        PartialIsometryObjective(epsilon=1.0)(model.eval(), x, torch.zeros(4, dtype=torch.long))  # sets train()
    model.eval()
    torch.testing.assert_close(isometry_jacobian(model, x), _naive_jacobian(model, x), rtol=1e-10, atol=1e-12)


# ----------------------------------------------------------------------------------------------- penalty


class _IsometricModel(nn.Module):
    """x -> t = t0 + A (x - x0) -> logits = log theta(t) (inverse chart): its t-Jacobian is A everywhere."""

    def __init__(self, t0: torch.Tensor, a: torch.Tensor, x0: torch.Tensor) -> None:
        super().__init__()
        self.t0, self.a, self.x0 = t0, a, x0

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        t = self.t0 + (x.flatten(1) - self.x0) @ self.a.T  # (B, m)
        s2 = (t / 2).square().sum(-1, keepdim=True)
        theta = torch.cat([(t / (s2 + 1)).square(), ((s2 - 1) / (s2 + 1)).square()], dim=-1)
        return theta.log()


def _isometric(m: int, n: int, epsilon: float, scale: float = 1.0) -> tuple[nn.Module, torch.Tensor, float]:
    torch.manual_seed(3)
    x0 = torch.rand(1, n, dtype=D)
    t0 = 1.0 + torch.rand(m, dtype=D)  # t > 0 and |t| > 2 for m >= 4
    q, _ = torch.linalg.qr(torch.randn(n, m, dtype=D))  # orthonormal columns
    theta_last = ((t0 / 2).square().sum() - 1) ** 2 / ((t0 / 2).square().sum() + 1) ** 2
    c = delta_m(m + 1) ** 2 / (epsilon**2 * (1 - theta_last.sqrt()) ** 2)
    model = _IsometricModel(t0, scale * c.sqrt() * q.T, x0)
    return model, x0, float(c)


def test_penalty_vanishes_on_a_partial_isometry_and_matches_its_analytic_value_off_it():
    m, n, eps = 4, 9, 0.3
    model, x0, c = _isometric(m, n, eps)
    torch.testing.assert_close(isometry_jacobian(model, x0) @ isometry_jacobian(model, x0).transpose(1, 2),
                               c * torch.eye(m, dtype=D).unsqueeze(0), rtol=1e-10, atol=1e-10 * c)
    for estimator, probes in (("exact", 1), ("hutchinson", 1), ("orthogonal", 1), ("deflated", 2)):
        p = partial_isometry_penalty(model, x0, epsilon=eps, estimator=estimator, n_probes=probes)
        assert abs(p.item()) < 1e-9 * eps**2 * c
    r = 1.3  # J J^T = r^2 c I: alpha = eps^2 |r^2 - 1| c sqrt(m)
    model, x0, c = _isometric(m, n, eps, scale=r)
    expected = eps**2 * abs(r**2 - 1) * c * math.sqrt(m)
    assert partial_isometry_penalty(model, x0, epsilon=eps).item() == pytest.approx(expected, rel=1e-10)
    squared = partial_isometry_penalty(model, x0, epsilon=eps, squared=True).item()
    assert squared == pytest.approx(expected**2, rel=1e-10)
    # M = k I: every Rademacher probe gives |M v|^2 = k^2 m exactly
    hutch = partial_isometry_penalty(model, x0, epsilon=eps, estimator="hutchinson", n_probes=3).item()
    assert hutch == pytest.approx(expected, rel=1e-10)
    # ... and so does every orthogonal probe, |v|^2 = m
    orth = partial_isometry_penalty(model, x0, epsilon=eps, estimator="orthogonal", n_probes=1).item()
    assert orth == pytest.approx(expected, rel=1e-10)
    # deflated: |A e_c|^2 = k^2 and every probe of the other m - 1 coordinates gives k^2 (m - 1)
    defl = partial_isometry_penalty(model, x0, epsilon=eps, estimator="deflated", n_probes=3).item()
    assert defl == pytest.approx(expected, rel=1e-10)


def test_exact_penalty_equals_eq14_from_the_jacobian():
    model = _cnn()
    x = torch.rand(6, 1, 5, 5, dtype=D)
    eps = 0.8
    jac = isometry_jacobian(model, x)
    c = isometry_scale(model(x), epsilon=eps)
    eye = torch.eye(3, dtype=D)
    per_sample = eps**2 * torch.linalg.matrix_norm(jac @ jac.transpose(1, 2) - c[:, None, None] * eye)
    p = partial_isometry_penalty(model, x, epsilon=eps)
    assert p.item() == pytest.approx(per_sample.mean().item(), rel=1e-10)


def test_hutchinson_mean_matches_the_exact_squared_norm():
    model = _mlp(classes=5)
    x = torch.rand(3, 6, dtype=D)
    eps = 20.0  # large enough that J J^T, not the diagonal c I, dominates M (a diagonal M needs a single probe)
    exact = partial_isometry_penalty(model, x, epsilon=eps, squared=True).item()
    torch.manual_seed(4)
    hutch = partial_isometry_penalty(model, x, epsilon=eps, estimator="hutchinson", n_probes=2000,
                                     squared=True).item()
    # one probe has a relative std of 27% here (measured over 300 seeds), so 2000 probes about 0.6%;
    # measured error with seed 4: -0.11%
    assert hutch == pytest.approx(exact, rel=0.02)
    torch.manual_seed(4)
    rooted = partial_isometry_penalty(model, x, epsilon=eps, estimator="hutchinson", n_probes=2000).item()
    exact_norm = partial_isometry_penalty(model, x, epsilon=eps).item()
    assert rooted == pytest.approx(exact_norm, rel=0.02)  # measured -0.10%
    torch.manual_seed(4)
    one = partial_isometry_penalty(model, x, epsilon=eps, estimator="hutchinson", squared=True).item()
    assert one != pytest.approx(exact, rel=0.02)  # a single probe is visibly noisy


def _replicated_draws(estimator: str, n_probes: int, squared: bool, reps: int = 4000, seed: int = 12):
    """Per-sample penalties of ``reps`` copies of 3 inputs in one batch: every copy draws its own probes, so column
    ``j`` holds ``reps`` independent draws of sample ``j``'s estimate. Returns (draws (reps, 3), exact (3,))."""
    import fire_plugin.isometry as iso

    model = _mlp(classes=5)
    torch.manual_seed(seed)
    x = torch.rand(3, 6, dtype=D)
    eps = 20.0  # J J^T, not the diagonal c I, dominates A (a diagonal A makes sign and orthogonal probes exact)
    exact, _ = iso._penalty_and_logits(model, x, epsilon=eps, estimator="exact", n_probes=1, squared=squared)
    torch.manual_seed(seed + 1)
    est, _ = iso._penalty_and_logits(model, x.repeat(reps, 1), epsilon=eps, estimator=estimator, n_probes=n_probes,
                                     squared=squared)
    return est.detach().view(reps, 3), exact.detach()


@pytest.mark.parametrize(("estimator", "n_probes"),
                         [("hutchinson", 1), ("orthogonal", 1), ("orthogonal", 2), ("deflated", 2)])
def test_squared_estimators_are_unbiased_and_the_norm_is_biased_low(estimator, n_probes):
    """E[estimate of alpha^2] = alpha^2 (eq 14 squared); its root underestimates alpha (Jensen), as documented."""
    draws, exact = _replicated_draws(estimator, n_probes, squared=True)
    mean, se = draws.mean(0), draws.std(0) / math.sqrt(draws.shape[0])
    z = ((mean - exact) / se).abs()
    # unbiased: within 4 standard errors (measured |z| <= 2.3 over the 12 cases); noisy: not a constant
    assert bool((z < 4).all()), (mean / exact, z)
    assert bool((draws.std(0) > 1e-3 * exact).all())
    norms, exact_norm = _replicated_draws(estimator, n_probes, squared=False)
    torch.testing.assert_close(norms, draws.sqrt(), rtol=1e-12, atol=0)  # the same probes: the norm is the root
    rel = norms / exact_norm - 1  # (draws, 3)
    pooled = rel.mean(1)  # the relative bias of the 3-sample batch mean, per draw
    bias, se_b = pooled.mean(), pooled.std() / math.sqrt(pooled.shape[0])
    if estimator == "deflated":  # low variance, so a bias too small for 4000 draws: measured -0.08% (z = -2.0)
        assert bias < 2 * se_b, (bias, se_b)
    else:  # biased low beyond noise: measured -0.8% (z = -7.7) with one Rademacher probe, -8.4% / -2.9% orthogonal
        assert bias < -4 * se_b, (bias, se_b)


def test_orthogonal_blocks_reduce_variance_as_sampling_without_replacement_and_a_full_block_is_exact():
    """k columns of one Haar orthogonal matrix sum to an estimate whose variance is Var_1 (m - k) / (k (m - 1))
    (the k column estimates are exchangeable and their m-sum is the exact trace, so Cov = -Var_1 / (m - 1))."""
    one, _ = _replicated_draws("orthogonal", 1, squared=True)
    two, _ = _replicated_draws("orthogonal", 2, squared=True)
    three, exact = _replicated_draws("orthogonal", 3, squared=True)
    m = 4
    for k, draws in ((2, two), (3, three)):
        ratio = draws.var(0) / one.var(0)
        expected = (m - k) / (k * (m - 1))  # 1/3 and 1/9; i.i.d. probes would give 1/2 and 1/3
        # measured ratios / expected: 0.96-1.01 (k = 2), 0.96-1.00 (k = 3) with 4000 draws
        torch.testing.assert_close(ratio, torch.full_like(ratio, expected), rtol=0.2, atol=0)
    full, exact4 = _replicated_draws("orthogonal", 4, squared=True, reps=5)  # m = 4: one whole block per sample
    torch.testing.assert_close(full, exact4.expand_as(full), rtol=1e-10, atol=0)
    twice, _ = _replicated_draws("orthogonal", 8, squared=False, reps=5)
    _, exact_norm = _replicated_draws("exact", 1, squared=False, reps=1)
    torch.testing.assert_close(twice, exact_norm.expand_as(twice), rtol=1e-10, atol=0)


def test_deflation_of_the_most_probable_class_halves_the_noise_of_rademacher_probes():
    """One exact column (the largest mu) plus n - 1 sign probes of the others: at the same n products, a standard
    deviation about half that of n Rademacher probes on this MLP (the column carries the largest entries of A)."""
    for n in (2, 3):
        deflated, _ = _replicated_draws("deflated", n, squared=True)
        rademacher, _ = _replicated_draws("hutchinson", n, squared=True)
        ratio = deflated.std(0) / rademacher.std(0)
        assert bool((ratio < 0.8).all()), ratio  # measured 0.51-0.63 (n = 2), 0.45-0.54 (n = 3)
    with pytest.raises(ValueError, match=r"n_probes=1 is not allowed with estimator='deflated'"):
        PartialIsometryObjective(epsilon=1.0, estimator="deflated", n_probes=1)


def test_hutchinson_probes_follow_torchs_global_generator():
    model = _mlp()
    x = torch.rand(4, 6, dtype=D)
    torch.manual_seed(7)
    a = partial_isometry_penalty(model, x, epsilon=1.0, estimator="hutchinson")
    b = partial_isometry_penalty(model, x, epsilon=1.0, estimator="hutchinson")
    torch.manual_seed(7)
    c = partial_isometry_penalty(model, x, epsilon=1.0, estimator="hutchinson")
    assert a.item() == c.item() and a.item() != b.item()


@pytest.mark.parametrize(("estimator", "squared", "n_probes"),
                         [("exact", False, 1), ("exact", True, 1), ("hutchinson", False, 2), ("hutchinson", True, 1),
                          ("orthogonal", False, 1), ("orthogonal", True, 2), ("deflated", False, 2),
                          ("deflated", True, 3)])
@pytest.mark.parametrize("make", [_mlp, _cnn])
def test_weight_gradients_match_finite_differences(make, estimator, squared, n_probes):
    model = make()
    torch.manual_seed(5)
    x = torch.rand(4, 6, dtype=D) if make is _mlp else torch.rand(4, 1, 5, 5, dtype=D)
    params = list(model.parameters())
    eps = 1.5

    def penalty() -> torch.Tensor:
        torch.manual_seed(11)  # the same probes at every evaluation
        return partial_isometry_penalty(model, x, epsilon=eps, estimator=estimator, n_probes=n_probes,
                                        squared=squared)

    grads = torch.autograd.grad(penalty(), params)
    assert all(bool(g.abs().sum() > 0) for g in grads)
    gen = torch.Generator().manual_seed(6)
    directions = [torch.randn(p.shape, dtype=D, generator=gen) for p in params]
    h = 1e-5
    with torch.no_grad():
        for p, d in zip(params, directions, strict=True):
            p.add_(h * d)
        plus = penalty().item()
        for p, d in zip(params, directions, strict=True):
            p.sub_(2 * h * d)
        minus = penalty().item()
        for p, d in zip(params, directions, strict=True):
            p.add_(h * d)
    numeric = (plus - minus) / (2 * h)
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, directions, strict=True))
    assert analytic == pytest.approx(numeric, rel=1e-6)


# ----------------------------------------------------------------------------------------------- objective


def test_objective_is_eq15_with_the_scheduled_eta_and_train_mode():
    model = _cnn()
    model.eval()
    x = torch.rand(6, 1, 5, 5, dtype=D)
    y = torch.tensor([0, 1, 2, 3, 0, 1])
    obj = PartialIsometryObjective(epsilon=0.9, eta_min=0.01, eta_max=0.04, estimator="exact")
    obj.set_epoch(1, 3)
    assert obj.eta == pytest.approx(0.02, rel=1e-12)
    out = obj(model, x, y)
    assert model.training and out.logits_adv is None
    expected = 0.98 * F.cross_entropy(model(x), y) + 0.02 * partial_isometry_penalty(model, x, epsilon=0.9)
    assert out.loss.item() == pytest.approx(expected.item(), rel=1e-12)
    torch.testing.assert_close(out.logits_nat, model(x))
    # soft targets through targets_fn replace the labels in the cross-entropy
    soft = torch.full((6, 4), 0.25, dtype=D)
    out_soft = obj(model, x, y, targets_fn=lambda logits: soft)
    expected_soft = 0.98 * F.cross_entropy(model(x), soft) + 0.02 * partial_isometry_penalty(model, x, epsilon=0.9)
    assert out_soft.loss.item() == pytest.approx(expected_soft.item(), rel=1e-12)


def test_training_defaults_to_one_rademacher_probe_and_exact_is_one_argument_away():
    from fire_plugin import cli
    from fire_plugin.experiments import build_objective
    from fire_plugin.isometry import DEFAULT_ESTIMATOR, ESTIMATORS

    assert DEFAULT_ESTIMATOR == "hutchinson" and set(cli.ESTIMATOR_CHOICES) == set(ESTIMATORS)
    assert cli.ESTIMATOR_CHOICES[0] == DEFAULT_ESTIMATOR  # the CLI lists its default first
    model = _cnn()
    x, y = torch.rand(6, 1, 5, 5, dtype=D), torch.tensor([0, 1, 2, 3, 0, 1])
    for obj in (PartialIsometryObjective(epsilon=0.9), build_objective("isometry", model, isometry_epsilon=0.9)):
        assert (obj.estimator, obj.n_probes) == ("hutchinson", 1)
        obj.set_epoch(0, 1)
        torch.manual_seed(3)
        loss = obj(model, x, y).loss
        torch.manual_seed(3)  # the same probes through the penalty function
        penalty = partial_isometry_penalty(model, x, epsilon=0.9, estimator="hutchinson")
        expected = (1 - obj.eta) * F.cross_entropy(model(x), y) + obj.eta * penalty
        assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    exact = PartialIsometryObjective(epsilon=0.9, estimator="exact")
    exact_value = partial_isometry_penalty(model, x, epsilon=0.9)  # the penalty function itself is exact by default
    assert exact.config()["estimator"] == "exact" and exact_value.item() > 0


def test_objective_state_dict_round_trip():
    obj = PartialIsometryObjective(epsilon=2.0, estimator="hutchinson", n_probes=3)
    obj.set_epoch(4, 5)
    state = obj.state_dict()
    other = PartialIsometryObjective(epsilon=2.0, estimator="hutchinson", n_probes=3)
    other.load_state_dict(state)
    assert other.eta == obj.eta == 0.006 and other.epoch == 4
    other.load_state_dict({})  # the base-class default state
    assert other.eta == 0.006


@pytest.mark.parametrize("estimator", ["exact", "hutchinson", "orthogonal", "deflated"])
def test_resume_with_the_eta_schedule_is_bit_identical(digits_train, tmp_path, estimator):
    import timm
    from torch.utils.data import DataLoader, TensorDataset

    from fire_plugin.engine import fit

    x, y = digits_train

    def run(epochs: int, ckpt, model=None):
        if model is None:
            torch.manual_seed(0)
            model = timm.create_model("digits_cnn", num_classes=10)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        torch.manual_seed(1)  # loader shuffling
        loader = DataLoader(TensorDataset(x[:64], y[:64]), batch_size=32, shuffle=True)
        obj = PartialIsometryObjective(epsilon=5.0, eta_min=0.01, eta_max=0.1, estimator=estimator,
                                       n_probes=2 if estimator == "deflated" else 1)
        history = fit(model, loader, epochs=epochs, objective=obj, optimizer=opt, checkpoint_dir=ckpt, verbose=False)
        return model, history, obj

    full, hist_full, obj_full = run(2, tmp_path / "full")
    run(1, tmp_path / "split")
    torch.manual_seed(123)  # a resumed run restores the RNG from the checkpoint; this must not matter
    resumed, hist_resumed, obj_resumed = run(2, tmp_path / "split")
    assert obj_full.eta == obj_resumed.eta == 0.1
    assert [h["loss"] for h in hist_full] == [h["loss"] for h in hist_resumed]
    for a, b in zip(full.state_dict().values(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b)


@pytest.mark.slow
def test_partial_isometry_is_more_robust_than_ce_on_digits(digits_train, digits_test):
    """digits_cnn, 30 epochs, batch 32, SGD lr 0.05 momentum 0.9, cosine decay; PGD-Linf 40 steps of 0.01 (the
    paper's attack) on the 450 test digits; robust accuracy counts every test image.

    Regularized: eq 15 with delta_m / epsilon = 1 (epsilon = delta_m(10), about 2.5, in [0, 1] pixel units) and
    eta from 0.02 to 0.06 (10x the paper's). Measured (CPU, 1 torch thread, torch 2.14.1):

    ============  ======  ========  ========  ========
    model         clean   eps 0.05  eps 0.1   eps 0.2
    ============  ======  ========  ========  ========
    CE            0.993   0.893     0.556     0.047
    regularized   0.891   0.867     0.764     0.122
    ============  ======  ========  ========  ========

    The paper's own setting (delta_m / epsilon = 1e-3, eta 0.002 to 0.006, plain SGD lr 0.01) collapses to a
    constant prediction on digits (clean 0.100): its penalty, scaled by epsilon^2 = 6.2e6, outweighs the
    cross-entropy. We assert half of the measured gaps at eps 0.1 (0.208) and eps 0.2 (0.075).
    """
    import timm
    import torchattacks
    from torch.utils.data import DataLoader, TensorDataset

    from fire_plugin.engine import CrossEntropyObjective, fit

    x, y = digits_train
    xt, yt = digits_test
    results = {}
    for name in ("ce", "pi"):
        torch.manual_seed(0)
        model = timm.create_model("digits_cnn", num_classes=10)
        opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
        loader = DataLoader(TensorDataset(x, y), batch_size=32, shuffle=True)
        objective = (CrossEntropyObjective() if name == "ce" else
                     PartialIsometryObjective(epsilon=delta_m(10), eta_min=0.02, eta_max=0.06, estimator="exact"))
        sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt, T_max=30)
        fit(model, loader, epochs=30, objective=objective, optimizer=opt, scheduler=sched, verbose=False)
        model.eval()
        with torch.no_grad():
            row = {"clean": float((model(xt).argmax(1) == yt).float().mean())}
        for eps in (0.05, 0.1, 0.2):
            torch.manual_seed(0)
            adv = torchattacks.PGD(model, eps=eps, alpha=0.01, steps=40, random_start=True)(xt, yt)
            with torch.no_grad():
                row[eps] = float((model(adv).argmax(1) == yt).float().mean())
        results[name] = row
    assert results["pi"][0.1] > results["ce"][0.1] + 0.1, results
    assert results["pi"][0.2] > results["ce"][0.2] + 0.035, results
    assert results["pi"]["clean"] > 0.8, results


@pytest.mark.parametrize(("estimator", "squared"),
                         [("exact", False), ("hutchinson", True), ("orthogonal", False), ("deflated", True)])
def test_autograd_backend_used_for_ddp_matches_torch_func(monkeypatch, estimator, squared):
    import fire_plugin._isometry_chart as chart
    import fire_plugin.isometry as iso

    model = _cnn()
    x = torch.rand(4, 1, 5, 5, dtype=D)
    results = []
    for backend in (chart._linearize, chart._linearize_autograd):
        monkeypatch.setattr(iso, "_linearize", backend)
        model.zero_grad()
        torch.manual_seed(9)
        value = partial_isometry_penalty(model, x, epsilon=1.5, estimator=estimator, n_probes=3, squared=squared)
        value.backward()
        results.append((value.detach(), [p.grad.clone() for p in model.parameters()]))
    torch.testing.assert_close(results[0][0], results[1][0], rtol=1e-12, atol=0)
    for a, b in zip(results[0][1], results[1][1], strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)


_DDP_SCRIPT = """
import os, torch, torch.distributed as dist
from torch import nn
os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=os.environ["PORT"])
dist.init_process_group("gloo", rank=0, world_size=1)
from fire_plugin.isometry import PartialIsometryObjective
torch.manual_seed(0)
net = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Flatten(), nn.Linear(4 * 6 * 6, 10))
ddp = nn.parallel.DistributedDataParallel(net)
x, y = torch.rand(8, 1, 8, 8), torch.randint(0, 10, (8,))
for estimator in ("exact", "hutchinson"):
    grads = []
    for model in (ddp, net):
        net.zero_grad()
        torch.manual_seed(1)
        PartialIsometryObjective(epsilon=3.0, estimator=estimator)(model, x, y).loss.backward()
        grads.append([p.grad.clone() for p in net.parameters()])
    assert all(torch.allclose(a, b, rtol=1e-5, atol=1e-6) for a, b in zip(*grads)), estimator
dist.destroy_process_group()
print("ok")
"""


@pytest.mark.slow
def test_objective_runs_through_distributed_data_parallel(tmp_path):
    """torch.func cannot run DDP's forward; the objective falls back to torch.autograd for DDP models (gloo, 1 rank)."""
    import os
    import socket
    import subprocess
    import sys

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    script = tmp_path / "ddp.py"
    script.write_text(_DDP_SCRIPT)
    env = {**os.environ, "PORT": str(port), "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-2000:]

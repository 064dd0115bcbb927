"""Tests for fire_plugin.gaussian (section 4 / Appendix B lab) and its figures in fire_plugin.plots.

References are independent of the code under test: the paper's footnote 3 and figure captions, brute-force
angle grids, Monte Carlo estimates, mpmath at 50 digits, finite differences and scikit-learn's logistic
regression.
"""

from __future__ import annotations

import json
import math

import mpmath
import numpy as np
import pytest
from scipy import stats

from fire_plugin import gaussian as g

mpmath.mp.dps = 50


@pytest.fixture(scope="module")
def paper() -> g.GaussianModel:
    return g.paper_setting()


def _brute_curve(mu, sigma, eps, n=200_000):
    """Accuracies on a dense angle grid, written out independently of the module."""
    a = np.linspace(0.0, 2 * np.pi, n, endpoint=False)
    t = np.stack([np.cos(a), np.sin(a)], axis=1)
    mean = t @ np.asarray(mu)
    std = np.sqrt(np.einsum("ki,ij,kj->k", t, np.asarray(sigma), t))
    return a, stats.norm.cdf(mean / std), stats.norm.cdf((mean - eps) / std)


def _random_setting(rng: np.random.Generator, eps: float = 0.1) -> g.GaussianModel:
    # footnote 2's recipe: mu ~ N(0, 1/400), Sigma = A A^T with A ~ N(0, 1/400)
    mu = rng.normal(0.0, 1 / 20, size=2)
    a = rng.normal(0.0, 1 / 20, size=(2, 2))
    return g.GaussianModel(mu, a @ a.T + 1e-4 * np.eye(2), eps)


# ---------------------------------------------------------------------------------------------------------
# Closed forms against the paper


def test_footnote3_natural_optimum(paper):
    p = paper.natural_optimum()
    assert abs(p.alpha - 1.814) <= 2e-3
    assert round(p.natural_accuracy, 3) == 0.784
    assert round(p.adversarial_accuracy, 3) == 0.183


def test_footnote3_adversarial_optimum(paper):
    p = paper.adversarial_optimum()
    assert abs(p.alpha - 2.783) <= 2e-3
    assert round(p.natural_accuracy, 3) == 0.608
    assert round(p.adversarial_accuracy, 3) == 0.309


def test_optima_match_brute_force_grid(paper):
    a, nat, adv = _brute_curve(paper.mu, paper.sigma, paper.eps)
    assert paper.natural_optimum().alpha == pytest.approx(a[np.argmax(nat)], abs=1e-4)
    assert paper.natural_optimum().natural_accuracy == pytest.approx(nat.max(), abs=1e-9)
    assert paper.adversarial_optimum().alpha == pytest.approx(a[np.argmax(adv)], abs=1e-4)
    assert paper.adversarial_optimum().adversarial_accuracy == pytest.approx(adv.max(), abs=1e-9)


def test_fig2_caption_thetas(paper):
    # Fig. 2a: the minimizer of Pe shown is the population CE minimizer 2 Sigma^-1 mu; Fig. 2b: the unit
    # vector at alpha_adv.
    np.testing.assert_allclose(paper.bayes_theta(), [-6.4290, 25.7487], atol=1e-3)
    alpha_b = math.atan2(0.3509, -0.9364)
    assert paper.adversarial_optimum().alpha == pytest.approx(alpha_b, abs=2e-3)


@pytest.mark.parametrize("seed", range(5))
def test_theta_nat_direction_is_sigma_inv_mu(seed):
    model = _random_setting(np.random.default_rng(seed))
    w = np.linalg.inv(model.sigma) @ model.mu
    np.testing.assert_allclose(model.natural_optimum().theta, w / np.linalg.norm(w), atol=1e-12)
    a, nat, _ = _brute_curve(model.mu, model.sigma, model.eps)
    assert model.natural_optimum().natural_accuracy >= nat.max() - 1e-12
    assert abs(math.remainder(model.natural_optimum().alpha - a[np.argmax(nat)], 2 * math.pi)) < 1e-4


@pytest.mark.parametrize("theta", [[-0.2422, 0.9702], [-0.9360, 0.3519], [1.0, 0.3], [0.4, -2.0]])
def test_errors_match_monte_carlo(paper, theta):
    rng = np.random.default_rng(123)
    n = 200_000
    y = rng.choice([-1.0, 1.0], size=n)
    x = y[:, None] * paper.mu + rng.multivariate_normal(np.zeros(2), paper.sigma, size=n)
    t = np.asarray(theta)
    x_adv = x - paper.eps * y[:, None] * t / np.linalg.norm(t)  # eq (19)
    pe_mc = np.mean(np.sign(x @ t) != y)
    pe_adv_mc = np.mean(np.sign(x_adv @ t) != y)
    for closed, mc in ((paper.natural_error(t), pe_mc), (paper.adversarial_error(t), pe_adv_mc)):
        se = math.sqrt(closed * (1 - closed) / n)
        assert abs(closed - mc) < 5 * se


def test_adversary_of_eq19_is_worst_case_in_the_ball(paper):
    # no point of the L2 ball lowers the margin y theta^T x' below the one of eq (19)
    rng = np.random.default_rng(0)
    t = np.array([0.7, -1.3])
    x, y = paper.sample(100, seed=1)  # (200, 2)
    worst = y * (x @ t) - paper.eps * np.linalg.norm(t)
    d = rng.normal(size=(200, 500, 2))  # uniform in the disk of radius eps
    d *= paper.eps * rng.uniform(0, 1, size=(200, 500, 1)) ** 0.5 / np.linalg.norm(d, axis=-1, keepdims=True)
    margins = y[:, None] * ((x[:, None, :] + d) @ t)
    assert np.all(margins >= worst[:, None] - 1e-12)


@pytest.mark.parametrize("seed", range(20))
def test_prop2_bounds_hold(seed):
    rng = np.random.default_rng(seed)
    n = int(rng.integers(2, 5))
    a = rng.normal(size=(n, n))
    model = g.GaussianModel(rng.normal(size=n), a @ a.T + 0.05 * np.eye(n), float(rng.uniform(0, 2)))
    thetas = rng.normal(size=(50, n))
    lo, hi = model.prop2_bounds(thetas)
    pe_adv = model.adversarial_error(thetas)
    assert np.all(lo <= pe_adv + 1e-12) and np.all(pe_adv <= hi + 1e-12)
    # the bounds are attained on the extreme eigenvectors (Rayleigh quotient), so they cannot be loosened
    _, vecs = np.linalg.eigh(model.sigma)
    v_max, v_min = vecs[:, -1], vecs[:, 0]
    assert model.prop2_bounds(v_max)[0] == pytest.approx(model.adversarial_error(v_max), abs=1e-12)
    assert model.prop2_bounds(v_min)[1] == pytest.approx(model.adversarial_error(v_min), abs=1e-12)


def test_prop2_bounds_tight_for_isotropic_sigma():
    model = g.GaussianModel([0.3, -0.1], 0.2 * np.eye(2), 0.25)
    t = np.random.default_rng(1).normal(size=(10, 2))
    lo, hi = model.prop2_bounds(t)
    np.testing.assert_allclose(lo, model.adversarial_error(t), rtol=1e-12)
    np.testing.assert_allclose(hi, model.adversarial_error(t), rtol=1e-12)


def test_pareto_points_not_dominated(paper):
    front = paper.pareto_front(1200)
    a, nat, adv = _brute_curve(paper.mu, paper.sigma, paper.eps, n=20_011)
    for fn, fa in zip(front.natural, front.adversarial, strict=True):
        assert not np.any((nat > fn + 1e-9) & (adv > fa + 1e-9))
    # every weighted-sum maximizer of the dense curve is (close to) a point of the front
    for beta in np.linspace(0, 1, 11):
        k = np.argmax(beta * nat + (1 - beta) * adv)
        dist = np.hypot(front.natural - nat[k], front.adversarial - adv[k]).min()
        assert dist < 2e-3
    # the front runs from the natural optimum to the adversarial optimum
    assert front.natural[0] == pytest.approx(paper.natural_optimum().natural_accuracy, abs=1e-12)
    assert front.adversarial[-1] == pytest.approx(paper.adversarial_optimum().adversarial_accuracy, abs=1e-12)


def test_maa_matches_brute_force(paper):
    value, alpha = paper.maa()
    a, nat, adv = _brute_curve(paper.mu, paper.sigma, paper.eps)
    avg = 0.5 * (nat + adv)
    assert value == pytest.approx(avg.max(), abs=1e-9)
    assert value >= avg.max() - 1e-12
    assert alpha == pytest.approx(a[np.argmax(avg)], abs=1e-3)


def test_accuracy_curve_matches_point_formulas(paper):
    curve = paper.accuracy_curve(16)
    t = np.stack([np.cos(curve.alpha), np.sin(curve.alpha)], axis=1)
    np.testing.assert_allclose(curve.natural, 1 - paper.natural_error(t), rtol=1e-12)
    np.testing.assert_allclose(curve.adversarial, 1 - paper.adversarial_error(t), rtol=1e-12)


def test_errors_independent_of_theta_norm(paper):
    t = np.array([0.3, 0.8])
    assert paper.natural_error(t) == pytest.approx(paper.natural_error(37.0 * t), rel=1e-12)
    assert paper.adversarial_error(t) == pytest.approx(paper.adversarial_error(1e-6 * t), rel=1e-12)


# ---------------------------------------------------------------------------------------------------------
# Divergences on latent codes


_CODES = [(0.0, 0.3), (1.0, -2.0), (-3.0, 4.5), (12.0, 12.5), (40.0, 40.001), (-35.0, -34.0), (-700.0, 700.0),
          (5.0, 5.0), (0.0, 1e-7)]


def _mp_p(h):
    return 1 / (1 + mpmath.exp(-mpmath.mpf(h)))


@pytest.mark.parametrize(("ha", "hb"), _CODES)
def test_fisher_rao_binary_against_mpmath(ha, hb):
    ref = 2 * abs(mpmath.atan(mpmath.exp(mpmath.mpf(hb) / 2)) - mpmath.atan(mpmath.exp(mpmath.mpf(ha) / 2)))
    got = float(g.fisher_rao_binary(ha, hb))
    assert got == pytest.approx(float(ref), rel=1e-12, abs=1e-30)


@pytest.mark.parametrize(("ha", "hb"), _CODES)
def test_kl_and_hellinger_against_mpmath(ha, hb):
    p, q, p_neg, q_neg = _mp_p(ha), _mp_p(hb), _mp_p(-ha), _mp_p(-hb)  # q(1|.), q(-1|.) without 1 - p
    kl = p * mpmath.log(p / q) + p_neg * mpmath.log(p_neg / q_neg)
    bc = mpmath.sqrt(p * q) + mpmath.sqrt(p_neg * q_neg)
    h2 = 2 * (1 - bc)
    fr2 = (2 * mpmath.acos(min(bc, mpmath.mpf(1)))) ** 2
    assert float(g.binary_divergence("kl", ha, hb)) == pytest.approx(float(kl), rel=1e-6, abs=1e-15)
    assert float(g.binary_divergence("hellinger", ha, hb)) == pytest.approx(float(h2), rel=1e-9, abs=1e-30)
    assert float(g.binary_divergence("fisher_rao", ha, hb)) == pytest.approx(float(fr2), rel=1e-9, abs=1e-30)


def test_fisher_rao_equals_multiclass_formula_and_bounds():
    rng = np.random.default_rng(0)
    ha, hb = rng.normal(0, 4, size=(2, 1000))
    d = g.fisher_rao_binary(ha, hb)
    p, q = 1 / (1 + np.exp(-ha)), 1 / (1 + np.exp(-hb))
    bc = np.sqrt(p * q) + np.sqrt((1 - p) * (1 - q))
    ok = d > 1e-3  # arccos is ill-conditioned near 1: compare where it is accurate
    np.testing.assert_allclose(d[ok], 2 * np.arccos(np.clip(bc[ok], -1, 1)), rtol=1e-6)
    assert np.all(d <= 0.5 * np.abs(hb - ha) + 1e-12)  # Proposition 1
    kl = g.binary_divergence("kl", ha, hb)
    assert np.all(1 - np.cos(d / 2) <= 0.5 * kl + 1e-12)  # Theorem 3
    np.testing.assert_allclose(g.binary_divergence("hellinger", ha, hb), 2 * (1 - np.cos(d / 2)), atol=1e-14)


# ---------------------------------------------------------------------------------------------------------
# Empirical risk


@pytest.mark.parametrize("regularizer", g.REGULARIZERS)
@pytest.mark.parametrize("adversary", g.ADVERSARIES)
def test_objective_gradient_matches_finite_differences(paper, regularizer, adversary):
    x, y = paper.sample(300, seed=3)
    rng = np.random.default_rng(4)

    def risk(theta):
        return g.erm_objective(theta, x, y, regularizer=regularizer, lam=2.5, eps=0.1, adversary=adversary)

    for theta in (rng.normal(0, 5, size=2), np.array([-6.4, 25.7]), np.array([1e-3, -2e-3])):
        _, grad = risk(theta)
        h = 1e-6 * max(1.0, float(np.linalg.norm(theta)))
        fd = [(risk(theta + h * e)[0] - risk(theta - h * e)[0]) / (2 * h) for e in np.eye(2)]
        np.testing.assert_allclose(grad, fd, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("regularizer", g.REGULARIZERS)
def test_objective_value_and_gradient_at_zero(paper, regularizer):
    x, y = paper.sample(500, seed=5)
    value, grad = g.erm_objective(np.zeros(2), x, y, regularizer=regularizer, lam=7.0, eps=0.1)
    assert value == pytest.approx(math.log(2), rel=1e-14)
    np.testing.assert_allclose(grad, -0.5 * np.mean(y[:, None] * x, axis=0), rtol=1e-12)


def test_objective_value_against_direct_formula(paper):
    x, y = paper.sample(200, seed=6)
    t = np.array([-2.0, 5.0])
    h = x @ t
    hp = (x - 0.1 * y[:, None] * t / np.linalg.norm(t)) @ t
    p, q = 1 / (1 + np.exp(-h)), 1 / (1 + np.exp(-hp))
    ce = -np.log(1 / (1 + np.exp(-y * h)))
    kl = p * np.log(p / q) + (1 - p) * np.log((1 - p) / (1 - q))
    value, _ = g.erm_objective(t, x, y, regularizer="kl", lam=3.0, eps=0.1)
    assert value == pytest.approx(np.mean(ce + 3.0 * kl), rel=1e-10)


def test_grid_terms_match_objective(paper):
    x, y = paper.sample(200, seed=7)
    angles, radii = np.array([0.3, 2.0, 4.0]), np.array([0.5, 8.0])
    for reg in g.REGULARIZERS:
        ce, r = g._grid_terms(x, y, reg, 0.1, "ce", angles, radii)
        for i, rad in enumerate(radii):
            for j, a in enumerate(angles):
                theta = rad * np.array([math.cos(a), math.sin(a)])
                ref = g.erm_objective(theta, x, y, regularizer=reg, lam=1.7, eps=0.1)[0]
                assert ce[i, j] + 1.7 * r[i, j] == pytest.approx(ref, rel=1e-12)


def test_sweep_at_eps_zero_gives_the_natural_optimum_for_every_lambda():
    from sklearn.linear_model import LogisticRegression

    base = g.paper_setting()
    model = g.GaussianModel(base.mu, base.sigma, 0.0)
    x, y = model.sample(2000, seed=11)
    ref = LogisticRegression(C=1e10, fit_intercept=False, tol=1e-10, max_iter=10_000).fit(x, y).coef_[0]
    best = model.natural_optimum().natural_accuracy
    for reg in g.REGULARIZERS:
        sweep = g.erm_sweep(reg, [0.0, 0.1, 10.0, 1000.0], model=model, n_per_class=2000, seed=11)
        np.testing.assert_allclose(sweep.thetas, np.tile(ref, (4, 1)), rtol=1e-3)
        assert np.all(best - sweep.natural_accuracy < 2e-3)
        assert np.all(sweep.converged)


def test_large_lambda_limit_is_the_ridge_direction(paper):
    # for large lambda theta -> 0 and every regularizer is ~ c * eps^2 ||theta||^2, so theta -> mean(y x)
    x, y = paper.sample(2000, seed=2)
    m = np.mean(y[:, None] * x, axis=0)
    for reg in g.REGULARIZERS:
        sweep = g.erm_sweep(reg, [1e5], n_per_class=2000, seed=2)
        assert sweep.alpha[0] == pytest.approx(math.atan2(m[1], m[0]) % (2 * math.pi), abs=1e-3)


def test_global_minimizer_never_worse_than_local(paper):
    lams = [0.0, 0.5, 30.0]
    for reg in g.REGULARIZERS:
        loc = g.erm_sweep(reg, lams, n_per_class=1000, seed=3)
        glo = g.erm_sweep(reg, lams, n_per_class=1000, seed=3, global_minimizer=True, n_grid_radii=12,
                          n_grid_angles=36)
        assert glo.solver == "bfgs-global-polar" and loc.solver == "bfgs-local"
        assert np.all(glo.objective <= loc.objective + 1e-12)


# ---------------------------------------------------------------------------------------------------------
# Coverage


def _fake_sweep(model: g.GaussianModel, alphas: np.ndarray) -> g.SweepResult:
    t = np.stack([np.cos(alphas), np.sin(alphas)], axis=1)
    nat, adv = model.accuracies(t)
    k = alphas.size
    return g.SweepResult(
        regularizer="fisher_rao",
        solver="fake",
        adversary="ce",
        lambdas=np.arange(k, dtype=float),
        thetas=t,
        natural_accuracy=np.asarray(nat),
        adversarial_accuracy=np.asarray(adv),
        alpha=alphas,
        objective=np.zeros(k),
        converged=np.ones(k, bool),
        from_grid=np.zeros(k, bool),
        n_per_class=1,
        seed=0,
        eps=model.eps,
    )


def test_coverage_full_half_and_maa(paper):
    front = paper.pareto_front(1200)
    full = g.sweep_coverage(paper, _fake_sweep(paper, front.alpha[::3]), n_angles=1200)
    assert full.covered_share == 1.0 and full.uncovered_segments == ()
    maa, maa_alpha = paper.maa()
    assert full.best_average_accuracy == pytest.approx(maa, abs=1e-5)  # grid spacing 0.016 rad
    half = g.sweep_coverage(paper, _fake_sweep(paper, front.alpha[: front.alpha.size // 2]), tol=1e-9,
                            n_angles=1200)
    assert half.covered_share == pytest.approx(0.5, abs=0.01)
    assert len(half.uncovered_segments) == 1
    assert half.pareto_alpha_span[0] == pytest.approx(paper.natural_optimum().alpha, abs=1e-6)
    assert half.pareto_alpha_span[1] == pytest.approx(paper.adversarial_optimum().alpha, abs=1e-6)
    one = g.sweep_coverage(paper, _fake_sweep(paper, np.array([maa_alpha])))
    assert one.maa_gap == pytest.approx(0.0, abs=1e-9)
    assert one.sweep_alpha_span == pytest.approx((maa_alpha, maa_alpha))


def test_circular_span_wraps():
    lo, hi = g._circular_span(np.array([6.2, 0.1, 0.2]))
    assert lo == pytest.approx(6.2) and hi == pytest.approx(0.2 + 2 * math.pi)


# ---------------------------------------------------------------------------------------------------------
# Validation, report


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"mu": [0.0, 1.0], "sigma": [[1.0, 2.0], [2.0, 1.0]], "eps": 0.1}, "positive definite"),
        ({"mu": [0.0, 1.0], "sigma": [[1.0, 0.1], [0.0, 1.0]], "eps": 0.1}, "symmetric"),
        ({"mu": [0.0, 1.0], "sigma": np.eye(3), "eps": 0.1}, "sigma"),
        ({"mu": [0.0, 1.0], "sigma": np.eye(2), "eps": -0.1}, "eps"),
        ({"mu": [[0.0, 1.0]], "sigma": np.eye(2), "eps": 0.1}, "mu"),
    ],
)
def test_model_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        g.GaussianModel(**kwargs)


def test_input_validation(paper):
    with pytest.raises(ValueError, match="theta"):
        paper.natural_error([0.0, 0.0])
    with pytest.raises(ValueError, match="regularizer"):
        g.erm_sweep("trades", [1.0], n_per_class=10)
    with pytest.raises(ValueError, match="lambdas"):
        g.erm_sweep("kl", [-1.0], n_per_class=10)
    with pytest.raises(ValueError, match="n_per_class"):
        g.erm_sweep("kl", [1.0], n_per_class=0)
    with pytest.raises(ValueError, match="adversary"):
        g.erm_sweep("kl", [1.0], n_per_class=10, adversary="pgd")
    with pytest.raises(ValueError, match="dim 2"):
        g.GaussianModel([1.0, 0.0, 0.0], np.eye(3), 0.1).maa()


def test_run_report_writes_json_and_figures(tmp_path):
    report = g.run_report(tmp_path / "lab", lambdas=[0.0, 1.0], n_per_class=300, include_global=False,
                          verbose=False)
    data = json.loads((tmp_path / "lab" / "gaussian_report.json").read_text())
    assert set(data["coverage"]) == {f"{r}/bfgs-local" for r in g.REGULARIZERS}
    assert data["closed_forms"]["maa"] == pytest.approx(g.paper_setting().maa()[0])
    for key in ("fig2", "fig3", "fig4", "fig5", "fig6"):
        path = tmp_path / "lab" / f"gaussian_{key}.png"
        assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert report["files"][key] == str(path)



# ---------------------------------------------------------------------------------------------------------
# Module structure: data flow one way (gaussian_model -> gaussian_erm -> plots -> gaussian_report)

_IMPORT_PROBE = """
import sys, types
pkg = types.ModuleType("fire_plugin")  # the package without its __init__ (which imports torch-based modules)
pkg.__path__ = [sys.argv[1]]
sys.modules["fire_plugin"] = pkg
def loaded(prefix):
    return sorted(m for m in sys.modules if m == prefix or m.startswith(prefix + "."))
for name in ("fire_plugin.gaussian_model", "fire_plugin.gaussian_erm", "fire_plugin.gaussian"):
    __import__(name)
    for bad in ("fire_plugin.plots", "fire_plugin.gaussian_report", "matplotlib", "torch"):
        assert not loaded(bad), (name, "imported", loaded(bad))
import fire_plugin.gaussian_report  # control: the report module does draw, and the probe sees it
assert loaded("fire_plugin.plots") and loaded("matplotlib"), "probe cannot see imports"
print("ok")
"""


def test_gaussian_modules_import_neither_plots_nor_matplotlib():
    import subprocess
    import sys
    from pathlib import Path

    pkg_dir = str(Path(g.__file__).parent)
    out = subprocess.run([sys.executable, "-c", _IMPORT_PROBE, pkg_dir], capture_output=True, text=True,
                         timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_gaussian_reexports_every_public_name():
    from fire_plugin import gaussian_erm, gaussian_model, gaussian_report

    for name in g.__all__:
        obj = getattr(g, name)
        homes = [m for m in (gaussian_model, gaussian_erm, gaussian_report) if getattr(m, name, None) is obj]
        assert homes, name
    assert g.run_report is gaussian_report.run_report
    assert "run_report" in dir(g)
    with pytest.raises(AttributeError, match="no_such_name"):
        g.no_such_name  # noqa: B018


@pytest.mark.slow
def test_paper_sweeps_global_not_worse_and_converged(paper):
    lams = [0.0, *np.logspace(-2, 3, 11)]
    for reg in g.REGULARIZERS:
        loc = g.erm_sweep(reg, lams)
        glo = g.erm_sweep(reg, lams, global_minimizer=True)
        assert np.all(glo.objective <= loc.objective + 1e-12)
        assert np.all(glo.converged) and np.all(loc.converged)

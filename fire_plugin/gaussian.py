"""The Gaussian/logistic lab of section 4 and Appendix B of the FIRE paper: the public entry point.

Binary classes ``y in {-1, +1}``, equally likely, with ``x | y ~ N(y mu, Sigma)``; a logistic model
``q(y|x) = 1 / (1 + exp(-y theta^T x))``; the cross-entropy-maximizing L2 adversary of eq (19),
``x' = x - eps * y * theta / ||theta||``. Everything accuracy-related has a closed form (eqs 20-24), so the
accuracy-robustness trade-off can be studied exactly, and the empirical risk minimizers of FIRE (Fisher-Rao),
TRADES (KL) and Hellinger regularization can be placed against the exact Pareto front.

Weights: ``lam`` multiplies the paper's regularizer as written, i.e. ``d^2`` with the Fisher-Rao distance
``d = 2 * arccos(BC)`` of Theorem 1 / eq (15), ``KL(q(.|x) || q(.|x'))`` of eq (6), and
``H^2 = 2 (1 - BC)`` of eq (46). The authors' public code uses ``beta * arccos(BC)^2``, i.e.
``beta = 4 * lam`` for Fisher-Rao.

The lab lives in three modules, by concept; this module re-exports their public names:

- :mod:`fire_plugin.gaussian_model`: :class:`GaussianModel` and its closed forms (accuracies, Proposition 2,
  optima, MAA, Pareto front), :func:`paper_setting`, divergences on latent codes.
- :mod:`fire_plugin.gaussian_erm`: :func:`erm_objective`, :func:`erm_sweep`, :func:`sweep_coverage`.
- :mod:`fire_plugin.gaussian_report`: ``run_report``, the pipeline that writes the JSON report and the figures.
  It is the only one that draws (through :mod:`fire_plugin.plots`), so it is imported on first use of
  ``fire_plugin.gaussian.run_report``: importing this module loads numpy and scipy, never matplotlib.

>>> model = paper_setting()
>>> value, alpha = model.maa()
>>> round(value, 3), round(alpha, 2)
(0.49, 2.07)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fire_plugin.gaussian_erm import (
    ADVERSARIES,
    DEFAULT_LAMBDAS,
    FIG4_LAMBDAS,
    Coverage,
    SweepResult,
    erm_objective,
    erm_sweep,
    sweep_coverage,
)
from fire_plugin.gaussian_erm import _grid_terms as _grid_terms  # private, tested through this module
from fire_plugin.gaussian_model import (
    REGULARIZERS,
    AccuracyCurve,
    GaussianModel,
    OperatingPoint,
    binary_divergence,
    fisher_rao_binary,
    paper_setting,
)
from fire_plugin.gaussian_model import _circular_span as _circular_span  # private, tested through this module

if TYPE_CHECKING:
    from fire_plugin.gaussian_report import run_report

__all__ = [
    "REGULARIZERS",
    "ADVERSARIES",
    "DEFAULT_LAMBDAS",
    "FIG4_LAMBDAS",
    "AccuracyCurve",
    "OperatingPoint",
    "SweepResult",
    "Coverage",
    "GaussianModel",
    "paper_setting",
    "fisher_rao_binary",
    "binary_divergence",
    "erm_objective",
    "erm_sweep",
    "sweep_coverage",
    "run_report",
]


def __getattr__(name: str) -> Any:
    """Import :func:`fire_plugin.gaussian_report.run_report` on first use (it pulls in matplotlib)."""
    if name == "run_report":
        from fire_plugin.gaussian_report import run_report

        return run_report
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), "run_report"])

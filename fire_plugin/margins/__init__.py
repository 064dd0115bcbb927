"""Fisher-Rao margins by natural-gradient tracing, and class-shielding analysis.

Implements "Problem of Perceived Robustness" (De and Saefken): the data-space Fisher information of a classifier
``p(.|x)`` with ``m`` classes and ``n`` input dimensions,

    G_x = sum_c p_c grad log p_c grad log p_c^T = L^T diag(p) L,

with ``L`` the ``m x n`` Jacobian of the log-probabilities, is a Riemannian metric on the input space; the
Fisher-Rao (FR) margin of ``(x, y)`` is the FR length of the shortest path that changes the predicted class.

:func:`trace_margins` follows, for every input and every target class ``k``, natural-gradient steps on the log-odds
``L_k(x) = log p_y(x) - log p_k(x)`` in the damped metric ``G_x + damping * I`` until the predicted class changes.

Sign of the step. The paper's algorithm solves ``(G_x + lambda I) v = g`` with ``g = grad L_k``, sets
``delta = v / sqrt(g^T v)`` and updates ``x <- x + delta`` (its step 6). Since ``g^T v > 0``, that update *increases*
``L_k`` to first order, i.e. it moves deeper into class ``y`` and away from ``k``, the opposite of what the loop
("while argmax = y") needs. We take ``x <- x - step * delta``, which decreases ``L_k`` (moves toward ``k``);
``step = 1`` gives the paper's unit steps.

Input box. Every point is clamped to ``clamp`` (``[0, 1]`` by default, recorded in the result). Coordinates pinned
at the box that a step would push outward are removed from the problem (``L`` restricted to the free coordinates,
the solve repeated), so paths slide along the faces of the box instead of stalling against them.

Path length. Each step adds the closed-form Fisher-Rao distance (Theorem 2 of Picot et al.,
:func:`fire_plugin.distances.fisher_rao`) between the predictions before and after the step, not the first-order
metric estimate: the sum is exact on a monotone one-dimensional path (binary logistic model), converges to the path
length as ``step`` shrinks, accounts for clamping to the input box, and is never below the FR distance between the
path's end points (triangle inequality). The last step is refined by bisection so that the crossing is located
within 1% of a step; the path ends just past the decision boundary. Where the damping dominates ``G_x`` (saturated
softmax), a step of damped length ``step`` is up to ``step / sqrt(damping)`` long in l2 and can jump across the
whole boundary region in one go; a step that moves the prediction by more than ``2 * step`` (FR distance) is
therefore shortened along its direction, by bisection, to at most ``step``, so that paths follow the geometry and
their lengths converge as ``step`` shrinks.

What the flow does. As ``damping -> 0`` with a Jacobian of full rank ``m - 1``, ``L v`` is proportional to
``e_y / p_y - e_k / p_k``: the step moves probability from ``y`` to ``k`` and leaves every other class unchanged
(to first order). The path then runs along the arc ``p_y + p_k = const`` of the simplex, and another class ``c``
shields ``k`` exactly when ``p_c > (p_y + p_k) / 2`` at the start (the paper's "shielding necessitates
intermediate mass"); larger damping, large steps and the input box make the flow deviate from this.

Solvers for ``(G_x + lambda I) v = g`` (``g = L^T e`` with ``e = e_y - e_k``):

* ``"exact"``: the Woodbury (push-through) identity ``(L^T D L + lambda I)^{-1} L^T = L^T (D K + lambda I)^{-1}``
  with ``D = diag(p)`` and the ``m x m`` Gram matrix ``K = L L^T`` (equivalently, with ``A = D^{1/2} L``,
  ``(A^T A + lambda I)^{-1} A^T = A^T (A A^T + lambda I)^{-1}``), so ``v = L^T c`` with
  ``c = (D K + lambda I)^{-1} e``: ``m - 1`` vector-Jacobian products (on the whole batch of paths) and an
  ``m x m`` solve in float64; no cancellation as ``lambda -> 0`` and no division by ``p``. The Jacobian is the
  cost: each step's Jacobian reuses the forward pass that checked the step before (the graph is kept for the rows
  that did not move afterwards), and the paths that have not left their input (its ``m - 1`` targets and their
  half-step twins) share one Jacobian per input.
* ``"cg"``: conjugate gradients on ``G_x + lambda I`` with matrix-free products ``G_x u = L^T (p * (L u))`` (one
  Jacobian-vector and one vector-Jacobian product per iteration), for many classes.
* ``"auto"``: ``"exact"`` when ``m <= 32``, else ``"cg"``.
* ``"dense"``: a reference that builds the ``n x n`` matrix ``G_x`` and calls ``torch.linalg.solve`` (tests and the
  benchmark baseline only; refused for ``n > 4096``).

:func:`shielding_report` turns a :class:`MarginResult` into the paper's table: shielding %, mean FR margin and mean
``||delta||_2`` per class, vulnerability rank, and the source x first-hit path matrix.

>>> import torch
>>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(4, 3))
>>> x, y = torch.rand(2, 1, 2, 2), torch.tensor([0, 1])
>>> result = trace_margins(model, x, y, clamp=None, verbose=False)
>>> len(result), result.num_classes
(4, 3)

Layout: :mod:`~fire_plugin.margins.metric` (the metric and the solves), :mod:`~fire_plugin.margins.trace` (the
tracer), :mod:`~fire_plugin.margins.results` (:class:`MarginResult`), :mod:`~fire_plugin.margins.shielding` (the
class-shielding table, rank correlations, arc margins), :mod:`~fire_plugin.margins.convergence` (the half-step check
and the step/damping study) and :mod:`~fire_plugin.margins.report` (the ``fire-plugin margins`` pipeline: files and
figures; imported on its own, it is not loaded by ``import fire_plugin.margins``).
"""

from __future__ import annotations

from fire_plugin.margins.convergence import ConvergenceStudy, convergence_study, half_step_check
from fire_plugin.margins.metric import SOLVERS, data_fisher_matvec, natural_gradient_direction
from fire_plugin.margins.results import DEFAULT_DAMPING, DEFAULT_STEP, MODES, STATUSES, MarginResult
from fire_plugin.margins.shielding import ShieldingReport, arc_margins, shielding_report, spearman
from fire_plugin.margins.trace import fr_margin, trace_margins

__all__ = [
    "ConvergenceStudy",
    "DEFAULT_DAMPING",
    "DEFAULT_STEP",
    "MODES",
    "SOLVERS",
    "STATUSES",
    "MarginResult",
    "ShieldingReport",
    "arc_margins",
    "convergence_study",
    "data_fisher_matvec",
    "fr_margin",
    "half_step_check",
    "natural_gradient_direction",
    "shielding_report",
    "spearman",
    "trace_margins",
]

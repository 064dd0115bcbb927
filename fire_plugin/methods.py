"""The training methods of the package, in one registry: name, display name, loss, training attack, objective.

Every pipeline (``fire-plugin train``, :mod:`fire_plugin.experiments`, :mod:`fire_plugin.presets`, the demo) and
the CLI read the methods from here. A method has one name; older spellings are accepted as aliases (``"ace"``, the
adversarial cross-entropy of Madry et al., is ``"madry"``). Importing this module does not import torch (the CLI's
parser lists the names); the builders import what they need.

Weights: every method's default weight is its matched value. FIRE's ``lam`` multiplies ``d^2`` with
``d = 2 arccos(BC)`` (the paper's lambda = 12 in the authors' code, ``beta = 4 lam``, is ``lam = 3`` here); TRADES'
``beta`` multiplies ``KL(p_nat || p_adv)``; Hellinger's ``lam`` multiplies ``H^2 = 2 (1 - BC)``. Near equality
``d^2 ~ 2 KL ~ 4 H^2``, so ``lam = 3``, ``beta = 6`` and ``lam = 12`` regularize with the same local strength.

Example:
    >>> get_method("ace").name, get_method("madry").display
    ('madry', 'Madry PGD-AT')
    >>> [m.name for m in METHODS.values() if m.adversarial]
    ['fire', 'trades', 'hellinger', 'mart', 'madry']
    >>> get_method("fire").default_weight, get_method("fire").weight_name
    (3.0, 'lam')
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:  # torch is imported by the builders only
    from torch import Tensor, nn

    from fire_plugin.engine import Objective

__all__ = [
    "ALIASES",
    "METHODS",
    "Method",
    "accepted_names",
    "build_objective",
    "canonical_name",
    "default_eps_step",
    "get_method",
    "method_attack",
    "method_loss",
]


@dataclass(frozen=True)
class Method:
    """One training method.

    Attributes:
        name: the one name (CLI ``--method``, preset ``method``, run configurations).
        display: how tables and figures name it.
        divergence: the divergence the regularizer and the training attack use (``fisher_rao``, ``kl``,
            ``hellinger``), or None.
        attack: the training attack: ``"divergence-pgd"`` (:class:`fire_plugin.attacks.DivergencePGD` maximizing
            ``divergence``), ``"ce-pgd"`` (cross-entropy PGD, torchattacks), or None (no adversarial batch).
        default_weight: the matched default of the regularizer weight (0 for methods without one).
        weight_name: the weight's name in the paper and the loss class (``lam``, ``beta``), or None.
        convention: what the weight multiplies.
        loss_class: the :mod:`fire_plugin.losses` class of the adversarial loss, or None.
    """

    name: str
    display: str
    divergence: str | None
    attack: str | None
    default_weight: float
    weight_name: str | None
    convention: str
    loss_class: str | None

    @property
    def adversarial(self) -> bool:
        """Whether the method trains on an attack + loss (:class:`fire_plugin.engine.AdversarialObjective`)."""
        return self.attack is not None


METHODS: dict[str, Method] = {m.name: m for m in (
    Method("fire", "FIRE", "fisher_rao", "divergence-pgd", 3.0, "lam",
           "lam on d^2, d = 2 arccos(BC) (the paper's lambda = 12 in the authors' code is lam = 3)", "FIRELoss"),
    Method("trades", "TRADES", "kl", "divergence-pgd", 6.0, "beta", "beta on KL(p_nat || p_adv)", "TRADESLoss"),
    Method("hellinger", "Hellinger", "hellinger", "divergence-pgd", 12.0, "lam", "lam on H^2 = 2 (1 - BC)",
           "HellingerLoss"),
    Method("mart", "MART", None, "ce-pgd", 6.0, "beta", "beta on the misclassification-aware KL term (MART)",
           "MARTLoss"),
    Method("madry", "Madry PGD-AT", None, "ce-pgd", 0.0, None, "no regularizer: cross-entropy on the PGD example",
           "ACELoss"),
    Method("ce", "CE", None, None, 0.0, None, "no regularizer: natural cross-entropy training", None),
    Method("isometry", "Partial isometry", None, None, 0.0, None,
           "eta schedule (eta_min to eta_max) on the partial-isometry penalty, no weight", None),
)}
"""Every training method by its name (the order of tables)."""

ALIASES: dict[str, str] = {"ace": "madry"}
"""Older names still accepted: ``"ace"`` (adversarial cross-entropy) is the ``"madry"`` method."""


def accepted_names() -> tuple[str, ...]:
    """The method names and their aliases, as ``--method`` accepts them.

    >>> accepted_names()[-1]
    'ace'
    """
    return (*METHODS, *ALIASES)


def canonical_name(name: str, *, option: str = "method") -> str:
    """The one name of method ``name`` (an alias gives its method); ``ValueError`` naming ``option`` otherwise.

    >>> canonical_name("ace"), canonical_name("fire")
    ('madry', 'fire')
    """
    if isinstance(name, str) and name in METHODS:
        return name
    if isinstance(name, str) and name in ALIASES:
        return ALIASES[name]
    raise ValueError(f"{option} must be one of {list(METHODS)} (or an alias: "
                     + ", ".join(f"{a} = {m}" for a, m in ALIASES.items()) + f"), got {name!r}")


def get_method(name: str) -> Method:
    """The :class:`Method` of ``name`` or of its alias."""
    return METHODS[canonical_name(name)]


def default_eps_step(eps: float, steps: int) -> float:
    """The default step of a training attack: ``2.5 * eps / steps`` (Madry et al.).

    >>> round(default_eps_step(0.3, 10), 6)
    0.075
    """
    return 2.5 * eps / steps


def method_loss(method: str, weight: float | None = None) -> Callable[[Tensor, Tensor, Tensor], Tensor]:
    """The loss ``loss(logits_nat, logits_adv, y)`` of an adversarial ``method`` at ``weight`` (None: its default).

    Example:
        >>> type(method_loss("trades", 6.0)).__name__, method_loss("trades", 6.0).weight
        ('TRADESLoss', 6.0)
    """
    from fire_plugin import losses

    spec = get_method(method)
    weight = spec.default_weight if weight is None else float(weight)
    if spec.loss_class is None:
        raise ValueError(f"method {spec.name!r} has no adversarial loss (it is not attack + loss)")
    if spec.name == "madry":
        return losses.ACELoss()
    return getattr(losses, spec.loss_class)(**{spec.weight_name or "lam": weight})  # type: ignore[no-any-return]


def method_attack(method: str, model: nn.Module, *, eps: float, eps_step: float, steps: int,
                  norm: str = "Linf") -> Callable[[Tensor, Tensor], Tensor]:
    """The training attack of ``method`` on ``model``: the divergence-maximizing PGD of FIRE, TRADES and Hellinger,
    cross-entropy PGD (random start, as in Madry et al. and MART) of the others.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> type(method_attack("fire", model, eps=0.1, eps_step=0.025, steps=3)).__name__
        'DivergencePGD'
    """
    spec = get_method(method)
    if spec.attack == "ce-pgd":
        import torchattacks

        cls = torchattacks.PGD if norm == "Linf" else torchattacks.PGDL2
        return cls(model, eps=eps, alpha=eps_step, steps=steps, random_start=True)  # type: ignore[no-any-return]
    if spec.attack == "divergence-pgd" and spec.divergence is not None:
        from fire_plugin.attacks import DivergencePGD

        return DivergencePGD(model, divergence=spec.divergence, eps=eps, alpha=eps_step, steps=steps, norm=norm)
    raise ValueError(f"method {spec.name!r} has no training attack (it trains on natural inputs)")


def build_objective(
    method: str,
    model: nn.Module,
    *,
    weight: float | None = None,
    eps: float = 8 / 255,
    eps_step: float | None = None,
    steps: int = 10,
    norm: str = "Linf",
    isometry_epsilon: float | None = None,
    num_classes: int = 10,
    eta_min: float = 0.02,
    eta_max: float = 0.06,
    estimator: str | None = None,
    n_probes: int = 1,
) -> Objective:
    """The training :class:`~fire_plugin.engine.Objective` of ``method`` for ``model``.

    ``weight`` defaults to the method's matched weight; ``eps_step`` to :func:`default_eps_step`. For
    ``"isometry"``, ``isometry_epsilon`` defaults to ``delta_m(num_classes)`` (delta_m / epsilon = 1) and eta goes
    from 0.02 to 0.06: measured on digits. The paper's MNIST setting (delta_m / epsilon = 1e-3, eta 0.002 to 0.006;
    the preset ``mnist-lenet-isometry``) collapses to a constant prediction on digits (clean accuracy 0.10): its
    penalty, scaled by epsilon^2 = 6.2e6, outweighs the cross-entropy. ``estimator`` (None:
    ``fire_plugin.isometry.DEFAULT_ESTIMATOR``) and ``n_probes`` choose how the isometry penalty is estimated.

    Example:
        >>> import torch
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(64, 10))
        >>> type(build_objective("trades", model, eps=0.1)).__name__
        'AdversarialObjective'
    """
    from fire_plugin.engine import AdversarialObjective, CrossEntropyObjective

    spec = get_method(method)
    if spec.name == "ce":
        return CrossEntropyObjective()
    if spec.name == "isometry":
        from fire_plugin.isometry import DEFAULT_ESTIMATOR, PartialIsometryObjective, delta_m

        epsilon = isometry_epsilon if isometry_epsilon is not None else delta_m(num_classes)
        return PartialIsometryObjective(epsilon=epsilon, eta_min=eta_min, eta_max=eta_max,
                                        estimator=estimator or DEFAULT_ESTIMATOR, n_probes=n_probes)
    step = eps_step if eps_step is not None else default_eps_step(eps, steps)
    return AdversarialObjective(method_loss(spec.name, weight),
                                method_attack(spec.name, model, eps=eps, eps_step=step, steps=steps, norm=norm))


def describe_methods() -> list[dict[str, Any]]:
    """One row per method (name, display name, default weight and its convention), for the docs' table.

    >>> describe_methods()[0]["display"]
    'FIRE'
    """
    return [{"name": m.name, "display": m.display, "weight": m.weight_name, "default": m.default_weight,
             "convention": m.convention, "attack": m.attack} for m in METHODS.values()]

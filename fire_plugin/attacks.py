"""torchattacks-compatible attacks that maximize a divergence between clean and adversarial predictions.

:class:`DivergencePGD` is one PGD loop with the divergence as a parameter; :class:`FRPGD` (Linf) and
:class:`FRPGDL2` (L2) are its Fisher-Rao presets. They are drop-in replacements for ``torchattacks.PGD`` /
``torchattacks.PGDL2`` and are the inner maximization of FIRE training (section 5.1 of Picot et al., 2022).
"""

from __future__ import annotations

import logging
from typing import Any

import torch
import torchattacks
from torch import Tensor, nn

from fire_plugin.distances import DIVERGENCES, get_divergence

__all__ = ["NORMS", "DivergencePGD", "FRPGD", "FRPGDL2"]

_logger = logging.getLogger(__name__)

NORMS = ("Linf", "L2")
_RANGE_TOL = 1e-5  # tolerance on [0, 1] for images that went through inverse normalization


def _check_attack_params(divergence: str, eps: float, alpha: float, steps: int, norm: str) -> None:
    if divergence not in DIVERGENCES:
        raise ValueError(f"divergence must be one of {sorted(DIVERGENCES)}, got {divergence!r}")
    if norm not in NORMS:
        raise ValueError(f"norm must be one of {list(NORMS)}, got {norm!r}")
    if not float(eps) >= 0.0:
        raise ValueError(f"eps must be a float >= 0, got {eps!r}")
    if not float(alpha) >= 0.0:
        raise ValueError(f"alpha must be a float >= 0, got {alpha!r}")
    if isinstance(steps, bool) or not isinstance(steps, int) or steps < 1:
        raise ValueError(f"steps must be an int >= 1, got {steps!r}")


def _check_images(images: Any) -> None:
    if not isinstance(images, Tensor):
        raise ValueError(f"images must be a torch.Tensor, got {type(images).__name__}")
    if not images.is_floating_point():
        raise ValueError(f"images must be a floating point tensor with values in [0, 1], got dtype {images.dtype}")
    if images.numel() and (images.min() < -_RANGE_TOL or images.max() > 1 + _RANGE_TOL):
        raise ValueError(
            f"images must lie in [0, 1], got values in [{images.min().item():.4g}, {images.max().item():.4g}]; "
            "for normalized inputs call atk.set_normalization_used(mean, std)"
        )


class DivergencePGD(torchattacks.Attack):
    r"""
    PGD that maximizes a divergence between the clean and the adversarial predictions (label-free, like TPGD).
    With ``divergence="fisher_rao"`` it is the FRD-maximizing attack of FIRE
    'Adversarial Robustness via Fisher-Rao Regularization' [https://arxiv.org/abs/2106.06685];
    with ``divergence="kl"`` it is TRADES' attack [https://arxiv.org/abs/1901.08573].

    Distance Measure : Linf or L2 (``norm``)

    Arguments:
        model (nn.Module): model to attack (returns logits).
        divergence (str): key of ``fire_plugin.distances.DIVERGENCES``: "fisher_rao" (d^2), "kl"
            (KL(p_nat || p_adv)) or "hellinger" (H^2). (Default: "fisher_rao")
        eps (float): maximum perturbation in pixel space. (Default: 8/255)
        alpha (float): step size. (Default: 2/255)
        steps (int): number of steps. (Default: 10)
        norm (str): "Linf" (signed-gradient steps) or "L2" (normalized-gradient steps). (Default: "Linf")
        random_start (bool): start from ``x + 0.001 * N(0, I)`` clamped to [0, 1], as TRADES. Without it the
            divergence has a zero gradient at ``x_adv = x`` and the attack cannot move. (Default: True)

    After each call ``atk.last_stuck`` holds the number of samples whose gradient was zero at every step (left
    unperturbed by the ascent); a warning is logged when it is not 0.

    Shape:
        - images: :math:`(N, C, H, W)` where `N = number of batches`, `C = number of channels`,
          `H = height` and `W = width`. It must have a range [0, 1].
        - labels: :math:`(N)` accepted and unused (the attack is label-free).
        - output: :math:`(N, C, H, W)`.

    Examples::
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> attack = DivergencePGD(model, divergence="fisher_rao", eps=8/255, alpha=2/255, steps=10)
        >>> adv_images = attack(torch.rand(2, 3, 2, 2), torch.tensor([0, 1]))
        >>> bool((adv_images - 0).abs().max() <= 1)
        True
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        divergence: str = "fisher_rao",
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        norm: str = "Linf",
        random_start: bool = True,
    ) -> None:
        _check_attack_params(divergence, eps, alpha, steps, norm)
        super().__init__(type(self).__name__, model)
        self.divergence = divergence
        self.eps = float(eps)
        self.alpha = float(alpha)
        self.steps = steps
        self.norm = norm
        self.random_start = bool(random_start)
        self.supported_mode = ["default"]
        self.last_stuck = 0
        self._divergence_fn = get_divergence(divergence)

    def _sync_device(self) -> None:
        param = next(self.model.parameters(), None)
        if param is not None:
            self.device = param.device

    def forward(self, images: Tensor, labels: Tensor | None = None) -> Tensor:
        r"""
        Overridden.
        """
        _check_images(images)
        self._sync_device()
        images = images.clone().detach().to(self.device)
        with torch.no_grad():
            logits_nat = self.get_logits(images)

        if self.random_start:
            adv = torch.clamp(images + 0.001 * torch.randn_like(images), min=0, max=1).detach()
        else:
            adv = images.clone()

        batch = images.shape[0]
        moved = torch.zeros(batch, dtype=torch.bool, device=images.device)
        for _ in range(self.steps):
            adv.requires_grad_(True)
            logits_adv = self.get_logits(adv)
            cost = self._divergence_fn(logits_nat, logits_adv).sum()
            grad = torch.autograd.grad(cost, adv, retain_graph=False, create_graph=False)[0]
            grad_flat = grad.reshape(batch, -1)
            moved |= grad_flat.abs().amax(dim=1) > 0
            with torch.no_grad():
                if self.norm == "Linf":
                    adv = adv + self.alpha * grad.sign()
                    delta = torch.clamp(adv - images, min=-self.eps, max=self.eps)
                else:
                    grad_norm = grad_flat.norm(p=2, dim=1).clamp_min(1e-12)
                    adv = adv + self.alpha * grad / grad_norm.view(-1, *([1] * (grad.dim() - 1)))
                    delta = adv - images
                    delta_norm = delta.reshape(batch, -1).norm(p=2, dim=1)
                    factor = torch.clamp(self.eps / delta_norm.clamp_min(1e-12), max=1.0)
                    delta = delta * factor.view(-1, *([1] * (grad.dim() - 1)))
                adv = torch.clamp(images + delta, min=0, max=1).detach()

        self.last_stuck = int((~moved).sum().item())
        if self.last_stuck:
            _logger.warning(
                "%s: %d of %d samples had a zero gradient at every step and were not moved by the ascent%s",
                type(self).__name__,
                self.last_stuck,
                batch,
                "" if self.random_start else " (random_start=False starts at the divergence's minimum)",
            )
        return adv


class FRPGD(DivergencePGD):
    r"""
    Fisher-Rao PGD (Linf): maximizes the squared Fisher-Rao distance between clean and adversarial softmax
    outputs, as in 'Adversarial Robustness via Fisher-Rao Regularization' [https://arxiv.org/abs/2106.06685].

    Distance Measure : Linf

    Arguments:
        model (nn.Module): model to attack.
        eps (float): maximum perturbation. (Default: 8/255)
        alpha (float): step size. (Default: 2/255)
        steps (int): number of steps. (Default: 10)
        random_start (bool): TRADES-style start ``x + 0.001 * N(0, I)``. (Default: True)

    Shape:
        - images: :math:`(N, C, H, W)` with values in [0, 1].
        - labels: :math:`(N)`, unused.
        - output: :math:`(N, C, H, W)`.

    Examples::
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> attack = FRPGD(model, eps=8/255, alpha=2/255, steps=10)
        >>> adv_images = attack(torch.rand(2, 3, 2, 2), torch.tensor([0, 1]))
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 8 / 255,
        alpha: float = 2 / 255,
        steps: int = 10,
        random_start: bool = True,
    ) -> None:
        super().__init__(
            model, divergence="fisher_rao", eps=eps, alpha=alpha, steps=steps, norm="Linf", random_start=random_start
        )


class FRPGDL2(DivergencePGD):
    r"""
    Fisher-Rao PGD (L2): maximizes the squared Fisher-Rao distance with normalized-gradient steps,
    'Adversarial Robustness via Fisher-Rao Regularization' [https://arxiv.org/abs/2106.06685].

    Distance Measure : L2

    Arguments:
        model (nn.Module): model to attack.
        eps (float): maximum perturbation. (Default: 0.5)
        alpha (float): step size. (Default: 0.1)
        steps (int): number of steps. (Default: 10)
        random_start (bool): TRADES-style start ``x + 0.001 * N(0, I)``. (Default: True)

    Shape:
        - images: :math:`(N, C, H, W)` with values in [0, 1].
        - labels: :math:`(N)`, unused.
        - output: :math:`(N, C, H, W)`.

    Examples::
        >>> model = torch.nn.Sequential(torch.nn.Flatten(), torch.nn.Linear(12, 3))
        >>> attack = FRPGDL2(model, eps=0.5, alpha=0.1, steps=10)
        >>> adv_images = attack(torch.rand(2, 3, 2, 2), torch.tensor([0, 1]))
    """

    def __init__(
        self,
        model: nn.Module,
        *,
        eps: float = 0.5,
        alpha: float = 0.1,
        steps: int = 10,
        random_start: bool = True,
    ) -> None:
        super().__init__(
            model, divergence="fisher_rao", eps=eps, alpha=alpha, steps=steps, norm="L2", random_start=random_start
        )

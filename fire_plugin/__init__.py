"""fire_plugin: Fisher-Rao (information-geometric) adversarial robustness for ART, torchattacks, timm and RobustBench.

Importing the package registers its architectures with timm (``timm.create_model("small_cnn")`` and friends).
"""

from fire_plugin.attacks import FRPGD, FRPGDL2, DivergencePGD
from fire_plugin.distances import (
    DIVERGENCES,
    bhattacharyya,
    fisher_rao,
    fisher_rao_binary,
    fisher_rao_squared,
    hellinger_squared,
    kl_divergence,
)
from fire_plugin.engine import EpochStats, NonFiniteLossError, SelfAdaptiveTargets, adversarial_step, fit, train_epoch
from fire_plugin.losses import ACELoss, DivergenceRegularizedLoss, FIRELoss, HellingerLoss, MARTLoss, TRADESLoss
from fire_plugin.models import MODEL_NAMES, load_pretrained

__version__ = "0.1.0"

__all__ = [
    "DIVERGENCES",
    "FRPGD",
    "FRPGDL2",
    "MODEL_NAMES",
    "ACELoss",
    "DivergencePGD",
    "DivergenceRegularizedLoss",
    "EpochStats",
    "FIRELoss",
    "HellingerLoss",
    "MARTLoss",
    "NonFiniteLossError",
    "SelfAdaptiveTargets",
    "TRADESLoss",
    "__version__",
    "adversarial_step",
    "bhattacharyya",
    "fisher_rao",
    "fisher_rao_binary",
    "fisher_rao_squared",
    "fit",
    "hellinger_squared",
    "kl_divergence",
    "load_pretrained",
    "train_epoch",
]

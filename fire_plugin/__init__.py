"""fire_plugin: Fisher-Rao (information-geometric) adversarial robustness for ART, torchattacks, timm and RobustBench.

Importing the package registers its architectures with timm (``timm.create_model("small_cnn")`` and friends) and,
unless a real ``autoattack`` package is installed, makes ``autoattack`` an alias of ``pyautoattack`` so that
``import robustbench`` works (see :mod:`fire_plugin._compat`).
"""

from fire_plugin._compat import ensure_autoattack_alias as _ensure_autoattack_alias
from fire_plugin.attacks import FRPGD, FRPGDL2, DivergencePGD
from fire_plugin.data import load_dataset
from fire_plugin.distances import (
    DIVERGENCES,
    bhattacharyya,
    fisher_rao,
    fisher_rao_binary,
    fisher_rao_squared,
    hellinger_squared,
    kl_divergence,
)
from fire_plugin.engine import (
    AdversarialObjective,
    ConfigMismatchError,
    CrossEntropyObjective,
    EpochStats,
    ModelEMA,
    NonFiniteLossError,
    Objective,
    ObjectiveOutput,
    SelfAdaptiveTargets,
    adversarial_step,
    fit,
    lr_scheduler,
    train_epoch,
)
from fire_plugin.evaluation import EvalResult, evaluate
from fire_plugin.gaussian import GaussianModel, paper_setting
from fire_plugin.isometry import PartialIsometryObjective, delta_m, isometry_jacobian, partial_isometry_penalty
from fire_plugin.losses import ACELoss, DivergenceRegularizedLoss, FIRELoss, HellingerLoss, MARTLoss, TRADESLoss
from fire_plugin.margins import MarginResult, fr_margin, shielding_report, trace_margins
from fire_plugin.models import MODEL_NAMES
from fire_plugin.pretrained import load_pretrained
from fire_plugin.robustbench_io import ModelInfo, read_model_info, write_model_info
from fire_plugin.trainers import FIRETrainer, HellingerTrainer, PartialIsometryTrainer, TRADESTrainer

_ensure_autoattack_alias()  # before any `import robustbench` of the user's

__version__ = "0.1.0"

__all__ = [
    "AdversarialObjective",
    "ConfigMismatchError",
    "CrossEntropyObjective",
    "MarginResult",
    "ModelEMA",
    "Objective",
    "ObjectiveOutput",
    "PartialIsometryObjective",
    "delta_m",
    "fr_margin",
    "isometry_jacobian",
    "lr_scheduler",
    "partial_isometry_penalty",
    "shielding_report",
    "trace_margins",
    "DIVERGENCES",
    "FRPGD",
    "FRPGDL2",
    "MODEL_NAMES",
    "ACELoss",
    "DivergencePGD",
    "DivergenceRegularizedLoss",
    "EpochStats",
    "EvalResult",
    "FIRETrainer",
    "GaussianModel",
    "HellingerTrainer",
    "ModelInfo",
    "PartialIsometryTrainer",
    "TRADESTrainer",
    "evaluate",
    "load_dataset",
    "paper_setting",
    "read_model_info",
    "write_model_info",
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

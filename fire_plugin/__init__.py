"""fire_plugin: Fisher-Rao (information-geometric) adversarial robustness for ART, torchattacks, timm and RobustBench.

``import fire_plugin`` is fast: it imports no submodule, no torch. The public names below are loaded on first
access (PEP 562 module ``__getattr__``): ``fire_plugin.FIRELoss`` imports :mod:`fire_plugin.losses` (and torch)
then, ``fire_plugin.FIRETrainer`` imports ART then. Importing a submodule directly (``import fire_plugin.distances``)
imports only what that submodule needs.

Two things still happen at ``import fire_plugin``, both without importing anything (see :mod:`fire_plugin._compat`):

- timm: our architectures (``small_cnn``, ``wrn34_10``, ...) are registered as soon as timm is imported, by anyone,
  so ``import fire_plugin; import timm; timm.create_model("wrn34_10")`` works. Importing :mod:`fire_plugin.models`
  registers them too.
- robustbench: unless a real ``autoattack`` package is installed, ``import autoattack`` resolves to
  ``pyautoattack``, so that a plain ``import robustbench`` works.

>>> import fire_plugin
>>> fire_plugin.fisher_rao.__module__
'fire_plugin.distances'
"""

from __future__ import annotations

import importlib
import importlib.util
from typing import TYPE_CHECKING, Any

from fire_plugin._compat import install_autoattack_finder as _install_autoattack_finder
from fire_plugin._compat import register_models_with_timm as _register_models_with_timm

__version__ = "0.1.0"

#: public name -> the submodule that defines it (loaded on first access)
_LAZY: dict[str, str] = {
    **dict.fromkeys(("FRPGD", "FRPGDL2", "DivergencePGD"), "attacks"),
    "load_dataset": "data",
    **dict.fromkeys(("DIVERGENCES", "bhattacharyya", "fisher_rao", "fisher_rao_binary", "fisher_rao_squared",
                     "hellinger_squared", "kl_divergence"), "distances"),
    **dict.fromkeys(("AdversarialObjective", "ConfigMismatchError", "CrossEntropyObjective", "EpochStats", "ModelEMA",
                     "NonFiniteLossError", "Objective", "ObjectiveOutput", "SelfAdaptiveTargets", "adversarial_step",
                     "fit", "lr_scheduler", "train_epoch"), "engine"),
    **dict.fromkeys(("EvalResult", "evaluate"), "evaluation"),
    **dict.fromkeys(("GaussianModel", "paper_setting"), "gaussian"),
    **dict.fromkeys(("PartialIsometryObjective", "delta_m", "isometry_jacobian", "partial_isometry_penalty"),
                    "isometry"),
    **dict.fromkeys(("ACELoss", "DivergenceRegularizedLoss", "FIRELoss", "HellingerLoss", "MARTLoss", "TRADESLoss"),
                    "losses"),
    "MarginResult": "margins.results",
    **dict.fromkeys(("fr_margin", "trace_margins"), "margins.trace"),
    "shielding_report": "margins.shielding",
    "MODEL_NAMES": "models",
    "load_pretrained": "pretrained",
    **dict.fromkeys(("ModelInfo", "read_model_info", "write_model_info"), "robustbench_io"),
    **dict.fromkeys(("FIRETrainer", "HellingerTrainer", "PartialIsometryTrainer", "TRADESTrainer"), "trainers"),
}

__all__ = [  # explicit, for readers and tools; tests/test_imports.py checks it against _LAZY
    "__version__",
    "ACELoss",
    "adversarial_step",
    "AdversarialObjective",
    "bhattacharyya",
    "ConfigMismatchError",
    "CrossEntropyObjective",
    "delta_m",
    "DivergencePGD",
    "DivergenceRegularizedLoss",
    "DIVERGENCES",
    "EpochStats",
    "EvalResult",
    "evaluate",
    "FIRELoss",
    "FIRETrainer",
    "fisher_rao",
    "fisher_rao_binary",
    "fisher_rao_squared",
    "fit",
    "fr_margin",
    "FRPGD",
    "FRPGDL2",
    "GaussianModel",
    "hellinger_squared",
    "HellingerLoss",
    "HellingerTrainer",
    "isometry_jacobian",
    "kl_divergence",
    "load_dataset",
    "load_pretrained",
    "lr_scheduler",
    "MarginResult",
    "MARTLoss",
    "MODEL_NAMES",
    "ModelEMA",
    "ModelInfo",
    "NonFiniteLossError",
    "Objective",
    "ObjectiveOutput",
    "paper_setting",
    "partial_isometry_penalty",
    "PartialIsometryObjective",
    "PartialIsometryTrainer",
    "read_model_info",
    "SelfAdaptiveTargets",
    "shielding_report",
    "trace_margins",
    "TRADESLoss",
    "TRADESTrainer",
    "train_epoch",
    "write_model_info",
]

if TYPE_CHECKING:  # what type checkers and IDEs see; at run time __getattr__ loads these on first access
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
    from fire_plugin.margins.results import MarginResult
    from fire_plugin.margins.shielding import shielding_report
    from fire_plugin.margins.trace import fr_margin, trace_margins
    from fire_plugin.models import MODEL_NAMES
    from fire_plugin.pretrained import load_pretrained
    from fire_plugin.robustbench_io import ModelInfo, read_model_info, write_model_info
    from fire_plugin.trainers import FIRETrainer, HellingerTrainer, PartialIsometryTrainer, TRADESTrainer


def __getattr__(name: str) -> Any:
    """Load a public name (or a submodule, ``fire_plugin.engine``) on first access and cache it."""
    module_name = _LAZY.get(name)
    if module_name is not None:
        value = getattr(importlib.import_module(f"{__name__}.{module_name}"), name)
    elif not name.startswith("__") and importlib.util.find_spec(f"{__name__}.{name}") is not None:
        value = importlib.import_module(f"{__name__}.{name}")
    else:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(__all__))


_install_autoattack_finder()  # before any `import robustbench` of the user's
_register_models_with_timm()  # timm.create_model("wrn34_10") after `import fire_plugin`, whoever imports timm

"""Named training recipes of the FIRE paper (section 5.1) and the partial-isometry paper (section 4.2).

A preset is a JSON file under ``fire_plugin/presets/`` holding the keys of :data:`SCHEMA` that differ from
:data:`DEFAULTS`; :func:`load_preset` merges it over the defaults and applies ``key=value`` overrides, each parsed
and checked against :data:`SCHEMA` (a bad key or value raises ``ValueError`` naming the key, the value and what
is allowed). :func:`run_preset` trains with :func:`fire_plugin.engine.fit` (checkpoints under
``out/checkpoints``: rerunning the same preset with the same ``out`` resumes, and a changed configuration is
refused), selects ``best.pt`` on a validation split held out from the training data, evaluates the test set
(clean, PGD-20, standard AutoAttack on the first 10,000 images as RobustBench does) and writes next to each other:
``config.json``, ``results.json``, ``results.csv`` and ``model_info/<dataset>/Linf/<id>.json``.

Conventions: ``lam`` of FIRE multiplies ``d^2`` with ``d = 2 arccos(BC)`` (the paper's lambda = 12 in the
authors' code, ``beta = 4 lam``, is lam = 3 here); Hellinger's ``lam`` multiplies ``H^2`` (lam = 12 matches FIRE
lam = 3 locally, since ``d^2 ~ 4 H^2``); TRADES' ``lam`` is its beta (6: ``d^2 ~ 2 KL``, so FIRE lam = 3 matches).

Example:
    >>> cfg = load_preset("cifar10-wrn34-fire", overrides=["epochs=2", "eps=8/255"])
    >>> cfg["model"], cfg["lam"], cfg["epochs"], round(cfg["eps"] * 255, 6)
    ('wrn34_10', 3.0, 2, 8.0)
    >>> "mnist-lenet-isometry" in list_presets()
    True
"""

from __future__ import annotations

from fire_plugin.presets.config import (
    DEFAULTS,
    KEY_ALIASES,
    METHODS,
    PRESET_DIR,
    RUNTIME_KEYS,
    SCHEMA,
    PresetConfig,
    describe_preset,
    describe_presets,
    list_presets,
    load_preset,
    load_preset_config,
    parse_overrides,
)
from fire_plugin.presets.run import random_crop_flip, run_preset

__all__ = [
    "DEFAULTS",
    "KEY_ALIASES",
    "METHODS",
    "PRESET_DIR",
    "RUNTIME_KEYS",
    "SCHEMA",
    "PresetConfig",
    "describe_preset",
    "describe_presets",
    "list_presets",
    "load_preset",
    "load_preset_config",
    "parse_overrides",
    "random_crop_flip",
    "run_preset",
]

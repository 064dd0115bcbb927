"""Preset configuration: :class:`PresetConfig` (every key with its type, default, allowed values and meaning),
loading a preset file with ``--set`` overrides, and the text of ``fire-plugin presets list/show`` (no torch import).
"""

from __future__ import annotations

import copy
import dataclasses
import json
import logging
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any

from fire_plugin.methods import ALIASES

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
]

_logger = logging.getLogger(__name__)

PRESET_DIR = Path(__file__).parent
"""Where the preset JSON files live (package data)."""

METHODS = ("fire", "trades", "hellinger", "madry", "isometry")
"""The methods a preset trains (names of :data:`fire_plugin.methods.METHODS`; ``ace`` is accepted for ``madry``)."""
KEY_ALIASES = {"eval_pgd_alpha": "eval_eps_step"}
"""Older key names still accepted in preset files and ``--set`` (``eps_step`` is the step of every attack)."""
_AUTO_BOOL = ("auto", "on", "off")


@dataclass(frozen=True)
class _Key:
    kind: str  # "float", "int", "bool", "str", "path", "strs"
    help: str
    choices: tuple[str, ...] = ()
    minimum: float | None = None  # inclusive
    positive: bool = False
    maximum: float | None = None  # exclusive
    none_ok: bool = False  # "none" (JSON null) is allowed too

    def allowed(self) -> str:
        if self.choices:
            return ("a comma-separated list of " if self.kind == "strs" else "one of ") + str(list(self.choices))
        if self.kind == "bool":
            return "true or false"
        if self.kind == "path":
            return "a file path, or none"
        if self.kind == "str":
            return "a string"
        bounds = []
        if self.positive:
            bounds.append("> 0")
        if self.minimum is not None:
            bounds.append(f">= {self.minimum:g}")
        if self.maximum is not None:
            bounds.append(f"< {self.maximum:g}")
        what = "an integer" if self.kind == "int" else "a finite number (fractions such as 8/255 allowed)"
        return what + (" " + " and ".join(bounds) if bounds else "") + (", or none" if self.none_ok else "")


def _key(default: Any, kind: str, help: str = "", **limits: Any) -> Any:
    """A :class:`PresetConfig` field: its default and its :class:`_Key` (type, allowed values, meaning)."""
    key = _Key(kind, help, **limits)
    if isinstance(default, list):
        return dataclasses.field(default_factory=lambda: list(default), metadata={"key": key})
    return dataclasses.field(default=default, metadata={"key": key})


@dataclass(frozen=True)
class PresetConfig:
    """The full configuration of a preset run: every key with its type, default, allowed values and meaning (the
    one table that ``SCHEMA`` and ``DEFAULTS`` are read from). Building one checks every value
    (:func:`load_preset_config` also checks the keys against each other).

    Example:
        >>> PresetConfig(epochs=2).epochs, PresetConfig().method
        (2, 'fire')
        >>> PresetConfig(epochs=0)
        Traceback (most recent call last):
        ...
        ValueError: PresetConfig: epochs=0 is not allowed; allowed: an integer >= 1 (training epochs)
    """

    description: str = _key("", "str", "what the preset reproduces")
    dataset: str = _key(
        "cifar10", "str", choices=("mnist", "cifar10", "cifar100", "digits"),
        help="training and test data")
    model: str = _key(
        "wrn34_10", "str", choices=("small_cnn", "lenet_pi", "wrn34_10", "wrn28_10", "resnet18_cifar", "digits_cnn"),
        help="timm model name")
    method: str = _key("fire", "str", "training objective", choices=METHODS)
    lam: float = _key(3.0, "float", "regularizer weight: FIRE on d^2, Hellinger on H^2, TRADES beta", minimum=0.0)
    eps: float = _key(8 / 255, "float", "Linf radius of training, validation and evaluation attacks", positive=True)
    eps_step: float = _key(0.007, "float", "step size of the training attack", positive=True)
    attack_steps: int = _key(10, "int", "steps of the training attack", minimum=1)
    epochs: int = _key(100, "int", "training epochs", minimum=1)
    batch_size: int = _key(128, "int", "global batch size (split over torchrun ranks)", minimum=2)
    lr: float = _key(0.1, "float", "initial learning rate of SGD", positive=True)
    momentum: float = _key(0.9, "float", "SGD momentum", minimum=0.0, maximum=1.0)
    nesterov: bool = _key(True, "bool", "Nesterov momentum")
    weight_decay: float = _key(5e-4, "float", "SGD weight decay", minimum=0.0)
    schedule: str = _key(
        "multistep", "str", choices=("multistep", "cosine", "constant"),
        help="per-epoch learning-rate schedule")
    augment: bool = _key(True, "bool", "random crop (padding 4) and horizontal flip of the training images")
    n_train: int | None = _key(
        None, "int", minimum=1, none_ok=True,
        help="train on the first n_train images of the training split only (a quick check); none: all")
    val_size: int = _key(1000, "int", "training images held out for validation and best.pt selection", minimum=0)
    val_pgd_steps: int = _key(10, "int", "steps of the validation PGD (cross-entropy, step eps/4)", minimum=1)
    select_best: bool = _key(True, "bool", "keep best.pt by validation PGD accuracy; evaluate it at the end")
    ema: bool = _key(False, "bool", "exponential moving average of the weights (evaluated at the end when on)")
    ema_decay: float = _key(0.999, "float", "EMA decay after the warm-up", positive=True, maximum=1.0)
    extra_data: str | None = _key(None, "path", ".npz of extra images ('image' uint8 NHWC, 'label')")
    extra_fraction: float = _key(0.0, "float", "share of extra images in every batch", minimum=0.0, maximum=1.0)
    delta_over_epsilon: float = _key(
        1e-3, "float", positive=True,
        help="partial isometry: delta_m / epsilon (section 4.2: 1e-3)")
    eta_min: float = _key(0.002, "float", "partial isometry: eta of the first epoch", minimum=0.0)
    eta_max: float = _key(0.006, "float", "partial isometry: eta of the last epoch", minimum=0.0)
    estimator: str = _key(
        "hutchinson", "str", choices=("hutchinson", "exact", "orthogonal", "deflated"),
        help="partial isometry: penalty estimator")  # fire_plugin.isometry.DEFAULT_ESTIMATOR
    n_probes: int = _key(1, "int", "partial isometry: random probes per sample", minimum=1)
    eval_n: int = _key(10000, "int", "test images evaluated (RobustBench: the first 10,000)", minimum=1)
    eval_attacks: list[str] = _key(
        ["clean", "pgd", "autoattack"], "strs", choices=("clean", "pgd", "frpgd", "autoattack"),
        help="final evaluation")
    eval_pgd_steps: int = _key(20, "int", "steps of the evaluation PGD", minimum=1)
    eval_eps_step: float = _key(
        0.0, "float", minimum=0.0,
        help="step of the evaluation PGD; 0 means eps / 4 (older name: eval_pgd_alpha)")
    eval_batch_size: int = _key(256, "int", "evaluation batch size", minimum=1)
    amp: str = _key(
        "auto", "str", choices=("auto", "bf16", "fp16", "off"),
        help="autocast: auto (bf16 where supported on CUDA), bf16, fp16, off")
    channels_last: str = _key("auto", "str", "channels-last memory format (auto: on for CUDA)", choices=_AUTO_BOOL)
    cudnn_benchmark: str = _key("auto", "str", "cudnn.benchmark (auto: on for CUDA)", choices=_AUTO_BOOL)
    compile: bool = _key(False, "bool", "torch.compile the model (minutes of compilation first)")
    workers: int = _key(4, "int", "DataLoader worker processes (persistent, pinned memory on CUDA)", minimum=0)
    data_dir: str = _key("data", "str", "folder of the torchvision datasets")
    seed: int = _key(0, "int", "seed of the initialization, the validation split and the data order", minimum=0)

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            object.__setattr__(self, f.name, _parse_value(f.name, getattr(self, f.name), source="PresetConfig"))

    def as_dict(self) -> dict[str, Any]:
        """The configuration as the dict :func:`load_preset` returns (``cfg["lam"]``)."""
        return {f.name: copy.copy(getattr(self, f.name)) for f in dataclasses.fields(self)}


SCHEMA: dict[str, _Key] = {f.name: f.metadata["key"] for f in dataclasses.fields(PresetConfig)}
"""Every key's type, allowed values and meaning (from :class:`PresetConfig`)."""
DEFAULTS: dict[str, Any] = {
    f.name: f.default_factory() if f.default_factory is not dataclasses.MISSING else f.default  # type: ignore[misc]
    for f in dataclasses.fields(PresetConfig)
}
"""Every key's default (from :class:`PresetConfig`)."""
# Keys that do not change what is trained: a resumed run may change them (everything else is compared).
RUNTIME_KEYS = frozenset({"description", "eval_n", "eval_attacks", "eval_pgd_steps", "eval_eps_step",
                          "eval_pgd_alpha", "eval_batch_size", "amp", "channels_last", "cudnn_benchmark", "compile",
                          "workers", "data_dir", "extra_data"})

_ARCHITECTURES = {"small_cnn": "CNN (TRADES' 7-layer MNIST net)", "lenet_pi": "LeNet", "wrn34_10": "WideResNet-34-10",
                  "wrn28_10": "WideResNet-28-10", "resnet18_cifar": "ResNet-18", "digits_cnn": "DigitsCNN"}


# ----------------------------------------------------------------------------------------------- config


class _Refused(Exception):
    """A value that its key does not allow (turned into the ValueError naming key, value and what is allowed)."""


def _bool_value(spec: _Key, value: Any, text: str | None) -> bool:
    if isinstance(value, bool):
        return value
    lowered = (text or "").lower()
    if lowered in ("true", "1", "yes", "on"):
        return True
    if lowered in ("false", "0", "no", "off"):
        return False
    raise _Refused


def _number_value(spec: _Key, value: Any, text: str | None) -> float | int:
    if isinstance(value, bool):
        raise _Refused
    number: float | int
    try:
        if spec.kind == "int":
            number = value if isinstance(value, int) else int(text if text is not None else "x")
        else:
            number = float(value) if isinstance(value, (int, float)) else float(Fraction(text or "x"))
    except (ValueError, ZeroDivisionError):
        raise _Refused from None
    if not math.isfinite(number):
        raise _Refused
    if ((spec.positive and not number > 0) or (spec.minimum is not None and number < spec.minimum)
            or (spec.maximum is not None and number >= spec.maximum)):
        raise _Refused
    return number


def _path_value(spec: _Key, value: Any, text: str | None) -> str | None:
    if value is None or (text is not None and text.lower() in ("none", "null", "")):
        return None
    if text is None:
        raise _Refused
    return text


def _strs_value(spec: _Key, value: Any, text: str | None) -> list[str]:
    items = value if isinstance(value, list) else (text.split(",") if text is not None else None)
    if not items or not all(isinstance(i, str) and i.strip() in spec.choices for i in items):
        raise _Refused
    return [i.strip() for i in items]


def _str_value(spec: _Key, value: Any, text: str | None) -> str:
    if not isinstance(value, str) or (spec.choices and text not in spec.choices):
        raise _Refused
    return text  # type: ignore[return-value]


_PARSERS: dict[str, Callable[[_Key, Any, str | None], Any]] = {
    "bool": _bool_value, "float": _number_value, "int": _number_value, "path": _path_value, "strs": _strs_value,
    "str": _str_value,
}


def _parse_value(key: str, value: Any, *, source: str) -> Any:
    """``value`` (a string from ``--set`` or a JSON value from a file) checked against ``SCHEMA[key]``."""
    key = KEY_ALIASES.get(key, key)
    if key == "method" and isinstance(value, str) and value.strip() in ALIASES:
        value = ALIASES[value.strip()]
    if key not in SCHEMA:
        raise ValueError(f"{source}: unknown key {key!r}; allowed keys: {sorted(SCHEMA)}")
    spec = SCHEMA[key]
    text = value.strip() if isinstance(value, str) else None
    if spec.none_ok and (value is None or (text is not None and text.lower() in ("none", "null"))):
        return None
    try:
        return _PARSERS[spec.kind](spec, value, text)
    except _Refused:
        raise ValueError(f"{source}: {key}={value!r} is not allowed; allowed: {spec.allowed()} ({spec.help})") from None


def parse_overrides(overrides: Sequence[str]) -> dict[str, Any]:
    """``["key=value", ...]`` (the CLI's ``--set``) to a dict of checked values.

    Raises:
        ValueError: an item without ``=``, an unknown key, or a value of the wrong type or range (the message
            names the key, the value and what is allowed).

    >>> parse_overrides(["epochs=3", "eps=0.031", "ema=true", "eval_attacks=clean,pgd"])
    {'epochs': 3, 'eps': 0.031, 'ema': True, 'eval_attacks': ['clean', 'pgd']}
    """
    if isinstance(overrides, str):
        raise ValueError(f"overrides={overrides!r} is not allowed; allowed: a list of 'key=value' strings")
    out: dict[str, Any] = {}
    for item in overrides:
        if not isinstance(item, str) or "=" not in item:
            raise ValueError(f"--set {item!r} is not allowed; allowed: key=value with a key among {sorted(SCHEMA)}")
        key, value = item.split("=", 1)
        key = key.strip()
        out[KEY_ALIASES.get(key, key)] = _parse_value(key, value, source=f"--set {item}")
    return out


def list_presets() -> list[str]:
    """The names of the shipped presets.

    >>> list_presets()[:2]
    ['cifar10-wrn28-extra-fire', 'cifar10-wrn28-extra-fire-ema']
    """
    return sorted(p.stem for p in PRESET_DIR.glob("*.json"))


def _check_consistency(cfg: dict[str, Any], name: str) -> None:
    if cfg["eta_min"] > cfg["eta_max"]:
        raise ValueError(f"preset {name!r}: eta_min={cfg['eta_min']!r} > eta_max={cfg['eta_max']!r}; "
                         "allowed: eta_min <= eta_max")
    if cfg["extra_data"] is not None and cfg["extra_fraction"] == 0:
        raise ValueError(f"preset {name!r}: extra_data={cfg['extra_data']!r} is given but extra_fraction=0, so it "
                         "would not be used; allowed: extra_fraction > 0 with extra_data (e.g. --set "
                         "extra_fraction=0.7), or no extra_data")
    if cfg["select_best"] and cfg["val_size"] == 0:
        raise ValueError(f"preset {name!r}: select_best=true needs a validation split, got val_size=0; allowed: "
                         "val_size >= 1, or select_best=false")


def load_preset_config(name: str, *, overrides: Sequence[str] | dict[str, Any] = ()) -> PresetConfig:
    """The :class:`PresetConfig` of preset ``name``: the defaults, then the preset file, then ``overrides``.

    Args:
        name: one of :func:`list_presets`.
        overrides: ``["key=value", ...]`` (parsed by :func:`parse_overrides`) or a dict of values (checked).

    Raises:
        ValueError: unknown preset, a bad key or value in the file or the overrides (the message names where it
            came from), or keys that contradict each other.

    Example:
        >>> load_preset_config("cifar10-wrn34-trades", overrides=["epochs=2"]).epochs
        2
    """
    if not isinstance(name, str) or name not in list_presets():
        raise ValueError(f"preset {name!r} does not exist; allowed: {list_presets()}")
    text = (PRESET_DIR / f"{name}.json").read_text(encoding="utf-8")
    raw = json.loads(text)
    cfg = dict(DEFAULTS)
    for key, value in raw.items():
        cfg[KEY_ALIASES.get(key, key)] = _parse_value(key, value, source=f"preset file {name}.json")
    if isinstance(overrides, dict):
        for key, value in overrides.items():
            cfg[KEY_ALIASES.get(key, key)] = _parse_value(key, value, source=f"override {key}")
    else:
        cfg.update(parse_overrides(overrides))
    _check_consistency(cfg, name)
    return PresetConfig(**cfg)


def load_preset(name: str, *, overrides: Sequence[str] | dict[str, Any] = ()) -> dict[str, Any]:
    """The full configuration of preset ``name`` as a dict: :func:`load_preset_config` (``.as_dict()``).

    Raises:
        ValueError: unknown preset, or a bad key or value in the file or the overrides.
    """
    return load_preset_config(name, overrides=overrides).as_dict()


def _show_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "none"
    if isinstance(value, float):
        if 0 < value < 1 and value != round(value * 1000) / 1000 and abs(value * 255 - round(value * 255)) < 1e-9:
            return f"{round(value * 255)}/255"  # eps of CIFAR
        return f"{value:g}"
    if isinstance(value, list):
        return ",".join(str(v) for v in value)
    return str(value)


def _kind_label(spec: _Key) -> str:
    kind = {"strs": "list", "path": "path"}.get(spec.kind, spec.kind)
    return kind + ("|none" if spec.none_ok else "")


def _table(rows: list[list[str]], header: list[str]) -> str:
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header) - 1)]
    lines = []
    for row in [header, *rows]:
        lines.append("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=False)) + "  " + row[-1])
    return "\n".join(line.rstrip() for line in lines)


def describe_presets() -> str:
    """Every shipped preset (dataset, model, method, epochs) and every ``--set`` key with its type, allowed
    values and default, as the text ``fire-plugin presets list`` prints.

    >>> text = describe_presets()
    >>> "cifar10-wrn34-fire" in text and "n_train" in text
    True
    """
    rows = []
    for name in list_presets():
        cfg = load_preset(name)
        rows.append([name, cfg["dataset"], cfg["model"], cfg["method"], str(cfg["epochs"]), cfg["description"][:70]
                     + ("..." if len(cfg["description"]) > 70 else "")])
    presets = _table(rows, ["preset", "dataset", "model", "method", "epochs", "description"])
    keys = _table([[key, _kind_label(spec), _show_value(DEFAULTS[key]), f"{spec.allowed()}; {spec.help}"]
                   for key, spec in SCHEMA.items() if key != "description"],
                  ["--set key", "type", "default", "allowed; meaning"])
    return (f"{len(rows)} presets (fire-plugin train --preset NAME; fire-plugin presets show NAME for its values):\n\n"
            f"{presets}\n\nevery preset accepts --set KEY=VALUE for these keys:\n\n{keys}")


def describe_preset(name: str, *, overrides: Sequence[str] | dict[str, Any] = ()) -> str:
    """Every key of preset ``name`` with its value, type and allowed values, as ``fire-plugin presets show``
    prints; values the preset file sets are marked ``*`` (the others are :data:`DEFAULTS`).

    >>> lines = describe_preset("mnist-lenet-isometry").splitlines()
    >>> lines[0].startswith("mnist-lenet-isometry: Partial-isometry paper"), lines[2].split()
    (True, ['key', 'value', 'type', 'allowed;', 'meaning'])
    """
    cfg = load_preset(name, overrides=overrides)
    own = set(json.loads((PRESET_DIR / f"{name}.json").read_text(encoding="utf-8")))
    rows = [[key, ("* " if key in own else "  ") + _show_value(cfg[key]), _kind_label(spec),
             f"{spec.allowed()}; {spec.help}"] for key, spec in SCHEMA.items() if key != "description"]
    return (f"{name}: {cfg['description']}\n\n" + _table(rows, ["key", "  value", "type", "allowed; meaning"])
            + "\n\n* set by the preset file (the others are the defaults); change any with --set KEY=VALUE")



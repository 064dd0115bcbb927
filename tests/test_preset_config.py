"""The preset configuration is one validated dataclass; SCHEMA and DEFAULTS are read from it."""

from __future__ import annotations

import dataclasses

import pytest

from fire_plugin.presets import DEFAULTS, SCHEMA, PresetConfig, list_presets, load_preset, load_preset_config


def test_schema_and_defaults_are_the_dataclass_fields():
    names = [f.name for f in dataclasses.fields(PresetConfig)]
    assert list(SCHEMA) == names and list(DEFAULTS) == names
    assert PresetConfig().as_dict() == DEFAULTS
    assert DEFAULTS["eval_attacks"] == ["clean", "pgd", "autoattack"] and DEFAULTS["lam"] == 3.0


def test_every_shipped_preset_loads_as_a_config_and_as_the_same_dict():
    for name in list_presets():
        config = load_preset_config(name)
        assert isinstance(config, PresetConfig)
        assert load_preset(name) == config.as_dict()


def test_a_config_checks_its_values_when_built():
    with pytest.raises(ValueError, match=r"PresetConfig: momentum=1\.0 is not allowed; allowed: .*< 1"):
        PresetConfig(momentum=1.0)
    with pytest.raises(ValueError, match="PresetConfig: method='pgd' is not allowed"):
        PresetConfig(method="pgd")
    assert PresetConfig(method="ace").method == "madry"  # the alias, as in preset files and --set
    assert PresetConfig(eps="8/255").eps == pytest.approx(8 / 255)


def test_the_dict_is_a_copy():
    config = load_preset_config("cifar10-wrn34-fire")
    first = config.as_dict()
    first["eval_attacks"].append("frpgd")
    assert config.eval_attacks == ["clean", "pgd", "autoattack"]

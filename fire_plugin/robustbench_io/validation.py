"""Validation of a :class:`~fire_plugin.robustbench_io.schema.ModelInfo`: what RobustBench's files hold and what its
own consumers (``generate_leaderboard``, ``get_leaderboard_latex``, ``get_leaderboard_bibtex``) can read.

>>> try:
...     validate_model_info(ModelInfo(dataset="cifar10", clean_acc="90 %"))
... except ValueError as exc:
...     print(str(exc).count("is missing"), "fields missing;", str(exc).split("; ")[-1])
7 fields missing; clean_acc='90 %' is not a percent string in [0, 100] such as '84.92'
"""

from __future__ import annotations

import math
from typing import Any

from fire_plugin.robustbench_io.schema import (
    _CORRUPTIONS_EXTRAS,
    _ID_PATTERN,
    _NOT_REPORTED,
    _NUMBER_EXTRAS,
    _PERCENT_EXTRAS,
    _PERCENT_PATTERN,
    _REQUIRED_FIELDS,
    _STR_FIELDS,
    N_EXAMPLES_KEY,
    THREAT_MODELS,
    ModelInfo,
    ThreatModel,
    _non_finite,
    parse_eps,
)

__all__ = ["validate_model_info"]


def _check_percent(name: str, value: Any, problems: list[str], *, allow_not_reported: bool = False) -> None:
    if allow_not_reported and value in _NOT_REPORTED:
        return
    if not isinstance(value, str) or not _PERCENT_PATTERN.fullmatch(value) or float(value) > 100.0:
        problems.append(f"{name}={value!r} is not a percent string in [0, 100] such as '84.92'")



def _check_path_component(label: str, value: Any) -> None:
    if not isinstance(value, str) or not _ID_PATTERN.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{label}={value!r} is not allowed; allowed: letters, digits and _ . + - (no path separators "
            "or '..'), like RobustBench's 'Zhang2019Theoretically'"
        )


def _threat_model_value(threat_model: str | ThreatModel) -> str:
    value = threat_model.value if isinstance(threat_model, ThreatModel) else threat_model
    if value not in THREAT_MODELS:
        raise ValueError(f"threat_model={threat_model!r} is not allowed; allowed: {list(THREAT_MODELS)}")
    return value



def _is_number_string(value: Any) -> bool:
    if not isinstance(value, str):
        return False
    try:
        return math.isfinite(float(value))
    except ValueError:
        return False


def validate_model_info(info: ModelInfo, *, threat_model: str | ThreatModel | None = None) -> None:
    """Check types and formats; raise ValueError listing every problem.

    The rules are what RobustBench's files hold and what its own consumers (``generate_leaderboard``,
    ``get_leaderboard_latex``, ``get_leaderboard_bibtex``) can read. Required, as in every RobustBench file:
    ``link``, ``name``, ``authors``, ``venue``, ``architecture`` (strings), ``additional_data`` (bool),
    ``number_forward_passes`` (positive int), ``dataset`` (a name usable as a folder) and ``clean_acc``.
    ``footnote`` is a string, ``unreliable`` a bool, the extra ``n_examples`` (the number of evaluated test images,
    which our files record) a positive int; ``clean_acc`` and ``autoattack_acc`` are percent strings in
    [0, 100] (any number of decimals, as in RobustBench's files); ``reported`` a percent string or a "not
    reported" marker (None, ``""``, ``"null"``); ``eps`` a positive finite number (RobustBench's ``update_json``
    writes a JSON number) or fraction string. With
    ``threat_model`` ``"Linf"``/``"L2"``, ``eps`` and ``autoattack_acc`` are required; with ``"corruptions"``
    (``"corruptions_3d"``) :attr:`ModelInfo.extra` must hold ``corruptions_acc`` (and ``corruptions_acc_3d``), the
    numbers the leaderboard sorts by. Extras ``external``, ``corruptions_acc``, ``corruptions_acc_3d`` are percent
    strings when present (``null`` breaks the leaderboard's ``float()``; the ``null`` corruptions fields that
    RobustBench's ``update_json`` writes into Linf and L2 files are accepted there), ``corruptions_mce*`` number
    strings, and
    no extra holds NaN or an infinity. A dataset RobustBench does not list is valid here;
    :func:`write_model_info` warns about it.

    >>> info = ModelInfo(link="https://arxiv.org/abs/1901.08573", name="TRADES", authors="H. Zhang",
    ...                  additional_data=False, number_forward_passes=1, dataset="cifar10", venue="ICML 2019",
    ...                  architecture="WideResNet-34-10", eps="8/255", clean_acc="84.92", autoattack_acc="53.08")
    >>> validate_model_info(info, threat_model="Linf")
    >>> import dataclasses
    >>> validate_model_info(dataclasses.replace(info, clean_acc="90 %"))
    Traceback (most recent call last):
    ...
    ValueError: invalid model_info: clean_acc='90 %' is not a percent string in [0, 100] such as '84.92'
    """
    if not isinstance(info, ModelInfo):
        raise ValueError(f"info of type {type(info).__name__} is not allowed; allowed: ModelInfo")
    problems = _field_problems(info)
    threat = None if threat_model is None else _threat_model_value(threat_model)
    problems += _extra_problems(info, threat)
    problems += _threat_model_problems(info, threat, threat_model)
    if problems:
        raise ValueError("invalid model_info: " + "; ".join(problems))


def _field_problems(info: ModelInfo) -> list[str]:
    """The problems of the named fields: required ones missing, types, the dataset name, the accuracies."""
    problems: list[str] = []
    for name, what in _REQUIRED_FIELDS.items():
        if getattr(info, name) is None:
            problems.append(f"{name} is missing (RobustBench's files and leaderboard code need it): give {what}")
    for name in _STR_FIELDS:
        value = getattr(info, name)
        if value is not None and not isinstance(value, str):
            problems.append(f"{name}={value!r} is not a string")
    for name in ("additional_data", "unreliable"):
        value = getattr(info, name)
        if value is not None and not isinstance(value, bool):
            problems.append(f"{name}={value!r} is not a boolean")
    passes = info.number_forward_passes
    if passes is not None and (isinstance(passes, bool) or not isinstance(passes, int) or passes < 1):
        problems.append(f"number_forward_passes={passes!r} is not a positive int")
    if info.dataset is None:
        problems.append("dataset is missing: give the dataset such as 'cifar10'")
    elif not isinstance(info.dataset, str) or not _ID_PATTERN.fullmatch(info.dataset) or ".." in info.dataset:
        problems.append(f"dataset={info.dataset!r} is not a dataset name such as 'cifar10'")
    if info.clean_acc is None:
        problems.append("clean_acc is missing: give the clean accuracy in percent such as '84.92'")
    else:
        _check_percent("clean_acc", info.clean_acc, problems)
    if info.autoattack_acc is not None:
        _check_percent("autoattack_acc", info.autoattack_acc, problems)
    if info.reported is not None:
        _check_percent("reported", info.reported, problems, allow_not_reported=True)
    return problems


def _extra_problems(info: ModelInfo, threat: str | None) -> list[str]:
    """The problems of :attr:`ModelInfo.extra`: the percent and number extras, ``n_examples``, NaN or infinities."""
    problems: list[str] = []
    # RobustBench's update_json writes "corruptions_acc": null (and the other corruptions fields) into Linf and L2
    # files; only the corruptions leaderboards read them.
    null_ok = () if threat in ("corruptions", "corruptions_3d") else _CORRUPTIONS_EXTRAS
    for name in _PERCENT_EXTRAS:
        if name in null_ok and name in info.extra and info.extra[name] is None:
            continue
        if name in info.extra and info.extra[name] is None:
            problems.append(
                f"{name}=None is not allowed (RobustBench's leaderboard reads float({name})): give a percent "
                "string such as '52.10' or remove the key"
            )
        elif name in info.extra:
            _check_percent(name, info.extra[name], problems)
    if N_EXAMPLES_KEY in info.extra:
        n = info.extra[N_EXAMPLES_KEY]
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            problems.append(f"{N_EXAMPLES_KEY}={n!r} is not a positive int (the number of evaluated test images)")
    for name in _NUMBER_EXTRAS:
        if name in null_ok and name in info.extra and info.extra[name] is None:
            continue
        if name in info.extra and not _is_number_string(info.extra[name]):
            problems.append(f"{name}={info.extra[name]!r} is not a number string such as '62.13'")
    problems.extend(
        f"{hit} is not a finite number (JSON has no NaN or Infinity)"
        for k, v in info.extra.items()
        for hit in _non_finite(v, k)
    )
    return problems


def _threat_model_problems(info: ModelInfo, threat: str | None,
                           threat_model: str | ThreatModel | None) -> list[str]:
    """The problems of ``eps`` and of what the threat model's leaderboard needs (``threat``: its value, or None)."""
    problems: list[str] = []
    if info.eps is not None:
        try:
            parse_eps(info.eps)
        except ValueError as exc:
            problems.append(str(exc))
    if threat in ("Linf", "L2"):
        if info.eps is None:
            problems.append(f"eps is missing (required for threat_model={threat_model!r}): give it such as '8/255'")
        if info.autoattack_acc is None:
            problems.append(
                f"autoattack_acc is missing (required for threat_model={threat_model!r}; RobustBench's leaderboard "
                "sorts by it): give the AutoAttack accuracy in percent such as '53.08'"
            )
    elif threat in ("corruptions", "corruptions_3d"):
        for name in ("corruptions_acc", "corruptions_acc_3d")[: 2 if threat == "corruptions_3d" else 1]:
            if name not in info.extra:
                problems.append(
                    f"{name} is missing (required for threat_model={threat_model!r}; RobustBench's leaderboard "
                    f"sorts by it): put a percent string in info.extra[{name!r}]"
                )
    return problems

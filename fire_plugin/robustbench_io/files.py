"""``model_info`` files: their path, reading (ours or RobustBench's) and writing as RobustBench does (merging into
an existing file like ``robustbench.utils.update_json``, replaced atomically).

>>> model_info_path("runs/eval", "Picot2022Adversarial", dataset="cifar10", threat_model="L2").as_posix()
'runs/eval/model_info/cifar10/L2/Picot2022Adversarial.json'
"""

from __future__ import annotations

import json
import logging
import os
import warnings
from pathlib import Path
from typing import Any

from fire_plugin.robustbench_io.schema import ROBUSTBENCH_DATASETS, THREAT_MODELS, ModelInfo, ThreatModel, _dumps
from fire_plugin.robustbench_io.validation import _check_path_component, _threat_model_value, validate_model_info

__all__ = ["model_info_path", "read_model_info", "write_model_info"]

_logger = logging.getLogger(__name__)


def model_info_path(
    root: str | os.PathLike[str],
    model_id: str,
    *,
    dataset: str,
    threat_model: str | ThreatModel = "Linf",
) -> Path:
    """``root/model_info/<dataset>/<threat_model>/<model_id>.json`` (``corruptions_3d`` -> ``corruptions``).

    >>> model_info_path("out", "Zhang2019Theoretically", dataset="cifar10").as_posix()
    'out/model_info/cifar10/Linf/Zhang2019Theoretically.json'
    """
    _check_path_component("model_id", model_id)
    _check_path_component("dataset", dataset)
    folder = _threat_model_value(threat_model).replace("_3d", "")
    return Path(root) / "model_info" / dataset / folder / f"{model_id}.json"


def read_model_info(path: str | os.PathLike[str], *, validate: bool = True) -> ModelInfo:
    """Read one model_info JSON file (ours or RobustBench's).

    Args:
        path: the JSON file.
        validate: run :func:`validate_model_info` (with the threat model of the parent folder when it is one).

    Returns:
        The :class:`ModelInfo`, unknown fields in :attr:`ModelInfo.extra`.

    >>> import tempfile
    >>> with tempfile.TemporaryDirectory() as root:
    ...     p = Path(root) / "M.json"
    ...     _ = p.write_text('{"dataset": "cifar10", "clean_acc": "90.00"}')
    ...     read_model_info(p, validate=False).dataset
    'cifar10'
    """
    path = Path(path)
    info = ModelInfo.from_dict(_read_json_object(path, "path"))
    if validate:
        folder = path.parent.name
        try:
            validate_model_info(info, threat_model=folder if folder in THREAT_MODELS else None)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
    return info


def _read_json_object(path: Path, label: str) -> dict[str, Any]:
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(
            f"{label}={str(path)!r} is not UTF-8 text ({exc}); model_info files are UTF-8 JSON: re-save it as "
            "UTF-8 or point to the right file"
        ) from None
    try:
        data = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"{label}={str(path)!r} is not valid JSON: {exc}") from exc
    if not isinstance(data, dict):
        raise ValueError(f"{label}={str(path)!r} does not hold a JSON object")
    return data


def _write_atomic(path: Path, text: str) -> None:
    """Replace ``path`` by ``text`` atomically (:func:`fire_plugin.runfolder.atomic_write_text`), creating its
    folder; a new file gets the umask's mode, an existing one keeps its mode."""
    from fire_plugin.runfolder import atomic_write_text

    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(path, text)


def write_model_info(
    root: str | os.PathLike[str],
    model_id: str,
    info: ModelInfo,
    *,
    threat_model: str | ThreatModel = "Linf",
) -> Path:
    """Write ``root/model_info/<info.dataset>/<threat_model>/<model_id>.json`` as RobustBench does.

    A new file holds :meth:`ModelInfo.to_file_dict` (every field RobustBench's files always hold, None as
    ``null``; unset ``autoattack_acc``/``footnote``/``unreliable`` left out) then :attr:`ModelInfo.extra`, written
    with ``json.dumps(..., indent=2)``. If the file exists, the new non-None values are merged into it and all
    other existing keys are kept, like ``robustbench.utils.update_json`` (a ``null`` ``unreliable`` or
    ``autoattack_acc`` that an older version of this function wrote is dropped). The result is validated with
    :func:`validate_model_info` before anything is written (so a partial ``info`` can update a complete file);
    a dataset RobustBench does not list (``mnist``, ``digits``) is written in the same schema with a warning that
    it cannot be submitted. The file is replaced atomically; a new file gets the mode the umask gives (as any
    ``open(path, "w")``), an existing file keeps its mode.

    Args:
        root: output folder (the parent of ``model_info``).
        model_id: RobustBench-style id such as ``"Zhang2019Theoretically"``; no path separators or ``..``.
        info: the record; ``info.dataset`` picks the folder.
        threat_model: ``"Linf"``, ``"L2"``, ``"corruptions"`` or ``"corruptions_3d"``.

    Returns:
        The path written.

    >>> import tempfile
    >>> info = ModelInfo(link="https://arxiv.org/abs/1901.08573", name="TRADES", authors="H. Zhang",
    ...                  additional_data=False, number_forward_passes=1, dataset="cifar10", venue="ICML 2019",
    ...                  architecture="WideResNet-34-10", eps="8/255", clean_acc="84.92", autoattack_acc="53.08")
    >>> with tempfile.TemporaryDirectory() as root:
    ...     write_model_info(root, "Zhang2019Theoretically", info).relative_to(root).as_posix()
    'model_info/cifar10/Linf/Zhang2019Theoretically.json'
    """
    _check_path_component("model_id", model_id)
    if not isinstance(info, ModelInfo):
        raise ValueError(f"info of type {type(info).__name__} is not allowed; allowed: ModelInfo")
    if info.dataset is None:
        raise ValueError("info.dataset=None is not allowed; allowed: a dataset name such as 'cifar10'")
    path = model_info_path(root, model_id, dataset=info.dataset, threat_model=threat_model)
    content = info.to_file_dict()
    merging = path.exists()
    if merging:
        try:
            existing = _read_json_object(path, "existing file")
        except ValueError as exc:
            raise ValueError(f"cannot merge into {path}: {exc}") from exc
        existing.update({k: v for k, v in content.items() if v is not None})
        content = {k: v for k, v in existing.items() if not (v is None and k in ("autoattack_acc", "unreliable"))}
    try:
        validate_model_info(ModelInfo.from_dict(content), threat_model=threat_model)
        text = _dumps(content)
    except ValueError as exc:
        raise ValueError(f"not writing {path}: {exc}") from None
    if info.dataset not in ROBUSTBENCH_DATASETS:
        warnings.warn(
            f"dataset={info.dataset!r} has no RobustBench leaderboard (allowed: {list(ROBUSTBENCH_DATASETS)}); "
            f"{path} uses RobustBench's schema but cannot be submitted",
            UserWarning,
            stacklevel=2,
        )
    _write_atomic(path, text)
    _logger.info("%s model_info %s", "merged into" if merging else "wrote", path)
    return path


"""Pretrained and offline loading: RobustBench zoo models, local checkpoints, pyautoattack's CIFAR-10 ResNet-18.

:func:`load_pretrained` loads RobustBench zoo models (through ``robustbench.utils.load_model``), checkpoints of
the architectures registered with timm (:mod:`fire_plugin.models`), and the CIFAR-10 ResNet-18 that ships inside
the pyautoattack package (``"autoattack-resnet18"``), a real pretrained model available offline.

Checkpoints are loaded with ``weights_only=True``. A file that cannot be read (empty, truncated, random bytes)
raises :class:`CorruptCheckpointError` naming it and what to do; a missing one :class:`CheckpointNotFoundError`.
An interrupted load (Ctrl-C included) leaves no partial download behind.

>>> model = load_pretrained("autoattack-resnet18")
>>> model.training
False
"""

from __future__ import annotations

import contextlib
import difflib
import importlib.resources
import io
import logging
import os
import re
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import timm
import torch
from torch import nn

from fire_plugin._compat import import_robustbench
from fire_plugin.data import DATASETS
from fire_plugin.engine.checkpoints import CheckpointNotFoundError, CorruptCheckpointError, load_checkpoint
from fire_plugin.models import MODEL_NAMES, ResNet18CIFAR, create_model_for_dataset

__all__ = [
    "AUTOATTACK_RESNET18",
    "CheckpointNotFoundError",
    "CorruptCheckpointError",
    "autoattack_checkpoint_path",
    "load_pretrained",
    "load_state_dict_from_checkpoint",
]

_logger = logging.getLogger(__name__)

AUTOATTACK_RESNET18 = "autoattack-resnet18"

# Applied with fullmatch: with match and "$", "name\n" would pass ("$" matches before a final newline).
_SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]*")
_RB_DATASETS = ("cifar10", "cifar100", "imagenet")
_RB_THREAT_MODELS = ("Linf", "L2", "corruptions", "corruptions_3d")


# --------------------------------------------------------------------------------------------------
# checkpoints


def autoattack_checkpoint_path() -> Path:
    """Path of ``examples/model_test.pt`` inside the installed pyautoattack package.

    It is a CIFAR-10 ResNet-18 state dict (the model of AutoAttack's example script).

    >>> autoattack_checkpoint_path().name
    'model_test.pt'
    """
    path = Path(str(importlib.resources.files("pyautoattack").joinpath("examples", "model_test.pt")))
    if not path.is_file():
        raise CheckpointNotFoundError(
            f"{path} is missing: the installed pyautoattack does not ship examples/model_test.pt; "
            "reinstall it with `pip install --force-reinstall pyautoattack`"
        )
    return path


def _strip_prefixes(state_dict: Mapping[str, Any]) -> dict[str, Any]:
    prefixes = ("module.", "_orig_mod.")
    out: dict[str, Any] = {}
    for key, value in state_dict.items():
        changed = True
        while changed:
            changed = False
            for prefix in prefixes:
                if key.startswith(prefix):
                    key = key[len(prefix) :]
                    changed = True
        out[key] = value
    return out


def load_state_dict_from_checkpoint(obj: Any) -> dict[str, torch.Tensor]:
    """Extract a model state dict from a loaded checkpoint object.

    Accepts our engine checkpoints (a dict whose ``"model"`` entry is the state dict), dicts with a
    ``"state_dict"`` or ``"model_state_dict"`` entry, and plain state dicts. ``module.`` (DataParallel/DDP)
    and ``_orig_mod.`` (``torch.compile``) prefixes are removed.

    Args:
        obj: what ``torch.load`` returned.

    Returns:
        A state dict for ``model.load_state_dict``.

    >>> sd = load_state_dict_from_checkpoint({"model": {"module.fc.weight": torch.zeros(1)}})
    >>> list(sd)
    ['fc.weight']
    """
    if not isinstance(obj, Mapping):
        raise ValueError(f"checkpoint of type {type(obj).__name__} is not allowed; allowed: a dict")
    for key in ("model", "state_dict", "model_state_dict"):
        inner = obj.get(key)
        if isinstance(inner, Mapping):
            obj = inner
            break
    if not obj or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise ValueError(
            "checkpoint holds no state dict; allowed: a state dict, or a dict with a 'model' or "
            "'state_dict' entry that is one"
        )
    return _strip_prefixes(obj)


_OWN_REMEDY = "delete it and save or copy the checkpoint again (from where it was trained or downloaded)"


def _load_checkpoint_file(path: Path, *, remedy: str = _OWN_REMEDY) -> Any:
    """:func:`fire_plugin.engine.load_checkpoint` on the CPU: the one loader and its errors, naming the file."""
    return load_checkpoint(path, map_location="cpu", remedy=remedy)


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    return load_state_dict_from_checkpoint(_load_checkpoint_file(path))


def _checkpoint_origin(obj: Any) -> str | None:
    """What an engine checkpoint says it was trained as (``"lenet_pi on mnist"``), from its saved config."""
    config = obj.get("config") if isinstance(obj, Mapping) else None
    if not isinstance(config, Mapping):
        return None
    recipe = config.get("recipe")
    model = config.get("model") or (recipe.get("model") if isinstance(recipe, Mapping) else None)
    dataset = config.get("dataset") or ("digits" if isinstance(recipe, Mapping) else None)
    if not isinstance(model, str):
        return None
    return model + (f" on {dataset}" if isinstance(dataset, str) else "")


def _state_mismatch(model: nn.Module, state: Mapping[str, torch.Tensor]) -> str | None:
    """The first difference between ``model``'s state dict and ``state`` (shapes, then keys), or None."""
    own = model.state_dict()
    for key, value in own.items():
        if key in state and tuple(state[key].shape) != tuple(value.shape):
            return (f"{key} is {tuple(state[key].shape)} in the checkpoint and {tuple(value.shape)} in the model")
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    if missing or unexpected:
        parts = [f"{len(missing)} model keys missing (e.g. {missing[0]})"] if missing else []
        parts += [f"{len(unexpected)} unexpected keys (e.g. {unexpected[0]})"] if unexpected else []
        return ", ".join(parts)
    return None


def _load_into(model: nn.Module, path: Path, *, name: str, dataset: str) -> None:
    """Load checkpoint ``path`` into ``model``; another architecture or image size is refused naming both."""
    obj = _load_checkpoint_file(path)
    state = load_state_dict_from_checkpoint(obj)
    detail = _state_mismatch(model, state)
    if detail is not None:
        origin = _checkpoint_origin(obj)
        info = DATASETS.get(dataset)
        shape = f" ({info.in_chans}x{info.image_size}x{info.image_size})" if info is not None else ""
        held = f"holds {origin}" if origin else "holds another architecture or image size"
        raise ValueError(
            f"checkpoint {str(path)!r} {held}; it does not fit model {name!r} built for {dataset}{shape}: {detail}. "
            "Pass the --model and --dataset it was trained with"
        )
    model.load_state_dict(state)


def _check_safe_name(label: str, value: str) -> None:
    if not isinstance(value, str) or not _SAFE_NAME.fullmatch(value) or ".." in value:
        raise ValueError(
            f"{label}={value!r} is not allowed; allowed: letters, digits and _ . + - without path separators or '..'"
        )


def _infer_dataset_kwargs(dataset: str, model_kwargs: dict[str, Any]) -> dict[str, Any]:
    kwargs = dict(model_kwargs)
    info = DATASETS.get(dataset)
    if info is not None:
        kwargs.setdefault("num_classes", info.num_classes)
        kwargs.setdefault("in_chans", info.in_chans)
    elif "num_classes" not in kwargs:
        raise ValueError(
            f"dataset={dataset!r} is unknown, so num_classes cannot be inferred; pass num_classes=... "
            f"or use one of {sorted(DATASETS)}"
        )
    return kwargs


def _remove_new(folder: Path, before: set[Path], new_dirs: list[Path]) -> None:
    """Delete what appeared in ``folder`` since ``before``, then the folders in ``new_dirs`` if empty."""
    if folder.is_dir():
        for path in set(folder.iterdir()) - before:
            with contextlib.suppress(OSError):
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
    for directory in new_dirs:
        with contextlib.suppress(OSError):
            directory.rmdir()


def _load_zoo(name: str, dataset: str, threat_model: str, model_dir: Path) -> nn.Module:
    if dataset not in _RB_DATASETS:
        raise ValueError(
            f"dataset={dataset!r} has no RobustBench zoo; allowed: {list(_RB_DATASETS)} (or pass "
            "checkpoint=... with an architecture name)"
        )
    if threat_model not in _RB_THREAT_MODELS:
        raise ValueError(f"threat_model={threat_model!r} is not allowed; allowed: {list(_RB_THREAT_MODELS)}")
    rb_utils = import_robustbench("utils")
    enums = import_robustbench("model_zoo.enums")
    zoo_threat = threat_model.replace("_3d", "")
    zoo = rb_utils.all_models[enums.BenchmarkDataset(dataset)][enums.ThreatModel(zoo_threat)]
    if name not in zoo:
        close = difflib.get_close_matches(name, list(zoo), n=5)
        raise ValueError(
            f"name={name!r} is neither {AUTOATTACK_RESNET18!r}, an architecture with checkpoint=..., nor a "
            f"RobustBench {dataset}/{zoo_threat} model; close zoo names: {close or 'none'} "
            f"(architectures: {list(MODEL_NAMES)})"
        )
    folder = model_dir / dataset / zoo_threat
    gdrive = zoo[name].get("gdrive_id")
    expected = (
        [folder / f"{name}.pt_m{i}.pt" for i in range(len(gdrive))]
        if isinstance(gdrive, list)
        else [folder / f"{name}.pt"]
    )
    timm_name = f"{name.lower().replace('-', '_')}_{dataset}_{zoo_threat.lower()}"
    on_hub = timm.is_model(timm_name)
    if not on_hub:
        for path in expected:
            if path.is_dir():
                raise CheckpointNotFoundError(
                    f"{str(path)} is a directory where RobustBench expects the checkpoint file of {name!r}; "
                    "move it away and rerun load_pretrained to download the file"
                )
    missing = [p for p in expected if not p.is_file()]
    # folders robustbench may create, deepest first, and what the target folder held before
    new_dirs = [d for d in (folder, folder.parent, model_dir) if not d.exists()]
    before = set(folder.iterdir()) if folder.exists() else set()
    captured = io.StringIO()
    try:
        with contextlib.redirect_stdout(captured), contextlib.redirect_stderr(captured):
            model: nn.Module = rb_utils.load_model(
                name, model_dir=str(model_dir), dataset=dataset, threat_model=threat_model
            )
    except BaseException as exc:
        # Whatever stopped the load (no network, a damaged file, Ctrl-C), remove what this call created:
        # partial downloads, gdown's temporary files (<name>.pt<random>tmp), the folders robustbench made.
        _remove_new(folder, before, new_dirs)
        if not isinstance(exc, Exception):  # KeyboardInterrupt, SystemExit: cleaned up, now let it through
            raise
        if not on_hub:
            remedy = (
                f"delete it and rerun load_pretrained({name!r}, dataset={dataset!r}, threat_model={threat_model!r}) "
                "to download it again (offline: download it on a machine with network access and copy it here)"
            )
            for path in expected:
                if path.is_file():  # was there before the call (new files were removed above)
                    _load_checkpoint_file(path, remedy=remedy)  # raises CorruptCheckpointError naming it
        if not (missing or on_hub):
            raise
        if on_hub:
            where = f"the Hugging Face Hub model timm/{timm_name} (cached under ~/.cache/huggingface)"
        else:
            where = "\n".join(f"  {p}" for p in expected)
        raise CheckpointNotFoundError(
            f"RobustBench model {name!r} ({dataset}, {threat_model}) is not available offline and could "
            f"not be downloaded ({type(exc).__name__}: {exc}).\nExpected: {where}\n"
            "On a machine with network access run\n"
            f'  python -c "from fire_plugin.pretrained import load_pretrained; load_pretrained({name!r}, '
            f"dataset={dataset!r}, threat_model={threat_model!r}, model_dir='models')\"\n"
            "and copy the file(s) to the expected path."
        ) from exc
    finally:
        if captured.getvalue():
            _logger.info("robustbench: %s", captured.getvalue().strip())
    return model


def load_pretrained(
    name: str,
    *,
    dataset: str = "cifar10",
    threat_model: str = "Linf",
    model_dir: str | os.PathLike[str] = "models",
    checkpoint: str | os.PathLike[str] | None = None,
    **model_kwargs: Any,
) -> nn.Module:
    """Load a pretrained model in eval mode; it takes [0, 1] images.

    Three sources, tried in this order:

    1. ``name="autoattack-resnet18"``: the CIFAR-10 ResNet-18 state dict shipped inside pyautoattack
       (``examples/model_test.pt``), loaded into ``resnet18_cifar``; works offline.
    2. ``checkpoint`` given: ``name`` is an architecture known to timm (ours: ``small_cnn``, ``lenet_pi``,
       ``digits_cnn``, ``resnet18_cifar``, ``wrn34_10``, ``wrn28_10``); ``num_classes`` and ``in_chans`` come
       from ``dataset`` unless given in ``model_kwargs``. Our engine checkpoints (``{"model": state_dict,
       ...}``) and plain state dicts load with ``weights_only=True``; ``module.`` prefixes are removed.
    3. otherwise a RobustBench zoo name (such as ``"Zhang2019Theoretically"``) through
       ``robustbench.utils.load_model``, from ``model_dir/<dataset>/<threat_model>/<name>.pt``. When that file
       is missing and cannot be downloaded, :class:`CheckpointNotFoundError` names the expected path and
       how to obtain it; no partial file is left behind, also when the load is interrupted (Ctrl-C).

    A checkpoint file that is empty, truncated or not a PyTorch file raises :class:`CorruptCheckpointError`
    naming it and what to do (delete it, copy or download it again); a directory given as ``checkpoint`` raises
    :class:`CheckpointNotFoundError` saying so. The ``model_dir`` and ``checkpoint`` paths are the user's: they
    may contain ``..``; ``name`` may not.

    Args:
        name: see above; letters, digits and ``_ . + -``, no path separators or ``..``.
        dataset: ``"cifar10"``, ``"cifar100"``, ``"imagenet"`` (zoo) or a key of
            ``fire_plugin.data.DATASETS``.
        threat_model: ``"Linf"``, ``"L2"``, ``"corruptions"`` or ``"corruptions_3d"`` (zoo only).
        model_dir: the RobustBench model folder.
        checkpoint: path of a checkpoint for the architecture ``name``.
        **model_kwargs: passed to ``timm.create_model`` (for example ``mean``/``std``) with ``checkpoint``.

    Returns:
        The model, in eval mode, on the CPU.

    >>> model = load_pretrained("autoattack-resnet18")
    >>> model(torch.zeros(1, 3, 32, 32)).shape
    torch.Size([1, 10])
    """
    _check_safe_name("name", name)
    if not isinstance(dataset, str) or not dataset:
        raise ValueError(f"dataset={dataset!r} is not allowed; allowed: a dataset name")
    model: nn.Module
    if name == AUTOATTACK_RESNET18:
        if checkpoint is not None:
            raise ValueError(f"checkpoint={checkpoint!r} is not allowed with name={name!r}; allowed: None")
        if dataset != "cifar10":
            raise ValueError(f"dataset={dataset!r} is not allowed with name={name!r}; allowed: 'cifar10'")
        model = ResNet18CIFAR(num_classes=10, **model_kwargs)
        model.load_state_dict(_read_state_dict(autoattack_checkpoint_path()))
    elif checkpoint is not None:
        if not timm.is_model(name):
            raise ValueError(
                f"name={name!r} is not a timm architecture, so checkpoint={str(checkpoint)!r} cannot be "
                f"loaded into it; allowed: {list(MODEL_NAMES)} or any timm.list_models() name"
            )
        if dataset in DATASETS:  # the one place that sizes an architecture for a dataset
            model = create_model_for_dataset(name, dataset, **model_kwargs)
        else:
            model = timm.create_model(name, **_infer_dataset_kwargs(dataset, model_kwargs))
        _load_into(model, Path(checkpoint), name=name, dataset=dataset)
    else:
        if model_kwargs:
            raise ValueError(
                f"model_kwargs={sorted(model_kwargs)} are only allowed with checkpoint=... or {AUTOATTACK_RESNET18!r}"
            )
        model = _load_zoo(name, dataset, threat_model, Path(model_dir))
    _logger.info("loaded pretrained %s (%s, %s)", name, dataset, threat_model)
    return model.eval()

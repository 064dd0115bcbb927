"""Checkpoints: atomic writes, safe loading (``weights_only=True``), the RNG states of exact resume and
the configuration check on resume."""

from __future__ import annotations

import pickle
import random
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.distributed as dist

from fire_plugin.engine.distributed import DistInfo
from fire_plugin.runfolder import atomic_write

__all__ = [
    "BEST_CHECKPOINT_NAME",
    "CHECKPOINT_NAME",
    "CheckpointIsADirectoryError",
    "CheckpointNotFoundError",
    "ConfigMismatchError",
    "CorruptCheckpointError",
    "UnsafeCheckpointError",
    "load_checkpoint",
    "save_checkpoint",
]


CHECKPOINT_NAME = "last.pt"
BEST_CHECKPOINT_NAME = "best.pt"


class ConfigMismatchError(ValueError):
    """Raised when a run would resume from a checkpoint written with another configuration."""


def _rng_state() -> dict[str, Any]:
    np_state: tuple[Any, ...] = tuple(np.random.get_state(legacy=True))
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        "numpy": [np_state[0], torch.from_numpy(np.asarray(np_state[1]).astype(np.int64)), *map(float, np_state[2:])],
        "python": list(random.getstate()[1]),
        "python_version": random.getstate()[0],
    }


def _set_rng_state(state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if torch.cuda.is_available() and state.get("cuda"):
        torch.cuda.set_rng_state_all(state["cuda"])
    name, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((name, keys.numpy().astype(np.uint32), int(pos), int(has_gauss), float(cached)))
    random.setstate((state["python_version"], tuple(state["python"]), None))


def _loader_generators(loader: Any) -> list[torch.Generator]:
    """The ``torch.Generator`` objects a DataLoader draws from (its own, its sampler's, its batch sampler's), once each.

    A DataLoader built with ``generator=`` (or a sampler with one) draws its shuffling order and worker seeds from
    it; :func:`fit` saves their states with every checkpoint and restores them on resume, so that the resumed
    epochs see the same batches as an uninterrupted run.
    """
    found: list[torch.Generator] = []
    objects = [loader, getattr(loader, "sampler", None), getattr(loader, "batch_sampler", None)]
    objects.append(getattr(objects[2], "sampler", None))
    for obj in objects:
        gen = getattr(obj, "generator", None)
        if isinstance(gen, torch.Generator) and not any(gen is g for g in found):
            found.append(gen)
    return found


def _rng_states_of_all_ranks(info: DistInfo) -> list[dict[str, Any]] | None:
    """Every rank's RNG state (a collective under DDP: all ranks call it); None in a single process."""
    if not (info.enabled and dist.is_initialized()):
        return None
    states: list[Any] = [None] * info.world_size
    dist.all_gather_object(states, _rng_state())
    return states


def save_checkpoint(path: str | Path, state: dict[str, Any]) -> Path:
    """Write ``state`` atomically: to a temporary file in the same directory, then ``os.replace``.

    An interrupted write never leaves a truncated checkpoint in place of a good one. The file gets the permissions
    of any new file (``0o666`` minus the umask), like the run's other outputs.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    return atomic_write(path, lambda handle: torch.save(state, handle), binary=True)


class CheckpointNotFoundError(FileNotFoundError):
    """A checkpoint is not on disk (nor downloadable, for a zoo model); the message names the expected path."""


class CheckpointIsADirectoryError(CheckpointNotFoundError, IsADirectoryError):
    """A directory was given where a checkpoint file is expected; the message names the files inside it."""


class CorruptCheckpointError(ValueError):
    """A checkpoint file exists but is damaged: empty, truncated, or not a PyTorch file.

    The one error type of a damaged file, whoever reads it (:func:`load_checkpoint`, ``load_pretrained``, the
    margins' inputs); the message names the file and what to do.
    """


class UnsafeCheckpointError(ValueError, pickle.UnpicklingError):
    """A checkpoint holds Python objects other than tensors and plain containers: loading it could run code."""


_REMEDY = "delete it or pass another file"


def load_checkpoint(path: str | Path, *, map_location: str | torch.device | None = "cpu",
                    what: str = "checkpoint", remedy: str = _REMEDY) -> dict[str, Any]:
    """Load a checkpoint (written by :func:`fit` or ``torch.save``) with ``weights_only=True``: no code from the
    file is run. The one checkpoint loader of the package.

    ``what`` names the file in error messages (e.g. ``"--inputs file"`` for a file that is not a checkpoint);
    ``remedy`` says what to do with a damaged one.

    Raises:
        CheckpointNotFoundError: ``path`` does not exist (a ``FileNotFoundError``);
            :class:`CheckpointIsADirectoryError` (also an ``IsADirectoryError``): it is a directory.
        CorruptCheckpointError: the file is empty, truncated or not a torch checkpoint (a ``ValueError``).
        UnsafeCheckpointError: the file holds objects that could run code when loaded (a ``ValueError`` and a
            ``pickle.UnpicklingError``).

    Example:
        >>> import tempfile
        >>> path = Path(tempfile.mkdtemp()) / "empty.pt"
        >>> _ = path.write_bytes(b"")
        >>> try:
        ...     load_checkpoint(path)
        ... except CorruptCheckpointError as err:
        ...     print(str(err).split("'")[-1])
         is empty (0 bytes: an interrupted save, copy or download); delete it or pass another file
    """
    path = Path(path)
    if path.is_dir():
        inside = sorted(p.name for p in path.iterdir() if p.suffix in (".pt", ".pth", ".ckpt", ".bin"))
        example = f"it holds {inside[:5]}" if inside else f"e.g. {str(path / CHECKPOINT_NAME)!r}"
        raise CheckpointIsADirectoryError(f"{what} {str(path)!r} is a directory; pass the file inside it ({example})")
    if not path.exists():
        raise CheckpointNotFoundError(f"{what} {str(path)!r} does not exist")
    size = path.stat().st_size
    if size == 0:
        raise CorruptCheckpointError(f"{what} {str(path)!r} is empty (0 bytes: an interrupted save, copy or "
                                     f"download); {remedy}")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except (PermissionError, MemoryError):
        raise
    except pickle.UnpicklingError as err:
        text = str(err)
        if "unsupported global" in text.lower():
            # torch's message advises weights_only=False, i.e. running the file's code: never passed on
            found = next((line.strip() for line in text.splitlines() if "unsupported global" in line.lower()), "")
            raise UnsafeCheckpointError(
                f"{what} {str(path)!r} holds objects other than tensors and plain containers"
                + (f" ({found})" if found else "") + "; it was refused because loading it could run code (load "
                "only files you trust, outside this package)"
            ) from None
        raise CorruptCheckpointError(f"{what} {str(path)!r} is corrupt or not a torch file ({size} bytes; "
                                     f"{_first_line(text)}); {remedy}") from None
    except Exception as err:  # torch's unpickler raises many types on damaged bytes (EOFError, IndexError, ...)
        raise CorruptCheckpointError(f"{what} {str(path)!r} is corrupt or truncated ({size} bytes; "
                                     f"{type(err).__name__}: {_first_line(str(err))}); {remedy}") from None


def _first_line(text: str) -> str:
    """The first informative line of an error text; never torch's advice to load with ``weights_only=False``."""
    skip = ("weights only load failed", "check the documentation")
    lines = [t.strip() for t in text.splitlines() if t.strip()]
    line = next((t for t in lines if "weights_only" not in t and not t.lower().startswith(skip)), "")
    return line[:300]


def _jsonable(config: dict[str, Any]) -> dict[str, Any]:
    return {str(k): (v if isinstance(v, (bool, int, float, str)) or v is None else repr(v)) for k, v in config.items()}


def _check_config(saved: dict[str, Any] | None, current: dict[str, Any], ckpt_path: Path) -> None:
    if saved is None:
        return
    keys = sorted(set(saved) & set(current))  # a field one side does not record (a plain function) is not compared
    differing = [k for k in keys if saved.get(k) != current.get(k)]
    if differing:
        details = ", ".join(f"{k}: checkpoint {saved.get(k)!r} vs now {current.get(k)!r}" for k in differing)
        raise ConfigMismatchError(
            f"{str(ckpt_path)!r} was written by a run with another configuration ({details}); resume with the same "
            "settings, or start fresh with resume=False (CLI: --no-resume) or another output directory (--out)"
        )

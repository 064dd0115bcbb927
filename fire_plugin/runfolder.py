"""Run folders: one writer at a time (a lock file), files written atomically, and the machine a result came from.

Every pipeline that writes a run folder (``train``, presets, ``run_one``, the demo, ``evaluate``, ``margins``) holds
:func:`run_lock` on it for the whole run: a second process on the same folder gets :class:`RunLockedError` (the
CLI: ``fire-plugin: error: OUT is in use by process PID since TIME ...``, exit status 2). The lock is an
``fcntl.flock`` on ``OUT/.fire-plugin.lock``, which the kernel releases when its process dies, however it dies: a
lock left by a killed run is taken over, with a warning naming the process that held it.

Result files are written by :func:`atomic_write_text` / :func:`atomic_path`: to a temporary file in the same folder,
then renamed over the target, so that a reader (or a crash) never sees half a file. They follow the umask, as
checkpoints do (:func:`fire_plugin.engine.save_checkpoint`).

:func:`environment_info` says what a result was measured on (torch, CPU model, ATen CPU capability, threads, git
commit); :func:`write_environment` writes it as ``environment.json`` beside the results.

Example:
    >>> import tempfile
    >>> folder = Path(tempfile.mkdtemp())
    >>> with run_lock(folder):
    ...     _ = atomic_write_text(folder / "result.json", "{}")
    >>> sorted(p.name for p in folder.iterdir())
    ['result.json']
"""

from __future__ import annotations

import contextlib
import datetime
import json
import logging
import os
import platform
import secrets
import stat
import subprocess
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import IO, Any

__all__ = [
    "LOCK_NAME",
    "RunLockedError",
    "Terminated",
    "atomic_path",
    "atomic_write_text",
    "environment_info",
    "raise_on_sigterm",
    "run_lock",
    "write_environment",
]

_logger = logging.getLogger(__name__)

LOCK_NAME = ".fire-plugin.lock"
"""The lock file a running pipeline holds in its run folder (removed when the run ends)."""


class RunLockedError(ValueError):
    """Another live process holds the run folder's lock; the message names it, since when, and what to do."""


class Terminated(KeyboardInterrupt):
    """SIGTERM (sent by ``timeout``, ``kill`` and batch schedulers), raised where Ctrl-C raises KeyboardInterrupt:
    the run stops the same way (checkpoints kept, locks released) and the CLI exits with status 143."""


def raise_on_sigterm() -> None:
    """Make SIGTERM raise :class:`Terminated` in the main thread (the CLI calls this; libraries should not).

    Example:
        >>> import signal
        >>> before = signal.getsignal(signal.SIGTERM)
        >>> raise_on_sigterm()
        >>> signal.getsignal(signal.SIGTERM).__name__
        '_terminated'
        >>> _ = signal.signal(signal.SIGTERM, before)
    """
    import signal

    def _terminated(signum: int, frame: Any) -> None:
        raise Terminated(f"terminated by signal {signum}")

    signal.signal(signal.SIGTERM, _terminated)


def _holder(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except ValueError:
        return {}
    return data if isinstance(data, dict) else {}


def _describe(holder: dict[str, Any]) -> str:
    pid = holder.get("pid", "?")
    since = holder.get("since", "an unknown time")
    command = holder.get("command")
    return f"process {pid} since {since}" + (f" ({command})" if command else "")


@contextlib.contextmanager
def run_lock(folder: str | os.PathLike[str], *, command: str | None = None) -> Iterator[Path]:
    """Hold the lock of run folder ``folder`` (created if needed) for the ``with`` block.

    Under torchrun only rank 0 takes it (the other ranks write nothing). The same process may not take the same
    folder's lock twice (a pipeline inside another one locks its own sub-folder).

    Raises:
        RunLockedError: a live process holds it; the message names the folder, the process, since when, and
            what to do.
    """
    folder = Path(folder)
    if int(os.environ.get("RANK", "0")) != 0:
        yield folder
        return
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not POSIX: no lock, said once per run
        _logger.warning("no fcntl on this platform: %s is not locked against a second writer", folder)
        yield folder
        return
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            with open(path, encoding="utf-8", errors="replace") as handle:
                holder = _holder(handle.read())
            os.close(fd)
            raise RunLockedError(
                f"{str(folder)!r} is in use by {_describe(holder)}; wait for that run to end (or stop it), or "
                "choose another output folder (--out)"
            ) from None
        try:  # the file we locked must still be the one at `path` (a releasing run unlinks it)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        previous = _holder(os.read(fd, 65536).decode("utf-8", errors="replace"))
        if previous.get("pid") is not None:
            message = (f"taking over the lock of {str(folder)!r} from {_describe(previous)}, which is gone (killed or "
                       "crashed); its last checkpoint is resumed")
            _logger.warning(message)
            warnings.warn(message, RuntimeWarning, stacklevel=3)
        since = datetime.datetime.now().astimezone().isoformat(timespec="seconds")
        info = {"pid": os.getpid(), "since": since, "host": platform.node(), "command": command}
        os.lseek(fd, 0, os.SEEK_SET)
        os.ftruncate(fd, 0)
        os.write(fd, json.dumps(info).encode())
        yield folder
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(path)
        os.close(fd)


def _temporary_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")


def _existing_mode(path: Path) -> int | None:
    """The permission bits of ``path``, None when there is no file yet (a replaced file keeps its mode)."""
    try:
        return stat.S_IMODE(path.stat().st_mode)
    except FileNotFoundError:
        return None


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike[str]) -> Iterator[Path]:
    """A temporary path beside ``path`` to write to; renamed over ``path`` when the block ends without error.

    The temporary name keeps the suffix (``savefig`` picks the format from it).

    Example:
        >>> import tempfile
        >>> target = Path(tempfile.mkdtemp()) / "table.csv"
        >>> with atomic_path(target) as tmp:
        ...     _ = tmp.write_text("a,b\\n")
        >>> target.read_text()
        'a,b\\n'
    """
    path = Path(path)
    tmp = _temporary_name(path).with_suffix(".tmp" + path.suffix)
    mode = _existing_mode(path)
    try:
        yield tmp
        if tmp.exists():
            tmp.chmod(0o666 & ~_umask() if mode is None else mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def atomic_write(path: str | os.PathLike[str], write: Callable[[IO[Any]], object], *, binary: bool = False) -> Path:
    """Write a file atomically: ``write(handle)`` fills a temporary file in the same folder, fsynced, then renamed.

    An interrupted write never leaves a torn file in place of a good one. A new file gets the permissions of any
    new file (``0o666`` minus the umask), a replaced one keeps its own. Checkpoints (``binary=True``), result files,
    model_info JSON, leaderboard placements and margin tables all go through here.

    >>> import tempfile, pathlib
    >>> out = pathlib.Path(tempfile.mkdtemp()) / "a.txt"
    >>> atomic_write(out, lambda h: h.write("hi")).read_text()
    'hi'
    """
    path = Path(path)
    tmp = _temporary_name(path)
    mode = _existing_mode(path)
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        handle: IO[Any] = os.fdopen(fd, "wb") if binary else os.fdopen(fd, "w", encoding="utf-8")
        with handle:
            write(handle)
            handle.flush()
            os.fsync(handle.fileno())
        if mode is not None:
            os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_text(path: str | os.PathLike[str], text: str) -> Path:
    """Write ``text`` to ``path`` atomically (see :func:`atomic_write`)."""
    return atomic_write(path, lambda handle: handle.write(text))


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.lower().startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def _git_commit() -> dict[str, Any] | None:
    root = Path(__file__).resolve().parents[1]
    if not (root / ".git").exists():
        return None
    try:
        commit = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True,
                                timeout=10, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(root), "status", "--porcelain", "--untracked-files=no"],
                               capture_output=True, text=True, timeout=10, check=True).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return {"commit": commit, "modified_files": bool(dirty)}


def environment_info() -> dict[str, Any]:
    """What a number was measured on: versions, CPU model and ATen CPU capability, threads, GPU, git commit.

    Example:
        >>> info = environment_info()
        >>> {"torch", "cpu_model", "aten_cpu_capability", "torch_threads", "git"} <= set(info)
        True
    """
    import numpy as np
    import torch

    from fire_plugin import __version__

    cuda = None
    if torch.cuda.is_available():
        cuda = {"device": torch.cuda.get_device_name(0), "count": torch.cuda.device_count(),
                "version": torch.version.cuda}
    return {
        "fire_plugin": __version__,
        "torch": torch.__version__,
        "numpy": np.__version__,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpu_model": _cpu_model(),
        "cpu_count": os.cpu_count(),
        "aten_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "aten_cpu_capability_env": os.environ.get("ATEN_CPU_CAPABILITY"),
        "torch_threads": torch.get_num_threads(),
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "cuda": cuda,
        "git": _git_commit(),
        "written": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
    }


def write_environment(folder: str | os.PathLike[str], **extra: Any) -> Path:
    """Write :func:`environment_info` (and ``extra`` keys, e.g. the threads of each run) to
    ``folder/environment.json``."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return atomic_write_text(folder / "environment.json", json.dumps({**environment_info(), **extra}, indent=2))

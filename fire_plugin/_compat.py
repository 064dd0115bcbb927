"""Compatibility shims for third-party packages; the only place that touches ``sys.modules`` and ``sys.meta_path``.

RobustBench 1.1.1 runs ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState`` when any of its modules is imported, but the
AutoAttack package on the package registry installs the import name ``pyautoattack``. Before
RobustBench is imported we register ``autoattack`` and ``autoattack.state`` as aliases of
``pyautoattack`` and ``pyautoattack.state``. A real ``autoattack`` installation (the GitHub
package) is left untouched.

``import fire_plugin`` installs a finder that makes the alias on first ``import autoattack`` (it imports nothing
itself), so a plain ``import robustbench`` works after it; :func:`import_robustbench`, through which every import
of robustbench in this package goes, makes the alias eagerly and silences the deprecation warnings of robustbench's
import chain.

timm: :func:`register_models_with_timm` makes ``timm.create_model("wrn34_10")`` work after a plain
``import fire_plugin``: if timm is already imported it imports :mod:`fire_plugin.models` (which registers the
architectures) right away, otherwise it installs a finder that does so as soon as timm's own import completes.
When that import was started by one of our modules, timm's ``torch.jit.interface is deprecated`` FutureWarning is
silenced around it; a user's own ``import timm`` is left alone.
"""

from __future__ import annotations

import importlib
import importlib.abc
import importlib.machinery
import importlib.util
import logging
import sys
import warnings
from collections.abc import Sequence
from types import ModuleType
from typing import Any

__all__ = [
    "ensure_autoattack_alias",
    "import_robustbench",
    "install_autoattack_finder",
    "register_models_with_timm",
]

_logger = logging.getLogger(__name__)


def _real_autoattack_present() -> bool:
    """Whether an ``autoattack`` that is not our alias is imported or importable."""
    loaded = sys.modules.get("autoattack")
    if loaded is not None:
        return getattr(loaded, "__name__", None) != "pyautoattack"
    try:
        return importlib.util.find_spec("autoattack") is not None
    except (ImportError, ValueError):  # a broken entry in sys.modules or on sys.path: not a usable autoattack
        return False


def ensure_autoattack_alias() -> None:
    """Make ``import autoattack`` resolve to ``pyautoattack`` unless a real ``autoattack`` exists.

    ``import fire_plugin`` calls it, so that ``import robustbench`` works afterwards. A real ``autoattack``
    (already imported, or importable from ``sys.path``) is never shadowed, nor are its submodules. Without
    pyautoattack nothing happens. Idempotent; cheap after the first call.

    >>> ensure_autoattack_alias()
    >>> import autoattack, pyautoattack
    >>> autoattack.AutoAttack is pyautoattack.AutoAttack
    True
    """
    if _real_autoattack_present():
        # The GitHub AutoAttack package is installed under its own name: use it as is.
        return
    if "autoattack" in sys.modules and "autoattack.state" in sys.modules:
        return
    try:
        pyautoattack = importlib.import_module("pyautoattack")
        pyautoattack_state = importlib.import_module("pyautoattack.state")
    except ImportError as exc:
        _logger.debug("no autoattack alias: pyautoattack cannot be imported (%s)", exc)
        return
    sys.modules.setdefault("autoattack", pyautoattack)
    sys.modules.setdefault("autoattack.state", pyautoattack_state)
    _logger.debug("aliased autoattack -> pyautoattack for robustbench")


def import_robustbench(submodule: str = "") -> ModuleType:
    """Import ``robustbench`` (or ``robustbench.<submodule>``) after installing the AutoAttack alias.

    Args:
        submodule: dotted path below ``robustbench``, for example ``"utils"`` or
            ``"model_zoo.architectures.wide_resnet"``; empty for the top-level package.

    Returns:
        The imported module.

    >>> utils = import_robustbench("utils")
    >>> callable(utils.load_model)
    True
    """
    ensure_autoattack_alias()
    name = "robustbench" + (f".{submodule}" if submodule else "")
    with warnings.catch_warnings():
        # robustbench's import chain warns about pkg_resources, timm.models.layers and torch.jit.interface:
        # noise for our users, about code that is not theirs.
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        warnings.filterwarnings("ignore", message=".*pkg_resources.*", category=UserWarning)
        return importlib.import_module(name)


# --------------------------------------------------------------------------------------------------- lazy alias


def _spec_elsewhere(fullname: str, path: Sequence[str] | None, skip: type) -> importlib.machinery.ModuleSpec | None:
    """The spec the finders of ``sys.meta_path`` (other than those of type ``skip``) give ``fullname``, or None."""
    for finder in sys.meta_path:
        if isinstance(finder, skip) or not hasattr(finder, "find_spec"):
            continue
        spec = finder.find_spec(fullname, path)
        if spec is not None:
            return spec
    return None


class _AliasLoader(importlib.abc.Loader):
    """Loads a module by importing another one (``autoattack`` -> ``pyautoattack``) and keeping its own spec."""

    def __init__(self, target: str) -> None:
        self.target = target
        self._spec: Any = None

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType:
        module = importlib.import_module(self.target)
        self._spec = module.__spec__
        return module

    def exec_module(self, module: ModuleType) -> None:
        module.__spec__ = self._spec  # module_from_spec replaced it with the alias's; the module keeps its own


class _AutoattackFinder(importlib.abc.MetaPathFinder):
    """Resolves ``autoattack`` (and its submodules) to ``pyautoattack`` when no real ``autoattack`` exists."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname == "autoattack":
            if _spec_elsewhere(fullname, path, type(self)) is not None:  # the GitHub AutoAttack package: use it as is
                return None
            if _spec_elsewhere("pyautoattack", None, type(self)) is None:
                return None
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader("pyautoattack"), is_package=True)
        if fullname.startswith("autoattack."):
            alias = sys.modules.get("autoattack")
            if alias is None or getattr(alias, "__name__", None) != "pyautoattack":
                return None
            return importlib.machinery.ModuleSpec(fullname, _AliasLoader("py" + fullname))
        return None


def install_autoattack_finder() -> None:
    """Make a later ``import autoattack`` resolve to ``pyautoattack`` unless a real ``autoattack`` exists.

    Unlike :func:`ensure_autoattack_alias` it imports nothing now (``import fire_plugin`` calls it and stays
    fast); the alias is made on the first ``import autoattack`` (robustbench's). Idempotent.

    >>> install_autoattack_finder()
    >>> import autoattack, pyautoattack
    >>> autoattack.AutoAttack is pyautoattack.AutoAttack
    True
    """
    if not any(isinstance(f, _AutoattackFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _AutoattackFinder())


# --------------------------------------------------------------------------------------------------- timm

_TIMM_WARNING = r"`torch\.jit\.interface` is deprecated"


def _imported_by_us() -> bool:
    """Whether the import in progress was started by a module of this package (not the user's code)."""
    frame = sys._getframe(1)
    while frame is not None:
        name = frame.f_globals.get("__name__", "")
        if not (frame.f_code.co_filename.startswith("<frozen importlib") or name in ("importlib", __name__)):
            return bool(name == "fire_plugin" or name.startswith("fire_plugin."))
        frame = frame.f_back  # type: ignore[assignment]
    return False


def _register_now() -> None:
    try:
        importlib.import_module("fire_plugin.models")
    except Exception as exc:  # a broken registration must not break the user's `import timm`
        _logger.warning("fire_plugin's architectures are not registered with timm: importing fire_plugin.models "
                        "raised %s: %s", type(exc).__name__, exc)


class _RegisteringLoader(importlib.abc.Loader):
    """Wraps timm's loader: after timm's module has run, imports :mod:`fire_plugin.models` (which registers)."""

    def __init__(self, loader: Any, finder: _TimmFinder) -> None:
        self._loader = loader
        self._finder = finder

    def __getattr__(self, name: str) -> Any:  # get_resource_reader, is_package, get_code, ...: timm's loader's
        if name.startswith("_"):
            raise AttributeError(name)
        return getattr(self._loader, name)

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> ModuleType | None:
        return self._loader.create_module(spec)  # type: ignore[no-any-return]

    def exec_module(self, module: ModuleType) -> None:
        with warnings.catch_warnings():
            if _imported_by_us():  # our own import of timm: its FutureWarning is noise about code not ours
                warnings.filterwarnings("ignore", message=_TIMM_WARNING, category=FutureWarning)
            self._loader.exec_module(module)
        self._finder.remove()
        if "fire_plugin.models" not in sys.modules:
            _register_now()


class _TimmFinder(importlib.abc.MetaPathFinder):
    """Finds timm as the other finders do and wraps its loader so that our architectures get registered."""

    def find_spec(self, fullname: str, path: Sequence[str] | None = None,
                  target: ModuleType | None = None) -> importlib.machinery.ModuleSpec | None:
        if fullname != "timm":
            return None
        spec = _spec_elsewhere(fullname, path, type(self))
        if spec is None or spec.loader is None:
            return spec
        spec.loader = _RegisteringLoader(spec.loader, self)
        return spec

    def remove(self) -> None:
        if self in sys.meta_path:
            sys.meta_path.remove(self)


def register_models_with_timm() -> None:
    """Have :mod:`fire_plugin.models` registered with timm by the time anyone can call ``timm.create_model``.

    If timm is already imported, imports :mod:`fire_plugin.models` now; otherwise installs a finder that does it
    right after timm's own import finishes (whoever imports timm) and then removes itself. ``import fire_plugin``
    calls it, so ``import fire_plugin; import timm; timm.create_model("wrn34_10")`` works without importing timm
    at ``import fire_plugin``. Idempotent.

    >>> register_models_with_timm()
    >>> import timm
    >>> timm.is_model("wrn34_10")
    True
    """
    if "timm" in sys.modules:
        if "fire_plugin.models" not in sys.modules:
            _register_now()
        return
    if not any(isinstance(f, _TimmFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _TimmFinder())

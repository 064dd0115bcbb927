"""Compatibility shims for third-party packages; the only place that touches ``sys.modules``.

RobustBench 1.1.1 runs ``from autoattack import AutoAttack`` and
``from autoattack.state import EvaluationState`` when any of its modules is imported, but the
AutoAttack package on the package registry installs the import name ``pyautoattack``. Before
RobustBench is imported we register ``autoattack`` and ``autoattack.state`` as aliases of
``pyautoattack`` and ``pyautoattack.state``. A real ``autoattack`` installation (the GitHub
package) is left untouched.

``import fire_plugin`` installs the alias, so a plain ``import robustbench`` works after it;
:func:`import_robustbench` also silences the deprecation warnings of robustbench's import chain.
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import sys
import warnings
from types import ModuleType

__all__ = ["ensure_autoattack_alias", "import_robustbench"]

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

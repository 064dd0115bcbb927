"""The training engine as a sub-package (this commit moves the module; the next one splits it)."""

from fire_plugin.engine.loop import *  # noqa: F403
from fire_plugin.engine.loop import DistInfo, __all__  # noqa: F401

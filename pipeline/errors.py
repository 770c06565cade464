"""Re-export of `core.errors` (the error classes live at the bottom of the import graph)."""

from core.errors import *  # noqa: F401,F403
from core.errors import __all__  # noqa: F401

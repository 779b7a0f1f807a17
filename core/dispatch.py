"""The dispatch loop: match the highest-priority ready tasks to free worker slots across nodes.

``dispatch`` is the compiled ``core._dispatch_c`` when it is built, else the pure-Python twin
``core._dispatch_py`` (same results, same errors; the rules are documented there). Setting
``DSCHED_NO_EXTENSIONS`` to any non-empty value forces the twin. ``py_dispatch`` is always the
twin, and ``IMPLEMENTATION`` says which one ``dispatch`` is. ``dispatch`` is bound directly to the
chosen function (no wrapper), since the scheduler calls it on every pass.
"""

from __future__ import annotations

import os
import warnings
from typing import Literal

from core._dispatch_py import dispatch as py_dispatch
from core.dispatch_types import NODE_SLOTS_MAX, DispatchInvariantError, DispatchQueue, NodeSlots

__all__ = [
    "IMPLEMENTATION",
    "NODE_SLOTS_MAX",
    "DispatchInvariantError",
    "DispatchQueue",
    "NodeSlots",
    "dispatch",
    "py_dispatch",
]

IMPLEMENTATION: Literal["cython", "python"] = "python"
dispatch = py_dispatch

if not os.environ.get("DSCHED_NO_EXTENSIONS"):
    try:
        from core._dispatch_c import dispatch
    except ImportError as exc:
        warnings.warn(
            f"core._dispatch_c is not built ({exc}); dispatching with the pure-Python twin",
            RuntimeWarning,
            stacklevel=2,
        )
    else:
        IMPLEMENTATION = "cython"

"""The ready queue: the compiled one (``core/_heap_c.pyx``) when built, else its Python twin.

``DSCHED_NO_EXTENSIONS`` set to anything non-empty selects the twin on purpose; an extension that
fails to import selects it with one RuntimeWarning. Both stay importable by name
(``PyReadyQueue``, ``CyReadyQueue``) so tests and benchmarks can run them side by side.

Contract (both implementations):

- pop order is ``(priority, seq, task_id)`` ascending: HIGH, MEDIUM, LOW; within a priority,
  lower submission ``seq`` first; the id only breaks ties between equal sequences;
- ``push(task_id, priority, seq)``: ``task_id`` an exact ``str`` (TypeError otherwise, subclasses
  included), ``priority`` 0, 1 or 2 and ``0 <= seq <= SEQ_MAX`` (TypeError if not integers,
  ValueError if out of range); an id already queued raises ``DuplicateTaskError`` (a
  ValueError); a full queue (``capacity_max``) raises OverflowError;
- ``pop``, ``pop_entry``, ``peek`` and ``peek_entry`` raise IndexError when empty; ``pop_many(k)``
  returns up to ``k`` ids (ValueError if ``k < 0``); ``remove`` returns whether the id was queued;
- ``fingerprint()`` is the XOR of ``hash(task_id) & 0xFFFFFFFF`` over the queued ids, kept up to
  date as they come and go, so a checker can compare the ids with another collection's in O(1);
- every operation is atomic with respect to other threads, and O(log n) or better except
  ``entries()`` (a sorted snapshot, O(n log n)) and ``clear()`` (O(n)).
"""

from __future__ import annotations

import os
import warnings
from typing import TYPE_CHECKING, Final

from core._heap_py import FINGERPRINT_MASK, QUEUED_TASKS_MAX, SEQ_MAX, DuplicateTaskError
from core._heap_py import ReadyQueue as PyReadyQueue
from core.priority import PRIORITY_LEVELS, Priority

__all__ = [
    "FINGERPRINT_MASK",
    "IMPLEMENTATION",
    "PRIORITY_LEVELS",
    "QUEUED_TASKS_MAX",
    "SEQ_MAX",
    "CyReadyQueue",
    "DuplicateTaskError",
    "Priority",
    "PyReadyQueue",
    "ReadyQueue",
]

if TYPE_CHECKING:
    from core._heap_c import ReadyQueue as _CompiledReadyQueue

CyReadyQueue: type[_CompiledReadyQueue] | None = None

if os.environ.get("DSCHED_NO_EXTENSIONS"):
    _implementation = "python"
else:
    try:
        from core._heap_c import ReadyQueue as _compiled
    except ImportError as exc:
        warnings.warn(
            f"dsched: the compiled ready queue (core._heap_c) did not import ({exc}); using the "
            "slower pure-Python twin. Build it with `pip install -e .`, or set "
            "DSCHED_NO_EXTENSIONS=1 to choose the twin without this warning.",
            RuntimeWarning,
            stacklevel=2,
        )
        _implementation = "python"
    else:
        CyReadyQueue = _compiled
        _implementation = "cython"

IMPLEMENTATION: Final[str] = _implementation

# Both classes have the same methods and signatures (core/_heap_c.pyi mirrors the twin), so
# type checkers see the twin; at run time the name is bound to the selected class.
if TYPE_CHECKING:
    ReadyQueue = PyReadyQueue
elif CyReadyQueue is not None:
    ReadyQueue = CyReadyQueue
else:
    ReadyQueue = PyReadyQueue

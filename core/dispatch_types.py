"""What the dispatch loop reads and raises, shared by its compiled and pure-Python forms.

Kept apart from both implementations so that they import one definition: a ``NodeSlots`` made for
one is a ``NodeSlots`` for the other, and an error caught from one is the error the other raises.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

# Bound on a node's free and busy counts. Load is compared by integer cross-multiplication,
# busy_a * (busy_b + free_b) against busy_b * (busy_a + free_a); with both counts at most
# 2**31 - 1 every product stays below 2**63, so the compiled loop can use 64-bit C integers and
# agree with the Python twin exactly. Real nodes run a handful of workers, so this is far off.
NODE_SLOTS_MAX = 2**31 - 1


@dataclass(frozen=True, slots=True)
class NodeSlots:
    """One node as dispatch sees it: worker slots free now, slots busy now, task types it runs.

    ``types`` is None for a node that runs every task type; an empty set runs none.
    """

    node_id: str
    free: int
    busy: int
    types: frozenset[str] | None = None


class DispatchInvariantError(RuntimeError):
    """Dispatch produced a result that breaks its contract: a bug, never a user error.

    Raised by an explicit check (not ``assert``) so it stays on under ``python -O``.
    """


class DispatchQueue(Protocol):
    """The ready-queue methods dispatch uses; ``core.heap.ReadyQueue`` and its twin provide them.

    Only these Python-level methods, so the queue and the dispatch loop stay decoupled.
    """

    def __len__(self) -> int: ...

    def push(self, task_id: str, priority: int, seq: int) -> None: ...

    def pop_entry(self) -> tuple[str, int, int]: ...

    def pop_many(self, k: int) -> list[str]: ...

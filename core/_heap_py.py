"""The ready queue in pure Python: the twin of ``core/_heap_c.pyx``, with the same behaviour.

Pop order is ``(priority, seq, task_id)`` ascending: HIGH before MEDIUM before LOW, then lower
submission sequence first, and the task id only breaks a tie between equal sequences, so the order
is total and both implementations (and any reference model) agree on it exactly.

Layout: one ``heapq`` heap per priority of ``(seq, task_id, priority)`` tuples, and ``_live``
mapping every queued id to *the very tuple* in its heap. ``remove`` is lazy: it forgets the id in
``_live`` and leaves the tuple in the heap, where ``pop`` and ``peek`` skip it (a heap tuple is
live only if ``_live`` maps its id to that same object, so an id removed and pushed again leaves
a stale twin that is skipped too). Memory stays bounded: a heap whose stale tuples outnumber its
live ones (plus a small slack) is rebuilt from its live tuples, which costs O(size) once per
O(size) removals, so every operation stays O(log n) amortized. One tuple per task, shared by the
heap and the index, keeps a task at ~150 bytes. (The compiled version removes exactly instead;
this twin favours simple code that heapq runs in C.)

Thread safety: every public method does its work while holding ``self._lock``. Arguments are
validated before the lock is taken (``operator.index`` may run a user's ``__index__``). The lock is
reentrant because Python code can still run on this thread in the middle of an operation: creating
a list, tuple or dict may start a garbage collection, whose callbacks and finalizers might use the
queue. So that such a nested call neither deadlocks nor sees a half-made change, a method creates
those objects only before it reads the state or after it has finished writing it (ints, dict and
list growth never collect), exactly like the compiled twin.
"""

from __future__ import annotations

import heapq
import operator
import threading
from typing import SupportsIndex

from core.priority import PRIORITY_LEVELS, Priority

# Sequences are stored as C int64 by the compiled twin; Redis INCR, which issues them, has the
# same range, so no real sequence is refused.
SEQ_MAX = 2**63 - 1
# The compiled twin packs an entry's position into 29 bits (3 more say which of its six
# structures holds it). 536,870,911 tasks is ~54x Limits.queued_tasks_max; capacity_max, the
# limit a caller configures, must not exceed it.
QUEUED_TASKS_MAX = 2**29 - 1
# A heap is rebuilt once its stale tuples exceed its live ones by this much: small heaps are
# never rebuilt over and over.
_STALE_SLACK = 64
# fingerprint() folds these bits of each id's hash: the bits the compiled twin keeps per slot.
FINGERPRINT_MASK = 0xFFFF_FFFF

# A queued task: (seq, task_id, priority). Ordered by seq, then id, within its priority's heap.
_Entry = tuple[int, str, int]


class DuplicateTaskError(ValueError):
    """``push`` of a task id that is already queued; the queue never holds one id twice."""


def _check_task_id(task_id: object) -> str:
    # Exact str only: a str subclass could override __hash__ or __eq__, and the compiled twin's
    # atomicity rests on no user code running inside an operation.
    if type(task_id) is not str:
        raise TypeError(f"task_id must be a str (not a subclass), not {type(task_id).__name__}")
    return task_id


def _check_priority(priority: SupportsIndex) -> int:
    value = operator.index(priority)
    if not 0 <= value < PRIORITY_LEVELS:
        raise ValueError(f"priority must be 0 (high), 1 (medium) or 2 (low), not {value!r}")
    return int(value)


def _check_seq(seq: SupportsIndex) -> int:
    value = operator.index(seq)
    if not 0 <= value <= SEQ_MAX:
        raise ValueError(f"seq must be between 0 and 2**63 - 1, not {value!r}")
    return int(value)


def _check_capacity(capacity_max: SupportsIndex | None) -> int:
    if capacity_max is None:
        return QUEUED_TASKS_MAX
    value = operator.index(capacity_max)
    if not 1 <= value <= QUEUED_TASKS_MAX:
        raise ValueError(f"capacity_max must be between 1 and {QUEUED_TASKS_MAX}, not {value!r}")
    return int(value)


def _check_count(k: SupportsIndex) -> int:
    value = operator.index(k)
    if value < 0:
        raise ValueError(f"pop_many needs k >= 0, not {value!r}")
    return int(value)


class ReadyQueue:
    """Queued task ids in pop order ``(priority, seq, task_id)``; see the module docstring."""

    __slots__ = ("_capacity_max", "_counts", "_fingerprint", "_heaps", "_live", "_lock")

    def __init__(self, *, capacity_max: int | None = None) -> None:
        self._capacity_max = _check_capacity(capacity_max)
        self._lock = threading.RLock()
        self._heaps: tuple[list[_Entry], ...] = tuple([] for _ in range(PRIORITY_LEVELS))
        self._live: dict[str, _Entry] = {}
        self._counts = [0] * PRIORITY_LEVELS
        self._fingerprint = 0

    @property
    def capacity_max(self) -> int:
        """How many tasks may be queued at once; ``QUEUED_TASKS_MAX`` when none was given."""
        return self._capacity_max

    # ------------------------------------------------------------------ internals (lock held)
    def _head(self, priority: int) -> _Entry:
        """The live head of a non-empty priority; drops the stale tuples above it."""
        heap = self._heaps[priority]
        live = self._live
        while True:
            entry = heap[0]
            if live.get(entry[1]) is entry:
                return entry
            heapq.heappop(heap)

    def _first_priority(self) -> int:
        for priority in range(PRIORITY_LEVELS):
            if self._counts[priority]:
                return priority
        raise IndexError("the ready queue is empty")

    def _take(self) -> _Entry:
        priority = self._first_priority()
        entry = self._head(priority)
        heap = self._heaps[priority]
        heapq.heappop(heap)
        del self._live[entry[1]]
        self._fingerprint ^= hash(entry[1]) & FINGERPRINT_MASK
        count = self._counts[priority] - 1
        self._counts[priority] = count
        if len(heap) > 2 * count + _STALE_SLACK or not count:
            self._drop_stale(priority)
        return entry

    def _drop_stale(self, priority: int) -> None:
        heap = self._heaps[priority]
        count = self._counts[priority]
        if not count:
            heap.clear()
        elif len(heap) > 2 * count + _STALE_SLACK:
            live = self._live
            heap[:] = [entry for entry in heap if live.get(entry[1]) is entry]
            heapq.heapify(heap)

    # ------------------------------------------------------------------ operations
    def push(self, task_id: str, priority: int, seq: int) -> None:
        """Queue a task. TypeError/ValueError for bad arguments, DuplicateTaskError if the id is
        already queued, OverflowError when ``capacity_max`` tasks are queued."""
        task_id = _check_task_id(task_id)
        priority = _check_priority(priority)
        seq = _check_seq(seq)
        entry = (seq, task_id, priority)  # created before the state is read (see module doc)
        with self._lock:
            if task_id in self._live:
                raise DuplicateTaskError(f"task {task_id!r} is already queued")
            if len(self._live) >= self._capacity_max:
                raise OverflowError(
                    f"ready queue is full: capacity_max={self._capacity_max} tasks queued"
                )
            self._live[task_id] = entry
            heapq.heappush(self._heaps[priority], entry)
            self._counts[priority] += 1
            self._fingerprint ^= hash(task_id) & FINGERPRINT_MASK

    def pop(self) -> str:
        """Remove and return the first task id; IndexError when empty."""
        with self._lock:
            return self._take()[1]

    def pop_entry(self) -> tuple[str, int, int]:
        """Remove and return the first ``(task_id, priority, seq)``; IndexError when empty."""
        with self._lock:
            seq, task_id, priority = self._take()
        return task_id, priority, seq

    def pop_many(self, k: int) -> list[str]:
        """Remove and return up to ``k`` task ids in pop order; ValueError if ``k < 0``."""
        count = _check_count(k)
        popped: list[str] = []  # created before the state is read; growing it never collects
        with self._lock:
            live = self._live
            take = self._take
            while len(popped) < count and live:
                popped.append(take()[1])
        return popped

    def peek(self) -> str:
        """The task id ``pop`` would return, left queued; IndexError when empty."""
        with self._lock:
            return self._head(self._first_priority())[1]

    def peek_entry(self) -> tuple[str, int, int]:
        """The entry ``pop_entry`` would return, left queued; IndexError when empty."""
        with self._lock:
            seq, task_id, priority = self._head(self._first_priority())
        return task_id, priority, seq

    def remove(self, task_id: str) -> bool:
        """Cancel a queued task: True if it was queued (and is no longer), else False."""
        task_id = _check_task_id(task_id)
        with self._lock:
            entry = self._live.pop(task_id, None)
            if entry is None:
                return False
            self._fingerprint ^= hash(task_id) & FINGERPRINT_MASK
            priority = entry[2]
            self._counts[priority] -= 1
            self._drop_stale(priority)
            return True

    def __contains__(self, task_id: object) -> bool:
        task_id = _check_task_id(task_id)
        with self._lock:
            return task_id in self._live

    def __len__(self) -> int:
        with self._lock:
            return len(self._live)

    def counts(self) -> dict[Priority, int]:
        """Queued tasks per priority; all three priorities are always present."""
        with self._lock:
            counts = list(self._counts)
        return {priority: counts[priority] for priority in Priority}

    def clear(self) -> None:
        """Drop every queued task."""
        with self._lock:
            self._live.clear()
            self._fingerprint = 0
            for priority in range(PRIORITY_LEVELS):  # a range never collects; enumerate could
                self._heaps[priority].clear()
                self._counts[priority] = 0

    def fingerprint(self) -> int:
        """The XOR of the low 32 bits of ``hash(task_id)`` over the queued ids, kept as they
        come and go: a checker compares the queue's ids with another collection's in O(1)
        (core.scheduler.Scheduler.check_invariants)."""
        with self._lock:
            return self._fingerprint

    def entries(self) -> list[tuple[str, int, int]]:
        """A snapshot of every ``(task_id, priority, seq)`` in pop order. O(n log n)."""
        with self._lock:
            live = list(self._live.values())  # the list exists before the values are read
        live.sort(key=lambda entry: (entry[2], entry[0], entry[1]))
        return [(task_id, priority, seq) for seq, task_id, priority in live]

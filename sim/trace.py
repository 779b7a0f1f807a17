"""The event trace of one run: a running hash of every event, and the events themselves.

The hash is what determinism is tested on: the same seed must give the same hash in any process,
under any PYTHONHASHSEED. So every field put in it is an int or a str (never a float's repr of a
computed value, never a set's iteration order). Simulated time goes in as integer microseconds.

Only a ring of the most recent events is kept in memory (they are what a violation report shows);
``keep_all`` keeps every one, for ``--trace``.
"""

from __future__ import annotations

import hashlib
from collections import deque

# Events kept for a violation report when the full trace is off.
RING_EVENTS = 600


class Trace:
    __slots__ = ("_all", "_hash", "_pending", "_ring", "count")

    def __init__(self, keep_all: bool = False) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self._ring: deque[str] = deque(maxlen=RING_EVENTS)
        self._all: list[str] | None = [] if keep_all else None
        # Lines not yet hashed: hashing in chunks costs one update per 256 events, not per event.
        self._pending: list[str] = []
        self.count = 0

    def emit(self, now_s: float, kind: str, *fields: object) -> None:
        line = f"{round(now_s * 1_000_000)} {kind} {' '.join(map(str, fields))}"
        self.count += 1
        self._ring.append(line)
        self._pending.append(line)
        if len(self._pending) >= 256:
            self._flush()
        if self._all is not None:
            self._all.append(line)

    def _flush(self) -> None:
        if self._pending:
            self._pending.append("")
            self._hash.update("\n".join(self._pending).encode())
            self._pending.clear()

    def hexdigest(self) -> str:
        self._flush()
        return self._hash.hexdigest()

    def recent(self, count: int | None = None) -> list[str]:
        lines = list(self._ring)
        return lines if count is None else lines[-count:]

    def lines(self) -> list[str]:
        return list(self._all) if self._all is not None else list(self._ring)


def format_line(line: str) -> str:
    """'1234567 kind a b' -> '   1.234567 kind a b' (seconds, for people)."""
    stamp, _, rest = line.partition(" ")
    return f"{int(stamp) / 1_000_000:11.6f} {rest}"

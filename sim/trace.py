"""The event trace of one run: a running hash of every event, and the events themselves.

The hash is what determinism is tested on: the same seed must give the same hash in any process,
under any PYTHONHASHSEED. So every field put in it is an int, a bool or a str (never a set's
iteration order, never an object's default repr); simulated time goes in as integer
microseconds. Events are kept as tuples and hashed in chunks through ``repr``, which for these
types is deterministic and cheap; they are formatted for people only when shown.

Only a ring of the most recent events is kept in memory (they are what a violation report shows);
``keep_all`` keeps every one, for ``--trace``.
"""

from __future__ import annotations

import hashlib
from collections import deque

# Events kept for a violation report when the full trace is off.
RING_EVENTS = 600
# Events hashed per update: one hash update per chunk, not per event.
CHUNK_EVENTS = 512

Entry = tuple[object, ...]


class Trace:
    __slots__ = ("_all", "_hash", "_pending", "_ring", "count")

    def __init__(self, keep_all: bool = False) -> None:
        self._hash = hashlib.blake2b(digest_size=16)
        self._ring: deque[Entry] = deque(maxlen=RING_EVENTS)
        self._all: list[Entry] | None = [] if keep_all else None
        self._pending: list[Entry] = []
        self.count = 0

    def emit(self, now_s: float, kind: str, *fields: object) -> None:
        entry = (round(now_s * 1_000_000), kind, *fields)
        self.count += 1
        pending = self._pending
        pending.append(entry)
        if len(pending) >= CHUNK_EVENTS:
            self._flush()
        if self._all is not None:
            self._all.append(entry)

    def _flush(self) -> None:
        if self._pending:
            self._hash.update("\n".join(map(repr, self._pending)).encode())
            self._hash.update(b"\n")
            self._ring.extend(self._pending)  # the ring gets its events a chunk at a time
            self._pending.clear()

    def hexdigest(self) -> str:
        self._flush()
        return self._hash.hexdigest()

    def recent(self, count: int | None = None) -> list[str]:
        entries = [*self._ring, *self._pending][-RING_EVENTS:]
        return [_line(e) for e in (entries if count is None else entries[-count:])]

    def lines(self) -> list[str]:
        if self._all is not None:
            entries = self._all
        else:
            entries = [*self._ring, *self._pending][-RING_EVENTS:]
        return [_line(e) for e in entries]


def _line(entry: Entry) -> str:
    return " ".join(map(str, entry))


def format_line(line: str) -> str:
    """'1234567 kind a b' -> '   1.234567 kind a b' (seconds, for people)."""
    stamp, _, rest = line.partition(" ")
    return f"{int(stamp) / 1_000_000:11.6f} {rest}"

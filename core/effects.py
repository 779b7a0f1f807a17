"""Outputs of the scheduler state machine: store operations to carry out, and timers.

Every store operation that the leader asks for carries its ``term``; the store refuses it when a
newer epoch is stored (fencing), checks its precondition (compare-and-set on the task's status,
attempt and deadline) before writing anything, and answers with the task's state afterwards,
which the driver feeds back as :class:`core.events.TasksChanged`.
"""

from __future__ import annotations

from core.task import Status
from core.values import value


@value
class RaiseEpoch:
    """Store the fencing epoch ``term`` unless a newer one is stored; answer EpochRaised."""

    term: int
    holder: str = ""  # the elected node: a second leader of the same term is refused


@value
class Rebuild:
    """Read every live task (pending, queued, running, failed) and feed them back, then Rebuilt."""

    term: int


@value
class Lease:
    """queued -> running on ``node_id`` until ``deadline_ms``; the store bumps the attempt and
    queues the assignment for the node in the same atomic step (durable before it is told)."""

    term: int
    task_id: str
    node_id: str
    deadline_ms: int
    now_ms: int


@value
class Expire:
    """running (this attempt, deadline passed) -> ``target`` (queued, or dead past the limit)."""

    term: int
    task_id: str
    attempt: int
    now_ms: int
    target: Status


@value
class Promote:
    """pending/failed -> queued if run_at has come and every dependency succeeded; -> dead if a
    dependency is dead or cancelled; otherwise unchanged. The store decides from its own state."""

    term: int
    task_id: str
    now_ms: int


@value
class SetTimer:
    """Tick me no later than ``at_ms``."""

    at_ms: int


StoreOp = RaiseEpoch | Rebuild | Lease | Expire | Promote
Effect = StoreOp | SetTimer

"""Inputs to the scheduler state machine. Every input carries ``now_ms``: core reads no clock.

The task lifecycle events of the design (submitted, leased, heartbeat, succeeded, failed, lease
expired, cancelled) all reach the scheduler as :class:`TasksChanged`: the store's state of each
task after the change, read atomically by the script that made it or by the inbox drain. The
status inside says which event it was (queued or pending = submitted or requeued, running =
leased or heartbeat, succeeded, failed, dead, cancelled). Reconciling from state rather than
trusting an event stream is what makes a lost or repeated notification harmless.
"""

from __future__ import annotations

from core.task import TaskState
from core.values import value


@value
class Elected:
    """Raft made this node leader in ``term``."""

    term: int
    now_ms: int


@value
class Deposed:
    """Raft says this node no longer leads (another leader, or no quorum)."""

    now_ms: int


@value
class EpochRaised:
    """Answer to :class:`core.effects.RaiseEpoch`: ``ok`` is False if a newer epoch is stored."""

    term: int
    ok: bool
    now_ms: int


@value
class Fenced:
    """A store write of ``term`` was refused: a newer leader exists. Step down at once."""

    term: int
    now_ms: int


@value
class StoreLost:
    """A store request got no answer (timeout, reset, restart): it may or may not have been
    applied, and drained notifications may be gone. The cache can no longer be trusted:
    fence again and rebuild from the store, still in this term."""

    now_ms: int


@value
class Rebuilt:
    """The driver finished feeding every live task of the store for ``term`` (see Rebuild)."""

    term: int
    now_ms: int


@value
class TasksChanged:
    """Observed store state of tasks, in the order the store applied the changes."""

    states: tuple[TaskState, ...]
    now_ms: int


@value
class NodeSeen:
    """A node's heartbeat in the registry: how many worker slots it has and what it runs."""

    node_id: str
    slots: int
    types: frozenset[str] | None
    now_ms: int


@value
class NodeLeft:
    """A node said goodbye (graceful shutdown): assign it nothing more."""

    node_id: str
    now_ms: int


@value
class OwnEnded:
    """The handlers of these attempts (task id, attempt) ended on the leader's own node, and
    their finishes go to the store ahead of the leader's next writes, in the same round trip:
    their slots are free now. The tasks' new states follow with the drain (or whatever the store
    holds instead, if a finish is refused: a lease still counted here is reconciled then)."""

    ends: tuple[tuple[str, int], ...]
    now_ms: int


@value
class Tick:
    """Time passed: fire due timers (delays, backoffs, lease deadlines, node timeouts)."""

    now_ms: int


Event = (
    Elected
    | Deposed
    | EpochRaised
    | Fenced
    | StoreLost
    | Rebuilt
    | TasksChanged
    | NodeSeen
    | NodeLeft
    | OwnEnded
    | Tick
)

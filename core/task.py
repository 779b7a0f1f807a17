"""The task model: statuses, retry policy, and the compact view of a task that the scheduler keeps.

Status flow::

    pending --(run_at reached and every dependency succeeded)--> queued
    queued  --(leased to a node's worker, attempt+1)-----------> running
    running --(handler returned)------------------------------> succeeded
    running --(handler raised or timed out, retries left)-----> failed  (retry at run_at)
    running --(handler raised or timed out, none left)--------> dead
    running --(lease expired: worker or node lost)------------> queued  (or dead past a limit)
    failed  --(run_at reached)--------------------------------> queued
    pending --(a dependency ended dead or cancelled)----------> dead
    any non-terminal --(cancel)-------------------------------> cancelled
    dead | cancelled --(retry by hand)------------------------> queued / pending

``failed`` is not terminal: it is a failed attempt waiting for its backoff. ``succeeded``, ``dead``
and ``cancelled`` are terminal.
"""

from __future__ import annotations

import random
from dataclasses import field
from enum import StrEnum

from core.priority import Priority
from core.values import value


class Status(StrEnum):
    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCEEDED = "succeeded"
    FAILED = "failed"
    DEAD = "dead"
    CANCELLED = "cancelled"

    @property
    def terminal(self) -> bool:
        return self in TERMINAL


TERMINAL = frozenset({Status.SUCCEEDED, Status.DEAD, Status.CANCELLED})
# Statuses a new leader must know about: everything that can still change without a client.
LIVE = frozenset({Status.PENDING, Status.QUEUED, Status.RUNNING, Status.FAILED})


class ErrorKind(StrEnum):
    """Why an attempt (or a task) ended badly. Timeout is its own kind, distinct from cancel."""

    ERROR = "error"  # the handler raised
    TIMEOUT = "timeout"  # the handler ran past the task's timeout
    LEASE_EXPIRED = "lease_expired"  # the worker or its node stopped heartbeating
    DEPENDENCY = "dependency"  # a dependency ended dead or cancelled
    UNKNOWN_TYPE = "unknown_type"  # no worker registered the task type
    REJECTED = "rejected"  # the handler refused the task: running it again cannot help


@value
class RetryPolicy:
    max_retries: int = 3
    backoff_base_ms: int = 1000
    backoff_cap_ms: int = 60_000

    def __post_init__(self) -> None:
        if self.max_retries < 0:
            raise ValueError("max_retries must be >= 0")
        if self.backoff_base_ms < 0 or self.backoff_cap_ms < self.backoff_base_ms:
            raise ValueError("need 0 <= backoff_base_ms <= backoff_cap_ms")

    def backoff_ms(self, failures: int, rng: random.Random) -> int:
        """Delay before retry number ``failures`` (1-based): exponential, capped, equal jitter.

        Equal jitter keeps at least half the exponential delay (so a failing dependency gets real
        breathing room) while spreading a burst of simultaneous failures over the other half.
        """
        if failures < 1:
            raise ValueError("failures counts from 1")
        # Cap the exponent before shifting: 2**1000 would be a pointless bignum.
        exp_ms = min(self.backoff_cap_ms, self.backoff_base_ms << min(failures - 1, 62))
        half = exp_ms // 2
        return half + rng.randint(0, exp_ms - half)


@value
class TaskState:
    """What the scheduler needs to know of one task: the store's truth at one version.

    The store returns one of these after every operation and for every inbox event, so the
    scheduler's view is a cache that is reconciled from observations, never the authority.
    """

    id: str
    type: str
    priority: Priority
    seq: int
    status: Status
    attempt: int = 0
    run_at_ms: int = 0
    depends_on: tuple[str, ...] = ()
    lease_node: str = ""
    lease_deadline_ms: int = 0
    failures: int = 0
    lease_expiries: int = 0
    version: int = 0


@value
class Outcome:
    """How one attempt of a handler ended, as the worker saw it."""

    ok: bool
    result: object = None
    kind: ErrorKind | None = None
    error_type: str = ""
    message: str = ""
    traceback: str = ""

    @staticmethod
    def success(result: object = None) -> Outcome:
        return Outcome(ok=True, result=result)

    @staticmethod
    def error(error_type: str, message: str, traceback: str = "") -> Outcome:
        return Outcome(False, None, ErrorKind.ERROR, error_type, message, traceback)

    @staticmethod
    def rejected(error_type: str, message: str, traceback: str = "") -> Outcome:
        """The handler said no retry can succeed (a payload it cannot use): the task ends dead
        now, whatever retries its policy has left."""
        return Outcome(False, None, ErrorKind.REJECTED, error_type, message, traceback)

    @staticmethod
    def timeout(timeout_ms: int) -> Outcome:
        return Outcome(False, None, ErrorKind.TIMEOUT, "Timeout", f"ran past {timeout_ms} ms")

    def error_dict(self) -> dict[str, str]:
        kind = self.kind.value if self.kind else ""
        return {
            "kind": kind,
            "type": self.error_type,
            "message": self.message,
            "traceback": self.traceback,
        }


@value
class AttemptEnd:
    """The transition a worker writes when an attempt ends (attempt-fenced in the store)."""

    status: Status
    failures: int
    run_at_ms: int = 0
    result: object = None
    error: dict[str, str] = field(default_factory=dict)


def end_attempt(
    policy: RetryPolicy, failures_before: int, outcome: Outcome, now_ms: int, rng: random.Random
) -> AttemptEnd:
    """Apply the retry policy to one finished attempt. Pure: time and randomness are arguments."""
    if outcome.ok:
        return AttemptEnd(Status.SUCCEEDED, failures_before, 0, outcome.result)
    failures = failures_before + 1
    if failures > policy.max_retries or outcome.kind is ErrorKind.REJECTED:
        return AttemptEnd(Status.DEAD, failures, 0, None, outcome.error_dict())
    delay_ms = policy.backoff_ms(failures, rng)
    return AttemptEnd(Status.FAILED, failures, now_ms + delay_ms, None, outcome.error_dict())


def lease_expiry_target(lease_expiries_before: int, lease_expiries_max: int) -> Status:
    """A lost lease requeues at once (the handler did not fail: its worker vanished), up to a
    limit past which the task is dead, so a task that crashes workers cannot do it forever."""
    return Status.QUEUED if lease_expiries_before + 1 <= lease_expiries_max else Status.DEAD

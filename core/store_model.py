"""The reference semantics of dsched's store: every operation the Redis Lua scripts implement.

This is a plain in-memory model, no I/O. The simulation runs it as its store; a conformance test
runs identical operation sequences against it and against the real scripts on a real Redis and
demands identical answers, so the two cannot drift apart. Each method is one atomic step, as each
Lua script is: every check comes before any write (a Lua error does not roll back).

Fencing: a leader's operation carries its Raft term and is refused (``FENCED``) when the stored
epoch is newer. A worker's operation carries the lease's attempt number and node, and is refused
when the task is no longer that attempt's. Clients' operations (submit, cancel, retry) are not
fenced: any node takes them.
"""

from __future__ import annotations

import functools
import hashlib
import json
import operator
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Final

from core.effects import Expire, Lease, Promote
from core.priority import Priority
from core.task import AttemptEnd, ErrorKind, RetryPolicy, Status, TaskState
from core.values import value
from core.worker import Assignment

FENCED: Final = "fenced"


class StoreUnavailable(Exception):
    """The store did not answer (down, partitioned, timed out): the request may or may not have
    been applied. Drivers raise it; core reacts by rebuilding from the store."""


class SubmitError(ValueError):
    """A submission refused as a whole; ``field`` names the offending input (None: the
    submission as a whole), ``index`` the offending task of the batch."""

    def __init__(self, field_name: str | None, message: str, index: int | None = None) -> None:
        super().__init__(message)
        self.field = field_name
        self.index = index


class IdempotencyConflict(SubmitError):
    """An idempotency key already stands for a task of another definition (HTTP 409): a key may
    only be resent with the same task, or a client's bug would pass for a resend."""

    def __init__(self, key: str, task_id: str, index: int) -> None:
        super().__init__(
            "idempotency_key",
            f"idempotency key {key!r} already stands for task {task_id!r}, of another "
            "definition (type, payload, priority, retries, timeout, backoff or depends_on); "
            "resend a key only with the same task",
            index,
        )
        self.key = key
        self.task_id = task_id


class QueueFull(SubmitError):
    """The live backlog (queued + pending tasks) would pass the limit (HTTP 503: try later)."""

    def __init__(self, backlog: int, created: int, limit: int) -> None:
        super().__init__(
            None,
            f"the queue is full: {backlog} tasks are queued or pending and {created} more would "
            f"pass the limit of {limit}; try again later",
        )
        self.backlog = backlog
        self.created = created
        self.limit = limit


def _canonical_value(text: str) -> object:
    return json.loads(text)


def definition_fingerprint(
    type_name: str,
    payload_json: str,
    priority: int,
    max_retries: int,
    backoff_base_ms: int,
    backoff_cap_ms: int,
    timeout_ms: int,
    depends_on: Sequence[str],
) -> str:
    """What an idempotency key's resend must match, as a short digest: the task's definition
    with the payload as a JSON value (key order and spacing do not count; 1 and 1.0 do), and
    without the start time (a resend computes a new run_at). The Redis store keeps it in the
    hash of a task with a key and compares digests; :func:`same_definition` is the same test
    on the values."""
    canonical = json.dumps(
        [
            type_name,
            _canonical_value(payload_json),
            int(priority),
            max_retries,
            backoff_base_ms,
            backoff_cap_ms,
            timeout_ms,
            list(depends_on),
        ],
        sort_keys=True,
        separators=(",", ":"),
        ensure_ascii=False,
    )
    return hashlib.blake2b(canonical.encode("utf-8"), digest_size=16).hexdigest()


def _same_payload(a: str, b: str) -> bool:
    if a == b:
        return True
    dump = functools.partial(json.dumps, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return bool(dump(_canonical_value(a)) == dump(_canonical_value(b)))


def same_definition(new: NewTask, earlier: NewTask | TaskRecord) -> bool:
    """Whether ``new`` may reuse the idempotency key of ``earlier`` (definition_fingerprint's
    test, field by field)."""
    return (
        new.type == earlier.type
        and int(new.priority) == int(earlier.priority)
        and new.max_retries == earlier.max_retries
        and new.backoff_base_ms == earlier.backoff_base_ms
        and new.backoff_cap_ms == earlier.backoff_cap_ms
        and new.timeout_ms == earlier.timeout_ms
        and tuple(new.depends_on) == tuple(earlier.depends_on)
        and _same_payload(new.payload_json, earlier.payload_json)
    )


@value
class NewTask:
    """A validated submission (the API layer checked types and limits)."""

    id: str
    type: str
    payload_json: str = "null"
    priority: Priority = Priority.MEDIUM
    max_retries: int = 3
    backoff_base_ms: int = 1000
    backoff_cap_ms: int = 60_000
    timeout_ms: int = 300_000
    run_at_ms: int = 0
    depends_on: tuple[str, ...] = ()
    idempotency_key: str = ""

    def created(self, seq: int, status: Status, now_ms: int) -> TaskRecord:
        """The record a store makes of it, with the seq and status the store gave it."""
        return TaskRecord(
            id=self.id,
            type=self.type,
            payload_json=self.payload_json,
            priority=Priority(self.priority),
            seq=seq,
            status=status,
            max_retries=self.max_retries,
            backoff_base_ms=self.backoff_base_ms,
            backoff_cap_ms=self.backoff_cap_ms,
            timeout_ms=self.timeout_ms,
            run_at_ms=self.run_at_ms,
            depends_on=tuple(self.depends_on),
            idempotency_key=self.idempotency_key,
            created_ms=now_ms,
            updated_ms=now_ms,
        )


@dataclass(slots=True)
class TaskRecord:
    """Everything the store keeps of a task (a Redis hash in production)."""

    id: str
    type: str
    payload_json: str
    priority: Priority
    seq: int
    status: Status
    max_retries: int
    backoff_base_ms: int
    backoff_cap_ms: int
    timeout_ms: int
    run_at_ms: int
    depends_on: tuple[str, ...]
    idempotency_key: str
    created_ms: int
    updated_ms: int
    attempt: int = 0
    failures: int = 0
    lease_expiries: int = 0
    started_ms: int = 0
    finished_ms: int = 0
    lease_node: str = ""
    lease_deadline_ms: int = 0
    result_json: str = ""
    error: dict[str, str] = field(default_factory=dict)
    version: int = 1

    def state(self) -> TaskState:
        return TaskState(
            id=self.id,
            type=self.type,
            priority=self.priority,
            seq=self.seq,
            status=self.status,
            attempt=self.attempt,
            run_at_ms=self.run_at_ms,
            depends_on=self.depends_on,
            lease_node=self.lease_node,
            lease_deadline_ms=self.lease_deadline_ms,
            failures=self.failures,
            lease_expiries=self.lease_expiries,
            version=self.version,
        )

    def touch(self, now_ms: int) -> None:
        self.updated_ms = now_ms
        self.version += 1

    def end(self, status: Status, now_ms: int) -> None:
        self.status = status
        self.lease_node = ""
        self.lease_deadline_ms = 0
        if status.terminal:
            self.finished_ms = now_ms
        self.touch(now_ms)


# Every field of a record, in __init__ order: _copy_record() is replace(record) without
# dataclasses.replace's per-field Python loop (a copy per lease taken).
_RECORD_FIELDS = operator.attrgetter(*(f.name for f in fields(TaskRecord)))


def _copy_record(record: TaskRecord) -> TaskRecord:
    """A shallow copy, as ``dataclasses.replace(record)`` makes."""
    return TaskRecord(*_RECORD_FIELDS(record))


@value
class Taken:
    """An assignment a node's slot took: the task as the store has it for this attempt."""

    record: TaskRecord
    attempt: int

    def assignment(self) -> Assignment:
        """What the worker pool needs to run it (both drivers build it here)."""
        r = self.record
        return Assignment(
            task_id=r.id,
            attempt=self.attempt,
            type=r.type,
            timeout_ms=r.timeout_ms,
            policy=RetryPolicy(r.max_retries, r.backoff_base_ms, r.backoff_cap_ms),
            failures=r.failures,
            lease_deadline_ms=r.lease_deadline_ms,
        )


class StoreModel:
    def __init__(self, retention_ms: int = 7 * 24 * 3600 * 1000) -> None:
        self.retention_ms = retention_ms
        self.tasks: dict[str, TaskRecord] = {}
        self.idempotency: dict[str, str] = {}
        self.seq = 0
        self.epoch = 0
        self.epoch_holder = ""
        self.inbox: deque[str] = deque()
        self.assignments: dict[str, deque[tuple[str, int]]] = {}

    # ------------------------------------------------------------------ clients (any node)
    def submit(
        self, batch: list[NewTask], now_ms: int, queued_tasks_max: int | None = None
    ) -> list[tuple[TaskRecord, bool]]:
        """Create every task of ``batch`` or none. Returns (record, created) per input, in order;
        created is False where an idempotency key matched an earlier task of the same definition
        (:func:`same_definition`); another definition refuses the batch (IdempotencyConflict).
        With ``queued_tasks_max``, a batch that would take the queued + pending tasks past it is
        refused (QueueFull), after the checks of its items."""
        batch_ids: set[str] = set()
        batch_keys: dict[str, int] = {}
        created = 0
        for i, new in enumerate(batch):
            key = new.idempotency_key
            if key and (key in self.idempotency or key in batch_keys):
                earlier: NewTask | TaskRecord
                if key in batch_keys:
                    earlier = batch[batch_keys[key]]
                else:
                    earlier = self.tasks[self.idempotency[key]]
                if not same_definition(new, earlier):
                    raise IdempotencyConflict(key, earlier.id, i)
                continue
            if new.id in self.tasks or new.id in batch_ids:
                raise SubmitError("id", f"task id {new.id!r} already exists", i)
            for dep in new.depends_on:
                if dep not in self.tasks and dep not in batch_ids:
                    raise SubmitError("depends_on", f"dependency {dep!r} does not exist", i)
            batch_ids.add(new.id)
            created += 1
            if key:
                batch_keys[key] = i
        if queued_tasks_max is not None and created:
            backlog = sum(
                1 for r in self.tasks.values() if r.status in (Status.QUEUED, Status.PENDING)
            )
            if backlog + created > queued_tasks_max:
                raise QueueFull(backlog, created, queued_tasks_max)
        out: list[tuple[TaskRecord, bool]] = []
        for new in batch:
            key = new.idempotency_key
            if key and key in self.idempotency:
                out.append((self.tasks[self.idempotency[key]], False))
                continue
            self.seq += 1
            ready = new.run_at_ms <= now_ms and all(
                dep in self.tasks and self.tasks[dep].status is Status.SUCCEEDED
                for dep in new.depends_on
            )
            record = new.created(self.seq, Status.QUEUED if ready else Status.PENDING, now_ms)
            self.tasks[new.id] = record
            if key:
                self.idempotency[key] = new.id
            self.inbox.append(new.id)
            out.append((record, True))
        return out

    def cancel(self, task_id: str, now_ms: int) -> TaskRecord | None:
        """Any non-terminal task -> cancelled. None if unknown; unchanged if already terminal."""
        record = self.tasks.get(task_id)
        if record is None or record.status.terminal:
            return record
        record.error = {"kind": "cancelled", "type": "Cancelled", "message": "cancelled"}
        record.end(Status.CANCELLED, now_ms)
        self.inbox.append(task_id)
        return record

    def retry(self, task_id: str, now_ms: int) -> TaskRecord | None:
        """dead or cancelled -> queued (pending if it still waits on dependencies), with its
        failure counts reset. None if unknown; unchanged if not dead or cancelled."""
        record = self.tasks.get(task_id)
        if record is None or record.status not in (Status.DEAD, Status.CANCELLED):
            return record
        ready = all(
            dep in self.tasks and self.tasks[dep].status is Status.SUCCEEDED
            for dep in record.depends_on
        )
        record.status = Status.QUEUED if ready else Status.PENDING
        record.run_at_ms = 0
        record.failures = 0
        record.lease_expiries = 0
        record.finished_ms = 0
        record.error = {}
        record.touch(now_ms)
        self.inbox.append(task_id)
        return record

    # ------------------------------------------------------------------ leader (term-fenced)
    def raise_epoch(self, term: int, holder: str = "") -> bool:
        """Store ``term`` as the fencing epoch unless a newer one is stored, or the same term is
        held by another leader. Raft state is in memory, so a member restarted fast enough can
        vote twice in one term and two leaders can share it: the first to raise the epoch in
        that term keeps it, the other is refused and steps down."""
        if term < self.epoch:
            return False
        if term == self.epoch and self.epoch_holder and holder and holder != self.epoch_holder:
            return False
        self.epoch = term
        self.epoch_holder = holder
        return True

    def _fenced(self, term: int) -> bool:
        return term < self.epoch

    def drain(self, term: int, count_max: int) -> list[TaskState] | str:
        """Pop up to ``count_max`` inbox notifications; answer each task's current state once."""
        if self._fenced(term):
            return FENCED
        seen: set[str] = set()
        out: list[TaskState] = []
        for _ in range(min(count_max, len(self.inbox))):
            task_id = self.inbox.popleft()
            record = self.tasks.get(task_id)
            if record is not None and task_id not in seen:
                seen.add(task_id)
                out.append(record.state())
        return out

    def live_states(self, after_seq: int = 0, count_max: int | None = None) -> list[TaskState]:
        """Tasks that can still change without a client, with seq > after_seq, in seq order, at
        most count_max of them: a new leader's rebuild reads them chunk by chunk."""
        live = sorted(
            (r for r in self.tasks.values() if not r.status.terminal and r.seq > after_seq),
            key=lambda r: r.seq,
        )
        if count_max is not None:
            live = live[:count_max]
        return [r.state() for r in live]

    def lease(
        self,
        term: int,
        task_id: str,
        node_id: str,
        deadline_ms: int,
        now_ms: int,
        direct: bool = False,
    ) -> TaskState | str | None:
        """queued -> running, leased to ``node_id``; the assignment goes on the node's list for
        its take, or, ``direct``, to the caller itself (the leader leasing to its own node's
        slots), which :meth:`apply` hands back as a Taken."""
        if self._fenced(term):
            return FENCED
        record = self.tasks.get(task_id)
        if record is None:
            return None
        if record.status is Status.QUEUED:
            record.status = Status.RUNNING
            record.attempt += 1
            record.lease_node = node_id
            record.lease_deadline_ms = deadline_ms
            record.started_ms = now_ms
            record.touch(now_ms)
            if not direct:
                self.assignments.setdefault(node_id, deque()).append((task_id, record.attempt))
        return record.state()

    def apply(
        self, ops: Sequence[Lease | Expire | Promote], direct_node: str = ""
    ) -> tuple[list[TaskState | str | None], list[Taken]]:
        """The leader's batch in order: each op's answer, and a Taken for each lease to
        ``direct_node`` that took effect (its assignment skips the node's list: the caller
        starts it). A bad Expire target raises after the ops before it, as expire() does."""
        answers: list[TaskState | str | None] = []
        taken: list[Taken] = []
        for op in ops:
            if isinstance(op, Lease):
                record = self.tasks.get(op.task_id)
                was_queued = record is not None and record.status is Status.QUEUED
                direct = bool(direct_node) and op.node_id == direct_node
                answer = self.lease(
                    op.term, op.task_id, op.node_id, op.deadline_ms, op.now_ms, direct
                )
                answers.append(answer)
                if direct and was_queued and record is not None and isinstance(answer, TaskState):
                    taken.append(Taken(_copy_record(record), record.attempt))
            elif isinstance(op, Expire):
                answers.append(self.expire(op.term, op.task_id, op.attempt, op.now_ms, op.target))
            else:
                answers.append(self.promote(op.term, op.task_id, op.now_ms))
        return answers, taken

    def expire(
        self, term: int, task_id: str, attempt: int, now_ms: int, target: Status
    ) -> TaskState | str | None:
        if self._fenced(term):
            return FENCED
        if target not in (Status.QUEUED, Status.DEAD):
            raise ValueError("an expired lease goes back to queued or to dead")
        record = self.tasks.get(task_id)
        if record is None:
            return None
        if (
            record.status is Status.RUNNING
            and record.attempt == attempt
            and record.lease_deadline_ms <= now_ms
        ):
            record.lease_expiries += 1
            if target is Status.DEAD:
                record.error = {
                    "kind": ErrorKind.LEASE_EXPIRED.value,
                    "type": "LeaseExpired",
                    "message": f"lease lost {record.lease_expiries} times (worker or node lost)",
                }
            record.end(target, now_ms)
        return record.state()

    def promote(self, term: int, task_id: str, now_ms: int) -> TaskState | str | None:
        if self._fenced(term):
            return FENCED
        record = self.tasks.get(task_id)
        if record is None:
            return None
        if record.status not in (Status.PENDING, Status.FAILED):
            return record.state()
        blocked = False
        for dep in record.depends_on:
            dep_record = self.tasks.get(dep)
            if dep_record is None or dep_record.status in (Status.DEAD, Status.CANCELLED):
                why = "no longer exists" if dep_record is None else f"is {dep_record.status.value}"
                record.error = {
                    "kind": ErrorKind.DEPENDENCY.value,
                    "type": "DependencyFailed",
                    "message": f"dependency {dep} {why}",
                }
                record.end(Status.DEAD, now_ms)
                return record.state()
            if dep_record.status is not Status.SUCCEEDED:
                blocked = True
        if not blocked and record.run_at_ms <= now_ms:
            record.status = Status.QUEUED
            record.touch(now_ms)
        return record.state()

    # ------------------------------------------------------------------ workers (attempt-fenced)
    def take(self, node_id: str) -> Taken | None:
        """Pop this node's next assignment that is still current; stale ones are dropped."""
        queue = self.assignments.get(node_id)
        while queue:
            task_id, attempt = queue.popleft()
            record = self.tasks.get(task_id)
            if (
                record is not None
                and record.status is Status.RUNNING
                and record.attempt == attempt
                and record.lease_node == node_id
            ):
                return Taken(_copy_record(record), attempt)
        return None

    def take_many(self, node_id: str, count_max: int) -> list[Taken]:
        """Up to ``count_max`` of this node's next current assignments, in order: what that
        many takes in a row would answer, as one atomic step (one round trip for a node
        whose slots came free together)."""
        if count_max < 1:
            raise ValueError("count_max must be >= 1")
        out: list[Taken] = []
        while len(out) < count_max:
            taken = self.take(node_id)
            if taken is None:
                break
            out.append(taken)
        return out

    def _holds(self, record: TaskRecord | None, attempt: int, node_id: str) -> bool:
        return (
            record is not None
            and record.status is Status.RUNNING
            and record.attempt == attempt
            and record.lease_node == node_id
        )

    def heartbeat(
        self, task_id: str, attempt: int, node_id: str, deadline_ms: int, now_ms: int
    ) -> tuple[bool, Status | None]:
        """Extend this attempt's lease. Answers (held, current status)."""
        record = self.tasks.get(task_id)
        if record is None or not self._holds(record, attempt, node_id):
            return False, record.status if record else None
        if deadline_ms > record.lease_deadline_ms:
            record.lease_deadline_ms = deadline_ms
            record.touch(now_ms)
        return True, record.status

    def finish(
        self, task_id: str, attempt: int, node_id: str, end: AttemptEnd, now_ms: int
    ) -> bool:
        record = self.tasks.get(task_id)
        if record is None or not self._holds(record, attempt, node_id):
            return False
        if end.status not in (Status.SUCCEEDED, Status.FAILED, Status.DEAD):
            raise ValueError(f"an attempt cannot end as {end.status}")
        record.failures = end.failures
        record.run_at_ms = end.run_at_ms if end.status is Status.FAILED else record.run_at_ms
        record.result_json = json.dumps(end.result) if end.status is Status.SUCCEEDED else ""
        record.error = dict(end.error)
        record.end(end.status, now_ms)
        self.inbox.append(task_id)
        return True

    def release(self, task_id: str, attempt: int, node_id: str, now_ms: int) -> bool:
        record = self.tasks.get(task_id)
        if record is None or not self._holds(record, attempt, node_id):
            return False
        record.end(Status.QUEUED, now_ms)
        self.inbox.append(task_id)
        return True

    # ------------------------------------------------------------------ housekeeping
    def sweep(self, now_ms: int) -> int:
        """Forget terminal tasks past the retention, except those a live task depends on: a
        dependency swept from under a waiting task would turn it dead. Answers how many went."""
        needed = {dep for r in self.tasks.values() if not r.status.terminal for dep in r.depends_on}
        gone = [
            r.id
            for r in self.tasks.values()
            if r.status.terminal
            and r.finished_ms + self.retention_ms <= now_ms
            and r.id not in needed
        ]
        for task_id in gone:
            record = self.tasks.pop(task_id)
            if record.idempotency_key:
                self.idempotency.pop(record.idempotency_key, None)
        return len(gone)

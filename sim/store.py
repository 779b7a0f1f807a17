"""The simulated store: core's StoreModel (the reference semantics of the Redis scripts) served
over the simulated network, plus what Redis adds around the scripts.

* Availability: a store restart drops every connection (callers see an error at once) and
  refuses requests until it is back.
* Durability: with fsync ``always`` a restart loses nothing; with ``everysec`` it comes back as
  of its last fsync point (one per simulated second), so the writes of the last second are gone.
  The snapshot is taken only at the fsync point before a scheduled restart: the fault plan is
  known when the run starts, and copying the whole store every second would dominate a run.
* Blocking take (BLPOP on a node's assignment list): a take with nothing to pop waits at the store
  until a lease queues one for that node or the wait runs out.
* The bell (pub/sub): an inbox write rings the nodes that drained the inbox since their last ring.
  Fire-and-forget, like Redis pub/sub; the leader loop polls anyway.
* The node registry (a hash of node -> info), which StoreModel does not model.

Every write the store applies is reported to the checker, which keeps its own books. The unsafe
switch ``no_fencing`` replaces the epoch check with one that always passes: the mutation the
checker must catch.
"""

from __future__ import annotations

import operator
from collections import deque
from collections.abc import Callable, Generator
from dataclasses import dataclass, fields, replace
from typing import Any

import simpy

from core.driver import (
    ApplyRequest,
    DrainRequest,
    FinishRequest,
    HeartbeatRequest,
    LiveStatesRequest,
    RaiseEpochRequest,
    ReleaseRequest,
)
from core.effects import Expire, Lease
from core.store_model import FENCED, NewTask, StoreModel, SubmitError, Taken, TaskRecord
from core.task import Status, TaskState
from core.worker import Finish
from sim.checker import Checker
from sim.net import STORE, UNAVAILABLE
from sim.trace import Trace

Answer = Callable[[Any], None]
# Every field of a record, in __init__ order: _copy_record(r) is replace(r) without its
# per-field Python loop (one copy per direct lease).
_RECORD_FIELDS = operator.attrgetter(*(f.name for f in fields(TaskRecord)))


def _copy_record(record: TaskRecord) -> TaskRecord:
    return TaskRecord(*_RECORD_FIELDS(record))


# How often blocked takes are checked for an expired wait.
PARK_SWEEP_S = 0.25


# ---- requests that the sim's node driver sends besides core.driver's -------------------------
@dataclass(frozen=True, slots=True)
class SubmitRequest:
    """A group-committed batch of client submissions. Answer: list of task ids, or
    SubmitRefused(index) when the batch was refused as a whole (nothing written)."""

    batch: tuple[NewTask, ...]
    now_ms: int


@dataclass(frozen=True, slots=True)
class SubmitRefused:
    index: int
    message: str


@dataclass(frozen=True, slots=True)
class FinishDrainRequest:
    """RedisStore.finish_drain: the leader's own node's finishes, then its drain, in one round
    trip. Answer: ([written per finish], drain's answer)."""

    finishes: tuple[Finish, ...]
    drain: DrainRequest


@dataclass(frozen=True, slots=True)
class FinishApplyDrainRequest:
    """RedisStore.finish_apply_drain: the leader's own node's finishes, its ops, then its
    drain, in that order and one atomic step, as round.lua runs them. Answer: ([written per
    finish], (apply's answers, direct leases taken), drain's answer)."""

    finishes: tuple[Finish, ...]
    apply: ApplyRequest
    drain: DrainRequest


@dataclass(frozen=True, slots=True)
class TakeRequest:
    """Pop this node's next current assignment, waiting up to wait_s. Answer: Taken | None."""

    node_id: str
    wait_s: float


@dataclass(frozen=True, slots=True)
class TakeManyRequest:
    """Pop up to count_max of this node's current assignments, without waiting (the runtime's
    take_many). Answer: list[Taken]."""

    node_id: str
    count_max: int


@dataclass(frozen=True, slots=True)
class RegistryRequest:
    """Write this node's registry entry; answer every entry (node id -> (slots, stamp))."""

    node_id: str
    slots: int
    stamp_ms: int


@dataclass(frozen=True, slots=True)
class SweepRequest:
    """Forget terminal tasks past the retention (RedisStore.sweep). Answer: how many went."""

    now_ms: int


@dataclass(frozen=True, slots=True)
class CancelRequest:
    """A client's cancel, as RedisStore.cancel: any non-terminal task -> cancelled, and the
    node running it is told (pub/sub). Answer: the task's status, or None if unknown."""

    task_id: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class RetryRequest:
    """A client's retry by hand, as RedisStore.retry: dead or cancelled -> queued (pending
    while it waits on dependencies). Answer: the task's status, or None if unknown."""

    task_id: str
    now_ms: int


@dataclass(frozen=True, slots=True)
class EpochRequest:
    """Read the stored fencing epoch (RedisStore.epoch). Answer: int."""


class UnfencedStoreModel(StoreModel):
    """UNSAFE, simulation only (--unsafe-no-fencing): the epoch check always passes."""

    def raise_epoch(self, term: int, holder: str = "") -> bool:
        if term >= self.epoch:
            self.epoch, self.epoch_holder = term, holder
        return True

    def _fenced(self, term: int) -> bool:
        return False


@dataclass(slots=True)
class _Parked:
    answer: Answer
    expires_at: float
    done: bool = False


def _snapshot(model: StoreModel) -> StoreModel:
    """A deep copy of the store's data (what an fsync point makes durable)."""
    copy = model.__class__(model.retention_ms)
    copy.tasks = {
        task_id: replace(record, error=dict(record.error))
        for task_id, record in model.tasks.items()
    }
    copy.idempotency = dict(model.idempotency)
    copy.seq = model.seq
    copy.epoch = model.epoch
    copy.inbox = deque(model.inbox)
    copy.assignments = {node: deque(q) for node, q in model.assignments.items()}
    return copy


class SimStore:
    def __init__(
        self,
        env: simpy.Environment,
        checker: Checker,
        trace: Trace,
        *,
        no_fencing: bool = False,
        retention_ms: int = 7 * 24 * 3600 * 1000,
    ) -> None:
        self.env = env
        self.checker = checker
        self.trace = trace
        model_class = UnfencedStoreModel if no_fencing else StoreModel
        self.model: StoreModel = model_class(retention_ms)
        self.up = True
        self.registry: dict[str, tuple[int, int]] = {}
        self._saved_registry: dict[str, tuple[int, int]] = {}
        self._parked: dict[str, deque[_Parked]] = {}
        self._bell_armed: dict[str, bool] = {}
        self._ring: Callable[[str], None] = lambda _node: None
        self._tell_cancel: Callable[[str, str, int], None] = lambda _node, _task, _attempt: None
        self._snapshot: StoreModel | None = None
        self.requests = 0
        self._restored = False
        env.process(self._expire_parked())

    def set_bell(self, ring: Callable[[str], None]) -> None:
        self._ring = ring

    def set_cancel_channel(self, tell: Callable[[str, str, int], None]) -> None:
        """tell(node, task_id, attempt): publish on the node's cancel channel (fire-and-forget)."""
        self._tell_cancel = tell

    # ------------------------------------------------------------------ availability
    def crash(self, lose_unsynced: bool) -> None:
        """The store process dies: connections reset, parked takes fail, and with everysec the
        state rolls back to the last fsync point."""
        self.up = False
        for node in sorted(self._parked):
            for parked in self._parked[node]:
                if not parked.done:
                    parked.done = True
                    parked.answer(UNAVAILABLE)
        self._parked.clear()
        self._bell_armed.clear()
        if lose_unsynced and self._snapshot is not None:
            self.model = self._snapshot
            self.registry = self._saved_registry
            self._snapshot = None
            self.trace.emit(self.env.now, "store-restored", self.model.seq, self.model.epoch)
            self.checker.on_store_restored(self.model)
            self._restored = True

    def restart(self) -> None:
        self.up = True

    def fsync_point(self) -> None:
        """Remember the state as of now: an everysec restart within the next second restores it."""
        self._snapshot = _snapshot(self.model)
        self._saved_registry = dict(self.registry)

    # ------------------------------------------------------------------ serving
    def serve(self, node: str, request: Any, answer: Answer) -> None:
        """A request arrived from ``node``. Apply it atomically and answer (or park it)."""
        if not self.up:
            answer(UNAVAILABLE)
            return
        self.requests += 1
        kind = type(request)
        if kind is TakeRequest:
            self._take(request, answer)
        elif kind is TakeManyRequest:
            answer(self.model.take_many(request.node_id, request.count_max))
        elif kind is ApplyRequest:
            answer(self._apply(node, request))
        elif kind is DrainRequest:
            answer(self._drain(node, request))
        elif kind is FinishRequest:
            answer(self._finish(request))
        elif kind is FinishDrainRequest:
            # As RedisStore.finish_drain: quiet, no bell (the leader that drains wrote them).
            written = [self._finish(FinishRequest(f), ring=False) for f in request.finishes]
            answer((written, self._drain(node, request.drain)))
        elif kind is FinishApplyDrainRequest:
            written = [self._finish(FinishRequest(f), ring=False) for f in request.finishes]
            applied = self._apply(node, request.apply)
            answer((written, applied, self._drain(node, request.drain)))
        elif kind is HeartbeatRequest:
            answer(self._heartbeat(request))
        elif kind is SubmitRequest:
            answer(self._submit(request))
        elif kind is RegistryRequest:
            self.registry[request.node_id] = (request.slots, request.stamp_ms)
            answer(dict(self.registry))
        elif kind is RaiseEpochRequest:
            ok = self.model.raise_epoch(request.term, request.holder)
            if ok:
                self.checker.on_epoch_raised(request.term, request.holder)
            self.trace.emit(self.env.now, "epoch", node, request.term, request.holder, ok)
            answer(ok)
        elif kind is EpochRequest:
            answer(self.model.epoch)
        elif kind is SweepRequest:
            swept = self.model.sweep(request.now_ms)
            if swept:
                self.trace.emit(self.env.now, "swept", node, swept)
            answer(swept)
        elif kind is LiveStatesRequest:
            answer(self.model.live_states(request.after_seq, request.count_max))
        elif kind is ReleaseRequest:
            answer(self._release(request))
        elif kind is CancelRequest:
            answer(self._cancel(request))
        elif kind is RetryRequest:
            answer(self._retry(request))
        else:
            raise TypeError(f"unknown store request {request!r}")

    def _take(self, request: TakeRequest, answer: Answer) -> None:
        node = request.node_id
        taken = self.model.take(node)
        if taken is not None or request.wait_s <= 0:
            answer(taken)
            return
        parked = _Parked(answer, self.env.now + request.wait_s)
        self._parked.setdefault(node, deque()).append(parked)

    def _expire_parked(self) -> Generator[simpy.Event, None, None]:
        """Answer None to blocked takes whose wait ran out (BLPOP's timeout). One sweep every
        PARK_SWEEP_S rather than a timer per take: most takes are answered long before."""
        env = self.env
        while True:
            yield env.timeout(PARK_SWEEP_S)
            now = env.now
            for node in sorted(self._parked):
                queue = self._parked[node]
                while queue and (queue[0].done or queue[0].expires_at <= now):
                    parked = queue.popleft()
                    if not parked.done:
                        parked.done = True
                        parked.answer(None)

    def _wake_takers(self, nodes: list[str]) -> None:
        for node in nodes:
            queue = self._parked.get(node)
            while queue:
                parked = queue[0]
                if parked.done:
                    queue.popleft()
                    continue
                taken = self.model.take(node)
                if taken is None:
                    break
                queue.popleft()
                parked.done = True
                parked.answer(taken)

    def _ring_bell(self) -> None:
        armed = self._bell_armed
        if armed:
            for node in sorted(armed):
                self._ring(node)
            armed.clear()

    def _drain(self, node: str, request: DrainRequest) -> list[TaskState] | str:
        drained = self.model.drain(request.term, request.count_max)
        if drained != FENCED:
            self.checker.on_leader_write(
                request.term, "drain by {} (took {} notifications)", node, len(drained)
            )
            self._bell_armed[node] = True
        return drained

    def _apply(
        self, node: str, request: ApplyRequest
    ) -> tuple[list[TaskState | str | None], list[Taken]]:
        """As RedisStore.apply_direct with the caller as the direct node: its own leases come
        back as Taken (the runtime starts them at once), the others go on their nodes' lists."""
        model = self.model
        checker = self.checker
        tasks = model.tasks
        out: list[TaskState | str | None] = []
        taken: list[Taken] = []
        leased_nodes: list[str] = []
        now = self.env.now
        # Each write names what it found for the violation report: every accepted write of a
        # stale term breaks the fence, whether or not the compare-and-set made it a no-op.
        for op in request.ops:
            record = tasks.get(op.task_id)
            before = record.status if record is not None else None
            if type(op) is Lease:
                direct = op.node_id == node
                answer = model.lease(
                    op.term, op.task_id, op.node_id, op.deadline_ms, op.now_ms, direct
                )
                if answer != FENCED:
                    checker.on_leader_write(
                        op.term,
                        "lease of {} to {} (task was {})",
                        op.task_id,
                        op.node_id,
                        before or "unknown",
                    )
                    if before is Status.QUEUED:
                        assert isinstance(answer, TaskState)
                        self.trace.emit(
                            now, "lease", op.task_id, answer.attempt, op.node_id, op.term
                        )
                        checker.on_lease(
                            op.task_id, answer.attempt, op.node_id, op.deadline_ms, op.term
                        )
                        if direct and record is not None:
                            taken.append(Taken(_copy_record(record), answer.attempt))
                        elif op.node_id not in leased_nodes:
                            leased_nodes.append(op.node_id)
            elif type(op) is Expire:
                answer = model.expire(op.term, op.task_id, op.attempt, op.now_ms, op.target)
                if answer != FENCED:
                    checker.on_leader_write(
                        op.term,
                        "expiry of {} attempt {} (task was {})",
                        op.task_id,
                        op.attempt,
                        before or "unknown",
                    )
                    if (
                        before is Status.RUNNING
                        and isinstance(answer, TaskState)
                        and answer.status is not Status.RUNNING
                    ):
                        self.trace.emit(now, "expire", op.task_id, op.attempt, answer.status.value)
                        checker.on_expire(op.task_id, op.attempt, answer.status)
            else:
                answer = model.promote(op.term, op.task_id, op.now_ms)
                if answer != FENCED:
                    checker.on_leader_write(
                        op.term, "promotion of {} (task was {})", op.task_id, before or "unknown"
                    )
                    if isinstance(answer, TaskState) and answer.status is not before:
                        self.trace.emit(now, "promote", op.task_id, answer.status.value)
                        if answer.status.terminal:
                            checker.on_terminal(op.task_id, answer.status)
            out.append(answer)
        if leased_nodes:
            self._wake_takers(leased_nodes)
        return out, taken

    def _heartbeat(self, request: HeartbeatRequest) -> list[tuple[bool, Status | None]]:
        model = self.model
        out = []
        for beat in request.beats:
            held, status = model.heartbeat(
                beat.task_id, beat.attempt, beat.node_id, beat.deadline_ms, beat.now_ms
            )
            if held:
                self.checker.on_heartbeat(beat.task_id, beat.attempt, beat.deadline_ms)
            out.append((held, status))
        return out

    def _finish(self, request: FinishRequest, ring: bool = True) -> bool:
        f = request.finish
        ok = self.model.finish(f.task_id, f.attempt, f.node_id, f.end, f.now_ms)
        self.trace.emit(
            self.env.now, "finish", f.task_id, f.attempt, f.node_id, f.end.status.value, ok
        )
        if ok:
            self.checker.on_finish(f.task_id, f.attempt, f.node_id, f.end)
            if ring:
                self._ring_bell()
        else:
            self.checker.counters.stale_refused += 1
        return ok

    def _release(self, request: ReleaseRequest) -> bool:
        r = request.release
        ok = self.model.release(r.task_id, r.attempt, r.node_id, r.now_ms)
        self.trace.emit(self.env.now, "release", r.task_id, r.attempt, r.node_id, ok)
        if ok:
            self.checker.on_release(r.task_id, r.attempt, r.node_id)
            self._ring_bell()
        return ok

    def _cancel(self, request: CancelRequest) -> Status | None:
        record = self.model.tasks.get(request.task_id)
        if record is None:
            return None
        before, attempt, node = record.status, record.attempt, record.lease_node
        self.model.cancel(request.task_id, request.now_ms)
        if record.status is Status.CANCELLED and not before.terminal:
            running_on = node if before is Status.RUNNING else ""
            self.trace.emit(self.env.now, "cancel", request.task_id, attempt, before.value)
            self.checker.on_cancel(request.task_id, attempt, running_on)
            self._ring_bell()
            if running_on:
                self._tell_cancel(running_on, request.task_id, attempt)
        return record.status

    def _retry(self, request: RetryRequest) -> Status | None:
        record = self.model.tasks.get(request.task_id)
        if record is None:
            return None
        before = record.status
        self.model.retry(request.task_id, request.now_ms)
        if record.status is not before:
            self.trace.emit(self.env.now, "retry", request.task_id, record.status.value)
            self.checker.on_retry(request.task_id)
            self._ring_bell()
        return record.status

    def _submit(self, request: SubmitRequest) -> list[str] | SubmitRefused:
        try:
            results = self.model.submit(list(request.batch), request.now_ms)
        except SubmitError as exc:
            return SubmitRefused(exc.index if exc.index is not None else 0, str(exc))
        self.checker.on_submit_applied(record.id for record, created in results if created)
        self._ring_bell()
        return [record.id for record, _created in results]

    def restored_since_poll(self) -> bool:
        """Whether a restore rolled the data back since the last call."""
        restored, self._restored = self._restored, False
        return restored

    # ------------------------------------------------------------------ inspection
    def record(self, task_id: str) -> TaskRecord | None:
        return self.model.tasks.get(task_id)


__all__ = [
    "STORE",
    "CancelRequest",
    "EpochRequest",
    "RegistryRequest",
    "RetryRequest",
    "SimStore",
    "SubmitRefused",
    "SubmitRequest",
    "SweepRequest",
    "TakeRequest",
    "UnfencedStoreModel",
]

"""The scheduler state machine: the leader's brain, fed events, returning effects.

One instance lives in every node; it acts only while its node leads. It keeps a cache of the
store's live tasks (the ready heap for queued ones, compact states for the rest) and decides what
to write next: lease queued tasks to free worker slots, promote delayed and dependent tasks,
expire lost leases. It never writes itself: the driver (``node`` over Redis, ``sim`` over the store
model) carries out the effects and feeds back the store's answers. Safety never rests on this
cache being right: every write is fenced by the term and compare-and-set in the store, so a stale
cache costs a refused write, not a lost or doubled task.
"""

from __future__ import annotations

import heapq
import sys
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

from core.dispatch import NodeSlots, dispatch
from core.effects import Effect, Expire, Lease, Promote, RaiseEpoch, Rebuild, SetTimer
from core.events import (
    Deposed,
    Elected,
    EpochRaised,
    Event,
    Fenced,
    NodeLeft,
    NodeSeen,
    OwnEnded,
    Rebuilt,
    StoreLost,
    TasksChanged,
    Tick,
)
from core.heap import FINGERPRINT_MASK, ReadyQueue
from core.limits import DEFAULT_LIMITS
from core.task import Status, TaskState, lease_expiry_target


class InvariantError(RuntimeError):
    """A scheduler invariant is broken: a bug, never a user error. Kept on in production."""


class Role(StrEnum):
    FOLLOWER = "follower"
    FENCING = "fencing"  # elected; raising the epoch in the store before anything else
    REBUILDING = "rebuilding"  # epoch raised; loading every live task from the store
    LEADING = "leading"  # assigning tasks


@dataclass(frozen=True, slots=True)
class SchedulerConfig:
    # How long a lease lasts without a heartbeat. Workers renew it at a third of this.
    lease_ms: int = 10_000
    # Extra wait past a lease deadline before taking it back, so a heartbeat already on the wire
    # wins over the expiry (the store decides either way; this only saves a refused write).
    expire_grace_ms: int = 500
    # A node not seen in the registry for this long gets no new assignments.
    node_timeout_ms: int = 5_000
    # Assignments decided per dispatch call; one store round trip carries a batch.
    dispatch_batch_max: int = 512
    # Tasks that no free slot can run, skipped per dispatch call before it gives up.
    dispatch_scan_max: int = 1024
    lease_expiries_max: int = DEFAULT_LIMITS.lease_expiries_max
    # Promotions/expiries emitted per tick, so one overdue burst cannot stall the loop.
    timer_batch_max: int = 4096

    def __post_init__(self) -> None:
        if self.lease_ms <= 0 or self.expire_grace_ms < 0 or self.node_timeout_ms <= 0:
            raise ValueError("lease_ms and node_timeout_ms must be > 0, expire_grace_ms >= 0")
        if self.dispatch_batch_max < 1 or self.dispatch_scan_max < 0 or self.timer_batch_max < 1:
            raise ValueError("batch limits must be positive")


@dataclass(slots=True)
class _Node:
    slots: int
    types: frozenset[str] | None
    last_seen_ms: int
    alive: bool = True
    busy: int = 0  # confirmed leases + leases in flight on this node


_WAITING = frozenset({Status.PENDING, Status.FAILED})


class Scheduler:
    def __init__(
        self,
        node_id: str,
        config: SchedulerConfig | None = None,
        *,
        queue: Any = None,
        dispatch_fn: Callable[..., list[tuple[str, str]]] | None = None,
    ) -> None:
        """``queue`` and ``dispatch_fn`` default to the compiled implementations; benchmarks pass
        the Python twins to measure against them in the same run."""
        self.node_id = node_id
        self.config = config or SchedulerConfig()
        self.role = Role.FOLLOWER
        self.term = 0
        self.queue = queue if queue is not None else ReadyQueue()
        self._dispatch_fn = dispatch_fn or dispatch
        # Type of each queued task, for nodes that run only some types. Kept beside the heap
        # (not in it) so the heap stays C structs of (priority, seq, slot).
        self.queued_types: dict[str, str] = {}
        self.leases: dict[str, TaskState] = {}  # running tasks, as last observed
        self.leasing: dict[str, str] = {}  # task id -> node id, Lease written, answer pending
        # Leases on our own node whose handler ended (OwnEnded): their slot is free already,
        # their finish is on its way to the store. A subset of ``leases``.
        self.ending: set[str] = set()
        self.waiting: dict[str, TaskState] = {}  # pending or failed (backoff)
        self.dependants: dict[str, set[str]] = {}  # dependency id -> waiting tasks on it
        self.promoting: set[str] = set()  # Promote written, answer pending
        self.expiring: set[str] = set()  # Expire written, answer pending
        self.nodes: dict[str, _Node] = {}
        # (due_ms, task_id): run_at of waiting tasks and lease deadlines (+grace). Entries go
        # stale when the task changes; they are checked against the current state when due.
        self._timers: list[tuple[int, str]] = []
        self._epoch_asked = False  # a RaiseEpoch of this term is on the wire
        self.stats_assigned = 0
        self.stats_fenced = 0
        self._verified = _Verified()  # see check_invariants()

    # ----------------------------------------------------------------------------- inputs
    def step(self, event: Event) -> list[Effect]:
        effects: list[Effect] = []
        if isinstance(event, TasksChanged):
            for state in event.states:
                self._observe(state, event.now_ms, effects)
        elif isinstance(event, Tick):
            self._tick(event.now_ms, effects)
        elif isinstance(event, NodeSeen):
            self._node_seen(event)
        elif isinstance(event, NodeLeft):
            node = self.nodes.get(event.node_id)
            if node is not None:
                node.alive = False
        elif isinstance(event, OwnEnded):
            self._own_ended(event)
        elif isinstance(event, Elected):
            self._reset(Role.FENCING, event.term)
            self._epoch_asked = True
            effects.append(RaiseEpoch(event.term, self.node_id))
        elif isinstance(event, StoreLost):
            if self.role is not Role.FOLLOWER:
                # An answer went missing: start the term over from the store's truth. The
                # RaiseEpoch goes out at the next tick, when the store may answer again.
                self._reset(Role.FENCING, self.term)
                self._epoch_asked = False
        elif isinstance(event, EpochRaised):
            if self.role is Role.FENCING and event.term == self.term:
                self._epoch_asked = False
                if event.ok:
                    self.role = Role.REBUILDING
                    effects.append(Rebuild(event.term))
                else:
                    self.stats_fenced += 1
                    self._reset(Role.FOLLOWER, self.term)
        elif isinstance(event, Rebuilt):
            if self.role is Role.REBUILDING and event.term == self.term:
                self.role = Role.LEADING
        elif isinstance(event, Fenced):
            if event.term == self.term and self.role is not Role.FOLLOWER:
                self.stats_fenced += 1
                self._reset(Role.FOLLOWER, self.term)
        elif isinstance(event, Deposed):
            if self.role is not Role.FOLLOWER:
                self._reset(Role.FOLLOWER, self.term)
        else:  # pragma: no cover - the Event union is closed
            raise TypeError(f"unknown event {event!r}")
        if self.role is Role.LEADING:
            self._dispatch(event.now_ms, effects)
        if self._timers and self.role is not Role.FOLLOWER:
            effects.append(SetTimer(self._timers[0][0]))
        return effects

    @property
    def leading(self) -> bool:
        return self.role is Role.LEADING

    @property
    def fence_term(self) -> int:
        """The term to stamp on store writes; 0 when this node may not write as leader."""
        return self.term if self.role is not Role.FOLLOWER else 0

    def running_on(self, node_id: str) -> int:
        node = self.nodes.get(node_id)
        return node.busy if node else 0

    # ----------------------------------------------------------------------------- internals
    def _reset(self, role: Role, term: int) -> None:
        """Forget the whole cache: a new term starts from the store's truth."""
        self.role = role
        self.term = term
        self.queue.clear()
        self.queued_types.clear()
        self.leases.clear()
        self.leasing.clear()
        self.ending.clear()
        self.waiting.clear()
        self.dependants.clear()
        self.promoting.clear()
        self.expiring.clear()
        self._timers.clear()
        for node in self.nodes.values():
            node.busy = 0

    def _node_seen(self, event: NodeSeen) -> None:
        if event.slots < 0:
            raise ValueError("slots must be >= 0")
        node = self.nodes.get(event.node_id)
        if node is None:
            self.nodes[event.node_id] = _Node(event.slots, event.types, event.now_ms)
        else:
            node.slots, node.types = event.slots, event.types
            node.last_seen_ms, node.alive = event.now_ms, True

    def _own_ended(self, event: OwnEnded) -> None:
        if self.role is not Role.LEADING:
            return
        own = self.node_id
        for task_id, attempt in event.ends:
            lease = self.leases.get(task_id)
            # Only the attempt we hold as running on our own node: an older attempt's end, or
            # one whose lease we already lost track of, frees nothing we count.
            if (
                lease is not None
                and lease.attempt == attempt
                and lease.lease_node == own
                and task_id not in self.ending
            ):
                self.ending.add(task_id)
                self._release_slot(own)

    def _forget(self, task_id: str) -> None:
        """Drop every trace of a task from the cache before filing its new state."""
        if task_id in self.queued_types:
            del self.queued_types[task_id]
            self.queue.remove(task_id)
        lease = self.leases.pop(task_id, None)
        if lease is not None:
            if task_id in self.ending:
                self.ending.discard(task_id)  # its slot was freed when its handler ended
            else:
                self._release_slot(lease.lease_node)
        node_id = self.leasing.pop(task_id, None)
        if node_id is not None:
            self._release_slot(node_id)
        old = self.waiting.pop(task_id, None)
        if old is not None:
            for dep in old.depends_on:
                waiters = self.dependants.get(dep)
                if waiters is not None:
                    waiters.discard(task_id)
                    if not waiters:
                        del self.dependants[dep]
        self.promoting.discard(task_id)
        self.expiring.discard(task_id)

    def _release_slot(self, node_id: str) -> None:
        node = self.nodes.get(node_id)
        if node is not None and node.busy > 0:
            node.busy -= 1

    def _take_slot(self, node_id: str) -> None:
        node = self.nodes.get(node_id)
        if node is None:
            # A lease on a node we have not seen yet (just after an election): track its load
            # so that, once it shows up, it is not handed more than its free slots.
            node = self.nodes[node_id] = _Node(0, None, 0, alive=False)
        node.busy += 1

    def _observe(self, state: TaskState, now_ms: int, effects: list[Effect]) -> None:
        if self.role is Role.FOLLOWER or self.role is Role.FENCING:
            return  # not ours to track; the next leader rebuilds from the store
        tid = state.id
        if state.status is Status.QUEUED and (tid in self.leasing or tid in self.queued_types):
            # Already queued here, or our Lease for it is on the wire: the store applies
            # operations in order, so this state predates the Lease's answer.
            return
        answered_promote = tid in self.promoting
        lease = self.leases.get(tid)
        # The same running attempt again (a drained state from before its finish): still ending,
        # its slot still free.
        still_ending = (
            lease is not None
            and tid in self.ending
            and state.status is Status.RUNNING
            and state.attempt == lease.attempt
            and state.lease_node == lease.lease_node
        )
        self._forget(tid)
        status = state.status
        if status is Status.QUEUED:
            self.queue.push(tid, int(state.priority), state.seq)
            # One string object per type, not one per task: a million queued tasks share a few.
            self.queued_types[tid] = sys.intern(state.type)
        elif status is Status.RUNNING:
            self.leases[tid] = state
            if still_ending:
                self.ending.add(tid)
            else:
                self._take_slot(state.lease_node)
            heapq.heappush(
                self._timers, (state.lease_deadline_ms + self.config.expire_grace_ms, tid)
            )
        elif status in _WAITING:
            self.waiting[tid] = state
            for dep in state.depends_on:
                self.dependants.setdefault(dep, set()).add(tid)
            if state.run_at_ms > now_ms:
                heapq.heappush(self._timers, (state.run_at_ms, tid))
            elif not answered_promote:
                # Due, or its dependencies may have finished before we learned of it: ask the
                # store, which decides from its own state. If this state IS the store's answer,
                # it still waits on a dependency: the dependency's end will wake it. Drivers feed
                # answers in the order the store applied them, so no wake-up falls in between.
                self._promote(tid, now_ms, effects)
        else:  # terminal: wake whatever waited on it
            for waiter in sorted(self.dependants.pop(tid, ())):
                waiting = self.waiting.get(waiter)
                if waiting is not None and waiting.run_at_ms <= now_ms:
                    self._promote(waiter, now_ms, effects)

    def _promote(self, task_id: str, now_ms: int, effects: list[Effect]) -> None:
        if task_id not in self.promoting:
            self.promoting.add(task_id)
            effects.append(Promote(self.term, task_id, now_ms))

    def _tick(self, now_ms: int, effects: list[Effect]) -> None:
        if self.role is Role.FENCING and not self._epoch_asked:
            self._epoch_asked = True
            effects.append(RaiseEpoch(self.term, self.node_id))
        if self.role is not Role.LEADING:
            return
        cfg = self.config
        for node in self.nodes.values():
            if node.alive and now_ms - node.last_seen_ms > cfg.node_timeout_ms:
                node.alive = False
        fired = 0
        timers = self._timers
        while timers and timers[0][0] <= now_ms and fired < cfg.timer_batch_max:
            due_ms, tid = heapq.heappop(timers)
            waiting = self.waiting.get(tid)
            if waiting is not None:
                if waiting.run_at_ms == due_ms:
                    self._promote(tid, now_ms, effects)
                    fired += 1
                continue
            lease = self.leases.get(tid)
            if (
                lease is not None
                and lease.lease_deadline_ms + cfg.expire_grace_ms == due_ms
                and tid not in self.expiring
            ):
                self.expiring.add(tid)
                target = lease_expiry_target(lease.lease_expiries, cfg.lease_expiries_max)
                effects.append(Expire(self.term, tid, lease.attempt, now_ms, target))
                fired += 1

    def _dispatch(self, now_ms: int, effects: list[Effect]) -> None:
        if not self.queued_types:
            return
        slots = [
            NodeSlots(node_id, node.slots - node.busy, node.busy, node.types)
            for node_id, node in sorted(self.nodes.items())
            if node.alive and node.slots > node.busy
        ]
        if not slots:
            return
        cfg = self.config
        assignments = self._dispatch_fn(
            self.queue,
            slots,
            self.queued_types,
            batch_max=cfg.dispatch_batch_max,
            scan_max=cfg.dispatch_scan_max,
        )
        deadline_ms = now_ms + cfg.lease_ms
        for task_id, node_id in assignments:
            del self.queued_types[task_id]
            self.leasing[task_id] = node_id
            self._take_slot(node_id)
            effects.append(Lease(self.term, task_id, node_id, deadline_ms, now_ms))
        self.stats_assigned += len(assignments)

    # ----------------------------------------------------------------------------- checks
    def check_invariants(self) -> None:
        """Raise InvariantError if the cache contradicts itself (see _check)."""
        try:
            self._check()
        except InvariantError:
            # What it verified in part is not sound: a call after this one checks everything.
            self._verified = _Verified()
            raise

    def _check(self) -> None:
        """check_invariants(). For tests and the sim, which
        runs it after every step, so it costs what changed since the last call, not the size of
        the cache: the invariants are a function of the cache, and _Verified keeps what the
        last call found sound. What changed is found by comparisons and set differences, which
        run in C; the per-task checks run on the changed tasks only. A check that needs the
        whole of a collection (the heap's ids against the typed ones) compares fingerprints."""
        queued = self.queued_types
        leases = self.leases
        leasing = self.leasing
        waiting = self.waiting
        if self.role is Role.FOLLOWER and (queued or leases or leasing or waiting):
            raise InvariantError("a follower keeps a task cache")
        queue = self.queue
        if len(queue) != len(queued):
            raise InvariantError(f"heap holds {len(queue)} tasks but {len(queued)} are typed")
        verified = self._verified
        typed = verified.queued
        queued_new: Iterable[str] = ()
        if len(typed) != len(queued) or queued.keys() != typed:
            queued_new = queued.keys() - typed
            gone = typed.difference(queued)
            fingerprint = verified.queued_fingerprint
            for tid in queued_new:
                fingerprint ^= hash(tid) & FINGERPRINT_MASK
            for tid in gone:
                fingerprint ^= hash(tid) & FINGERPRINT_MASK
            typed -= gone
            typed |= queued_new
            verified.queued_fingerprint = fingerprint
        heap_fingerprint = getattr(queue, "fingerprint", None)
        # A queue a benchmark passed in may have no fingerprint: then every id is looked up.
        if heap_fingerprint is None or heap_fingerprint() != verified.queued_fingerprint:
            for tid in queued:
                if tid not in queue:
                    raise InvariantError(f"{tid} typed as queued but not in the heap")
            if heap_fingerprint is not None:  # then the heap holds exactly the typed ids
                raise InvariantError("the checker's fingerprint of the typed ids is wrong")
        # Filed under two states at once: the four were disjoint at the last call, so such a
        # task entered at least one of them since, and is found among what entered.
        leases_new: Iterable[str] = ()
        if leases != verified.leases:
            leases_new = leases.keys() - verified.leases.keys()
            lease_busy: dict[str, int] = {}
            running = Status.RUNNING
            for tid, lease in leases.items():
                if lease.status is not running or lease.id != tid or lease.attempt < 1:
                    raise InvariantError(f"lease record of {tid} is not a running attempt: {lease}")
                node_id = lease.lease_node
                lease_busy[node_id] = lease_busy.get(node_id, 0) + 1
            verified.leases = leases.copy()
            verified.lease_busy = lease_busy
        leasing_new = leasing.keys() - verified.leasing
        verified.leasing = set(leasing)
        dependants = self.dependants
        waiting_changed = waiting != verified.waiting
        waiting_new = waiting.keys() - verified.waiting.keys() if waiting_changed else ()
        for new, others in (
            (queued_new, (leases, leasing, waiting)),
            (leases_new, (queued, leasing, waiting)),
            (leasing_new, (queued, leases, waiting)),
            (waiting_new, (queued, leases, leasing)),
        ):
            twice = [tid for tid in new if tid in others[0] or tid in others[1] or tid in others[2]]
            if twice:  # the least id: sets iterate in an order that varies between processes
                raise InvariantError(f"{min(twice)} is filed under two states at once")
        busy = verified.lease_busy
        ending = self.ending
        if ending or leasing:
            busy = busy.copy()
        if ending:
            if not ending <= leases.keys():
                raise InvariantError("a task counted as ending is not leased")
            for tid in ending:
                node_id = leases[tid].lease_node
                if node_id != self.node_id:
                    raise InvariantError(f"{tid} counted as ending on another node, {node_id}")
                busy[node_id] -= 1
        if leasing:
            for node_id in leasing.values():
                busy[node_id] = busy.get(node_id, 0) + 1
        for node_id, node in self.nodes.items():
            if node.busy != busy.get(node_id, 0):
                leased = busy.get(node_id, 0)
                raise InvariantError(
                    f"node {node_id} counts {node.busy} busy slots, leases say {leased}"
                )
        if waiting_changed:
            for tid, state in waiting.items():
                if state.status not in _WAITING:
                    raise InvariantError(f"waiting task {tid} has status {state.status}")
        if waiting_changed or dependants != verified.dependants:
            for dep, waiters in dependants.items():
                for waiter in waiters:
                    waiter_state = waiting.get(waiter)
                    if waiter_state is None or dep not in waiter_state.depends_on:
                        raise InvariantError(f"{waiter} listed as waiting on {dep} but does not")
            verified.waiting = waiting.copy()
            verified.dependants = {dep: waiters.copy() for dep, waiters in dependants.items()}
        if not self.promoting <= waiting.keys():
            raise InvariantError("a promotion is in flight for a task that is not waiting")
        if not self.expiring <= leases.keys():
            raise InvariantError("an expiry is in flight for a task that is not leased")


class _Verified:
    """What check_invariants() last found sound, per collection: copies, never the live ones."""

    __slots__ = (
        "dependants",
        "lease_busy",
        "leases",
        "leasing",
        "queued",
        "queued_fingerprint",
        "waiting",
    )

    def __init__(self) -> None:
        self.queued: set[str] = set()  # the ids of queued_types
        self.queued_fingerprint = 0  # ReadyQueue.fingerprint() of those ids
        self.leasing: set[str] = set()
        self.leases: dict[str, TaskState] = {}
        self.lease_busy: dict[str, int] = {}
        self.waiting: dict[str, TaskState] = {}
        self.dependants: dict[str, set[str]] = {}

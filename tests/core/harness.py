"""A synchronous, in-memory driver of core's state machines over the store model.

It does what node/runtime.py does, without I/O or clock: the tests step it by hand, so every
interleaving they want is reachable and every failure replays.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from core.effects import Effect, Expire, Lease, Promote, RaiseEpoch, Rebuild, SetTimer
from core.events import (
    Deposed,
    Elected,
    EpochRaised,
    Event,
    Fenced,
    NodeSeen,
    OwnEnded,
    Rebuilt,
    TasksChanged,
    Tick,
)
from core.priority import Priority
from core.scheduler import Scheduler, SchedulerConfig
from core.store_model import FENCED, NewTask, StoreModel
from core.task import Outcome, RetryPolicy, Status, TaskState
from core.worker import Assignment, Finish, Heartbeat, Release, RunHandler, WorkerPool


def leases_per_node(store: StoreModel) -> dict[str, int]:
    """How many running tasks the store holds leased to each node."""
    leased: dict[str, int] = {}
    for rec in store.tasks.values():
        if rec.status is Status.RUNNING:
            leased[rec.lease_node] = leased.get(rec.lease_node, 0) + 1
    return leased


def worker_ticks(store: StoreModel, pools: dict[str, WorkerPool], now_ms: int) -> None:
    """Every pool ticks; its heartbeats go straight to the store (interrupts stop handlers,
    which end when a test says so)."""
    for node, pool in pools.items():
        for effect in pool.tick(now_ms):
            if isinstance(effect, Heartbeat):
                held, _ = store.heartbeat(
                    effect.task_id, effect.attempt, node, effect.deadline_ms, now_ms
                )
                if held:
                    pool.lease_held(effect.task_id, effect.attempt, effect.deadline_ms)
                else:
                    pool.lease_refused(effect.task_id, effect.attempt, False)


@dataclass
class Harness:
    nodes: list[str] = field(default_factory=lambda: ["n1", "n2"])
    slots: int = 2
    lease_ms: int = 1000
    seed: int = 0
    now_ms: int = 1_000_000
    store: StoreModel = field(default_factory=StoreModel)
    term: int = 0
    leader: Scheduler | None = None
    pools: dict[str, WorkerPool] = field(default_factory=dict)
    # (task_id, attempt, node) of every handler start, in order: the execution log.
    started: list[tuple[str, int, str]] = field(default_factory=list)
    # The priority of each lease the leader wrote, with the queue's best priority just before.
    lease_log: list[tuple[str, int]] = field(default_factory=list)
    timer_at_ms: int | None = None
    next_id: int = 0

    def __post_init__(self) -> None:
        self.rng = random.Random(self.seed)
        for node in self.nodes:
            self.pools[node] = WorkerPool(node, self.slots, self.lease_ms)

    # ------------------------------------------------------------------ clients
    def submit(
        self,
        priority: Priority = Priority.MEDIUM,
        *,
        delay_ms: int = 0,
        depends_on: tuple[str, ...] = (),
        max_retries: int = 2,
        key: str = "",
        task_type: str = "t",
    ) -> str:
        self.next_id += 1
        task_id = f"task{self.next_id:05d}"
        new = NewTask(
            id=task_id,
            type=task_type,
            priority=priority,
            max_retries=max_retries,
            backoff_base_ms=10,
            backoff_cap_ms=100,
            timeout_ms=5_000,
            run_at_ms=self.now_ms + delay_ms if delay_ms else 0,
            depends_on=depends_on,
            idempotency_key=key,
        )
        [(record, _)] = self.store.submit([new], self.now_ms)
        return record.id

    # ------------------------------------------------------------------ leader
    def elect(self, node: str | None = None) -> Scheduler:
        self.term += 1
        self.leader = Scheduler(
            node or self.nodes[0],
            SchedulerConfig(
                lease_ms=self.lease_ms, expire_grace_ms=50, node_timeout_ms=self.lease_ms // 2
            ),
        )
        self.feed(Elected(self.term, self.now_ms))
        self.see_nodes()
        return self.leader

    def see_nodes(self) -> None:
        for node, pool in self.pools.items():
            self.feed(NodeSeen(node, pool.offered, None, self.now_ms))

    def feed(self, event: Event) -> None:
        assert self.leader is not None
        effects = self.leader.step(event)
        self.leader.check_invariants()
        self.carry_out(effects)

    def carry_out(self, effects: list[Effect]) -> None:
        sched = self.leader
        assert sched is not None
        while effects:
            todo, effects = effects, []
            states: list[TaskState] = []
            fenced = False
            for effect in todo:
                answer: object = None
                if isinstance(effect, RaiseEpoch):
                    ok = self.store.raise_epoch(effect.term, effect.holder)
                    effects += sched.step(EpochRaised(effect.term, ok, self.now_ms))
                elif isinstance(effect, Rebuild):
                    states_all = tuple(self.store.live_states())
                    effects += sched.step(TasksChanged(states_all, self.now_ms))
                    effects += sched.step(Rebuilt(effect.term, self.now_ms))
                elif isinstance(effect, Lease):
                    top = sched.queue.peek_entry()[1] if len(sched.queue) else 3
                    self.lease_log.append((effect.task_id, top))
                    answer = self.store.lease(
                        effect.term,
                        effect.task_id,
                        effect.node_id,
                        effect.deadline_ms,
                        effect.now_ms,
                    )
                elif isinstance(effect, Expire):
                    answer = self.store.expire(
                        effect.term, effect.task_id, effect.attempt, effect.now_ms, effect.target
                    )
                elif isinstance(effect, Promote):
                    answer = self.store.promote(effect.term, effect.task_id, effect.now_ms)
                elif isinstance(effect, SetTimer):
                    self.timer_at_ms = effect.at_ms
                if answer == FENCED:
                    fenced = True
                elif isinstance(answer, TaskState):
                    states.append(answer)
            if states:
                effects += sched.step(TasksChanged(tuple(states), self.now_ms))
            if fenced:
                effects += sched.step(Fenced(sched.term, self.now_ms))
            sched.check_invariants()

    def drain(self) -> None:
        assert self.leader is not None
        if not self.leader.leading:
            return
        drained = self.store.drain(self.leader.term, 10_000)
        if drained == FENCED:
            self.feed(Fenced(self.leader.term, self.now_ms))
        else:
            assert not isinstance(drained, str)
            self.feed(TasksChanged(tuple(drained), self.now_ms))

    def depose(self) -> None:
        self.feed(Deposed(self.now_ms))

    # ------------------------------------------------------------------ workers
    def take_all(self) -> list[str]:
        """Every node fills its free slots from its assignment list."""
        taken: list[str] = []
        for node, pool in sorted(self.pools.items()):
            while pool.free > 0:
                got = self.store.take(node)
                if got is None:
                    break
                r = got.record
                a = Assignment(
                    r.id,
                    got.attempt,
                    r.type,
                    r.timeout_ms,
                    RetryPolicy(r.max_retries, r.backoff_base_ms, r.backoff_cap_ms),
                    r.failures,
                    r.lease_deadline_ms,
                )
                for effect in pool.start(a, self.now_ms):
                    if isinstance(effect, RunHandler):
                        self.started.append((r.id, got.attempt, node))
                        taken.append(r.id)
        return taken

    def complete(self, node: str, task_id: str, outcome: Outcome, outlives: bool = False) -> bool:
        """The handler of task_id's latest attempt on ``node`` ended; with ``outlives``, its
        attempt is settled but the handler runs on (a thread), holding its slot."""
        pool = self.pools[node]
        attempts = [a for (t, a) in pool.running if t == task_id]
        if not attempts:
            return False
        if outlives:
            assert pool.handler_outlives(task_id, max(attempts))
        effects = pool.handler_ended(task_id, max(attempts), outcome, self.now_ms, self.rng)
        for effect in effects:
            if isinstance(effect, Finish):
                self.store.finish(
                    effect.task_id, effect.attempt, effect.node_id, effect.end, effect.now_ms
                )
            elif isinstance(effect, Release):
                self.store.release(effect.task_id, effect.attempt, effect.node_id, effect.now_ms)
        return True

    def complete_own(self, task_id: str, outcome: Outcome) -> bool:
        """As ``complete`` for a handler on the leader's own node, in the order the drivers
        write it (core.driver's ApplyDrainRequest): the scheduler hears OwnEnded first and
        leases the freed slots; the store gets the finish, then those leases, then a drain."""
        sched = self.leader
        assert sched is not None
        pool = self.pools[sched.node_id]
        attempts = [a for (t, a) in pool.running if t == task_id]
        if not attempts:
            return False
        effects = pool.handler_ended(task_id, max(attempts), outcome, self.now_ms, self.rng)
        finishes = [e for e in effects if isinstance(e, Finish)]
        leases = sched.step(OwnEnded(tuple((f.task_id, f.attempt) for f in finishes), self.now_ms))
        sched.check_invariants()
        for f in finishes:
            self.store.finish(f.task_id, f.attempt, f.node_id, f.end, f.now_ms)
        for effect in effects:
            if isinstance(effect, Release):
                self.store.release(effect.task_id, effect.attempt, effect.node_id, effect.now_ms)
        self.carry_out(leases)
        self.drain()
        return True

    def leases_per_node(self) -> dict[str, int]:
        return leases_per_node(self.store)

    def crash_node(self, node: str) -> None:
        """Volatile state lost: its running handlers vanish without a word."""
        self.pools[node] = WorkerPool(node, self.slots, self.lease_ms)

    def worker_ticks(self) -> None:
        worker_ticks(self.store, self.pools, self.now_ms)

    # ------------------------------------------------------------------ time
    def advance(self, ms: int) -> None:
        self.now_ms += ms
        self.worker_ticks()
        if self.leader is not None:
            self.see_nodes()
            self.drain()
            self.feed(Tick(self.now_ms))

    def cycle(self, ms: int = 10) -> None:
        """One round: time passes, the leader drains and ticks, workers take their assignments."""
        self.advance(ms)
        self.take_all()

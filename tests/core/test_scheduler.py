"""The scheduler and worker state machines, driven over the store model."""

from __future__ import annotations

import dataclasses
import random

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from core.effects import Lease, RaiseEpoch, Rebuild
from core.events import Elected, EpochRaised, NodeSeen, OwnEnded, Rebuilt, TasksChanged
from core.priority import Priority
from core.scheduler import InvariantError, Role, Scheduler
from core.task import TERMINAL, Outcome, RetryPolicy, Status, TaskState
from core.worker import WorkerPool
from tests.core.harness import Harness


def state(tid: str, status: Status = Status.QUEUED, **kw: object) -> TaskState:
    fields: dict[str, object] = {"type": "t", "priority": Priority.MEDIUM, "seq": 1}
    fields.update(kw)
    return TaskState(id=tid, status=status, **fields)  # type: ignore[arg-type]


def test_election_fences_before_anything_then_rebuilds() -> None:
    s = Scheduler("n1")
    assert s.step(Elected(3, 0)) == [RaiseEpoch(3, "n1")]
    assert s.role is Role.FENCING
    # Nothing is assigned while fencing, even with work and slots in sight.
    s.step(NodeSeen("n1", 2, None, 0))
    assert s.step(TasksChanged((state("a"),), 0)) == []
    assert s.step(EpochRaised(3, True, 0)) == [Rebuild(3)]
    assert s.role is Role.REBUILDING
    assert not [e for e in s.step(TasksChanged((state("a"),), 0)) if isinstance(e, Lease)]
    effects = s.step(Rebuilt(3, 0))
    assert [e for e in effects if isinstance(e, Lease)] == [Lease(3, "a", "n1", 10_000, 0)]
    s.check_invariants()


def test_refused_epoch_steps_down() -> None:
    s = Scheduler("n1")
    s.step(Elected(3, 0))
    s.step(EpochRaised(3, False, 0))
    assert s.role is Role.FOLLOWER and s.fence_term == 0


def test_priority_then_fifo_and_no_prefetch() -> None:
    h = Harness(nodes=["n1"], slots=1)
    low = h.submit(Priority.LOW)
    med1 = h.submit(Priority.MEDIUM)
    med2 = h.submit(Priority.MEDIUM)
    high = h.submit(Priority.HIGH)
    h.elect()
    order = []
    for _ in range(4):
        h.cycle()
        [(tid, _, _)] = [s for s in h.started if s[0] not in order]
        order.append(tid)
        # Only one slot: exactly one lease outstanding, however much is queued.
        assert sum(1 for r in h.store.tasks.values() if r.status is Status.RUNNING) == 1
        h.complete("n1", tid, Outcome.success())
    assert order == [high, med1, med2, low]


def test_retry_with_backoff_then_dead() -> None:
    h = Harness(nodes=["n1"], slots=1)
    tid = h.submit(max_retries=1)
    h.elect()
    h.cycle()
    h.complete("n1", tid, Outcome.error("E", "boom"))
    h.cycle(1)
    rec = h.store.tasks[tid]
    assert rec.status is Status.FAILED and rec.failures == 1 and rec.run_at_ms > h.now_ms
    h.cycle(200)  # past the capped backoff (100 ms)
    assert h.store.tasks[tid].status is Status.RUNNING
    assert h.store.tasks[tid].attempt == 2
    h.complete("n1", tid, Outcome.error("E", "boom again"))
    h.cycle()
    assert h.store.tasks[tid].status is Status.DEAD
    assert h.store.tasks[tid].error["message"] == "boom again"


def test_a_rejected_attempt_ends_dead_with_retries_left() -> None:
    h = Harness(nodes=["n1"], slots=1)
    tid = h.submit(max_retries=2)
    h.elect()
    h.cycle()
    h.complete("n1", tid, Outcome.rejected("TaskRejected", "bad payload"))
    h.cycle()
    rec = h.store.tasks[tid]
    assert rec.status is Status.DEAD and rec.failures == 1 and rec.attempt == 1
    assert rec.error["kind"] == "rejected" and rec.error["message"] == "bad payload"


def test_lease_expiry_requeues_with_next_attempt_elsewhere() -> None:
    h = Harness(nodes=["n1", "n2"], slots=1)
    tid = h.submit()
    h.elect()
    h.cycle()
    [(_, attempt, node)] = h.started
    other = "n2" if node == "n1" else "n1"
    h.crash_node(node)
    del h.pools[node]  # gone for good: no heartbeats, not seen again
    h.cycle(h.lease_ms + 100)
    h.cycle()
    assert h.started[-1] == (tid, attempt + 1, other)
    # The lost attempt's completion changes nothing.
    rec = h.store.tasks[tid]
    assert rec.lease_expiries == 1 and rec.attempt == attempt + 1


def test_heartbeats_keep_a_long_task_leased() -> None:
    h = Harness(nodes=["n1"], slots=1)
    tid = h.submit()
    h.elect()
    h.cycle()
    for _ in range(10):
        h.cycle(h.lease_ms // 3)
    assert h.store.tasks[tid].status is Status.RUNNING
    assert h.store.tasks[tid].attempt == 1


def test_delay_and_dependencies() -> None:
    h = Harness(nodes=["n1"], slots=2)
    a = h.submit()
    b = h.submit(depends_on=(a,))
    c = h.submit(delay_ms=500)
    h.elect()
    h.cycle()
    assert {s[0] for s in h.started} == {a}
    h.complete("n1", a, Outcome.success())
    h.cycle()
    h.cycle()
    assert {s[0] for s in h.started} == {a, b}
    h.cycle(600)
    assert c in {s[0] for s in h.started}


def test_dead_dependency_fails_dependants_naming_it() -> None:
    h = Harness(nodes=["n1"], slots=1)
    a = h.submit(max_retries=0)
    b = h.submit(depends_on=(a,))
    c = h.submit(depends_on=(b,))
    h.elect()
    h.cycle()
    h.complete("n1", a, Outcome.error("E", "x"))
    for _ in range(3):
        h.cycle()
    assert h.store.tasks[b].status is Status.DEAD
    assert a in h.store.tasks[b].error["message"]
    assert h.store.tasks[c].status is Status.DEAD
    assert b in h.store.tasks[c].error["message"]


def test_cancel_queued_and_running() -> None:
    h = Harness(nodes=["n1"], slots=1)
    a = h.submit()
    b = h.submit()
    h.elect()
    h.cycle()
    h.store.cancel(b, h.now_ms)
    h.store.cancel(a, h.now_ms)  # running: the worker learns at its next heartbeat
    h.cycle(h.lease_ms // 3 + 1)
    assert not h.pools["n1"].running or all(
        r.stop is not None for r in h.pools["n1"].running.values()
    )
    assert h.store.tasks[a].status is Status.CANCELLED
    assert h.complete("n1", a, Outcome.success())  # the handler ends late...
    assert h.store.tasks[a].status is Status.CANCELLED  # ...and changes nothing
    assert [s[0] for s in h.started] == [a]


def test_deposed_leader_changes_nothing() -> None:
    h = Harness(nodes=["n1"], slots=1)
    h.submit()
    old = h.elect("n1")
    h.cycle()
    new_term = h.term + 1
    assert h.store.raise_epoch(new_term)  # another node won an election meanwhile
    queued = h.submit()
    h.drain()  # the old leader tries to drain: fenced, steps down
    assert old.role is Role.FOLLOWER
    assert h.store.tasks[queued].status is Status.QUEUED
    assert old.stats_fenced == 1


def test_invariant_checker_can_fail() -> None:
    s = Scheduler("n1")
    s.step(Elected(1, 0))
    s.step(EpochRaised(1, True, 0))
    s.step(TasksChanged((state("a"),), 0))
    s.check_invariants()
    s.leases["a"] = state("a", Status.RUNNING, attempt=1, lease_node="n1")
    with pytest.raises(InvariantError):
        s.check_invariants()


def _checked_cache() -> tuple[Scheduler, dict[str, list[str]]]:
    """A leader whose cache holds tasks in every state, checked once (so the next check
    works from what changed): the scheduler and its task ids by state."""
    h = Harness(nodes=["n1"], slots=1)
    first = h.submit()
    for _ in range(3):
        h.submit()
    h.submit(depends_on=(first,))
    s = h.elect("n1")
    h.cycle()
    s.check_invariants()
    ids = {
        "queued": list(s.queued_types),
        "leased": list(s.leases),
        "waiting": list(s.waiting),
    }
    assert all(ids.values()), ids
    return s, ids


def _file_twice(s: Scheduler, ids: dict[str, list[str]], target: str) -> None:
    """File a queued task under ``target`` too (or a leased one as queued)."""
    tid = ids["queued"][0]
    if target == "leases":
        s.leases[tid] = state(tid, Status.RUNNING, attempt=1, lease_node="n1")
    elif target == "leasing":
        s.leasing[tid] = "n1"
        s.nodes["n1"].busy += 1  # so that only the double filing is wrong
    elif target == "waiting":
        s.waiting[tid] = state(tid, Status.PENDING)
    else:  # a leased task queued again
        leased = ids["leased"][0]
        s.queue.push(leased, int(Priority.MEDIUM), 99)
        s.queued_types[leased] = "t"


@pytest.mark.parametrize("target", ["leases", "leasing", "waiting", "queued"])
def test_a_task_filed_twice_since_the_last_check_is_found(target: str) -> None:
    s, ids = _checked_cache()
    _file_twice(s, ids, target)
    for _ in range(2):  # a failed check leaves no half-verified state that a second one trusts
        with pytest.raises(InvariantError, match="filed under two states"):
            s.check_invariants()


def test_the_heap_swapping_an_id_for_one_not_typed_is_found() -> None:
    # Same length, typed ids unchanged since the last check: only the fingerprint tells.
    s, ids = _checked_cache()
    lost = ids["queued"][1]
    assert s.queue.remove(lost)
    s.queue.push("ghost", int(Priority.MEDIUM), 99)
    with pytest.raises(InvariantError, match=f"{lost} typed as queued but not in the heap"):
        s.check_invariants()


def test_a_typed_id_swapped_for_one_not_in_the_heap_is_found() -> None:
    s, ids = _checked_cache()
    del s.queued_types[ids["queued"][0]]
    s.queued_types["ghost"] = "t"
    with pytest.raises(InvariantError, match="ghost typed as queued but not in the heap"):
        s.check_invariants()


@pytest.mark.parametrize("corruption", ["waiter gone", "dep dropped", "edge added", "bad status"])
def test_a_broken_dependants_index_since_the_last_check_is_found(corruption: str) -> None:
    s, ids = _checked_cache()
    waiter = ids["waiting"][0]
    state = s.waiting[waiter]
    (dep,) = state.depends_on
    match = "listed as waiting on"
    if corruption == "waiter gone":
        del s.waiting[waiter]
    elif corruption == "dep dropped":
        s.waiting[waiter] = dataclasses.replace(state, depends_on=())
    elif corruption == "edge added":
        s.dependants.setdefault(ids["queued"][0], set()).add(waiter)
    else:
        s.waiting[waiter] = dataclasses.replace(state, status=Status.QUEUED)
        match = "has status"
    with pytest.raises(InvariantError, match=match):
        s.check_invariants()
    assert dep in s.dependants


def test_checks_after_a_clean_change_still_pass() -> None:
    # The incremental bookkeeping itself: a task moved by the scheduler's own rules (here a
    # whole new term's rebuild) leaves a cache that checks clean, call after call.
    s, ids = _checked_cache()
    s.step(Elected(s.term + 1, 0))
    s.check_invariants()
    s.step(EpochRaised(s.term, True, 0))
    s.step(TasksChanged(tuple(state(t, seq=i) for i, t in enumerate(ids["queued"])), 0))
    s.check_invariants()
    s.step(Rebuilt(s.term, 0))
    s.check_invariants()
    assert s.queue.fingerprint() != 0


def test_backoff_is_capped_and_jittered() -> None:
    policy = RetryPolicy(max_retries=50, backoff_base_ms=100, backoff_cap_ms=1000)
    rng = random.Random(1)
    delays = [policy.backoff_ms(n, rng) for n in range(1, 40)]
    assert all(50 <= d <= 1000 for d in delays)
    assert delays[0] <= 100 and max(delays) > 500
    assert len(set(delays[10:])) > 1  # jitter


# ---------------------------------------------------------------------------- properties
# How a handler may end: a success, a failure its policy retries, or a rejection (dead at once).
OUTCOMES = st.sampled_from(
    [Outcome.success(), Outcome.error("E", "x"), Outcome.rejected("TaskRejected", "no")]
)


class SchedulerMachine(RuleBasedStateMachine):
    """Random clients, workers, crashes and elections; invariants after every step; then, once
    faults stop, every task must reach a terminal state."""

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(nodes=["n1", "n2", "n3"], slots=2, seed=7)
        self.h.elect()
        self.ids: list[str] = []
        self.strays: list[tuple[str, WorkerPool]] = []

    @rule(
        prio=st.sampled_from(list(Priority)),
        delay=st.sampled_from([0, 0, 0, 50, 300]),
        dep=st.booleans(),
        retries=st.integers(0, 2),
    )
    def submit(self, prio: Priority, delay: int, dep: bool, retries: int) -> None:
        deps = (self.ids[-1],) if dep and self.ids else ()
        self.ids.append(self.h.submit(prio, delay_ms=delay, depends_on=deps, max_retries=retries))

    @rule(ms=st.sampled_from([1, 10, 100, 400]))
    def time_passes(self, ms: int) -> None:
        self.h.cycle(ms)

    @rule(data=st.data(), outcome=OUTCOMES)
    def a_handler_ends(self, data: st.DataObject, outcome: Outcome) -> None:
        running = [(n, t) for n, p in sorted(self.h.pools.items()) for t, _ in sorted(p.running)]
        if running:
            node, tid = data.draw(st.sampled_from(running))
            self.h.complete(node, tid, outcome)

    def _own_running(self) -> list[str]:
        leader = self.h.leader
        if leader is None or not leader.leading:
            return []
        return sorted(t for t, _ in self.h.pools[leader.node_id].running)

    @precondition(lambda self: bool(self._own_running()))
    @rule(data=st.data(), outcome=OUTCOMES)
    def a_handler_of_the_leaders_own_node_ends(self, data: st.DataObject, outcome: Outcome) -> None:
        # The drivers' one-round-trip path: OwnEnded frees the slot, its lease goes out with
        # the finish (finish, leases, drain).
        tid = data.draw(st.sampled_from(self._own_running()))
        self.h.complete_own(tid, outcome)

    @invariant()
    def no_node_holds_more_leases_than_slots(self) -> None:
        # What OwnEnded must not break: a slot it frees is leased once, not twice.
        for node, n in self.h.leases_per_node().items():
            assert n <= self.h.slots, f"{node} holds {n} leases on {self.h.slots} slots"

    @rule(data=st.data())
    def a_handler_outlives_its_attempt(self, data: st.DataObject) -> None:
        # A thread: its attempt is settled (interrupted), its slot stays held until it returns.
        running = [(n, t) for n, p in sorted(self.h.pools.items()) for t, _ in sorted(p.running)]
        if running:
            node, tid = data.draw(st.sampled_from(running))
            pool = self.h.pools[node]
            held = pool.held
            self.h.complete(node, tid, Outcome.error("Interrupted", "x"), outlives=True)
            assert pool.held == held + 1
            self.strays.append((node, pool))

    @precondition(lambda self: bool(self.strays))
    @rule(data=st.data())
    def a_stray_thread_returns(self, data: st.DataObject) -> None:
        node, pool = self.strays.pop(data.draw(st.integers(0, len(self.strays) - 1)))
        if self.h.pools.get(node) is pool:  # not crashed meanwhile (a new pool, no strays)
            pool.outlived_handler_returned()
            if self.h.leader is not None:
                self.h.see_nodes()

    @invariant()
    def held_slots_are_not_offered_nor_filled(self) -> None:
        for pool in self.h.pools.values():
            assert len(pool.running) + pool.held <= pool.slots
            assert pool.offered == (pool.slots - pool.held if pool.accepting else 0)

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.h.store.cancel(data.draw(st.sampled_from(self.ids)), self.h.now_ms)

    @rule(node=st.sampled_from(["n1", "n2", "n3"]))
    def crash(self, node: str) -> None:
        self.h.crash_node(node)

    @rule(node=st.sampled_from(["n1", "n2", "n3"]))
    def new_leader(self, node: str) -> None:
        self.h.depose()
        self.h.elect(node)

    @invariant()
    def one_attempt_runs_per_task(self) -> None:
        # No two live executions of a task: the workers holding it agree on a single attempt.
        holders: dict[str, set[int]] = {}
        for pool in self.h.pools.values():
            for (tid, _), run in pool.running.items():
                if run.stop is None:
                    holders.setdefault(tid, set()).add(run.assignment.attempt)
        for tid, attempts in holders.items():
            rec = self.h.store.tasks[tid]
            live = {a for a in attempts if rec.status is Status.RUNNING and a == rec.attempt}
            assert len(live) <= 1

    @invariant()
    def retries_within_policy(self) -> None:
        for rec in self.h.store.tasks.values():
            assert rec.failures <= rec.max_retries + 1
            assert rec.lease_expiries <= 3 + 1
            # A rejection the store applied is never retried by the policy.
            if rec.error.get("kind") == "rejected":
                assert rec.status is Status.DEAD, rec

    @invariant()
    def dependants_never_start_early(self) -> None:
        started = {tid for tid, _, _ in self.h.started}
        for tid in started:
            for dep in self.h.store.tasks[tid].depends_on:
                assert self.h.store.tasks[dep].status is Status.SUCCEEDED

    def teardown(self) -> None:
        for node, pool in self.strays:  # the threads return
            if self.h.pools.get(node) is pool:
                pool.outlived_handler_returned()
        self.strays.clear()
        if self.h.leader is not None:
            self.h.see_nodes()
        # Liveness: faults stop, handlers succeed; everything must end within a bound.
        h = self.h
        for _ in range(400):
            for node, pool in sorted(h.pools.items()):
                for tid, _ in sorted(pool.running):
                    h.complete(node, tid, Outcome.success())
            h.cycle(100)
            if all(r.status in TERMINAL for r in h.store.tasks.values()):
                break
        stuck = {t: r.status for t, r in h.store.tasks.items() if r.status not in TERMINAL}
        assert not stuck, f"tasks never finished: {stuck}"


SchedulerMachine.TestCase.settings = settings(
    max_examples=60,
    stateful_step_count=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_scheduler_properties = SchedulerMachine.TestCase


@given(st.lists(st.sampled_from(list(Priority)), min_size=1, max_size=40))
@settings(max_examples=50, deadline=None)
def test_leases_never_skip_a_better_priority(prios: list[Priority]) -> None:
    h = Harness(nodes=["n1"], slots=1)
    h.elect()
    for p in prios:
        h.submit(p)
    for _ in range(len(prios) + 2):
        h.cycle()
        for tid, _ in list(h.pools["n1"].running):
            h.complete("n1", tid, Outcome.success())
    # Every lease took the best priority queued at that moment.
    for tid, best in h.lease_log:
        assert int(h.store.tasks[tid].priority) <= best


def test_newer_attempt_on_the_same_node_stops_the_older_one() -> None:
    """Found by the simulation (core-B): a node whose attempt lost its lease may be handed the
    next attempt of the same task before the old handler has stopped."""
    from core.worker import Assignment, Interrupt, RunHandler, StopReason, WorkerPool

    pool = WorkerPool("n1", slots=2, lease_ms=1000)
    policy = RetryPolicy()
    old = Assignment("t", 1, "x", 5000, policy, 0, 1000)
    new = Assignment("t", 2, "x", 5000, policy, 0, 3000)
    assert pool.start(old, 0) == [RunHandler(old)]
    effects = pool.start(new, 2000)
    assert effects == [Interrupt("t", 1, StopReason.LEASE_LOST), RunHandler(new)]
    pool.check_invariants()
    # The old handler ends late: nothing is written for it, and the new attempt still runs.
    assert pool.handler_ended("t", 1, Outcome.success(), 2500, random.Random(0)) == []
    assert list(pool.running) == [("t", 2)]


def test_a_handler_that_outlives_its_attempt_holds_its_slot_until_it_returns() -> None:
    from core.worker import Assignment, Finish, WorkerPool

    pool = WorkerPool("n1", slots=2, lease_ms=1000)
    policy = RetryPolicy(max_retries=0)
    a = Assignment("a", 1, "x", 100, policy, 0, 1000)
    b = Assignment("b", 1, "x", 5000, policy, 0, 1000)
    pool.start(a, 0)
    pool.start(b, 0)
    assert pool.handler_outlives("a", 1)
    assert not pool.handler_outlives("zz", 1)  # not running here
    # Its attempt is settled (written) as any other...
    [end] = pool.handler_ended("a", 1, Outcome.error("Interrupted", "x"), 150, random.Random(0))
    assert isinstance(end, Finish) and end.task_id == "a"
    # ...but its slot is neither free nor offered until the handler returns.
    assert (pool.free, pool.offered, pool.busy, pool.held) == (0, 1, 2, 1)
    with pytest.raises(RuntimeError):
        pool.start(Assignment("c", 1, "x", 5000, policy, 0, 1000), 200)
    pool.check_invariants()
    pool.outlived_handler_returned()
    assert (pool.free, pool.offered, pool.busy, pool.held) == (1, 2, 1, 0)
    pool.start(Assignment("c", 1, "x", 5000, policy, 0, 1000), 300)


def test_a_lost_store_answer_makes_the_leader_rebuild() -> None:
    """Found by the simulation (core-A): a drain whose answer is lost took its notifications
    with it; the task would wait in the store forever unless the leader rebuilds."""
    from core.events import StoreLost, Tick

    h = Harness(nodes=["n1"], slots=1)
    sched = h.elect()
    tid = h.submit()
    assert h.store.drain(sched.term, 100)  # applied by the store, answer lost on the way back
    h.feed(StoreLost(h.now_ms))
    assert sched.role is Role.FENCING and not sched.queue
    h.feed(Tick(h.now_ms))  # the store answers again: fence, rebuild, dispatch
    assert sched.role is Role.LEADING
    h.take_all()
    assert [s[0] for s in h.started] == [tid]


# ---- the leader's own node: OwnEnded frees slots, their leases ride with the finishes -------
def _leading_with_backlog(tasks: int) -> tuple[Harness, Scheduler, list[str]]:
    """n1 leads, n1 and n2 run one task each (one slot apiece), the rest wait queued."""
    h = Harness(nodes=["n1", "n2"], slots=1, seed=1)
    sched = h.elect("n1")
    ids = [h.submit() for _ in range(tasks)]
    h.cycle(10)
    return h, sched, ids


def test_own_ended_leases_the_freed_slot_before_the_finish_is_written() -> None:
    h, sched, ids = _leading_with_backlog(4)
    [(first, attempt)] = h.pools["n1"].running
    h.pools["n1"].handler_ended(first, attempt, Outcome.success(), h.now_ms, h.rng)
    effects = sched.step(OwnEnded(((first, attempt),), h.now_ms))
    sched.check_invariants()
    # The store still has the first task running: the lease is decided from the event alone.
    assert h.store.tasks[first].status is Status.RUNNING
    leases = [e for e in effects if isinstance(e, Lease)]
    assert [(e.task_id, e.node_id) for e in leases] == [(ids[2], "n1")]
    assert first in sched.ending and sched.running_on("n1") == 1


def test_own_ended_then_the_drained_end_frees_the_slot_once() -> None:
    h, sched, ids = _leading_with_backlog(5)
    [(first, _)] = h.pools["n1"].running
    assert h.complete_own(first, Outcome.success())  # OwnEnded, finish, lease, drain
    assert h.store.tasks[first].status is Status.SUCCEEDED
    assert not sched.ending
    # One lease on n1 (the slot's new task), counted once: not freed a second time.
    assert sched.running_on("n1") == 1
    assert h.store.tasks[ids[2]].status is Status.RUNNING
    assert h.store.tasks[ids[2]].lease_node == "n1"
    assert h.store.tasks[ids[3]].status is Status.QUEUED


def test_own_ended_ignores_an_attempt_it_does_not_hold() -> None:
    h, sched, _ = _leading_with_backlog(3)
    [(own, attempt)] = h.pools["n1"].running
    [(other, other_attempt)] = h.pools["n2"].running
    stale = ((own, attempt + 1), (own, attempt - 1), (other, other_attempt), ("nope", 1))
    effects = sched.step(OwnEnded(stale, h.now_ms))
    sched.check_invariants()
    assert not sched.ending and not [e for e in effects if isinstance(e, Lease)]
    assert sched.running_on("n1") == 1 and sched.running_on("n2") == 1


def test_a_running_state_after_own_ended_keeps_the_slot_free() -> None:
    h = Harness(nodes=["n1"], slots=1, seed=1)
    sched = h.elect("n1")
    h.submit()
    h.cycle(10)
    [(tid, attempt)] = h.pools["n1"].running
    sched.step(OwnEnded(((tid, attempt),), h.now_ms))
    # A drain answered before the finish landed (another path): the same running attempt.
    sched.step(TasksChanged((h.store.tasks[tid].state(),), h.now_ms))
    sched.check_invariants()
    assert tid in sched.ending and sched.running_on("n1") == 0


class OwnEndsMachine(RuleBasedStateMachine):
    """A backlog on a leader whose own node ends handlers through OwnEnded (the drivers'
    one-round-trip path) beside a node that ends them the ordinary way: no node is ever
    leased more tasks than it has slots, and the cache stays sound (check_invariants)."""

    def __init__(self) -> None:
        super().__init__()
        self.h = Harness(nodes=["n1", "n2"], slots=2, seed=3)
        self.h.elect("n1")

    @rule(n=st.integers(1, 4), prio=st.sampled_from(list(Priority)))
    def submit(self, n: int, prio: Priority) -> None:
        for _ in range(n):
            self.h.submit(prio, max_retries=1)

    @rule(ms=st.sampled_from([1, 10, 400]))
    def time_passes(self, ms: int) -> None:
        self.h.cycle(ms)

    @precondition(lambda self: bool(self.h.pools["n1"].running))
    @rule(data=st.data(), ok=st.booleans())
    def own_handler_ends(self, data: st.DataObject, ok: bool) -> None:
        tid = data.draw(st.sampled_from(sorted(t for t, _ in self.h.pools["n1"].running)))
        self.h.complete_own(tid, Outcome.success() if ok else Outcome.error("E", "x"))

    @precondition(lambda self: bool(self.h.pools["n2"].running))
    @rule(data=st.data())
    def other_handler_ends(self, data: st.DataObject) -> None:
        tid = data.draw(st.sampled_from(sorted(t for t, _ in self.h.pools["n2"].running)))
        self.h.complete("n2", tid, Outcome.success())

    @invariant()
    def leases_within_slots(self) -> None:
        leased = self.h.leases_per_node()
        assert all(n <= self.h.slots for n in leased.values()), leased
        assert self.h.leader is not None
        self.h.leader.check_invariants()

    def teardown(self) -> None:
        h = self.h
        for _ in range(200):
            for tid, _ in sorted(h.pools["n1"].running):
                h.complete_own(tid, Outcome.success())
            for tid, _ in sorted(h.pools["n2"].running):
                h.complete("n2", tid, Outcome.success())
            h.cycle(100)
            if all(r.status in TERMINAL for r in h.store.tasks.values()):
                break
        stuck = {t: r.status for t, r in h.store.tasks.items() if r.status not in TERMINAL}
        assert not stuck, f"tasks never finished: {stuck}"


OwnEndsMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=40, deadline=None)
test_own_ends_properties = OwnEndsMachine.TestCase

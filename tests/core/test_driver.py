"""core.driver's procedures, served synchronously over the store model."""

from __future__ import annotations

import random
from typing import Any

import pytest

from core.driver import (
    ApplyDrainRequest,
    ApplyRequest,
    DrainRequest,
    FinishRequest,
    LeaderStats,
    LiveStatesRequest,
    Procedure,
    RaiseEpochRequest,
    leader_round,
    worker_effects,
)
from core.events import NodeSeen
from core.priority import Priority
from core.scheduler import Role, Scheduler
from core.store_model import NewTask, StoreModel, StoreUnavailable
from core.task import AttemptEnd, Outcome, RetryPolicy, Status
from core.worker import Assignment, Finish, RunHandler, WorkerPool


def _apply(store: StoreModel, ops: tuple[Any, ...]) -> list[Any]:
    answer = []
    for op in ops:
        if hasattr(op, "node_id"):
            answer.append(store.lease(op.term, op.task_id, op.node_id, op.deadline_ms, op.now_ms))
        elif hasattr(op, "target"):
            answer.append(store.expire(op.term, op.task_id, op.attempt, op.now_ms, op.target))
        else:
            answer.append(store.promote(op.term, op.task_id, op.now_ms))
    return answer


def serve(
    proc: Procedure,
    store: StoreModel,
    lose: type[Any] | None = None,
    finishes: tuple[Finish, ...] = (),
    log: list[str] | None = None,
    lost_as: Exception | None = None,
) -> None:
    """Answer each request from the store; for a request of type ``lose``, apply it but throw
    ``lost_as`` in (default StoreUnavailable: the answer got lost on the way back; another
    exception: the driver could not read the answer). ``finishes``: the driver's
    reserved finishes, written ahead of the round's first drain (as the drivers do)."""
    pending = list(finishes)

    def write_finishes() -> None:
        for f in pending:
            store.finish(f.task_id, f.attempt, f.node_id, f.end, f.now_ms)
        pending.clear()

    try:
        request = next(proc)
        while True:
            if log is not None:
                log.append(type(request).__name__)
            if isinstance(request, RaiseEpochRequest):
                answer: Any = store.raise_epoch(request.term, request.holder)
            elif isinstance(request, DrainRequest):
                write_finishes()
                answer = store.drain(request.term, request.count_max)
            elif isinstance(request, ApplyDrainRequest):
                write_finishes()
                applied = _apply(store, request.ops)
                answer = (applied, store.drain(request.term, request.count_max))
            elif isinstance(request, LiveStatesRequest):
                answer = store.live_states(request.after_seq, request.count_max)
            elif isinstance(request, ApplyRequest):
                answer = _apply(store, request.ops)
            else:
                raise AssertionError(f"unexpected {request}")
            if lose is not None and isinstance(request, lose):
                lose = None
                request = proc.throw(lost_as or StoreUnavailable("answer lost"))
            else:
                request = proc.send(answer)
    except StopIteration:
        return


def rounds(sched: Scheduler, store: StoreModel, stats: LeaderStats, now: int, **kw: Any) -> None:
    events = [NodeSeen("n1", 2, None, now)]
    serve(leader_round(sched, True, 1, events, lambda: now, stats), store, **kw)


def test_a_round_elects_fences_rebuilds_and_leases() -> None:
    store, sched, stats = StoreModel(), Scheduler("n1"), LeaderStats()
    store.submit([NewTask("a", "t"), NewTask("b", "t")], 0)
    rounds(sched, store, stats, 10)
    assert sched.role is Role.LEADING and store.epoch == 1
    assert {r.status.value for r in store.tasks.values()} == {"running"}
    assert store.take("n1") is not None


def test_the_next_timer_is_forgotten_once_nothing_is_due() -> None:
    """Bug C of the simulation: a stale timer made the node's leader loop spin."""
    store, sched, stats = StoreModel(), Scheduler("n1"), LeaderStats()
    store.submit([NewTask("a", "t", run_at_ms=50)], 0)
    rounds(sched, store, stats, 10)
    assert stats.timer_at_ms == 50
    rounds(sched, store, stats, 60)  # promoted and leased: only the lease deadline is due
    rounds(sched, store, stats, 61)
    assert stats.timer_at_ms is not None and stats.timer_at_ms > 60
    serve(leader_round(sched, False, 1, [], lambda: 70, stats), store)  # deposed
    assert stats.timer_at_ms is None


def test_a_lost_drain_answer_is_recovered_by_a_rebuild() -> None:
    store, sched, stats = StoreModel(), Scheduler("n1"), LeaderStats()
    rounds(sched, store, stats, 10)
    store.submit([NewTask("a", "t")], 10)
    with pytest.raises(StoreUnavailable):
        rounds(sched, store, stats, 20, lose=DrainRequest)
    assert not store.inbox  # the notification is gone with the lost answer
    rounds(sched, store, stats, 30)
    assert store.tasks["a"].status.value == "running"


class ScriptError(RuntimeError):
    """What a driver raises for an error reply (node/store.py's StoreError, say)."""


def test_an_error_answer_is_recovered_by_a_rebuild_as_a_lost_one() -> None:
    # The store applied the drain (the notification is off the inbox) but its answer came
    # back as an error: without a rebuild, task a would wait unseen until the next election.
    store, sched, stats = StoreModel(), Scheduler("n1"), LeaderStats()
    rounds(sched, store, stats, 10)
    store.submit([NewTask("a", "t")], 10)
    with pytest.raises(ScriptError):
        rounds(sched, store, stats, 20, lose=DrainRequest, lost_as=ScriptError("bad reply"))
    assert not store.inbox and not sched.leading
    rounds(sched, store, stats, 30)
    sched.check_invariants()
    assert store.tasks["a"].status is Status.RUNNING


def _own_round(
    store: StoreModel, sched: Scheduler, stats: LeaderStats, now: int, **kw: Any
) -> list[str]:
    """A round in which the handler of n1's running task ended: its finish is reserved and
    reported as own_ends, as the drivers do. Answers the requests the round made."""
    [running] = [r for r in store.tasks.values() if r.status.value == "running"]
    end = Finish(running.id, running.attempt, "n1", AttemptEnd(Status.SUCCEEDED, 0), now)
    log: list[str] = []
    own = ((running.id, running.attempt),)
    events = [NodeSeen("n1", 1, None, now)]
    proc = leader_round(sched, True, 1, events, lambda: now, stats, own)
    serve(proc, store, finishes=(end,), log=log, **kw)
    return log


def test_own_ends_lease_the_freed_slot_in_the_same_round_trip_as_the_finish() -> None:
    store, sched, stats = StoreModel(), Scheduler("n1"), LeaderStats()
    store.submit([NewTask("a", "t"), NewTask("b", "t"), NewTask("c", "t")], 0)
    serve(leader_round(sched, True, 1, [NodeSeen("n1", 1, None, 10)], lambda: 10, stats), store)
    assert store.tasks["a"].status is Status.RUNNING
    store.submit([NewTask("d", "t", priority=Priority.HIGH)], 15)  # in the inbox, not drained
    log = _own_round(store, sched, stats, 20)
    # One store request: the finish, the lease of its slot, the drain. The lease went to the
    # best task the leader knew of (b); d, still in the inbox, waits for the next free slot.
    assert log == ["ApplyDrainRequest"]
    assert store.tasks["a"].status is Status.SUCCEEDED
    assert store.tasks["b"].status is Status.RUNNING and store.tasks["b"].lease_node == "n1"
    assert sched.running_on("n1") == 1 and not sched.ending
    sched.check_invariants()
    log = _own_round(store, sched, stats, 30)
    assert store.tasks["d"].status is Status.RUNNING  # priority kept once it is known
    assert store.tasks["c"].status is Status.QUEUED


def test_a_lost_apply_drain_answer_is_recovered_by_a_rebuild() -> None:
    store, sched, stats = StoreModel(), Scheduler("n1"), LeaderStats()
    store.submit([NewTask("a", "t"), NewTask("b", "t")], 0)
    serve(leader_round(sched, True, 1, [NodeSeen("n1", 1, None, 10)], lambda: 10, stats), store)
    with pytest.raises(StoreUnavailable):
        _own_round(store, sched, stats, 20, lose=ApplyDrainRequest)
    assert not sched.leading and not sched.ending  # it starts the term over from the store
    # The store applied it all (the answer was lost): a finished, b leased to n1. The next
    # rounds rebuild and count b's slot as busy again.
    assert store.tasks["a"].status is Status.SUCCEEDED
    rounds(sched, store, stats, 30)
    sched.check_invariants()
    assert sched.leading and sched.running_on("n1") == 1


def test_worker_effects_tell_the_pool_once_the_store_answers_an_end() -> None:
    pool = WorkerPool("n1", slots=1, lease_ms=3000)
    a = Assignment("t", 1, "sim", 2000, RetryPolicy(3, 50, 1000), 0, 3000)
    assert pool.start(a, 0) == [RunHandler(a)]
    ends = pool.handler_ended("t", 1, Outcome.success(), 10, random.Random(0))
    # Unanswered (the store went away): the end stays on its way, the attempt is not rerun.
    proc = worker_effects(pool, ends)
    assert isinstance(next(proc), FinishRequest)
    with pytest.raises(StoreUnavailable):
        proc.throw(StoreUnavailable("finish"))
    assert pool.start(a, 20) == []
    # Sent again and answered: a later hand-over of the attempt sends that end once more.
    proc = worker_effects(pool, ends)
    next(proc)
    with pytest.raises(StopIteration):
        proc.send(True)
    assert pool.start(a, 30) == ends

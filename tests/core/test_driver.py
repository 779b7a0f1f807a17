"""core.driver's procedures, served synchronously over the store model."""

from __future__ import annotations

from typing import Any

import pytest

from core.driver import (
    ApplyRequest,
    DrainRequest,
    LeaderStats,
    LiveStatesRequest,
    Procedure,
    RaiseEpochRequest,
    leader_round,
)
from core.events import NodeSeen
from core.scheduler import Role, Scheduler
from core.store_model import NewTask, StoreModel, StoreUnavailable


def serve(proc: Procedure, store: StoreModel, lose: type[Any] | None = None) -> None:
    """Answer each request from the store; for a request of type ``lose``, apply it but throw
    StoreUnavailable in (the answer got lost on the way back)."""
    try:
        request = next(proc)
        while True:
            if isinstance(request, RaiseEpochRequest):
                answer: Any = store.raise_epoch(request.term, request.holder)
            elif isinstance(request, DrainRequest):
                answer = store.drain(request.term, request.count_max)
            elif isinstance(request, LiveStatesRequest):
                answer = store.live_states(request.after_seq, request.count_max)
            elif isinstance(request, ApplyRequest):
                answer = []
                for op in request.ops:
                    if hasattr(op, "node_id"):
                        answer.append(
                            store.lease(op.term, op.task_id, op.node_id, op.deadline_ms, op.now_ms)
                        )
                    elif hasattr(op, "target"):
                        answer.append(
                            store.expire(op.term, op.task_id, op.attempt, op.now_ms, op.target)
                        )
                    else:
                        answer.append(store.promote(op.term, op.task_id, op.now_ms))
            else:
                raise AssertionError(f"unexpected {request}")
            if lose is not None and isinstance(request, lose):
                lose = None
                request = proc.throw(StoreUnavailable("answer lost"))
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

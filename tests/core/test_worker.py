"""The worker pool's lease self-check: a handler runs only while the lease it holds is one the
store accepted (the assignment's deadline, then each accepted heartbeat's). The tests keep their
own books of what the store accepted, from the effects the pool asked for."""

from __future__ import annotations

import random

from hypothesis import given, settings
from hypothesis import strategies as st

from core.task import Outcome, RetryPolicy
from core.worker import Assignment, Heartbeat, Interrupt, RunHandler, StopReason, WorkerPool

LEASE_MS = 900
T0 = 1_000_000


def assignment(tid: str, attempt: int, deadline_ms: int) -> Assignment:
    return Assignment(tid, attempt, "t", 60_000, RetryPolicy(), 0, deadline_ms)


def test_unrenewed_lease_stops_the_handler_at_its_deadline_and_writes_nothing() -> None:
    pool = WorkerPool("n1", slots=1, lease_ms=LEASE_MS)
    assert pool.start(assignment("a", 1, T0 + LEASE_MS), T0) == [
        RunHandler(assignment("a", 1, T0 + LEASE_MS))
    ]
    # Heartbeats go out, none is answered (the store is unreachable): still running just
    # before the deadline, stopped at it.
    beats = [e for e in pool.tick(T0 + LEASE_MS // 3) if isinstance(e, Heartbeat)]
    assert len(beats) == 1
    assert not [e for e in pool.tick(T0 + LEASE_MS - 1) if isinstance(e, Interrupt)]
    assert pool.next_due_ms() is not None and pool.next_due_ms() <= T0 + LEASE_MS  # type: ignore[operator]
    stops = [e for e in pool.tick(T0 + LEASE_MS) if isinstance(e, Interrupt)]
    assert stops == [Interrupt("a", 1, StopReason.LEASE_LOST)]
    # Its end is not written: the leader's expiry counts the attempt and runs it again.
    ended = pool.handler_ended("a", 1, Outcome.success(), T0 + LEASE_MS + 5, random.Random(0))
    assert ended == []
    assert pool.free == 1


def test_an_accepted_heartbeat_keeps_the_handler_running() -> None:
    pool = WorkerPool("n1", slots=1, lease_ms=LEASE_MS)
    pool.start(assignment("a", 1, T0 + LEASE_MS), T0)
    [beat] = [e for e in pool.tick(T0 + 300) if isinstance(e, Heartbeat)]
    pool.lease_held(beat.task_id, beat.attempt, beat.deadline_ms)
    assert not [e for e in pool.tick(T0 + LEASE_MS + 100) if isinstance(e, Interrupt)]
    assert pool.running[("a", 1)].stop is None
    assert [e for e in pool.tick(beat.deadline_ms) if isinstance(e, Interrupt)] == [
        Interrupt("a", 1, StopReason.LEASE_LOST)
    ]


# (advance ms, which heartbeats the store accepts: a bit per beat of that tick, what starts:
# 0 nothing, 1 a new task, 2 a newer attempt of the last task started, as after its lease
# expired at the leader while its handler here still ran)
steps_st = st.lists(
    st.tuples(st.integers(1, LEASE_MS), st.integers(0, 2**8 - 1), st.integers(0, 2)),
    min_size=1,
    max_size=40,
)


@given(steps_st)
@settings(max_examples=200, deadline=None)
def test_a_handler_runs_only_under_a_lease_the_store_accepted(
    steps: list[tuple[int, int, int]],
) -> None:
    pool = WorkerPool("n1", slots=3, lease_ms=LEASE_MS)
    now = T0
    accepted: dict[tuple[str, int], int] = {}  # the test's books: the store's deadline
    stopped: set[tuple[str, int]] = set()
    next_id = 0
    last: tuple[str, int] | None = None  # the last task started, and its attempt

    def ended(task_id: str, attempt: int) -> None:
        stopped.add((task_id, attempt))
        pool.handler_ended(task_id, attempt, Outcome.error("I", "x"), now, random.Random(0))

    for advance, accept_bits, start in steps:
        if start and pool.free > 0:
            if start == 2 and last is not None:
                tid, attempt = last[0], last[1] + 1
            else:
                tid, attempt = f"t{next_id}", 1
                next_id += 1
            # The leader's clock may differ a little from ours: the deadline it wrote.
            deadline = now + LEASE_MS - (next_id * 37) % 100
            older = {k for k, r in pool.running.items() if k[0] == tid and r.stop is None}
            started = pool.start(assignment(tid, attempt, deadline), now)
            # A newer attempt's lease is the store's word that the older ones lost theirs.
            interrupted = {(e.task_id, e.attempt) for e in started if isinstance(e, Interrupt)}
            assert interrupted == older
            for task_id, old_attempt in sorted(interrupted):
                accepted[(task_id, old_attempt)] = now
                ended(task_id, old_attempt)
            accepted[(tid, attempt)] = deadline
            last = (tid, attempt)
        now += advance
        effects = pool.tick(now)
        bit = 0
        for e in effects:
            if isinstance(e, Interrupt):
                key = (e.task_id, e.attempt)
                assert e.reason is StopReason.LEASE_LOST
                assert now >= accepted[key], "stopped while the store still held its lease"
                ended(e.task_id, e.attempt)
            elif isinstance(e, Heartbeat):
                key = (e.task_id, e.attempt)
                if accept_bits >> (bit % 8) & 1 and now < accepted[key]:
                    # The store extends only a lease it still holds.
                    accepted[key] = max(accepted[key], e.deadline_ms)
                    pool.lease_held(e.task_id, e.attempt, e.deadline_ms)
                bit += 1
        for key, run in pool.running.items():
            if run.stop is None:
                assert now < accepted[key], f"{key} runs past the lease the store holds"
        pool.check_invariants()


def test_an_attempt_handed_over_again_runs_once() -> None:
    # A store restart that lost its last second of writes (AOF everysec) can put an assignment
    # this node already took back on its list: the second take must not start a second
    # handler of the same attempt, nor take a slot, nor fail the take loop.
    pool = WorkerPool("n1", slots=2, lease_ms=LEASE_MS)
    first = assignment("a", 1, T0 + LEASE_MS)
    assert pool.start(first, T0) == [RunHandler(first)]
    assert pool.start(assignment("a", 1, T0 + LEASE_MS - 500), T0 + 10) == []
    assert pool.free == 1 and list(pool.running) == [("a", 1)]
    assert pool.running[("a", 1)].assignment == first
    assert pool.redelivered == 1
    pool.check_invariants()
    # A newer attempt still starts (and stops the older one).
    effects = pool.start(assignment("a", 2, T0 + 2 * LEASE_MS), T0 + 20)
    assert [type(e).__name__ for e in effects] == ["Interrupt", "RunHandler"]


def test_an_attempt_that_ran_here_is_not_run_again_and_its_end_goes_again() -> None:
    # Run, ended, its completion on its way (the store went down and came back from its last
    # fsync, with the lease and the assignment back): the end the driver keeps sending settles
    # that lease. Running it again would make the old end land while the new run goes on, and
    # the task move on to a next attempt beside it.
    pool = WorkerPool("n1", slots=1, lease_ms=LEASE_MS)
    a = assignment("a", 2, T0 + LEASE_MS)
    assert pool.start(a, T0) == [RunHandler(a)]
    [finish] = pool.handler_ended("a", 2, Outcome.success(), T0 + 10, random.Random(0))
    assert pool.start(a, T0 + 20) == [] and pool.redelivered == 1 and pool.free == 1
    # Answered, then handed over again (a restore lost it, or the take raced the end over
    # another connection): the same end goes again, never a second run.
    pool.end_answered("a", 2)
    assert pool.start(a, T0 + 30) == [finish] and pool.redelivered == 2
    # Once no store can hold that lease (the lease's length after the end), it is forgotten.
    pool.tick(T0 + 10 + LEASE_MS)
    later = assignment("a", 2, T0 + 3 * LEASE_MS)
    assert pool.start(later, T0 + 11 + LEASE_MS) == [RunHandler(later)]
    assert finish.attempt == 2


def test_an_attempt_handed_over_again_while_it_runs_trusts_the_stores_deadline() -> None:
    pool = WorkerPool("n1", slots=2, lease_ms=LEASE_MS)
    a = assignment("a", 1, T0 + LEASE_MS)
    pool.start(a, T0)
    pool.lease_held("a", 1, T0 + 2 * LEASE_MS)  # a heartbeat the store later lost
    # The restored store holds the first deadline only: a beat goes out now, and without an
    # answer the handler stops at that deadline, not at the lost one.
    assert pool.start(assignment("a", 1, T0 + LEASE_MS), T0 + 100) == []
    beats = [e for e in pool.tick(T0 + 100) if isinstance(e, Heartbeat)]
    assert [(b.task_id, b.attempt) for b in beats] == [("a", 1)]
    stops = [e for e in pool.tick(T0 + LEASE_MS) if isinstance(e, Interrupt)]
    assert [(e.task_id, e.reason) for e in stops] == [("a", StopReason.LEASE_LOST)]


def test_an_assignment_taken_after_its_lease_ran_out_is_not_started() -> None:
    pool = WorkerPool("n1", slots=1, lease_ms=LEASE_MS)
    # Taken from the assignment list by a node that was paused (or down) past the deadline.
    assert pool.start(assignment("a", 1, T0 + LEASE_MS), T0 + LEASE_MS) == []
    assert pool.free == 1 and not pool.running and pool.lapsed_skipped == 1
    # One just in time starts.
    assert pool.start(assignment("b", 1, T0 + LEASE_MS), T0 + LEASE_MS - 1) == [
        RunHandler(assignment("b", 1, T0 + LEASE_MS))
    ]


def test_a_run_taken_with_little_lease_left_is_renewed_before_it_lapses() -> None:
    pool = WorkerPool("n1", slots=2, lease_ms=LEASE_MS)  # a beat every 300 ms
    pool.start(assignment("a", 1, T0 + LEASE_MS), T0)  # the shared schedule: T0 + 300
    # Taken late: 400 ms of its lease left, less than the wait for the next shared beat plus
    # the time that beat needs to land.
    pool.start(assignment("b", 1, T0 + 150 + 400), T0 + 150)
    due = pool.next_due_ms()
    assert due is not None and due <= T0 + 150
    beats = [e for e in pool.tick(due) if isinstance(e, Heartbeat)]
    assert {b.task_id for b in beats} == {"a", "b"}
    for b in beats:
        pool.lease_held(b.task_id, b.attempt, b.deadline_ms)
    assert not [e for e in pool.tick(T0 + 150 + 400) if isinstance(e, Interrupt)]


def test_a_run_stopped_by_shutdown_whose_lease_lapses_is_not_stopped_twice() -> None:
    pool = WorkerPool("n1", slots=1, lease_ms=LEASE_MS)
    pool.start(assignment("a", 1, T0 + LEASE_MS), T0)
    # Shutdown with no grace: the handler is told to stop, and goes on (a cleanup, a thread).
    assert [e for e in pool.shutdown(T0 + 10, 0) if isinstance(e, Interrupt)] == [
        Interrupt("a", 1, StopReason.SHUTDOWN)
    ]
    # Its heartbeats go unanswered; the driver is woken for the lapse, which stops nothing more.
    due = pool.next_due_ms()
    assert due is not None and due <= T0 + LEASE_MS
    assert not [e for e in pool.tick(T0 + LEASE_MS) if isinstance(e, Interrupt)]
    assert pool.running[("a", 1)].stop is StopReason.LEASE_LOST
    # Past its lease, its end is not written (the task may run elsewhere by now).
    assert pool.handler_ended("a", 1, Outcome.success(), T0 + LEASE_MS + 5, random.Random(0)) == []


def test_a_cancel_stops_the_attempt_it_names_and_an_unnamed_one_stops_every_run() -> None:
    pool = WorkerPool("n1", slots=2, lease_ms=LEASE_MS)
    pool.start(assignment("a", 2, T0 + LEASE_MS), T0)
    pool.start(assignment("b", 1, T0 + LEASE_MS), T0)
    # A cancel of attempt 1, read after the task was retried by hand and attempt 2 leased here.
    assert pool.cancelled("a", 1) == []
    assert pool.cancelled("b", 1) == [Interrupt("b", 1, StopReason.CANCELLED)]
    assert pool.cancelled("b", 1) == []  # already stopped
    assert pool.cancelled("c", None) == []  # not running here
    # From an older node, the id alone: whichever attempt runs.
    assert pool.cancelled("a", None) == [Interrupt("a", 2, StopReason.CANCELLED)]
    pool.check_invariants()

"""core.pacing: the loop pacing both drivers share (the leader's own finishes, the take loop)."""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from core.pacing import (
    LEADER_IDLE_S,
    LOCAL_FINISHES_PER_DRAIN_MAX,
    OWN_SEEN_PERIOD_MS,
    STORE_LOST_HANDOVER_MAX_MS,
    STORE_LOST_HANDOVER_MS,
    TAKE_LIST_CHECK_S,
    HandoverWatch,
    LocalFinishes,
    TakePolicy,
    TakeStep,
    leader_wait_s,
    own_seen_due,
    start_round,
)
from core.task import AttemptEnd, Status
from core.worker import Finish


def finish(i: int) -> Finish:
    return Finish(f"t{i}", 1, "n1", AttemptEnd(Status.SUCCEEDED, 0), i)


# Operations on the queue: add n finishes; a round starts (reserve, leading or not), drains
# (with its reservation, or none), ends (gives back what it did not send); flush (leading or
# not); take all.
OPS = st.lists(
    st.one_of(
        st.tuples(st.just("add"), st.integers(1, 2 * LOCAL_FINISHES_PER_DRAIN_MAX + 5)),
        st.tuples(st.just("reserve"), st.booleans()),
        st.tuples(st.just("drain"), st.integers(-1, 2)),
        st.tuples(st.just("end"), st.integers(0, 2)),
        st.tuples(st.just("flush"), st.booleans()),
        st.tuples(st.just("all"), st.just(0)),
    ),
    max_size=16,
)


@given(OPS, st.integers(1, 3))
@settings(max_examples=500)
def test_local_finishes_leave_once_each_oldest_first_at_most_a_drains_worth(
    ops: list[tuple[str, int]], in_flight_max: int
) -> None:
    q: LocalFinishes[int] = LocalFinishes()
    added: list[int] = []
    out: list[int] = []
    rounds: list[tuple[list[tuple[Finish, int]], list[int]]] = []  # reservation, told of
    # Two rounds held finishes at once (the newer may send first), or finishes left while a
    # round held older ones: out may leave order from then on.
    overlapped = False
    sent = 0
    for op, arg in ops:
        if op == "add":
            for _ in range(arg):
                i = len(added)
                q.add(finish(i), i)
                added.append(i)
        elif op == "reserve":
            before = len(q)
            reservation, more = q.reserve(bool(arg), len(rounds), in_flight_max)
            told = [int(tid[1:]) for tid, _ in LocalFinishes.ends(reservation)]
            assert told == [w for _, _, w in reservation]
            share = min(before, LOCAL_FINISHES_PER_DRAIN_MAX) if arg else 0
            if not rounds and in_flight_max > 1 and share > 1:
                share = (share + 1) // 2  # half now, the rest in a round beside it
            assert len(told) == share
            assert len(q) == before - share
            assert more == (len(q) > 0 and bool(arg))
            if reservation and any(r for r, _ in rounds):
                overlapped = True
            rounds.append((reservation, told))
        elif op == "drain":
            before = len(q)
            if 0 <= arg < len(rounds):
                reservation, told = rounds[arg]
                rounds[arg] = (reservation, [])
            else:
                reservation, told = [], []
            batch, more = q.for_drain(reservation)
            if told:
                # A round's first drain carries exactly what the scheduler was told of.
                assert [w for _, w in batch] == told and not more and not reservation
            else:
                assert len(batch) == min(before, LOCAL_FINISHES_PER_DRAIN_MAX)
                assert more == (len(q) > 0)
            out += [w for _, w in batch]
        elif op == "end":
            if arg < len(rounds):
                reservation, _ = rounds.pop(arg)
                before = len(q)
                back = [w for _, _, w in reservation]
                q.unreserve(reservation)
                assert not reservation and len(q) == before + len(back)
                assert set(back) <= {w for _, w in q}  # in line again (in order: below)
        elif op == "flush":
            before = len(q)
            batch = q.to_flush(leading=bool(arg))
            assert len(batch) == (0 if arg else before)
            out += [w for _, w in batch]
        else:
            out += [w for _, w in q.take_all()]
        if len(out) > sent and any(r for r, _ in rounds):
            overlapped = True
        sent = len(out)
        queued = [w for _, w in q]
        assert queued == sorted(queued)  # oldest first
        held = [w for r, _ in rounds for _, _, w in r]
        # None leaves twice, none is lost, each carries its own waiter.
        assert sorted(out + queued + held) == added
        if not overlapped:
            assert out == added[: len(out)]
    for f, w in q:
        assert f.task_id == f"t{w}"


def test_rounds_start_alone_when_woken_and_beside_one_only_for_own_ends() -> None:
    assert start_round(0, 2, True, False, False)
    assert not start_round(0, 2, False, True, True)  # not woken, timer not due
    assert start_round(1, 2, False, True, True)
    assert not start_round(1, 2, True, True, False)  # a ring waits for the round in flight
    assert not start_round(1, 2, True, False, True)  # not steady: no election beside a round
    assert not start_round(2, 2, True, True, True)
    assert not start_round(1, 1, True, True, True)  # an unordered link: one at a time


def test_reservations_given_back_in_any_order_keep_the_line_oldest_first() -> None:
    """Found by the property test above: two rounds hold a finish each and end before their
    drains, the older one first; the line must not put the newer one ahead."""
    for first_back in (0, 1):
        q: LocalFinishes[int] = LocalFinishes()
        q.add(finish(0), 0)
        a, _ = q.reserve(leading=True)
        q.add(finish(1), 1)
        b, _ = q.reserve(leading=True)
        q.add(finish(2), 2)
        rounds = [a, b]
        q.unreserve(rounds[first_back])
        q.unreserve(rounds[1 - first_back])
        assert [w for _, w in q] == [0, 1, 2]


def test_local_finishes_are_wanted_only_while_leading_with_loops_running() -> None:
    assert LocalFinishes.wanted(leading=True, loops_stopped=False)
    assert not LocalFinishes.wanted(leading=True, loops_stopped=True)
    assert not LocalFinishes.wanted(leading=False, loops_stopped=False)


@given(st.one_of(st.none(), st.integers(-10_000, 10_000)), st.integers(0, 10_000))
def test_leader_wait_never_exceeds_idle_nor_passes_the_timer(
    timer_at: int | None, now: int
) -> None:
    wait = leader_wait_s(None if timer_at is None else now + timer_at, now)
    assert 0.0 <= wait <= LEADER_IDLE_S
    if timer_at is not None:
        assert wait <= max(0.0, timer_at / 1000)
        if 0 <= timer_at <= LEADER_IDLE_S * 1000:
            assert wait == timer_at / 1000


def test_own_seen_due_on_first_on_slot_change_and_after_the_period() -> None:
    assert own_seen_due(None, 5, 0)
    assert not own_seen_due((1000, 5), 5, 1000 + OWN_SEEN_PERIOD_MS - 1)
    assert own_seen_due((1000, 5), 5, 1000 + OWN_SEEN_PERIOD_MS)
    assert own_seen_due((1000, 5), 0, 1001)


@given(
    st.lists(
        st.tuples(st.integers(-2, 8), st.booleans(), st.booleans(), st.floats(0, 0.05)),
        max_size=40,
    )
)
def test_take_policy_never_pulls_without_a_free_slot_and_paces_the_leaders_list(
    steps: list[tuple[int, bool, bool, float]],
) -> None:
    policy = TakePolicy()
    now = 0.0
    last_leader_take: float | None = None
    for free, direct, leading, dt in steps:
        now += dt
        plan = policy.next(free, direct, leading, now)
        if free <= 0:
            assert plan.step is TakeStep.WAIT_SLOT  # no prefetch, ever
            continue
        if direct:
            assert plan.step is TakeStep.START_DIRECT  # our own leader's leases come first
            continue
        if plan.step is TakeStep.TAKE:
            assert plan.count == free
            assert plan.block_one == (not leading)
            if leading:
                if last_leader_take is not None:
                    assert now - last_leader_take >= TAKE_LIST_CHECK_S - 1e-9
                last_leader_take = now
        else:
            assert plan.step is TakeStep.SLEEP and leading
            assert last_leader_take is not None
            assert abs(now + plan.sleep_s - (last_leader_take + TAKE_LIST_CHECK_S)) < 1e-9


@given(
    st.lists(
        st.tuples(st.booleans(), st.booleans(), st.integers(0, 4000), st.booleans()),
        max_size=80,
    ),
)
def test_handover_only_after_leading_that_long_without_reaching_the_store(
    rounds: list[tuple[bool, bool, int, bool]],
) -> None:
    watch = HandoverWatch()
    now = 0
    reached_at: int | None = None  # when, leading, we last reached the store or began to lead
    last_handover: int | None = None
    fruitless = 0  # handovers since the store last answered
    for leads, reached, took, registry_answered in rounds:
        if registry_answered:
            watch.store_answered()
            fruitless = 0
        started, now = now, now + took
        go = watch.after_round(leads, reached, started, now)
        if not leads:
            reached_at = None
            assert not go
            continue
        if reached:
            reached_at = now
            fruitless = 0
            assert not go
            continue
        if reached_at is None:
            reached_at = started
        wait = min(STORE_LOST_HANDOVER_MAX_MS, STORE_LOST_HANDOVER_MS * 2**fruitless)
        assert go == (now - reached_at >= wait)
        if go:
            if last_handover is not None:
                assert now - last_handover >= STORE_LOST_HANDOVER_MS
            last_handover = reached_at = now
            fruitless += 1


def test_with_the_store_down_for_good_handovers_slow_down_to_the_cap() -> None:
    watch = HandoverWatch()
    t = 0
    handovers = []
    while t < 200_000:
        if watch.after_round(True, False, t, t + 100):
            handovers.append(t + 100)
        t += 100
    gaps = [b - a for a, b in itertools.pairwise([0, *handovers])]
    assert gaps[:5] == [2000, 4000, 8000, 16000, 30000]
    assert set(gaps[4:]) == {STORE_LOST_HANDOVER_MAX_MS}
    # Leadership moves on; the store answers this node again (its registry loop), then it
    # leads once more and finds the store gone: it hands over after 2 s, not 30 s.
    assert not watch.after_round(False, True, t, t + 100)
    watch.store_answered()
    t += 100
    assert not watch.after_round(True, False, t, t + 1900)
    assert watch.after_round(True, False, t + 1900, t + 2000)


def test_handover_after_the_period_of_failed_rounds_and_not_before() -> None:
    watch = HandoverWatch()
    assert not watch.after_round(True, True, 0, 10)
    t = 10
    went = []
    while t < 10 + 3 * STORE_LOST_HANDOVER_MS:
        went.append((t + 200, watch.after_round(True, False, t, t + 200)))
        t += 200
    handovers = [at for at, go in went if go]
    assert handovers and handovers[0] - 10 >= STORE_LOST_HANDOVER_MS
    assert handovers[0] - 10 < STORE_LOST_HANDOVER_MS + 200
    assert all(b - a >= STORE_LOST_HANDOVER_MS for a, b in itertools.pairwise(handovers))

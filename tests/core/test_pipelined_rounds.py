"""Leader rounds in flight at once (core.pacing.LEADER_ROUNDS_IN_FLIGHT_MAX), over the store
model: the real ``leader_round`` procedures, started as ``start_round`` says, their requests on
one FIFO link that the store applies in order, their answers fed back in that order, at moments
hypothesis picks. So a round is decided (own ends freed, slots leased) before the answers of
the round ahead of it are in: the scheduler must stay sound, no node may ever hold more leases
than slots, no task two live attempts, and every task must end once faults stop.
"""

from __future__ import annotations

import random
from collections import deque
from dataclasses import dataclass, field
from typing import Any

from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from core.driver import (
    ApplyDrainRequest,
    ApplyRequest,
    DrainRequest,
    LeaderStats,
    LiveStatesRequest,
    Procedure,
    RaiseEpochRequest,
    leader_round,
)
from core.events import NodeSeen
from core.pacing import LEADER_ROUNDS_IN_FLIGHT_MAX, LocalFinishes, Reservation, start_round
from core.priority import Priority
from core.scheduler import Scheduler, SchedulerConfig
from core.store_model import NewTask, StoreModel, StoreUnavailable, Taken
from core.task import Outcome, Status
from core.worker import Finish, Release, WorkerPool
from tests.core.harness import leases_per_node, worker_ticks

LEADER, OTHER = "n1", "n2"
SLOTS = 2
LEASE_MS = 1000
TERMINAL = {Status.SUCCEEDED, Status.DEAD, Status.CANCELLED}
LOST = object()  # an answer the link lost (the store applied the request)


@dataclass
class Round:
    proc: Procedure
    reservation: Reservation[None]
    # The finishes the round's requests carried, per request on the wire (as the drivers
    # hand them to the store ahead of a drain).
    sent: deque[list[Finish]] = field(default_factory=deque)


class PipelinedRounds:
    """The node driver's leader loop and take path, without I/O: what NodeRuntime does."""

    def __init__(self, seed: int) -> None:
        self.now_ms = 1_000_000
        self.rng = random.Random(seed)
        self.store = StoreModel()
        self.sched = Scheduler(
            LEADER,
            SchedulerConfig(lease_ms=LEASE_MS, expire_grace_ms=50, node_timeout_ms=5 * LEASE_MS),
        )
        self.stats = LeaderStats()
        self.pools = {n: WorkerPool(n, SLOTS, LEASE_MS) for n in (LEADER, OTHER)}
        self.finishes: LocalFinishes[None] = LocalFinishes()
        self.direct: deque[Taken] = deque()
        self.rounds: list[Round] = []
        # The link: requests sent and not yet applied, then answers not yet fed, both FIFO.
        self.wire: deque[tuple[Round, Any]] = deque()
        self.back: deque[tuple[Round, Any, Any]] = deque()
        self.next_id = 0
        self.leads, self.term = True, 1  # what Raft says

    # ---- clients and workers
    def submit(self, priority: Priority) -> str:
        self.next_id += 1
        task_id = f"t{self.next_id:04d}"
        new = NewTask(task_id, "x", priority=priority, max_retries=1, backoff_base_ms=10)
        self.store.submit([new], self.now_ms)
        return task_id

    def start(self, node: str, taken: Taken) -> None:
        # Its RunHandler: the handler now runs (its end is a rule). An Interrupt of an older
        # attempt here only stops that handler, which ends when a rule says so.
        self.pools[node].start(taken.assignment(), self.now_ms)

    def start_direct(self) -> None:
        pool = self.pools[LEADER]
        while self.direct and pool.free > 0:
            self.start(LEADER, self.direct.popleft())

    def handler_ends(self, node: str, task_id: str, attempt: int, ok: bool) -> None:
        outcome = Outcome.success() if ok else Outcome.error("E", "x")
        pool = self.pools[node]
        for effect in pool.handler_ended(task_id, attempt, outcome, self.now_ms, self.rng):
            if isinstance(effect, Finish):
                if node == LEADER and LocalFinishes.wanted(self.sched.leading, False):
                    self.finishes.add(effect, None)  # rides a drain of a leader round
                else:
                    e = effect
                    self.store.finish(e.task_id, e.attempt, e.node_id, e.end, e.now_ms)
            elif isinstance(effect, Release):
                e2 = effect
                self.store.release(e2.task_id, e2.attempt, e2.node_id, e2.now_ms)
        self.start_direct()

    def take(self) -> None:
        pool = self.pools[OTHER]
        if pool.free < 1:
            return
        for taken in self.store.take_many(OTHER, pool.free):
            self.start(OTHER, taken)

    def worker_ticks(self) -> None:
        worker_ticks(self.store, self.pools, self.now_ms)

    # ---- the leader loop
    def may_start(self, woken: bool) -> bool:
        sched = self.sched
        steady = self.leads and sched.leading and sched.term == self.term
        return start_round(
            len(self.rounds), LEADER_ROUNDS_IN_FLIGHT_MAX, woken, steady, bool(self.finishes)
        )

    def start_round(self) -> None:
        reservation, _ = self.finishes.reserve(
            self.sched.leading, len(self.rounds), LEADER_ROUNDS_IN_FLIGHT_MAX
        )
        seen = [NodeSeen(n, p.offered, None, self.now_ms) for n, p in sorted(self.pools.items())]
        now = self.now_ms
        ends = LocalFinishes.ends(reservation)
        proc = leader_round(self.sched, self.leads, self.term, seen, lambda: now, self.stats, ends)
        r = Round(proc, reservation)
        self.rounds.append(r)
        self.advance(r, lambda: next(proc))

    def advance(self, r: Round, step: Any) -> None:
        """Run the round's procedure to its next request and send it, or end the round."""
        try:
            request = step()
        except StopIteration:
            self.end(r)
            # As the runtime after a round: finishes no drain of ours will carry go alone.
            for f, _ in self.finishes.to_flush(self.sched.leading):
                self.store.finish(f.task_id, f.attempt, f.node_id, f.end, f.now_ms)
            return
        except StoreUnavailable:
            self.end(r)
            return
        finishes: list[Finish] = []
        if isinstance(request, ApplyDrainRequest | DrainRequest):
            batch, _ = self.finishes.for_drain(r.reservation)
            finishes = [f for f, _ in batch]
        r.sent.append(finishes)
        self.wire.append((r, request))

    def end(self, r: Round) -> None:
        self.finishes.unreserve(r.reservation)
        self.rounds.remove(r)
        if self.stats.epoch_refused_term:
            # As the drivers: our term is below the stored epoch; Raft stands again above it.
            self.stats.epoch_refused_term = 0
            self.term = max(self.term, self.store.epoch) + 1

    def store_applies(self, lose: bool) -> None:
        r, request = self.wire.popleft()
        store = self.store
        taken: list[Taken] = []
        for f in r.sent.popleft():
            store.finish(f.task_id, f.attempt, f.node_id, f.end, f.now_ms)
        if isinstance(request, RaiseEpochRequest):
            answer: Any = store.raise_epoch(request.term, request.holder)
        elif isinstance(request, LiveStatesRequest):
            answer = store.live_states(request.after_seq, request.count_max)
        elif isinstance(request, DrainRequest):
            answer = store.drain(request.term, request.count_max)
        elif isinstance(request, ApplyDrainRequest):
            applied, taken = store.apply(request.ops, LEADER)
            answer = (applied, store.drain(request.term, request.count_max))
        elif isinstance(request, ApplyRequest):
            answer, taken = store.apply(request.ops, LEADER)
        else:  # pragma: no cover - the procedure's contract
            raise AssertionError(f"unexpected {request!r}")
        self.back.append((r, LOST if lose else answer, taken))

    def answer_arrives(self) -> None:
        r, answer, taken = self.back.popleft()
        if answer is LOST:
            # A direct lease whose answer is lost is never started: it waits out its lease.
            self.advance(r, lambda: r.proc.throw(StoreUnavailable("answer lost")))
            return
        self.direct.extend(taken)
        self.start_direct()
        self.advance(r, lambda: r.proc.send(answer))

    def settle(self) -> None:
        """Every request applied and answered, every round ended."""
        for _ in range(1000):
            if self.wire:
                self.store_applies(False)
            elif self.back:
                self.answer_arrives()
            else:
                return
        raise AssertionError("rounds never settled")


class PipelinedRoundsMachine(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.d = PipelinedRounds(seed=5)
        self.d.start_round()  # elected: fence, rebuild
        self.d.settle()
        self.ids: list[str] = []

    @rule(n=st.integers(1, 4), prio=st.sampled_from(list(Priority)))
    def submit(self, n: int, prio: Priority) -> None:
        self.ids += [self.d.submit(prio) for _ in range(n)]

    @rule(woken=st.booleans())
    def leader_loop_looks(self, woken: bool) -> None:
        if self.d.may_start(woken):
            event(f"round starts beside {len(self.d.rounds)}")
            self.d.start_round()

    @rule()
    def a_whole_round_trip(self) -> None:
        # A shortcut to a busy leader: the loop looks, and everything on the link settles.
        if self.d.may_start(True):
            event(f"round starts beside {len(self.d.rounds)}")
            self.d.start_round()
        self.d.settle()

    @precondition(lambda self: bool(self.d.wire))
    @rule(lose=st.sampled_from([False, False, False, False, True]))
    def store_applies(self, lose: bool) -> None:
        self.d.store_applies(lose)

    @precondition(lambda self: bool(self.d.back))
    @rule()
    def answer_arrives(self) -> None:
        self.d.answer_arrives()

    @precondition(lambda self: bool(self.d.pools[LEADER].running))
    @rule(data=st.data(), ok=st.booleans())
    def own_handler_ends(self, data: st.DataObject, ok: bool) -> None:
        tid, attempt = data.draw(st.sampled_from(sorted(self.d.pools[LEADER].running)))
        self.d.handler_ends(LEADER, tid, attempt, ok)

    @precondition(lambda self: bool(self.d.pools[OTHER].running))
    @rule(data=st.data(), ok=st.booleans())
    def other_handler_ends(self, data: st.DataObject, ok: bool) -> None:
        tid, attempt = data.draw(st.sampled_from(sorted(self.d.pools[OTHER].running)))
        self.d.handler_ends(OTHER, tid, attempt, ok)

    @rule()
    def other_node_takes(self) -> None:
        self.d.take()

    @precondition(lambda self: bool(self.ids))
    @rule(data=st.data())
    def cancel(self, data: st.DataObject) -> None:
        self.d.store.cancel(data.draw(st.sampled_from(self.ids)), self.d.now_ms)

    @rule(ms=st.sampled_from([1, 20, 600]))
    def time_passes(self, ms: int) -> None:
        self.d.now_ms += ms
        self.d.worker_ticks()

    @precondition(lambda self: bool(self.d.pools[LEADER].running))
    @rule(ok=st.booleans())
    def own_handlers_end_together_and_the_loop_looks(self, ok: bool) -> None:
        # The node's hot path: no-op handlers end in one go; the loop starts a round with half
        # of them and, beside it, one with the rest.
        for tid, attempt in sorted(self.d.pools[LEADER].running):
            self.d.handler_ends(LEADER, tid, attempt, ok)
        for _ in range(LEADER_ROUNDS_IN_FLIGHT_MAX):
            if self.d.may_start(True):
                event(f"round starts beside {len(self.d.rounds)}")
                self.d.start_round()

    @rule(
        leads=st.sampled_from([True, True, True, False]),
        new_term=st.sampled_from([False, False, False, True]),
    )
    def raft_says(self, leads: bool, new_term: bool) -> None:
        # Deposed, or elected again (in a new term: the next round fences and rebuilds). Raft
        # hands leadership back only in a newer term.
        self.d.term += int(new_term or (leads and not self.d.leads))
        self.d.leads = leads

    @rule()
    def other_node_crashes(self) -> None:
        self.d.pools[OTHER] = WorkerPool(OTHER, SLOTS, LEASE_MS)

    @invariant()
    def scheduler_sound(self) -> None:
        self.d.sched.check_invariants()
        assert len(self.d.rounds) <= LEADER_ROUNDS_IN_FLIGHT_MAX

    @invariant()
    def no_node_holds_more_leases_than_slots(self) -> None:
        for node, n in leases_per_node(self.d.store).items():
            assert n <= SLOTS, f"{node} holds {n} leases on {SLOTS} slots"

    @invariant()
    def one_live_attempt_per_task(self) -> None:
        # A handler not stopped, of the attempt the store holds running: at most one per task,
        # and on the node the store leased it to.
        live: dict[str, int] = {}
        for node, pool in self.d.pools.items():
            for (tid, attempt), run in pool.running.items():
                rec = self.d.store.tasks[tid]
                if run.stop is None and rec.status is Status.RUNNING and attempt == rec.attempt:
                    live[tid] = live.get(tid, 0) + 1
                    assert node == rec.lease_node, (tid, node, rec.lease_node)
        assert all(n <= 1 for n in live.values()), live

    def teardown(self) -> None:
        # Liveness: faults stop, handlers succeed, the loop runs; everything must end.
        d = self.d
        if not d.leads:
            d.leads, d.term = True, d.term + 1
        for _ in range(300):
            d.settle()
            for node in (LEADER, OTHER):
                for tid, attempt in sorted(d.pools[node].running):
                    d.handler_ends(node, tid, attempt, True)
            d.take()
            d.now_ms += 100
            d.worker_ticks()
            for _ in range(LEADER_ROUNDS_IN_FLIGHT_MAX):
                if d.may_start(True):
                    d.start_round()
            d.settle()
            if all(r.status in TERMINAL for r in d.store.tasks.values()):
                break
        stuck = {t: r.status for t, r in d.store.tasks.items() if r.status not in TERMINAL}
        assert not stuck, f"tasks never finished: {stuck}"
        assert not d.finishes and not d.rounds


PipelinedRoundsMachine.TestCase.settings = settings(
    max_examples=150,
    stateful_step_count=50,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
test_pipelined_rounds = PipelinedRoundsMachine.TestCase


def test_two_rounds_overlap_and_both_lease_the_slots_their_ends_freed() -> None:
    """The pipeline at work: two own ends split over two rounds that are both on the wire
    before either answers; each leases the slot its finish freed."""
    d = PipelinedRounds(seed=1)
    d.start_round()
    d.settle()
    ids = [d.submit(Priority.MEDIUM) for _ in range(8)]
    d.start_round()
    d.settle()
    ended = sorted(d.pools[LEADER].running)
    assert len(ended) == SLOTS
    for tid, attempt in ended:
        d.handler_ends(LEADER, tid, attempt, True)
    assert len(d.finishes) == 2
    assert d.may_start(True)
    d.start_round()  # half: one end
    assert d.may_start(False)  # the other, beside it
    d.start_round()
    assert not d.may_start(True)
    assert len(d.wire) == 2 and not d.finishes
    # Each round freed one slot and leased it, before any answer came back.
    leased = [len(req.ops) for _, req in d.wire if isinstance(req, ApplyDrainRequest)]
    assert leased == [1, 1]
    d.settle()
    assert {d.store.tasks[t].status for t, _ in ended} == {Status.SUCCEEDED}
    now_running = sorted(t for t, _ in d.pools[LEADER].running)
    assert len(now_running) == SLOTS and not set(now_running) & {t for t, _ in ended}
    assert set(now_running) <= set(ids)
    d.sched.check_invariants()

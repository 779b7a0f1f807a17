"""One simulated node: the same Scheduler, WorkerPool and core.driver procedures as node/runtime.py,
driven by SimPy processes instead of asyncio tasks.

Like the runtime, the node runs a leader loop (``core.driver.leader_round`` every round, on every
node: it acts only while Raft says this node leads), a take loop (pull an assignment when a slot is
free), one process per running handler, a worker tick loop (heartbeats, timeouts), a registry loop
(so the leader sees the node) and a submit loop (group commit of client submissions). Each store
request a procedure yields travels over the simulated network; the answer is sent back in, or
StoreUnavailable is thrown in, exactly as ``NodeRuntime._serve`` does. Nothing is decided here.

Crash: volatile state is lost (a fresh Scheduler and WorkerPool on restart), handlers vanish, and
every process of the old incarnation ends at its next wake-up. Pause: nothing of the node moves
(loops, handler completions, Raft ticks) until it is resumed; answers wait in its socket buffers.
"""

from __future__ import annotations

import contextlib
import random
from collections import deque
from collections.abc import Callable, Generator, Mapping
from functools import partial
from heapq import heappush
from typing import TYPE_CHECKING, Any

import simpy
from simpy.events import URGENT

from core.driver import (
    ApplyDrainRequest,
    ApplyRequest,
    DrainRequest,
    FinishRequest,
    InterruptHandler,
    LeaderStats,
    Procedure,
    ReleaseRequest,
    leader_round,
    worker_effects,
)
from core.effects import Effect, Lease
from core.events import Event, NodeSeen
from core.pacing import (
    END_RETRY_S,
    LEADER_ROUNDS_IN_FLIGHT_MAX,
    REGISTRY_PERIOD_S,
    SWEEP_PERIOD_S,
    TAKE_WAIT_S,
    HandoverWatch,
    LocalFinishes,
    Reservation,
    TakePolicy,
    TakeStep,
    leader_wait_s,
    own_seen_due,
    start_round,
)
from core.scheduler import Role, Scheduler, SchedulerConfig
from core.store_model import StoreUnavailable, Taken
from core.task import Outcome
from core.worker import Assignment, Finish, Release, RunHandler, WorkerPool
from sim.checker import TaskFacts
from sim.load import TYPE_A, TYPE_B
from sim.net import UNAVAILABLE
from sim.simenv import Timer, call_later, fire, fire_if_pending
from sim.store import (
    CancelRequest,
    EpochRequest,
    FinishApplyDrainRequest,
    FinishDrainRequest,
    RegistryRequest,
    RetryRequest,
    SubmitRefused,
    SubmitRequest,
    SweepRequest,
    TakeManyRequest,
    TakeRequest,
)

if TYPE_CHECKING:
    from sim.config import SimConfig
    from sim.load import ClientOp, Submission
    from sim.world import World

# The runtime's pacing is core.pacing's, shared; these are the runtime's other timings.
STORE_RETRY_S = 0.2
WORKER_TICK_MAX_S = 0.1
# Submissions group-committed per store round trip (the API's batch limit).
SUBMIT_BATCH_MAX = 1000
# A graceful stop waits for running handlers this long past the pool's grace (NodeRuntime.stop),
# then at most this long for the leadership transfer (node/cluster.py).
STOP_EXTRA_S = 5.0
TRANSFER_WAIT_S = 1.0

ProcessGen = Generator[simpy.Event, Any, None]


class Crashed(Exception):
    """The node crashed (or restarted) while this process waited: the process ends."""


def node_types(config: SimConfig, index: int) -> frozenset[str] | None:
    """The last node of two or more runs only TYPE_A when some tasks are TYPE_B."""
    if not config.load.typed_every:
        return None
    if config.nodes >= 2 and index == config.nodes - 1:
        return frozenset({TYPE_A})
    return frozenset({TYPE_A, TYPE_B})


class CheckedScheduler(Scheduler):
    """The core Scheduler, unchanged, with the simulation's checks after every step: the core's
    own check_invariants() and invariant 4 (priority order of the leases it emits)."""

    def __init__(
        self,
        node_id: str,
        config: SchedulerConfig,
        facts: Mapping[str, TaskFacts],
        world: World,
        **scheduler_options: Any,
    ) -> None:
        super().__init__(node_id, config, **scheduler_options)
        self._facts = facts
        self._world = world

    def step(self, event: Event) -> list[Effect]:
        effects = super().step(event)
        self.check_invariants()
        if effects and self.role is Role.LEADING and len(self.queue):
            # Dispatch ran last in step(): what is left in the queue is what it passed over.
            best = self.queue.peek_entry()[1]
            for effect in effects:
                if type(effect) is Lease:
                    facts = self._facts.get(effect.task_id)
                    if facts is not None and facts.priority > best:
                        self._check_passed_over(effect, facts.priority)
        return effects

    def _check_passed_over(self, lease: Lease, priority: int) -> None:
        """A task of a lower priority than the queue's head was leased: legal only if that
        node runs none of the higher-priority tasks left waiting (their type is not its)."""
        types = self._world.node(lease.node_id).types
        for task_id, waiting_priority, _seq in self.queue.entries():
            if waiting_priority >= priority:
                continue
            facts = self._facts.get(task_id)
            if types is None or facts is None or facts.type in types:
                self._world.checker.fail(
                    4,
                    f"{self.node_id} leased {lease.task_id} (priority {priority}) to "
                    f"{lease.node_id} while {task_id} (priority {waiting_priority}), which "
                    f"{lease.node_id} runs, waits in its queue",
                )


class _Handler:
    """One run of a handler on this node."""

    __slots__ = ("assignment", "inc", "ok", "outlived", "returned", "sync")

    def __init__(self, assignment: Assignment, inc: int, ok: bool, sync: bool) -> None:
        self.assignment = assignment
        self.inc = inc
        self.ok = ok  # how it will end, unless interrupted
        self.returned = False
        # A thread (TaskSpec.sync): interrupted, it reports at once but runs on to its end.
        self.sync = sync
        self.outlived = False


class SimNode:
    def __init__(self, world: World, index: int, skew_ms: int) -> None:
        self.world = world
        self.env = world.env
        self.index = index
        self.id = f"n{index + 1}"
        self.skew_ms = skew_ms
        # The task types this node's handlers run (None: all), as its registry entry says.
        self.types = node_types(world.config, index)
        self.rng = random.Random(f"{world.config.seed}:node:{index}")
        self.up = False
        self.paused = False
        self.stopping = False
        self.starting = False  # the process is up, waiting to start its Raft member
        self.incarnation = 0
        self._resumed: simpy.Event | None = None
        # Fault knobs: handler run times are multiplied by `slowness`; each run also fails with
        # probability `fail_p` (a sick dependency of the handlers on this node).
        self.slowness = 1.0
        self.fail_p = 0.0
        cfg = world.config
        self.sched_config = SchedulerConfig(lease_ms=cfg.lease_ms)
        self.sched: CheckedScheduler = CheckedScheduler(
            self.id, self.sched_config, world.facts, world
        )
        self.pool = WorkerPool(self.id, cfg.workers, cfg.lease_ms)
        self.stats = LeaderStats()
        self.fenced_total = 0
        self.handlers: dict[tuple[str, int], _Handler] = {}
        self._in_run: set[tuple[str, int]] = set()
        self.pending: list[tuple[Submission, int]] = []
        self._wake_flag = False
        self._wake_event: simpy.Event | None = None
        self._rounds = 0  # leader rounds in flight (core.pacing.start_round)
        self._taking = 0  # slots a take is out for (NodeRuntime._taking)
        self._slot_event: simpy.Event | None = None
        self._submit_event: simpy.Event | None = None
        self._direct: deque[Taken] = deque()
        # As NodeRuntime: this node's finishes while it leads ride its leader's next drain.
        self._local_finishes: LocalFinishes[simpy.Event] = LocalFinishes()
        self._take_policy = TakePolicy()
        self._handover = HandoverWatch()
        self._registry_info: dict[str, tuple[int, int]] = {}
        self._registry_seen: dict[str, int] = {}
        self._registry_looked_at: dict[str, tuple[int, int]] | None = None
        self._own_seen: tuple[int, int] | None = None

    # ------------------------------------------------------------------ clock
    def now_ms(self) -> int:
        return int(self.env._now * 1000) + self.skew_ms

    # ------------------------------------------------------------------ life cycle
    def boot(self) -> None:
        """Start (or restart after a crash) with fresh volatile state."""
        cfg = self.world.config
        self.incarnation += 1
        self.up = True
        self.stopping = False
        self.sched = CheckedScheduler(self.id, self.sched_config, self.world.facts, self.world)
        self.pool = WorkerPool(self.id, cfg.workers, cfg.lease_ms)
        self.stats = LeaderStats()
        self.handlers = {}
        self._in_run = set()
        self.pending = []
        self._wake_flag = False
        self._rounds = 0
        self._taking = 0
        self._registry_info = {}
        self._registry_seen = {}
        self._registry_looked_at = None
        self._own_seen = None
        self._direct = deque()
        self._local_finishes = LocalFinishes()
        self._take_policy = TakePolicy()
        self._handover = HandoverWatch()
        inc = self.incarnation
        env = self.env
        for loop in (
            self._leader_loop,
            self._take_loop,
            self._worker_ticks,
            self._registry_loop,
            self._submit_loop,
            self._sweep_loop,
        ):
            env.process(self._guard(loop(inc)))

    def crash(self) -> None:
        """Power off: every process of this incarnation ends, handlers vanish, buffered client
        submissions get a connection reset."""
        if not self.up:
            return
        self.up = False
        self.paused = False
        self.incarnation += 1
        self.fenced_total += self.stats.fenced_writes
        for task_id, attempt in sorted(self.handlers):
            self.world.trace.emit(self.env.now, "vanish", task_id, attempt, self.id)
        self.handlers = {}
        self.world.checker.on_node_crash(self.id)
        pending, self.pending = self.pending, []
        for sub, token in pending:
            self.world.clients.failed(sub, token)
        self._release_waiters()

    def pause(self) -> None:
        if self.up and not self.paused:
            self.paused = True
            self._resumed = self.env.event()
            # Clients waiting on this node hear nothing more: they give up after their timeout.
            for sub, token in self.pending:
                self.world.clients.timeout_after(sub, token)

    def resume(self) -> None:
        if self.paused:
            self.paused = False
            self._release_waiters()

    def _release_waiters(self) -> None:
        resumed, self._resumed = self._resumed, None
        if resumed is not None and not resumed.triggered:
            resumed.succeed()
        for name in ("_wake_event", "_slot_event", "_submit_event"):
            event = getattr(self, name)
            if event is not None and not event.triggered:
                event.succeed()

    def stop(self, grace_s: float) -> ProcessGen:
        """Graceful stop (a rolling restart), as NodeRuntime.stop: take no more work (the
        registry announces 0 slots), let running handlers finish within the grace, give the rest
        back, then go down."""
        if not self.up or self.stopping:
            return
        inc = self.incarnation
        self.stopping = True
        yield from self._carry_out(self.pool.shutdown(self.now_ms(), int(grace_s * 1000)))
        # Direct leases not started yet go back, as NodeRuntime.stop gives them back.
        backs = [Release(t.record.id, t.attempt, self.id, self.now_ms()) for t in self._direct]
        self._direct.clear()
        for back in backs:
            with contextlib.suppress(StoreUnavailable):
                yield from self.call(ReleaseRequest(back))
        deadline = self.env.now + grace_s + STOP_EXTRA_S
        while not self.pool.idle and self.env.now < deadline and self.incarnation == inc:
            yield self.env.timeout(0.02)
        if self.incarnation != inc:
            return  # crashed meanwhile
        # As NodeRuntime.stop once its loops have stopped: finishes still queued go alone.
        for finish, done in self._local_finishes.take_all():
            try:
                done.succeed((yield from self.call(FinishRequest(finish))))
            except StoreUnavailable:
                done.succeed(UNAVAILABLE)
        # The runtime's loops stop here; the Raft member lives on for the handover. Leadership
        # is lost now, not when the stop began: the leader led through its grace.
        self.world._lose_leader_if(self.index)
        self.incarnation += 1
        inc = self.incarnation
        self._release_waiters()
        leadership = self.world.leadership
        if leadership.status(self.index)[0]:
            # As node/cluster.py: a leader hands over before it stops (waiting at most 1 s).
            answered = self.env.event()

            def done() -> None:
                if not answered.triggered:
                    answered.succeed()

            leadership.transfer(self.index, done)
            yield answered | self.env.timeout(TRANSFER_WAIT_S)
        if self.incarnation == inc:
            self.crash()

    def _gate(self, inc: int) -> ProcessGen:
        """Wait out a pause; end the process if the node crashed meanwhile."""
        while self.paused and self.incarnation == inc:
            assert self._resumed is not None
            yield self._resumed
        if self.incarnation != inc:
            raise Crashed

    def _guard(self, gen: ProcessGen) -> ProcessGen:
        try:
            yield from gen
        except Crashed:
            return

    # ------------------------------------------------------------------ store requests
    def call(self, request: Any, timeout_s: float = 0.0) -> Generator[simpy.Event, Any, Any]:
        """Send one request to the store and wait for its answer (after any pause)."""
        inc = self.incarnation
        answer = yield self.world.caller.call(self.id, request, timeout_s)
        if self.paused or self.incarnation != inc:
            yield from self._gate(inc)
        if answer is UNAVAILABLE:
            name = type(request).__name__
            self.world.trace.emit(self.env.now, "no-answer", self.id, name)
            raise StoreUnavailable(name)
        return answer

    def serve(
        self, proc: Procedure, reservation: Reservation[simpy.Event] | None = None
    ) -> ProcessGen:
        """Run a core procedure: carry out each request, send the answer back in.
        ``reservation``: a leader round's share of this node's finishes (its first drain's)."""
        # call() inlined: the hottest path of every loop (one generator frame less per answer).
        caller = self.world.caller
        node_id = self.id
        try:
            request = next(proc)
            while True:
                if type(request) is InterruptHandler:
                    self._interrupt(request)
                    request = proc.send(None)
                    continue
                inc = self.incarnation
                kind = type(request)
                taken_with: list[Taken] = []  # direct leases of an ApplyDrainRequest
                if kind is FinishRequest and LocalFinishes.wanted(self.sched.leading, False):
                    # As NodeRuntime._execute: our own leader carries it with its next drain.
                    # (The runtime's loops stop only once the node is down here: never False.)
                    done = self.env.event()
                    self._local_finishes.add(request.finish, done)
                    self.wake()
                    answer = yield done
                elif kind is ApplyDrainRequest or (
                    kind is DrainRequest and (reservation or self._local_finishes)
                ):
                    batch, more = self._local_finishes.for_drain(reservation)
                    if more:
                        self.wake()  # as the runtime: the rest go with the next drain, at once
                    finishes = tuple(f for f, _ in batch)
                    if kind is ApplyDrainRequest:
                        combined: Any = FinishApplyDrainRequest(
                            finishes,
                            ApplyRequest(request.ops),
                            DrainRequest(request.term, request.count_max),
                        )
                    else:
                        combined = FinishDrainRequest(finishes, request)
                    answer = yield caller.call(node_id, combined)
                    if answer is UNAVAILABLE:
                        for _, done in batch:
                            done.succeed(UNAVAILABLE)
                    else:
                        written, *rest = answer
                        for (_, done), ok in zip(batch, written, strict=True):
                            done.succeed(ok)
                        if kind is ApplyDrainRequest:
                            (applied, taken_with), drained = rest
                            answer = (applied, drained)
                        else:
                            answer = rest[0]
                else:
                    answer = yield caller.call(node_id, request)
                if self.paused or self.incarnation != inc:
                    yield from self._gate(inc)
                if answer is UNAVAILABLE:
                    name = type(request).__name__
                    self.world.trace.emit(self.env._now, "no-answer", node_id, name)
                    request = proc.throw(StoreUnavailable(name))
                    continue
                # Direct leases start only once the node runs again (as the runtime, which does
                # nothing while paused or down).
                if type(request) is ApplyRequest:
                    answer, taken = answer
                    self._took_direct(taken, inc)
                elif taken_with:
                    self._took_direct(taken_with, inc)
                request = proc.send(answer)
        except StopIteration:
            return

    def _took_direct(self, taken: list[Taken], inc: int) -> None:
        """As NodeRuntime._took_direct: the leases to this node came back direct; while
        stopping they go straight back."""
        if taken and not self.pool.accepting:
            now = self.now_ms()
            backs = [Release(t.record.id, t.attempt, self.id, now) for t in taken]
            self.env.process(self._guard(self._carry_out(backs)))
        elif taken:
            self._direct.extend(taken)
            self._start_direct(inc)

    # ------------------------------------------------------------------ leader
    def wake(self) -> None:
        self._wake_flag = True
        event = self._wake_event
        if event is not None and not event.triggered:
            event.succeed()

    def ring(self) -> None:
        """The bell arrived (from the event loop, not from a process): wake the leader loop
        at once."""
        self._wake_flag = True
        event = self._wake_event
        if event is not None and not event.triggered:
            fire(event)

    def _node_events(self, now: int) -> list[Event]:
        """NodeSeen for every registry entry refreshed since the last look (as the runtime)."""
        slots = self.pool.offered
        # As the runtime: our own entry at most every OWN_SEEN_PERIOD_MS, or when slots change.
        refresh = own_seen_due(self._own_seen, slots, now)
        if refresh:
            self._own_seen = (now, slots)
        info = self._registry_info
        seen = self._registry_seen
        if info is self._registry_looked_at:
            # No registry read since the last look: only our own entry can have changed.
            if not refresh or seen.get(self.id) == now:
                return []
            seen[self.id] = now
            return [NodeSeen(self.id, slots, self.types, now)]
        self._registry_looked_at = info
        events: list[Event] = []
        info_now = dict(info)
        if refresh:
            info_now[self.id] = (slots, now)
        else:
            info_now.pop(self.id, None)
        for node_id, (slots, stamp) in sorted(info_now.items()):
            if seen.get(node_id) == stamp:
                continue
            seen[node_id] = stamp
            # A node's types are fixed for a run: the world's, as its registry entry would say.
            types = self.world.node(node_id).types
            events.append(NodeSeen(node_id, slots, types, now))
        return events

    def _leader_loop(self, inc: int) -> ProcessGen:
        """As NodeRuntime._leader_loop: rounds as core.pacing.start_round paces them, each a
        process of its own, on the node's one (FIFO) link to the store."""
        env = self.env
        leadership = self.world.leadership
        woken = True
        while True:
            if self.paused or self.incarnation != inc:
                yield from self._gate(inc)
            woken = self._wake_flag or woken
            self._wake_flag = False
            leads, term = leadership.status(self.index)
            sched = self.sched
            steady = leads and sched.leading and term == sched.term
            if start_round(
                self._rounds,
                LEADER_ROUNDS_IN_FLIGHT_MAX,
                woken,
                steady,
                bool(self._local_finishes),
            ):
                woken = False
                self._start_round(leads, term, inc)
                # As the runtime: the round sends its first request before the loop looks
                # again (it starts URGENT, ahead of this NORMAL timeout).
                yield env.timeout(0)
                continue
            wake = self._wake_event = env.event()
            idle = not self._rounds
            if idle:
                timeout = leader_wait_s(self.stats.timer_at_ms, self.now_ms())
                # At least one millisecond: a timer that is already due is served next round.
                call_later(env, max(timeout, 0.001), partial(fire_if_pending, wake))
            yield wake  # woken, a round ended, or (none in flight) the timer is due
            self._wake_event = None
            if idle:
                woken = True  # woken, or the timer is due

    def _start_round(self, leads: bool, term: int, inc: int) -> None:
        if leads:
            self.world.checker.on_leader_claim(self.id, term)
        sched = self.sched
        started = self.now_ms()
        reservation, more = self._local_finishes.reserve(
            sched.leading, self._rounds, LEADER_ROUNDS_IN_FLIGHT_MAX
        )
        if more:
            self.wake()  # as the runtime: the rest go with the next round, at once
        proc = leader_round(
            sched,
            leads,
            term,
            self._node_events(started),
            self.now_ms,
            self.stats,
            LocalFinishes.ends(reservation),
        )
        self._rounds += 1
        self.env.process(self._guard(self._round(proc, reservation, leads, term, started, inc)))

    def _round(
        self,
        proc: Procedure,
        reservation: Reservation[simpy.Event],
        leads: bool,
        term: int,
        started: int,
        inc: int,
    ) -> ProcessGen:
        """As NodeRuntime._round: one leader round, then what follows it."""
        env = self.env
        before = self.sched.role
        try:
            try:
                yield from self.serve(proc, reservation)
                self._handover.after_round(leads, True, started, self.now_ms())
                failed = False
            except StoreUnavailable:
                failed = True
                if self._handover.after_round(leads, False, started, self.now_ms()):
                    # As NodeRuntime._hand_over_if_cut_off: let a follower that may reach the
                    # store lead.
                    self.world.trace.emit(env.now, "handover", self.id, term)
                    self.world.leadership.transfer(self.index, lambda: None)
            finally:
                # Ended before its drain: its finishes wait for the next round, or go alone;
                # a crash took them with the node (a restarted node has finishes of its own).
                if self.incarnation == inc:
                    self._local_finishes.unreserve(reservation)
            if not failed:
                # As the runtime: what no drain of ours will carry (deposed) goes alone.
                self._finishes_alone(self._local_finishes.to_flush(self.sched.leading))
            if self.stats.epoch_refused_term:
                # As the runtime: our Raft term is below the stored epoch (terms restart when
                # the whole cluster does, the epoch does not): stand again above it.
                self.stats.epoch_refused_term = 0
                try:
                    epoch = yield from self.call(EpochRequest())
                    self.world.leadership.raise_term_above(self.index, epoch)
                except StoreUnavailable:
                    pass
            if self.sched.role is not before:
                self.world.trace.emit(
                    env.now, "role", self.id, self.sched.role.value, self.sched.term
                )
            if failed:
                yield env.timeout(STORE_RETRY_S)
                if self.paused or self.incarnation != inc:
                    yield from self._gate(inc)
        finally:
            if self.incarnation == inc:  # a crashed incarnation's count went with it
                self._rounds -= 1
                event = self._wake_event
                if event is not None and not event.triggered:
                    event.succeed()  # a round ended: the loop looks again

    def _finishes_alone(self, batch: list[tuple[Finish, simpy.Event]]) -> None:
        """As NodeRuntime._finishes_alone: finishes queued for a drain that will not come
        (deposed, stopping) go alone."""
        for finish, done in batch:
            self.env.process(self._guard(self._finish_alone(finish, done)))

    def _finish_alone(self, finish: Finish, done: simpy.Event) -> ProcessGen:
        answer = yield self.world.caller.call(self.id, FinishRequest(finish))
        done.succeed(answer)

    # ------------------------------------------------------------------ workers
    def _take_loop(self, inc: int) -> ProcessGen:
        """As NodeRuntime._take_loop: pull when slots are free, as TakePolicy says."""
        env = self.env
        policy = self._take_policy
        wait_call_s = TAKE_WAIT_S + self.world.config.net.request_timeout_s
        while True:
            if self.paused or self.incarnation != inc:
                yield from self._gate(inc)
            plan = policy.next(self._free(), bool(self._direct), self.sched.leading, env.now)
            step = plan.step
            if step is TakeStep.WAIT_SLOT:
                if self.stopping:
                    return
                slot = self._slot_event = env.event()
                yield slot
                self._slot_event = None
                continue
            if step is TakeStep.START_DIRECT:
                self._start_direct(inc)
                continue
            if step is TakeStep.SLEEP:
                yield env.timeout(plan.sleep_s)
                continue
            try:
                # As the runtime: the slots a take is out for are not free meanwhile (a direct
                # lease must not fill them before its answer comes).
                self._taking += plan.count
                try:
                    request = TakeManyRequest(self.id, plan.count)
                    taken = yield from self.call(request, wait_call_s)
                finally:
                    # A crash ends this process as its call returns: the count it added went
                    # with that incarnation (a restarted node counts from 0 again).
                    if self.incarnation == inc:
                        self._taking -= plan.count
                if not taken and plan.block_one:
                    self._taking += 1
                    try:
                        one = yield from self.call(TakeRequest(self.id, TAKE_WAIT_S), wait_call_s)
                    finally:
                        if self.incarnation == inc:
                            self._taking -= 1
                    taken = [] if one is None else [one]
            except StoreUnavailable:
                yield env.timeout(STORE_RETRY_S)
                continue
            for item in taken:
                self._start(item, inc)

    def _free(self) -> int:
        return self.pool.free - self._taking

    def _start_direct(self, inc: int) -> None:
        while self._direct and self._free() > 0:
            self._start(self._direct.popleft(), inc)

    def _start(self, taken: Taken, inc: int) -> None:
        """As NodeRuntime._start: start the handler of what a slot took, at once; a release or
        an interrupt of an older attempt is carried out after, by a process of its own."""
        pool = self.pool
        now = self.now_ms()
        if not pool.accepting:
            # Taken just as we began to stop: give it straight back.
            release = Release(taken.record.id, taken.attempt, self.id, now)
            self.env.process(self._guard(self._carry_out([release])))
            return
        assignment = taken.assignment()
        effects = pool.start(assignment, now)
        pool.check_invariants()
        others = [e for e in effects if type(e) is not RunHandler]
        for effect in effects:
            if type(effect) is RunHandler:
                self._run_handler(assignment, inc)
        if others:
            self.env.process(self._guard(self._carry_out(others)))

    def _carry_out(self, effects: list[Any]) -> ProcessGen:
        with contextlib.suppress(StoreUnavailable):
            yield from self.serve(worker_effects(self.pool, effects))

    # A running handler is a timer, not a process: it returns when its run time is up (or at
    # once when interrupted), then its outcome is written by _drive, from callbacks, as serve()
    # would from a process. Pauses and crashes gate it exactly as _gate gates a process.
    def _run_handler(self, a: Assignment, inc: int) -> None:
        world = self.world
        env = self.env
        key = (a.task_id, a.attempt)
        world.trace.emit(env._now, "run", a.task_id, a.attempt, self.id)
        if self.types is not None and a.type not in self.types:
            # The runtime has no handler for it: the attempt would fail for nothing.
            world.checker.fail(
                4, f"{a.task_id} ({a.type}) leased to {self.id}, which runs no {a.type}"
            )
        world.checker.on_exec_start(a.task_id, a.attempt, self.id)
        run_s, ok = world.handler_outcome(a.task_id, self)
        self._in_run.add(key)
        handler = self.handlers[key] = _Handler(a, inc, ok, world.specs[a.task_id].sync)
        call_later(env, run_s, partial(self._handler_returned, handler, False))

    def _handler_returned(self, handler: _Handler, interrupted: bool) -> None:
        if handler.returned:
            # Interrupted first: its run time ran out later. A thread gives its slot back now.
            if handler.outlived and not interrupted:
                self._when_running(handler.inc, self._outlived_returned)
            return
        handler.returned = True
        a = handler.assignment
        self._in_run.discard((a.task_id, a.attempt))
        if interrupted:
            outcome = Outcome.error("Interrupted", "interrupted by the worker")
        elif handler.ok:
            outcome = Outcome.success(None)
        else:
            outcome = Outcome.error("SimFailure", "failed")
        self._when_running(handler.inc, partial(self._handler_ended, handler, outcome))

    def _handler_ended(self, handler: _Handler, outcome: Outcome) -> None:
        world = self.world
        a = handler.assignment
        self.handlers.pop((a.task_id, a.attempt), None)
        world.checker.on_exec_end(a.task_id, a.attempt, self.id)
        world.trace.emit(self.env._now, "ran", a.task_id, a.attempt, self.id, outcome.ok)
        pool = self.pool
        if handler.outlived and not pool.handler_outlives(a.task_id, a.attempt):
            handler.outlived = False  # already settled: nothing to hold
        # As NodeRuntime: an outliving thread keeps its slot until it returns.
        effects = pool.handler_ended(a.task_id, a.attempt, outcome, self.now_ms(), self.rng)
        if not handler.outlived:
            self._slot_freed()
        deadline = self.env._now + self.world.config.lease_ms / 1000
        self._write_end(effects, handler.inc, deadline)

    def _write_end(self, effects: list[Any], inc: int, deadline: float) -> None:
        """As NodeRuntime._write_end: unanswered, the end goes again every END_RETRY_S while
        the lease can hold; past that the lease expires and the task runs again."""
        pool = self.pool

        def lost() -> None:
            if self.env._now + END_RETRY_S < deadline:
                retry = partial(self._write_end, effects, inc, deadline)
                call_later(self.env, END_RETRY_S, partial(self._when_running, inc, retry))

        self._drive(worker_effects(pool, effects), inc, pool.check_invariants, lost=lost)

    def _outlived_returned(self) -> None:
        self.pool.outlived_handler_returned()
        self.world.trace.emit(self.env._now, "thread-returned", self.id, self.pool.held)
        self._slot_freed()
        self.wake()  # the leader sees the slot again (its own NodeSeen: slots changed)

    def _when_running(self, inc: int, then: Callable[[], None]) -> None:
        """then() now, or once a pause is over; never if the node crashed meanwhile (_gate,
        for callbacks)."""
        if self.incarnation != inc:
            return
        if self.paused:
            assert self._resumed is not None
            self._resumed.callbacks.append(lambda _event: self._when_running(inc, then))
            return
        then()

    def _drive(
        self,
        proc: Procedure,
        inc: int,
        done: Callable[[], None],
        answer: Any = None,
        error: StoreUnavailable | None = None,
        lost: Callable[[], None] | None = None,
    ) -> None:
        """serve(proc) without a process: each request goes out, and its answer comes back
        in through a callback of the reply. ``done()`` once the procedure ends, or gives up
        with StoreUnavailable (as ``with suppress(StoreUnavailable): yield from serve()``)."""
        try:
            request = proc.send(answer) if error is None else proc.throw(error)
            while type(request) is InterruptHandler:
                self._interrupt(request)
                request = proc.send(None)
        except StopIteration:
            done()
            return
        except StoreUnavailable:
            done()
            if lost is not None:
                lost()
            return
        if type(request) is FinishRequest and LocalFinishes.wanted(self.sched.leading, False):
            # As NodeRuntime._execute (and serve() here): our own leader carries it with its
            # next drain, and leases its slot in the same round trip.
            reply = self.env.event()
            self._local_finishes.add(request.finish, reply)
            self.wake()
        else:
            reply = self.world.caller.call(self.id, request)
        reply.callbacks.append(partial(self._driven, proc, inc, done, request, lost))  # type: ignore[union-attr]

    def _driven(
        self,
        proc: Procedure,
        inc: int,
        done: Callable[[], None],
        request: Any,
        lost: Callable[[], None] | None,
        reply: Any,
    ) -> None:
        answer = reply._value

        def resume() -> None:
            if answer is UNAVAILABLE:
                name = type(request).__name__
                self.world.trace.emit(self.env._now, "no-answer", self.id, name)
                self._drive(proc, inc, done, error=StoreUnavailable(name), lost=lost)
            else:
                self._drive(proc, inc, done, answer, lost=lost)

        self._when_running(inc, resume)

    def _interrupt(self, request: InterruptHandler) -> None:
        it = request.interrupt
        key = (it.task_id, it.attempt)
        handler = self.handlers.get(key)
        # Only a handler still running can be stopped; one that already returned reports anyway.
        if handler is not None and key in self._in_run:
            self._in_run.discard(key)
            handler.outlived = handler.sync
            # As Process.interrupt: the handler returns at once, before anything else now.
            env = self.env
            heappush(
                env._queue,
                (
                    env._now,
                    URGENT,
                    next(env._eid),
                    Timer(partial(self._handler_returned, handler, True)),
                ),
            )

    def _slot_freed(self) -> None:
        event = self._slot_event
        if event is not None and not event.triggered:
            event.succeed()

    def _worker_ticks(self, inc: int) -> ProcessGen:
        env = self.env
        while True:
            if self.paused or self.incarnation != inc:
                yield from self._gate(inc)
            effects = self.pool.tick(self.now_ms())
            self.pool.check_invariants()
            if effects:
                with contextlib.suppress(StoreUnavailable):
                    yield from self.serve(worker_effects(self.pool, effects))
            due = self.pool.next_due_ms()
            delay = (
                WORKER_TICK_MAX_S
                if due is None
                else min(WORKER_TICK_MAX_S, max(0.001, (due - self.now_ms()) / 1000))
            )
            yield env.timeout(delay)

    # ------------------------------------------------------------------ registry
    def _registry_loop(self, inc: int) -> ProcessGen:
        env = self.env
        while True:
            if self.paused or self.incarnation != inc:
                yield from self._gate(inc)
            slots = self.pool.offered
            try:
                info = yield from self.call(RegistryRequest(self.id, slots, self.now_ms()))
                self._registry_info = info
                self._handover.store_answered()
                self.world.registry_read(self.index)
            except StoreUnavailable:
                pass
            self.wake()
            yield env.timeout(REGISTRY_PERIOD_S)

    def _sweep_loop(self, inc: int) -> ProcessGen:
        """Retention, as the runtime: only the leader sweeps, once a minute."""
        while True:
            yield self.env.timeout(SWEEP_PERIOD_S)
            if self.paused or self.incarnation != inc:
                yield from self._gate(inc)
            if self.sched.leading:
                with contextlib.suppress(StoreUnavailable):
                    yield from self.call(SweepRequest(self.now_ms()))

    # ------------------------------------------------------------------ clients
    def accept(self, sub: Submission, token: int) -> None:
        """A client's submission arrived (over its own connection)."""
        clients = self.world.clients
        if not self.up or self.stopping:
            clients.failed(sub, token)  # connection refused, or 503 while stopping
            return
        if self.world.config.unsafe_ack_before_store:
            clients.acked(sub, token)  # UNSAFE: the client hears 201 before the store has it
        self.pending.append((sub, token))
        if self.paused:
            clients.timeout_after(sub, token)
        event = self._submit_event
        if event is not None and not event.triggered:
            # Called from the event loop (an arrival's timer, a client's retry timer), never
            # from a process: the submit loop may run at once.
            fire(event)

    def _submit_loop(self, inc: int) -> ProcessGen:
        env = self.env
        clients = self.world.clients
        unsafe = self.world.config.unsafe_ack_before_store
        while True:
            if self.paused or self.incarnation != inc:
                yield from self._gate(inc)
            if not self.pending:
                event = self._submit_event = env.event()
                yield event
                self._submit_event = None
                continue
            batch = self.pending[:SUBMIT_BATCH_MAX]
            del self.pending[:SUBMIT_BATCH_MAX]
            request = SubmitRequest(tuple(sub.spec.new for sub, _ in batch), self.now_ms())
            try:
                answer = yield from self.call(request)
            except StoreUnavailable:
                if not unsafe:  # the unsafe node already said 201: the tasks are just gone
                    for sub, token in batch:
                        clients.failed(sub, token)
                continue
            if isinstance(answer, SubmitRefused):
                # The batch was refused as a whole: refuse the culprit, resubmit the rest.
                sub, token = batch[answer.index]
                clients.refused(sub, token)
                self.pending[:0] = batch[: answer.index] + batch[answer.index + 1 :]
                continue
            for sub, token in batch:
                clients.acked(sub, token)

    def client_op(self, op: ClientOp, token: int) -> None:
        """A client's cancel or retry by hand arrived (DELETE /v1/tasks/{id}, POST
        .../retry): the API handler calls the store, as node/api.py does."""
        if not self.up or self.stopping:
            return  # connection refused: the client tries elsewhere after its timeout
        self.env.process(self._guard(self._client_op(op, token, self.incarnation)))

    def _client_op(self, op: ClientOp, token: int, inc: int) -> ProcessGen:
        if self.paused:
            yield from self._gate(inc)
        now = self.now_ms()
        request = (
            CancelRequest(op.task_id, now) if op.kind == "cancel" else RetryRequest(op.task_id, now)
        )
        try:
            yield from self.call(request)
        except StoreUnavailable:
            self.world.clients.op_answered(op, token, False)
            return
        self.world.clients.op_answered(op, token, True)

    def cancel_heard(self, task_id: str, cancelled: int) -> None:
        """A message on this node's cancel channel (as NodeRuntime._cancel_listener): stop the
        cancelled attempt's handler now, not at its next refused heartbeat."""
        inc = self.incarnation
        self._when_running(inc, partial(self._stop_cancelled, task_id, cancelled, inc))

    def _stop_cancelled(self, task_id: str, cancelled: int, inc: int) -> None:
        if not self.up:
            return
        pool = self.pool
        effects = pool.cancelled(task_id, cancelled)
        if effects:
            self._drive(worker_effects(pool, effects), inc, pool.check_invariants)

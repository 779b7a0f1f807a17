"""The drivers' shared procedure, written once, without I/O: generators that yield store requests.

A node (asyncio + Redis) and the simulation (SimPy + store model) both run these: the node sends
each request to Redis and ``send``s the answer back in; the simulation delivers it over its
simulated network. So the order in which answers reach the scheduler (which it relies on: the
order the store applied them) is fixed here, once, and what the simulation proves is what ships.

A request the store cannot serve (unreachable, timed out) is thrown into the generator as
:class:`StoreUnavailable` by the driver; the procedure lets it propagate and the driver retries
the round later. Nothing here is lost by that: the store is the truth, and the next round (or the
next leader's rebuild) reconciles from it.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

from core.effects import Effect, Expire, Lease, Promote, RaiseEpoch, Rebuild, SetTimer
from core.events import (
    Deposed,
    Elected,
    EpochRaised,
    Event,
    Fenced,
    OwnEnded,
    Rebuilt,
    StoreLost,
    TasksChanged,
    Tick,
)
from core.scheduler import InvariantError, Scheduler
from core.store_model import FENCED
from core.task import Outcome, Status, TaskState
from core.values import value
from core.worker import Finish, Heartbeat, Interrupt, Release, WorkerEffect, WorkerPool


# ---- requests the drivers serve -----------------------------------------------------------
@value
class RaiseEpochRequest:
    term: int  # answer: bool
    holder: str = ""


@value
class DrainRequest:
    """Pop inbox notifications. The driver sends its own node's finishes that it reserved for
    this round (``leader_round``'s ``own_ends``) ahead of the first drain of the round, in the
    same round trip."""

    term: int
    count_max: int  # answer: list[TaskState] | FENCED


@value
class ApplyDrainRequest:
    """The reserved finishes (as with DrainRequest), then ``ops`` (as ApplyRequest), then a
    drain, in one round trip and in that order: the leases to the slots those finishes free go
    out with the finishes, not a round trip after them. Answer: (the ApplyRequest's answer,
    the DrainRequest's answer)."""

    ops: tuple[Lease | Expire | Promote, ...]
    term: int
    count_max: int


@value
class LiveStatesRequest:
    """One chunk of live tasks with seq > after_seq, in seq order. Answer: list[TaskState]."""

    after_seq: int
    count_max: int


@value
class ApplyRequest:
    ops: tuple[Lease | Expire | Promote, ...]  # answer: list[TaskState | None | FENCED]


@value
class HeartbeatRequest:
    beats: tuple[Heartbeat, ...]  # answer: list[tuple[bool, Status | None]]


@value
class FinishRequest:
    finish: Finish  # answer: bool


@value
class ReleaseRequest:
    release: Release  # answer: bool


@value
class InterruptHandler:
    """Not a store request: the driver stops the handler of this attempt. Answer: None."""

    interrupt: Interrupt


Request = (
    RaiseEpochRequest
    | DrainRequest
    | ApplyDrainRequest
    | LiveStatesRequest
    | ApplyRequest
    | HeartbeatRequest
    | FinishRequest
    | ReleaseRequest
    | InterruptHandler
)
Procedure = Generator[Request, Any, None]

# How many inbox notifications one drain takes; a full drain is followed by another at once.
DRAIN_BATCH_MAX = 2048
# Live tasks read per rebuild request.
REBUILD_CHUNK_MAX = 2000


@dataclass
class LeaderStats:
    fenced_writes: int = 0
    rebuilt_tasks: int = 0
    timer_at_ms: int | None = None
    # The last term whose epoch the store refused: the driver asks Raft to stand again above
    # the stored epoch (Raft terms restart when a whole cluster does; Redis's epoch does not).
    epoch_refused_term: int = 0


def leader_round(
    sched: Scheduler,
    leads: bool,
    term: int,
    node_events: list[Event],
    now_ms: Callable[[], int],
    stats: LeaderStats,
    own_ends: tuple[tuple[str, int], ...] = (),
) -> Procedure:
    """One pass of the leader loop: elections, node registry, inbox, timers, and every effect
    that follows, until the scheduler asks for nothing more. If the store stops answering
    part way, or answers a request with an error, the scheduler is told (it rebuilds from the
    store once it answers again) and the exception goes on to the driver.

    ``own_ends``: the (task id, attempt) of this node's ended handlers whose finishes the
    driver has reserved to send ahead of this round's first drain. The scheduler frees their
    slots first, so its leases for them ride the same round trip (ApplyDrainRequest)."""
    # The scheduler names its next due time afresh every round; a stale one would keep the
    # driver waking in a tight loop once nothing is due (say, after it was deposed).
    stats.timer_at_ms = None
    try:
        yield from _leader_round(sched, leads, term, node_events, now_ms, stats, own_ends)
    except InvariantError:
        raise  # a bug here: nothing to start over from
    except Exception:
        # A store that did not answer, or answered with an error (a script's error reply, an
        # answer that did not parse), is one whose answer is lost: what the request changed,
        # the notifications a drain took off the inbox included, is unknown here. Start the
        # term over from the store's truth either way.
        sched.step(StoreLost(now_ms()))
        raise


def _leader_round(
    sched: Scheduler,
    leads: bool,
    term: int,
    node_events: list[Event],
    now_ms: Callable[[], int],
    stats: LeaderStats,
    own_ends: tuple[tuple[str, int], ...],
) -> Procedure:
    # Node events first: an election rebuilds and dispatches at once, and must not hand work
    # to a node just reported gone (the leader that was deposed, say).
    for event in node_events:
        yield from feed(sched, event, now_ms, stats)
    if leads and term != sched.term and term > 0:
        yield from feed(sched, Elected(term, now_ms()), now_ms, stats)
    elif not leads and sched.fence_term:
        yield from feed(sched, Deposed(now_ms()), now_ms, stats)
    while sched.leading:
        ops: tuple[Lease | Expire | Promote, ...] = ()
        if own_ends:  # the round's first drain only: it carries their finishes
            ops = _own_ended(sched, OwnEnded(own_ends, now_ms()), stats)
            own_ends = ()
        pending: list[Effect] = []
        if ops:
            answers, drained = yield ApplyDrainRequest(ops, sched.term, DRAIN_BATCH_MAX)
            # The store applied the ops before the drain: their answers first, then what the
            # drain read, and only then any request that follows from either.
            pending += _answered(sched, ops, answers, now_ms, stats)
        else:
            drained = yield DrainRequest(sched.term, DRAIN_BATCH_MAX)
        if drained == FENCED:
            stats.fenced_writes += 1
            pending += sched.step(Fenced(sched.term, now_ms()))
            yield from _carry_out(sched, pending, now_ms, stats)
            break
        if drained:
            pending += sched.step(TasksChanged(tuple(drained), now_ms()))
        yield from _carry_out(sched, pending, now_ms, stats)
        if len(drained) < DRAIN_BATCH_MAX:
            break
    yield from feed(sched, Tick(now_ms()), now_ms, stats)


def feed(
    sched: Scheduler, event: Event, now_ms: Callable[[], int], stats: LeaderStats
) -> Procedure:
    """Step the scheduler with ``event`` and carry out its effects (and theirs) in order."""
    yield from _carry_out(sched, sched.step(event), now_ms, stats)


def _own_ended(
    sched: Scheduler, event: OwnEnded, stats: LeaderStats
) -> tuple[Lease | Expire | Promote, ...]:
    """Step the scheduler with OwnEnded: it only frees slots and dispatches, so what comes
    back is leases (and its next timer), with no store request of their own to make."""
    ops: list[Lease | Expire | Promote] = []
    for effect in sched.step(event):
        if isinstance(effect, (Lease, Expire, Promote)):
            ops.append(effect)
        elif isinstance(effect, SetTimer):
            stats.timer_at_ms = effect.at_ms
        else:  # pragma: no cover - the scheduler's contract
            raise AssertionError(f"OwnEnded asked for {effect!r}")
    return tuple(ops)


def _answered(
    sched: Scheduler,
    ops: tuple[Lease | Expire | Promote, ...],
    answers: list[Any],
    now_ms: Callable[[], int],
    stats: LeaderStats,
) -> list[Effect]:
    """Feed the store's answers to a batch of ops; answers the effects that follow."""
    pending: list[Effect] = []
    states = tuple(a for a in answers if isinstance(a, TaskState))
    if states:
        pending += sched.step(TasksChanged(states, now_ms()))
    fenced = sum(1 for a in answers if a == FENCED)
    if fenced:
        stats.fenced_writes += fenced
        pending += sched.step(Fenced(ops[0].term, now_ms()))
    return pending


def _carry_out(
    sched: Scheduler, pending: list[Effect], now_ms: Callable[[], int], stats: LeaderStats
) -> Procedure:
    while pending:
        effects, pending = pending, []
        ops: list[Lease | Expire | Promote] = []
        for effect in effects:
            if isinstance(effect, (Lease, Expire, Promote)):
                ops.append(effect)
            elif isinstance(effect, SetTimer):
                stats.timer_at_ms = effect.at_ms
            elif isinstance(effect, RaiseEpoch):
                ok = yield RaiseEpochRequest(effect.term, effect.holder)
                if not ok:
                    stats.fenced_writes += 1
                    stats.epoch_refused_term = effect.term
                pending += sched.step(EpochRaised(effect.term, bool(ok), now_ms()))
            elif isinstance(effect, Rebuild):
                after = 0
                while True:
                    chunk: list[TaskState] = yield LiveStatesRequest(after, REBUILD_CHUNK_MAX)
                    if chunk:
                        stats.rebuilt_tasks += len(chunk)
                        after = chunk[-1].seq
                        pending += sched.step(TasksChanged(tuple(chunk), now_ms()))
                    if len(chunk) < REBUILD_CHUNK_MAX:
                        break
                pending += sched.step(Rebuilt(effect.term, now_ms()))
        if ops:
            batch = tuple(ops)
            answers = yield ApplyRequest(batch)
            pending += _answered(sched, batch, answers, now_ms, stats)


def worker_effects(pool: WorkerPool, effects: list[WorkerEffect]) -> Procedure:
    """Carry out a worker pool's effects: interrupts, completions, releases, heartbeats."""
    beats: list[Heartbeat] = []
    for effect in effects:
        if isinstance(effect, Interrupt):
            yield InterruptHandler(effect)
        elif isinstance(effect, Heartbeat):
            beats.append(effect)
        elif isinstance(effect, Finish):
            yield FinishRequest(effect)
            pool.end_answered(effect.task_id, effect.attempt)
        elif isinstance(effect, Release):
            yield ReleaseRequest(effect)
    if beats:
        answers = yield HeartbeatRequest(tuple(beats))
        for beat, (held, status) in zip(beats, answers, strict=True):
            if held:
                pool.lease_held(beat.task_id, beat.attempt, beat.deadline_ms)
            else:
                more = pool.lease_refused(
                    beat.task_id, beat.attempt, cancelled=status is Status.CANCELLED
                )
                yield from worker_effects(pool, more)


def handler_ended(
    pool: WorkerPool,
    task_id: str,
    attempt: int,
    outcome: Outcome,
    now_ms: int,
    rng: random.Random,
) -> Procedure:
    """A handler finished: settle its slot and write the outcome (attempt-fenced)."""
    yield from worker_effects(pool, pool.handler_ended(task_id, attempt, outcome, now_ms, rng))

"""The worker side of one node: its slots, the leases they hold, heartbeats, timeouts, shutdown.

Like the scheduler, it is a state machine: the driver tells it what happened (an assignment was
taken, a handler ended, time passed, the store refused a heartbeat) and carries out what it asks
(run a handler, interrupt one, write a heartbeat, a completion or a release). Every store write
it asks for is fenced by the lease's attempt number, so a worker that lost its lease (its node
paused past the deadline, the task was cancelled) changes nothing.
"""

from __future__ import annotations

import heapq
import random
from collections import deque
from dataclasses import dataclass
from enum import StrEnum

from core.task import AttemptEnd, Outcome, RetryPolicy, end_attempt
from core.values import value


class StopReason(StrEnum):
    TIMEOUT = "timeout"  # ran past the task's timeout: a failure, retried per policy
    CANCELLED = "cancelled"  # cancelled by a client: the store already says so
    LEASE_LOST = "lease_lost"  # the store refused our heartbeat, or no heartbeat landed in time
    SHUTDOWN = "shutdown"  # the node is stopping: give the task back, it runs again elsewhere


@value
class Assignment:
    """A lease granted to this node, as read from the store when a slot took it."""

    task_id: str
    attempt: int
    type: str
    timeout_ms: int
    policy: RetryPolicy
    failures: int
    lease_deadline_ms: int


# ---- effects ----------------------------------------------------------------------------------
@value
class RunHandler:
    assignment: Assignment


@value
class Interrupt:
    task_id: str
    attempt: int
    reason: StopReason


@value
class Heartbeat:
    """Extend the lease to ``deadline_ms`` if this attempt still holds it."""

    task_id: str
    attempt: int
    node_id: str
    deadline_ms: int
    now_ms: int


@value
class Finish:
    """running (this attempt, this node) -> end.status, with result or error."""

    task_id: str
    attempt: int
    node_id: str
    end: AttemptEnd
    now_ms: int


@value
class Release:
    """running (this attempt, this node) -> queued: the node gives the task back unrun."""

    task_id: str
    attempt: int
    node_id: str
    now_ms: int


WorkerEffect = RunHandler | Interrupt | Heartbeat | Finish | Release


@dataclass(slots=True)
class _Running:
    assignment: Assignment
    started_ms: int
    timeout_at_ms: int
    # The latest lease deadline the store is known to hold for this attempt: the assignment's,
    # then each accepted heartbeat's. Past it the leader may lease the task again elsewhere.
    held_until_ms: int
    stop: StopReason | None = None
    # Its handler runs on past the attempt's end (a thread): settled, its slot stays held.
    outlives: bool = False


@dataclass(slots=True)
class _Ended:
    finish: Finish
    until_ms: int
    answered: bool


class WorkerPool:
    def __init__(self, node_id: str, slots: int, lease_ms: int) -> None:
        if slots < 0 or lease_ms <= 0:
            raise ValueError("slots must be >= 0 and lease_ms > 0")
        self.node_id = node_id
        self.slots = slots
        self.lease_ms = lease_ms
        # A third of the lease: two heartbeats may be lost or late before the lease lapses.
        self.heartbeat_every_ms = max(1, lease_ms // 3)
        # Keyed by (task id, attempt): a node can hold a newer attempt of a task whose older
        # attempt lost its lease but has not stopped yet (both occupy a slot until it does).
        self.running: dict[tuple[str, int], _Running] = {}
        # The attempts in ``running`` by task id: start() looks for an older attempt of the
        # task it starts without a pass over every run.
        self._attempts: dict[str, list[int]] = {}
        # Slots held by handlers whose attempt has ended (settled, written) but which still run:
        # a thread cannot be stopped. Each stays taken until its handler returns, or the next
        # task would start with no thread to run it.
        self.held = 0
        self.accepting = True
        self._shutdown_at_ms: int | None = None
        self._next_heartbeat_ms: int | None = None
        self._timeouts: list[tuple[int, str, int]] = []  # (timeout_at_ms, task_id, attempt)
        self.lapsed_skipped = 0  # assignments taken after their lease ran out (not started)
        self.redelivered = 0  # assignments of an attempt this node runs or ran (not run again)
        # The completions of attempts that ran here, for as long as the store may hand the
        # attempt over again (until: the later of the lease's length after the end, as long as
        # the driver sends it, and the latest deadline the store can hold), and whether the store
        # has answered it yet: _Ended(finish, until_ms, answered).
        self._ended: dict[tuple[str, int], _Ended] = {}
        # The same, oldest first, to forget them without a scan (until is nearly monotonic).
        self._ended_order: deque[tuple[int, tuple[str, int]]] = deque()

    @property
    def free(self) -> int:
        return self.slots - len(self.running) - self.held if self.accepting else 0

    @property
    def busy(self) -> int:
        return len(self.running) + self.held

    @property
    def offered(self) -> int:
        """The slots this node offers its leader: none while stopping, and none held."""
        return self.slots - self.held if self.accepting else 0

    def handler_outlives(self, task_id: str, attempt: int) -> bool:
        """The driver stopped waiting for this attempt's handler, which runs on (a thread
        cannot be stopped): once :meth:`handler_ended` settles the attempt, its slot stays
        held until :meth:`outlived_handler_returned`. False if it does not run here."""
        run = self.running.get((task_id, attempt))
        if run is None:
            return False
        run.outlives = True
        return True

    def outlived_handler_returned(self) -> None:
        assert self.held > 0, "no handler outlived its attempt"
        self.held -= 1

    def start(self, assignment: Assignment, now_ms: int) -> list[WorkerEffect]:
        """A slot took this assignment. Pull-when-free: the driver asks only while ``free``.
        The effects hold RunHandler if it starts (not if its lease has already run out)."""
        if self.free <= 0:
            raise RuntimeError("no free slot: the driver must not take assignments when full")
        key = (assignment.task_id, assignment.attempt)
        # The store handed this node an attempt it runs or ran: a store restart that lost its
        # last second of writes (AOF everysec) put the lease and the assignment back, or (over
        # separate connections) a take was answered after the end it raced. A second run would
        # be a duplicate, and a concurrent one once the first one's end lands.
        run = self.running.get(key)
        if run is not None:
            self.redelivered += 1
            # The store's deadline may be older than the one we hold (heartbeats it lost):
            # trust only what it says now, and renew at once.
            if assignment.lease_deadline_ms < run.held_until_ms:
                run.held_until_ms = assignment.lease_deadline_ms
                self._next_heartbeat_ms = now_ms
            return []
        ended = self._ended.get(key)
        if ended is not None and ended.until_ms > now_ms:
            self.redelivered += 1
            # Unanswered, the driver is still sending it; answered, the store may have lost
            # it since: send it again (attempt-fenced: refused if it already landed).
            return [ended.finish] if ended.answered else []
        effects: list[WorkerEffect] = []
        task_id = assignment.task_id
        attempts = self._attempts.get(task_id)
        for attempt in sorted(attempts) if attempts else ():
            run = self.running[(task_id, attempt)]
            if attempt < assignment.attempt and run.stop is None:
                # The store granted a newer attempt, so this one's lease is gone: stop it.
                run.stop = StopReason.LEASE_LOST
                effects.append(Interrupt(task_id, attempt, StopReason.LEASE_LOST))
        if now_ms >= assignment.lease_deadline_ms:
            # Its lease ran out before a slot took it (this node was down, paused or cut off
            # meanwhile): the task may run elsewhere by now. Not started, the slot stays free;
            # the leader's expiry counts the attempt and runs the task again.
            self.lapsed_skipped += 1
            return effects
        timeout_at = now_ms + assignment.timeout_ms
        self.running[key] = _Running(assignment, now_ms, timeout_at, assignment.lease_deadline_ms)
        self._attempts.setdefault(task_id, []).append(assignment.attempt)
        heapq.heappush(self._timeouts, (timeout_at, assignment.task_id, assignment.attempt))
        # Its first beat no later than two beats before its deadline (a run taken with little
        # of its lease left would otherwise lapse before the shared schedule renewed it).
        due = max(
            now_ms,
            min(
                now_ms + self.heartbeat_every_ms,
                assignment.lease_deadline_ms - 2 * self.heartbeat_every_ms,
            ),
        )
        if self._next_heartbeat_ms is None or due < self._next_heartbeat_ms:
            self._next_heartbeat_ms = due
        effects.append(RunHandler(assignment))
        return effects

    def handler_ended(
        self, task_id: str, attempt: int, outcome: Outcome, now_ms: int, rng: random.Random
    ) -> list[WorkerEffect]:
        """The handler returned, raised, or stopped after an Interrupt."""
        run = self.running.pop((task_id, attempt), None)
        if run is None:
            return []  # already settled (e.g. reported twice): nothing to write
        attempts = self._attempts[task_id]
        attempts.remove(attempt)
        if not attempts:
            del self._attempts[task_id]
        if run.outlives:
            self.held += 1  # the slot passes from the attempt to its stray handler
        a = run.assignment
        if run.stop is StopReason.TIMEOUT:
            outcome = Outcome.timeout(a.timeout_ms)
        elif run.stop is StopReason.SHUTDOWN and not outcome.ok:
            # Interrupted by our own shutdown: not the handler's failure. Give it back.
            return [Release(task_id, attempt, self.node_id, now_ms)]
        elif run.stop in (StopReason.CANCELLED, StopReason.LEASE_LOST):
            return []  # the store already moved on; a completion would be refused anyway
        end: AttemptEnd = end_attempt(a.policy, a.failures, outcome, now_ms, rng)
        finish = Finish(task_id, attempt, self.node_id, end, now_ms)
        until = max(now_ms + self.lease_ms, run.held_until_ms)
        key = (task_id, attempt)
        self._ended[key] = _Ended(finish, until, False)
        self._ended_order.append((until, key))
        return [finish]

    def end_answered(self, task_id: str, attempt: int) -> None:
        """The store answered this attempt's completion (applied, or refused as stale)."""
        ended = self._ended.get((task_id, attempt))
        if ended is not None:
            ended.answered = True

    def lease_refused(self, task_id: str, attempt: int, cancelled: bool) -> list[WorkerEffect]:
        """The store refused a heartbeat: the task was cancelled or another attempt owns it."""
        run = self.running.get((task_id, attempt))
        if run is None or run.stop is not None:
            return []
        run.stop = StopReason.CANCELLED if cancelled else StopReason.LEASE_LOST
        return [Interrupt(task_id, attempt, run.stop)]

    def cancelled(self, task_id: str, attempt: int | None) -> list[WorkerEffect]:
        """A client cancelled ``task_id`` while ``attempt`` ran here (None: a message that does
        not say which, from an older node): stop that run now, not at its next refused
        heartbeat. A later attempt of the task (retried by hand, leased here since) runs on."""
        effects: list[WorkerEffect] = []
        for run_attempt in list(self._attempts.get(task_id, ())):
            if attempt is None or run_attempt == attempt:
                effects += self.lease_refused(task_id, run_attempt, cancelled=True)
        return effects

    def lease_held(self, task_id: str, attempt: int, deadline_ms: int) -> None:
        """The store accepted a heartbeat: the lease holds until ``deadline_ms``."""
        run = self.running.get((task_id, attempt))
        if run is not None and deadline_ms > run.held_until_ms:
            run.held_until_ms = deadline_ms

    def shutdown(self, now_ms: int, grace_ms: int) -> list[WorkerEffect]:
        """Stop taking work; running tasks get ``grace_ms`` to finish, then are given back."""
        self.accepting = False
        self._shutdown_at_ms = now_ms + grace_ms
        return self.tick(now_ms)

    @property
    def idle(self) -> bool:
        return not self.running

    def next_due_ms(self) -> int | None:
        dues = [d for d in (self._next_heartbeat_ms, self._shutdown_at_ms) if d is not None]
        if self._timeouts:
            dues.append(self._timeouts[0][0])
        dues.extend(
            r.held_until_ms
            for r in self.running.values()
            if r.stop is None or r.stop is StopReason.SHUTDOWN
        )
        return min(dues) if dues else None

    def tick(self, now_ms: int) -> list[WorkerEffect]:
        effects: list[WorkerEffect] = []
        order = self._ended_order
        while order and order[0][0] <= now_ms:
            # No store can hold this attempt's lease any more: forget its end.
            _, key = order.popleft()
            ended = self._ended.get(key)
            if ended is not None and ended.until_ms <= now_ms:
                del self._ended[key]
        while self._timeouts and self._timeouts[0][0] <= now_ms:
            _, task_id, attempt = heapq.heappop(self._timeouts)
            run = self.running.get((task_id, attempt))
            if run is not None and run.stop is None:
                run.stop = StopReason.TIMEOUT
                effects.append(Interrupt(task_id, attempt, StopReason.TIMEOUT))
        if self._shutdown_at_ms is not None and now_ms >= self._shutdown_at_ms:
            for (task_id, attempt), run in sorted(self.running.items()):
                if run.stop is None:
                    run.stop = StopReason.SHUTDOWN
                    effects.append(Interrupt(task_id, attempt, run.stop))
        # Sorted (effects in one order, for the simulation's replay) only once one has lapsed:
        # this runs on every tick.
        lapsed = [
            key
            for key, run in self.running.items()
            if now_ms >= run.held_until_ms and run.stop in (None, StopReason.SHUTDOWN)
        ]
        for task_id, attempt in sorted(lapsed) if lapsed else ():
            # No heartbeat of ours landed before the lease ran out (the store unreachable, the
            # node paused): the task may already run elsewhere. Stop, write nothing; the
            # leader's expiry counts it and runs it again. A run our shutdown stopped was
            # interrupted already: its end is not written either, but no second stop.
            run = self.running[(task_id, attempt)]
            if run.stop is None:
                effects.append(Interrupt(task_id, attempt, StopReason.LEASE_LOST))
            run.stop = StopReason.LEASE_LOST
        if self._next_heartbeat_ms is not None and now_ms >= self._next_heartbeat_ms:
            deadline = now_ms + self.lease_ms
            for (task_id, attempt), run in sorted(self.running.items()):
                if run.stop is None or run.stop is StopReason.SHUTDOWN:
                    effects.append(Heartbeat(task_id, attempt, self.node_id, deadline, now_ms))
            self._next_heartbeat_ms = now_ms + self.heartbeat_every_ms if self.running else None
        return effects

    def check_invariants(self) -> None:
        running = self.running
        if len(running) + self.held > self.slots:
            raise RuntimeError(
                f"{len(running)} tasks run and {self.held} slots are held, on {self.slots} slots"
            )
        # The index holds every running attempt, and as many entries as there are runs: no
        # more (the simulation checks this after every step, so no sorted copies).
        index = self._attempts
        if sum(map(len, index.values())) != len(running) or any(
            attempt not in index.get(task_id, ()) for task_id, attempt in running
        ):
            raise RuntimeError(f"attempts index {index} is not that of {list(running)}")
        live: set[str] = set()
        for (task_id, attempt), run in running.items():
            a = run.assignment
            if a.task_id != task_id or a.attempt != attempt or attempt < 1:
                raise RuntimeError(f"bad running record for {task_id} attempt {attempt}")
            if run.stop is None:
                if task_id in live:
                    raise RuntimeError(f"two live attempts of {task_id} on one node")
                live.add(task_id)

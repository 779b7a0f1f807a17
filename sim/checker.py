"""The invariants of issue #5, checked while a run goes, from what the store applied and what the
nodes did. The checker keeps its own books (leases, attempts, executions, epochs); it never trusts
the core's or the store's bookkeeping to judge the core or the store.

1. Every task acknowledged to a client reaches a terminal state once faults heal (under
   ``everysec`` fsync, the acknowledged tasks a store restart lost are counted, not failed).
2. No two live leases for one task: an execution of attempt k+1 starts only when every earlier
   execution has ended or its lease deadline has passed, and no execution starts once its own
   lease has run out; the store applies no completion from a stale attempt.
3. At most one leader per term; no leader write lands once a newer epoch was raised.
4. No lower-priority task is leased while a higher-priority one waits in the same leader's queue.
5. Retries never exceed a task's policy; dependants never start before their dependencies succeed.
6. Liveness: after the last fault heals, all work finishes within a bound.

A violation raises :class:`ViolationFound` at once, out of the SimPy run: the run stops there and
its report shows the invariant, the message and the events that led to it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.scheduler import Role, Scheduler
from core.store_model import StoreModel
from core.task import AttemptEnd, ErrorKind, Status, TaskState

INVARIANTS = {
    0: "the core's own check_invariants() (or a driver crash)",
    1: "every acknowledged task reaches a terminal state",
    2: "no two live leases for one task; no stale completion applied",
    3: "one leader per term; no leader write after a newer epoch",
    4: "no lower priority leased while a higher one waits",
    5: "retries within policy; dependants after their dependencies",
    6: "liveness: all work finishes within the bound after faults heal",
}


# A leader's claim comes this long, at most, after the votes that elected it (an election
# round, and the first leader round after it): restarts since then count as lost history.
VOTES_BEFORE_CLAIM_S = 1.0


class ViolationFound(Exception):
    def __init__(self, invariant: int, message: str) -> None:
        # Both in args: SimPy re-raises a failed process's exception as type(e)(*e.args).
        super().__init__(invariant, message)
        self.invariant = invariant
        self.message = message

    def __str__(self) -> str:
        return f"invariant {self.invariant}: {self.message}"


@dataclass(frozen=True, slots=True)
class TaskFacts:
    """What the checker needs to know of a submitted task (from the load generator)."""

    priority: int
    max_retries: int
    depends_on: tuple[str, ...]
    type: str = "sim"


@dataclass(slots=True)
class _Execution:
    attempt: int
    node: str
    start_s: float
    # A store restore came back without this run's lease (everysec): the store may grant its
    # attempt again, or a next one, while it runs on.
    forgotten: bool = False


@dataclass
class Counters:
    acked: int = 0
    completed: int = 0  # acknowledged tasks that succeeded
    dead: int = 0
    executions: int = 0
    handler_failures: int = 0  # failing completions the store applied
    stale_refused: int = 0  # completions the store refused (the attempt had lost its lease)
    # A newer attempt started while an older one's handler still ran, its lease lapsed: legal
    # (at-least-once), but the work ran twice at once. Workers stop handlers whose lease they
    # cannot show held (WorkerPool.tick), so only a node that is paused or crashed leaves one.
    overlaps: int = 0
    store_restores: int = 0
    # Cancels the store applied, and retries by hand (a cancelled or dead task queued again).
    cancelled: int = 0
    retried_by_hand: int = 0
    # Handlers started for an attempt already cancelled: the node took its assignment before
    # the cancel and heard of it after (pub/sub or a refused heartbeat stops it).
    ran_cancelled: int = 0
    # Runs of an attempt number a restore forgot and granted again, beside the first (everysec).
    restore_reruns: int = 0
    leader_writes: int = 0
    elections: int = 0
    failovers_s: list[float] = field(default_factory=list)


class Checker:
    def __init__(
        self,
        facts: Mapping[str, TaskFacts],
        skew_ms_max: int,
        now_s: Any,
    ) -> None:
        self.facts = facts
        # Deadlines are written in the writer's clock; the new attempt exists only once the
        # store judged the old deadline passed by the leader's clock, so allow the skew bound.
        self.skew_tolerance_ms = skew_ms_max + 1
        self._now_s = now_s
        self.counters = Counters()
        self.acked: dict[str, float] = {}  # task id -> ack time
        self.max_epoch = 0
        # The leaders of each term (more than one only where Raft history was lost), and when
        # the last of them claimed it.
        self.leader_of_term: dict[int, tuple[set[str], float]] = {}
        # Whether enough Raft members (as many as two majorities share) restarted from an empty
        # journal since a time that terms may repeat (the world says; see
        # SimRaftCluster.history_lost_since).
        self.raft_history_lost_since: Callable[[float], bool] = lambda _since: False
        self.epoch_holder: dict[int, str] = {}  # who raised each epoch, as the store accepted
        # The checker's own books, from the store's applied writes:
        self.lease_of: dict[str, tuple[int, str]] = {}  # task -> (attempt, node) last leased
        self.deadline_ms: dict[tuple[str, int], int] = {}  # (task, attempt) -> lease deadline
        self.failures: dict[str, int] = {}  # failing completions applied, per task
        self.expiries: dict[str, int] = {}  # lease expiries applied, per task
        self.releases: dict[str, int] = {}  # releases applied, per task
        # Retries by hand applied, per task: each allows one more attempt, and resets the
        # retry policy (failures counted from `failures_before_retry`, as the store counts).
        self.by_hand: dict[str, int] = {}
        self.failures_before_retry: dict[str, int] = {}
        # A task retried by hand -> the attempt it had: its next lease is exactly the one after.
        self.retry_floor: dict[str, int] = {}
        # (task, attempt) whose lease a cancel ended: not live, though its handler may still run.
        self.cancelled_leases: set[tuple[str, int]] = set()
        self.on_ended: Callable[[str, bool], None] = lambda _task, _cancelled: None
        self.succeeded: set[str] = set()
        self.terminal: set[str] = set()
        self.live_execs: dict[str, list[_Execution]] = {}
        self.execs_per_task: dict[str, int] = {}
        self.applied: set[str] = set()  # tasks whose submission the store applied
        self.lost: set[str] = set()  # applied, then gone with a store restore
        # Tasks a restore rolled back -> the highest attempt granted before it: a completion
        # of one of those may carry failures the store forgot (excused once per task).
        self.rolled_back: dict[str, int] = {}
        # Tasks counted in completed, dead or cancelled, and as which (a retry by hand uncounts).
        self._counted: dict[str, Status] = {}
        self._failover_from: tuple[float, int] | None = None

    def fail(self, invariant: int, message: str) -> None:
        raise ViolationFound(invariant, message)

    # ------------------------------------------------------------------ clients
    def on_submit_applied(self, task_ids: Iterable[str]) -> None:
        self.applied.update(task_ids)

    def on_ack(self, task_id: str) -> None:
        if task_id not in self.acked:
            self.acked[task_id] = self._now_s()
            self.counters.acked += 1

    # ------------------------------------------------------------------ leaders (invariant 3)
    def on_leader_claim(self, node: str, term: int) -> None:
        claim = self.leader_of_term.get(term)
        if claim is None:
            self.leader_of_term[term] = ({node}, self._now_s())
            self.counters.elections += 1
        elif node not in claim[0]:
            if not self.raft_history_lost_since(claim[1] - VOTES_BEFORE_CLAIM_S):
                self.fail(3, f"two leaders in term {term}: {sorted(claim[0])[0]} and {node}")
            # Raft state is in memory: members that voted in this term restarted since, and
            # a leader of it was elected again. The store's fence keeps the two apart (one
            # holder per epoch); both may go on claiming it.
            claim[0].add(node)
            self.leader_of_term[term] = (claim[0], self._now_s())
            self.counters.elections += 1

    def on_epoch_raised(self, term: int, holder: str = "") -> None:
        self.max_epoch = max(self.max_epoch, term)
        other = self.epoch_holder.setdefault(term, holder)
        if holder and other and other != holder:
            self.fail(3, f"epoch {term} raised by {other} and by {holder}")

    def on_leader_write(self, term: int, what: str, *what_args: object) -> None:
        """``what.format(*what_args)`` names the write: formatted only for a violation (one
        call per leader write)."""
        self.counters.leader_writes += 1
        if term < self.max_epoch:
            what = what.format(*what_args)
            self.fail(3, f"{what} of term {term} applied after epoch {self.max_epoch} was raised")

    def on_leader_lost(self, term: int) -> None:
        """A fault took the leader of ``term`` out: failover runs until a newer term leases."""
        if self._failover_from is None and term > 0:
            self._failover_from = (self._now_s(), term)

    # ------------------------------------------------------------------ store writes
    def on_lease(self, task_id: str, attempt: int, node: str, deadline_ms: int, term: int) -> None:
        facts = self.facts.get(task_id)
        if task_id in self.terminal:
            self.fail(2, f"{task_id} leased (attempt {attempt}) after it ended")
        floor = self.retry_floor.pop(task_id, None)
        if floor is not None and attempt != floor + 1:
            self.fail(5, f"{task_id} retried by hand after attempt {floor}, leased as {attempt}")
        before = self.lease_of.get(task_id)
        if before is not None and attempt <= before[0]:
            # The attempt is the completion's fencing token: reused, a late completion of the
            # older attempt would be taken for this one's.
            self.fail(2, f"{task_id} leased as attempt {attempt} after attempt {before[0]}")
        self.lease_of[task_id] = (attempt, node)
        self.deadline_ms[(task_id, attempt)] = deadline_ms
        if facts is not None:
            allowed = (
                1
                + self.failures.get(task_id, 0)
                + self.expiries.get(task_id, 0)
                + self.releases.get(task_id, 0)
                + self.by_hand.get(task_id, 0)
            )
            if attempt > allowed:
                self.fail(
                    5,
                    f"{task_id} leased for attempt {attempt}, but only {allowed} are allowed "
                    f"(failures, expiries, releases and retries by hand so far)",
                )
            if self._policy_failures(task_id) > facts.max_retries:
                self.fail(5, f"{task_id} leased again after {facts.max_retries} retries")
            for dep in facts.depends_on:
                if dep not in self.succeeded:
                    self.fail(5, f"{task_id} leased before its dependency {dep} succeeded")
        if self._failover_from is not None and term > self._failover_from[1]:
            self.counters.failovers_s.append(self._now_s() - self._failover_from[0])
            self._failover_from = None

    def on_heartbeat(self, task_id: str, attempt: int, deadline_ms: int) -> None:
        key = (task_id, attempt)
        if deadline_ms > self.deadline_ms.get(key, 0):
            self.deadline_ms[key] = deadline_ms

    def _check_holder(self, task_id: str, attempt: int, node: str, what: str) -> None:
        if self.lease_of.get(task_id) != (attempt, node):
            self.fail(
                2,
                f"{what} of {task_id} attempt {attempt} on {node} applied, but the lease is "
                f"{self.lease_of.get(task_id)}",
            )

    def on_finish(self, task_id: str, attempt: int, node: str, end: AttemptEnd) -> None:
        self._check_holder(task_id, attempt, node, "completion")
        self.lease_of[task_id] = (attempt, "")  # settled: no further completion may land
        facts = self.facts.get(task_id)
        if end.status is not Status.SUCCEEDED:
            self.failures[task_id] = self.failures.get(task_id, 0) + 1
            failures = self._policy_failures(task_id)
            self.counters.handler_failures += 1
            if failures != end.failures and attempt <= self.rolled_back.get(task_id, 0):
                # A store restore (everysec) rolled this task back, and reused its attempt
                # number: a completion written before the restore (its worker kept sending it)
                # counts the failures its run saw, which the store forgot. The store takes them.
                del self.rolled_back[task_id]
                self.failures[task_id] += end.failures - failures
                failures = end.failures
            if failures != end.failures:
                self.fail(
                    5, f"{task_id}: {failures} failures applied, the store counts {end.failures}"
                )
            if facts is not None:
                if end.status is Status.FAILED and failures > facts.max_retries:
                    self.fail(
                        5,
                        f"{task_id} retried after {failures} failures "
                        f"(max_retries {facts.max_retries})",
                    )
                # A rejection (the handler raised TaskRejected) ends it with retries left.
                rejected = end.error.get("kind") == ErrorKind.REJECTED.value
                if end.status is Status.DEAD and failures <= facts.max_retries and not rejected:
                    self.fail(5, f"{task_id} dead after {failures} failures with retries left")
        else:
            self.succeeded.add(task_id)
        if end.status.terminal:
            self.on_terminal(task_id, end.status)

    def on_release(self, task_id: str, attempt: int, node: str) -> None:
        self._check_holder(task_id, attempt, node, "release")
        self.lease_of[task_id] = (attempt, "")
        self.releases[task_id] = self.releases.get(task_id, 0) + 1

    def on_expire(self, task_id: str, attempt: int, status: Status) -> None:
        self.lease_of[task_id] = (attempt, "")
        self.expiries[task_id] = self.expiries.get(task_id, 0) + 1
        if status.terminal:
            self.on_terminal(task_id, status)

    def _policy_failures(self, task_id: str) -> int:
        """Failures the retry policy counts: those since the last retry by hand."""
        return self.failures.get(task_id, 0) - self.failures_before_retry.get(task_id, 0)

    def on_terminal(self, task_id: str, status: Status) -> None:
        if task_id in self.terminal:
            return
        self.terminal.add(task_id)
        # Counted once per end: a store restore may roll an end back and it ends again.
        if task_id in self._counted:
            return
        self._counted[task_id] = status
        if status is Status.SUCCEEDED:
            if task_id in self.acked:
                self.counters.completed += 1
        elif status is Status.DEAD:
            self.counters.dead += 1
        elif status is Status.CANCELLED:
            self.counters.cancelled += 1
        if status is not Status.SUCCEEDED:
            self.on_ended(task_id, status is Status.CANCELLED)

    def on_cancel(self, task_id: str, attempt: int, running_on: str) -> None:
        """The store cancelled a task that had not ended; ``running_on``: the node whose lease
        the cancel ended ("" if it was not running)."""
        if running_on:
            self.cancelled_leases.add((task_id, attempt))
        # Settled: no completion of this attempt (or any before it) may land now.
        self.lease_of[task_id] = (attempt, "")
        self.on_terminal(task_id, Status.CANCELLED)

    def on_retry(self, task_id: str) -> None:
        """The store queued a cancelled or dead task again (a retry by hand)."""
        if task_id not in self.terminal:
            self.fail(5, f"{task_id} retried by hand, but it had not ended")
        self.terminal.discard(task_id)
        self.counters.retried_by_hand += 1
        self.by_hand[task_id] = self.by_hand.get(task_id, 0) + 1
        self.retry_floor[task_id] = self.lease_of.get(task_id, (0, ""))[0]
        self.failures_before_retry[task_id] = self.failures.get(task_id, 0)
        # Counted again by how it ends this time.
        counted = self._counted.pop(task_id, None)
        if counted is Status.DEAD:
            self.counters.dead -= 1
        elif counted is Status.CANCELLED:
            self.counters.cancelled -= 1

    # ------------------------------------------------------------------ executions (invariant 2)
    def on_exec_start(self, task_id: str, attempt: int, node: str) -> None:
        now_s = self._now_s()
        now_ms = now_s * 1000.0
        self.counters.executions += 1
        self.execs_per_task[task_id] = self.execs_per_task.get(task_id, 0) + 1
        live = self.live_execs.setdefault(task_id, [])
        for other in live:
            if other.attempt == attempt:
                if other.node != node and other.forgotten:
                    # everysec: the store came back without that run's lease and granted the
                    # attempt's number again. A duplicate run the window allows, counted.
                    self.counters.overlaps += 1
                    self.counters.restore_reruns += 1
                    continue
                self.fail(2, f"{task_id} attempt {attempt} runs on {other.node} and {node}")
            if other.attempt < attempt:
                deadline = self.deadline_ms.get((task_id, other.attempt), 0)
                if (task_id, other.attempt) in self.cancelled_leases:
                    pass  # its lease ended with the cancel; the handler just has not heard yet
                elif other.forgotten:
                    self.counters.restore_reruns += 1  # a restore lost its lease (everysec)
                elif deadline > now_ms + self.skew_tolerance_ms:
                    self.fail(
                        2,
                        f"{task_id} attempt {attempt} started on {node} while attempt "
                        f"{other.attempt} still runs on {other.node} with a live lease "
                        f"(deadline {deadline} ms > now {now_ms:.0f} ms)",
                    )
                self.counters.overlaps += 1
        if (task_id, attempt) in self.cancelled_leases:
            self.counters.ran_cancelled += 1
        own_deadline = self.deadline_ms.get((task_id, attempt), 0)
        if own_deadline < now_ms - self.skew_tolerance_ms:
            # A lapsed lease is not a live one: the leader may have granted the next attempt.
            self.fail(
                2,
                f"{task_id} attempt {attempt} started on {node} after its lease ran out "
                f"(deadline {own_deadline} ms < now {now_ms:.0f} ms)",
            )
        facts = self.facts.get(task_id)
        if facts is not None:
            for dep in facts.depends_on:
                if dep not in self.succeeded:
                    self.fail(5, f"{task_id} started before its dependency {dep} succeeded")
        live.append(_Execution(attempt, node, now_s))

    def on_exec_end(self, task_id: str, attempt: int, node: str) -> None:
        live = self.live_execs.get(task_id)
        if not live:
            return
        for i, run in enumerate(live):
            if run.attempt == attempt and run.node == node:
                del live[i]
                break
        if not live:
            del self.live_execs[task_id]

    def on_node_crash(self, node: str) -> None:
        """The crashed node's handlers vanish with it: their executions end now."""
        for task_id in sorted(self.live_execs):
            live = [run for run in self.live_execs[task_id] if run.node != node]
            if live:
                self.live_execs[task_id] = live
            else:
                del self.live_execs[task_id]

    # ------------------------------------------------------------------ store restarts
    def on_store_restored(self, model: StoreModel) -> None:
        """The store came back from its last fsync point: writes after it are gone. Re-derive
        the books from what survived (the checker cannot hold the store to writes it lost)."""
        self.counters.store_restores += 1
        tasks = model.tasks
        for task_id, (attempt, _node) in self.lease_of.items():
            if task_id in tasks:
                self.rolled_back[task_id] = max(attempt, self.rolled_back.get(task_id, 0))
        # A cancel the restore undid: that lease is live again.
        self.cancelled_leases = {
            (t, a)
            for t, a in self.cancelled_leases
            if not (
                (record := tasks.get(t)) is not None
                and record.status is Status.RUNNING
                and record.attempt == a
            )
        }
        for task_id, runs in self.live_execs.items():
            record = tasks.get(task_id)
            for run in runs:
                if (
                    record is None
                    or record.status is not Status.RUNNING
                    or record.attempt != run.attempt
                    or record.lease_node != run.node
                ):
                    run.forgotten = True
        # Every task the store had applied and no longer has is lost, acknowledged or not yet:
        # an answer already on the wire may still acknowledge it after the restore.
        self.lost |= {task_id for task_id in self.applied if task_id not in tasks}
        # `succeeded` stays as it was: a success the restore forgot did happen (its dependants may
        # have started on it), and the task runs again (an at-least-once duplicate).
        self.terminal = {t for t, r in tasks.items() if r.status.terminal}
        self.lease_of = {
            t: (r.attempt, r.lease_node if r.status is Status.RUNNING else "")
            for t, r in tasks.items()
        }
        self.failures = {t: r.failures for t, r in tasks.items() if r.failures}
        self.expiries = {t: r.lease_expiries for t, r in tasks.items() if r.lease_expiries}
        # Releases and retries by hand are not stored: allow every attempt made so far.
        self.releases = {t: r.attempt for t, r in tasks.items() if r.attempt}
        self.by_hand = {}
        self.failures_before_retry = {}  # the store's failures count from its last retry
        self.retry_floor = {}

    # ------------------------------------------------------------------ the end (1, 6)
    def lost_acked(self, model: StoreModel) -> int:
        """Acknowledged tasks that a store restore lost (everysec): a figure, not a failure.
        (A lost task that a client resubmitted before its acknowledgement exists again.)"""
        tasks = model.tasks
        return sum(1 for t in self.lost if t in self.acked and t not in tasks)

    def unfinished(self, model: StoreModel, among: Iterable[str] | None = None) -> list[str]:
        """Acknowledged tasks (of ``among``, default all) not terminal in the store. A task a
        store restore lost is excepted, unless a client's retry created it again."""
        tasks = model.tasks
        lost = self.lost
        out = []
        for task_id in self.acked if among is None else among:
            record = tasks.get(task_id)
            if record is None:
                # Gone: lost by a restore (counted apart), or swept after it ended (finished).
                if task_id not in lost and task_id not in self._counted:
                    out.append(task_id)
            elif not record.status.terminal:
                out.append(task_id)
        return out

    def duplicates(self) -> int:
        """Executions beyond one per task and one per failing attempt: at-least-once re-runs."""
        total = 0
        for task_id, runs in self.execs_per_task.items():
            # A retry by hand asks for a run more, and a cancelled one ends early.
            expected = 1 + self.failures.get(task_id, 0) + self.by_hand.get(task_id, 0)
            total += max(0, runs - expected)
        return total

    def final_check(
        self,
        model: StoreModel,
        missing: Iterable[str],
        bound_s: float,
        leader: Scheduler | None = None,
    ) -> None:
        """Fail invariant 1 (and 6) if acknowledged tasks are unfinished; say, for each, what
        the store holds and how the current leader's cache sees it."""
        missing = sorted(missing)
        if not missing:
            return
        lines: list[str] = []
        out_of_sync = 0
        blocked = 0  # waiting on a dependency that is itself unfinished
        absent = 0  # acknowledged, yet the store never had it (or lost it unnoticed)
        starved = 0  # queued in sync, but the leader's slots are taken by phantom leases
        phantoms = phantom_leases(leader, model)
        for task_id in missing:
            record = model.tasks.get(task_id)
            view = cache_view(leader, task_id)
            if record is None:
                absent += 1
            elif not in_sync(record.status, view):
                out_of_sync += 1
            elif record.status is Status.PENDING and any(
                dep in model.tasks and not model.tasks[dep].status.terminal
                for dep in record.depends_on
            ):
                blocked += 1
            elif record.status is Status.QUEUED and phantoms:
                starved += 1
            if len(lines) < 5:
                if record is None:
                    lines.append(f"{task_id}: absent from the store")
                else:
                    store = _describe(record.state())
                    lines.append(f"{task_id}: store {store}; leader's cache: {view}")
        who = (
            "no node leads"
            if leader is None
            else f"leader {leader.node_id} ({leader.role.value}, term {leader.term})"
        )
        diagnosis = ""
        if absent:
            diagnosis = f" {absent} of them are absent from the store."
        elif (
            leader is None
            or leader.role is not Role.LEADING
            or (out_of_sync and out_of_sync + blocked + starved == len(missing))
        ):
            diagnosis = (
                " DIAGNOSIS: the leader's cache is out of sync with the store (a lost store "
                "answer or notification was never reconciled)"
            )
            if phantoms:
                diagnosis += (
                    f"; {phantoms} of its slots are held by leases the store does not hold "
                    "(their answers were lost)"
                )
            diagnosis += "."
        self.fail(
            1,
            f"{len(missing)} acknowledged tasks not terminal {bound_s:.0f} s after the faults "
            f"healed and the load stopped (invariant 6 too); {who}.{diagnosis} First: "
            + "; ".join(lines),
        )


def cache_view(sched: Scheduler | None, task_id: str) -> str:
    """How a leader's scheduler cache files a task (for violation reports)."""
    if sched is None:
        return "no leader"
    if task_id in sched.leasing:
        return f"leasing to {sched.leasing[task_id]} (Lease sent, no answer seen)"
    if task_id in sched.expiring:
        return "expiring (Expire sent, no answer seen)"
    if task_id in sched.promoting:
        return "promoting (Promote sent, no answer seen)"
    if task_id in sched.queued_types:
        return "queued"
    if task_id in sched.leases:
        return "running"
    if task_id in sched.waiting:
        return "waiting"
    return "absent"


def phantom_leases(sched: Scheduler | None, model: StoreModel) -> int:
    """Leases a leader counts as in flight (holding a node's slot) that the store does not
    have: their answer was lost, so the slot stays taken in the leader's view for good."""
    if sched is None:
        return 0
    count = 0
    for task_id, node_id in sched.leasing.items():
        record = model.tasks.get(task_id)
        if record is None or record.status is not Status.RUNNING or record.lease_node != node_id:
            count += 1
    return count


def in_sync(status: Status, view: str) -> bool:
    """Does the leader's view agree with the store's status of a live task?"""
    if status is Status.QUEUED:
        return view == "queued"
    if status is Status.RUNNING:
        return view == "running"
    if status in (Status.PENDING, Status.FAILED):
        return view == "waiting"
    return True


def _describe(state: TaskState) -> str:
    text = f"{state.status.value} attempt {state.attempt}"
    if state.status is Status.RUNNING:
        text += f" on {state.lease_node} until {state.lease_deadline_ms} ms"
    if state.run_at_ms:
        text += f" run_at {state.run_at_ms} ms"
    if state.depends_on:
        text += f" after {','.join(state.depends_on)}"
    return text

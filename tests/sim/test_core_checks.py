"""The core's check_invariants(), which the simulation runs after every step, still catches
every kind of corruption it is meant to (it was rewritten for speed: one pass per collection)."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from core.events import Elected, EpochRaised, NodeSeen, Rebuilt, TasksChanged
from core.priority import Priority
from core.scheduler import InvariantError, Role, Scheduler
from core.task import RetryPolicy, Status, TaskState
from core.worker import Assignment, StopReason, WorkerPool


def state(tid: str, status: Status = Status.QUEUED, **kw: object) -> TaskState:
    fields: dict[str, object] = {"type": "t", "priority": Priority.MEDIUM, "seq": 1}
    fields.update(kw)
    return TaskState(id=tid, status=status, **fields)  # type: ignore[arg-type]


def leader() -> Scheduler:
    """A leader with one task of every kind: queued, leased, lease in flight, waiting on a
    dependency (with a promotion in flight), and an expiry in flight."""
    s = Scheduler("n1")
    s.step(NodeSeen("n1", 1, None, 0))
    s.step(NodeSeen("n2", 2, None, 0))
    s.step(Elected(1, 0))
    s.step(EpochRaised(1, True, 0))
    s.step(Rebuilt(1, 0))
    s.step(
        TasksChanged(
            (
                state("run", Status.RUNNING, attempt=1, lease_node="n2", lease_deadline_ms=10),
                state("exp", Status.RUNNING, attempt=2, lease_node="n2", lease_deadline_ms=10),
                state("wait", Status.PENDING, depends_on=("dep",), run_at_ms=0),
                state("fly", seq=2),  # leased at once to n1's free slot
                state("q1", seq=3),
            ),
            0,
        )
    )
    s.expiring.add("exp")
    assert s.role is Role.LEADING
    assert "fly" in s.leasing and "q1" in s.queued_types and "wait" in s.promoting
    s.check_invariants()
    return s


def _follower_cache(s: Scheduler) -> None:
    s.role = Role.FOLLOWER


def _typed_not_queued(s: Scheduler) -> None:
    s.queue.remove("q1")
    s.queued_types["x"] = "t"
    s.queue.push("y", 1, 9)


def _heap_size(s: Scheduler) -> None:
    s.queue.push("y", 1, 9)


def _two_states(s: Scheduler) -> None:
    s.waiting["run"] = state("run", Status.PENDING)


def _two_states_queued(s: Scheduler) -> None:
    s.leasing["q1"] = "n1"
    s.nodes["n1"].busy += 1


def _lease_not_running(s: Scheduler) -> None:
    s.leases["run"] = state("run", Status.QUEUED, attempt=1, lease_node="n2")


def _lease_wrong_id(s: Scheduler) -> None:
    s.leases["run"] = state("other", Status.RUNNING, attempt=1, lease_node="n2")


def _lease_attempt_zero(s: Scheduler) -> None:
    s.leases["run"] = state("run", Status.RUNNING, attempt=0, lease_node="n2")


def _busy_count(s: Scheduler) -> None:
    s.nodes["n2"].busy += 1


def _busy_in_flight(s: Scheduler) -> None:
    s.nodes["n1"].busy -= 1


def _waiting_status(s: Scheduler) -> None:
    s.waiting["wait"] = state("wait", Status.QUEUED, depends_on=("dep",))


def _dependant_not_waiting(s: Scheduler) -> None:
    s.dependants.setdefault("dep", set()).add("ghost")


def _dependant_other_dep(s: Scheduler) -> None:
    s.dependants.setdefault("other", set()).add("wait")


def _promoting(s: Scheduler) -> None:
    s.promoting.add("q1")


def _expiring(s: Scheduler) -> None:
    s.expiring.add("wait")


@pytest.mark.parametrize(
    "corrupt",
    [
        _follower_cache,
        _typed_not_queued,
        _heap_size,
        _two_states,
        _two_states_queued,
        _lease_not_running,
        _lease_wrong_id,
        _lease_attempt_zero,
        _busy_count,
        _busy_in_flight,
        _waiting_status,
        _dependant_not_waiting,
        _dependant_other_dep,
        _promoting,
        _expiring,
    ],
)
def test_scheduler_check_catches(corrupt: Callable[[Scheduler], None]) -> None:
    s = leader()
    corrupt(s)
    with pytest.raises(InvariantError):
        s.check_invariants()


def assignment(tid: str, attempt: int) -> Assignment:
    return Assignment(tid, attempt, "t", 1000, RetryPolicy(3, 10, 100), 0, 3000)


def pool() -> WorkerPool:
    p = WorkerPool("n1", 3, 3000)
    p.start(assignment("a", 1), 0)
    p.start(assignment("a", 2), 0)  # stops attempt 1 (lease lost): both hold a slot
    p.start(assignment("b", 1), 0)
    p.check_invariants()
    return p


def _too_many(p: WorkerPool) -> None:
    p.slots = 2


def _bad_key(p: WorkerPool) -> None:
    p.running[("c", 1)] = p.running.pop(("b", 1))


def _bad_attempt(p: WorkerPool) -> None:
    run = p.running.pop(("b", 1))
    p.running[("b", 0)] = run
    object.__setattr__(run, "assignment", assignment("b", 0))


def _two_live(p: WorkerPool) -> None:
    p.running[("a", 1)].stop = None


def test_worker_pool_check_catches() -> None:
    for corrupt in (_too_many, _bad_key, _bad_attempt, _two_live):
        p = pool()
        corrupt(p)
        with pytest.raises(RuntimeError):
            p.check_invariants()
    p = pool()
    assert p.running[("a", 1)].stop is StopReason.LEASE_LOST

"""The checker can fail: each invariant, fed a history that breaks it, raises ViolationFound."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from core.dispatch import NodeSlots
from core.events import Elected, EpochRaised, NodeSeen, Rebuilt, TasksChanged
from core.priority import Priority
from core.scheduler import SchedulerConfig
from core.store_model import NewTask, StoreModel
from core.task import AttemptEnd, Status, TaskState
from sim.checker import Checker, TaskFacts, ViolationFound
from sim.node import CheckedScheduler


class Clock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


def make(facts: dict[str, TaskFacts] | None = None) -> tuple[Checker, Clock]:
    clock = Clock()
    return Checker(facts or {}, skew_ms_max=40, now_s=clock), clock


def caught(invariant: int) -> Any:
    return pytest.raises(ViolationFound, match=f"invariant {invariant}:")


def test_second_live_lease_is_caught() -> None:
    checker, clock = make()
    checker.on_lease("t1", 1, "n1", deadline_ms=10_000, term=1)
    checker.on_exec_start("t1", 1, "n1")
    checker.on_expire("t1", 1, Status.QUEUED)  # a (buggy) early expiry
    checker.on_lease("t1", 2, "n2", deadline_ms=12_000, term=1)
    clock.now_s = 5.0  # attempt 1's lease (10 s) is still live and it still runs
    with caught(2):
        checker.on_exec_start("t1", 2, "n2")


def test_rerun_after_the_deadline_is_allowed() -> None:
    checker, clock = make()
    checker.on_lease("t1", 1, "n1", deadline_ms=3_000, term=1)
    checker.on_exec_start("t1", 1, "n1")  # its node then freezes, the lease lapses
    checker.on_expire("t1", 1, Status.QUEUED)
    checker.on_lease("t1", 2, "n2", deadline_ms=9_000, term=1)
    clock.now_s = 3.6
    checker.on_exec_start("t1", 2, "n2")
    assert checker.duplicates() == 1


def test_a_start_after_the_own_lease_ran_out_is_caught() -> None:
    checker, clock = make()
    checker.on_lease("t1", 1, "n1", deadline_ms=3_000, term=1)
    clock.now_s = 3.02  # late, but within the clock skew the checker allows
    checker.on_exec_start("t1", 1, "n1")
    checker.on_exec_end("t1", 1, "n1")
    checker.on_lease("t1", 2, "n1", deadline_ms=6_000, term=1)
    clock.now_s = 6.1  # its node was paused between the take and the start
    with caught(2):
        checker.on_exec_start("t1", 2, "n1")


def test_stale_completion_is_caught() -> None:
    checker, _ = make()
    checker.on_lease("t1", 1, "n1", deadline_ms=3_000, term=1)
    checker.on_expire("t1", 1, Status.QUEUED)
    checker.on_lease("t1", 2, "n2", deadline_ms=9_000, term=1)
    with caught(2):
        checker.on_finish("t1", 1, "n1", AttemptEnd(Status.SUCCEEDED, 0))


def test_two_leaders_in_one_term_are_caught() -> None:
    checker, _ = make()
    checker.on_leader_claim("n1", 3)
    checker.on_leader_claim("n1", 3)
    with caught(3):
        checker.on_leader_claim("n2", 3)


def test_write_after_newer_epoch_is_caught() -> None:
    checker, _ = make()
    checker.on_epoch_raised(4)
    checker.on_leader_write(4, "lease")
    with caught(3):
        checker.on_leader_write(3, "drain by n1")


def test_retries_beyond_policy_are_caught() -> None:
    checker, _ = make({"t1": TaskFacts(1, max_retries=1, depends_on=())})
    checker.on_lease("t1", 1, "n1", 3_000, 1)
    checker.on_finish("t1", 1, "n1", AttemptEnd(Status.FAILED, 1, 100))
    checker.on_lease("t1", 2, "n1", 3_000, 1)
    with caught(5):
        checker.on_finish("t1", 2, "n1", AttemptEnd(Status.FAILED, 2, 200))


def test_dead_with_retries_left_is_caught_unless_the_handler_rejected_it() -> None:
    checker, _ = make({"t1": TaskFacts(1, max_retries=3, depends_on=())})
    checker.on_lease("t1", 1, "n1", 3_000, 1)
    with caught(5):
        checker.on_finish("t1", 1, "n1", AttemptEnd(Status.DEAD, 1, 0, None, {"kind": "error"}))
    checker, _ = make({"t1": TaskFacts(1, max_retries=3, depends_on=())})
    checker.on_lease("t1", 1, "n1", 3_000, 1)
    checker.on_finish("t1", 1, "n1", AttemptEnd(Status.DEAD, 1, 0, None, {"kind": "rejected"}))


def test_extra_attempt_is_caught() -> None:
    checker, _ = make({"t1": TaskFacts(1, max_retries=3, depends_on=())})
    checker.on_lease("t1", 1, "n1", 3_000, 1)
    with caught(5):
        checker.on_lease("t1", 2, "n1", 3_000, 1)  # no failure, expiry or release in between


def test_completion_after_a_cancel_is_caught() -> None:
    checker, _ = make()
    checker.on_lease("t1", 1, "n1", deadline_ms=3_000, term=1)
    checker.on_cancel("t1", 1, running_on="n1")
    with caught(2):
        checker.on_finish("t1", 1, "n1", AttemptEnd(Status.SUCCEEDED, 0))


def test_a_lease_after_a_cancel_is_caught() -> None:
    checker, _ = make()
    checker.on_cancel("t1", 0, running_on="")
    with caught(2):
        checker.on_lease("t1", 1, "n1", deadline_ms=3_000, term=1)


def test_a_retry_by_hand_allows_one_attempt_more() -> None:
    checker, clock = make({"t1": TaskFacts(1, max_retries=3, depends_on=())})
    checker.on_lease("t1", 1, "n1", deadline_ms=3_000, term=1)
    checker.on_exec_start("t1", 1, "n1")
    checker.on_cancel("t1", 1, running_on="n1")
    checker.on_retry("t1")
    checker.on_lease("t1", 2, "n2", deadline_ms=3_500, term=1)
    # The cancelled handler has not heard yet: its lease ended with the cancel, so attempt 2
    # overlaps it legally (its lease deadline, 3 s, has not passed).
    clock.now_s = 0.5
    checker.on_exec_start("t1", 2, "n2")
    assert checker.counters.overlaps == 1
    assert checker.duplicates() == 0  # the retry by hand asked for the second run
    with caught(5):  # a third attempt with no failure, expiry, release or retry in between
        checker.on_lease("t1", 3, "n1", deadline_ms=4_000, term=1)


def test_an_uncancelled_live_lease_still_blocks_a_retried_attempt() -> None:
    checker, clock = make()
    checker.on_lease("t1", 1, "n1", deadline_ms=3_000, term=1)
    checker.on_exec_start("t1", 1, "n1")
    checker.on_finish("t1", 1, "n1", AttemptEnd(Status.DEAD, 1))  # its handler runs on (bug)
    checker.on_retry("t1")
    checker.on_lease("t1", 2, "n2", deadline_ms=3_500, term=1)
    clock.now_s = 0.5
    with caught(2):
        checker.on_exec_start("t1", 2, "n2")


def test_a_retry_by_hand_of_a_task_that_has_not_ended_is_caught() -> None:
    checker, _ = make()
    checker.on_lease("t1", 1, "n1", deadline_ms=3_000, term=1)
    with caught(5):
        checker.on_retry("t1")


def test_the_retry_policy_counts_from_the_retry_by_hand() -> None:
    checker, _ = make({"t1": TaskFacts(1, max_retries=1, depends_on=())})
    checker.on_lease("t1", 1, "n1", 3_000, 1)
    checker.on_finish("t1", 1, "n1", AttemptEnd(Status.FAILED, 1, 100))
    checker.on_lease("t1", 2, "n1", 3_000, 1)
    checker.on_finish("t1", 2, "n1", AttemptEnd(Status.DEAD, 2))
    assert checker.counters.dead == 1
    checker.on_retry("t1")
    assert checker.counters.dead == 0  # counted again by how it ends this time
    checker.on_lease("t1", 3, "n1", 3_000, 1)
    checker.on_finish("t1", 3, "n1", AttemptEnd(Status.FAILED, 1, 100))  # the store reset it
    checker.on_lease("t1", 4, "n1", 3_000, 1)
    with caught(5):
        # The store must count failures from the retry: 2 here would be its old count plus one.
        checker.on_finish("t1", 4, "n1", AttemptEnd(Status.DEAD, 3))


def test_dependant_before_dependency_is_caught() -> None:
    checker, _ = make({"t2": TaskFacts(1, 3, depends_on=("t1",))})
    with caught(5):
        checker.on_lease("t2", 1, "n1", 3_000, 1)


def test_unfinished_acknowledged_task_is_caught() -> None:
    checker, _ = make()
    store = StoreModel()
    checker.on_ack("t1")
    missing = checker.unfinished(store)
    assert missing == ["t1"]
    with caught(1):
        checker.final_check(store, missing, 10.0)


class _World:
    def __init__(self, n1_types: frozenset[str] | None = None) -> None:
        facts = {"hi": TaskFacts(0, 3, (), type="sim-b"), "lo": TaskFacts(2, 3, ())}
        self.checker, _ = make(facts)
        self.nodes = [SimpleNamespace(types=n1_types)]

    def node(self, node_id: str) -> Any:
        return self.nodes[int(node_id[1:]) - 1]


def _worst_first(queue: Any, nodes: Any, type_of: Any, *, batch_max: int, scan_max: int) -> Any:
    """A broken dispatch: the lowest priority first."""
    entries = [queue.pop_entry() for _ in range(len(queue))]
    entries.sort(key=lambda e: (-e[1], e[2]))
    first, rest = entries[0], entries[1:]
    for task_id, priority, seq in rest:
        queue.push(task_id, priority, seq)
    slots: list[NodeSlots] = list(nodes)
    return [(first[0], slots[0].node_id)]


def _lease_low_before_high(n1_types: frozenset[str] | None) -> None:
    world: Any = _World(n1_types)
    sched = CheckedScheduler(
        "n1", SchedulerConfig(), world.checker.facts, world, dispatch_fn=_worst_first
    )
    sched.step(NodeSeen("n1", 1, n1_types, 0))
    sched.step(Elected(1, 0))
    sched.step(EpochRaised(1, True, 0))
    sched.step(Rebuilt(1, 0))
    states = (
        TaskState("hi", "sim-b", Priority.HIGH, 1, Status.QUEUED),
        TaskState("lo", "sim", Priority.LOW, 2, Status.QUEUED),
    )
    sched.step(TasksChanged(states, 0))


@pytest.mark.parametrize("n1_types", [None, frozenset({"sim", "sim-b"})])
def test_priority_inversion_is_caught(n1_types: frozenset[str] | None) -> None:
    with caught(4):
        _lease_low_before_high(n1_types)


def test_a_node_may_take_a_lower_priority_it_runs_over_a_higher_it_does_not() -> None:
    _lease_low_before_high(frozenset({"sim"}))  # n1 runs no "sim-b": "hi" waits for another


def test_a_rolled_back_task_takes_the_failures_its_late_end_counts() -> None:
    store = StoreModel()
    store.submit([NewTask(id="t1", type="sim")], 0)
    checker, _ = make({"t1": TaskFacts(1, max_retries=3, depends_on=())})
    # Before the restore: attempt 1 failed, attempt 2 leased; the store forgets both.
    checker.on_lease("t1", 1, "n1", 3_000, 1)
    checker.on_finish("t1", 1, "n1", AttemptEnd(Status.FAILED, 1, 100))
    checker.on_store_restored(store)
    checker.on_lease("t1", 1, "n1", 3_000, 1)
    # Attempt 1 again, and a completion its worker wrote before the restore lands on it.
    checker.on_finish("t1", 1, "n1", AttemptEnd(Status.FAILED, 2, 100))
    assert checker.failures["t1"] == 2
    # Not rolled back: the same mismatch is a violation.
    other, _ = make({"t2": TaskFacts(1, max_retries=3, depends_on=())})
    other.on_lease("t2", 1, "n1", 3_000, 1)
    with caught(5):
        other.on_finish("t2", 1, "n1", AttemptEnd(Status.FAILED, 2, 100))


def test_a_term_elected_again_is_allowed_only_once_raft_history_is_lost() -> None:
    checker, clock = make()
    checker.on_leader_claim("n2", 1)
    clock.now_s = 7.0
    with caught(3):
        checker.on_leader_claim("n1", 1)
    lost_at: list[float] = []
    checker.raft_history_lost_since = lambda since: any(t > since for t in lost_at)
    lost_at.append(5.0)  # members that voted for n2 started from empty journals since
    checker.on_leader_claim("n1", 1)
    clock.now_s = 8.0
    checker.on_leader_claim("n2", 1)  # the old leader, paused meanwhile, claims again: fine
    with caught(3):
        checker.on_leader_claim("n3", 1)  # no restart since n1's claim


def test_one_holder_per_epoch() -> None:
    checker, _ = make()
    checker.on_epoch_raised(1, "n2")
    checker.on_epoch_raised(1, "n2")
    with caught(3):
        checker.on_epoch_raised(1, "n1")


def test_an_attempt_a_restore_forgot_may_run_again_elsewhere_but_not_on_the_same_node() -> None:
    store = StoreModel()
    store.submit([NewTask(id="t1", type="sim")], 0)
    checker, clock = make()
    checker.on_lease("t1", 1, "n3", 9_000, 1)
    checker.on_exec_start("t1", 1, "n3")
    clock.now_s = 1.0
    with caught(2):  # no restore: the same attempt on two nodes
        checker.on_exec_start("t1", 1, "n1")
    checker.on_store_restored(store)  # back to queued: attempt 1 is granted again
    checker.on_lease("t1", 1, "n1", 9_500, 1)
    clock.now_s = 1.5
    checker.on_exec_start("t1", 1, "n1")
    assert checker.counters.restore_reruns == 1
    with caught(2):  # a node never runs one attempt twice at once
        checker.on_exec_start("t1", 1, "n1")

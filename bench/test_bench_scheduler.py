"""Full task lifecycles (submit, lease, succeed) per second through the scheduler state machine
and the store model, with the compiled heap and dispatch against their Python twins."""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from core import dispatch as dispatch_mod
from core import heap as heap_mod
from core.effects import Lease
from core.events import Elected, EpochRaised, NodeSeen, Rebuilt, TasksChanged
from core.priority import Priority
from core.scheduler import Scheduler, SchedulerConfig
from core.store_model import NewTask, StoreModel
from core.task import AttemptEnd, Status

SCALE = float(os.environ.get("DSCHED_BENCH_SCALE", "1.0"))
TASKS = max(1000, int(50_000 * SCALE))
NODES = 3
SLOTS = 5
RESULTS: dict[str, float] = {}


def lifecycles(queue_factory: Any, dispatch_fn: Any) -> int:
    """Submit TASKS, then run them to success through leases, 15 slots at a time."""
    rng = random.Random(1)
    store = StoreModel()
    sched = Scheduler(
        "n0",
        SchedulerConfig(dispatch_batch_max=512),
        queue=queue_factory(),
        dispatch_fn=dispatch_fn,
    )
    now = 1_000_000
    sched.step(Elected(1, now))
    store.raise_epoch(1)
    sched.step(EpochRaised(1, True, now))
    sched.step(Rebuilt(1, now))
    for n in range(NODES):
        sched.step(NodeSeen(f"n{n}", SLOTS, None, now))
    batch = [
        NewTask(id=f"t{i}", type="noop", priority=Priority(rng.randrange(3))) for i in range(TASKS)
    ]
    store.submit(batch, now)
    effects = sched.step(TasksChanged(tuple(store.drain(1, TASKS)), now))  # type: ignore[arg-type]
    done = 0
    while done < TASKS:
        leased = []
        for e in effects:
            if isinstance(e, Lease):
                state = store.lease(e.term, e.task_id, e.node_id, e.deadline_ms, now)
                leased.append(state)
        effects = sched.step(TasksChanged(tuple(leased), now))  # type: ignore[arg-type]
        finished = []
        for state in leased:
            assert state is not None and not isinstance(state, str)
            store.finish(
                state.id, state.attempt, state.lease_node, AttemptEnd(Status.SUCCEEDED, 0), now
            )
            finished.append(store.tasks[state.id].state())
        done += len(finished)
        effects += sched.step(TasksChanged(tuple(finished), now))
    return done


@pytest.mark.parametrize("impl", ["compiled", "python"])
def test_bench_lifecycles(benchmark: Any, impl: str) -> None:
    if impl == "compiled":
        q, d = heap_mod.ReadyQueue, dispatch_mod.dispatch
    else:
        q, d = heap_mod.PyReadyQueue, dispatch_mod.py_dispatch
    done = benchmark.pedantic(lifecycles, args=(q, d), rounds=3, iterations=1)
    assert done == TASKS
    per_s = TASKS / benchmark.stats.stats.min
    RESULTS[impl] = per_s
    benchmark.extra_info["lifecycles_per_s"] = round(per_s)
    if len(RESULTS) == 2:
        ratio = RESULTS["compiled"] / RESULTS["python"]
        benchmark.extra_info["compiled_vs_python"] = round(ratio, 2)
        print(
            f"\nscheduler lifecycles/s: compiled {RESULTS['compiled']:,.0f}, "
            f"python {RESULTS['python']:,.0f} ({ratio:.2f}x); heap={heap_mod.IMPLEMENTATION}"
        )

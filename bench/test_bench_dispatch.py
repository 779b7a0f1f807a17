"""Dispatch decisions per second: the compiled loop against its pure-Python twin, in one run.

A seeded queue of TASKS ready tasks (mixed priorities) drains over 3 nodes x 5 workers: each round
calls dispatch with every node's slots free, then treats every assigned task as finished (its slot
free again) and repeats until the queue is empty. Two node sets: all nodes run every type, and two
task types with one node restricted to one of them (so some calls look types up and skip tasks).
Both implementations drain the same kind of queue, so the ratio is the dispatch loop's own.

``DSCHED_BENCH_SCALE`` (float, default 1.0; CI uses 0.05) scales the number of tasks.
"""

from __future__ import annotations

import os
import random
from typing import Any

import pytest

from core import dispatch as dispatch_mod
from core.dispatch import NodeSlots
from core.heap import ReadyQueue

SCALE = float(os.environ.get("DSCHED_BENCH_SCALE", "1.0"))
TASKS = max(1_000, int(100_000 * SCALE))
SEED = 20_240_601
WORKERS_PER_NODE = 5
BATCH_MAX = 512
SCAN_MAX = 1024
# Best of ROUNDS: on a shared machine the fastest round is the closest to the code's own cost.
ROUNDS = 11
# Task mix: HIGH/MEDIUM/LOW weights, and the share of "gpu" tasks among "cpu" ones.
PRIORITY_WEIGHTS = (1, 3, 6)
GPU_SHARE = 0.3

NODE_SETS: dict[str, list[NodeSlots]] = {
    "all-types": [NodeSlots(f"n{i}", WORKERS_PER_NODE, 0) for i in range(1, 4)],
    "typed": [
        NodeSlots("n1", WORKERS_PER_NODE, 0),
        NodeSlots("n2", WORKERS_PER_NODE, 0),
        NodeSlots("n3", WORKERS_PER_NODE, 0, frozenset({"cpu"})),
    ],
}
NO_EXTENSIONS = bool(os.environ.get("DSCHED_NO_EXTENSIONS"))
RESULTS: dict[tuple[str, str], float] = {}  # (node set, implementation) -> decisions per second


# The selected ready queue (compiled unless switched off), the same for both implementations.
QUEUE_CLASS = ReadyQueue


def make_tasks() -> tuple[list[tuple[str, int, int]], dict[str, str]]:
    rng = random.Random(SEED)
    priorities = rng.choices(range(3), weights=PRIORITY_WEIGHTS, k=TASKS)
    entries = [(f"t{seq}", priority, seq) for seq, priority in enumerate(priorities)]
    type_of = {e[0]: ("gpu" if rng.random() < GPU_SHARE else "cpu") for e in entries}
    return entries, type_of


ENTRIES, TYPE_OF = make_tasks()


def fresh_queue() -> tuple[tuple[Any], dict[str, Any]]:
    queue = QUEUE_CLASS()
    for task_id, priority, seq in ENTRIES:
        queue.push(task_id, priority, seq)
    return (queue,), {}


def drain(dispatch: Any, nodes: list[NodeSlots], queue: Any) -> int:
    """Dispatch rounds until the queue is empty; every round starts with all slots free."""
    decisions = 0
    while len(queue):
        assigned = dispatch(queue, nodes, TYPE_OF, batch_max=BATCH_MAX, scan_max=SCAN_MAX)
        if not assigned:
            raise RuntimeError(f"dispatch stalled with {len(queue)} tasks queued")
        decisions += len(assigned)
    return decisions


@pytest.mark.parametrize("node_set", list(NODE_SETS))
@pytest.mark.parametrize(
    "impl",
    [
        "python",
        pytest.param(
            "cython",
            marks=pytest.mark.skipif(NO_EXTENSIONS, reason="DSCHED_NO_EXTENSIONS is set"),
        ),
    ],
)
def test_bench_dispatch(
    benchmark: Any, impl: str, node_set: str, capsys: pytest.CaptureFixture[str]
) -> None:
    if impl == "cython":
        assert dispatch_mod.IMPLEMENTATION == "cython", "the compiled dispatch is not built"
        dispatch = dispatch_mod.dispatch
    else:
        dispatch = dispatch_mod.py_dispatch
    nodes = NODE_SETS[node_set]

    def run(queue: Any) -> int:
        return drain(dispatch, nodes, queue)

    decisions = benchmark.pedantic(run, setup=fresh_queue, rounds=ROUNDS, iterations=1)
    assert decisions == TASKS
    per_s = decisions / benchmark.stats.stats.min
    RESULTS[node_set, impl] = per_s
    benchmark.extra_info.update(
        decisions=decisions,
        decisions_per_s=round(per_s),
        queue=f"{QUEUE_CLASS.__module__}.{QUEUE_CLASS.__name__}",
    )
    python = RESULTS.get((node_set, "python"))
    if impl == "cython" and python:
        ratio = per_s / python
        benchmark.extra_info["cython_vs_python"] = round(ratio, 2)
        with capsys.disabled():
            print(
                f"\ndispatch [{node_set}] {TASKS} tasks over 3x{WORKERS_PER_NODE} slots: "
                f"cython {per_s:,.0f} decisions/s, python {python:,.0f} decisions/s, "
                f"ratio {ratio:.2f}x (best of {ROUNDS}, queue {QUEUE_CLASS.__name__})"
            )

"""Failover of the real Raft member (node.raft, default RaftConfig) on 127.0.0.1.

Not in the default suite (testpaths = tests): `pytest bench/test_bench_failover_raft.py -s`.
Prints p50/p99 of "SIGKILL the leader -> every survivor reports the same new leader in a higher
term", idle and with CPU-burning threads in every member process, and counts spurious term
changes under that load (the research's figure to beat is zero).
"""

from __future__ import annotations

import signal
import statistics
import time

import pytest

from tests.node.test_raft import elect, measure_failover, raft_processes

TRIALS = 10


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


@pytest.mark.slow
@pytest.mark.timeout(600)
@pytest.mark.parametrize("busy_threads", [0, 4])
def test_bench_failover_after_sigkill(busy_threads: int) -> None:
    extra = ("--busy-threads", str(busy_threads)) if busy_threads else ()
    samples: list[float] = []
    for _ in range(TRIALS):
        with raft_processes(3, extra) as cluster:
            _, _, failover_s = measure_failover(cluster, signal.SIGKILL)
            samples.append(failover_s)
    ms = [s * 1000 for s in samples]
    print(
        f"\nfailover busy_threads={busy_threads} n={len(ms)}: p50 {statistics.median(ms):.0f} ms,"
        f" p99 {percentile(ms, 0.99):.0f} ms, min {min(ms):.0f}, max {max(ms):.0f}"
    )


@pytest.mark.slow
@pytest.mark.timeout(120)
def test_bench_spurious_elections_under_load() -> None:
    observe_s = 30.0
    with raft_processes(3, ("--busy-threads", "4")) as cluster:
        _, term = elect(cluster)
        time.sleep(observe_s)  # the observation window itself, not a wait for a condition
        terms = {line["term"] for i in range(3) for line in cluster.history(i)}
        extra = max(terms) - term
    print(f"\nterm changes in {observe_s:.0f} s with 4 busy threads per member: {extra}")
    assert extra == 0

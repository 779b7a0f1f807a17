"""Speed of the simulation: simulated task lifecycles per wall second, and seeds per minute.

The target of issue #5: 1,000 seeds of 60 simulated seconds (3 nodes, 5 workers each, 200
tasks/s) in under 10 minutes on a 2-core machine, i.e. 1.2 s of wall time per seed per core.
DSCHED_BENCH_SCALE (default 1.0; CI 0.05) scales the simulated duration and the seed count; the
summary projects the full target from what was measured.
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import pytest

from sim.campaign import run_campaign
from sim.config import LoadConfig, SimConfig
from sim.world import RunResult, run_one

SCALE = float(os.environ.get("DSCHED_BENCH_SCALE", "1.0"))
TARGET_SEEDS = 1000
TARGET_DURATION_S = 60.0
TARGET_WALL_S = 600.0
CORES = 2
# The target's workload, with leader crashes (scenarios that hit open core bugs would spend
# their liveness phase waiting for tasks that never finish, which measures nothing).
TARGET = SimConfig(
    scenario="leader-crash",
    nodes=3,
    workers=5,
    duration_s=max(3.0, TARGET_DURATION_S * SCALE),
    load=LoadConfig(rate_per_s=200.0),
)


def _lifecycles(r: RunResult) -> int:
    return r.completed + r.dead + r.cancelled


@pytest.mark.timeout(900)
def test_bench_sim_one_seed(benchmark: Any, bench_summary: Callable[[str], None]) -> None:
    results: list[RunResult] = []
    cpu: list[float] = []
    seeds = iter(range(1_000_000))

    def one() -> None:
        # CPU time too: on a shared machine it is inflated less by noise than wall time.
        started = time.process_time()
        results.append(run_one(TARGET.with_(seed=next(seeds))))
        cpu.append(time.process_time() - started)

    benchmark.pedantic(one, rounds=3 if SCALE >= 0.5 else 2, iterations=1)
    assert all(r.violation is None for r in results)
    wall = sum(r.wall_s for r in results)
    lifecycles = sum(_lifecycles(r) for r in results)
    per_seed_s = wall / len(results) * TARGET_DURATION_S / TARGET.duration_s
    cpu_per_seed_s = sum(cpu) / len(cpu) * TARGET_DURATION_S / TARGET.duration_s
    projected_s = per_seed_s * TARGET_SEEDS / CORES
    benchmark.extra_info.update(
        lifecycles_per_s=round(lifecycles / wall),
        wall_per_60s_seed_s=round(per_seed_s, 2),
        cpu_per_60s_seed_s=round(cpu_per_seed_s, 2),
        projected_1000_seeds_s=round(projected_s),
    )
    bench_summary(
        f"sim: {lifecycles / wall:,.0f} task lifecycles per wall second (one process, "
        f"{TARGET.load.rate_per_s:.0f} tasks/s, {TARGET.duration_s:.0f} sim-s seeds); "
        f"{per_seed_s:.2f} s wall ({cpu_per_seed_s:.2f} s CPU) per 60 sim-s seed -> 1,000 "
        f"seeds on {CORES} cores in {projected_s / 60:.1f} min (target "
        f"{TARGET_WALL_S / 60:.0f} min: {projected_s / TARGET_WALL_S:.1f}x)"
    )


@pytest.mark.timeout(1800)
def test_bench_sim_campaign(benchmark: Any, bench_summary: Callable[[str], None]) -> None:
    seeds = max(2, round(20 * SCALE))
    configs = [TARGET.with_(seed=s) for s in range(seeds)]
    campaigns = []

    def campaign() -> None:
        campaigns.append(run_campaign(configs, jobs=CORES, progress=False))

    benchmark.pedantic(campaign, rounds=1, iterations=1)
    done = campaigns[-1]
    per_min = len(done.results) / done.wall_s * 60
    per_min_60s = per_min * TARGET.duration_s / TARGET_DURATION_S
    lifecycles = sum(s.lifecycles for s in done.summaries.values())
    benchmark.extra_info.update(seeds_per_min=round(per_min, 1), seeds_60s_per_min=per_min_60s)
    bench_summary(
        f"sim campaign ({CORES} processes): {per_min:.0f} seeds/min of {TARGET.duration_s:.0f} "
        f"sim-s = {per_min_60s:.0f} seeds/min of 60 sim-s (target "
        f"{TARGET_SEEDS / TARGET_WALL_S * 60:.0f}); {lifecycles / done.wall_s:,.0f} lifecycles/s"
    )

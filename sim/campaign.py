"""A campaign: many seeds of one or more scenarios, run in parallel processes, summarized.

Each run is independent and deterministic, so seeds spread over a process pool in any order and
the summary is sorted back into (scenario, seed) order. A worker process runs many seeds one after
another: nothing leaks between them because each World builds its own generators, store, network
and nodes (pysyncobj's patched clock and seeded ``random`` are reset by SimRaftCluster per run).
"""

from __future__ import annotations

import multiprocessing
import os
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from typing import Any

from sim.config import SimConfig
from sim.world import RunResult, run_one


@dataclass
class ScenarioSummary:
    scenario: str
    runs: int = 0
    violations: int = 0
    submitted: int = 0
    acked: int = 0
    completed: int = 0
    dead: int = 0
    cancelled: int = 0
    retried_by_hand: int = 0
    ran_cancelled: int = 0
    executions: int = 0
    duplicates: int = 0
    overlaps: int = 0
    lost_acked: int = 0
    gave_up: int = 0
    fenced_writes: int = 0
    sim_s: float = 0.0
    wall_s: float = 0.0
    failovers_s: list[float] = field(default_factory=list)
    drains_s: list[float] = field(default_factory=list)
    violating_seeds: list[int] = field(default_factory=list)

    def add(self, r: RunResult) -> None:
        self.runs += 1
        self.submitted += r.submitted
        self.acked += r.acked
        self.completed += r.completed
        self.dead += r.dead
        self.cancelled += r.cancelled
        self.retried_by_hand += r.retried_by_hand
        self.ran_cancelled += r.ran_cancelled
        self.executions += r.executions
        self.duplicates += r.duplicates
        self.overlaps += r.overlaps
        self.lost_acked += r.lost_acked
        self.gave_up += r.gave_up
        self.fenced_writes += r.fenced_writes
        self.sim_s += r.sim_end_s
        self.wall_s += r.wall_s
        self.failovers_s += r.failovers_s
        if r.drain_s is not None:
            self.drains_s.append(r.drain_s)
        if r.violation is not None:
            self.violations += 1
            self.violating_seeds.append(r.seed)

    @property
    def lifecycles(self) -> int:
        return self.completed + self.dead + self.cancelled


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile (q in 0..100); None for no values."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, min(len(ordered), round(q / 100 * len(ordered) + 0.5)))
    return ordered[rank - 1]


@dataclass
class Campaign:
    results: list[RunResult]
    summaries: dict[str, ScenarioSummary]
    wall_s: float
    jobs: int

    @property
    def violations(self) -> list[RunResult]:
        return [r for r in self.results if r.violation is not None]


def _slim(result: RunResult, keep_series: bool) -> RunResult:
    """Drop what the parent does not need, so results cross the process boundary cheaply."""
    if keep_series or result.violation is not None:
        return result
    return replace(result, series={}, trace=[])


def _run(args: tuple[SimConfig, bool]) -> RunResult:
    config, keep_series = args
    return _slim(run_one(config), keep_series)


def configs_for(base: SimConfig, scenarios: Iterable[str], seeds: Iterable[int]) -> list[SimConfig]:
    seeds = list(seeds)
    return [base.with_(scenario=s, seed=seed) for s in scenarios for seed in seeds]


def run_campaign(
    configs: list[SimConfig],
    jobs: int,
    progress: bool,
    keep_series_for: Callable[[SimConfig], bool] = lambda _c: False,
) -> Campaign:
    started = time.perf_counter()
    work = [(c, keep_series_for(c)) for c in configs]
    results: list[RunResult] = []
    bar = _progress(len(work), progress)
    jobs = max(1, min(jobs, len(work)))
    try:
        for result in _execute(work, jobs):
            results.append(result)
            if bar is not None:
                bar.update(1)
                bad = sum(1 for r in results if r.violation is not None)
                if bad:
                    bar.set_postfix(violations=bad)
    finally:
        if bar is not None:
            bar.close()
    order = {(c.label, c.seed): i for i, c in enumerate(configs)}
    results.sort(key=lambda r: order.get((r.scenario, r.seed), 0))
    summaries: dict[str, ScenarioSummary] = {}
    for r in results:
        summaries.setdefault(r.scenario, ScenarioSummary(r.scenario)).add(r)
    return Campaign(results, summaries, time.perf_counter() - started, jobs)


def _execute(work: list[tuple[SimConfig, bool]], jobs: int) -> Iterator[RunResult]:
    if jobs == 1:
        for item in work:
            yield _run(item)
        return
    # fork is cheapest and the workers need nothing but the config; spawn where fork is absent.
    method = "fork" if "fork" in multiprocessing.get_all_start_methods() else "spawn"
    ctx = multiprocessing.get_context(method)
    chunk = max(1, min(8, len(work) // (jobs * 4)))
    with ctx.Pool(jobs, maxtasksperchild=200) as pool:
        yield from pool.imap_unordered(_run, work, chunksize=chunk)


def _progress(total: int, enabled: bool) -> Any:
    if not enabled:
        return None
    from tqdm import tqdm

    return tqdm(total=total, unit="seed", dynamic_ncols=True, leave=True)


def default_jobs() -> int:
    return max(1, os.cpu_count() or 1)

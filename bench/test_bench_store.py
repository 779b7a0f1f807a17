"""The Redis store against a real embedded Redis (appendfsync everysec): fenced lease + take +
finish round trips, submit throughput (one at a time, concurrent with group commit, batches of
1000) and a new leader's rebuild read, each beside a baseline measured in the same run: plain
PING round trips on the same connection pool.

Scale with DSCHED_BENCH_SCALE (1.0 full, 0.05 in CI).
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from core.effects import Lease
from core.priority import Priority
from core.store_model import NewTask
from core.task import AttemptEnd, Status
from core.worker import Finish
from node.redis_server import EmbeddedRedis
from node.store import RedisStore

SCALE = float(os.environ.get("DSCHED_BENCH_SCALE", "1.0"))
PINGS = max(200, int(10_000 * SCALE))
LIFECYCLES = max(100, int(5_000 * SCALE))
SUBMITS = max(200, int(10_000 * SCALE))
BATCHES = max(2, int(50 * SCALE))  # of BATCH_SIZE tasks
BATCH_SIZE = 1000
REBUILD_TASKS = max(5_000, int(200_000 * SCALE))
CONCURRENCY = 64  # simultaneous submitters or workers: an HTTP node under load
NOW = 1_700_000_000_000
RESULTS: dict[str, float] = {}


@pytest.fixture(scope="module")
def redis(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(Path(tmp_path_factory.mktemp("bench-redis")), fsync="everysec")
    server.start()
    try:
        yield server
    finally:
        server.stop()


Job = Callable[[RedisStore], Awaitable[Any]]


@pytest.fixture
def run(redis: EmbeddedRedis, benchmark: Any) -> Iterator[Callable[..., Any]]:
    """``run(job, prepare=None, rounds=3)``: per round, FLUSHALL and ``prepare(store)`` (not
    timed), then ``job(store)`` (timed), on one event loop and store."""
    loop = asyncio.new_event_loop()
    store = loop.run_until_complete(RedisStore.connect(redis.url))

    def go(job: Job, prepare: Job | None = None, rounds: int = 3) -> Any:
        async def setup() -> None:
            await store.redis.flushall()
            if prepare is not None:
                await prepare(store)

        return benchmark.pedantic(
            lambda: loop.run_until_complete(job(store)),
            setup=lambda: loop.run_until_complete(setup()),
            rounds=rounds,
            iterations=1,
        )

    try:
        yield go
    finally:
        loop.run_until_complete(store.redis.flushall())
        loop.run_until_complete(store.close())
        loop.close()


def report(benchmark: Any, summary: Callable[[str], None], name: str, n: int, unit: str) -> float:
    """Record ``n`` units per best round as name's rate; the ratio to the PING baseline."""
    per_s = n / benchmark.stats.stats.min
    RESULTS[name] = per_s
    benchmark.extra_info[f"{unit}_per_s"] = round(per_s)
    line = f"store {name}: {per_s:,.0f} {unit}/s"
    if "ping" in RESULTS and name != "ping":
        ratio = per_s / RESULTS["ping"]
        benchmark.extra_info["vs_ping_round_trips"] = round(ratio, 3)
        line += f" ({ratio:.2f} x PING round trips/s)"
    summary(line)
    return per_s


def test_bench_ping_baseline(benchmark: Any, run: Any, bench_summary: Any) -> None:
    async def pings(store: RedisStore) -> None:
        for _ in range(PINGS):
            await store.ping()

    run(pings)
    report(benchmark, bench_summary, "ping", PINGS, "round_trips")


@pytest.mark.parametrize("workers", [1, CONCURRENCY])
def test_bench_lease_take_finish(
    benchmark: Any, run: Any, bench_summary: Any, workers: int
) -> None:
    """One task's life on the hot path: the leader's fenced Lease (one script), the worker's
    take (one script) and its fenced Finish (group-committed): three round trips."""

    async def prepare(store: RedisStore) -> None:
        await store.submit([NewTask(f"t{i}", "noop") for i in range(LIFECYCLES)], NOW)
        assert await store.raise_epoch(1)

    async def lifecycles(store: RedisStore) -> None:
        per_worker = LIFECYCLES // workers

        async def worker(w: int) -> None:
            node = f"n{w}"
            for i in range(w * per_worker, (w + 1) * per_worker):
                [state] = await store.apply([Lease(1, f"t{i}", node, NOW + 10_000, NOW)])
                assert state is not None and not isinstance(state, str)
                taken = await store.take(node, 0)
                assert taken is not None
                end = AttemptEnd(Status.SUCCEEDED, 0, 0, {"ok": True})
                assert await store.finish(Finish(f"t{i}", taken.attempt, node, end, NOW + 1))

        await asyncio.gather(*(worker(w) for w in range(workers)))

    run(lifecycles, prepare)
    n = LIFECYCLES // workers * workers
    report(benchmark, bench_summary, f"lease+take+finish x{workers}", n, "lifecycles")


@pytest.mark.parametrize("concurrency", [1, CONCURRENCY])
def test_bench_submit_single(
    benchmark: Any, run: Any, bench_summary: Any, concurrency: int
) -> None:
    """Single-task submissions, one at a time or many at once (group commit coalesces)."""

    async def submits(store: RedisStore) -> None:
        per = SUBMITS // concurrency

        async def client(c: int) -> None:
            for i in range(per):
                await store.submit([NewTask(f"c{c}-{i}", "noop", priority=Priority(i % 3))], NOW)

        await asyncio.gather(*(client(c) for c in range(concurrency)))

    run(submits)
    n = SUBMITS // concurrency * concurrency
    report(benchmark, bench_summary, f"submit 1 task x{concurrency}", n, "tasks")


def test_bench_submit_batch_1000(benchmark: Any, run: Any, bench_summary: Any) -> None:
    async def batches(store: RedisStore) -> None:
        for b in range(BATCHES):
            batch = [NewTask(f"b{b}-{i}", "noop", '{"n": 1}') for i in range(BATCH_SIZE)]
            await store.submit(batch, NOW)

    run(batches)
    report(
        benchmark, bench_summary, f"submit batches of {BATCH_SIZE}", BATCHES * BATCH_SIZE, "tasks"
    )


def test_bench_rebuild_read(benchmark: Any, run: Any, bench_summary: Any) -> None:
    """A new leader reads every live task in chunks (REBUILD_CHUNK_MAX = 2000 in core.driver)."""

    async def fill(store: RedisStore) -> None:
        for b in range(0, REBUILD_TASKS, 5000):
            n = min(5000, REBUILD_TASKS - b)
            await store.submit([NewTask(f"r{b + i}", "noop") for i in range(n)], NOW)

    async def rebuild(store: RedisStore) -> int:
        return sum([len(chunk) async for chunk in store.live_states(chunk=2000)])

    assert run(rebuild, fill, rounds=1) == REBUILD_TASKS
    per_s = report(benchmark, bench_summary, "rebuild read", REBUILD_TASKS, "tasks")
    bench_summary(
        f"store rebuild read: {REBUILD_TASKS:,} live tasks in {REBUILD_TASKS / per_s:.2f} s; "
        f"1M would take ~{1e6 / per_s:.1f} s"
    )


@pytest.mark.parametrize("concurrency", [1, CONCURRENCY])
def test_bench_submit_fsync_always(
    benchmark: Any, tmp_path: Path, bench_summary: Any, concurrency: int
) -> None:
    """With appendfsync always, Redis fsyncs before it answers: group commit is what keeps many
    concurrent submitters from paying one fsync each."""
    n = max(100, SUBMITS // 5) // concurrency * concurrency
    with EmbeddedRedis(tmp_path, fsync="always") as server:
        loop = asyncio.new_event_loop()
        store = loop.run_until_complete(RedisStore.connect(server.url))
        try:

            async def submits() -> None:
                await store.redis.flushall()

                async def client(c: int) -> None:
                    for i in range(n // concurrency):
                        await store.submit([NewTask(f"c{c}-{i}", "noop")], NOW)

                await asyncio.gather(*(client(c) for c in range(concurrency)))

            benchmark.pedantic(lambda: loop.run_until_complete(submits()), rounds=3)
        finally:
            loop.run_until_complete(store.close())
            loop.close()
    report(benchmark, bench_summary, f"submit 1 task x{concurrency} fsync=always", n, "tasks")

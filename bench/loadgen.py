"""End-to-end load generator for dsched nodes over HTTP (aiohttp client, keep-alive connections).

Usable from the benchmarks (``bench/test_bench_node.py``, ``bench/test_bench_cluster.py``) and from
the command line::

    python -m bench.loadgen --url http://127.0.0.1:8080 --rate 1000 --duration 10
    python -m bench.loadgen --url ... --mode singles --concurrency 64 --duration 5
    python -m bench.loadgen --url ... --mode batches --batch 1000 --duration 5
    python -m bench.loadgen --url ... --url ... --mode e2e --tasks 20000
    python -m bench.loadgen --redis-url redis://127.0.0.1:6379/0 --mode ping --duration 3

Every loop is bounded twice: by a count and by a deadline (``limit everything``). The modes:

* ``ping``: the baseline. Redis PING round trips from ``concurrency`` coroutines through the node's
  own client library (redis-py asyncio, hiredis parser), and an ``http`` variant (GET /healthz),
  so throughput can be quoted as a fraction of what the machine does at all in this run.
* ``singles``: closed loop, ``concurrency`` clients each POSTing one task at a time.
* ``batches``: closed loop, ``concurrency`` clients each POSTing batches of ``batch`` tasks.
* ``open``: open-loop arrivals at a fixed ``rate`` (sends happen on schedule whether or not earlier
  ones were answered, so a slow server cannot slow the offered load down: no coordinated
  omission). Reports the HTTP answer latency, how late the generator itself sent, and, from a
  sample of the tasks' records, created->started (the server's millisecond timestamps).
* ``e2e``: submit ``tasks`` tasks in batches (round-robin over the URLs), then wait until the
  store counts them all succeeded; tasks/s from first send to last success.

For the benchmarks it also has: ``local_node`` / ``local_cluster`` (real node processes on free
127.0.0.1 ports over a fresh embedded Redis, killed by PID on exit), ``CpuMeter`` (CPU seconds of
given PIDs from /proc: per-operation CPU is steadier than wall time on a shared machine),
``rss_bytes``, ``metric_sum`` (a Prometheus sample of GET /metrics) and ``table_row`` (the summary
table's lines).

Only 127.0.0.1-style URLs are the intended use; nothing here retries a refused write.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import os
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Any

import aiohttp

from bench.rawhttp import HttpError, RawHttp

# Per request: a node that does not answer in this long counts as an error, not a hang.
REQUEST_TIMEOUT_S = 30.0
# Hard ceilings, whatever the caller asks: bound memory and time of any run.
DURATION_S_MAX = 600.0
REQUESTS_MAX = 10_000_000
INFLIGHT_MAX_DEFAULT = 2_000
# How often e2e polls GET /v1/queues while waiting for completions: a poll costs the node about
# as much as one submission, so not much more often; 20 ms is < 1 % of any run it times.
POLL_S = 0.02
# Task records fetched after an open-loop run to read created->started (bounded sample).
SAMPLE_RECORDS_MAX = 2_000


# ---------------------------------------------------------------------------- results
def percentile(values: Sequence[float], q: float) -> float:
    """Nearest-rank percentile (q in [0, 1]); NaN for no values."""
    if not values:
        return math.nan
    ordered = sorted(values)
    rank = max(1, math.ceil(q * len(ordered)))
    return ordered[min(len(ordered), rank) - 1]


@dataclass
class Rate:
    """A closed-loop run: ``ok`` operations (requests, or tasks for batches) in ``seconds``."""

    name: str
    ok: int
    errors: int
    seconds: float
    requests: int = 0
    latency_ms_p50: float = math.nan
    latency_ms_p99: float = math.nan
    error_sample: list[str] = field(default_factory=list)

    @property
    def per_s(self) -> float:
        return self.ok / self.seconds if self.seconds > 0 else 0.0

    def as_dict(self) -> dict[str, Any]:
        d = asdict(self)
        d["per_s"] = round(self.per_s, 1)
        return d


@dataclass
class Sent:
    """One open-loop submission: its key, when it was due and sent (wall clock, seconds), when
    the answer came back, and the answer."""

    key: int
    due_s: float
    sent_s: float
    acked_s: float = math.nan
    status: int = 0
    task_id: str = ""


@dataclass
class OpenLoop:
    rate_per_s: float
    duration_s: float
    sent: list[Sent]
    dropped: int  # arrivals not sent because INFLIGHT_MAX requests were still unanswered

    @property
    def ok(self) -> list[Sent]:
        return [s for s in self.sent if s.status in (200, 201)]

    def summary(self) -> dict[str, Any]:
        ok = self.ok
        ack_ms = [(s.acked_s - s.sent_s) * 1000 for s in ok]
        late_ms = [(s.sent_s - s.due_s) * 1000 for s in self.sent]
        span = (self.sent[-1].sent_s - self.sent[0].sent_s) if len(self.sent) > 1 else 0.0
        return {
            "rate_offered_per_s": self.rate_per_s,
            "rate_sent_per_s": round((len(self.sent) - 1) / span, 1) if span > 0 else 0.0,
            "sent": len(self.sent),
            "ok": len(ok),
            "errors": len(self.sent) - len(ok),
            "dropped": self.dropped,
            "ack_ms_p50": round(percentile(ack_ms, 0.5), 3),
            "ack_ms_p99": round(percentile(ack_ms, 0.99), 3),
            "send_late_ms_p99": round(percentile(late_ms, 0.99), 3),
        }


# ---------------------------------------------------------------------------- processes
_CLK_TCK = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


def cpu_s(pid: int) -> float:
    """User + system CPU seconds a process has used (Linux /proc; 1/CLK_TCK resolution). On a
    shared machine CPU per operation is steadier than wall time: it leaves out the time others
    held the cores."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / _CLK_TCK  # utime, stime (fields 14, 15)


def rss_bytes(pid: int) -> int:
    """Resident set size (VmRSS) of a process."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise LookupError(f"no VmRSS for pid {pid}")


class CpuMeter:
    """CPU seconds used by some processes (and this one) between start() and stop()."""

    def __init__(self, pids: dict[str, int]) -> None:
        self.pids = dict(pids)
        self._before: dict[str, float] = {}
        self.used: dict[str, float] = {}

    def _read(self) -> dict[str, float]:
        out = {name: cpu_s(pid) for name, pid in self.pids.items()}
        out["loadgen"] = time.process_time()
        return out

    def start(self) -> CpuMeter:
        self._before = self._read()
        return self

    def stop(self) -> dict[str, float]:
        after = self._read()
        self.used = {k: after[k] - self._before[k] for k in after}
        return self.used


# ---------------------------------------------------------------------------- plumbing
def session(concurrency: int) -> aiohttp.ClientSession:
    """Keep-alive connections, at most ``concurrency`` of them, no proxy from the environment."""
    connector = aiohttp.TCPConnector(
        limit=concurrency, limit_per_host=concurrency, ttl_dns_cache=None
    )
    return aiohttp.ClientSession(
        connector=connector,
        timeout=aiohttp.ClientTimeout(total=REQUEST_TIMEOUT_S),
        trust_env=False,
    )


JSON_HEADERS = {"Content-Type": "application/json", "Accept": "application/json"}


def task_body(
    task_type: str = "noop", payload: Any = None, priority: str = "medium"
) -> dict[str, Any]:
    return {"type": task_type, "payload": payload, "priority": priority}


def batch_bytes(size: int, task_type: str = "noop", payload: Any = None) -> bytes:
    return json.dumps({"tasks": [task_body(task_type, payload) for _ in range(size)]}).encode()


def _bounded(duration_s: float, count: int) -> tuple[float, int]:
    return min(duration_s, DURATION_S_MAX), min(count, REQUESTS_MAX)


async def _closed_loop(
    name: str,
    concurrency: int,
    count: int,
    duration_s: float,
    one: Callable[[], Any],
    weight: int = 1,
) -> Rate:
    """``concurrency`` workers call ``one()`` (an awaitable returning (ok, error text)) until
    ``count`` calls were made or ``duration_s`` passed. ``weight``: operations per call."""
    duration_s, count = _bounded(duration_s, count)
    loop = asyncio.get_running_loop()
    issued = 0
    ok = errors = 0
    latencies: list[float] = []
    error_sample: list[str] = []
    started = loop.time()
    deadline = started + duration_s

    async def worker() -> None:
        nonlocal issued, ok, errors
        while issued < count and loop.time() < deadline:
            issued += 1
            t0 = time.perf_counter()
            try:
                good, why = await one()
            except (aiohttp.ClientError, HttpError, TimeoutError, OSError) as exc:
                good, why = False, f"{type(exc).__name__}: {exc}"
            latencies.append(time.perf_counter() - t0)
            if good:
                ok += weight
            else:
                errors += 1
                if len(error_sample) < 5:
                    error_sample.append(why)

    await asyncio.gather(*(worker() for _ in range(max(1, concurrency))))
    seconds = loop.time() - started
    ms = [x * 1000 for x in latencies]
    return Rate(
        name,
        ok,
        errors,
        seconds,
        requests=len(latencies),
        latency_ms_p50=round(percentile(ms, 0.5), 3),
        latency_ms_p99=round(percentile(ms, 0.99), 3),
        error_sample=error_sample,
    )


# ---------------------------------------------------------------------------- baselines
async def redis_ping_rate(
    redis_url: str,
    concurrency: int = 64,
    count: int = 100_000,
    duration_s: float = 2.0,
    command: str = "ping",
) -> Rate:
    """Round trips to Redis through redis-py asyncio (the node's own client): PING, or with
    ``command="eval"`` a trivial EVALSHA (a script call, the unit of every store write)."""
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_url, max_connections=concurrency, decode_responses=True)
    try:
        sha = await client.script_load("return 1")

        async def one() -> tuple[bool, str]:
            if command == "eval":
                return (await client.evalsha(sha, 0)) == 1, ""
            return bool(await client.ping()), ""

        for _ in range(min(concurrency, 200)):  # open the connections before timing
            await one()
        return await _closed_loop(f"redis {command}", concurrency, count, duration_s, one)
    finally:
        await client.aclose()


async def http_get_rate(
    url: str,
    path: str = "/healthz",
    concurrency: int = 64,
    count: int = 100_000,
    duration_s: float = 2.0,
) -> Rate:
    """GET ``path`` in a closed loop: what the HTTP stack (client and server) does with no work."""
    client = RawHttp(url, REQUEST_TIMEOUT_S, max(1, concurrency))
    request = client.request_bytes("GET", path)
    try:
        await client.warm(concurrency)

        async def one() -> tuple[bool, str]:
            status, _ = await client.call(request)
            return status == 200, f"HTTP {status}"

        return await _closed_loop(f"GET {path}", concurrency, count, duration_s, one)
    finally:
        client.close()


async def _warm(s: aiohttp.ClientSession, target: str, concurrency: int) -> None:
    """Open the keep-alive connections before the clock starts."""

    async def get() -> None:
        async with s.get(target) as resp:
            await resp.read()

    await asyncio.gather(*(get() for _ in range(concurrency)), return_exceptions=True)


# ---------------------------------------------------------------------------- submissions
async def submit_singles(
    url: str,
    concurrency: int = 64,
    count: int = 100_000,
    duration_s: float = 5.0,
    task_type: str = "noop",
    payload: Any = None,
) -> Rate:
    """One task per POST /v1/tasks, ``concurrency`` clients in a closed loop. 201 counts."""
    client = RawHttp(url, REQUEST_TIMEOUT_S, max(1, concurrency))
    request = client.request_bytes("POST", "/v1/tasks", task_body(task_type, payload))
    try:
        await client.warm(concurrency)

        async def one() -> tuple[bool, str]:
            status, raw = await client.call(request)
            return status == 201, f"HTTP {status}: {raw[:200]!r}"

        return await _closed_loop("submit single", concurrency, count, duration_s, one)
    finally:
        client.close()


async def submit_batches(
    url: str,
    batch: int = 1000,
    concurrency: int = 4,
    batches: int = 1000,
    duration_s: float = 5.0,
    task_type: str = "noop",
    payload: Any = None,
) -> Rate:
    """Batches of ``batch`` tasks per POST /v1/tasks/batch; ``ok`` counts tasks."""
    client = RawHttp(url, REQUEST_TIMEOUT_S, max(1, concurrency))
    request = client.request_bytes(
        "POST", "/v1/tasks/batch", batch_bytes(batch, task_type, payload)
    )
    try:
        await client.warm(concurrency)

        async def one() -> tuple[bool, str]:
            status, raw = await client.call(request)
            return status == 201, f"HTTP {status}: {raw[:200]!r}"

        return await _closed_loop(
            f"submit batch of {batch}", concurrency, batches, duration_s, one, weight=batch
        )
    finally:
        client.close()


async def open_loop(
    url: str | Sequence[str],
    rate_per_s: float,
    duration_s: float,
    make_task: Callable[[int], dict[str, Any]] | None = None,
    inflight_max: int = INFLIGHT_MAX_DEFAULT,
    connections: int = 64,
) -> OpenLoop:
    """Open-loop arrivals: the k-th submission is due at start + k / rate, sent then whether or
    not earlier ones were answered (at most ``inflight_max`` unanswered: beyond that an arrival
    is dropped and counted). ``make_task(k)`` builds the k-th body (default: a noop)."""
    duration_s = min(duration_s, DURATION_S_MAX)
    urls = [url] if isinstance(url, str) else list(url)
    total = min(REQUESTS_MAX, int(rate_per_s * duration_s))
    make = make_task or (lambda k: task_body("noop", {"key": k}))
    sent: list[Sent] = []
    dropped = 0
    inflight: set[asyncio.Task[None]] = set()
    per_url = max(1, connections // len(urls))
    clients = [RawHttp(u, REQUEST_TIMEOUT_S, per_url) for u in urls]
    try:
        for c in clients:
            await c.warm(per_url)

        async def fire(rec: Sent, client: RawHttp, body: bytes) -> None:
            try:
                status, raw = await client.call(body)
                rec.status = status
                if status in (200, 201):
                    rec.task_id = json.loads(raw)["id"]
            except (HttpError, TimeoutError, OSError, ValueError):
                rec.status = -1
            rec.acked_s = time.time()

        loop = asyncio.get_running_loop()
        wall0 = time.time()
        mono0 = loop.time()
        k = 0
        while k < total:
            now = loop.time() - mono0
            due_k = min(total, int(now * rate_per_s) + 1)
            while k < due_k:
                if len(inflight) >= inflight_max:
                    dropped += 1
                    k += 1
                    continue
                rec = Sent(k, wall0 + k / rate_per_s, time.time())
                sent.append(rec)
                client = clients[k % len(clients)]
                body = client.request_bytes("POST", "/v1/tasks", make(k))
                t = asyncio.create_task(fire(rec, client, body))
                inflight.add(t)
                t.add_done_callback(inflight.discard)
                k += 1
            if now > duration_s + 1.0:  # the schedule is a second behind: stop offering
                break
            next_due = k / rate_per_s
            await asyncio.sleep(max(0.0, next_due - (loop.time() - mono0)))
        if inflight:
            await asyncio.wait(inflight, timeout=REQUEST_TIMEOUT_S)
        for t in list(inflight):
            t.cancel()
    finally:
        for c in clients:
            c.close()
    return OpenLoop(rate_per_s, duration_s, sent, dropped)


def _parse_time(text: str | None) -> float:
    if not text:
        return math.nan
    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()


async def fetch_tasks(url: str, ids: Sequence[str], concurrency: int = 16) -> list[dict[str, Any]]:
    """GET each task (at most SAMPLE_RECORDS_MAX of them)."""
    ids = list(ids)[:SAMPLE_RECORDS_MAX]
    out: list[dict[str, Any]] = []
    queue = list(reversed(ids))
    async with session(concurrency) as s:

        async def worker() -> None:
            while queue:
                task_id = queue.pop()
                async with s.get(f"{url.rstrip('/')}/v1/tasks/{task_id}") as resp:
                    if resp.status == 200:
                        out.append(await resp.json())

        await asyncio.gather(*(worker() for _ in range(concurrency)))
    return out


def created_to_started_ms(records: Sequence[dict[str, Any]]) -> list[float]:
    """started_at - created_at of each started task, from the server's ms timestamps."""
    out = []
    for r in records:
        started, created = _parse_time(r.get("started_at")), _parse_time(r.get("created_at"))
        if not math.isnan(started) and not math.isnan(created):
            out.append((started - created) * 1000)
    return out


# ---------------------------------------------------------------------------- end to end
async def queue_counts(s: aiohttp.ClientSession, url: str) -> dict[str, Any]:
    async with s.get(url.rstrip("/") + "/v1/queues") as resp:
        resp.raise_for_status()
        counts: dict[str, Any] = await resp.json()
        return counts


async def run_to_completion(
    urls: str | Sequence[str],
    tasks: int = 20_000,
    batch: int = 1000,
    concurrency: int = 4,
    timeout_s: float = 120.0,
    task_type: str = "noop",
    payload: Any = None,
) -> dict[str, Any]:
    """Submit ``tasks`` tasks in batches (round-robin over ``urls``, ``concurrency`` at once),
    then wait for the store to count them all succeeded (GET /v1/queues). The clock runs from
    the first send to the poll that sees the last success. Raises TimeoutError past timeout_s."""
    url_list = [urls] if isinstance(urls, str) else list(urls)
    timeout_s = min(timeout_s, DURATION_S_MAX)
    batches = math.ceil(tasks / batch)
    bodies = {batch: batch_bytes(batch, task_type, payload)}
    last = tasks - (batches - 1) * batch
    bodies.setdefault(last, batch_bytes(last, task_type, payload))
    loop = asyncio.get_running_loop()
    async with session(max(concurrency, 4)) as s:
        before = await queue_counts(s, url_list[0])
        base_ok = int(before.get("succeeded", 0))
        base_dead = int(before.get("dead", 0))
        started = loop.time()
        deadline = started + timeout_s
        next_batch = 0
        submit_errors: list[str] = []

        async def submitter() -> None:
            nonlocal next_batch
            while next_batch < batches and loop.time() < deadline:
                i = next_batch
                next_batch += 1
                size = batch if i < batches - 1 else last
                target = url_list[i % len(url_list)].rstrip("/") + "/v1/tasks/batch"
                async with s.post(target, data=bodies[size], headers=JSON_HEADERS) as resp:
                    raw = await resp.read()
                    if resp.status != 201:
                        submit_errors.append(f"HTTP {resp.status}: {raw[:200]!r}")

        await asyncio.gather(*(submitter() for _ in range(concurrency)))
        submitted_s = loop.time() - started
        if submit_errors:
            raise RuntimeError(f"{len(submit_errors)} batches refused: {submit_errors[:3]}")
        done = dead = 0
        polls = 0
        while loop.time() < deadline:
            counts = await queue_counts(s, url_list[0])
            polls += 1
            done = int(counts.get("succeeded", 0)) - base_ok
            dead = int(counts.get("dead", 0)) - base_dead
            if done + dead >= tasks:
                break
            await asyncio.sleep(POLL_S)
        seconds = loop.time() - started
        if done + dead < tasks:
            raise TimeoutError(f"only {done} of {tasks} tasks succeeded within {timeout_s:g} s")
    return {
        "tasks": tasks,
        "succeeded": done,
        "dead": dead,
        "seconds": seconds,
        "submit_seconds": submitted_s,
        "tasks_per_s": tasks / seconds,
        "polls": polls,
    }


# ---------------------------------------------------------------------------- node metrics
def metric_sum(url: str, name: str, timeout_s: float = 5.0) -> float:
    """Sum over all label sets of one Prometheus sample ``name`` at GET /metrics (blocking)."""
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(url.rstrip("/") + "/metrics", timeout=timeout_s) as resp:
        text = resp.read().decode()
    total = 0.0
    for line in text.splitlines():
        if line.startswith(name) and line[len(name) : len(name) + 1] in ("{", " "):
            total += float(line.rsplit(" ", 1)[1])
    return total


# ---------------------------------------------------------------------------- local processes
@contextlib.contextmanager
def local_node(
    workdir: Path,
    name: str = "n1",
    workers: int = 5,
    fsync: str = "everysec",
    env: dict[str, str] | None = None,
    extra: list[str] | None = None,
    ready_timeout_s: float = 60.0,
) -> Iterator[tuple[Any, Any]]:
    """A fresh embedded Redis (AOF, ``fsync``) and one node process on it, on free 127.0.0.1
    ports: yields (NodeProc, EmbeddedRedis); both are killed (by PID) on the way out."""
    from node.redis_server import EmbeddedRedis
    from tests.procs import NodeProc, free_port

    redis = EmbeddedRedis(workdir / f"{name}-redis", fsync=fsync)
    node = None
    try:
        redis.start()
        node = NodeProc(
            workdir, name, free_port(), redis.url, workers=workers, env=env, extra=extra
        )
        node.start().wait_ready(ready_timeout_s)
        yield node, redis
    finally:
        if node is not None:
            node.kill()
        redis.stop(timeout_s=30)


@contextlib.contextmanager
def local_cluster(
    workdir: Path,
    nodes: int = 3,
    workers: int = 5,
    fsync: str = "everysec",
    env: dict[str, str] | None = None,
    extra: list[str] | None = None,
    ready_timeout_s: float = 60.0,
) -> Iterator[tuple[list[Any], Any]]:
    """``nodes`` Raft members (flags as node/localcluster.py gives them) sharing one fresh
    embedded Redis; yields (NodeProcs, EmbeddedRedis) once every node is ready and all agree on
    one leader. Every process is killed (by PID) on the way out."""
    from node.redis_server import EmbeddedRedis
    from tests.procs import NodeProc, free_ports

    redis = EmbeddedRedis(workdir / "cluster-redis", fsync=fsync)
    procs: list[Any] = []
    try:
        redis.start()
        ports = free_ports(2 * nodes)
        raft = [f"127.0.0.1:{ports[2 * i + 1]}" for i in range(nodes)]
        for i in range(nodes):
            procs.append(
                NodeProc(
                    workdir,
                    f"node{i + 1}",
                    ports[2 * i],
                    redis.url,
                    raft_port=ports[2 * i + 1],
                    peers=[p for j, p in enumerate(raft) if j != i],
                    workers=workers,
                    env=env,
                    extra=extra,
                )
            )
        for p in procs:
            p.start()
        for p in procs:
            p.wait_ready(ready_timeout_s)
        wait_leader(procs, ready_timeout_s)
        yield procs, redis
    finally:
        for p in procs:
            p.kill()
        redis.stop(timeout_s=30)


def cluster_view(proc: Any, timeout_s: float = 2.0) -> dict[str, Any] | None:
    """GET /v1/cluster of one node, None if it does not answer."""
    try:
        status, body = proc.get("/v1/cluster", timeout_s=timeout_s)
    except OSError:
        return None
    return body if status == 200 and isinstance(body, dict) else None


def wait_leader(
    procs: Sequence[Any], timeout_s: float, exclude: str | None = None
) -> tuple[str, int]:
    """(leader id, term) once every live node in ``procs`` names the same leader (not
    ``exclude``) and sees every member healthy. Polls, bounded by ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    last: Any = None
    while time.monotonic() < deadline:
        views = [cluster_view(p) for p in procs if p.alive()]
        last = views
        if views and all(v is not None for v in views):
            leaders = {(v["leader"], v["term"]) for v in views if v is not None}
            if len(leaders) == 1:
                leader, term = next(iter(leaders))
                healthy = all(
                    sum(1 for m in v["members"] if m["healthy"]) >= len(procs)
                    for v in views
                    if v is not None
                )
                if leader is not None and leader != exclude and healthy:
                    return str(leader), int(term)
        time.sleep(0.02)
    raise TimeoutError(f"no agreed leader within {timeout_s:g} s: {last}")


# ---------------------------------------------------------------------------- report table
TABLE_HEADER = (
    f"{'figure':<46} {'raw':>12} {'unit':<9} {'baseline (same run)':>27} {'ratio':>8} "
    f"{'target':>13} {'met':>4}"
)


def table_row(
    figure: str,
    raw: float,
    unit: str,
    baseline: tuple[str, float] | None = None,
    target: str = "",
    met: bool | None = None,
    ratio: float | None = None,
) -> str:
    """One line of the summary table: the raw figure, and its ratio to the same-run baseline."""
    if baseline is not None and ratio is None and baseline[1]:
        ratio = raw / baseline[1]
    base = f"{baseline[0]} {baseline[1]:,.0f}" if baseline is not None else ""
    verdict = "" if met is None else ("yes" if met else "NO")
    ratio_text = "" if ratio is None else f"{ratio:.3f}"
    raw_text = f"{raw:,.1f}" if abs(raw) < 1000 else f"{raw:,.0f}"
    return (
        f"{figure:<46} {raw_text:>12} {unit:<9} {base:>27} {ratio_text:>8} {target:>13} "
        f"{verdict:>4}"
    )


# ---------------------------------------------------------------------------- CLI
def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.loadgen", description=__doc__.split("\n")[0])
    p.add_argument("--url", action="append", default=[], help="node URL (repeatable)")
    p.add_argument(
        "--mode", choices=["open", "singles", "batches", "e2e", "ping", "http"], default="open"
    )
    p.add_argument("--rate", type=float, default=1000.0, help="open loop: submissions per s")
    p.add_argument("--duration", type=float, default=10.0, help="seconds (bounded to 600)")
    p.add_argument("--concurrency", type=int, default=64)
    p.add_argument("--batch", type=int, default=1000)
    p.add_argument("--tasks", type=int, default=20_000, help="e2e: tasks to run to completion")
    p.add_argument("--count", type=int, default=1_000_000, help="closed loops: request cap")
    p.add_argument("--type", default="noop", help="task type")
    p.add_argument("--payload", default="null", help="task payload (JSON)")
    p.add_argument("--redis-url", default="", help="ping mode: the Redis to ping")
    p.add_argument("--timeout", type=float, default=120.0, help="e2e: seconds to wait (<= 600)")
    args = p.parse_args(argv)
    payload = json.loads(args.payload)
    urls = args.url or ["http://127.0.0.1:8080"]
    result: Any
    if args.mode == "ping":
        if not args.redis_url:
            p.error("--mode ping needs --redis-url")
        result = asyncio.run(
            redis_ping_rate(args.redis_url, args.concurrency, args.count, args.duration)
        ).as_dict()
    elif args.mode == "http":
        result = asyncio.run(
            http_get_rate(urls[0], "/healthz", args.concurrency, args.count, args.duration)
        ).as_dict()
    elif args.mode == "singles":
        result = asyncio.run(
            submit_singles(urls[0], args.concurrency, args.count, args.duration, args.type, payload)
        ).as_dict()
    elif args.mode == "batches":
        result = asyncio.run(
            submit_batches(
                urls[0],
                args.batch,
                args.concurrency,
                args.count,
                args.duration,
                args.type,
                payload,
            )
        ).as_dict()
    elif args.mode == "e2e":
        result = asyncio.run(
            run_to_completion(
                urls,
                args.tasks,
                args.batch,
                min(args.concurrency, 16),
                args.timeout,
                args.type,
                payload,
            )
        )
    else:

        async def run_open() -> dict[str, Any]:
            make = (lambda k: task_body(args.type, payload)) if payload is not None else None
            run = await open_loop(urls, args.rate, args.duration, make)
            out = run.summary()
            await asyncio.sleep(0.5)  # let the last ones start
            records = await fetch_tasks(urls[0], [s.task_id for s in run.ok][-SAMPLE_RECORDS_MAX:])
            lat = created_to_started_ms(records)
            out["sampled_records"] = len(records)
            out["started_records"] = len(lat)
            # The server stamps whole milliseconds: these are +-1 ms.
            out["created_to_started_ms_p50"] = round(percentile(lat, 0.5), 1)
            out["created_to_started_ms_p99"] = round(percentile(lat, 0.99), 1)
            return out

        result = asyncio.run(run_open())
    json.dump(result, sys.stdout, indent=2, default=str)
    print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

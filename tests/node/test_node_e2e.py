"""One real node process over a real Redis, used through its HTTP API as a client would."""

from __future__ import annotations

import concurrent.futures
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.probe_tasks import read_log
from tests.procs import NodeProc, free_port, http, terminal, wait_for

LEASE_MS = 2000


@pytest.fixture
def probe_log(tmp_path: Path) -> str:
    return str(tmp_path / "probe.jsonl")


@pytest.fixture
def make_node(tmp_path: Path, probe_log: str) -> Iterator[Any]:
    nodes: list[NodeProc] = []

    def make(redis_url: str, workers: int = 5, name: str = "n1", port: int = 0) -> NodeProc:
        node = NodeProc(
            tmp_path,
            name,
            port or free_port(),
            redis_url,
            workers=workers,
            extra=["--lease-ms", str(LEASE_MS), "--shutdown-grace-s", "3"],
            env={"DSCHED_PROBE_LOG": probe_log},
        )
        nodes.append(node)
        node.start().wait_ready()
        return node

    yield make
    for node in nodes:
        node.kill()


def submit(node: NodeProc, **task: Any) -> dict[str, Any]:
    status, body = node.post("/v1/tasks", task)
    assert status == 201, body
    return body  # type: ignore[no-any-return]


def task_of(node: NodeProc, task_id: str) -> dict[str, Any]:
    status, body = node.get(f"/v1/tasks/{task_id}")
    assert status == 200, body
    return body  # type: ignore[no-any-return]


def wait_terminal(node: NodeProc, task_id: str, timeout_s: float = 20.0) -> dict[str, Any]:
    def done() -> dict[str, Any] | None:
        t = task_of(node, task_id)
        return t if terminal(t["status"]) else None

    return wait_for(done, timeout_s, f"task {task_id} terminal")  # type: ignore[no-any-return]


def starts(log_path: str) -> list[dict[str, Any]]:
    return [e for e in read_log(log_path) if e["event"] == "start"]


def test_high_priority_overtakes_a_low_backlog(
    make_node: Any, redis_url: str, probe_log: str
) -> None:
    node = make_node(redis_url, workers=1)
    lows = [
        submit(node, type="probe", payload={"seconds": 0.05}, priority="low") for _ in range(20)
    ]
    # Let the backlog start running, then add high tasks behind it.
    wait_for(lambda: len(starts(probe_log)) >= 2, 10, "backlog running")
    highs = [
        submit(node, type="probe", payload={"seconds": 0.01}, priority="high") for _ in range(5)
    ]
    for t in highs + lows:
        assert wait_terminal(node, t["id"])["status"] == "succeeded"
    order = [e["task"] for e in starts(probe_log)]
    high_ids = {t["id"] for t in highs}
    first_high = min(order.index(h) for h in high_ids)
    last_high = max(order.index(h) for h in high_ids)
    # Once the first high task started, every high one ran before any further low one...
    assert set(order[first_high : last_high + 1]) <= high_ids
    # ...and the first started at most one slot-turn after they were submitted.
    lows_before = [i for i, tid in enumerate(order[:first_high]) if tid not in high_ids]
    assert len(lows_before) < len(lows), "high tasks waited for the whole low backlog"


def test_retries_then_success_and_dead_then_retry_by_hand(make_node: Any, redis_url: str) -> None:
    node = make_node(redis_url)
    flaky = submit(
        node, type="probe", payload={"fail_attempts": 2}, max_retries=3, backoff_base_s=0.05
    )
    done = wait_terminal(node, flaky["id"])
    assert done["status"] == "succeeded" and done["attempt"] == 3 and done["failures"] == 2
    doomed = submit(node, type="fail", max_retries=1, backoff_base_s=0.05)
    dead = wait_terminal(node, doomed["id"])
    assert dead["status"] == "dead" and dead["attempt"] == 2
    assert dead["error"]["type"] == "TaskFailed"
    assert "traceback" in dead["error"] and "TaskFailed" in dead["error"]["traceback"]
    status, body = node.post(f"/v1/tasks/{doomed['id']}/retry", {})
    assert status == 200, body
    again = wait_terminal(node, doomed["id"])
    assert again["status"] == "dead" and again["attempt"] == 4


def test_a_rejected_task_ends_dead_at_once_whatever_retries_it_has_left(
    make_node: Any, redis_url: str
) -> None:
    node = make_node(redis_url)
    rejected = [
        submit(node, type="fail", payload={"retry": False, "message": "no"}, max_retries=3),
        submit(node, type="probe_sync", payload={"reject": True}, max_retries=3),  # a thread
        submit(node, type="sleep", payload={"seconds": -1}, max_retries=3),
        submit(node, type="sleep", payload={"seconds": "soon"}, max_retries=3),
        submit(node, type="sleep", payload={"seconds": 10**400}, max_retries=3),
        submit(node, type="sleep", payload=[5], max_retries=3),  # slept the default 0.5 s
    ]
    # The same failure, retryable: it runs max_retries + 1 times.
    retried = submit(
        node, type="fail", payload={"message": "no"}, max_retries=1, backoff_base_s=0.05
    )
    for t in rejected:
        dead = wait_terminal(node, t["id"])
        assert dead["status"] == "dead" and dead["attempt"] == 1, dead
        assert dead["failures"] == 1 and dead["error"]["kind"] == "rejected", dead
        assert dead["error"]["type"] == "TaskRejected"
    assert "payload.seconds" in task_of(node, rejected[2]["id"])["error"]["message"]
    dead = wait_terminal(node, retried["id"])
    assert dead["status"] == "dead" and dead["attempt"] == 2 and dead["error"]["kind"] == "error"
    # Retried by hand, a rejected task runs again (its handler decides again).
    status, body = node.post(f"/v1/tasks/{rejected[0]['id']}/retry", {})
    assert status == 200, body
    again = wait_terminal(node, rejected[0]["id"])
    assert again["status"] == "dead" and again["attempt"] == 2


def test_whatever_a_handler_raises_ends_its_attempt_and_frees_its_slot(
    make_node: Any, redis_url: str
) -> None:
    """An exception whose __str__ fails left the attempt unended and its slot busy for good
    (unrelated tasks then waited out leases and died unrun); SystemExit or KeyboardInterrupt
    from a handler stopped the node (found by a probe)."""
    node = make_node(redis_url, workers=2)
    kinds = ["unprintable", "system_exit", "keyboard_interrupt", "rejected_group", "mixed_group"]
    tasks = {
        (kind, type_): submit(node, type=type_, payload={"kind": kind}, max_retries=0)
        for kind in kinds
        for type_ in ("raiser", "raiser_sync")
    }
    for (kind, type_), t in tasks.items():
        dead = wait_terminal(node, t["id"])
        assert dead["status"] == "dead" and dead["attempt"] == 1, (kind, type_, dead)
        want = "rejected" if kind == "rejected_group" else "error"
        assert dead["error"]["kind"] == want, (kind, type_, dead["error"])
    assert (
        "str() failed" in task_of(node, tasks[("unprintable", "raiser")]["id"])["error"]["message"]
    )
    # Still serving, with both slots free: more tasks than slots all run.
    follow = [submit(node, type="noop") for _ in range(6)]
    for t in follow:
        assert wait_terminal(node, t["id"])["status"] == "succeeded"
    assert node.proc is not None and node.proc.poll() is None


def test_a_result_over_the_limit_is_the_attempts_error(make_node: Any, redis_url: str) -> None:
    # It was stored whole (20 MB), and a page of such tasks answered 53 MB (found by a probe).
    from core.limits import DEFAULT_LIMITS

    node = make_node(redis_url, workers=2)
    limit = DEFAULT_LIMITS.result_bytes_max
    over = submit(node, type="big_result", payload={"chars": limit - 1}, max_retries=0)
    at = submit(node, type="big_result", payload={"chars": limit - 2}, max_retries=0)
    dead = wait_terminal(node, over["id"])
    assert dead["status"] == "dead" and dead["result"] is None, dead["status"]
    assert "result_bytes_max" in dead["error"]["message"], dead["error"]
    done = wait_terminal(node, at["id"])
    assert done["status"] == "succeeded" and len(done["result"]) == limit - 2


def test_the_node_freezes_its_startup_objects_out_of_the_collector(
    make_node: Any, redis_url: str
) -> None:
    # A full collection walked them all: a 40-90 ms stop of the loop (node.main).
    node = make_node(redis_url, workers=0)
    _, text = node.get("/metrics")
    [frozen] = [
        float(line.rsplit(" ", 1)[1])
        for line in str(text).splitlines()
        if line.startswith("dsched_gc_frozen_objects ")
    ]
    assert frozen > 10_000, text


def test_timeout_is_its_own_failure_kind(make_node: Any, redis_url: str) -> None:
    node = make_node(redis_url)
    t = submit(node, type="sleep", payload={"seconds": 30}, timeout_s=0.3, max_retries=0)
    dead = wait_terminal(node, t["id"], timeout_s=10)
    assert dead["status"] == "dead"
    assert dead["error"]["kind"] == "timeout"


def test_delay_and_dependencies(make_node: Any, redis_url: str, probe_log: str) -> None:
    node = make_node(redis_url)
    delayed = submit(node, type="probe", delay_s=0.6)
    first = submit(node, type="probe", payload={"seconds": 0.3})
    second = submit(node, type="probe", depends_on=[first["id"]])
    bad = submit(node, type="fail", max_retries=0)
    orphan = submit(node, type="probe", depends_on=[bad["id"]])
    for t in (delayed, first, second):
        assert wait_terminal(node, t["id"])["status"] == "succeeded"
    log = read_log(probe_log)
    start = {e["task"]: e["t"] for e in log if e["event"] == "start"}
    end = {e["task"]: e["t"] for e in log if e["event"] == "end"}
    assert start[second["id"]] >= end[first["id"]]
    d = task_of(node, delayed["id"])
    # Same RFC 3339 UTC format: text order is time order.
    assert d["started_at"] >= d["run_at"] > d["created_at"]
    o = wait_terminal(node, orphan["id"])
    assert o["status"] == "dead" and bad["id"] in o["error"]["message"]
    assert orphan["id"] not in start


def test_cancel_interrupts_a_running_task(make_node: Any, redis_url: str, probe_log: str) -> None:
    node = make_node(redis_url)
    t = submit(node, type="probe", payload={"seconds": 30})
    wait_for(lambda: any(e["task"] == t["id"] for e in starts(probe_log)), 10, "started")
    status, body = http("DELETE", f"{node.url}/v1/tasks/{t['id']}")
    assert status == 200 and body["status"] == "cancelled"
    # The slot comes back quickly: a new task starts well before the 30 s sleep would end.
    nxt = submit(node, type="probe")
    assert wait_terminal(node, nxt["id"], timeout_s=10)["status"] == "succeeded"
    assert task_of(node, t["id"])["status"] == "cancelled"
    assert not [e for e in read_log(probe_log) if e["event"] == "end" and e["task"] == t["id"]]


def test_kill_9_node_mid_flight_loses_nothing(
    make_node: Any, redis_url: str, probe_log: str, tmp_path: Path
) -> None:
    port = free_port()
    node = make_node(redis_url, port=port)
    acked: list[str] = []
    stop = False

    def client() -> None:
        while not stop:
            try:
                status, body = node.post(
                    "/v1/tasks", {"type": "probe", "payload": {"seconds": 0.05}}, timeout_s=2
                )
            except OSError:
                continue
            if status == 201:
                acked.append(body["id"])

    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        futures = [pool.submit(client) for _ in range(4)]
        wait_for(lambda: len(starts(probe_log)) >= 20 and len(acked) >= 60, 20, "load running")
        node.kill()  # SIGKILL with tasks running and submissions in flight
        stop = True
        for f in futures:
            f.result(timeout=10)
    assert acked
    node2 = make_node(redis_url, port=port, name="n1")
    for tid in acked:
        assert wait_terminal(node2, tid, timeout_s=30)["status"] == "succeeded", tid
    # Each task succeeded once in the store; a re-run happens only for attempts the kill cut.
    log = read_log(probe_log)
    ends: dict[str, int] = {}
    for e in log:
        if e["event"] == "end":
            ends[e["task"]] = ends.get(e["task"], 0) + 1
    twice = [t for t, n in ends.items() if n > 1]
    # At-least-once: only a task whose handler ended in the instant between its end and the
    # store's record of it can run twice; that is at most one per worker slot.
    assert len(twice) <= 5, twice


def test_redis_kill_9_with_fsync_always_loses_no_acknowledged_task(
    make_node: Any, redis_factory: Any
) -> None:
    redis = redis_factory(fsync="always")
    node = make_node(redis.url)
    acked = [submit(node, type="noop")["id"] for _ in range(50)]
    redis.kill()
    status, body = node.post("/v1/tasks", {"type": "noop"})
    assert status == 503, body  # refused, not lost: the client knows to retry
    redis.start()
    node.wait_ready()
    acked += [submit(node, type="noop")["id"] for _ in range(10)]
    for tid in acked:
        assert wait_terminal(node, tid)["status"] == "succeeded"


def test_sigterm_lets_running_tasks_finish(make_node: Any, redis_url: str, probe_log: str) -> None:
    node = make_node(redis_url, workers=2)
    short = submit(node, type="probe", payload={"seconds": 0.5})
    long = submit(node, type="probe", payload={"seconds": 60})
    wait_for(lambda: len(starts(probe_log)) >= 2, 10, "both started")
    node.signal(15)
    assert node.proc is not None
    node.proc.wait(timeout=20)
    node2 = make_node(redis_url, name="n1b")
    assert wait_terminal(node2, short["id"])["status"] == "succeeded"
    # The long one was given back at the grace deadline and runs again on the next node.
    wait_for(
        lambda: [e for e in starts(probe_log) if e["task"] == long["id"] and e["attempt"] == 2],
        15,
        "long task restarted elsewhere",
    )
    assert task_of(node2, long["id"])["lease_expiries"] == 0


def test_clients_gone_mid_body_are_counted_as_499_not_as_server_errors(
    make_node: Any, redis_url: str
) -> None:
    """They were 500s, each logged at ERROR with a traceback (a flood of them from one
    misbehaving client, found by probing the API)."""
    node = make_node(redis_url, workers=0)
    head = (
        b"POST /v1/tasks HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000\r\n\r\n{"
    )
    for _ in range(20):
        with socket.create_connection(("127.0.0.1", node.http_port), timeout=5) as conn:
            conn.sendall(head)
    deadline = time.monotonic() + 10
    count = 0.0
    while count < 20 and time.monotonic() < deadline:
        time.sleep(0.05)
        _, text = node.get("/metrics")
        count = sum(
            float(line.rsplit(" ", 1)[1])
            for line in str(text).splitlines()
            if line.startswith("dsched_http_request_seconds_count")
            and 'route="/v1/tasks"' in line
            and 'status="499"' in line
        )
    assert count == 20, text
    assert 'status="500"' not in str(text)
    log = node.tail(10_000)
    assert "Traceback" not in log and "unexpected error" not in log, log
    assert submit(node, type="noop")["status"] == "queued"


DSCHED = Path(sys.executable).parent / "dsched"  # the console script pip installs


def test_dsched_node_finds_task_modules_in_the_working_directory(
    tmp_path: Path, redis_url: str
) -> None:
    """The README's `dsched node --tasks mytasks`, run beside mytasks.py: the console script
    did not search the working directory as `python -m node` does (ModuleNotFoundError)."""
    (tmp_path / "mytasks.py").write_text(
        "from node.tasks import task\n\n\n"
        "@task('greet')\nasync def greet(payload):\n    return {'hello': payload}\n"
    )
    node = NodeProc(tmp_path, "n1", free_port(), redis_url)
    tasks_at = node.args.index("--tasks")
    node.args = [str(DSCHED), *node.args[3:tasks_at], "--tasks", "mytasks"]
    try:
        node.start().wait_ready()
        task = submit(node, type="greet", payload="you")
        assert wait_terminal(node, task["id"])["result"] == {"hello": "you"}
    finally:
        node.kill()


def test_a_task_module_not_found_is_a_usage_error_before_anything_starts(tmp_path: Path) -> None:
    data = tmp_path / "data"
    argv = ["node", "--tasks", "no_such_tasks", "--http-port", str(free_port())]
    proc = subprocess.run(
        [str(DSCHED), *argv, "--data-dir", str(data)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    assert "argument --tasks: no module named 'no_such_tasks'" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert not data.exists()  # no embedded Redis was started


def _embedded_node(tmp_path: Path, name: str, probe_log: str) -> NodeProc:
    # An empty --redis-url: the node starts its own embedded Redis in its data directory.
    return NodeProc(
        tmp_path,
        name,
        free_port(),
        "",
        extra=["--data-dir", str(tmp_path / "data")],
        env={"DSCHED_PROBE_LOG": probe_log},
    )


def test_a_second_node_on_the_same_data_dir_is_refused_and_the_first_runs_on(
    tmp_path: Path, probe_log: str
) -> None:
    first = _embedded_node(tmp_path, "n1", probe_log)
    second = _embedded_node(tmp_path, "n2", probe_log)
    try:
        first.start().wait_ready()
        second.start()
        assert second.proc is not None
        code = second.proc.wait(timeout=60)
        assert code == 1
        # One line that says why, not a traceback.
        assert (
            "error: data directory" in second.tail() and "in use by another node" in second.tail()
        )
        assert "Traceback" not in second.tail()
        assert first.get("/readyz")[0] == 200
        task = submit(first, type="noop")
        assert wait_terminal(first, task["id"])["status"] == "succeeded"
    finally:
        second.kill()
        first.kill()


def test_the_node_restarts_its_embedded_redis_when_it_dies(tmp_path: Path, probe_log: str) -> None:
    node = _embedded_node(tmp_path, "n1", probe_log)
    try:
        node.start().wait_ready()
        before = [submit(node, type="sleep", payload={"seconds": 0.2})["id"] for _ in range(20)]
        pid = int((tmp_path / "data" / "redis.pid").read_text())
        os.kill(pid, signal.SIGKILL)
        wait_for(
            lambda: (
                int((tmp_path / "data" / "redis.pid").read_text() or 0) not in (0, pid)
                and node.get("/readyz")[0] == 200
            ),
            60,
            "a new embedded redis and the node ready again",
        )
        after = submit(node, type="noop")["id"]
        for tid in [*before, after]:
            assert wait_terminal(node, tid, 60)["status"] == "succeeded"
    finally:
        node.kill()


def test_a_sync_handler_past_its_timeout_keeps_its_slot_until_its_thread_returns(
    make_node: Any, redis_url: str, probe_log: str
) -> None:
    node = make_node(redis_url, workers=2)
    stuck = [
        submit(node, type="probe_sync", payload={"seconds": 6}, timeout_s=1, max_retries=0)
        for _ in range(2)
    ]
    for t in stuck:
        assert wait_terminal(node, t["id"])["status"] == "dead"  # timed out
    # Both threads still sleep: a new sync task must wait for one to return, not start in a
    # slot whose thread is taken (it would then wait for a thread and time out unrun).
    quick = submit(node, type="probe_sync", payload={"seconds": 0.1}, timeout_s=3, max_retries=0)
    assert wait_terminal(node, quick["id"], 30)["status"] == "succeeded"


def test_sigterm_does_not_wait_for_a_sync_handler_past_the_grace(
    make_node: Any, redis_url: str, probe_log: str
) -> None:
    node = make_node(redis_url, workers=1)
    long = submit(node, type="probe_sync", payload={"seconds": 40})
    wait_for(lambda: starts(probe_log), 10, "started")
    node.signal(15)
    assert node.proc is not None
    # The grace is 3 s: the process ends soon after, not when the thread's 40 s are up.
    node.proc.wait(timeout=20)
    make_node(redis_url, name="n1b")
    wait_for(
        lambda: [e for e in starts(probe_log) if e["task"] == long["id"] and e["attempt"] == 2],
        15,
        "the task given back and run again",
    )


def test_an_end_the_store_missed_is_written_once_it_is_back(
    tmp_path: Path, redis_factory: Any, probe_log: str
) -> None:
    """Redis goes away while handlers run and comes back within their leases: their ends are
    sent again (END_RETRY_S) and land, so no task waits out its lease and runs twice."""
    redis = redis_factory(fsync="always")
    node = NodeProc(
        tmp_path,
        "n1",
        free_port(),
        redis.url,
        workers=5,
        extra=["--lease-ms", "8000"],
        env={"DSCHED_PROBE_LOG": probe_log},
    )
    try:
        node.start().wait_ready()
        ids = [submit(node, type="probe", payload={"seconds": 1.0})["id"] for _ in range(5)]
        wait_for(lambda: len(starts(probe_log)) >= 5, 20, "all five started")
        redis.kill()
        # The handlers end (after 1 s) while Redis is down; it is back well within the lease.
        wait_for(
            lambda: len([e for e in read_log(probe_log) if e["event"] == "end"]) >= 5,
            20,
            "all five handlers ended",
        )
        time.sleep(0.5)  # a few retries fail first
        redis.start()
        for tid in ids:
            task = wait_terminal(node, tid, 30)
            assert task["status"] == "succeeded" and task["attempt"] == 1, task
        assert len(starts(probe_log)) == 5  # none ran again
    finally:
        node.kill()


def test_a_handler_stops_when_its_lease_runs_out_while_redis_hangs(
    make_node: Any, redis_factory: Any, probe_log: str
) -> None:
    """Redis stops answering without closing anything (a stalled server, a link that drops
    packets): the heartbeat in flight waits for its command timeout, far past the lease. The
    worker must still stop its handler once the lease it last renewed runs out."""
    from tests.cluster.storeproxy import StoreProxies

    redis = redis_factory(fsync="everysec")
    proxies = StoreProxies([free_port()], redis.port).start()
    try:
        node = make_node(proxies.url(0))
        task = submit(node, type="probe", payload={"seconds": 30})
        wait_for(lambda: any(e["task"] == task["id"] for e in read_log(probe_log)), 15, "it starts")
        time.sleep(LEASE_MS / 3000)  # let a heartbeat renew it: the hang starts mid-lease
        hung_at = time.time()
        hang_s = 3 * LEASE_MS / 1000  # under the node's 10 s command timeout
        # The proxies' event loop stalls: bytes stay in the sockets, no connection closes.
        proxies._loop.call_soon_threadsafe(time.sleep, hang_s)

        def stopped() -> float | None:
            for e in read_log(probe_log):
                if e["task"] == task["id"] and e["event"] == "stopped":
                    return float(e["t"])
            return None

        at = wait_for(stopped, hang_s + 5, "the handler stopped")
        # By the lease's end (the last beat before the hang renewed it for LEASE_MS), while
        # Redis still hangs, not once the stalled heartbeat times out or is answered.
        assert at - hung_at < LEASE_MS / 1000 + 0.5, at - hung_at
    finally:
        proxies.close()

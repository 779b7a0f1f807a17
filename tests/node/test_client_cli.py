"""node/client.py and node/cli.py against the API served on a real 127.0.0.1 port.

The blocking Client and the CLI run in a thread (asyncio.to_thread): the event loop they would
otherwise block is the one serving the app.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import shlex
import socket
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import aiohttp
import pytest
from aiohttp import web
from aiohttp.test_utils import TestServer

from core.effects import Lease
from core.limits import Limits
from core.store_model import TaskRecord
from core.task import AttemptEnd, Status
from core.worker import Finish
from node import cli
from node.api import setup_routes
from node.client import ApiError, AsyncClient, Client
from node.config import NodeConfig
from node.keys import CONFIG, METRICS, RUNTIME, STORE
from node.metrics import Metrics
from node.store import RedisStore


class StubRuntime:
    node_id = "node-test"

    def notify_changed(self, records: list[TaskRecord]) -> None:
        pass

    def cluster(self) -> dict[str, Any]:
        return {"leader": self.node_id, "term": 1, "self": self.node_id, "members": []}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return True, {}

    def accepting(self) -> bool:
        return True


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    s = await RedisStore.connect(redis_url, prefix=f"cli-{uuid.uuid4().hex[:12]}")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
async def url(
    aiohttp_server: Callable[[web.Application], Awaitable[TestServer]], store: RedisStore
) -> str:
    limits = Limits()
    app = web.Application(client_max_size=limits.request_bytes_max)
    app[CONFIG] = NodeConfig(limits=limits)
    app[METRICS] = Metrics()
    app[STORE] = store
    app[RUNTIME] = StubRuntime()
    setup_routes(app)
    server = await aiohttp_server(app)
    assert server.host == "127.0.0.1"
    return str(server.make_url("")).rstrip("/")


@pytest.fixture
def closed_url() -> str:
    # A port that was free a moment ago and has no listener: connection refused.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    return f"http://127.0.0.1:{port}"


async def finish_later(store: RedisStore, task_id: str, status: Status, delay_s: float) -> None:
    """Play leader and worker: lease the task, then end its attempt with ``status``."""
    await asyncio.sleep(delay_s)
    now = int(time.time() * 1000)
    await store.raise_epoch(1)
    await store.apply([Lease(1, task_id, "n1", now + 60_000, now)])
    end = AttemptEnd(status, 0, 0, {"answer": 42})
    assert await store.finish_many([Finish(task_id, 1, "n1", end, now)]) == [True]


# ---------------------------------------------------------------------------- Client (sync)


async def test_sync_client_round_trip(url: str, store: RedisStore) -> None:
    client = Client(url)
    task = await asyncio.to_thread(
        client.submit, "echo", {"a": 1}, "high", idempotency_key="k1", delay_s=None
    )
    assert (task["type"], task["priority"], task["payload"]) == ("echo", "high", {"a": 1})
    again = await asyncio.to_thread(
        client.submit, "echo", {"a": 1}, "high", idempotency_key="k1", delay_s=5
    )
    assert again["id"] == task["id"]
    with pytest.raises(ApiError) as conflict:  # the key with another task
        await asyncio.to_thread(client.submit, "echo", {"a": 2}, "high", idempotency_key="k1")
    assert conflict.value.status == 409
    assert (await asyncio.to_thread(client.get, task["id"]))["id"] == task["id"]

    many = await asyncio.to_thread(
        client.submit_many, [{"type": "noop", "payload": i} for i in range(3)]
    )
    assert [t["payload"] for t in many] == [0, 1, 2]
    page = await asyncio.to_thread(client.list, None, "noop", None, None, 2)
    assert [t["id"] for t in page["tasks"]] == [many[0]["id"], many[1]["id"]]
    rest = await asyncio.to_thread(client.list, type="noop", cursor=page["next_cursor"])
    assert [t["id"] for t in rest["tasks"]] == [many[2]["id"]]
    assert rest["next_cursor"] is None

    queues = await asyncio.to_thread(client.queues)
    assert queues["queued"] == {"high": 1, "medium": 3, "low": 0}
    assert (await asyncio.to_thread(client.cluster))["leader"] == "node-test"

    cancelled = await asyncio.to_thread(client.cancel, many[0]["id"])
    assert cancelled["status"] == "cancelled"
    assert (await asyncio.to_thread(client.retry, many[0]["id"]))["status"] == "queued"


async def test_sync_client_errors(url: str, closed_url: str) -> None:
    client = Client(url)
    with pytest.raises(ApiError) as info:
        await asyncio.to_thread(client.submit, "nope")
    assert (info.value.status, info.value.field, info.value.code) == (422, "type", "invalid")
    assert "echo" in info.value.message
    with pytest.raises(ApiError) as info:
        await asyncio.to_thread(client.get, "no/such id")
    assert (info.value.status, info.value.field) == (404, "id")
    with pytest.raises(ApiError) as info:
        await asyncio.to_thread(client.list, status="bogus")
    assert (info.value.status, info.value.field) == (400, "status")
    with pytest.raises(ConnectionError):
        await asyncio.to_thread(Client(closed_url).get, "x")


async def test_sync_wait(url: str, store: RedisStore) -> None:
    client = Client(url)
    task = await asyncio.to_thread(client.submit, "echo")
    finisher = asyncio.create_task(finish_later(store, task["id"], Status.SUCCEEDED, 0.1))
    done = await asyncio.to_thread(client.wait, task["id"], 10, 0.02)
    await finisher
    assert (done["status"], done["result"]) == ("succeeded", {"answer": 42})

    queued = await asyncio.to_thread(client.submit, "echo")
    started = time.monotonic()
    with pytest.raises(TimeoutError):
        await asyncio.to_thread(client.wait, queued["id"], 0.2, 0.05)
    assert time.monotonic() - started < 5


# ---------------------------------------------------------------------------- AsyncClient


async def test_async_client_round_trip(url: str, store: RedisStore) -> None:
    async with AsyncClient(url) as client:
        task = await client.submit("echo", [1, 2], "low", max_retries=0)
        assert (task["priority"], task["max_retries"]) == ("low", 0)
        assert (await client.get(task["id"]))["payload"] == [1, 2]
        many = await client.submit_many([{"type": "noop"}, {"type": "noop"}])
        page = await client.list(type="noop")
        assert [t["id"] for t in page["tasks"]] == [t["id"] for t in many]
        assert (await client.queues())["queued"]["low"] == 1
        assert (await client.cluster())["self"] == "node-test"
        finisher = asyncio.create_task(finish_later(store, task["id"], Status.DEAD, 0.05))
        dead = await client.wait(task["id"], 10)
        await finisher
        assert dead["status"] == "dead"
        assert (await client.retry(task["id"]))["status"] == "queued"
        assert (await client.cancel(task["id"]))["status"] == "cancelled"
        with pytest.raises(TimeoutError):
            await client.wait(many[0]["id"], 0.1)
        with pytest.raises(ApiError) as info:
            await client.submit("echo", priority="urgent")
        assert (info.value.status, info.value.field) == (422, "priority")


async def test_async_client_with_a_given_session(url: str, closed_url: str) -> None:
    async with aiohttp.ClientSession() as session:
        client = AsyncClient(url, session=session)
        assert (await client.submit("noop"))["type"] == "noop"
        await client.close()
        assert not session.closed  # not ours to close
        with pytest.raises(ConnectionError):
            await AsyncClient(closed_url, session=session).get("x")


# ---------------------------------------------------------------------------- CLI


async def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = await asyncio.to_thread(cli.main, list(argv))
    out, err = capsys.readouterr()
    return code, out, err


async def test_cli_submit_status_tasks_cancel_retry(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(
        capsys, "submit", "echo", "--payload", '{"a": 1}', "--priority", "high", "--url", url
    )
    assert (code, err) == (0, "")
    task_id, status, type_name, priority = out.split()
    assert (status, type_name, priority) == ("queued", "echo", "high")

    code, out, _ = await run_cli(capsys, "status", task_id, "--url", url)
    assert code == 0
    assert f"id:         {task_id}" in out
    assert 'payload:    {"a": 1}' in out

    code, out, _ = await run_cli(capsys, "status", task_id, "--url", url, "--json")
    assert json.loads(out)["id"] == task_id

    await run_cli(capsys, "submit", "noop", "--delay-s", "600", "--url", url)
    code, out, _ = await run_cli(capsys, "tasks", "--url", url)
    lines = out.splitlines()
    assert code == 0
    assert lines[0].split() == ["ID", "TYPE", "PRIORITY", "STATUS", "ATTEMPT", "CREATED"]
    assert lines[1].split()[:4] == [task_id, "echo", "high", "queued"]
    assert lines[2].split()[1:4] == ["noop", "medium", "pending"]

    code, out, _ = await run_cli(capsys, "tasks", "--status", "pending", "--url", url, "--json")
    assert [t["type"] for t in json.loads(out)["tasks"]] == ["noop"]

    code, out, _ = await run_cli(capsys, "tasks", "--limit", "1", "--url", url)
    assert f"more: dsched tasks --limit 1 --url {url} --cursor " in out

    code, out, _ = await run_cli(capsys, "cancel", task_id, "--url", url)
    assert (code, out) == (0, f"{task_id}  cancelled\n")
    code, out, _ = await run_cli(capsys, "retry", task_id, "--url", url)
    assert (code, out) == (0, f"{task_id}  queued\n")


async def test_cli_next_page_hint_keeps_the_filters(
    url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    client = Client(url)
    noops = [
        (await asyncio.to_thread(client.submit, "noop", i, "low", delay_s=600))["id"]
        for i in range(3)
    ]
    await asyncio.to_thread(client.submit, "echo", None, "low", delay_s=600)  # filtered out
    await asyncio.to_thread(client.submit, "noop", None, "high", delay_s=600)  # filtered out
    await asyncio.to_thread(client.submit, "noop", None, "low")  # queued: filtered out
    argv = ["tasks", "--status", "pending", "--type", "noop", "--priority", "low"]
    code, out, _ = await run_cli(capsys, *argv, "--limit", "2", "--url", url)
    assert code == 0
    *table, hint = out.splitlines()
    assert [line.split()[0] for line in table[1:]] == noops[:2]
    assert hint.startswith("more: dsched tasks ")
    # The hint, run as printed, is the next page of the same listing: the last pending low noop.
    command = shlex.split(hint.removeprefix("more: "))
    assert command[:2] == ["dsched", "tasks"] and "--cursor" in command
    assert command[command.index("--limit") + 1] == "2"
    code, out, _ = await run_cli(capsys, *command[1:])
    assert code == 0
    lines = out.splitlines()
    assert [line.split()[0] for line in lines[1:]] == noops[2:]


async def test_cli_submit_wait(
    url: str, store: RedisStore, capsys: pytest.CaptureFixture[str]
) -> None:
    # The CLI makes the task, so its id is unknown here: find it in the store, then finish it.
    async def finish_first_echo() -> None:
        for _ in range(500):
            records, _ = await store.list_tasks(type="echo")
            if records:
                await finish_later(store, records[0].id, Status.SUCCEEDED, 0)
                return
            await asyncio.sleep(0.01)

    finisher = asyncio.create_task(finish_first_echo())
    code, out, err = await run_cli(
        capsys, "submit", "echo", "--wait", "--wait-timeout-s", "10", "--url", url
    )
    await finisher
    assert (code, err) == (0, "")
    assert "status:     succeeded" in out
    assert 'result:     {"answer": 42}' in out


async def test_cli_wait_exit_codes(url: str, capsys: pytest.CaptureFixture[str]) -> None:
    task = await asyncio.to_thread(Client(url).submit, "echo")
    for flag in ("--timeout-s", "--wait-timeout-s"):  # the latter as `submit --wait` spells it
        code, _, err = await run_cli(capsys, "wait", task["id"], flag, "0.1", "--url", url)
        assert code == 1
        assert err.startswith("dsched wait: timed out") and err.count("\n") == 1
    await asyncio.to_thread(Client(url).cancel, task["id"])
    code, out, _ = await run_cli(capsys, "wait", task["id"], "--url", url)
    assert code == 1  # finished, but not succeeded
    assert "status:     cancelled" in out


async def test_cli_errors_are_one_line(
    url: str, closed_url: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(capsys, "submit", "nope", "--url", url)
    assert (code, out) == (1, "")
    assert err.count("\n") == 1 and "Traceback" not in err
    assert "422" in err and "(type)" in err and "echo" in err

    code, out, err = await run_cli(capsys, "status", "missing", "--url", url)
    assert code == 1 and "404" in err and err.count("\n") == 1

    code, out, err = await run_cli(capsys, "cancel", "x", "--url", closed_url)
    assert code == 1 and "cannot reach" in err and err.count("\n") == 1

    code, out, err = await run_cli(capsys, "submit", "echo", "--payload", "{", "--url", url)
    assert code == 2 and "--payload" in err


BAD_URLS = [
    "notaurl",
    "127.0.0.1:8080",
    "ftp://127.0.0.1",
    "http://",
    "http://127.0.0.1:99999",
    "http://127.0.0.1:0",
    "http://127.0.0.1:port",
    "http://[::1",
    "http://127.0.0.1:8080?x=1",
]


@pytest.mark.parametrize("bad", BAD_URLS)
async def test_cli_bad_url_is_a_one_line_usage_error(
    bad: str, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = await run_cli(capsys, "submit", "noop", "--url", bad)
    assert (code, out) == (2, "")
    assert err.startswith("dsched submit: --url: ") and err.count("\n") == 1
    assert repr(bad) in err and "Traceback" not in err


@pytest.mark.parametrize("bad", BAD_URLS)
def test_clients_refuse_a_bad_base_url(bad: str) -> None:
    with pytest.raises(ValueError, match="is not an http"):
        Client(bad)
    with pytest.raises(ValueError, match="is not an http"):
        AsyncClient(bad)


async def test_cli_url_from_the_environment(
    url: str, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("DSCHED_URL", url)
    code, out, _ = await run_cli(capsys, "tasks")
    assert (code, out) == (0, "no tasks\n")


def test_cli_node_and_cluster_hooks(monkeypatch: pytest.MonkeyPatch) -> None:
    import node.main

    seen: dict[str, argparse.Namespace] = {}

    def fake_node(args: argparse.Namespace) -> int:
        seen["node"] = args
        return 7

    def fake_cluster(args: argparse.Namespace) -> int:
        seen["cluster"] = args
        return 8

    monkeypatch.setattr(node.main, "run_node", fake_node)
    monkeypatch.setattr(node.main, "run_cluster", fake_cluster)
    assert cli.main(["node", "--http-port", "9100", "--workers", "2"]) == 7
    assert (seen["node"].http_port, seen["node"].workers) == (9100, 2)
    assert cli.main(["cluster", "--nodes", "2", "--tasks", "m1", "--tasks", "m2"]) == 8
    args = seen["cluster"]
    assert (args.nodes, args.base_port, args.redis_port, args.workers) == (2, 8080, 6379, 5)
    assert args.tasks == ["m1", "m2"] and args.data_dir


def test_cli_needs_a_command(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        cli.main([])
    assert info.value.code == 2


@pytest.mark.parametrize(
    "argv",
    [
        ["wait", "x", "--wait-timeout-s", "nan"],  # waited for good
        ["wait", "x", "--timeout-s", "-1"],  # "still running after -1 s"
        ["submit", "echo", "--wait", "--wait-timeout-s", "inf"],
        ["submit", "echo", "--delay-s", "nan"],  # blamed the JSON: "NaN is not JSON"
        ["submit", "echo", "--timeout-s", "inf"],
        ["submit", "echo", "--delay-s", "-5"],
    ],
)
def test_cli_seconds_flags_refuse_nan_infinity_and_negatives(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Usage errors, before any request: the URL points nowhere.
    with pytest.raises(SystemExit) as info:
        cli.main([*argv, "--url", "http://127.0.0.1:9"])
    assert info.value.code == 2
    assert "must be a number from 0" in capsys.readouterr().err

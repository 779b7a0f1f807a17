"""node/api.py through aiohttp_client, against a real RedisStore on a real Redis.

The runtime is a stub (it is not storage): it records notify_changed calls and lets a test flip
accepting() and readiness(). Everything the API stores goes through the real Lua scripts.
"""

from __future__ import annotations

import argparse
import asyncio
import dataclasses
import gzip
import json
import logging
import time
import urllib.parse
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient

import node.api
from core.effects import Lease
from core.limits import Limits
from core.store_model import TaskRecord
from core.task import AttemptEnd, Status
from core.worker import Finish
from node.api import JSON_TYPE, ROUTES, setup_routes
from node.config import NodeConfig, add_node_arguments, config_from_args
from node.keys import CONFIG, METRICS, RUNTIME, STORE
from node.metrics import Metrics
from node.serialize import task_json
from node.store import RedisStore, StoreUnavailable
from node.validation import FIELDS_BY_NAME
from tests.node.test_store import snapshot

LIMITS = Limits(
    payload_bytes_max=1000,
    batch_tasks_max=5,
    request_bytes_max=64 * 1024,
    depends_on_max=3,
    page_tasks_max=50,
)

Client = TestClient[web.Request, web.Application]


class StubRuntime:
    node_id = "node-test"

    def __init__(self) -> None:
        self.changed: list[list[str]] = []
        self.accept = True
        self.ready = True
        self.membership: list[tuple[str, str]] = []

    def notify_changed(self, records: list[TaskRecord]) -> None:
        self.changed.append([r.id for r in records])

    def cluster(self) -> dict[str, Any]:
        return {"leader": self.node_id, "term": 1, "self": self.node_id, "members": []}

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        return self.ready, {"redis": True, "leader_known": self.ready}

    def accepting(self) -> bool:
        return self.accept

    async def change_membership(self, action: str, raft_addr: str) -> tuple[int, dict[str, Any]]:
        self.membership.append((action, raft_addr))
        return 200, {"action": action, "raft": raft_addr}


def make_app(store: RedisStore, runtime: StubRuntime) -> web.Application:
    # What create_app does for the API, without Redis startup, Raft or workers.
    app = web.Application(client_max_size=LIMITS.request_bytes_max)
    app[CONFIG] = NodeConfig(limits=LIMITS)
    app[METRICS] = Metrics()
    app[STORE] = store
    app[RUNTIME] = runtime
    setup_routes(app)
    return app


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    # A fresh prefix per test: tests share one Redis and never see each other's keys.
    s = await RedisStore.connect(redis_url, prefix=f"api-{uuid.uuid4().hex[:12]}")
    try:
        yield s
    finally:
        await s.close()


@pytest.fixture
def runtime() -> StubRuntime:
    return StubRuntime()


@pytest.fixture
async def client(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    store: RedisStore,
    runtime: StubRuntime,
) -> Client:
    return await aiohttp_client(make_app(store, runtime))


async def post(client: Client, path: str, body: Any) -> tuple[int, Any]:
    resp = await client.post(path, json=body)
    return resp.status, await resp.json()


def error_of(body: Any) -> dict[str, Any]:
    error: dict[str, Any] = body["error"]
    assert set(error) >= {"code", "field", "message"}
    return error


async def all_ids(store: RedisStore) -> list[str]:
    records, _ = await store.list_tasks(limit=1000)
    return [r.id for r in records]


async def finish(store: RedisStore, task_id: str, status: Status) -> None:
    """Drive a queued task through a lease and a finished attempt, as leader and worker would."""
    now = int(time.time() * 1000)
    assert await store.raise_epoch(1)
    await store.apply([Lease(1, task_id, "n1", now + 60_000, now)])
    end = AttemptEnd(status, 1 if status is Status.DEAD else 0, 0, {"ok": True})
    assert await store.finish_many([Finish(task_id, 1, "n1", end, now)]) == [True]


# ---------------------------------------------------------------------------- submit


async def test_submit_answers_201_once_stored(
    client: Client, store: RedisStore, runtime: StubRuntime
) -> None:
    resp = await client.post(
        "/v1/tasks", json={"type": "echo", "payload": {"x": 1}, "priority": "high"}
    )
    assert resp.status == 201
    task = await resp.json()
    assert resp.headers["Location"] == f"/v1/tasks/{task['id']}"
    assert len(task["id"]) == 32 and int(task["id"], 16) >= 0
    assert task["status"] == "queued"
    assert task["priority"] == "high"
    assert task["payload"] == {"x": 1}
    assert (task["max_retries"], task["timeout_s"], task["attempt"]) == (3, 300, 0)
    assert task["created_at"].endswith("Z")
    stored = await store.get(task["id"])
    assert stored is not None and task_json(stored) == task
    assert runtime.changed == [[task["id"]]]


async def test_delayed_submission_is_pending_with_run_at(client: Client) -> None:
    status, task = await post(client, "/v1/tasks", {"type": "noop", "delay_s": 3600})
    assert status == 201
    assert task["status"] == "pending"
    assert task["run_at"] is not None


async def test_idempotency_key_answers_the_first_task(
    client: Client, store: RedisStore, runtime: StubRuntime
) -> None:
    body = {"type": "echo", "payload": {"a": 1, "b": [2]}, "idempotency_key": "order-42"}
    status1, first = await post(client, "/v1/tasks", body)
    # The same task (payload keys in another order, another delay): the first, unchanged.
    resend = {**body, "payload": {"b": [2], "a": 1}, "delay_s": 5}
    status2, again = await post(client, "/v1/tasks", resend)
    assert (status1, status2) == (201, 200)
    assert again == first
    assert await all_ids(store) == [first["id"]]
    assert runtime.changed == [[first["id"]]]


@pytest.mark.parametrize(
    "change",
    [
        {"payload": {"a": 2, "b": [2]}},
        {"type": "noop"},
        {"priority": "high"},
        {"max_retries": 0},
        {"timeout_s": 1},
        {"backoff_base_s": 0.5},
        {"depends_on": "first"},
    ],
)
async def test_idempotency_key_with_another_task_is_409(
    client: Client, store: RedisStore, runtime: StubRuntime, change: dict[str, Any]
) -> None:
    body = {"type": "echo", "payload": {"a": 1, "b": [2]}, "idempotency_key": "order-42"}
    _, first = await post(client, "/v1/tasks", body)
    if change.get("depends_on") == "first":
        change = {"depends_on": [first["id"]]}
    status, answer = await post(client, "/v1/tasks", {**body, **change})
    assert status == 409
    error = error_of(answer)
    assert error["code"] == "idempotency_conflict"
    assert error["field"] == "idempotency_key"
    assert error["task_id"] == first["id"] and "order-42" in error["message"]
    assert await all_ids(store) == [first["id"]]
    # In a batch: refused whole, nothing of it written, the item named.
    tasks = [{"type": "echo"}, {**body, **change}]
    status, answer = await post(client, "/v1/tasks/batch", {"tasks": tasks})
    assert status == 409
    assert error_of(answer)["field"] == "tasks[1].idempotency_key"
    assert await all_ids(store) == [first["id"]]
    assert runtime.changed == [[first["id"]]]


async def test_idempotency_conflict_inside_a_batch_names_the_item(
    client: Client, store: RedisStore, runtime: StubRuntime
) -> None:
    tasks = [
        {"type": "echo", "payload": 1},
        {"type": "noop", "idempotency_key": "bk2"},
        {"type": "echo", "idempotency_key": "bk2"},
    ]
    status, answer = await post(client, "/v1/tasks/batch", {"tasks": tasks})
    assert status == 409
    error = error_of(answer)
    assert error["code"] == "idempotency_conflict"
    assert error["field"] == "tasks[2].idempotency_key"
    assert error["conflicts_with"] == "tasks[1]"
    assert "tasks[1] of this batch" in error["message"] and "'bk2'" in error["message"]
    # No id of a task that was never written: the batch was refused whole.
    assert "task_id" not in error
    assert await all_ids(store) == [] and runtime.changed == []
    # Against a stored task, the conflict still names it.
    _, first = await post(client, "/v1/tasks", {"type": "noop", "idempotency_key": "bk2"})
    status, answer = await post(client, "/v1/tasks/batch", {"tasks": tasks[2:]})
    assert status == 409
    error = error_of(answer)
    assert error["task_id"] == first["id"] and "conflicts_with" not in error


async def test_queued_tasks_max_refuses_with_503_and_writes_nothing(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    store: RedisStore,
    runtime: StubRuntime,
) -> None:
    app = make_app(store, runtime)
    app[CONFIG] = NodeConfig(limits=dataclasses.replace(LIMITS, queued_tasks_max=3))
    client = await aiohttp_client(app)
    status, body = await post(client, "/v1/tasks/batch", {"tasks": [{"type": "echo"}] * 2})
    assert status == 201
    ids = [t["id"] for t in body["tasks"]]
    before = await snapshot(store.redis, store.base)
    for path, request in [
        ("/v1/tasks/batch", {"tasks": [{"type": "echo"}] * 2}),
        ("/v1/tasks/batch", {"tasks": [{"type": "echo", "delay_s": 60}] * 5}),
    ]:
        resp = await client.post(path, json=request)
        assert resp.status == 503
        assert resp.headers["Retry-After"] == "1"
        error = error_of(await resp.json())
        assert error["code"] == "queue_full" and error["field"] is None
        assert error["queued_tasks_max"] == 3 and "queue is full" in error["message"]
        assert await snapshot(store.redis, store.base) == before
    # One more fits exactly; then a single submission is refused the same way.
    status, third = await post(client, "/v1/tasks", {"type": "echo"})
    assert status == 201
    resp = await client.post("/v1/tasks", json={"type": "echo"})
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    assert error_of(await resp.json())["code"] == "queue_full"
    assert await all_ids(store) == [*ids, third["id"]]
    assert runtime.changed == [ids, [third["id"]]]


async def test_retry_is_refused_with_503_when_the_queue_is_full(
    aiohttp_client: Callable[[web.Application], Awaitable[Client]],
    store: RedisStore,
    runtime: StubRuntime,
) -> None:
    app = make_app(store, runtime)
    app[CONFIG] = NodeConfig(limits=dataclasses.replace(LIMITS, queued_tasks_max=2))
    client = await aiohttp_client(app)
    _, first = await post(client, "/v1/tasks", {"type": "echo"})
    assert (await client.delete(f"/v1/tasks/{first['id']}")).status == 200
    status, body = await post(client, "/v1/tasks/batch", {"tasks": [{"type": "echo"}] * 2})
    assert status == 201  # the backlog is at the limit: 2 queued
    resp = await client.post("/v1/tasks", json={"type": "echo"})
    assert resp.status == 503
    # A retry would take the backlog past the limit just as a submission would.
    changed = list(runtime.changed)
    before = await snapshot(store.redis, store.base)
    resp = await client.post(f"/v1/tasks/{first['id']}/retry")
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    error = error_of(await resp.json())
    assert error["code"] == "queue_full" and error["queued_tasks_max"] == 2
    assert "queue is full" in error["message"]
    assert await snapshot(store.redis, store.base) == before
    assert runtime.changed == changed
    record = await store.get(first["id"])
    assert record is not None and record.status is Status.CANCELLED
    # Once there is room, the retry goes through.
    assert (await client.delete(f"/v1/tasks/{body['tasks'][0]['id']}")).status == 200
    status, task = await post(client, f"/v1/tasks/{first['id']}/retry", None)
    assert (status, task["status"]) == (200, "queued")


async def test_dependencies_must_exist(client: Client, store: RedisStore) -> None:
    _, dep = await post(client, "/v1/tasks", {"type": "noop"})
    status, task = await post(client, "/v1/tasks", {"type": "noop", "depends_on": [dep["id"]]})
    assert status == 201 and task["status"] == "pending" and task["depends_on"] == [dep["id"]]
    status, body = await post(client, "/v1/tasks", {"type": "noop", "depends_on": ["f" * 32]})
    assert status == 422
    assert error_of(body)["field"] == "depends_on"
    assert len(await all_ids(store)) == 2


# ---------------------------------------------------------------------------- bad input

BAD_BODIES = [
    ({"type": "nope"}, 422, "type"),
    ({"type": "echo", "priority": "urgent"}, 422, "priority"),
    ({"type": "echo", "priority": "HIGH"}, 422, "priority"),
    ({"type": "echo", "extra": 1}, 422, "extra"),
    ({"type": "echo", "id": "0" * 32}, 422, "id"),
    ({"payload": 1}, 422, "type"),
    ({"type": 5}, 422, "type"),
    ({"type": "echo", "max_retries": True}, 422, "max_retries"),
    ({"type": "echo", "max_retries": -1}, 422, "max_retries"),
    ({"type": "echo", "max_retries": 10**6}, 422, "max_retries"),
    ({"type": "echo", "timeout_s": 0}, 422, "timeout_s"),
    ({"type": "echo", "timeout_s": 10**9}, 422, "timeout_s"),
    ({"type": "echo", "delay_s": -0.5}, 422, "delay_s"),
    ({"type": "echo", "delay_s": 1, "run_at": "2030-01-01T00:00:00Z"}, 422, "run_at"),
    ({"type": "echo", "run_at": "yesterday"}, 422, "run_at"),
    # Epoch seconds so far out that they are infinity in milliseconds (found by hypothesis).
    ({"type": "echo", "run_at": 1.797693134862316e305}, 422, "run_at"),
    ({"type": "echo", "run_at": 10**400}, 422, "run_at"),
    ({"type": "echo", "depends_on": ["a", "a"]}, 422, "depends_on[1]"),
    ({"type": "echo", "depends_on": ["a", "b", "c", "d"]}, 422, "depends_on"),
    ({"type": "echo", "idempotency_key": ""}, 422, "idempotency_key"),
    ({"type": "echo", "backoff_base_s": 9, "backoff_cap_s": 1}, 422, "backoff_cap_s"),
    ({"type": "echo", "payload": "x" * 2000}, 413, "payload"),
    ([{"type": "echo"}], 422, None),
]


@pytest.mark.parametrize(("body", "status", "field"), BAD_BODIES)
async def test_bad_submission_is_refused_naming_the_field(
    client: Client,
    store: RedisStore,
    runtime: StubRuntime,
    body: Any,
    status: int,
    field: str | None,
) -> None:
    got, answer = await post(client, "/v1/tasks", body)
    assert got == status
    assert error_of(answer)["field"] == field
    assert await all_ids(store) == []
    assert runtime.changed == []


def nested(depth: int) -> Any:
    """A payload of ``depth`` arrays and objects, each in the one before."""
    value: Any = 1
    for level in range(depth):
        value = [value] if level % 2 else {"k": value}
    return value


async def test_payload_nesting_is_limited_and_what_is_taken_reads_back(
    client: Client, store: RedisStore
) -> None:
    # Deeper payloads were taken, then could not be serialised for GET or a listing (500).
    depth_max = LIMITS.payload_depth_max
    status, task = await post(client, "/v1/tasks", {"type": "echo", "payload": nested(depth_max)})
    assert status == 201, task
    resp = await client.get(f"/v1/tasks/{task['id']}")
    assert resp.status == 200 and (await resp.json())["payload"] == nested(depth_max)
    resp = await client.get("/v1/tasks")
    assert resp.status == 200 and (await resp.json())["tasks"][0]["id"] == task["id"]
    too_deep = {"type": "echo", "payload": nested(depth_max + 1)}
    status, body = await post(client, "/v1/tasks", too_deep)
    assert status == 422 and error_of(body)["field"] == "payload", body
    status, body = await post(client, "/v1/tasks/batch", {"tasks": [{"type": "echo"}, too_deep]})
    assert status == 422 and error_of(body)["field"] == "tasks[1].payload", body
    # Brackets in strings nest nothing.
    status, _ = await post(client, "/v1/tasks", {"type": "echo", "payload": {"s": "[{" * 300}})
    assert status == 201
    assert len(await all_ids(store)) == 2


async def test_unknown_type_lists_the_known_ones(client: Client) -> None:
    _, body = await post(client, "/v1/tasks", {"type": "nope"})
    assert {"echo", "noop", "sleep", "fail"} <= set(error_of(body)["allowed"])
    assert "echo" in error_of(body)["message"]


@pytest.mark.parametrize(
    ("raw", "status"),
    [
        (b"{", 400),
        (b"", 400),
        (b'{"type": "echo", "timeout_s": NaN}', 400),
        (b'{"type": "echo", "timeout_s": Infinity}', 400),
        (b'{"type": "echo", "type": "noop"}', 400),
        (b"\xff", 400),
        (b'{"type": "echo", "timeout_s": 1e999}', 422),
    ],
)
async def test_malformed_json(client: Client, raw: bytes, status: int) -> None:
    resp = await client.post("/v1/tasks", data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == status
    assert error_of(await resp.json())["code"] == ("malformed" if status == 400 else "invalid")


@pytest.mark.parametrize(
    ("raw", "field"),
    [
        (b"GET /v1/tasks?status=" + b"q" * 9000 + b" HTTP/1.1\r\nHost: h\r\n\r\n", "url"),
        (b"GET /healthz HTTP/1.1\r\nHost: h\r\nX-Big: " + b"v" * 9000 + b"\r\n\r\n", "headers"),
        (b"G@T /healthz HTTP/1.1\r\nHost: h\r\n\r\n", "method"),
        (b"POST /v1/tasks HTTP/1.1\r\nHost: h\r\nContent-Length: abc\r\n\r\n", None),
        (
            b"GET /healthz HTTP/1.1\r\nHost: h\r\n"
            + b"".join(b"X-%d: 1\r\n" % i for i in range(200))
            + b"\r\n",
            None,
        ),
    ],
)
async def test_requests_aiohttp_cannot_parse_get_the_json_envelope(
    client: Client, raw: bytes, field: str | None, caplog: pytest.LogCaptureFixture
) -> None:
    """Refused by aiohttp's protocol layer, before any middleware: still JSON, naming the part
    at fault, logged as one line (not an ERROR with a traceback), and the node serves on."""
    caplog.set_level(logging.INFO)
    server = client.server
    reader, writer = await asyncio.open_connection(server.host, server.port)
    try:
        writer.write(raw)
        await writer.drain()
        reply = await asyncio.wait_for(reader.read(), 10)  # it closes the connection
    finally:
        writer.close()
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b"\r\n")[0].split(b" ")[1] == b"400", head
    assert b"content-type: application/json" in head.lower(), head
    error = error_of(json.loads(body))
    assert error["code"] == "malformed" and error["field"] == field, error
    assert error["message"]
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    assert any("malformed HTTP request" in r.getMessage() for r in caplog.records)
    resp = await client.get("/healthz")
    assert resp.status == 200


@pytest.mark.parametrize(
    ("path", "raw", "field"),
    [
        ("/v1/tasks", rb'{"type": "noop", "\ud800": 1}', "\\ud800"),
        ("/v1/tasks/batch", rb'{"tasks": [{"type": "noop", "\udfff": 1}]}', "tasks[0].\\udfff"),
        ("/v1/tasks/batch", rb'{"tasks": [{"type": "noop"}], "\ud800x": 1}', "\\ud800x"),
    ],
)
async def test_unknown_field_named_with_a_lone_surrogate_is_422(
    client: Client, store: RedisStore, path: str, raw: bytes, field: str
) -> None:
    # The name decodes to a str UTF-8 cannot carry: the error shows it escaped, never a 500.
    resp = await client.post(path, data=raw, headers={"Content-Type": "application/json"})
    assert resp.status == 422
    error = error_of(await resp.json())
    assert error["code"] == "invalid"
    assert error["field"] == field
    assert "unknown field" in error["message"] and field.rpartition(".")[2] in error["message"]
    assert await all_ids(store) == []


async def test_a_body_that_is_not_its_content_encoding_is_400(
    client: Client, store: RedisStore, caplog: pytest.LogCaptureFixture
) -> None:
    body = b'{"type": "echo"}'
    resp = await client.post(
        "/v1/tasks",
        data=body,
        headers={"Content-Type": JSON_TYPE, "Content-Encoding": "gzip"},
    )
    assert resp.status == 400, await resp.text()
    assert error_of(await resp.json())["field"] == "Content-Encoding"
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR], caplog.text
    # One it does not decode (or several) would pass through as is: refused.
    for encoding in ("x-unknown", "gzip, gzip", "x-gzip"):
        resp = await client.post(
            "/v1/tasks",
            data=body,
            headers={"Content-Type": JSON_TYPE, "Content-Encoding": encoding},
        )
        assert resp.status == 415, await resp.text()
        assert error_of(await resp.json())["field"] == "Content-Encoding"
    resp = await client.post(
        "/v1/tasks",
        data=gzip.compress(body),
        headers={"Content-Type": JSON_TYPE, "Content-Encoding": "gzip"},
    )
    assert resp.status == 201
    assert len(await all_ids(store)) == 1


async def _raw_request(client: Client, data: bytes, close: bool) -> bytes:
    """Send ``data`` on a connection of its own; then close it, or read the answer (10 s)."""
    reader, writer = await asyncio.open_connection(client.server.host, client.server.port)
    try:
        writer.write(data)
        await writer.drain()
        if close:
            return b""
        head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 10)
        length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
        return head + await asyncio.wait_for(reader.readexactly(length), 10)
    finally:
        writer.close()


HEAD_OF_100 = b"POST /v1/tasks HTTP/1.1\r\nHost: h\r\nContent-Type: application/json\r\n"
HEAD_OF_100 += b"Content-Length: 100\r\n\r\n"


async def test_a_body_that_stalls_is_408(
    client: Client, store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(node.api, "BODY_READ_S_MAX", 0.3)
    reply = await _raw_request(client, HEAD_OF_100 + b"{", close=False)
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.split(b" ")[1] == b"408", reply
    assert error_of(json.loads(body))["code"] == "timeout"
    assert await all_ids(store) == []


@pytest.mark.parametrize(
    "content_type",
    ["text/plain", "application/x-www-form-urlencoded", None, "application/json; charset=latin-1"],
)
async def test_wrong_content_type_is_415(client: Client, content_type: str | None) -> None:
    headers = {"Content-Type": content_type} if content_type else {}
    resp = await client.post("/v1/tasks", data=b'{"type": "echo"}', headers=headers)
    assert resp.status == 415
    assert error_of(await resp.json())["code"] == "unsupported_media_type"


async def test_charset_utf8_is_accepted(client: Client) -> None:
    resp = await client.post(
        "/v1/tasks",
        data=b'{"type": "echo"}',
        headers={"Content-Type": "application/json; charset=UTF-8"},
    )
    assert resp.status == 201


async def test_body_over_the_limit_is_413_before_parsing(client: Client, store: RedisStore) -> None:
    # Not even JSON: the size is refused before anything is parsed.
    big = b"x" * (LIMITS.request_bytes_max + 1)
    resp = await client.post("/v1/tasks", data=big, headers={"Content-Type": "application/json"})
    assert resp.status == 413
    assert error_of(await resp.json())["code"] == "too_large"

    async def chunks() -> AsyncIterator[bytes]:
        # No Content-Length (chunked): aiohttp's client_max_size cuts it off while reading.
        for _ in range(LIMITS.request_bytes_max // 1024 + 2):
            yield b" " * 1024

    resp = await client.post(
        "/v1/tasks", data=chunks(), headers={"Content-Type": "application/json"}
    )
    assert resp.status == 413
    assert await all_ids(store) == []


async def test_not_accepting_is_503(client: Client, runtime: StubRuntime) -> None:
    _, task = await post(client, "/v1/tasks", {"type": "echo"})
    await client.delete(f"/v1/tasks/{task['id']}")
    runtime.accept = False
    for path, body in [
        ("/v1/tasks", {"type": "echo"}),
        ("/v1/tasks/batch", {"tasks": [{"type": "echo"}]}),
        (f"/v1/tasks/{task['id']}/retry", None),
    ]:
        resp = await client.post(path, json=body)
        assert resp.status == 503, path
        assert resp.headers["Retry-After"] == "1"
        assert error_of(await resp.json())["code"] == "unavailable"
    assert (await client.get(f"/v1/tasks/{task['id']}")).status == 200


async def test_store_unavailable_is_503_with_retry_after(
    client: Client, store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def down(*args: Any, **kwargs: Any) -> Any:
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr(store, "submit", down)
    monkeypatch.setattr(store, "submit_rows", down)  # what the API's submissions call
    monkeypatch.setattr(store, "get", down)
    resp = await client.post("/v1/tasks", json={"type": "echo"})
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    resp = await client.post("/v1/tasks/batch", json={"tasks": [{"type": "echo"}]})
    assert resp.status == 503 and resp.headers["Retry-After"] == "1"
    resp = await client.get("/v1/tasks/abc")
    assert resp.status == 503
    assert error_of(await resp.json())["code"] == "unavailable"


async def test_unexpected_error_is_a_logged_500_and_the_node_carries_on(
    client: Client,
    store: RedisStore,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("boom")

    monkeypatch.setattr(store, "get", broken)
    with caplog.at_level(logging.ERROR, logger="dsched.api"):
        resp = await client.get("/v1/tasks/abc")
    assert resp.status == 500
    body = await resp.json()
    assert error_of(body)["code"] == "internal"
    assert "boom" not in json.dumps(body)  # no internals to the client
    assert any("boom" in (r.exc_text or "") for r in caplog.records)
    assert (await client.get("/healthz")).status == 200


# ---------------------------------------------------------------------------- batch


async def test_batch_creates_all_in_order(
    client: Client, store: RedisStore, runtime: StubRuntime
) -> None:
    tasks = [
        {"type": "echo", "payload": i, "priority": p}
        for i, p in enumerate(["low", "high", "medium", "high"])
    ]
    status, body = await post(client, "/v1/tasks/batch", {"tasks": tasks})
    assert status == 201
    assert [t["payload"] for t in body["tasks"]] == [0, 1, 2, 3]
    assert [t["priority"] for t in body["tasks"]] == ["low", "high", "medium", "high"]
    ids = [t["id"] for t in body["tasks"]]
    assert await all_ids(store) == ids
    assert runtime.changed == [ids]


async def test_batch_with_repeated_keys_answers_the_first(
    client: Client, store: RedisStore
) -> None:
    _, first = await post(client, "/v1/tasks", {"type": "echo", "idempotency_key": "k"})
    tasks = [
        {"type": "echo", "idempotency_key": "k"},
        {"type": "echo", "idempotency_key": "j"},
        {"type": "echo", "idempotency_key": "j"},
    ]
    status, body = await post(client, "/v1/tasks/batch", {"tasks": tasks})
    assert status == 201
    ids = [t["id"] for t in body["tasks"]]
    assert ids[0] == first["id"] and ids[1] == ids[2] != ids[0]
    assert len(await all_ids(store)) == 2
    status, body = await post(client, "/v1/tasks/batch", {"tasks": tasks[:1]})
    assert status == 200  # nothing new was created
    assert [t["id"] for t in body["tasks"]] == [first["id"]]
    # Both answers are documented.
    doc = await (await client.get("/openapi.json")).json()
    responses = doc["paths"]["/v1/tasks/batch"]["post"]["responses"]
    assert {"200", "201"} <= set(responses)
    assert responses["200"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/TaskList"
    }


@pytest.mark.parametrize(
    ("tasks", "status", "field"),
    [
        ([{"type": "echo"}] * 3 + [{"type": "echo", "priority": "x"}], 422, "tasks[3].priority"),
        ([{"type": "echo"}, {"type": "nope"}], 422, "tasks[1].type"),
        ([{"type": "echo"}, {"type": "echo", "payload": "y" * 2000}], 413, "tasks[1].payload"),
        ([{"type": "echo"}] * 6, 413, "tasks"),
        ([], 422, "tasks"),
        (
            [{"type": "echo"}, {"type": "echo", "depends_on": ["0" * 32]}],
            422,
            "tasks[1].depends_on",
        ),
    ],
)
async def test_refused_batch_writes_nothing(
    client: Client,
    store: RedisStore,
    runtime: StubRuntime,
    tasks: list[Any],
    status: int,
    field: str,
) -> None:
    got, body = await post(client, "/v1/tasks/batch", {"tasks": tasks})
    assert got == status
    assert error_of(body)["field"] == field
    assert await all_ids(store) == []
    assert (await store.counts())["queued"] == {"high": 0, "medium": 0, "low": 0}
    assert runtime.changed == []


async def test_batch_body_must_be_an_object_of_tasks(client: Client) -> None:
    status, body = await post(client, "/v1/tasks/batch", [{"type": "echo"}])
    assert status == 422 and error_of(body)["field"] is None
    status, body = await post(client, "/v1/tasks/batch", {"tasks": [], "more": 1})
    assert status == 422 and error_of(body)["field"] == "more"


# ---------------------------------------------------------------------------- read and list


async def test_get_unknown_task_is_404_json(client: Client) -> None:
    resp = await client.get("/v1/tasks/" + "0" * 32)
    assert resp.status == 404
    assert error_of(await resp.json()) == {
        "code": "not_found",
        "field": "id",
        "message": f"no task {'0' * 32!r}",
    }


async def test_unknown_route_and_method_are_json(client: Client) -> None:
    resp = await client.get("/v2/nothing")
    assert resp.status == 404
    assert error_of(await resp.json())["code"] == "not_found"
    resp = await client.put("/v1/tasks", json={})
    assert resp.status == 405
    assert "POST" in resp.headers["Allow"]
    assert error_of(await resp.json())["code"] == "method_not_allowed"


async def test_pagination_walks_every_task_once_in_order(client: Client) -> None:
    tasks = [{"type": "echo", "payload": i} for i in range(5)]
    _, first = await post(client, "/v1/tasks/batch", {"tasks": tasks})
    _, second = await post(client, "/v1/tasks/batch", {"tasks": tasks[:2]})
    submitted = [t["id"] for t in first["tasks"] + second["tasks"]]
    seen: list[str] = []
    cursor: str | None = None
    pages = 0
    while True:
        query = {"limit": "3"} | ({"cursor": cursor} if cursor else {})
        resp = await client.get("/v1/tasks", params=query)
        assert resp.status == 200
        page = await resp.json()
        assert len(page["tasks"]) <= 3
        seen += [t["id"] for t in page["tasks"]]
        pages += 1
        cursor = page["next_cursor"]
        if cursor is None:
            break
        assert isinstance(cursor, str)
    assert seen == submitted
    assert pages >= 3


async def test_list_filters(client: Client) -> None:
    tasks = [
        {"type": "echo", "priority": "high"},
        {"type": "noop", "priority": "low"},
        {"type": "echo", "priority": "low", "delay_s": 600},
    ]
    _, body = await post(client, "/v1/tasks/batch", {"tasks": tasks})
    ids = [t["id"] for t in body["tasks"]]

    async def listed(**params: str) -> list[str]:
        resp = await client.get("/v1/tasks", params=params)
        assert resp.status == 200
        return [t["id"] for t in (await resp.json())["tasks"]]

    assert await listed(type="echo") == [ids[0], ids[2]]
    assert await listed(priority="low") == [ids[1], ids[2]]
    assert await listed(status="pending") == [ids[2]]
    assert await listed(status="queued", type="echo") == [ids[0]]
    assert await listed(status="dead") == []


@pytest.mark.parametrize(
    ("query", "field"),
    [
        ("status=done", "status"),
        ("status=QUEUED", "status"),
        ("priority=urgent", "priority"),
        ("limit=0", "limit"),
        ("limit=51", "limit"),
        ("limit=abc", "limit"),
        ("limit=-1", "limit"),
        ("limit=" + "9" * 40, "limit"),
        ("cursor=abc", "cursor"),
        ("cursor=-5", "cursor"),
        ("cursor=" + "1" * 30, "cursor"),
        ("sort=seq", "sort"),
        ("status=queued&status=dead", "status"),
        ("type=", "type"),
    ],
)
async def test_bad_list_query_is_400(client: Client, query: str, field: str) -> None:
    resp = await client.get(f"/v1/tasks?{query}")
    assert resp.status == 400
    assert error_of(await resp.json())["field"] == field


# ---------------------------------------------------------------------------- membership
BAD_RAFT_ADDRESSES = [
    "x:\u0663",  # an Arabic-Indic digit: str.isdigit() and int() take it
    "x:\u00b2",  # a superscript two: isdigit() takes it, int() does not
    "x:" + "9" * 5000,  # past int()'s digit limit
    "x:0",
    "x:65536",
    "no-port",
    ":8081",
    "a b:8081",
    "h\u00e9te:8081",
    "-x:8081",
    "x" * 254 + ":8081",
    "x:08081",  # another member than x:8081 to Raft, the same node on the wire
    "::8081",  # a host of colons only
]


@pytest.mark.parametrize("addr", [*BAD_RAFT_ADDRESSES, "\ud800:1", 8081, None])
async def test_a_bad_member_address_is_422_naming_raft(
    client: Client, runtime: StubRuntime, addr: Any
) -> None:
    status, body = await post(client, "/v1/cluster/members", {"raft": addr})
    assert status == 422, body
    assert error_of(body)["field"] == "raft"
    assert runtime.membership == []


@pytest.mark.parametrize("addr", BAD_RAFT_ADDRESSES)
async def test_a_bad_member_address_in_the_path_is_422_naming_raft(
    client: Client, runtime: StubRuntime, addr: str
) -> None:
    resp = await client.delete(f"/v1/cluster/members/{urllib.parse.quote(addr, safe='')}")
    assert resp.status == 422, await resp.text()
    assert error_of(await resp.json())["field"] == "raft"
    assert runtime.membership == []


@pytest.mark.parametrize("addr", ["127.0.0.1:8081", "node-2.internal:65535", "::1:8083", "x:1"])
async def test_a_good_member_address_reaches_the_runtime(
    client: Client, runtime: StubRuntime, addr: str
) -> None:
    status, _ = await post(client, "/v1/cluster/members", {"raft": addr})
    resp = await client.delete(f"/v1/cluster/members/{urllib.parse.quote(addr, safe='')}")
    assert (status, resp.status) == (200, 200)
    assert runtime.membership == [("add", addr), ("remove", addr)]


# ---------------------------------------------------------------------------- cancel and retry


async def test_concurrent_retries_retry_once_and_say_so(
    client: Client, store: RedisStore, runtime: StubRuntime
) -> None:
    # All answered 200 when they found it cancelled before the first retried it (an API probe
    # saw 2 to 10 of 50), and each counted a retry in the metrics.
    _, task = await post(client, "/v1/tasks", {"type": "echo"})
    path = f"/v1/tasks/{task['id']}"
    assert (await client.delete(path)).status == 200
    notified = len(runtime.changed)
    answers = await asyncio.gather(*(client.post(f"{path}/retry") for _ in range(20)))
    statuses = sorted(resp.status for resp in answers)
    assert statuses == [200] + [409] * 19, statuses
    assert runtime.changed[notified:] == [[task["id"]]]  # the one retry
    text = await (await client.get("/metrics")).text()
    assert "dsched_tasks_retried_total" in text
    retried = [
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("dsched_tasks_retried_total{")
    ]
    assert sum(retried) == 1, retried


async def test_cancel_then_retry(client: Client, store: RedisStore, runtime: StubRuntime) -> None:
    _, task = await post(client, "/v1/tasks", {"type": "echo"})
    path = f"/v1/tasks/{task['id']}"
    resp = await client.delete(path)
    assert resp.status == 200
    assert (await resp.json())["status"] == "cancelled"
    # Repeating a DELETE (say, after a lost answer) is not a conflict.
    resp = await client.delete(path)
    assert resp.status == 200
    resp = await client.post(path + "/retry")
    assert resp.status == 200
    assert (await resp.json())["status"] == "queued"
    resp = await client.post(path + "/retry")
    assert resp.status == 409
    body = await resp.json()
    assert error_of(body)["code"] == "conflict"
    assert body["task"]["status"] == "queued"
    assert runtime.changed[-1] == [task["id"]]


async def test_cancel_and_retry_of_unknown_task_is_404(client: Client) -> None:
    assert (await client.delete("/v1/tasks/nope")).status == 404
    assert (await client.post("/v1/tasks/nope/retry")).status == 404


async def test_cancel_of_a_finished_task_is_409(client: Client, store: RedisStore) -> None:
    _, task = await post(client, "/v1/tasks", {"type": "echo"})
    await finish(store, task["id"], Status.SUCCEEDED)
    resp = await client.delete(f"/v1/tasks/{task['id']}")
    assert resp.status == 409
    body = await resp.json()
    assert error_of(body)["field"] == "status"
    assert body["task"]["status"] == "succeeded"
    assert body["task"]["result"] == {"ok": True}
    assert (await client.post(f"/v1/tasks/{task['id']}/retry")).status == 409


async def test_dead_task_retries(client: Client, store: RedisStore) -> None:
    _, task = await post(client, "/v1/tasks", {"type": "echo", "max_retries": 0})
    await finish(store, task["id"], Status.DEAD)
    resp = await client.post(f"/v1/tasks/{task['id']}/retry")
    assert resp.status == 200
    retried = await resp.json()
    assert (retried["status"], retried["failures"], retried["error"]) == ("queued", 0, None)


async def test_running_task_cancels(client: Client, store: RedisStore) -> None:
    _, task = await post(client, "/v1/tasks", {"type": "echo"})
    now = int(time.time() * 1000)
    await store.raise_epoch(1)
    await store.apply([Lease(1, task["id"], "n1", now + 60_000, now)])
    assert (await client.get(f"/v1/tasks/{task['id']}")).status == 200
    resp = await client.delete(f"/v1/tasks/{task['id']}")
    assert (resp.status, (await resp.json())["status"]) == (200, "cancelled")


# ---------------------------------------------------------------------------- operations


async def test_queues(client: Client) -> None:
    tasks = [{"type": "echo", "priority": p} for p in ["high", "high", "low"]]
    await post(client, "/v1/tasks/batch", {"tasks": [*tasks, {"type": "echo", "delay_s": 60}]})
    resp = await client.get("/v1/queues")
    counts = await resp.json()
    assert counts["queued"] == {"high": 2, "medium": 0, "low": 1}
    assert (counts["pending"], counts["running"], counts["failed"], counts["dead"]) == (1, 0, 0, 0)


async def test_health_ready_cluster(client: Client, runtime: StubRuntime) -> None:
    resp = await client.get("/healthz")
    assert (resp.status, await resp.json()) == (200, {"status": "ok"})
    assert (await client.head("/healthz")).status == 200
    resp = await client.get("/readyz")
    assert resp.status == 200 and (await resp.json())["ready"] is True
    runtime.ready = False
    resp = await client.get("/readyz")
    assert resp.status == 503
    assert await resp.json() == {"ready": False, "checks": {"redis": True, "leader_known": False}}
    resp = await client.get("/v1/cluster")
    assert (await resp.json())["leader"] == "node-test"


async def test_metrics_text(client: Client) -> None:
    await post(client, "/v1/tasks/batch", {"tasks": [{"type": "echo", "priority": "high"}] * 2})
    await client.get("/v1/tasks/" + "0" * 32)
    app = client.app
    assert app is not None
    app[METRICS].finished("echo", "high", "dead", 0.5)
    app[METRICS].fenced(2)
    resp = await client.get("/metrics")
    assert resp.status == 200
    assert resp.headers["Content-Type"].startswith("text/plain")
    text = await resp.text()
    assert 'dsched_tasks_submitted_total{priority="high",type="echo"} 2.0' in text
    assert 'dsched_tasks_dead_total{priority="high",type="echo"} 1.0' in text
    assert 'dsched_tasks_failed_total{priority="high",type="echo"} 1.0' in text
    assert "dsched_fenced_writes_total 2.0" in text
    for name in ["tasks_started_total", "tasks_succeeded_total", "tasks_retried_total"]:
        assert f"# TYPE dsched_{name} counter" in text
    assert 'dsched_queue_depth{priority="low"} 0.0' in text
    assert "dsched_workers_busy 0.0" in text
    # Route templates, not raw ids, label the latency histogram.
    assert 'route="/v1/tasks/{id}",status="404"' in text
    assert "0" * 32 not in text


# ---------------------------------------------------------------------------- openapi


async def test_openapi_lists_every_route_and_the_accepted_fields(
    client: Client, store: RedisStore
) -> None:
    resp = await client.get("/openapi.json")
    assert resp.status == 200
    doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    assert doc["info"]["title"] and doc["info"]["version"]
    app = client.app
    assert app is not None
    served = {
        (route.method.lower(), route.resource.canonical)
        for route in app.router.routes()
        if route.method != "HEAD" and route.resource is not None
    }
    documented = {
        (method, path)
        for path, item in doc["paths"].items()
        for method in item
        if method in ("get", "post", "put", "delete", "patch")
    }
    assert documented == served
    assert {(m.lower(), p) for m, p, _ in ROUTES} == served
    for item in doc["paths"].values():
        for method, op in item.items():
            if method != "parameters":
                assert op["responses"], op

    schemas = doc["components"]["schemas"]
    submission = schemas["TaskSubmission"]
    assert set(submission["properties"]) == set(FIELDS_BY_NAME)
    assert submission["additionalProperties"] is False
    assert "echo" in submission["properties"]["type"]["enum"]
    assert submission["properties"]["payload"]["description"]

    # The task schema lists exactly what a real answer carries.
    _, task = await post(client, "/v1/tasks", {"type": "echo"})
    assert set(schemas["Task"]["properties"]) == set(task)
    assert set(schemas["Task"]["required"]) == set(task)

    # Every $ref points at a schema that exists.
    refs = set()

    def walk(node: Any) -> None:
        if isinstance(node, dict):
            for key, value in node.items():
                if key == "$ref":
                    refs.add(value)
                walk(value)
        elif isinstance(node, list):
            for value in node:
                walk(value)

    walk(doc)
    assert refs and all(r.removeprefix("#/components/schemas/") in schemas for r in refs)


def test_queued_tasks_max_is_a_flag_and_an_environment_variable(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def limits(*argv: str) -> Limits:
        parser = argparse.ArgumentParser()
        add_node_arguments(parser)
        return config_from_args(parser.parse_args(list(argv))).limits

    assert limits().queued_tasks_max == Limits().queued_tasks_max
    assert limits("--queued-tasks-max", "7").queued_tasks_max == 7
    monkeypatch.setenv("DSCHED_QUEUED_TASKS_MAX", "9")
    assert limits().queued_tasks_max == 9
    with pytest.raises(SystemExit):
        limits("--queued-tasks-max", "-1")

"""The HTTP API: routes, handlers and the middleware that gives every error one JSON shape.

Handlers are thin: parse and validate the whole request (node/validation.py), make one store
call, serialize (node/serialize.py). A submission is answered 201 only after the store
acknowledged it, and nothing is written unless every task of the request is valid.

Errors: ``{"error": {"code": ..., "field": ..., "message": ...}}`` with a 4xx status naming the
offending input, 503 with Retry-After when the node cannot take work or the store is away, and a
logged 500 (never a crash, never a traceback to the client) for anything unexpected.
"""

from __future__ import annotations

import asyncio
import logging
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable
from typing import Any

from aiohttp import http_exceptions, web, web_protocol
from aiohttp.compression_utils import HAS_BROTLI, HAS_ZSTD

from core.limits import Limits
from core.priority import PRIORITY_LABELS, Priority
from core.store_model import IdempotencyConflict, QueueFull, SubmitError, TaskRecord
from core.task import Status
from node import tasks as task_registry
from node.config import raft_address_error
from node.keys import CONFIG, METRICS, RUNTIME, STORE
from node.openapi import build_openapi
from node.rows import ID, PRIORITY, TYPE, SubmitRow, created_record
from node.serialize import CreatedJson, dumps, task_json
from node.store import StoreUnavailable
from node.validation import (
    Intake,
    RequestError,
    parse_json,
    validate_batch_rows,
    validate_task_row,
)

log = logging.getLogger("dsched.api")

# Seconds a client should wait before trying again after a 503: a store failover or a node
# restart takes about this long, and a shorter hint only adds load to a struggling cluster.
RETRY_AFTER_S = 1
PAGE_TASKS_DEFAULT = 100
# A cursor is a submission sequence number; 20 digits hold any int64.
CURSOR_DIGITS_MAX = 20
LIST_PARAMS = ("status", "type", "priority", "cursor", "limit")
# A request's whole body must arrive within this (a full 16 MiB batch at about 2 Mbit/s): a
# client that stalls mid-body does not hold its connection and buffer for ever.
BODY_READ_S_MAX = 60.0
# Content-Encodings of a request body that aiohttp decodes (brotli's and zstd's when their
# libraries are installed); it passes any other through undecoded.
BODY_ENCODINGS = frozenset(
    {"identity", "gzip", "deflate"}
    | ({"br"} if HAS_BROTLI else set())
    | ({"zstd"} if HAS_ZSTD else set())
)
# The status a request whose client went away mid-body is counted under (nginx's): not the
# node's error, so neither a 500 nor a traceback.
CLIENT_CLOSED = 499

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
JSON_TYPE = "application/json"
# Task ids: uuid4 hex, made from one os.urandom call per this many (uuid.uuid4() per task was a
# syscall and a UUID object each, a tenth of a batch's validation).
ID_BLOCK = 1024

# Status codes of errors aiohttp raises itself (router, body size), mapped to our error codes.
_HTTP_CODES = {
    400: "malformed",
    404: "not_found",
    405: "method_not_allowed",
    413: "too_large",
    415: "unsupported_media_type",
}


def now_ms() -> int:
    # Wall-clock milliseconds, the time base node.runtime shares across nodes (run_at, created).
    return time.time_ns() // 1_000_000


def _limits(request: web.Request) -> Limits:
    return request.app[CONFIG].limits


def _json_response(data: Any, status: int = 200, **headers: str) -> web.Response:
    return _body_response(dumps(data), status, **headers)


def _body_response(body: bytes, status: int, **headers: str) -> web.Response:
    """A response of JSON text already encoded."""
    return web.Response(body=body, status=status, headers=headers or None, content_type=JSON_TYPE)


def _error_response(exc: RequestError, headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(
        body=dumps(exc.body()), status=exc.status, headers=headers, content_type=JSON_TYPE
    )


def _unavailable(message: str) -> RequestError:
    return RequestError(None, message, 503, "unavailable")


# ---------------------------------------------------------------------------- middleware


@web.middleware
async def error_middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
    """One JSON error envelope for every failure, and the latency histogram of every request."""
    started = time.perf_counter()
    response: web.StreamResponse
    try:
        response = await handler(request)
    except RequestError as exc:
        headers = {"Retry-After": str(RETRY_AFTER_S)} if exc.status == 503 else None
        response = _error_response(exc, headers)
        if exc.status in (408, CLIENT_CLOSED) or request.content.exception() is not None:
            response.force_close()  # the body was cut or broken: the stream is lost
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        code = _HTTP_CODES.get(exc.status, "http_error")
        message = exc.text if exc.text and not exc.text.startswith(f"{exc.status}:") else None
        error = RequestError(None, message or exc.reason, exc.status, code)
        # Keep what the status depends on (Allow on 405); drop the text/plain body headers.
        kept = {k: v for k, v in exc.headers.items() if k in ("Allow", "Retry-After")}
        response = _error_response(error, kept)
    except StoreUnavailable as exc:
        log.warning("store unavailable: %s %s: %s", request.method, request.path, exc)
        response = _error_response(
            # A write cut off mid-way may have landed: only an idempotency key makes a resend
            # of a submission safe, so the message says so.
            _unavailable(
                "the store is unavailable; try again (resend submissions with the same "
                "idempotency_key so that none is created twice)"
            ),
            {"Retry-After": str(RETRY_AFTER_S)},
        )
    except Exception:
        # Logged with the traceback here; the client gets a plain 500, the node keeps serving.
        log.exception("unexpected error in %s %s", request.method, request.path)
        response = _error_response(
            RequestError(None, "internal error; see the node's log", 500, "internal")
        )
    resource = request.match_info.route.resource
    # The route template, never the raw path: ids in label values would grow without bound.
    route = resource.canonical if resource is not None else "unmatched"
    request.app[METRICS].observe_http(
        request.method, route, response.status, time.perf_counter() - started
    )
    return response


# ---------------------------------------------------------------------------- request helpers


async def read_json(request: web.Request) -> Any:
    """The body as JSON, refused before parsing when it is too large or not JSON."""
    limit = _limits(request).request_bytes_max
    if request.content_type != "application/json":
        raise RequestError(
            None,
            f"Content-Type must be application/json, not {request.content_type}",
            415,
            "unsupported_media_type",
        )
    charset = request.charset
    if charset is not None and charset.lower() not in ("utf-8", "utf8"):
        raise RequestError(
            None, f"JSON is UTF-8; charset {charset} is not", 415, "unsupported_media_type"
        )
    encoding = request.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding not in BODY_ENCODINGS:
        # aiohttp passes a body of an encoding it does not know (or of several) through as is.
        raise RequestError(
            "Content-Encoding",
            f"must be one of {', '.join(sorted(BODY_ENCODINGS))}, not {encoding!r}",
            415,
            "unsupported_media_type",
        )
    # The declared length is refused up front, before a byte is read; a body without one (or
    # lying about it) is still cut off at client_max_size by aiohttp as it reads.
    if request.content_length is not None and request.content_length > limit:
        raise RequestError(None, f"the body is over {limit} bytes", 413, "too_large")
    try:
        async with asyncio.timeout(BODY_READ_S_MAX):
            body = await request.read()
    except web.HTTPRequestEntityTooLarge:
        raise RequestError(None, f"the body is over {limit} bytes", 413, "too_large") from None
    except TimeoutError:
        raise RequestError(
            None, f"the body did not arrive within {BODY_READ_S_MAX:g} s", 408, "timeout"
        ) from None
    except web_protocol.RequestPayloadError as exc:  # aiohttp's, caused by the parser's error
        # The body stays failed: marked at its end, aiohttp does not read it again after the
        # answer (to keep the connection) only to log the same error as unhandled.
        request.content.feed_eof()
        if isinstance(exc.__cause__, http_exceptions.ContentEncodingError):
            encoding = request.headers.get("Content-Encoding", "")
            raise RequestError(
                "Content-Encoding", f"the body is not valid {encoding}", 400, "malformed"
            ) from None
        raise RequestError(None, f"the body is malformed ({exc})", 400, "malformed") from None
    except ConnectionResetError:
        raise RequestError(
            None, "the client closed the connection mid-body", CLIENT_CLOSED, "client_closed"
        ) from None
    return parse_json(body)


def uuid4_hex_many(n: int) -> list[str]:
    """``n`` random ids in uuid4's hex form (version 4, RFC 4122 variant), from one urandom."""
    raw = bytearray(os.urandom(16 * n))
    raw[6::16] = bytes(b & 0x0F | 0x40 for b in raw[6::16])
    raw[8::16] = bytes(b & 0x3F | 0x80 for b in raw[8::16])
    text = raw.hex()
    return [text[i : i + 32] for i in range(0, 32 * n, 32)]


_id_pool: list[str] = []
# A forked child must not hand out its parent's ids.
os.register_at_fork(after_in_child=_id_pool.clear)


def new_id() -> str:
    if not _id_pool:
        _id_pool.extend(uuid4_hex_many(ID_BLOCK))
    return _id_pool.pop()


def _intake(request: web.Request) -> Intake:
    return Intake(
        limits=_limits(request),
        task_types=frozenset(task_registry.registered()),
        now_ms=now_ms(),
        new_id=new_id,
        new_ids=uuid4_hex_many,
    )


def _check_accepting(request: web.Request) -> None:
    if not request.app[RUNTIME].accepting():
        raise _unavailable("this node is shutting down; send new work to another node")


def _task_id(request: web.Request) -> str:
    return request.match_info["id"]


def _not_found(task_id: str) -> RequestError:
    return RequestError("id", f"no task {task_id!r}", 404, "not_found")


def _conflict(record: TaskRecord, message: str) -> web.Response:
    error = RequestError("status", message, 409, "conflict")
    # The task comes along so that the client sees why without a second request.
    return _json_response({**error.body(), "task": task_json(record)}, 409)


def _refusal(exc: SubmitError, rows: list[SubmitRow], batch: bool) -> RequestError:
    """The store's refusal of a submission (of ``rows``) as the API's error: the field inside
    a batch is named with its index (``tasks[3].depends_on``)."""
    field = exc.field
    if batch and field is not None and exc.index is not None:
        field = f"tasks[{exc.index}].{field}"
    if isinstance(exc, IdempotencyConflict) and batch:
        # The key stands for an earlier task of this very batch: that task was never written
        # (the batch is refused whole), so its id would name nothing; name the item instead.
        earlier = next((i for i, row in enumerate(rows) if row[ID] == exc.task_id), None)
        if earlier is not None:
            return RequestError(
                field,
                f"idempotency key {exc.key!r} is also given to tasks[{earlier}] of this batch, "
                "with another definition (type, payload, priority, retries, timeout, backoff "
                "or depends_on); nothing of the batch was created",
                409,
                "idempotency_conflict",
                extra={"conflicts_with": f"tasks[{earlier}]"},
            )
    if isinstance(exc, QueueFull):
        # 503 with Retry-After (the middleware adds it): the same request may pass later.
        return RequestError(
            None, str(exc), 503, "queue_full", extra={"queued_tasks_max": exc.limit}
        )
    if isinstance(exc, IdempotencyConflict):
        return RequestError(
            field, str(exc), 409, "idempotency_conflict", extra={"task_id": exc.task_id}
        )
    return RequestError(field, str(exc))


def _count_submitted(request: web.Request, rows: list[SubmitRow]) -> None:
    metrics = request.app[METRICS]
    by_label = Counter((row[TYPE], row[PRIORITY]) for row in rows)
    for (type_name, priority), n in sorted(by_label.items()):
        metrics.submitted(type_name, PRIORITY_LABELS[priority], n)


# ---------------------------------------------------------------------------- handlers


async def submit_task(request: web.Request) -> web.Response:
    _check_accepting(request)
    row = validate_task_row(await read_json(request), _intake(request))
    now = now_ms()
    try:
        [answer] = await request.app[STORE].submit_rows(
            [row], now, _limits(request).queued_tasks_max
        )
    except SubmitError as exc:
        raise _refusal(exc, [row], batch=False) from None
    if isinstance(answer, TaskRecord):
        # The idempotency key matched: the first task, unchanged, and nothing new to wake for.
        return _json_response(task_json(answer), 200)
    seq, status = answer
    request.app[METRICS].submitted(row[TYPE], PRIORITY_LABELS[row[PRIORITY]], 1)
    request.app[RUNTIME].notify_changed([created_record(row, seq, status, now)])
    body = CreatedJson(now)(row, seq, status).encode()
    return _body_response(body, 201, Location=f"/v1/tasks/{row[ID]}")


async def submit_batch(request: web.Request) -> web.Response:
    _check_accepting(request)
    rows = validate_batch_rows(await read_json(request), _intake(request))
    now = now_ms()
    try:
        answers = await request.app[STORE].submit_rows(rows, now, _limits(request).queued_tasks_max)
    except SubmitError as exc:
        raise _refusal(exc, rows, batch=True) from None
    render = CreatedJson(now)
    tasks: list[str] = []
    created: list[SubmitRow] = []
    records: list[TaskRecord] = []
    for row, answer in zip(rows, answers, strict=True):
        if isinstance(answer, TaskRecord):
            tasks.append(dumps(task_json(answer)).decode())
        else:
            seq, status = answer
            created.append(row)
            records.append(created_record(row, seq, status, now))
            tasks.append(render(row, seq, status))
    if created:
        _count_submitted(request, created)
        request.app[RUNTIME].notify_changed(records)
    body = ('{"tasks":[' + ",".join(tasks) + "]}").encode()
    return _body_response(body, 201 if created else 200)


async def get_task(request: web.Request) -> web.Response:
    task_id = _task_id(request)
    record = await request.app[STORE].get(task_id)
    if record is None:
        raise _not_found(task_id)
    return _json_response(task_json(record))


def _one_param(request: web.Request, name: str) -> str | None:
    values = request.query.getall(name, [])
    if len(values) > 1:
        raise RequestError(name, "is given more than once", 400)
    return values[0] if values else None


def _list_query(request: web.Request) -> dict[str, Any]:
    """Query parameters of GET /v1/tasks -> the store's list_tasks arguments, strictly."""
    for name in request.query:
        if name not in LIST_PARAMS:
            raise RequestError(
                name, f"unknown query parameter; accepted: {', '.join(LIST_PARAMS)}", 400
            )
    limits = _limits(request)
    args: dict[str, Any] = {"after_seq": 0, "limit": PAGE_TASKS_DEFAULT}
    status = _one_param(request, "status")
    if status is not None:
        try:
            args["status"] = Status(status)
        except ValueError:
            allowed = [s.value for s in Status]
            raise RequestError(
                "status",
                f"unknown status {status!r}; one of {', '.join(allowed)}",
                400,
                extra={"allowed": allowed},
            ) from None
    type_name = _one_param(request, "type")
    if type_name is not None:
        if not type_name or len(type_name) > limits.task_type_chars_max:
            raise RequestError("type", f"must be 1 to {limits.task_type_chars_max} characters", 400)
        args["type"] = type_name
    priority = _one_param(request, "priority")
    if priority is not None:
        labels = [p.label for p in Priority]
        if priority not in labels:
            raise RequestError(
                "priority",
                f"unknown priority {priority!r}; one of {', '.join(labels)}",
                400,
                extra={"allowed": labels},
            )
        args["priority"] = Priority.parse(priority)
    cursor = _one_param(request, "cursor")
    if cursor is not None:
        # Only what this API handed out: a decimal sequence number.
        if not (cursor.isascii() and cursor.isdigit()) or len(cursor) > CURSOR_DIGITS_MAX:
            raise RequestError("cursor", "is not a cursor this API returned", 400)
        args["after_seq"] = int(cursor)
    limit = _one_param(request, "limit")
    if limit is not None:
        if not (limit.isascii() and limit.isdigit()) or not (
            1 <= int(limit[:CURSOR_DIGITS_MAX]) <= limits.page_tasks_max
        ):
            raise RequestError(
                "limit", f"must be an integer from 1 to {limits.page_tasks_max}", 400
            )
        args["limit"] = int(limit)
    return args


async def list_tasks(request: web.Request) -> web.Response:
    args = _list_query(request)
    records, next_cursor = await request.app[STORE].list_tasks(**args)
    return _json_response(
        {
            "tasks": [task_json(r) for r in records],
            "next_cursor": None if next_cursor is None else str(next_cursor),
        }
    )


async def cancel_task(request: web.Request) -> web.Response:
    task_id = _task_id(request)
    record = await request.app[STORE].cancel(task_id, now_ms())
    if record is None:
        raise _not_found(task_id)
    if record.status is Status.CANCELLED:
        # Also when it was cancelled before: DELETE is idempotent, so a client repeating it
        # after a lost answer hears what it wanted, not a conflict.
        request.app[RUNTIME].notify_changed([record])
        return _json_response(task_json(record))
    return _conflict(record, f"the task is {record.status.value}; it cannot be cancelled")


async def retry_task(request: web.Request) -> web.Response:
    _check_accepting(request)
    task_id = _task_id(request)
    try:
        record, retried = await request.app[STORE].retry(
            task_id, now_ms(), _limits(request).queued_tasks_max
        )
    except QueueFull as exc:
        # As a submission of one task: 503 with Retry-After, the same request may pass later.
        raise _refusal(exc, [], batch=False) from None
    if record is None:
        raise _not_found(task_id)
    if not retried:  # not dead or cancelled, or a concurrent retry got there first
        return _conflict(
            record, f"the task is {record.status.value}; only dead or cancelled tasks retry"
        )
    request.app[METRICS].retried(record.type, Priority(record.priority).label)
    request.app[RUNTIME].notify_changed([record])
    return _json_response(task_json(record))


async def queues(request: web.Request) -> web.Response:
    counts = await request.app[STORE].counts()
    return _json_response(counts)


async def cluster(request: web.Request) -> web.Response:
    return _json_response(request.app[RUNTIME].cluster())


def _raft_addr(value: Any) -> str:
    why = raft_address_error(value)
    if why is not None:
        raise RequestError("raft", why)
    return str(value)


async def add_member(request: web.Request) -> web.Response:
    body = await read_json(request)
    if not isinstance(body, dict) or set(body) != {"raft"}:
        raise RequestError("raft", 'expected {"raft": "host:port"}')
    status, answer = await request.app[RUNTIME].change_membership("add", _raft_addr(body["raft"]))
    return _membership_response(answer, status)


async def remove_member(request: web.Request) -> web.Response:
    addr = _raft_addr(request.match_info["raft"])
    status, answer = await request.app[RUNTIME].change_membership("remove", addr)
    return _membership_response(answer, status)


def _membership_response(answer: dict[str, Any], status: int) -> web.Response:
    if status == 503:  # the same request may pass later
        return _json_response(answer, status, **{"Retry-After": str(RETRY_AFTER_S)})
    return _json_response(answer, status)


async def healthz(request: web.Request) -> web.Response:
    # Alive only: readiness (store, leader, dispatch) is /readyz, so that a Redis outage does
    # not get every node restarted by its supervisor.
    return _json_response({"status": "ok"})


async def readyz(request: web.Request) -> web.Response:
    ready, checks = request.app[RUNTIME].readiness()
    return _json_response({"ready": ready, "checks": checks}, 200 if ready else 503)


async def metrics(request: web.Request) -> web.Response:
    body, content_type = request.app[METRICS].render()
    return web.Response(body=body, headers={"Content-Type": content_type})


async def openapi(request: web.Request) -> web.Response:
    return _json_response(build_openapi(_limits(request), sorted(task_registry.registered())))


ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/v1/tasks", submit_task),
    ("GET", "/v1/tasks", list_tasks),
    ("POST", "/v1/tasks/batch", submit_batch),
    ("GET", "/v1/tasks/{id}", get_task),
    ("DELETE", "/v1/tasks/{id}", cancel_task),
    ("POST", "/v1/tasks/{id}/retry", retry_task),
    ("GET", "/v1/queues", queues),
    ("GET", "/v1/cluster", cluster),
    ("POST", "/v1/cluster/members", add_member),
    ("DELETE", "/v1/cluster/members/{raft}", remove_member),
    ("GET", "/healthz", healthz),
    ("GET", "/readyz", readyz),
    ("GET", "/metrics", metrics),
    ("GET", "/openapi.json", openapi),
)


def _protocol_error(status: int, exc: BaseException | None) -> RequestError:
    """A request aiohttp could not parse, as the API's error: which part was at fault."""
    if status >= 500:
        return RequestError(None, "internal error; see the node's log", status, "internal")
    field = None
    if isinstance(exc, http_exceptions.BadHttpMethod):
        field = "method"
    elif isinstance(exc, http_exceptions.LineTooLong):
        line = exc.args[0] if exc.args else b""
        field = "url" if isinstance(line, bytes | bytearray) and line[:1] == b"/" else "headers"
    elif isinstance(exc, http_exceptions.InvalidHeader):
        field = "headers"
    message = getattr(exc, "message", None) or str(exc or "") or "malformed HTTP request"
    return RequestError(field, message, status, _HTTP_CODES.get(status, "malformed"))


_protocol_errors_json = False


def _json_protocol_errors() -> None:
    """aiohttp answers a request it cannot parse (a request line or a header over its limits,
    bad framing, a method it does not know) from its protocol layer, before any middleware,
    in text/plain; clients of the API get its JSON error envelope for those too. aiohttp has
    no hook for that answer, so its handler class is wrapped, once per process."""
    global _protocol_errors_json
    if _protocol_errors_json:
        return
    _protocol_errors_json = True
    plain = web_protocol.RequestHandler.handle_error

    def handle_error(
        self: web_protocol.RequestHandler,
        request: Any,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        if status >= 500:
            plain(self, request, status, exc, message)  # logs the traceback; refuses if sent
        else:
            # A client's malformed request is not the node's error: one line, no traceback
            # (aiohttp logs each at ERROR, which scanners of an open port would flood).
            if request.writer.output_size > 0:
                raise ConnectionError("a response was sent already: cannot send the error")
            log.info("refused a malformed HTTP request from %s: %s", request.remote, exc)
        response = _error_response(_protocol_error(status, exc))
        response.force_close()  # as aiohttp's: the stream cannot be trusted past this
        return response

    web_protocol.RequestHandler.handle_error = handle_error  # type: ignore[method-assign]


def setup_routes(app: web.Application) -> None:
    """Add every route and the error middleware. Needs CONFIG and METRICS set on the app, and
    STORE and RUNTIME by the time requests arrive (create_app's cleanup contexts set them)."""
    _json_protocol_errors()
    app.middlewares.append(error_middleware)
    for method, path, handler in ROUTES:
        if method == "GET":
            # GET routes answer HEAD too: load balancers probe /healthz that way.
            app.router.add_get(path, handler)
        else:
            app.router.add_route(method, path, handler)

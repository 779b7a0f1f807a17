"""Python clients of the dsched HTTP API: :class:`Client` (blocking, stdlib urllib only) and
:class:`AsyncClient` (aiohttp), with the same methods and the same errors.

An error answer raises :class:`ApiError` with the status and the field the server named; a node
that cannot be reached raises :class:`ConnectionError` (an OSError), and ``wait`` past its
deadline raises :class:`TimeoutError`.
"""

from __future__ import annotations

import asyncio
import builtins
import json
import time
import urllib.error
import urllib.parse
import urllib.request
from typing import Any
from urllib.parse import quote, urlencode

import aiohttp

DEFAULT_URL = "http://127.0.0.1:8080"
TERMINAL_STATUSES = frozenset({"succeeded", "dead", "cancelled"})
# A leader asked to remove itself hands leadership over first: the request is made again, this
# often, for at most this long (an election takes a few hundred milliseconds).
MEMBER_RETRY_S = 0.5
MEMBER_HANDOVER_WAIT_S = 15.0

Json = dict[str, Any]


class ApiError(Exception):
    """The server refused a request: HTTP status, the offending field (or None), and why."""

    def __init__(
        self, status: int, field: str | None, message: str, code: str = "", body: Any = None
    ) -> None:
        where = f" ({field})" if field else ""
        super().__init__(f"HTTP {status}{where}: {message}")
        self.status = status
        self.field = field
        self.message = message
        self.code = code
        self.body = body


def checked_base_url(url: str) -> str:
    """``url`` without its trailing slash, once it is known to be a node's base URL: http or
    https, a host, a port (if any) from 1 to 65535, no query. ValueError (saying why) else, so
    that a typo is reported as such, not as whatever urllib makes of it on the first request."""
    example = f"an http(s) URL such as {DEFAULT_URL}"
    try:
        parts = urllib.parse.urlsplit(url)
        port = parts.port
    except ValueError as exc:  # a port of letters or out of range, a broken [IPv6] host
        raise ValueError(f"{url!r} is not {example}: {exc}") from None
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise ValueError(f"{url!r} is not {example}")
    if port == 0 or parts.query or parts.fragment:
        raise ValueError(f"{url!r} is not {example} (a port from 1 to 65535, no query)")
    return url.rstrip("/")


def _error_from(status: int, raw: bytes) -> ApiError:
    try:
        body = json.loads(raw)
        error = body["error"]
        return ApiError(
            status, error.get("field"), str(error.get("message", "")), error.get("code", ""), body
        )
    except (ValueError, KeyError, TypeError, AttributeError):
        # Not our envelope (a proxy in between, say): show what came back, briefly.
        text = raw.decode("utf-8", "replace").strip()[:200]
        return ApiError(status, None, text or f"HTTP {status}")


def _submission(type: str, payload: Any, priority: str, fields: dict[str, Any]) -> Json:
    # None means "not given": the server refuses explicit nulls (payload excepted).
    body: Json = {"type": type, "payload": payload, "priority": priority}
    body.update({k: v for k, v in fields.items() if v is not None})
    return body


def _task_path(task_id: str, suffix: str = "") -> str:
    return f"/v1/tasks/{quote(task_id, safe='')}{suffix}"


def _list_path(
    status: str | None, type: str | None, priority: str | None, cursor: str | None, limit: int
) -> str:
    query = {"status": status, "type": type, "priority": priority, "cursor": cursor}
    params = {k: v for k, v in query.items() if v is not None}
    params["limit"] = str(limit)
    return f"/v1/tasks?{urlencode(params)}"


class Client:
    """Blocking client. ``timeout_s`` bounds each HTTP request, not ``wait``. A ``base_url``
    that is no http(s) URL is a ValueError here."""

    def __init__(self, base_url: str = DEFAULT_URL, timeout_s: float = 10) -> None:
        self.base_url = checked_base_url(base_url)
        self.timeout_s = timeout_s
        # No proxies from the environment, as aiohttp's default: nodes are reached directly,
        # and an http_proxy meant for the internet must not swallow 127.0.0.1.
        self._opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))

    def _request(self, method: str, path: str, body: Any = None) -> Any:
        data = None if body is None else json.dumps(body).encode("utf-8")
        request = urllib.request.Request(self.base_url + path, data=data, method=method)
        request.add_header("Accept", "application/json")
        if data is not None:
            request.add_header("Content-Type", "application/json")
        try:
            with self._opener.open(request, timeout=self.timeout_s) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            with exc:
                raise _error_from(exc.code, exc.read()) from None
        except urllib.error.URLError as exc:
            raise ConnectionError(f"cannot reach {self.base_url}: {exc.reason}") from None

    def submit(
        self, type: str, payload: Any = None, priority: str = "medium", **fields: Any
    ) -> Json:
        """Submit one task; answers the task (the first one if the idempotency key matched)."""
        task: Json = self._request(
            "POST", "/v1/tasks", _submission(type, payload, priority, fields)
        )
        return task

    def submit_many(self, tasks: builtins.list[Json]) -> builtins.list[Json]:
        """Submit tasks (submission dicts) as one batch: all are created or none."""
        answer = self._request("POST", "/v1/tasks/batch", {"tasks": tasks})
        created: builtins.list[Json] = answer["tasks"]
        return created

    def get(self, task_id: str) -> Json:
        task: Json = self._request("GET", _task_path(task_id))
        return task

    def wait(self, task_id: str, timeout_s: float, poll_s: float = 0.05) -> Json:
        """Poll until the task is succeeded, dead or cancelled; TimeoutError past timeout_s."""
        deadline = time.monotonic() + timeout_s
        while True:
            task = self.get(task_id)
            if task["status"] in TERMINAL_STATUSES:
                return task
            left = deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f"task {task_id} still {task['status']} after {timeout_s:g} s")
            time.sleep(min(poll_s, left))

    def cancel(self, task_id: str) -> Json:
        task: Json = self._request("DELETE", _task_path(task_id))
        return task

    def retry(self, task_id: str) -> Json:
        task: Json = self._request("POST", _task_path(task_id, "/retry"))
        return task

    def list(
        self,
        status: str | None = None,
        type: str | None = None,
        priority: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Json:
        """One page: ``{"tasks": [...], "next_cursor": str | None}``."""
        page: Json = self._request("GET", _list_path(status, type, priority, cursor, limit))
        return page

    def queues(self) -> Json:
        counts: Json = self._request("GET", "/v1/queues")
        return counts

    def cluster(self) -> Json:
        info: Json = self._request("GET", "/v1/cluster")
        return info

    def change_member(self, action: str, raft_addr: str) -> Json:
        """Add or remove a Raft member. Only the leader does it: a 421 names the leader's HTTP
        address, and the request goes there once."""
        quoted = urllib.parse.quote(raft_addr, safe="")
        method, path, body = (
            ("POST", "/v1/cluster/members", {"raft": raft_addr})
            if action == "add"
            else ("DELETE", f"/v1/cluster/members/{quoted}", None)
        )
        # A leader asked to remove itself hands over first (503 leader_handing_over): ask
        # again until the new leader (a 421 names it) does it, for at most this long.
        deadline = time.monotonic() + MEMBER_HANDOVER_WAIT_S
        target = self
        while True:
            try:
                answer: Json = target._request(method, path, body)
                return answer
            except ApiError as exc:
                error = (exc.body or {}).get("error", {})
                leader_http = error.get("leader_http")
                if exc.status == 421 and leader_http and target is self:
                    try:
                        target = Client(f"http://{leader_http}", self.timeout_s)
                    except ValueError:  # not an address to follow: the refusal stands
                        raise exc from None
                    continue
                handing_over = exc.status == 503 and error.get("code") == "leader_handing_over"
                if not handing_over or time.monotonic() >= deadline:
                    raise
                time.sleep(MEMBER_RETRY_S)
                target = self


class AsyncClient:
    """aiohttp client. Without a ``session`` it opens its own; ``close()`` (or ``async with``)
    closes only a session it opened. A ``base_url`` that is no http(s) URL is a ValueError."""

    def __init__(
        self,
        base_url: str = DEFAULT_URL,
        session: aiohttp.ClientSession | None = None,
        timeout_s: float = 10,
    ) -> None:
        self.base_url = checked_base_url(base_url)
        self.timeout_s = timeout_s
        self._session = session
        self._owns_session = session is None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    async def close(self) -> None:
        if self._owns_session and self._session is not None:
            await self._session.close()
            self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None:
            # Created lazily: a ClientSession must be made inside a running event loop.
            self._session = aiohttp.ClientSession()
        return self._session

    async def _request(self, method: str, path: str, body: Any = None) -> Any:
        session = self._get_session()
        data = None if body is None else json.dumps(body).encode("utf-8")
        headers = {"Accept": "application/json"}
        if data is not None:
            headers["Content-Type"] = "application/json"
        timeout = aiohttp.ClientTimeout(total=self.timeout_s)
        try:
            async with session.request(
                method, self.base_url + path, data=data, headers=headers, timeout=timeout
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise _error_from(response.status, raw)
                return json.loads(raw)
        except aiohttp.ClientConnectionError as exc:
            raise ConnectionError(f"cannot reach {self.base_url}: {exc}") from None

    async def submit(
        self, type: str, payload: Any = None, priority: str = "medium", **fields: Any
    ) -> Json:
        task: Json = await self._request(
            "POST", "/v1/tasks", _submission(type, payload, priority, fields)
        )
        return task

    async def submit_many(self, tasks: builtins.list[Json]) -> builtins.list[Json]:
        answer = await self._request("POST", "/v1/tasks/batch", {"tasks": tasks})
        created: builtins.list[Json] = answer["tasks"]
        return created

    async def get(self, task_id: str) -> Json:
        task: Json = await self._request("GET", _task_path(task_id))
        return task

    async def wait(self, task_id: str, timeout_s: float, poll_s: float = 0.05) -> Json:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        while True:
            task = await self.get(task_id)
            if task["status"] in TERMINAL_STATUSES:
                return task
            left = deadline - loop.time()
            if left <= 0:
                raise TimeoutError(f"task {task_id} still {task['status']} after {timeout_s:g} s")
            await asyncio.sleep(min(poll_s, left))

    async def cancel(self, task_id: str) -> Json:
        task: Json = await self._request("DELETE", _task_path(task_id))
        return task

    async def retry(self, task_id: str) -> Json:
        task: Json = await self._request("POST", _task_path(task_id, "/retry"))
        return task

    async def list(
        self,
        status: str | None = None,
        type: str | None = None,
        priority: str | None = None,
        cursor: str | None = None,
        limit: int = 100,
    ) -> Json:
        page: Json = await self._request("GET", _list_path(status, type, priority, cursor, limit))
        return page

    async def queues(self) -> Json:
        counts: Json = await self._request("GET", "/v1/queues")
        return counts

    async def cluster(self) -> Json:
        info: Json = await self._request("GET", "/v1/cluster")
        return info

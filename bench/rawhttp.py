"""A lean HTTP/1.1 keep-alive client for the load generator: prebuilt request bytes, responses
framed by Content-Length, one request at a time per connection.

Why not aiohttp's client: on this 2-core machine the load generator shares the CPU with the node
and Redis, and aiohttp's client spent about as much CPU per request as the node under test
(330 us against 390 us per single submission), so the figure measured the client as much as the
node. This one does the few things a closed or open loop needs, and no more: no redirects,
cookies, chunked bodies or TLS. Loopback addresses only (the benchmarks' rule).
"""

from __future__ import annotations

import asyncio
import json
from typing import Any
from urllib.parse import urlsplit

RESPONSE_BYTES_MAX = 64 * 1024 * 1024  # a response larger than this is a broken server


class HttpError(Exception):
    """The connection broke, timed out, or the response could not be framed."""


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self._buf = bytearray()
        self._waiter: asyncio.Future[tuple[int, bytes, bool]] | None = None
        self.closed = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport

    def data_received(self, data: bytes) -> None:
        self._buf += data
        waiter = self._waiter
        if waiter is None or waiter.done():
            return
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > RESPONSE_BYTES_MAX:
                waiter.set_exception(HttpError("response head too large"))
            return
        head = bytes(buf[:end]).lower()
        i = head.find(b"\r\ncontent-length:")
        if i < 0:
            waiter.set_exception(HttpError(f"no Content-Length: {head[:200]!r}"))
            return
        j = head.find(b"\r\n", i + 2)
        length = int(head[i + 17 : j if j >= 0 else len(head)])
        total = end + 4 + length
        if length > RESPONSE_BYTES_MAX:
            waiter.set_exception(HttpError(f"response of {length} bytes"))
            return
        if len(buf) < total:
            return
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        self._waiter = None
        waiter.set_result((int(head[9:12]), body, b"\r\nconnection: close" in head))

    def connection_lost(self, exc: Exception | None) -> None:
        self.closed = True
        waiter = self._waiter
        if waiter is not None and not waiter.done():
            waiter.set_exception(HttpError(f"connection lost: {exc}"))

    async def request(self, data: bytes, timeout_s: float) -> tuple[int, bytes, bool]:
        if self.closed or self.transport is None:
            raise HttpError("connection closed")
        loop = asyncio.get_running_loop()
        waiter = self._waiter = loop.create_future()
        timer = loop.call_later(
            timeout_s,
            lambda: waiter.done() or waiter.set_exception(HttpError(f"no answer in {timeout_s} s")),
        )
        self.transport.write(data)
        try:
            return await waiter
        finally:
            timer.cancel()

    def close(self) -> None:
        if self.transport is not None:
            self.transport.close()


class RawHttp:
    """Connections to one http://host:port; :meth:`request_bytes` builds what ``call`` sends."""

    def __init__(self, url: str, timeout_s: float, connections_max: int = 64) -> None:
        parts = urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise ValueError(f"http://host:port URLs only, not {url!r}")
        self.host = parts.hostname
        self.port = parts.port or 80
        self.timeout_s = timeout_s
        self._idle: list[_Connection] = []
        self._all: list[_Connection] = []
        # Requests in flight, as many as connections: an open loop's arrivals beyond it wait
        # for a connection (as aiohttp's connector limit made them), not open more.
        self._slots = asyncio.Semaphore(connections_max)

    def request_bytes(self, method: str, path: str, body: Any = None) -> bytes:
        """A complete request; ``body``: bytes as they are, anything else as JSON."""
        if body is None:
            return f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n\r\n".encode()
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        head = (
            f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\n"
            f"Content-Type: application/json\r\nAccept: application/json\r\n"
            f"Content-Length: {len(raw)}\r\n\r\n"
        )
        return head.encode() + raw

    async def _connect(self) -> _Connection:
        loop = asyncio.get_running_loop()
        _, conn = await asyncio.wait_for(
            loop.create_connection(_Connection, self.host, self.port), self.timeout_s
        )
        self._all.append(conn)
        return conn

    async def warm(self, connections: int) -> None:
        """Open ``connections`` keep-alive connections before the clock starts."""
        for conn in await asyncio.gather(*(self._connect() for _ in range(connections))):
            self._idle.append(conn)

    async def call(self, data: bytes) -> tuple[int, bytes]:
        """Send one prebuilt request on an idle connection (a new one if none is idle), at
        most ``connections_max`` at a time."""
        async with self._slots:
            while self._idle and self._idle[-1].closed:  # the server hung up meanwhile
                self._idle.pop()
            conn = self._idle.pop() if self._idle else await self._connect()
            try:
                status, body, close = await conn.request(data, self.timeout_s)
            except BaseException:
                conn.close()
                raise
            if close or conn.closed:
                conn.close()
            else:
                self._idle.append(conn)
            return status, body

    def close(self) -> None:
        for conn in self._all:
            conn.close()
        self._all.clear()
        self._idle.clear()

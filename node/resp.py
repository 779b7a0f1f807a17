"""A lean pipelined Redis client for the store's hot path: scripts and pipelines of scripts.

Why not redis-py's asyncio client for these: on this machine one EVALSHA round trip through it
costs about 170 us of CPU (retry wrapper, pool condition, timeout context, command packing in
Python) against about 27 us through this module (hiredis parses, one write per call), and a
scheduler makes several round trips per task. redis-py still serves everything else (blocking
pops, pub/sub, reads, tools and tests), and its exception classes are the ones raised here, so
callers translate errors in one way.

Design: a few connections, each an asyncio Protocol that writes every command at once and
answers callers in order from a FIFO of futures (Redis answers in order on one connection). A
caller that gives up (timeout, cancellation) leaves its future in the FIFO to be skipped, except
that a timeout closes the connection: after a lost answer the stream cannot be trusted.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any, Final, cast
from urllib.parse import parse_qs, unquote, urlsplit

import hiredis
from redis import exceptions as rexc
from redis._parsers.base import BaseParser

__all__ = ["FastRedis", "fast_url_supported"]

# Connections per client, used in turn: one suffices for throughput (Redis runs one command at a
# time and every command is pipelined); a second keeps a broken one from stopping every caller.
CONNECTIONS_DEFAULT: Final = 2
# Unanswered commands one connection holds before callers pick another: bounds the memory of a
# stalled connection's FIFO.
IN_FLIGHT_MAX: Final = 10_000


class _ReplyError(Exception):
    """hiredis builds this for an error reply; _convert gives it redis-py's class."""


def _convert(reply: Any) -> Any:
    if isinstance(reply, _ReplyError):
        error: rexc.RedisError = BaseParser.parse_error(str(reply))  # type: ignore[no-untyped-call]
        return error
    return reply


def pack(args: Sequence[str | int | bytes]) -> bytes:
    """One command in RESP: an array of bulk strings. hiredis packs it in C, 2.5x faster than
    the loop of _pack_py (measured on a finish of five tasks); a round of the leader packs
    three commands of dozens of arguments."""
    if _pack_command is None:
        return _pack_py(args)
    if float in map(type, args):
        # hiredis would format it; we refuse it, as _pack_py does (a ms timestamp as a float
        # is a bug upstream).
        raise TypeError("a Redis argument must be str, int or bytes, not float")
    try:
        return _pack_command(tuple(args))
    except TypeError:
        return _pack_py(args)  # its error names the argument's type


_pack_command: Callable[[tuple[str | int | bytes, ...]], bytes] | None = getattr(
    hiredis, "pack_command", None
)


def _pack_py(args: Sequence[str | int | bytes]) -> bytes:
    parts = [b"*%d\r\n" % len(args)]
    append = parts.append
    for a in args:
        # isinstance in the order of frequency; bool is an int to Python but not to us.
        if isinstance(a, str):
            b = a.encode()
        elif isinstance(a, bytes):
            b = a
        elif isinstance(a, int) and not isinstance(a, bool):
            b = b"%d" % a
        else:
            raise TypeError(f"a Redis argument must be str, int or bytes, not {type(a).__name__}")
        append(b"$%d\r\n%b\r\n" % (len(b), b))
    return b"".join(parts)


class _Connection(asyncio.Protocol):
    def __init__(self) -> None:
        self._reader = hiredis.Reader(replyError=_ReplyError, encoding="utf-8", errors="strict")
        self._waiters: deque[asyncio.Future[Any]] = deque()
        self._transport: asyncio.Transport | None = None
        self.closed = False

    @property
    def in_flight(self) -> int:
        return len(self._waiters)

    # ---- asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        # A stream transport; uvloop's do not subclass asyncio.Transport, so no isinstance.
        self._transport = cast(asyncio.Transport, transport)

    def data_received(self, data: bytes) -> None:
        reader = self._reader
        reader.feed(data)
        waiters = self._waiters
        try:
            while True:
                reply = reader.gets()
                if reply is False:
                    return
                if not waiters:
                    raise rexc.InvalidResponse("an answer no command asked for")
                future = waiters.popleft()
                if not future.done():
                    future.set_result(_convert(reply))
        except (hiredis.ProtocolError, rexc.InvalidResponse) as exc:
            self.close(rexc.ConnectionError(f"protocol error: {exc}"))

    def connection_lost(self, exc: Exception | None) -> None:
        self._fail(rexc.ConnectionError(f"connection to redis lost: {exc or 'closed by server'}"))

    # ---- calls
    def send(self, commands: list[bytes]) -> list[asyncio.Future[Any]]:
        if self.closed or self._transport is None or self._transport.is_closing():
            raise rexc.ConnectionError("connection to redis is closed")
        loop = asyncio.get_running_loop()
        futures = [loop.create_future() for _ in commands]
        self._waiters.extend(futures)
        self._transport.write(b"".join(commands))
        return futures

    def close(self, exc: BaseException | None = None) -> None:
        if self._transport is not None:
            self._transport.close()
        self._fail(exc or rexc.ConnectionError("connection to redis closed"))

    def _fail(self, exc: BaseException) -> None:
        self.closed = True
        while self._waiters:
            future = self._waiters.popleft()
            if not future.done():
                future.set_exception(type(exc)(*exc.args))


def fast_url_supported(url: str) -> bool:
    """redis:// and unix:// go through FastRedis; rediss:// (TLS options of every kind) stays
    with redis-py, which knows them all."""
    return urlsplit(url).scheme in ("redis", "unix")


class FastRedis:
    """EVALSHA and pipelines of commands over a few pipelined connections, redis-py's errors."""

    def __init__(
        self,
        url: str,
        *,
        command_timeout_s: float,
        connect_timeout_s: float,
        connections: int = CONNECTIONS_DEFAULT,
    ) -> None:
        if connections < 1:
            raise ValueError("connections must be >= 1")
        parts = urlsplit(url)
        if parts.scheme not in ("redis", "unix"):
            raise ValueError(f"FastRedis speaks redis:// and unix://, not {parts.scheme}://")
        query = parse_qs(parts.query)
        self._unix_path = unquote(parts.path) if parts.scheme == "unix" else None
        self._host = parts.hostname or "127.0.0.1"
        self._port = parts.port or 6379
        self._username = unquote(parts.username) if parts.username else None
        self._password = unquote(parts.password) if parts.password else None
        if "password" in query:
            self._password = query["password"][0]
        db_text = query.get("db", [""])[0]
        if parts.scheme == "redis" and parts.path.strip("/"):
            db_text = parts.path.strip("/")
        self._db = int(db_text) if db_text else 0
        self._command_timeout_s = command_timeout_s
        self._connect_timeout_s = connect_timeout_s
        self._slots: list[_Connection | None] = [None] * connections
        self._connecting: list[asyncio.Task[_Connection] | None] = [None] * connections
        self._next = 0
        self._closed = False

    # ---- connections
    async def _open(self) -> _Connection:
        loop = asyncio.get_running_loop()
        try:
            async with asyncio.timeout(self._connect_timeout_s):
                if self._unix_path is not None:
                    _, conn = await loop.create_unix_connection(_Connection, self._unix_path)
                else:
                    _, conn = await loop.create_connection(_Connection, self._host, self._port)
        except TimeoutError as exc:
            raise rexc.TimeoutError("timed out connecting to redis") from exc
        except OSError as exc:
            raise rexc.ConnectionError(f"cannot connect to redis: {exc}") from exc
        hello: list[bytes] = []
        if self._password is not None:
            auth = ["AUTH", self._password]
            if self._username:
                auth.insert(1, self._username)
            hello.append(pack(auth))
        if self._db:
            hello.append(pack(["SELECT", self._db]))
        if hello:
            try:
                for reply in await self._wait(conn, conn.send(hello)):
                    if isinstance(reply, BaseException):
                        raise reply
            except BaseException:
                conn.close()
                raise
        return conn

    async def _connection(self) -> _Connection:
        """The next connection in turn, (re)opened if need be; concurrent callers that find a
        slot closed share one attempt to open it."""
        if self._closed:
            raise rexc.ConnectionError("client closed")
        i = self._next
        self._next = (i + 1) % len(self._slots)
        conn = self._slots[i]
        if conn is not None and not conn.closed:
            if conn.in_flight >= IN_FLIGHT_MAX:
                raise rexc.ConnectionError("redis is not answering: too many commands waiting")
            return conn
        task = self._connecting[i]
        if task is None:
            task = asyncio.ensure_future(self._open())
            self._connecting[i] = task
        try:
            conn = await asyncio.shield(task)
        finally:
            if task.done() and self._connecting[i] is task:
                self._connecting[i] = None
        if self._closed:
            conn.close()
            raise rexc.ConnectionError("client closed")
        self._slots[i] = conn
        return conn

    async def _wait(self, conn: _Connection, futures: list[asyncio.Future[Any]]) -> list[Any]:
        try:
            async with asyncio.timeout(self._command_timeout_s):
                return [await f for f in futures]
        except TimeoutError as exc:
            # The answer may still come, but this stream can no longer be matched to callers.
            conn.close(rexc.TimeoutError("redis did not answer in time"))
            raise rexc.TimeoutError("redis did not answer in time") from exc

    # ---- commands
    async def execute(self, *args: str | int | bytes) -> Any:
        """One command; an error reply is raised (redis-py's class for it)."""
        conn = await self._connection()
        [reply] = await self._wait(conn, conn.send([pack(args)]))
        if isinstance(reply, BaseException):
            raise reply
        return reply

    async def pipeline(self, commands: Sequence[Sequence[str | int | bytes]]) -> list[Any]:
        """Several commands in one write and one round trip; each answer in its place, an error
        reply as its exception object (not raised). A lost connection raises for all."""
        if not commands:
            return []
        conn = await self._connection()
        return await self._wait(conn, conn.send([pack(c) for c in commands]))

    async def evalsha(self, sha: str, keys: Sequence[str], args: Sequence[str | int]) -> Any:
        return await self.execute("EVALSHA", sha, len(keys), *keys, *args)

    async def aclose(self) -> None:
        self._closed = True
        for task in self._connecting:
            if task is None:
                continue
            if not task.done():
                task.cancel()
                with contextlib.suppress(BaseException):
                    await task
            # Opened for callers that all gave up (cancelled) before one stored it in its
            # slot: nobody else will close it.
            if task.done() and not task.cancelled() and task.exception() is None:
                task.result().close()
        for conn in self._slots:
            if conn is not None:
                conn.close()
        self._slots = [None] * len(self._slots)

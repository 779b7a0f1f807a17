"""node/resp.py against real Redis servers: answers in order under pipelining, redis-py's error
classes, a killed or paused server, AUTH and SELECT from the URL, reconnection."""

from __future__ import annotations

import asyncio
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from redis import exceptions as rexc

from node.redis_server import EmbeddedRedis
from node.resp import FastRedis, _pack_py, fast_url_supported, pack
from tests.conftest import RedisFactory


def client(url: str, timeout_s: float = 5.0) -> FastRedis:
    return FastRedis(url, command_timeout_s=timeout_s, connect_timeout_s=3.0)


@pytest.fixture
async def fast(redis_url: str) -> AsyncIterator[FastRedis]:
    c = client(redis_url)
    yield c
    await c.aclose()


def test_pack_is_resp() -> None:
    assert (
        pack(["SET", "k", 12, b"\x00v"])
        == b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$2\r\n12\r\n$2\r\n\x00v\r\n"
    )
    with pytest.raises(TypeError):
        pack(["SET", "k", 1.5])  # type: ignore[list-item]
    with pytest.raises(TypeError):
        pack(["SET", "k", True])


_ARG = st.one_of(st.text(), st.binary(), st.integers(-(2**70), 2**70))


@given(st.lists(_ARG, min_size=1, max_size=30))
@settings(max_examples=300, deadline=None)
def test_the_c_packer_and_the_python_one_agree(args: list[str | int | bytes]) -> None:
    # hiredis.pack_command where the installed hiredis has it, the Python loop otherwise: the
    # same bytes, or the same refusal (a lone surrogate cannot be UTF-8).
    try:
        expected: bytes | type[BaseException] = _pack_py(args)
    except UnicodeEncodeError:
        expected = UnicodeEncodeError
    try:
        got: bytes | type[BaseException] = pack(args)
    except UnicodeEncodeError:
        got = UnicodeEncodeError
    assert got == expected


def test_which_urls() -> None:
    assert fast_url_supported("redis://127.0.0.1:6379/0")
    assert fast_url_supported("unix:///tmp/r.sock")
    assert not fast_url_supported("rediss://127.0.0.1:6380/0")
    with pytest.raises(ValueError):
        client("rediss://127.0.0.1:6380/0")


async def test_concurrent_callers_each_get_their_own_answer(fast: FastRedis) -> None:
    await fast.execute("DEL", "resp:n")
    answers = await asyncio.gather(*(fast.execute("ECHO", f"v{i}") for i in range(500)))
    assert answers == [f"v{i}" for i in range(500)]
    incrs = await asyncio.gather(*(fast.execute("INCR", "resp:n") for _ in range(200)))
    assert sorted(incrs) == list(range(1, 201))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(values=st.lists(st.text(max_size=50), min_size=1, max_size=20))
async def test_round_trip_of_any_text(fast: FastRedis, values: list[str]) -> None:
    replies = await fast.pipeline([("ECHO", v) for v in values])
    assert replies == values


async def test_errors_are_redis_py_classes_in_place(fast: FastRedis) -> None:
    replies = await fast.pipeline(
        [("ECHO", "a"), ("EVALSHA", "0" * 40, 0), ("NOSUCHCOMMAND",), ("ECHO", "b")]
    )
    assert replies[0] == "a" and replies[3] == "b"
    assert isinstance(replies[1], rexc.NoScriptError)
    assert type(replies[2]) is rexc.ResponseError and "unknown command" in str(replies[2])
    with pytest.raises(rexc.NoScriptError):
        await fast.evalsha("0" * 40, ["k"], [])
    sha = await fast.execute("SCRIPT", "LOAD", "return {ARGV[1], tonumber(ARGV[2]) + 1}")
    assert await fast.evalsha(sha, ["k"], ["x", 41]) == ["x", 42]


async def test_a_killed_server_fails_callers_then_a_restart_serves_again(
    redis_factory: RedisFactory,
) -> None:
    server = redis_factory()
    c = client(server.url)
    try:
        assert await c.execute("PING") == "PONG"
        server.kill()
        with pytest.raises(rexc.ConnectionError):
            for _ in range(10):  # each connection in turn notices
                await c.execute("PING")
        server.start()
        answers = [await c.execute("ECHO", "back") for _ in range(4)]
        assert answers == ["back"] * 4
    finally:
        await c.aclose()


async def test_a_silent_server_times_out_and_the_connection_is_dropped(
    redis_factory: RedisFactory,
) -> None:
    server = redis_factory()
    c = client(server.url, timeout_s=0.3)
    pid = server.pid
    assert pid is not None
    try:
        assert await c.execute("PING") == "PONG"
        os.kill(pid, signal.SIGSTOP)
        try:
            with pytest.raises(rexc.TimeoutError):
                await c.execute("PING")
        finally:
            os.kill(pid, signal.SIGCONT)
        # The late PONG went with the dropped connection: no caller gets another's answer.
        answers = await asyncio.gather(*(c.execute("ECHO", f"e{i}") for i in range(6)))
        assert answers == [f"e{i}" for i in range(6)]
    finally:
        await c.aclose()


async def test_unreachable_is_a_connection_error() -> None:
    from tests.procs import free_port

    c = client(f"redis://127.0.0.1:{free_port()}/0")
    with pytest.raises(rexc.ConnectionError):
        await c.execute("PING")
    await c.aclose()
    with pytest.raises(rexc.ConnectionError):
        await c.execute("PING")  # closed for good


async def test_password_and_db_from_the_url(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "auth", password="p@ss:word")
    await server.start_async()
    try:
        c = client(server.url.rsplit("/", 1)[0] + "/3")
        try:
            await c.execute("SET", "resp:db", "three")
            with server.client(db=3) as direct:
                assert direct.get("resp:db") == b"three"
            with server.client(db=0) as direct:
                assert direct.get("resp:db") is None
        finally:
            await c.aclose()
        wrong = client(f"redis://:wrong@127.0.0.1:{server.port}/0")
        with pytest.raises(rexc.AuthenticationError):
            await wrong.execute("PING")
        await wrong.aclose()
    finally:
        server.stop()


def test_on_uvloop(redis_url: str) -> None:
    """uvloop's transports are not asyncio.Transport subclasses; the client must not care."""
    uvloop = pytest.importorskip("uvloop")

    async def main() -> list[object]:
        c = client(redis_url)
        try:
            return list(await asyncio.gather(*(c.execute("ECHO", f"u{i}") for i in range(50))))
        finally:
            await c.aclose()

    assert uvloop.run(main()) == [f"u{i}" for i in range(50)]


async def test_a_connection_opened_for_callers_that_gave_up_is_closed_by_aclose(
    redis_url: str,
) -> None:
    # Found as a leaked transport in a kill -9 test: the callers were cancelled while the
    # connection opened, and nothing stored it in its slot, so nothing closed it.
    c = FastRedis(redis_url, command_timeout_s=5.0, connect_timeout_s=3.0, connections=1)
    caller = asyncio.ensure_future(c.execute("PING"))
    await asyncio.sleep(0)  # the caller starts opening the connection
    caller.cancel()
    with pytest.raises(asyncio.CancelledError):
        await caller
    [opening] = [t for t in c._connecting if t is not None]
    conn = await opening  # opened after its only caller gave up
    assert c._slots == [None] and not conn.closed
    await c.aclose()
    assert conn.closed

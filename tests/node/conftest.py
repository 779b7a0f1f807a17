"""Fixtures of the store tests (test_store.py, test_submit_flush.py)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from node.store import RedisStore


@pytest.fixture
async def store(redis_url: str) -> AsyncIterator[RedisStore]:
    """A store on the session's Redis with a one-minute retention (the sweep tests' clock)."""
    s = await RedisStore.connect(redis_url, retention_ms=60_000)
    try:
        yield s
    finally:
        await s.close()

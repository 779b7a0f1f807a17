"""``create_app(config) -> web.Application``: one node, each resource one cleanup context, so
shutdown undoes exactly what started, in reverse order."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
from collections.abc import AsyncIterator

from aiohttp import web

from node import tasks as task_registry
from node.api import setup_routes
from node.config import NodeConfig
from node.keys import CONFIG, METRICS, RUNTIME, STORE
from node.metrics import Metrics
from node.redis_server import EmbeddedRedis, RedisStartError
from node.runtime import Leadership, NodeRuntime, SoloLeadership, now_ms
from node.store import RedisStore, StoreUnavailable

log = logging.getLogger("dsched.app")

REDIS_URL = web.AppKey("redis_url", str)
# How often a node looks whether its embedded Redis still runs (restarting it if not), and the
# longest pause between two failed restarts.
REDIS_WATCH_S = 0.5
REDIS_RESTART_PAUSE_MAX_S = 10.0
# How long a starting node waits for the registry (the leader's Raft configuration).
REGISTRY_PEERS_WAIT_S = 3.0
LEADERSHIP = web.AppKey("leadership", object)


def create_app(config: NodeConfig) -> web.Application:
    app = web.Application(client_max_size=config.limits.request_bytes_max)
    app[CONFIG] = config
    app[METRICS] = Metrics()
    setup_routes(app)
    app.cleanup_ctx.append(_redis_ctx)
    app.cleanup_ctx.append(_store_ctx)
    app.cleanup_ctx.append(_leadership_ctx)
    app.cleanup_ctx.append(_runtime_ctx)
    return app


async def _redis_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    if config.redis_url:
        app[REDIS_URL] = config.redis_url
        yield
        return
    os.makedirs(config.data_dir, exist_ok=True)
    server = EmbeddedRedis(config.data_dir, port=config.redis_port, fsync=config.fsync)
    await server.start_async()
    log.info(
        "embedded redis at %s (AOF fsync=%s, dir=%s)", server.url, config.fsync, config.data_dir
    )
    app[REDIS_URL] = server.url
    watch = asyncio.create_task(_watch_redis(server), name="dsched-redis-watch")
    try:
        yield
    finally:
        watch.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await watch
        await server.stop_async()


async def _watch_redis(server: EmbeddedRedis) -> None:
    """The embedded Redis is the node's to keep up: if it exits (killed, OOM), start it again
    on the same port and directory; its AOF brings every acknowledged task back."""
    pause = REDIS_WATCH_S
    while True:
        await asyncio.sleep(pause)
        if server.running:
            pause = REDIS_WATCH_S
            continue
        log.error("embedded redis exited (status %s); restarting it", server.exit_code)
        try:
            await server.start_async()
        except RedisStartError as exc:
            pause = min(2 * pause, REDIS_RESTART_PAUSE_MAX_S)
            log.error("embedded redis did not restart (next try in %.1f s): %s", pause, exc)
            continue
        log.info("embedded redis restarted at %s", server.url)
        pause = REDIS_WATCH_S


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    store = await RedisStore.connect(
        app[REDIS_URL], prefix=config.redis_prefix, retention_ms=config.retention_s * 1000
    )
    app[STORE] = store
    try:
        yield
    finally:
        await store.close()


async def _registry_peers(store: RedisStore, self_addr: str) -> set[str]:
    """The current leader's Raft configuration, from its registry entry (peers_from_registry);
    none if Redis does not answer in time: then --peers alone, as before."""
    from node.cluster import peers_from_registry

    try:
        entries = await asyncio.wait_for(store.nodes(), REGISTRY_PEERS_WAIT_S)
    except (StoreUnavailable, TimeoutError):
        log.warning("registry unreadable at start: raft peers from --peers only")
        return set()
    peers = peers_from_registry(entries, now_ms(), self_addr)
    if peers:
        log.info("raft configuration published by the leader: %s", sorted(peers))
    return peers


async def _leadership_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    leadership: Leadership
    if config.peers or config.raft_port:
        from node.cluster import RaftLeadership  # Raft only where a cluster is asked for

        raft = RaftLeadership(config)
        await raft.start(await _registry_peers(app[STORE], raft.self_addr))
        leadership = raft
        app[LEADERSHIP] = leadership
        try:
            yield
        finally:
            await raft.stop()
        return
    solo = SoloLeadership(config.resolved_node_id())
    await solo.start(app[STORE])
    app[LEADERSHIP] = solo
    yield


async def _runtime_ctx(app: web.Application) -> AsyncIterator[None]:
    config = app[CONFIG]
    task_registry.load_modules(config.task_modules)
    leadership = app[LEADERSHIP]
    assert isinstance(leadership, (SoloLeadership,)) or hasattr(leadership, "snapshot")
    runtime = NodeRuntime(
        config,
        app[STORE],
        app[METRICS],
        task_registry.registered(),
        leadership,  # type: ignore[arg-type]
    )
    app[RUNTIME] = runtime
    await runtime.start()
    try:
        yield
    finally:
        await runtime.stop()

"""Entry points behind `dsched node` and `dsched cluster` (also `python -m node`)."""

from __future__ import annotations

import argparse
import asyncio
import gc
import logging
import os
import sys

from aiohttp import web

from node.config import config_from_args


def setup_logging(level: str) -> None:
    logging.basicConfig(
        level=getattr(logging, level.upper(), logging.INFO),
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )


def event_loop() -> asyncio.AbstractEventLoop:
    """uvloop's event loop when it is installed (a dependency; the HTTP and Redis I/O of every
    request runs on it, at a fraction of the default loop's cost per callback), else asyncio's.
    DSCHED_EVENT_LOOP=asyncio chooses asyncio's anyway (to rule the loop out when debugging)."""
    if os.environ.get("DSCHED_EVENT_LOOP", "").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def freeze_startup_objects() -> None:
    """Put every object alive once the node serves (modules, the app, the runtime and its
    connections: some 75,000) out of the cyclic collector's reach, for good. They live as long
    as the process, yet each full collection walked them all, stopping the event loop while
    task starts waited (measured at 1,000 tasks/s: full collections of 97-116 ms, against
    16-31 ms frozen)."""
    gc.collect()  # what is garbage now is not frozen with the rest
    gc.freeze()


def run_node(args: argparse.Namespace) -> int:
    from node.app import create_app
    from node.redis_server import RedisStartError
    from node.tasks import TaskModuleNotFound, load_modules

    config = config_from_args(args)
    setup_logging(config.log_level)
    try:
        # Before anything starts (the embedded Redis): a misspelt module is a usage error.
        load_modules(config.task_modules)
    except TaskModuleNotFound as exc:
        print(f"dsched node: error: argument --tasks: {exc}", file=sys.stderr)
        return 2
    app = create_app(config)
    node_id = config.resolved_node_id()

    def announce(msg: str) -> None:
        # run_app calls this once the app started (store, Raft, loops) and the site listens.
        freeze_startup_objects()
        print(f"dsched node {node_id}: http://{config.http_host}:{config.http_port}", flush=True)

    try:
        web.run_app(
            app,
            host=config.http_host,
            port=config.http_port,
            print=announce,
            access_log=None,
            # Running tasks get the configured grace; aiohttp must not cut the cleanup short.
            shutdown_timeout=max(5.0, config.shutdown_grace_s + 5.0),
            handle_signals=True,
            loop=event_loop(),
        )
    except RedisStartError as exc:  # its message says why, and what to do
        print(f"dsched node: error: {exc}", file=sys.stderr)
        return 1
    from node.keys import RUNTIME

    runtime = app.get(RUNTIME)
    if runtime is not None and int(getattr(runtime, "abandoned_threads", 0)):
        # The interpreter would join every pool thread at exit, however long its handler
        # runs on (the grace is over, its task given back): exit without them.
        logging.shutdown()
        sys.stdout.flush()
        os._exit(0)
    return 0


def run_cluster(args: argparse.Namespace) -> int:
    from node.localcluster import run_local_cluster

    return run_local_cluster(args)

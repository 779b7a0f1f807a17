"""Task handlers for the integration and cluster tests: they log every execution to a file.

Each line of $DSCHED_PROBE_LOG is JSON: {"event": "start"|"end"|"stopped", "task": id, "attempt": n,
"node": node id, "pid": pid, "t": wall seconds, "key": payload key}. O_APPEND writes of one
short line are atomic, so processes can share the file.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from typing import Any

from node.tasks import TaskRejected, current, task


def _log(event: str, payload: Any) -> None:
    path = os.environ.get("DSCHED_PROBE_LOG")
    if not path:
        return
    ctx = current()
    line = json.dumps(
        {
            "event": event,
            "task": ctx.task_id,
            "attempt": ctx.attempt,
            "node": ctx.node_id,
            "pid": os.getpid(),
            "t": time.time(),
            "key": payload.get("key") if isinstance(payload, dict) else None,
        }
    )
    os.write(_fd(path), (line + "\n").encode())


_fds: dict[str, int] = {}


def _fd(path: str) -> int:
    # Opened once per process: an open and a close per event ran on the node's event loop,
    # inside the latency the benchmark measures (about 20 us an event against 13 us).
    fd = _fds.get(path)
    if fd is None:
        fd = _fds[path] = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    return fd


@task("probe")
async def probe(payload: Any) -> Any:
    """Log start, sleep payload["seconds"] (default 0), fail if payload["fail_attempts"] >=
    this attempt, log end."""
    _log("start", payload)
    seconds = float(payload.get("seconds", 0)) if isinstance(payload, dict) else 0.0
    if seconds:
        try:
            await asyncio.sleep(seconds)
        except asyncio.CancelledError:  # interrupted by its worker (lease lost, cancel, ...)
            _log("stopped", payload)
            raise
    if isinstance(payload, dict) and current().attempt <= int(payload.get("fail_attempts", 0)):
        raise RuntimeError(f"planned failure on attempt {current().attempt}")
    _log("end", payload)
    return {"attempt": current().attempt}


@task("probe_sync")
def probe_sync(payload: Any) -> Any:
    """The same in a thread: a blocking handler; payload["reject"] raises TaskRejected."""
    _log("start", payload)
    if isinstance(payload, dict) and payload.get("reject"):
        raise TaskRejected("probe_sync rejects this payload")
    seconds = float(payload.get("seconds", 0)) if isinstance(payload, dict) else 0.0
    time.sleep(seconds)
    _log("end", payload)
    return {"attempt": current().attempt}


def read_log(path: str) -> list[dict[str, Any]]:
    try:
        with open(path) as f:
            return [json.loads(line) for line in f if line.strip()]
    except FileNotFoundError:
        return []


class _Unprintable(Exception):
    def __str__(self) -> str:
        return 42  # type: ignore[return-value]  # what a careless __str__ does


def _raise(kind: str) -> None:
    if kind == "unprintable":
        raise _Unprintable()
    if kind == "system_exit":
        raise SystemExit(3)  # sys.exit, or an argparse error, in a handler
    if kind == "keyboard_interrupt":
        raise KeyboardInterrupt
    if kind == "rejected_group":  # what asyncio.TaskGroup raises around its tasks' errors
        raise ExceptionGroup("both", [TaskRejected("one"), TaskRejected("two")])
    if kind == "mixed_group":
        raise ExceptionGroup("both", [TaskRejected("one"), ValueError("two")])
    raise ValueError(f"unknown kind {kind!r}")


@task("raiser")
async def raiser(payload: Any) -> None:
    """Raises what payload["kind"] names (see _raise)."""
    _raise(payload["kind"])


@task("raiser_sync")
def raiser_sync(payload: Any) -> None:
    """The same in a thread."""
    _raise(payload["kind"])


@task("big_result")
async def big_result(payload: Any) -> str:
    """Returns a string of payload["chars"] characters (its JSON is 2 bytes more)."""
    return "x" * int(payload["chars"])

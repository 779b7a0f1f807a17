"""Task handlers registered by name with ``@task("name")``, and the built-in ones.

Async handlers run on the event loop; plain functions run in a thread pool so they cannot block
it. A handler gets the task's payload (decoded JSON) and returns a JSON-serialisable result.
"""

from __future__ import annotations

import asyncio
import contextvars
import importlib
import inspect
import os
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from core.limits import DEFAULT_LIMITS

Handler = Callable[[Any], Any]
F = TypeVar("F", bound=Handler)

_REGISTRY: dict[str, Handler] = {}


@dataclass(frozen=True, slots=True)
class TaskContext:
    """The task a handler is running for: delivery is at-least-once, so a handler with side
    effects can use (task_id, attempt) to make them idempotent."""

    task_id: str
    attempt: int
    type: str
    node_id: str


_CURRENT: contextvars.ContextVar[TaskContext | None] = contextvars.ContextVar(
    "dsched_task", default=None
)


def current() -> TaskContext:
    """The running task, from inside a handler (async or threaded)."""
    ctx = _CURRENT.get()
    if ctx is None:
        raise RuntimeError("dsched.current() is only available inside a task handler")
    return ctx


def set_current(ctx: TaskContext) -> None:
    _CURRENT.set(ctx)


def task(name: str) -> Callable[[F], F]:
    """Register ``fn`` as the handler of task type ``name``."""
    if not name or len(name) > 128:
        raise ValueError("a task type name is 1 to 128 characters")

    def register(fn: F) -> F:
        other = _REGISTRY.get(name)
        if other is not None and other is not fn:
            raise ValueError(f"task type {name!r} is already registered by {other!r}")
        _REGISTRY[name] = fn
        return fn

    return register


def registered() -> dict[str, Handler]:
    return dict(_REGISTRY)


def is_async(handler: Handler) -> bool:
    return inspect.iscoroutinefunction(handler)


class TaskModuleNotFound(ImportError):
    """A module named with --tasks is not importable (not the ones it imports: their errors
    are the module's own, and keep their traceback)."""


def load_modules(modules: tuple[str, ...] | list[str]) -> None:
    """Import user modules so their @task decorators run. The working directory is searched
    first, as ``python -m node`` does (a console script such as ``dsched`` would not)."""
    cwd = os.getcwd()
    if modules and cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    for module in modules:
        try:
            importlib.import_module(module)
        except ModuleNotFoundError as exc:
            if exc.name is None or not (module == exc.name or module.startswith(exc.name + ".")):
                raise
            raise TaskModuleNotFound(
                f"no module named {module!r} (searched the working directory {cwd} and "
                "sys.path; PYTHONPATH adds directories)"
            ) from None


class TaskFailed(Exception):
    """Raised by the built-in ``fail`` task."""


class TaskRejected(Exception):
    """Raise it from a handler when running the task again cannot help (a payload it cannot
    use): the task ends dead at once, whatever retries its policy has left, with error kind
    "rejected". Any other exception is a failure that the task's retry policy retries."""


@task("noop")
async def noop(payload: Any) -> None:
    return None


@task("echo")
async def echo(payload: Any) -> Any:
    return payload


SLEEP_S_MAX = DEFAULT_LIMITS.timeout_s_max


@task("sleep")
async def sleep(payload: Any) -> dict[str, float]:
    if payload is not None and not isinstance(payload, dict):
        raise TaskRejected('payload must be an object like {"seconds": 0.5}, or none')
    seconds = payload.get("seconds", 0.5) if payload else 0.5
    # No sleep outlasts the longest task timeout; nan, infinity and bool (an int) are refused
    # too, and an int past a float's range, which asyncio.sleep cannot take.
    if type(seconds) not in (int, float) or not 0 <= seconds <= SLEEP_S_MAX:
        raise TaskRejected(
            f"payload.seconds must be a number from 0 to {SLEEP_S_MAX}, not {seconds!r:.50}"
        )
    await asyncio.sleep(seconds)
    return {"slept_s": seconds}


@task("fail")
async def fail(payload: Any) -> None:
    """Raises TaskFailed (retried by the task's policy), or TaskRejected (dead at once) when
    the payload says ``"retry": false``."""
    options = payload if isinstance(payload, dict) else {}
    message = options.get("message") or "failed on purpose"
    if options.get("retry", True) is False:
        raise TaskRejected(message)
    raise TaskFailed(message)

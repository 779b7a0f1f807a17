"""dsched's durable store: Redis, one atomic Lua script per state change.

The semantics are :class:`core.store_model.StoreModel`'s, answer for answer; a conformance test
(tests/node/test_store_conformance.py) runs random operation sequences against both. The scripts
live in ``node/lua/``, one per operation, each prefixed with ``_lib.lua`` and loaded with SCRIPT
LOAD; a NOSCRIPT answer (Redis restarted or flushed its script cache) reloads them and retries,
which is safe because a NOSCRIPT call ran nothing.

Key layout (``B`` is ``{prefix}``, a hash tag, so one Redis Cluster slot holds every key)::

    B:t:<id>        task hash: the TaskRecord fields (depends_on and error as JSON text) that
                    do not hold their default (attempt, failures, lease_expiries, started_ms,
                    finished_ms, lease_node, lease_deadline_ms, result_json, error,
                    depends_on, idempotency_key: readers fill those in), and idem_def, the
                    definition fingerprint of a task with an idempotency key
    B:seq           submission counter (INCR), FIFO order within a priority
    B:epoch         fencing epoch: the newest leader term seen
    B:inbox         list of changes the leader has not read yet: task ids, or snapshots of
                    a state as written (drain.lua answers those unread while still current)
    B:a:<node>      list of "id:attempt" assignments for a node's slots
    B:idem          hash idempotency key -> task id
    B:s:<status>    ZSET id -> seq per status (listing, counts, rebuild)
    B:all           ZSET id -> seq of every task
    B:done          ZSET id -> finished_ms of terminal tasks (retention sweep)
    B:qn            hash priority -> number of queued tasks
    B:nodes         hash node id -> JSON info with last_seen_ms (the reader judges liveness)
    B:rd:<id>       set of the tasks whose depends_on names <id> (the sweep keeps <id> while
                    one of them is live)
    B:bell          channel: rung by every script that pushes to the inbox
    B:cancel:<node> channel: a task running on <node> was cancelled (payload: "id:attempt")

Failures: an unreachable Redis raises :class:`StoreUnavailable` (the API answers 503). Writes are
never retried after a connection error, because the write may have landed before the connection
broke: the caller (or its client, with an idempotency key) decides. A write is acknowledged only
after Redis answered it.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import sys
from collections import deque
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, Sequence
from importlib import resources
from typing import Any, Final, Generic, TypeVar, cast

import orjson
import redis.asyncio as aioredis
from redis import exceptions as rexc
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff

from core.effects import Expire, Lease, Promote
from core.priority import Priority
from core.store_model import (
    FENCED,
    IdempotencyConflict,
    NewTask,
    QueueFull,
    SubmitError,
    Taken,
    TaskRecord,
)
from core.store_model import StoreUnavailable as _CoreStoreUnavailable
from core.task import Status, TaskState
from core.worker import Finish, Heartbeat, Release
from node.resp import FastRedis, fast_url_supported
from node.rows import SubmitRow, row_of

__all__ = [
    "FENCED",
    "GROUP_COMMIT_TASKS_MAX",
    "RETENTION_MS_DEFAULT",
    "RedisStore",
    "StoreError",
    "StoreUnavailable",
]

RETENTION_MS_DEFAULT: Final = 7 * 24 * 3600 * 1000
# Most tasks one group commit sends in one round trip: bounds the pipeline's memory and the time
# Redis spends on it before it answers anyone else. A single larger batch still goes alone.
GROUP_COMMIT_TASKS_MAX: Final = 5000
# Most tasks one submit script call writes (a single larger batch still goes alone): Redis runs
# nothing else while a script runs, so a flush of several big batches goes as several script
# calls, pipelined, that other clients' commands can come between.
SUBMIT_SCRIPT_TASKS_MAX: Final = 1000
# Terminal tasks one sweep script removes: a backlog is swept in steps, never in one long block.
SWEEP_CHUNK_MAX: Final = 1000
# Index entries one list_tasks call scans, whatever its filters match: bounds a sparse query.
LIST_SCAN_MAX: Final = 5000
LIST_LIMIT_MAX: Final = 1000
LIVE_CHUNK_DEFAULT: Final = 1000
# A command unanswered this long means Redis is unreachable for us (503), not merely slow.
COMMAND_TIMEOUT_S: Final = 10.0
CONNECT_TIMEOUT_S: Final = 3.0
# Connections for ordinary commands; more concurrent callers wait (up to COMMAND_TIMEOUT_S).
CONNECTIONS_MAX: Final = 64
# Connections held by waiting takes (BLPOP) and subscriptions: one each.
BLOCKING_CONNECTIONS_MAX: Final = 256
# A BLPOP is given this much beyond its own timeout before we call the connection dead.
BLOCK_GRACE_S: Final = 5.0
# How often a subscriber wakes to check its connection (redis-py pings it when idle this long).
PUBSUB_POLL_S: Final = 1.0
PUBSUB_HEALTH_S: Final = 5

_SCRIPT_NAMES: Final = (
    "submit",
    "cancel",
    "retry",
    "raise_epoch",
    "drain",
    "live_states",
    "apply",
    "take",
    "heartbeat",
    "finish",
    "release",
    "sweep",
    "list_tasks",
)


# round.lua runs these scripts' bodies as functions (name_main), in this order.
_ROUND_PARTS: Final = ("finish", "apply", "drain")


def _read_sources() -> dict[str, str]:
    lua = resources.files("node") / "lua"
    lib = (lua / "_lib.lua").read_text(encoding="utf-8")
    bodies = {name: (lua / f"{name}.lua").read_text(encoding="utf-8") for name in _SCRIPT_NAMES}
    scripts = {name: lib + "\n" + body for name, body in bodies.items()}
    # A body's ARGV is its function's parameter, and its return the function's.
    parts = "".join(
        f"local function {name}_main(ARGV)\n{bodies[name]}\nend\n" for name in _ROUND_PARTS
    )
    scripts["round"] = lib + "\n" + parts + (lua / "round.lua").read_text(encoding="utf-8")
    return scripts


# Read at import: a missing or unreadable script is a packaging error, found at once.
SCRIPTS: Final = _read_sources()
_SHAS: Final = {name: hashlib.sha1(src.encode()).hexdigest() for name, src in SCRIPTS.items()}

_STATUS_INDEX = tuple(s.value for s in Status)
_TERMINAL_ENDS = (Status.SUCCEEDED, Status.FAILED, Status.DEAD)
# Error replies that mean "Redis cannot take writes right now" rather than "your request is bad".
_UNAVAILABLE_PREFIXES = (
    "MISCONF",
    "READONLY",
    "OOM",
    "MASTERDOWN",
    "NOREPLICAS",
    "BUSY",
    "CLUSTERDOWN",
    "TRYAGAIN",
    "LOADING",
)


class StoreUnavailable(_CoreStoreUnavailable):
    """Redis did not answer, or cannot take writes now (the API turns this into 503). A kind of
    core's StoreUnavailable, so the core procedures react to it (rebuild from the store)."""


class StoreError(RuntimeError):
    """Redis answered with an error no caller can fix (a script bug, a wrong server)."""


def _translate(exc: BaseException) -> BaseException:
    """The exception a caller of the store sees for an exception from redis-py."""
    if isinstance(exc, (StoreUnavailable, SubmitError, ValueError)):
        return exc
    if isinstance(exc, (rexc.ConnectionError, rexc.TimeoutError, OSError)):
        return StoreUnavailable(f"redis unreachable: {exc}")
    if isinstance(exc, rexc.ResponseError):
        if str(exc).startswith(_UNAVAILABLE_PREFIXES) or isinstance(
            exc, (rexc.ReadOnlyError, rexc.OutOfMemoryError)
        ):
            return StoreUnavailable(f"redis refuses writes: {exc}")
        return StoreError(f"redis error: {exc}")
    return exc


def _fresh(exc: BaseException) -> BaseException:
    """An instance of its own for each waiter: raising one instance in many tasks would tangle
    their tracebacks."""
    if isinstance(exc, StoreUnavailable):
        copy = StoreUnavailable(*exc.args)
        copy.__cause__ = exc.__cause__
        return copy
    return exc


@contextlib.contextmanager
def _redis_errors() -> Iterator[None]:
    try:
        yield
    except (rexc.RedisError, OSError) as exc:
        raise _translate(exc) from exc
    except RuntimeError as exc:
        # redis-py's asyncio client raises this for a write on a transport that a broken link
        # closed ("unable to perform operation on <TCPTransport closed=True ...>").
        if "closed" not in str(exc):
            raise
        raise StoreUnavailable(f"redis connection broken: {exc}") from exc


# ---------------------------------------------------------------------------- conversions
def _ints(s: str) -> int:
    return int(s) if s else 0


def _deps(text: str) -> tuple[str, ...]:
    return () if text == "[]" else tuple(json.loads(text))


def _record(flat: Sequence[str]) -> TaskRecord:
    """A TaskRecord from a task hash's HGETALL (flat field, value list). A field the hash
    leaves out holds its default (DEFAULTS in _lib.lua: submit writes none of those)."""
    h = dict(zip(flat[::2], flat[1::2], strict=True))
    g = h.get
    return TaskRecord(
        id=h["id"],
        type=h["type"],
        payload_json=h["payload_json"],
        priority=Priority(int(h["priority"])),
        seq=int(h["seq"]),
        status=Status(h["status"]),
        max_retries=int(h["max_retries"]),
        backoff_base_ms=int(h["backoff_base_ms"]),
        backoff_cap_ms=int(h["backoff_cap_ms"]),
        timeout_ms=int(h["timeout_ms"]),
        run_at_ms=int(h["run_at_ms"]),
        depends_on=_deps(g("depends_on", "[]")),
        idempotency_key=g("idempotency_key", ""),
        created_ms=int(h["created_ms"]),
        updated_ms=int(h["updated_ms"]),
        attempt=_ints(g("attempt", "")),
        failures=_ints(g("failures", "")),
        lease_expiries=_ints(g("lease_expiries", "")),
        started_ms=_ints(g("started_ms", "")),
        finished_ms=_ints(g("finished_ms", "")),
        lease_node=g("lease_node", ""),
        lease_deadline_ms=_ints(g("lease_deadline_ms", "")),
        result_json=g("result_json", ""),
        error=_error(g("error", "{}")),
        version=int(h["version"]),
    )


def _direct_record(s: TaskState, x: Sequence[str | None]) -> TaskRecord:
    """The TaskRecord of a direct lease: its state plus apply.lua's EXTRA_FIELDS (positional,
    None where the hash holds the default), without a second parse of the state's fields."""
    return TaskRecord(
        s.id,
        s.type,
        x[0] or "",
        s.priority,
        s.seq,
        s.status,
        int(x[1] or 0),
        int(x[2] or 0),
        int(x[3] or 0),
        int(x[4] or 0),
        s.run_at_ms,
        s.depends_on,
        x[5] or "",
        int(x[6] or 0),
        int(x[7] or 0),
        s.attempt,
        s.failures,
        s.lease_expiries,
        int(x[8] or 0),
        int(x[9] or 0),
        s.lease_node,
        s.lease_deadline_ms,
        x[10] or "",
        _error(x[11] or "{}"),
        s.version,
    )


def _error(text: str) -> dict[str, str]:
    return json.loads(text) if text != "{}" else {}


# Dict lookups, not Enum calls: a rebuild parses a million of these.
_PRIORITY_OF: Final = {str(int(p)): p for p in Priority}
_STATUS_OF: Final = {s.value: s for s in Status}


def _state(v: Sequence[str]) -> TaskState:
    """A TaskState from the scripts' state() (HMGET of STATE_FIELDS in _lib.lua)."""
    return TaskState(
        id=v[0],
        type=sys.intern(v[1]),  # one str per type, not one per queued task
        priority=_PRIORITY_OF[v[2]],
        seq=int(v[3]),
        status=_STATUS_OF[v[4]],
        attempt=int(v[5]),
        run_at_ms=int(v[6]),
        depends_on=_deps(v[7]),
        lease_node=v[8],
        lease_deadline_ms=int(v[9]),
        failures=int(v[10]),
        lease_expiries=int(v[11]),
        version=int(v[12]),
    )


def _finish_answer(f: Finish, answer: Any) -> bool | BaseException:
    """finish.lua's answer for one finish: written, refused, or a status no attempt ends with."""
    if answer == "!status":
        return ValueError(f"an attempt cannot end as {f.end.status}")
    return bool(answer == 1)


def _apply_args(ops: Sequence[Lease | Expire | Promote], direct_node: str) -> list[str | int]:
    """apply.lua's ARGV for ``ops``, the caller's own node last (its leases come back direct)."""
    args: list[str | int] = [len(ops)]
    for op in ops:
        if isinstance(op, Lease):
            args += ["L", op.term, op.task_id, op.node_id, op.deadline_ms, op.now_ms]
        elif isinstance(op, Expire):
            target = op.target.value if isinstance(op.target, Status) else str(op.target)
            args += ["E", op.term, op.task_id, op.attempt, op.now_ms, target]
        elif isinstance(op, Promote):
            args += ["P", op.term, op.task_id, op.now_ms, "", ""]
        else:
            raise TypeError(f"not a leader store op: {op!r}")
    if direct_node:
        args.append(direct_node)
    return args


def _applied(reply: Sequence[Any]) -> tuple[list[TaskState | str | None], list[Taken]]:
    """apply.lua's answer: per op the state, None or FENCED; and the direct leases, taken."""
    out: list[TaskState | str | None] = []
    taken: list[Taken] = []
    for answer in reply:
        if answer is None:
            out.append(None)
        elif answer == FENCED:
            out.append(FENCED)
        elif len(answer) == 3 and answer[0] == "+":
            state = _state(answer[1])
            out.append(state)
            taken.append(Taken(_direct_record(state, answer[2]), state.attempt))
        elif len(answer) == 2 and answer[0] == "!target":
            # The model raises here, after applying the ops before this one; so did we.
            raise ValueError("an expired lease goes back to queued or to dead")
        else:
            out.append(_state(answer))
    return out, taken


def _drained(reply: Sequence[Sequence[str] | str]) -> list[TaskState]:
    """drain.lua's answer: states, each a list or a snapshot string (fields joined by SEP)."""
    return [_state(v.split("\x1f") if isinstance(v, str) else v) for v in reply]


# What submit.lua answers per task: (seq, status) for a task it created, or the earlier task an
# idempotency key matched.
SubmitAnswer = tuple[int, Status] | TaskRecord
_CREATED_STATUS: Final = {"q": Status.QUEUED, "p": Status.PENDING}


# One submit call: its rows, its now_ms and its queued_tasks_max (None: no limit).
SubmitCall = tuple[list[SubmitRow], int, int | None]


def _submit_args(calls: Sequence[SubmitCall]) -> str:
    """One flush of submit calls -> submit.lua's single JSON argument (raw UTF-8)."""
    return orjson.dumps(
        [[now_ms, rows, -1 if limit is None else limit] for rows, now_ms, limit in calls]
    ).decode()


def _submit_answer(call: SubmitCall, reply: list[Any]) -> list[SubmitAnswer] | SubmitError:
    """One call's reply (see submit.lua) -> one answer per row, or the call's refusal."""
    rows, _, limit = call
    if reply[0] == "!":
        field_name, index, value = reply[1], reply[2], reply[3]
        if field_name == "id":
            return SubmitError("id", f"task id {value!r} already exists", int(index))
        if field_name == "depends_on":
            return SubmitError("depends_on", f"dependency {value!r} does not exist", int(index))
        if field_name == "idempotency_key":
            return IdempotencyConflict(value, reply[4], int(index))
        if field_name == "backlog" and limit is not None:
            return QueueFull(int(value), int(index), limit)
        raise StoreError(f"submit answered an unknown refusal {reply!r}")
    seq = int(reply[1])
    codes: str = reply[2]
    if len(codes) != len(rows):
        raise StoreError(f"submit answered {len(codes)} tasks for {len(rows)}")
    matched = iter(reply[3:])
    out: list[SubmitAnswer] = []
    for code in codes:
        if code == "=":
            out.append(_record(next(matched)))
        else:
            out.append((seq, _CREATED_STATUS[code]))
            seq += 1
    return out


def _finish_args(f: Finish) -> list[str | int]:
    end = f.end
    return [
        f.task_id,
        f.attempt,
        f.node_id,
        end.status.value if isinstance(end.status, Status) else str(end.status),
        end.failures,
        end.run_at_ms,
        # None and {} are most results and errors: no encoder call for them.
        ("null" if end.result is None else json.dumps(end.result))
        if end.status is Status.SUCCEEDED
        else "",
        json.dumps(dict(end.error)) if end.error else "{}",
        f.now_ms,
    ]


# ---------------------------------------------------------------------------- group commit
T = TypeVar("T")
R = TypeVar("R")


class _GroupCommit(Generic[T, R]):
    """Coalesce concurrent calls into one round trip.

    The first call flushes at once; calls that arrive while a flush is in flight queue up and go
    together in the next one (at most ``weight_max`` in weight, but always at least one call).
    Under load that is one round trip, and with ``appendfsync always`` one fsync, for many
    callers; alone, a call pays no added wait. ``flush`` answers one result or exception per
    item, so each caller's outcome stays its own.
    """

    def __init__(
        self,
        flush: Callable[[list[T]], Awaitable[list[R | BaseException]]],
        weight: Callable[[T], int],
        weight_max: int,
    ) -> None:
        self._flush = flush
        self._weight = weight
        self._weight_max = weight_max
        self._queue: deque[tuple[T, asyncio.Future[R]]] = deque()
        self._runner: asyncio.Task[None] | None = None
        self.flushes = 0  # round trips made: lets tests and metrics see the coalescing

    async def __call__(self, item: T) -> R:
        future: asyncio.Future[R] = asyncio.get_running_loop().create_future()
        self._queue.append((item, future))
        if self._runner is None:
            self._runner = asyncio.create_task(self._run(), name="dsched-group-commit")
        return await future

    async def _run(self) -> None:
        try:
            while self._queue:
                batch: list[tuple[T, asyncio.Future[R]]] = []
                weight = 0
                while self._queue:
                    item, future = self._queue[0]
                    if batch and weight + self._weight(item) > self._weight_max:
                        break
                    self._queue.popleft()
                    if future.done():  # its caller was cancelled before we sent it
                        continue
                    batch.append((item, future))
                    weight += self._weight(item)
                if not batch:
                    continue
                self.flushes += 1
                try:
                    results = await self._flush([item for item, _ in batch])
                except asyncio.CancelledError:
                    for _, future in batch:
                        if not future.done():
                            future.set_exception(StoreUnavailable("store closed"))
                    raise
                except Exception as exc:  # every waiter must hear of it, each its own error
                    results = [_fresh(_translate(exc)) for _ in batch]
                for (_, future), result in zip(batch, results, strict=True):
                    if future.done():
                        continue
                    if isinstance(result, BaseException):
                        future.set_exception(result)
                    else:
                        future.set_result(result)
        finally:
            self._runner = None
            if self._queue:  # cancelled with callers still waiting: fail them, do not hang
                while self._queue:
                    _, future = self._queue.popleft()
                    if not future.done():
                        future.set_exception(StoreUnavailable("store closed"))

    async def close(self) -> None:
        runner = self._runner
        if runner is not None:
            runner.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await runner


# ---------------------------------------------------------------------------- the store
class RedisStore:
    """StoreModel's operations on Redis, async and batched. Build with :meth:`connect`."""

    def __init__(
        self,
        client: aioredis.Redis,
        blocking: aioredis.Redis,
        *,
        prefix: str,
        retention_ms: int,
        group_commit_max: int,
        fast: FastRedis | None = None,
        lead: FastRedis | None = None,
    ) -> None:
        if not prefix or any(c in prefix for c in "{}"):
            raise ValueError("prefix must be non-empty and contain no braces")
        if retention_ms < 0 or group_commit_max < 1:
            raise ValueError("need retention_ms >= 0 and group_commit_max >= 1")
        self._r = client
        # BLPOP and pub/sub hold a connection for seconds: their own pool, no socket timeout
        # (they are bounded by their own timeouts), so they never starve or break ordinary calls.
        self._blocking = blocking
        # Scripts (every state change) go through the lean client where the URL allows it.
        self._fast = fast
        # The leader's requests (drains, applies, its own finishes, epoch, rebuild) on one
        # connection of their own: Redis runs them in the order they were sent, so the leader
        # may send a round before the one in flight has answered (leader_link_ordered).
        self._lead = lead
        self.prefix = prefix
        self.base = "{" + prefix + "}"
        self.retention_ms = retention_ms
        self._submits: _GroupCommit[SubmitCall, list[SubmitAnswer]] = _GroupCommit(
            self._flush_submits, lambda call: max(1, len(call[0])), group_commit_max
        )
        self._finishes: _GroupCommit[list[Finish], list[bool | BaseException]] = _GroupCommit(
            self._flush_finishes, lambda call: max(1, len(call)), group_commit_max
        )
        # Whether a submission must ring the leader's bell: not when this node leads, as it
        # wakes its own leader in-process (NodeRuntime sets this). A ring the leader does not
        # need costs Redis a PUBLISH and every node a wake-up.
        self.submit_rings_bell: Callable[[], bool] = lambda: True

    @classmethod
    async def connect(
        cls,
        url: str,
        *,
        prefix: str = "ds",
        retention_ms: int = RETENTION_MS_DEFAULT,
        group_commit_max: int = GROUP_COMMIT_TASKS_MAX,
    ) -> RedisStore:
        """Connect to ``url`` (redis://, rediss://, unix://; a password in the URL is used),
        check that Redis answers and load the scripts. Raises StoreUnavailable if it does not."""
        common: dict[str, Any] = {
            "decode_responses": True,
            "protocol": 2,
            "socket_connect_timeout": CONNECT_TIMEOUT_S,
            # No automatic retry: a write retried after a broken connection may run twice.
            "retry": Retry(NoBackoff(), 0),
        }
        if not url.startswith("unix:"):
            # TCP keepalive finds a peer that vanished without a word (host down, partition).
            common["socket_keepalive"] = True
        # A bounded pool that makes callers wait for a connection, rather than fail, when many
        # requests arrive at once; group commit keeps the number in use small anyway.
        pool = aioredis.BlockingConnectionPool.from_url(
            url,
            socket_timeout=COMMAND_TIMEOUT_S,
            max_connections=CONNECTIONS_MAX,
            timeout=COMMAND_TIMEOUT_S,
            **common,
        )
        client = aioredis.Redis(connection_pool=pool)
        blocking = aioredis.Redis.from_url(
            url,
            socket_timeout=None,
            health_check_interval=PUBSUB_HEALTH_S,
            max_connections=BLOCKING_CONNECTIONS_MAX,
            **common,
        )
        fast = lead = None
        if fast_url_supported(url):
            fast = FastRedis(
                url, command_timeout_s=COMMAND_TIMEOUT_S, connect_timeout_s=CONNECT_TIMEOUT_S
            )
            lead = FastRedis(
                url,
                command_timeout_s=COMMAND_TIMEOUT_S,
                connect_timeout_s=CONNECT_TIMEOUT_S,
                connections=1,
            )
        store = cls(
            client,
            blocking,
            prefix=prefix,
            retention_ms=retention_ms,
            group_commit_max=group_commit_max,
            fast=fast,
            lead=lead,
        )
        try:
            await store.ping()
            await store._load_scripts()
        except BaseException:
            await store.close()
            raise
        return store

    async def close(self) -> None:
        await self._submits.close()
        await self._finishes.close()
        if self._fast is not None:
            await self._fast.aclose()
        if self._lead is not None:
            await self._lead.aclose()
        await self._r.aclose(close_connection_pool=True)
        await self._blocking.aclose(close_connection_pool=True)

    async def ping(self) -> bool:
        await self._read(self._r.ping)
        return True

    @property
    def leader_link_ordered(self) -> bool:
        """Whether the leader's requests share one connection, so that Redis runs them in the
        order they were sent however many are in flight (redis:// and unix:// URLs; with
        rediss:// each call takes a pooled connection of its own, and the leader sends one
        round at a time)."""
        return self._lead is not None

    @property
    def redis(self) -> aioredis.Redis:
        """The underlying client (tests and operational tools; not for task state changes)."""
        return self._r

    def key(self, *parts: str) -> str:
        """A key of this store's layout, e.g. ``key("t", task_id)`` -> ``{ds}:t:<id>``."""
        return ":".join((self.base, *parts))

    # ------------------------------------------------------------------ scripts
    async def _load_scripts(self) -> None:
        with _redis_errors():
            async with self._r.pipeline(transaction=False) as pipe:
                for source in SCRIPTS.values():
                    pipe.script_load(source)
                shas: list[str] = await pipe.execute()
        for name, sha in zip(SCRIPTS, shas, strict=True):
            if sha != _SHAS[name]:
                raise StoreError(f"SCRIPT LOAD of {name} answered {sha}, not {_SHAS[name]}")

    async def _eval(
        self, name: str, *args: str | int, idempotent: bool = False, lead: bool = False
    ) -> Any:
        """Run one script; after a NOSCRIPT (Redis restarted), reload all and run it again.

        ``idempotent``: running it twice changes nothing more and answers the same, so a call
        whose connection broke (e.g. a pooled connection to a Redis that since restarted) is
        sent once more. Never for submit, finish, release, drain or take. ``lead``: on the
        leader's ordered connection (leader_link_ordered)."""
        with _redis_errors():
            try:
                return await self._evalsha(name, args, lead)
            except rexc.ConnectionError:
                if not idempotent:
                    raise
                return await self._evalsha(name, args, lead)

    def _client(self, lead: bool) -> FastRedis | None:
        return self._lead if lead else self._fast

    async def _evalsha(self, name: str, args: tuple[str | int, ...], lead: bool = False) -> Any:
        fast = self._client(lead)
        try:
            if fast is not None:
                return await fast.evalsha(_SHAS[name], (self.base,), args)
            return await self._r.evalsha(_SHAS[name], 1, self.base, *args)
        except rexc.NoScriptError:
            await self._load_scripts()
            if fast is not None:
                return await fast.evalsha(_SHAS[name], (self.base,), args)
            return await self._r.evalsha(_SHAS[name], 1, self.base, *args)

    async def _read(self, call: Callable[[], Awaitable[Any]]) -> Any:
        """A plain read, sent once more if its connection broke (reads are safe to repeat)."""
        with _redis_errors():
            try:
                return await call()
            except rexc.ConnectionError:
                return await call()

    async def _eval_many(self, name: str, argvs: list[list[str | int]]) -> list[Any]:
        """Run one script per argv in one pipeline (one round trip); each answer or exception in
        its place. Each script is atomic on its own; a failure of one leaves the others be."""
        return await self._eval_seq([(name, argv) for argv in argvs])

    async def _eval_seq(
        self, calls: list[tuple[str, list[str | int]]], lead: bool = False
    ) -> list[Any]:
        """Several scripts in one pipeline on one connection, so Redis runs them in this order
        (other clients' commands may come between them); each answer or exception in its
        place. Not resent after a broken connection: none of them needs to be idempotent.
        ``lead``: on the leader's ordered connection."""
        with _redis_errors():
            replies = await self._pipeline_seq(calls, lead)
            missing = [i for i, r in enumerate(replies) if isinstance(r, rexc.NoScriptError)]
            if missing:
                # NOSCRIPT ran nothing; the ones before it (if any) stay as they were.
                await self._load_scripts()
                again = await self._pipeline_seq([calls[i] for i in missing], lead)
                for i, reply in zip(missing, again, strict=True):
                    replies[i] = reply
        return replies

    async def _pipeline_seq(
        self, calls: list[tuple[str, list[str | int]]], lead: bool = False
    ) -> list[Any]:
        fast = self._client(lead)
        if fast is not None:
            return await fast.pipeline(
                [("EVALSHA", _SHAS[name], 1, self.base, *args) for name, args in calls]
            )
        async with self._r.pipeline(transaction=False) as pipe:
            for name, args in calls:
                pipe.evalsha(_SHAS[name], 1, self.base, *args)
            replies: list[Any] = await pipe.execute(raise_on_error=False)
        return replies

    # ------------------------------------------------------------------ clients (any node)
    async def submit(
        self, batch: list[NewTask], now_ms: int, queued_tasks_max: int | None = None
    ) -> list[tuple[TaskRecord, bool]]:
        """Create every task of ``batch`` or none (SubmitError names the first offender;
        IdempotencyConflict for a key of another definition, QueueFull when the queued and
        pending tasks would pass ``queued_tasks_max``).
        Returns (record, created) per input; created is False where an idempotency key
        matched. Concurrent calls are group-committed; each batch stays all-or-none on its
        own."""
        answers = await self.submit_rows([row_of(new) for new in batch], now_ms, queued_tasks_max)
        return [
            (answer, False)
            if isinstance(answer, TaskRecord)
            else (new.created(answer[0], answer[1], now_ms), True)
            for new, answer in zip(batch, answers, strict=True)
        ]

    async def submit_rows(
        self, rows: list[SubmitRow], now_ms: int, queued_tasks_max: int | None = None
    ) -> list[SubmitAnswer]:
        """:meth:`submit` for rows (node/rows.py), answering per row (seq, status) for a created
        task or the earlier TaskRecord its idempotency key matched: the API renders its answer
        from these without building a record per created task. The limit is checked in the
        script, against what Redis holds: submitters on several nodes cannot pass it together."""
        if not rows:
            return []
        return await self._submits((rows, now_ms, queued_tasks_max))

    async def _flush_submits(
        self, calls: list[SubmitCall]
    ) -> list[list[SubmitAnswer] | BaseException]:
        # One script call per chunk of calls: the calls run in it one after the other, each
        # all-or-none on its own, which is what one script per call did, in one EVALSHA with
        # one argument. Several chunks go in one pipeline, so still one round trip, and only the
        # last rings the leader's bell (a bell per script cost the leader a drain round each;
        # should the last fail, the leader's timed drain still finds the others' tasks).
        chunks: list[list[SubmitCall]] = [[]]
        tasks = 0
        for call in calls:
            if chunks[-1] and tasks + len(call[0]) > SUBMIT_SCRIPT_TASKS_MAX:
                chunks.append([])
                tasks = 0
            chunks[-1].append(call)
            tasks += len(call[0])
        ring = "" if self.submit_rings_bell() else "quiet"
        if len(chunks) == 1:
            replies = [await self._eval("submit", _submit_args(calls), ring)]
        else:
            last = len(chunks) - 1
            replies = await self._eval_many(
                "submit",
                [[_submit_args(c), ring if i == last else "quiet"] for i, c in enumerate(chunks)],
            )
        out: list[list[SubmitAnswer] | BaseException] = []
        for chunk, reply in zip(chunks, replies, strict=True):
            if isinstance(reply, BaseException):
                out += [_fresh(_translate(reply)) for _ in chunk]
                continue
            if len(reply) != len(chunk):
                raise StoreError(f"submit answered {len(reply)} calls for {len(chunk)}")
            out += [_submit_answer(call, r) for call, r in zip(chunk, reply, strict=True)]
        return out

    async def cancel(self, task_id: str, now_ms: int) -> TaskRecord | None:
        """Any non-terminal task -> cancelled; the node running it is told on its cancel
        channel. None if unknown; unchanged if already terminal."""
        flat = await self._eval("cancel", task_id, now_ms, idempotent=True)
        return _record(flat) if flat else None

    async def retry(
        self, task_id: str, now_ms: int, queued_tasks_max: int | None = None
    ) -> tuple[TaskRecord | None, bool]:
        """dead or cancelled -> queued (pending while it waits on dependencies). Answers the
        record (None if unknown) and whether this call retried it: it is unchanged if it was not
        dead or cancelled, which is also what the loser of two concurrent retries finds. With
        ``queued_tasks_max``, QueueFull (and nothing written) when the queued and pending tasks
        are already at it, as for a submission of one task."""
        limit = -1 if queued_tasks_max is None else queued_tasks_max
        # Not resent after a lost reply: a second run would find it retried and answer "=".
        flat = await self._eval("retry", task_id, now_ms, limit)
        if not flat:
            return None, False
        if flat[0] == "!":
            raise QueueFull(int(flat[1]), 1, limit)
        if flat[0] == "=":
            return _record(flat[1:]), False
        return _record(flat), True

    async def get(self, task_id: str) -> TaskRecord | None:
        key = self.key("t", task_id)
        flat = cast(dict[str, str], await self._read(lambda: self._r.hgetall(key)))
        if not flat:
            return None
        return _record([x for kv in flat.items() for x in kv])

    async def list_tasks(
        self,
        status: Status | str | None = None,
        type: str | None = None,  # the API's filter is called type
        priority: Priority | int | None = None,
        after_seq: int = 0,
        limit: int = 100,
    ) -> tuple[list[TaskRecord], int | None]:
        """Tasks in seq order after the cursor ``after_seq``, filtered; answers the page and the
        cursor of the next one (None at the end). One call scans at most LIST_SCAN_MAX index
        entries, so a sparse filter may answer a short (even empty) page with a cursor."""
        if not 1 <= limit <= LIST_LIMIT_MAX:
            raise ValueError(f"limit must be 1..{LIST_LIMIT_MAX}")
        index = "all" if status is None else Status(status).value
        reply = await self._eval(
            "list_tasks",
            index,
            after_seq,
            limit,
            max(LIST_SCAN_MAX, limit),
            type or "",
            "" if priority is None else int(Priority(priority)),
            idempotent=True,
        )
        cursor = int(reply[0]) if reply[0] else None
        return [_record(flat) for flat in reply[1:]], cursor

    async def counts(self) -> dict[str, Any]:
        """{"queued": {"high": n, "medium": n, "low": n}, "pending": n, "running": n, ...}"""

        async def read() -> list[Any]:
            fast = self._fast
            if fast is not None:
                # GET /v1/queues is what clients poll: the lean client, as for scripts.
                commands: list[tuple[str, ...]] = [("HGETALL", self.key("qn"))]
                commands += [("ZCARD", self.key("s", status)) for status in _STATUS_INDEX]
                replies = await fast.pipeline(commands)
                for reply in replies:
                    if isinstance(reply, BaseException):
                        raise reply
                flat = replies[0]
                return [dict(zip(flat[::2], flat[1::2], strict=True)), *replies[1:]]
            async with self._r.pipeline(transaction=False) as pipe:
                pipe.hgetall(self.key("qn"))
                for status in _STATUS_INDEX:
                    pipe.zcard(self.key("s", status))
                return list(await pipe.execute())

        replies = await self._read(read)
        queued: dict[str, str] = replies[0]
        out: dict[str, Any] = {
            "queued": {p.label: int(queued.get(str(int(p)), 0)) for p in Priority}
        }
        for status, n in zip(_STATUS_INDEX, replies[1:], strict=True):
            if status != Status.QUEUED.value:
                out[status] = int(n)
        return out

    # ------------------------------------------------------------------ leader (term-fenced)
    async def epoch(self) -> int:
        key = self.key("epoch")
        value = await self._read(lambda: self._r.get(key))
        return int(value) if value else 0

    async def raise_epoch(self, term: int, holder: str = "") -> bool:
        """Store ``term`` as the fencing epoch unless a newer one is stored, or the same term
        is held by another leader (see StoreModel.raise_epoch)."""
        return bool(await self._eval("raise_epoch", term, holder, idempotent=True, lead=True))

    async def drain(self, term: int, count_max: int) -> list[TaskState] | str:
        """Pop up to ``count_max`` inbox notifications; each task's current state once."""
        reply = await self._eval("drain", term, count_max, lead=True)
        if reply == FENCED:
            return FENCED
        return _drained(reply)

    async def finish_drain(
        self, finishes: Sequence[Finish], term: int, count_max: int
    ) -> tuple[list[bool | BaseException], list[TaskState] | str]:
        """The leader's own node's finishes, then the leader's drain, in one round trip: as
        ``finish_many(finishes)`` followed by ``drain(term, count_max)`` in one atomic step
        (round.lua), so the drain sees these ends as the store applied them; no bell (the
        caller leads, and is the one who would hear it). Answers each finish's outcome (True,
        False or its ValueError) and the drain's."""
        answers, _, drained = await self.finish_apply_drain(finishes, (), "", term, count_max)
        return answers, drained

    async def finish_apply_drain(
        self,
        finishes: Sequence[Finish],
        ops: Sequence[Lease | Expire | Promote],
        direct_node: str,
        term: int,
        count_max: int,
    ) -> tuple[list[bool | BaseException], tuple[list[TaskState | str | None], list[Taken]], Any]:
        """``finish_drain`` with the leader's ops between the finishes and the drain, all in
        one atomic step (round.lua: finish, apply, drain): the leases to the slots those
        finishes free go with them. Answers the finishes' outcomes, ``apply_direct``'s answer,
        and the drain's (FENCED or states)."""
        args: list[str | int] = [len(finishes), 0]
        for f in finishes:
            args += _finish_args(f)
        apply_args = _apply_args(ops, direct_node)
        if not direct_node:
            apply_args.append("")  # round.lua's part is fixed-size: the direct node, even none
        args += apply_args
        args += [term, count_max]
        # Not resent after a broken connection: its finishes and drain are not idempotent.
        done, applied, drained = await self._eval("round", *args, lead=True)
        answers = [_finish_answer(f, a) for f, a in zip(finishes, done, strict=True)]
        return (
            answers,
            _applied(applied),
            FENCED if drained == FENCED else _drained(drained),
        )

    async def live_states_after(
        self, after_seq: int = 0, count_max: int | None = None
    ) -> list[TaskState]:
        """Live (non-terminal) tasks with seq > after_seq, in seq order, at most count_max."""
        count = -1 if count_max is None else count_max
        reply = await self._eval("live_states", after_seq, count, idempotent=True, lead=True)
        return [_state(v) for v in reply]

    async def live_states(self, chunk: int = LIVE_CHUNK_DEFAULT) -> AsyncIterator[list[TaskState]]:
        """Every live task, in seq order, ``chunk`` per round trip: a new leader's rebuild."""
        if chunk < 1:
            raise ValueError("chunk must be >= 1")
        after = 0
        while True:
            states = await self.live_states_after(after, chunk)
            if states:
                yield states
                after = states[-1].seq
            if len(states) < chunk:
                return

    async def apply(self, ops: Sequence[Lease | Expire | Promote]) -> list[TaskState | str | None]:
        """The leader's batch, in order, in one round trip and one atomic script. Each answer is
        the task's state, None (unknown task) or FENCED (a newer epoch is stored)."""
        answers, _ = await self.apply_direct(ops, "")
        return answers

    async def apply_direct(
        self, ops: Sequence[Lease | Expire | Promote], direct_node: str
    ) -> tuple[list[TaskState | str | None], list[Taken]]:
        """As :meth:`apply`; leases to ``direct_node`` (the caller's own node) skip its
        assignment list and come back as Taken, for the caller to start: no take round trip.
        A direct lease whose answer is lost (and so not started) waits out its lease and runs
        again, as an assignment popped but never answered does (StoreModel.apply)."""
        if not ops:
            return [], []
        # Idempotent: a second run finds each op done and answers the same state.
        reply = await self._eval(
            "apply", *_apply_args(ops, direct_node), idempotent=True, lead=True
        )
        return _applied(reply)

    # ------------------------------------------------------------------ workers
    async def take(self, node_id: str, timeout_s: float = 0.0) -> Taken | None:
        """This node's next current assignment, waiting up to ``timeout_s`` for one (0: do not
        wait). Stale entries (cancelled, expired, re-leased) are dropped, as in the model.

        An entry that BLPOP popped but whose answer never reached us (connection lost, caller
        cancelled) is gone: its lease expires and the leader requeues the task."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout_s
        assignments = self.key("a", node_id)
        while True:
            taken = await self.take_many(node_id, 1)
            if taken:
                return taken[0]
            remaining = deadline - loop.time()
            # BLPOP's timeout 0 means forever: never send anything that rounds to it.
            if remaining < 0.001:
                return None
            with _redis_errors():
                popped = await asyncio.wait_for(
                    self._blocking.blpop([assignments], timeout=round(remaining, 3)),
                    remaining + BLOCK_GRACE_S,
                )
            if popped is None:
                return None
            got = await self._eval("take", str(popped[1]), "check", node_id)
            if got:
                return Taken(_record(got[1:]), int(got[0]))

    async def take_many(self, node_id: str, count_max: int) -> list[Taken]:
        """Up to ``count_max`` of this node's next current assignments, in one round trip,
        without waiting: for slots that came free together. Stale entries are dropped."""
        if count_max < 1:
            raise ValueError("count_max must be >= 1")
        reply = await self._eval("take", node_id, count_max)
        return [Taken(_record(got[1:]), int(got[0])) for got in reply]

    async def heartbeat_many(self, beats: Sequence[Heartbeat]) -> list[tuple[bool, Status | None]]:
        """Extend each attempt's lease if it still holds it: (held, current status) per beat."""
        if not beats:
            return []
        args: list[str | int] = [len(beats)]
        for b in beats:
            args += [b.task_id, b.attempt, b.node_id, b.deadline_ms, b.now_ms]
        reply = await self._eval("heartbeat", *args, idempotent=True)
        return [(bool(held), Status(status) if status else None) for held, status in reply]

    async def heartbeat(self, beat: Heartbeat) -> tuple[bool, Status | None]:
        [answer] = await self.heartbeat_many([beat])
        return answer

    async def finish_many(self, finishes: Sequence[Finish]) -> list[bool]:
        """Write each attempt's end if that attempt still holds its task: True if written.
        Concurrent calls are group-committed. A finish whose status no attempt can end with
        raises ValueError if its attempt holds the task (as the model does); the other
        finishes are written all the same."""
        if not finishes:
            return []
        answers = await self._finishes(list(finishes))
        for answer in answers:
            if isinstance(answer, BaseException):
                raise answer
        return [bool(a) for a in answers]

    async def finish(self, f: Finish) -> bool:
        [ok] = await self.finish_many([f])
        return ok

    async def _flush_finishes(
        self, calls: list[list[Finish]]
    ) -> list[list[bool | BaseException] | BaseException]:
        items = [f for call in calls for f in call]
        args: list[str | int] = [len(items), 1]
        for f in items:
            args += _finish_args(f)
        reply = iter(await self._eval("finish", *args))
        return [[_finish_answer(f, next(reply)) for f in call] for call in calls]

    async def release(self, r: Release) -> bool:
        """running (this attempt, this node) -> queued: the node gives the task back unrun."""
        return bool(await self._eval("release", r.task_id, r.attempt, r.node_id, r.now_ms))

    # ------------------------------------------------------------------ housekeeping
    async def sweep(self, now_ms: int) -> int:
        """Forget terminal tasks finished more than retention_ms before ``now_ms``: hash, index
        entries and idempotency key; not those a live task depends on (StoreModel.sweep).
        Answers how many went. Runs in bounded steps."""
        cutoff = now_ms - self.retention_ms
        total = 0
        held = 0  # entries kept for a live dependant stay in the index: step over them
        while True:
            removed, kept = await self._eval(
                "sweep", cutoff, SWEEP_CHUNK_MAX, held, idempotent=True
            )
            total += int(removed)
            held += int(kept)
            if int(removed) + int(kept) < SWEEP_CHUNK_MAX:
                return total

    # ------------------------------------------------------------------ node registry
    async def register_node(self, node_id: str, info: dict[str, Any], now_ms: int) -> None:
        """Write this node's entry; ``last_seen_ms`` inside it is now_ms. Readers judge
        liveness from it (with their own clock for 'it changed')."""
        entry = dict(info)
        entry["last_seen_ms"] = now_ms
        key, text = self.key("nodes"), json.dumps(entry)
        await self._read(lambda: self._r.hset(key, node_id, text))  # idempotent

    async def unregister_node(self, node_id: str) -> None:
        key = self.key("nodes")
        await self._read(lambda: self._r.hdel(key, node_id))  # idempotent

    async def forget_nodes(self, now_ms: int, unseen_ms: int) -> list[str]:
        """Drop the registry entries (and assignment lists) of nodes not seen for
        ``unseen_ms``: a node killed without unregistering would stay listed for good, and its
        list (leases long expired and taken back) would stay in Redis. A node that comes back
        registers again. Answers the ids forgotten."""
        gone = [
            node_id
            for node_id, info in (await self.nodes()).items()
            if now_ms - int(info.get("last_seen_ms", 0)) > unseen_ms
        ]
        if gone:
            nodes_key = self.key("nodes")
            lists = [self.key("a", node_id) for node_id in gone]
            await self._read(lambda: self._r.hdel(nodes_key, *gone))  # idempotent
            await self._read(lambda: self._r.delete(*lists))  # idempotent
        return gone

    async def nodes(self) -> dict[str, dict[str, Any]]:
        key = self.key("nodes")
        raw = cast(dict[str, str], await self._read(lambda: self._r.hgetall(key)))
        out: dict[str, dict[str, Any]] = {}
        for node_id, text in sorted(raw.items()):
            with contextlib.suppress(ValueError):
                info = json.loads(text)
                if isinstance(info, dict):
                    out[node_id] = info
        return out

    # ------------------------------------------------------------------ notifications
    async def bell(self) -> AsyncIterator[int]:
        """Yields whenever a script pushed to the inbox (the count pushed). Pub/sub is lossy:
        the leader must also drain on a timer. Raises StoreUnavailable when the connection
        fails; subscribe again to resume."""
        async for data in self._subscribe(self.key("bell")):
            yield int(data) if data.isdigit() else 1

    async def cancels(self, node_id: str) -> AsyncIterator[tuple[str, int | None]]:
        """Yields (task id, attempt) of each task running on ``node_id`` that a client
        cancelled; the attempt is None from a node of an older version (id alone; an id that
        ends in ":<digits>" is then misread, and its run stops at its next refused heartbeat)."""
        async for message in self._subscribe(self.key("cancel", node_id)):
            task_id, _, attempt = message.rpartition(":")
            if task_id and attempt.isdigit():
                yield task_id, int(attempt)
            else:
                yield message, None

    subscribe_bell = bell
    subscribe_cancels = cancels

    async def _subscribe(self, channel: str) -> AsyncIterator[str]:
        pubsub = self._blocking.pubsub(ignore_subscribe_messages=True)
        try:
            with _redis_errors():
                await pubsub.subscribe(channel)
            while True:
                with _redis_errors():
                    message = await pubsub.get_message(
                        ignore_subscribe_messages=True, timeout=PUBSUB_POLL_S
                    )
                if message is not None and message.get("type") == "message":
                    yield str(message["data"])
        finally:
            with contextlib.suppress(Exception):
                await pubsub.aclose()  # type: ignore[no-untyped-call,unused-ignore]  # untyped before redis-py 8

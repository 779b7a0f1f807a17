"""RedisStore answers exactly as StoreModel does, operation after operation.

Hypothesis draws random operation sequences (submits with dependencies, delays and idempotency
keys; cancels; retries; epochs; drains; leases, expiries and promotions under various terms;
takes; heartbeats; finishes with random attempt ends; releases; sweeps; reads) biased towards
the interesting cases (the current attempt, the leasing node, the stored epoch), runs each
against the model and against the Lua scripts on a real Redis, and demands:

* identical answers after every operation (records, states, FENCED, None, refusals, errors);
* identical full state after every operation: every task record, the inbox, every node's
  assignment list, the idempotency map, seq and epoch;
* indexes that agree with the task hashes (status ZSETs, all, done, queued counters).

The simulation runs the model; this test is what makes the simulation's store the real one.
"""

from __future__ import annotations

import dataclasses
import itertools
from collections.abc import Awaitable, Callable
from typing import Any

from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from core.effects import Expire, Lease, Promote
from core.priority import Priority
from core.store_model import NewTask, StoreModel, SubmitError, Taken, TaskRecord
from core.task import TERMINAL, AttemptEnd, Status, TaskState
from core.worker import Finish, Heartbeat, Release
from node.redis_server import EmbeddedRedis
from node.store import RedisStore
from tests.node.test_store import check_indexes, snapshot

RETENTION_MS = 5_000
START_MS = 1_700_000_000_000
# Few ids, so submits collide, dependencies hit and miss, and ops find their tasks. "x:1"
# checks that the "id:attempt" assignment entries split on the last colon; "é" checks UTF-8.
IDS = ["t0", "t1", "t2", "t3", "t4", "é", "x:1"]
NODES = ["n1", "n2"]
KEYS = ["", "", "k1", "k2", "k3"]
# Two spellings of one value (key order, spacing): an idempotency key resent with either is the
# same task; 1 and 1.0 are not.
PAYLOADS = ["null", '{"a": 1}', '"ü"', "[1, 2.5]", '{"a":1,"b":[2]}', '{"b": [2], "a": 1}', "1.0"]
_prefixes = itertools.count()


# ---------------------------------------------------------------------------- normal forms
def rec(r: TaskRecord | None) -> dict[str, Any] | None:
    """A record as plain data (the model hands out live objects that later ops mutate)."""
    return None if r is None else dataclasses.asdict(r)


def answer(a: object) -> object:
    if isinstance(a, TaskRecord):
        return rec(a)
    if isinstance(a, Taken):
        return ("taken", rec(a.record), a.attempt)
    if isinstance(a, TaskState):
        return dataclasses.astuple(a)
    if isinstance(a, list):
        return [answer(x) for x in a]
    if isinstance(a, tuple):
        return tuple(answer(x) for x in a)
    return a


def error(exc: BaseException) -> tuple[str | None, ...]:
    if isinstance(exc, SubmitError):
        return (type(exc).__name__, exc.field, str(exc.index), str(exc))
    return (type(exc).__name__, str(exc))


# ---------------------------------------------------------------------------- the model's side
def model_heartbeats(model: StoreModel, beats: list[Heartbeat]) -> list[object]:
    return [
        model.heartbeat(b.task_id, b.attempt, b.node_id, b.deadline_ms, b.now_ms) for b in beats
    ]


def model_finishes(model: StoreModel, fins: list[Finish]) -> list[object]:
    return [model.finish(f.task_id, f.attempt, f.node_id, f.end, f.now_ms) for f in fins]


def model_apply(model: StoreModel, ops: list[Lease | Expire | Promote]) -> list[object]:
    out: list[object] = []
    for op in ops:
        if isinstance(op, Lease):
            out.append(model.lease(op.term, op.task_id, op.node_id, op.deadline_ms, op.now_ms))
        elif isinstance(op, Expire):
            out.append(model.expire(op.term, op.task_id, op.attempt, op.now_ms, op.target))
        else:
            out.append(model.promote(op.term, op.task_id, op.now_ms))
    return out


def model_round(
    model: StoreModel,
    fins: list[Finish],
    ops: list[Lease | Expire | Promote],
    direct: str,
    term: int,
    count: int,
) -> tuple[object, ...]:
    """What round.lua does in one step: the finishes, the ops, the drain."""
    return (model_finishes(model, fins), model.apply(ops, direct), model.drain(term, count))


def model_list(
    model: StoreModel, status: Status | None, type_: str | None, priority: Priority | None
) -> list[dict[str, Any] | None]:
    return [
        rec(r)
        for r in sorted(model.tasks.values(), key=lambda r: r.seq)
        if (status is None or r.status is status)
        and (type_ is None or r.type == type_)
        and (priority is None or r.priority == priority)
    ]


def model_counts(model: StoreModel) -> dict[str, Any]:
    out: dict[str, Any] = {"queued": {p.label: 0 for p in Priority}}
    for s in Status:
        if s is not Status.QUEUED:
            out[s.value] = 0
    for r in model.tasks.values():
        if r.status is Status.QUEUED:
            out["queued"][Priority(r.priority).label] += 1
        else:
            out[r.status.value] += 1
    return out


# ---------------------------------------------------------------------------- full state
async def assert_same_state(model: StoreModel, store: RedisStore) -> None:
    snap = await snapshot(store.redis, store.base)
    check_indexes(snap, store.base)
    base = store.base
    ids = sorted(k.removeprefix(f"{base}:t:") for k in snap if k.startswith(f"{base}:t:"))
    assert ids == sorted(model.tasks)
    for task_id in ids:
        assert rec(await store.get(task_id)) == rec(model.tasks[task_id]), task_id
    inbox = snap.get(f"{base}:inbox", ("list", []))[1]
    # An entry is an id or a snapshot "version SEP seq SEP id SEP ..." (drain.lua): the ids
    # must be the model's; what drain answers for them is compared op by op.
    assert [e.split("\x1f")[2] if "\x1f" in e else e for e in inbox] == list(model.inbox)
    for node in NODES:
        entries = snap.get(f"{base}:a:{node}", ("list", []))[1]
        assert entries == [f"{t}:{a}" for t, a in model.assignments.get(node, [])], node
    idem = snap.get(f"{base}:idem", ("hash", {}))[1]
    assert idem == model.idempotency
    assert int(snap.get(f"{base}:seq", ("string", "0"))[1]) == model.seq
    assert int(snap.get(f"{base}:epoch", ("string", "0"))[1]) == model.epoch
    assert snap.get(f"{base}:epoch:holder", ("string", ""))[1] == model.epoch_holder
    # The reads a new leader and the API rely on, over the whole state every time.
    assert answer(await store.live_states_after(0, None)) == answer(model.live_states())
    assert await store.counts() == model_counts(model)


# ---------------------------------------------------------------------------- strategies
def attempt_st(model: StoreModel, task_id: str) -> st.SearchStrategy[int]:
    r = model.tasks.get(task_id)
    current = r.attempt if r else 1
    return st.sampled_from([current, current, current, current - 1, current + 1, 0])


def node_st(model: StoreModel, task_id: str) -> st.SearchStrategy[str]:
    r = model.tasks.get(task_id)
    if r is not None and r.lease_node:
        return st.sampled_from([r.lease_node, r.lease_node, r.lease_node, *NODES])
    return st.sampled_from(NODES)


def term_st(model: StoreModel) -> st.SearchStrategy[int]:
    e = model.epoch
    return st.sampled_from([e, e, e, e + 1, max(0, e - 1), 0])


def task_id_st(model: StoreModel, *prefer: Status) -> st.SearchStrategy[str]:
    """Mostly a task in one of the ``prefer``red statuses (so the operation does something),
    else any that exists, sometimes any id or one that never exists."""
    existing = sorted(model.tasks)
    preferred = sorted(t for t, r in model.tasks.items() if r.status in prefer)
    pool = [*preferred * 6, *existing * 2, *IDS, "nope"]
    return st.sampled_from(pool)


@st.composite
def batch_st(draw: st.DrawFn, model: StoreModel, now: int) -> list[NewTask]:
    """Mostly batches that are accepted: fresh ids, dependencies on tasks that exist or come
    earlier in the batch; now and then a taken id or a missing dependency (refused whole)."""
    size = draw(st.integers(1, 3))
    batch: list[NewTask] = []
    for _ in range(size):
        fresh = f"n{model.seq + len(batch) + 1}"  # never used: ids must not run out
        free = [i for i in [*IDS, fresh] if i not in model.tasks and all(t.id != i for t in batch)]
        if free and draw(st.integers(0, 9)) < 9:
            task_id = draw(st.sampled_from(free))
        else:
            task_id = draw(st.sampled_from(IDS))
        key = draw(st.sampled_from(KEYS))
        if batch and draw(st.integers(0, 3)) == 0:
            # A key used earlier in this batch: the model skips this input's checks entirely,
            # so give it an id that may well be taken.
            key = batch[-1].idempotency_key or "k3"
            task_id = draw(st.sampled_from(IDS))
        # A resend: the definition of the task the key stands for (earlier in this batch or
        # stored), mostly as it was (answered with that task), sometimes with one field
        # changed (a conflict, refusing the batch), with a new start time either way.
        earlier: NewTask | TaskRecord | None = (
            model.tasks[model.idempotency[key]]
            if key in model.idempotency
            else next((t for t in batch if key and t.idempotency_key == key), None)
        )
        if earlier is not None and draw(st.integers(0, 2)) > 0:
            resend = NewTask(
                id=task_id,
                type=earlier.type,
                payload_json=earlier.payload_json,
                priority=earlier.priority,
                max_retries=earlier.max_retries,
                backoff_base_ms=earlier.backoff_base_ms,
                backoff_cap_ms=earlier.backoff_cap_ms,
                timeout_ms=earlier.timeout_ms,
                run_at_ms=draw(st.sampled_from([0, now + 1, earlier.run_at_ms])),
                depends_on=tuple(earlier.depends_on),
                idempotency_key=key,
            )
            change = draw(
                st.sampled_from(
                    ["", "", "", "", "payload", "type", "priority", "timeout", "deps", "cap"]
                )
            )
            if change == "payload":
                resend = dataclasses.replace(resend, payload_json=draw(st.sampled_from(PAYLOADS)))
            elif change == "type":
                resend = dataclasses.replace(resend, type="b" if earlier.type == "a" else "a")
            elif change == "priority":
                resend = dataclasses.replace(resend, priority=draw(st.sampled_from(Priority)))
            elif change == "timeout":
                resend = dataclasses.replace(resend, timeout_ms=earlier.timeout_ms + 1)
            elif change == "deps":
                resend = dataclasses.replace(resend, depends_on=(*earlier.depends_on, "t0"))
            elif change == "cap":
                resend = dataclasses.replace(resend, backoff_cap_ms=earlier.backoff_cap_ms + 1)
            batch.append(resend)
            continue
        known = sorted(model.tasks) + [t.id for t in batch]
        done = sorted(t for t, r in model.tasks.items() if r.status is Status.SUCCEEDED)
        # Mostly no dependency (queued at once, so work flows); else mostly ones that already
        # succeeded or exist, now and then one that does not (the batch is refused).
        dep_pool = [*done * 3, *known * 2, "nope"]
        deps: list[str] = []
        if draw(st.integers(0, 2)) == 0:
            deps = draw(st.lists(st.sampled_from(dep_pool), min_size=1, max_size=2))
        batch.append(
            NewTask(
                id=task_id,
                type=draw(st.sampled_from(["a", "b"])),
                payload_json=draw(st.sampled_from(PAYLOADS)),
                priority=draw(st.sampled_from(list(Priority))),
                max_retries=draw(st.integers(0, 3)),
                backoff_base_ms=draw(st.integers(0, 100)),
                backoff_cap_ms=draw(st.integers(100, 1000)),
                timeout_ms=draw(st.integers(1, 10_000)),
                run_at_ms=draw(st.sampled_from([0, 0, 0, now - 1, now, now + 1, now + 500])),
                depends_on=tuple(deps),
                idempotency_key=key,
            )
        )
    return batch


def attempt_end_st(now: int, valid_only: bool) -> st.SearchStrategy[AttemptEnd]:
    statuses = [Status.SUCCEEDED, Status.FAILED, Status.DEAD]
    if not valid_only:
        statuses += [Status.QUEUED, Status.RUNNING]
    return st.builds(
        AttemptEnd,
        status=st.sampled_from(statuses),
        failures=st.integers(0, 4),
        run_at_ms=st.sampled_from([0, now + 1, now + 300]),
        result=st.one_of(
            st.none(),
            st.integers(-5, 5),
            st.text(max_size=5),
            st.lists(st.booleans(), max_size=3),
            st.dictionaries(st.sampled_from(["k", "ü"]), st.integers(0, 9), max_size=2),
        ),
        error=st.dictionaries(
            st.sampled_from(["kind", "type", "message", "traceback"]), st.text(max_size=8)
        ),
    )


RUNNING = (Status.RUNNING,)
# The statuses in which each operation does something.
PREFER: dict[str, tuple[Status, ...]] = {
    "cancel": (Status.PENDING, Status.QUEUED, Status.RUNNING, Status.FAILED),
    "retry": (Status.DEAD, Status.DEAD, Status.CANCELLED),
    "release": RUNNING,
    "get": tuple(Status),
}
LEADER_PREFER: dict[str, tuple[Status, ...]] = {
    "lease": (Status.QUEUED,),
    "expire": RUNNING,
    "promote": (Status.PENDING, Status.FAILED),
}

OPS = [
    "submit", "submit", "submit", "cancel", "retry", "raise_epoch", "drain", "drain",
    "live_states", "apply", "apply", "apply", "apply", "take", "take", "take_many", "heartbeat",
    "heartbeat", "finish", "finish", "finish", "release", "sweep", "advance", "advance",
    "advance", "list", "counts", "get", "sweep", "due", "due", *["cycle"] * 6, "round", "round",
]  # fmt: skip


# ---------------------------------------------------------------------------- the test
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(data=st.data())
async def test_store_matches_model(redis_server: EmbeddedRedis, data: st.DataObject) -> None:
    store = await RedisStore.connect(
        redis_server.url, prefix=f"conf{next(_prefixes)}", retention_ms=RETENTION_MS
    )
    model = StoreModel(retention_ms=RETENTION_MS)
    now = START_MS

    async def check(
        label: str, store_call: Awaitable[object], model_fn: Callable[..., object], *args: object
    ) -> None:
        want, got = await both(store_call, model_fn, *args)
        assert got == want, label
        event(f"{label}: {outcome(want)}")
        await assert_same_state(model, store)

    def store_retry(task_id: str, now: int) -> Awaitable[TaskRecord | None]:
        """The store's retry, answering its record. Whether it says it retried is checked here
        against the model's state now, before both() lets the model retry."""
        before = model.tasks.get(task_id)
        retryable = before is not None and before.status in (Status.DEAD, Status.CANCELLED)

        async def run() -> TaskRecord | None:
            record, retried = await store.retry(task_id, now)
            assert retried == retryable, (task_id, before)
            return record

        return run()

    try:
        for _ in range(data.draw(st.integers(10, 60), label="steps")):
            # Start with work to do: a first submit (mostly accepted) before anything else.
            op = data.draw(st.sampled_from(OPS), label="op") if model.tasks else "submit"
            task_id = data.draw(task_id_st(model, *PREFER.get(op, ())), label="task")
            if op in ("cancel", "retry") and data.draw(st.integers(0, 3)) == 0:
                task_id = data.draw(task_id_st(model, *TERMINAL), label="terminal")
            elif op == "cancel" and data.draw(st.booleans(), label="cancel a dependency"):
                # What a dependent's promote must then notice (dependency cancelled).
                deps = sorted({d for r in model.tasks.values() for d in r.depends_on})
                task_id = data.draw(st.sampled_from([*deps, task_id]), label="dependency")
            got: object
            want: object
            if op == "advance":
                now += data.draw(st.sampled_from([1, 100, 1000, RETENTION_MS + 1]), label="dt")
                continue
            elif op == "due":
                # The leader's timers as they fire: an expired lease, a task whose run_at came.
                running = sorted(t for t, r in model.tasks.items() if r.status is Status.RUNNING)
                waiting = sorted(
                    t for t, r in model.tasks.items() if r.status in (Status.PENDING, Status.FAILED)
                )
                if not running and not waiting:
                    continue
                failed = [t for t in waiting if model.tasks[t].status is Status.FAILED]
                pool = [*running, *waiting, *failed * 3]  # failed: its retry comes due
                task_id = data.draw(st.sampled_from(pool), label="due")
                now, due_op = due(data, model, task_id, now)
                want, got = await both(store.apply([due_op]), model_apply, model, [due_op])
            elif op == "submit":
                batch = data.draw(batch_st(model, now), label="batch")
                # Now and then a backlog limit near the current backlog: at, below or just
                # above what the batch would need.
                backlog = sum(
                    1 for r in model.tasks.values() if r.status in (Status.QUEUED, Status.PENDING)
                )
                limit = data.draw(
                    st.sampled_from(
                        [None] * 5 + [0, backlog, backlog + 1, backlog + 2, backlog + 3]
                    ),
                    label="queued_tasks_max",
                )
                want, got = await both(
                    store.submit(batch, now, limit), model.submit, batch, now, limit
                )
            elif op == "cancel":
                want, got = await both(store.cancel(task_id, now), model.cancel, task_id, now)
            elif op == "retry":
                want, got = await both(store_retry(task_id, now), model.retry, task_id, now)
            elif op == "raise_epoch":
                term = data.draw(term_st(model), label="term")
                holder = data.draw(st.sampled_from(["", "n1", "n2"]), label="holder")
                want, got = await both(
                    store.raise_epoch(term, holder), model.raise_epoch, term, holder
                )
            elif op == "drain":
                term = data.draw(term_st(model), label="term")
                count = data.draw(st.integers(0, 6), label="count")
                want, got = await both(store.drain(term, count), model.drain, term, count)
            elif op == "live_states":
                after = data.draw(st.integers(0, model.seq + 1), label="after")
                count_max = data.draw(st.one_of(st.none(), st.integers(0, 4)), label="count")
                want, got = await both(
                    store.live_states_after(after, count_max), model.live_states, after, count_max
                )
            elif op == "apply":
                ops = data.draw(st.lists(leader_op_st(model, now), min_size=1, max_size=3))
                if data.draw(st.booleans(), label="direct"):
                    # Leases to one node come back to the caller instead of that node's list.
                    direct = data.draw(st.sampled_from(NODES), label="direct node")
                    want, got = await both(
                        store.apply_direct(ops, direct), model.apply, ops, direct
                    )
                else:
                    want, got = await both(store.apply(ops), model_apply, model, ops)
            elif op == "round":
                # A leader round in one script: its own node's finishes (valid ends: the model
                # stops at a ValueError), its ops (leases to its own node come back direct),
                # its drain.
                size = data.draw(st.integers(0, 3), label="finishes")
                fins = data.draw(
                    st.lists(finish_st(model, now, False), min_size=size, max_size=size)
                )
                ops = data.draw(st.lists(leader_op_st(model, now), max_size=3))
                direct = data.draw(st.sampled_from(["", *NODES]), label="direct node")
                term = data.draw(term_st(model), label="term")
                count = data.draw(st.integers(0, 6), label="count")
                want, got = await both(
                    store.finish_apply_drain(fins, ops, direct, term, count),
                    model_round,
                    model,
                    fins,
                    ops,
                    direct,
                    term,
                    count,
                )
            elif op == "cycle":
                # A whole lease as a healthy cluster runs it, each step compared: the leader
                # leases a queued task under the stored epoch, the node takes it, then beats,
                # finishes or gives it back, or goes silent; then the leader's timer for that
                # task fires (its lease expired, or its retry came due). Random ops alone
                # rarely line all of that up.
                queued = sorted(t for t, r in model.tasks.items() if r.status is Status.QUEUED)
                if not queued:
                    continue
                task_id = data.draw(st.sampled_from(queued), label="cycle task")
                node = data.draw(st.sampled_from(NODES), label="node")
                lease = Lease(model.epoch, task_id, node, now + 1000, now)
                await check("cycle lease", store.apply([lease]), model_apply, model, [lease])
                await check("cycle take", store.take(node, 0), model.take, node)
                attempt = model.tasks[task_id].attempt
                how = data.draw(st.sampled_from(["beat", "finish", "finish", "release", "lost"]))
                if how == "beat":
                    beat = Heartbeat(task_id, attempt, node, now + 2000, now)
                    await check(
                        "cycle beat", store.heartbeat_many([beat]), model_heartbeats, model, [beat]
                    )
                elif how == "finish":
                    end = data.draw(attempt_end_st(now, valid_only=True), label="end")
                    fin = Finish(task_id, attempt, node, end, now)
                    await check(
                        "cycle finish", store.finish_many([fin]), model_finishes, model, [fin]
                    )
                elif how == "release":
                    await check(
                        "cycle release",
                        store.release(Release(task_id, attempt, node, now)),
                        model.release,
                        task_id,
                        attempt,
                        node,
                        now,
                    )
                then = data.draw(st.sampled_from(["due", "due", "early", "retry", "cancel", "-"]))
                if then == "due":
                    now, due_op = due(data, model, task_id, now)
                    await check("cycle due", store.apply([due_op]), model_apply, model, [due_op])
                elif then == "early":  # the leader's timer a millisecond early: no change yet
                    early = Promote(
                        model.epoch, task_id, max(now, model.tasks[task_id].run_at_ms - 1)
                    )
                    await check("cycle early", store.apply([early]), model_apply, model, [early])
                elif then == "retry":  # by hand, if it ended dead
                    await check("cycle retry", store_retry(task_id, now), model.retry, task_id, now)
                elif then == "cancel":
                    await check(
                        "cycle cancel", store.cancel(task_id, now), model.cancel, task_id, now
                    )
                continue
            elif op == "take":
                node = data.draw(st.sampled_from(NODES), label="node")
                want, got = await both(store.take(node, 0), model.take, node)
            elif op == "take_many":
                node = data.draw(st.sampled_from(NODES), label="node")
                count = data.draw(st.integers(1, 4), label="count")
                want, got = await both(store.take_many(node, count), model.take_many, node, count)
            elif op == "heartbeat":
                beats = data.draw(st.lists(heartbeat_st(model, now), min_size=1, max_size=3))
                want, got = await both(store.heartbeat_many(beats), model_heartbeats, model, beats)
            elif op == "finish":
                # Several finishes per call only with valid ends: the model stops at the first
                # ValueError while the store (group-committed) writes the others.
                size = data.draw(st.integers(1, 3), label="finishes")
                fins = data.draw(
                    st.lists(finish_st(model, now, size == 1), min_size=size, max_size=size)
                )
                want, got = await both(store.finish_many(fins), model_finishes, model, fins)
            elif op == "release":
                r = Release(
                    task_id,
                    data.draw(attempt_st(model, task_id), label="attempt"),
                    data.draw(node_st(model, task_id), label="node"),
                    now,
                )
                want, got = await both(
                    store.release(r), model.release, r.task_id, r.attempt, r.node_id, r.now_ms
                )
            elif op == "sweep":
                # Often just past some task's retention: the boundary is where bugs hide.
                if data.draw(st.booleans(), label="to retention"):
                    ends = sorted(r.finished_ms for r in model.tasks.values() if r.finished_ms)
                    if ends:
                        at = data.draw(st.sampled_from(ends)) + RETENTION_MS
                        now = max(now, at + data.draw(st.sampled_from([0, -1])))
                want, got = await both(store.sweep(now), model.sweep, now)
            elif op == "list":
                status = data.draw(st.one_of(st.none(), st.sampled_from(list(Status))))
                type_ = data.draw(st.sampled_from([None, "a", "b"]))
                priority = data.draw(st.one_of(st.none(), st.sampled_from(list(Priority))))
                limit = data.draw(st.integers(1, 4), label="limit")
                want = model_list(model, status, type_, priority)
                got = await list_all(store, status, type_, priority, limit)
            elif op == "counts":
                want, got = model_counts(model), await store.counts()
            else:
                want, got = rec(model.tasks.get(task_id)), rec(await store.get(task_id))
            assert got == want, op
            event(f"{op}: {outcome(want)}")  # --hypothesis-show-statistics: what was reached
            await assert_same_state(model, store)
    finally:
        keys = [k async for k in store.redis.scan_iter(match=f"{store.base}:*", count=1000)]
        if keys:
            await store.redis.delete(*keys)
        await store.close()


def due(
    data: st.DataObject, model: StoreModel, task_id: str, now: int
) -> tuple[int, Lease | Expire | Promote]:
    """The op the leader's timer for ``task_id`` makes when it fires, and the time it fires:
    time moves to the lease's deadline or the run_at (never back)."""
    r = model.tasks[task_id]
    if r.status is Status.RUNNING:
        now = max(now, r.lease_deadline_ms)
        target = data.draw(st.sampled_from([Status.QUEUED, Status.DEAD]), label="target")
        return now, Expire(model.epoch, task_id, r.attempt, now, target)
    return max(now, r.run_at_ms), Promote(model.epoch, task_id, max(now, r.run_at_ms))


def outcome(a: object) -> str:
    """A coarse label of an answer, to see which branches the examples reach."""
    if isinstance(a, tuple) and a and isinstance(a[0], str) and a[0].endswith("Error"):
        return a[0]
    if isinstance(a, list):
        return "empty" if not a else "+".join(sorted({outcome(x) for x in a}))
    if isinstance(a, dict):
        status = a.get("status")
        return status.value if isinstance(status, Status) else "counts"
    if isinstance(a, tuple) and a and a[0] == "taken":
        return "taken"
    if isinstance(a, tuple) and len(a) == 13:  # a TaskState
        return str(a[4].value)
    if isinstance(a, tuple) and len(a) == 2 and isinstance(a[0], dict):
        return outcome(a[0]) + ("/new" if a[1] else "/idem")
    if isinstance(a, tuple):
        return str(a[0])
    return str(a)


async def both(
    store_call: Awaitable[object], model_fn: Callable[..., object], *args: object
) -> tuple[object, object]:
    """Run the model's ``model_fn(*args)`` and await the store's call; each answer or error in
    normal form (the model's first: the store's coroutine has not started yet)."""
    try:
        want: object = answer(model_fn(*args))
    except (SubmitError, ValueError) as exc:
        want = error(exc)
    try:
        got: object = answer(await store_call)
    except (SubmitError, ValueError) as exc:
        got = error(exc)
    return want, got


async def list_all(
    store: RedisStore,
    status: Status | None,
    type_: str | None,
    priority: Priority | None,
    limit: int,
) -> list[dict[str, Any] | None]:
    """Follow list_tasks' cursor to the end: pages must join into the whole listing."""
    out: list[dict[str, Any] | None] = []
    cursor: int | None = 0
    while cursor is not None:
        page, cursor = await store.list_tasks(status, type_, priority, cursor, limit)
        # Far fewer tasks than one call scans: every page but the last is full.
        assert len(page) == limit or (cursor is None and len(page) < limit)
        out += [rec(r) for r in page]
    return out


@st.composite
def leader_op_st(draw: st.DrawFn, model: StoreModel, now: int) -> Lease | Expire | Promote:
    kind = draw(st.sampled_from(["lease", "lease", "expire", "expire", "promote", "promote"]))
    task_id = draw(task_id_st(model, *LEADER_PREFER[kind]))
    term = draw(term_st(model))
    at = now + draw(st.sampled_from([0, 0, -1, 1, 50]))
    if kind == "lease":
        deadline = now + draw(st.sampled_from([0, 10, 100, 2000]))
        return Lease(term, task_id, draw(st.sampled_from(NODES)), deadline, at)
    if kind == "expire":
        # Mostly valid targets; sometimes one the model refuses with ValueError.
        target = draw(st.sampled_from([Status.QUEUED] * 4 + [Status.DEAD] * 3 + [Status.FAILED]))
        r = model.tasks.get(task_id)
        if r is not None and r.lease_deadline_ms and draw(st.booleans()):
            # Right at the lease's deadline, or a millisecond either side of it.
            at = r.lease_deadline_ms + draw(st.sampled_from([0, 0, -1, 1]))
        return Expire(term, task_id, draw(attempt_st(model, task_id)), at, target)
    if draw(st.booleans()):
        # One that waits on dependencies, or on its run_at: at it or just before it.
        waiting = sorted(t for t, r in model.tasks.items() if r.depends_on or r.run_at_ms > now)
        task_id = draw(st.sampled_from([*waiting, task_id]))
        r = model.tasks.get(task_id)
        if r is not None and r.run_at_ms > now and draw(st.booleans()):
            at = r.run_at_ms + draw(st.sampled_from([-1, 0]))
    return Promote(term, task_id, at)


@st.composite
def heartbeat_st(draw: st.DrawFn, model: StoreModel, now: int) -> Heartbeat:
    task_id = draw(task_id_st(model, *RUNNING))
    deadline = now + draw(st.sampled_from([-100, 0, 100, 3000]))
    return Heartbeat(
        task_id, draw(attempt_st(model, task_id)), draw(node_st(model, task_id)), deadline, now
    )


@st.composite
def finish_st(draw: st.DrawFn, model: StoreModel, now: int, may_be_invalid: bool) -> Finish:
    task_id = draw(task_id_st(model, *RUNNING))
    end = draw(attempt_end_st(now, valid_only=not may_be_invalid))
    return Finish(
        task_id, draw(attempt_st(model, task_id)), draw(node_st(model, task_id)), end, now
    )

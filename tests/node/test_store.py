"""RedisStore on a real Redis: every operation and its refusals, atomicity, group commit,
durability across restarts and kill -9, NOSCRIPT recovery, retention, and properties of the
scripts' indexes. (Answer-for-answer agreement with StoreModel: test_store_conformance.py.)"""

from __future__ import annotations

import asyncio
import itertools
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
import redis.asyncio as aioredis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from core.effects import Expire, Lease, Promote
from core.priority import Priority
from core.store_model import (
    FENCED,
    IdempotencyConflict,
    NewTask,
    QueueFull,
    StoreModel,
    SubmitError,
)
from core.task import AttemptEnd, Status, TaskState
from core.worker import Finish, Heartbeat, Release
from node.redis_server import EmbeddedRedis
from node.store import RedisStore, StoreUnavailable, _state
from tests.conftest import RedisFactory, WaitUntil

NOW = 1_700_000_000_000
_prefixes = itertools.count()


# ---------------------------------------------------------------------------- helpers
async def snapshot(r: aioredis.Redis, base: str) -> dict[str, Any]:
    """Every key of one store's layout with its type and full contents."""
    keys = sorted([k async for k in r.scan_iter(match=f"{base}:*", count=1000)])
    async with r.pipeline(transaction=False) as pipe:
        for key in keys:
            pipe.type(key)
        types = await pipe.execute()
    async with r.pipeline(transaction=False) as pipe:
        for key, kind in zip(keys, types, strict=True):
            if kind == "string":
                pipe.get(key)
            elif kind == "hash":
                pipe.hgetall(key)
            elif kind == "list":
                pipe.lrange(key, 0, -1)
            elif kind == "zset":
                pipe.zrange(key, 0, -1, withscores=True)
            elif kind == "set":
                pipe.smembers(key)
            else:
                raise AssertionError(f"unexpected {kind} key {key}")
        values = await pipe.execute()
    return dict(zip(keys, zip(types, values, strict=True), strict=True))


def check_indexes(snap: dict[str, Any], base: str) -> None:
    """The scripts' indexes agree with the task hashes: status ZSETs, all, done, qn."""
    tasks = {
        key.removeprefix(f"{base}:t:"): value
        for key, (_, value) in snap.items()
        if key.startswith(f"{base}:t:")
    }

    def zset(name: str) -> dict[str, float]:
        entry = snap.get(f"{base}:{name}")
        return dict(entry[1]) if entry else {}

    assert zset("all") == {i: float(h["seq"]) for i, h in tasks.items()}
    for status in Status:
        expect = {i: float(h["seq"]) for i, h in tasks.items() if h["status"] == status.value}
        assert zset(f"s:{status.value}") == expect, status
    terminal = {
        i: float(h["finished_ms"]) for i, h in tasks.items() if Status(h["status"]).terminal
    }
    assert zset("done") == terminal
    qn = snap.get(f"{base}:qn", ("hash", {}))[1]
    for p in Priority:
        expect_n = sum(
            1 for h in tasks.values() if h["status"] == "queued" and h["priority"] == str(int(p))
        )
        assert int(qn.get(str(int(p)), 0)) == expect_n
    idem = snap.get(f"{base}:idem", ("hash", {}))[1]
    assert idem == {h["idempotency_key"]: i for i, h in tasks.items() if h.get("idempotency_key")}
    # Reverse dependencies: every existing task's set names exactly the tasks that depend on it.
    # Only those submitted after it: an id swept and then submitted anew (tests reuse ids; the
    # API makes uuids) is another task, which the earlier dependants never named.
    dependants: dict[str, set[str]] = {}
    for i, h in tasks.items():
        for dep in json.loads(h.get("depends_on", "[]")):
            if dep in tasks and int(tasks[dep]["seq"]) < int(h["seq"]):
                dependants.setdefault(dep, set()).add(i)
    rd = {
        key.removeprefix(f"{base}:rd:"): set(value)
        for key, (_, value) in snap.items()
        if key.startswith(f"{base}:rd:")
    }
    assert rd == dependants


def new(task_id: str, **kw: Any) -> NewTask:
    return NewTask(id=task_id, type=kw.pop("type", "echo"), **kw)


def finish(task_id: str, attempt: int, node: str, status: Status, **kw: Any) -> Finish:
    return Finish(task_id, attempt, node, AttemptEnd(status, **kw), NOW + 10)


async def leased(store: RedisStore, task_id: str, node: str = "n1", term: int = 1) -> int:
    """Submit, raise the epoch, lease to ``node``: answers the attempt."""
    if await store.get(task_id) is None:
        await store.submit([new(task_id)], NOW)
    assert await store.raise_epoch(term)
    [state] = await store.apply([Lease(term, task_id, node, NOW + 1000, NOW)])
    assert not isinstance(state, str) and state is not None
    assert state.status is Status.RUNNING
    return state.attempt


# ---------------------------------------------------------------------------- submit
async def test_submit_creates_task_with_every_field_and_index(store: RedisStore) -> None:
    t = new(
        "a",
        payload_json='{"x": "é"}',
        priority=Priority.HIGH,
        max_retries=5,
        backoff_base_ms=7,
        backoff_cap_ms=70,
        timeout_ms=900,
        idempotency_key="key-a",
    )
    [(record, created)] = await store.submit([t], NOW)
    assert created and record.seq == 1 and record.status is Status.QUEUED
    assert await store.get("a") == record
    assert record.payload_json == '{"x": "é"}' and record.priority is Priority.HIGH
    snap = await snapshot(store.redis, store.base)
    # The inbox entry is a snapshot of the state as written: version, seq, then the state.
    kind, [entry] = snap["{ds}:inbox"]
    version, seq, *fields = entry.split("\x1f")
    assert kind == "list" and (version, seq) == ("1", "1")
    assert _state(fields) == record.state()
    assert snap["{ds}:seq"] == ("string", "1")
    check_indexes(snap, store.base)
    assert (await store.counts())["queued"] == {"high": 1, "medium": 0, "low": 0}


# What submit writes of a task: only the fields that do not hold their default.
_SUBMITTED_FIELDS = {
    "id", "type", "payload_json", "priority", "seq", "status", "max_retries",
    "backoff_base_ms", "backoff_cap_ms", "timeout_ms", "run_at_ms", "created_ms", "updated_ms",
    "version",
}  # fmt: skip
# The defaults the hash leaves out, as the full hash of earlier versions stored them.
_DEFAULT_FIELDS = {
    "attempt": "0", "failures": "0", "lease_expiries": "0", "started_ms": "0",
    "finished_ms": "0", "lease_node": "", "lease_deadline_ms": "0", "result_json": "",
    "error": "{}", "depends_on": "[]", "idempotency_key": "",
}  # fmt: skip


async def test_submit_leaves_default_fields_out_of_the_hash(store: RedisStore) -> None:
    await store.submit([new("a"), new("b", depends_on=("a",), idempotency_key="k")], NOW)
    assert set(await store.redis.hkeys(store.key("t", "a"))) == _SUBMITTED_FIELDS
    assert set(await store.redis.hkeys(store.key("t", "b"))) == _SUBMITTED_FIELDS | {
        "depends_on",
        "idempotency_key",
        "idem_def",
    }


async def test_a_full_hash_and_a_slim_one_read_and_change_alike(redis_url: str) -> None:
    # Tasks stored with every field (earlier versions) and without the defaults answer the
    # same to every read and to every change, as the model does.
    async def run(fill: bool) -> list[object]:
        s = await RedisStore.connect(redis_url, prefix=f"fill{int(fill)}")
        try:
            await s.submit([new("a"), new("b", depends_on=("a",)), new("c")], NOW)
            if fill:
                for task_id in ("a", "b", "c"):
                    for field, value in _DEFAULT_FIELDS.items():
                        await s.redis.hsetnx(s.key("t", task_id), field, value)
                assert await s.redis.hlen(s.key("t", "a")) == 25
            out: list[object] = [await s.get(t) for t in ("a", "b", "c")]
            assert await s.raise_epoch(1)
            out.append(await s.drain(1, 10))
            out.append([x async for x in s.live_states()])
            out.append(await s.apply([Lease(1, "a", "n1", NOW + 1000, NOW)]))
            out.append(await s.take("n1"))
            out.append(await s.heartbeat(Heartbeat("a", 1, "n1", NOW + 2000, NOW + 1)))
            out.append(
                await s.finish(
                    finish("a", 1, "n1", Status.SUCCEEDED, failures=0, run_at_ms=0, result=[1])
                )
            )
            out.append(await s.apply([Promote(1, "b", NOW + 20)]))
            out.append(await s.cancel("c", NOW + 30))
            out.append(await s.retry("c", NOW + 40))
            out.append(await s.list_tasks())
            out.append(await s.counts())
            check_indexes(await snapshot(s.redis, s.base), s.base)
            return out
        finally:
            await s.close()

    slim, full = await run(False), await run(True)
    assert slim == full
    model = StoreModel()
    model.submit([new("a"), new("b", depends_on=("a",)), new("c")], NOW)
    assert slim[:3] == [model.tasks[t] for t in ("a", "b", "c")]


async def test_submit_pending_for_delay_and_unfinished_dependency(store: RedisStore) -> None:
    out = await store.submit(
        [new("a"), new("b", depends_on=("a",)), new("c", run_at_ms=NOW + 1)], NOW
    )
    assert [(r.id, r.status, r.seq) for r, _ in out] == [
        ("a", Status.QUEUED, 1),
        ("b", Status.PENDING, 2),
        ("c", Status.PENDING, 3),
    ]


@pytest.mark.parametrize(
    ("batch", "field", "index"),
    [
        ([new("a"), new("b", depends_on=("zz",))], "depends_on", 1),
        ([new("a"), new("a")], "id", 1),
        ([new("x"), new("dup")], "id", 1),  # "dup" exists already
        ([new("b", depends_on=("c",)), new("c")], "depends_on", 0),  # only earlier batch ids
    ],
)
async def test_refused_batch_leaves_nothing_behind(
    store: RedisStore, batch: list[NewTask], field: str, index: int
) -> None:
    await store.submit([new("dup", idempotency_key="k")], NOW)
    before = await snapshot(store.redis, store.base)
    with pytest.raises(SubmitError) as refused:
        await store.submit(batch, NOW)
    assert (refused.value.field, refused.value.index) == (field, index)
    assert await snapshot(store.redis, store.base) == before
    # The model refuses the same batch with the same words.
    model = StoreModel()
    model.submit([new("dup", idempotency_key="k")], NOW)
    with pytest.raises(SubmitError) as expected:
        model.submit(batch, NOW)
    assert str(refused.value) == str(expected.value)


async def test_idempotency_key_answers_the_earlier_task(store: RedisStore) -> None:
    [(first, created)] = await store.submit([new("a", idempotency_key="k")], NOW)
    assert created
    # Same key, another id: the earlier task, not created; the id is not even checked.
    out = await store.submit([new("b", idempotency_key="k"), new("c", idempotency_key="k2")], NOW)
    assert [(r.id, c) for r, c in out] == [("a", False), ("c", True)]
    assert out[0][0] == first
    # Two inputs with one new key in one batch: the second answers the first's task.
    out = await store.submit([new("d", idempotency_key="k3"), new("e", idempotency_key="k3")], NOW)
    assert [(r.id, c) for r, c in out] == [("d", True), ("d", False)]
    assert await store.get("b") is None and await store.get("e") is None
    assert (await store.redis.get(store.key("seq"))) == "3"


async def test_idempotency_key_with_another_definition_is_refused(store: RedisStore) -> None:
    [(first, _)] = await store.submit(
        [new("a", payload_json='{"x": 1, "y": [2]}', idempotency_key="k")], NOW
    )
    # The same task: payload keys in another order and spacing, another start time.
    again = new("b", payload_json='{"y":[2],"x":1}', run_at_ms=NOW + 5, idempotency_key="k")
    assert await store.submit([again], NOW + 1) == [(first, False)]
    before = await snapshot(store.redis, store.base)
    changes: list[dict[str, Any]] = [
        {"payload_json": '{"x": 1, "y": [3]}'},
        {"payload_json": '{"x": 1.0, "y": [2]}'},
        {"type": "noop"},
        {"priority": Priority.HIGH},
        {"max_retries": 4},
        {"timeout_ms": 1},
        {"backoff_base_ms": 1},
        {"backoff_cap_ms": 1},
        {"depends_on": ("a",)},
    ]
    for change in changes:
        kw = {"payload_json": '{"x": 1, "y": [2]}', **change}
        # A new task first in the batch: refused with the conflict, so not written either.
        batch = [new("fresh"), new("c", idempotency_key="k", **kw)]
        with pytest.raises(IdempotencyConflict) as refused:
            await store.submit(batch, NOW)
        assert (refused.value.field, refused.value.index) == ("idempotency_key", 1), change
        assert refused.value.task_id == "a"
        assert await snapshot(store.redis, store.base) == before, change
        model = StoreModel()
        model.submit([new("a", payload_json='{"x": 1, "y": [2]}', idempotency_key="k")], NOW)
        with pytest.raises(IdempotencyConflict) as expected:
            model.submit(batch, NOW)
        assert str(refused.value) == str(expected.value)


async def test_idempotency_conflict_inside_one_batch_and_across_calls(store: RedisStore) -> None:
    # Two inputs with one new key in one batch must be one task too.
    with pytest.raises(IdempotencyConflict) as refused:
        await store.submit(
            [new("a", idempotency_key="k"), new("b", idempotency_key="k", max_retries=0)], NOW
        )
    assert refused.value.index == 1 and refused.value.task_id == "a"
    assert await store.get("a") is None
    # In one flush: the first call makes the key, the second conflicts with it, the third
    # resends it right; each call on its own.
    results = await asyncio.gather(
        store.submit([new("c", idempotency_key="j")], NOW),
        store.submit([new("d"), new("e", idempotency_key="j", type="noop")], NOW),
        store.submit([new("f", idempotency_key="j")], NOW),
        return_exceptions=True,
    )
    assert not isinstance(results[0], BaseException) and results[0][0][0].id == "c"
    assert isinstance(results[1], IdempotencyConflict) and results[1].task_id == "c"
    assert not isinstance(results[2], BaseException) and results[2] == [(results[0][0][0], False)]
    assert await store.get("d") is None
    check_indexes(await snapshot(store.redis, store.base), store.base)


async def test_a_task_stored_without_a_definition_matches_any_resend(store: RedisStore) -> None:
    # Tasks written before definitions were stored: a resend is answered as it used to be.
    [(first, _)] = await store.submit([new("a", idempotency_key="k")], NOW)
    await store.redis.hdel(store.key("t", "a"), "idem_def")
    assert await store.submit([new("b", type="noop", idempotency_key="k")], NOW) == [(first, False)]


async def test_queued_tasks_max_refuses_a_batch_over_the_backlog(store: RedisStore) -> None:
    # queued + pending count; running and terminal tasks do not.
    await store.submit([new("q1"), new("p1", run_at_ms=NOW + 1000)], NOW, 3)
    before = await snapshot(store.redis, store.base)
    with pytest.raises(QueueFull) as refused:
        await store.submit([new("x1"), new("x2")], NOW, 3)
    assert refused.value.field is None and refused.value.index is None
    assert (refused.value.backlog, refused.value.created, refused.value.limit) == (2, 2, 3)
    assert "queue is full" in str(refused.value)
    assert await snapshot(store.redis, store.base) == before  # nothing written, not even seq
    # Up to the limit exactly; a resend of a key at the limit creates nothing and passes.
    [(k, _)] = await store.submit([new("k1", idempotency_key="k")], NOW, 3)
    assert await store.submit([new("k2", idempotency_key="k")], NOW, 3) == [(k, False)]
    with pytest.raises(QueueFull):
        await store.submit([new("x3")], NOW, 3)
    # A refusal that names an input comes first: it tells what to fix.
    with pytest.raises(SubmitError) as named:
        await store.submit([new("x4", depends_on=("missing",))], NOW, 3)
    assert named.value.field == "depends_on"
    await leased(store, "q1")  # running: out of the backlog
    [(r, created)] = await store.submit([new("x5")], NOW, 3)
    assert created and r.seq == 4
    assert await store.submit([new("x6")], NOW) != []  # no limit given: none applies
    check_indexes(await snapshot(store.redis, store.base), store.base)


async def test_queued_tasks_max_holds_for_concurrent_submitters_of_several_nodes(
    redis_url: str,
) -> None:
    # Three stores are three nodes' connections; 3 x 40 single submits race for 50 places.
    stores = [await RedisStore.connect(redis_url) for _ in range(3)]
    try:
        results = await asyncio.gather(
            *(
                s.submit([new(f"n{n}-{i}")], NOW, 50)
                for n, s in enumerate(stores)
                for i in range(40)
            ),
            return_exceptions=True,
        )
        accepted = [r for r in results if not isinstance(r, BaseException)]
        refused = [r for r in results if isinstance(r, BaseException)]
        assert len(accepted) == 50 and all(isinstance(r, QueueFull) for r in refused)
        assert await stores[0].redis.zcard(stores[0].key("s", "queued")) == 50
        assert await stores[0].redis.get(stores[0].key("seq")) == "50"
        check_indexes(await snapshot(stores[0].redis, stores[0].base), stores[0].base)
    finally:
        for s in stores:
            await s.close()


async def test_group_commit_200_concurrent_submits(store: RedisStore) -> None:
    flushes_before = store._submits.flushes
    results = await asyncio.gather(*(store.submit([new(f"t{i}")], NOW + i) for i in range(200)))
    records = [r for [(r, created)] in results if created]
    assert len(records) == 200
    assert sorted(r.seq for r in records) == list(range(1, 201))
    # Coalesced: far fewer round trips than calls.
    assert store._submits.flushes - flushes_before < 200
    for r in records:
        assert await store.get(r.id) == r


async def test_group_commit_keeps_each_batch_all_or_none(store: RedisStore) -> None:
    calls = [
        store.submit([new(f"ok{i}"), new(f"ok{i}b", depends_on=(f"ok{i}",))], NOW)
        if i % 3
        else store.submit([new(f"bad{i}"), new(f"bad{i}b", depends_on=("missing",))], NOW)
        for i in range(30)
    ]
    results = await asyncio.gather(*calls, return_exceptions=True)
    for i, result in enumerate(results):
        if i % 3:
            assert not isinstance(result, BaseException)
            assert [r.id for r, _ in result] == [f"ok{i}", f"ok{i}b"]
        else:
            assert isinstance(result, SubmitError) and result.index == 1
            assert await store.get(f"bad{i}") is None
    check_indexes(await snapshot(store.redis, store.base), store.base)


async def test_group_commit_bounds_one_flush(redis_url: str) -> None:
    s = await RedisStore.connect(redis_url, group_commit_max=10)
    try:
        await asyncio.gather(*(s.submit([new(f"t{i}")], NOW) for i in range(50)))
        assert s._submits.flushes >= 5  # at most 10 tasks per round trip
        [(big, _)] = (await s.submit([new(f"big{i}") for i in range(25)], NOW))[:1]
        assert big.seq == 51  # a batch above the bound still goes, alone
    finally:
        await s.close()


# ---------------------------------------------------------------------------- cancel / retry
async def cancel_listener(
    store: RedisStore, node: str
) -> tuple[AsyncIterator[tuple[str, int | None]], asyncio.Future[tuple[str, int | None]]]:
    """``node``'s cancel channel, and a future of its first message, subscribed before this
    returns (Redis counts the subscriber): a cancel sent next is heard."""
    cancels = store.cancels(node)
    first = asyncio.ensure_future(anext(cancels))
    channel = store.key("cancel", node)
    for _ in range(500):
        if (await store.redis.pubsub_numsub(channel))[0][1]:
            break
        await asyncio.sleep(0.01)
    return cancels, first


async def test_cancel_queued_running_terminal_unknown(store: RedisStore) -> None:
    await store.submit([new("q"), new("r")], NOW)
    attempt = await leased(store, "r")
    cancels, listener = await cancel_listener(store, "n1")
    q = await store.cancel("q", NOW + 5)
    assert q is not None and q.status is Status.CANCELLED and q.finished_ms == NOW + 5
    assert q.error == {"kind": "cancelled", "type": "Cancelled", "message": "cancelled"}
    r = await store.cancel("r", NOW + 6)
    assert r is not None and r.status is Status.CANCELLED and r.lease_node == ""
    assert await asyncio.wait_for(listener, 5) == ("r", attempt)
    await cancels.aclose()
    # The running attempt learns at its heartbeat too, and cannot finish any more.
    assert await store.heartbeat(Heartbeat("r", attempt, "n1", NOW + 9000, NOW + 7)) == (
        False,
        Status.CANCELLED,
    )
    assert not await store.finish(finish("r", attempt, "n1", Status.SUCCEEDED, failures=0))
    again = await store.cancel("r", NOW + 8)
    assert again == r  # terminal: unchanged
    assert await store.cancel("nope", NOW) is None
    check_indexes(await snapshot(store.redis, store.base), store.base)


async def test_the_cancel_channel_names_the_attempt_and_reads_an_id_alone(
    store: RedisStore,
) -> None:
    # The attempt lets the node stop that run only: a later attempt of the task (retried by
    # hand, leased to the same node before it read this) runs on. A message of an older node
    # version carries the id alone (one ending in ":<digits>" is then misread, and that run
    # stops at its next refused heartbeat instead).
    attempt = await leased(store, "x:1")
    cancels, first = await cancel_listener(store, "n1")
    await store.cancel("x:1", NOW + 1)
    assert await asyncio.wait_for(first, 5) == ("x:1", attempt)
    second = asyncio.ensure_future(anext(cancels))
    await store.redis.publish(store.key("cancel", "n1"), "y")
    assert await asyncio.wait_for(second, 5) == ("y", None)
    await cancels.aclose()


async def test_retry_dead_or_cancelled_only(store: RedisStore) -> None:
    await store.submit([new("a"), new("b", depends_on=("a",)), new("c")], NOW)
    await store.cancel("b", NOW + 1)
    b, retried = await store.retry("b", NOW + 2)
    assert retried and b is not None and b.status is Status.PENDING  # "a" has not succeeded
    assert b.error == {} and b.finished_ms == 0
    attempt = await leased(store, "a")
    assert await store.finish(
        finish("a", attempt, "n1", Status.DEAD, failures=4, error={"kind": "error"})
    )
    a, retried = await store.retry("a", NOW + 3)
    assert retried and a is not None and a.status is Status.QUEUED
    assert (a.failures, a.lease_expiries, a.run_at_ms, a.error) == (0, 0, 0, {})
    c, retried = await store.retry("c", NOW + 4)  # queued: unchanged
    assert not retried and c is not None and c.status is Status.QUEUED and c.version == 1
    assert await store.retry("nope", NOW) == (None, False)
    # Retried once: a second retry finds it queued, as the loser of a race would.
    assert (await store.retry("a", NOW + 5))[1] is False
    check_indexes(await snapshot(store.redis, store.base), store.base)


# ---------------------------------------------------------------------------- leader, fencing
async def test_two_leaders_of_one_term_the_first_keeps_it(store: RedisStore) -> None:
    # A member restarted fast enough can vote twice in a term (Raft state is in memory).
    assert await store.raise_epoch(6, "n1")
    assert await store.raise_epoch(6, "n1")  # the same leader again: fine
    assert not await store.raise_epoch(6, "n2")
    assert await store.raise_epoch(7, "n2")
    assert not await store.raise_epoch(7, "n1")
    assert await store.epoch() == 7


async def test_raise_epoch_and_every_leader_op_is_fenced(store: RedisStore) -> None:
    await store.submit([new("a"), new("p", run_at_ms=NOW + 5)], NOW)
    assert await store.raise_epoch(5)
    assert await store.raise_epoch(5)  # equal: still this leader
    assert not await store.raise_epoch(4)
    assert await store.epoch() == 5
    before = await snapshot(store.redis, store.base)
    assert await store.drain(4, 10) == FENCED
    answers = await store.apply(
        [
            Lease(4, "a", "n1", NOW + 100, NOW),
            Expire(4, "a", 1, NOW, Status.QUEUED),
            Promote(4, "p", NOW + 10),
        ]
    )
    assert answers == [FENCED, FENCED, FENCED]
    assert await snapshot(store.redis, store.base) == before  # no side effects at all
    drained = await store.drain(5, 10)
    assert isinstance(drained, list) and [s.id for s in drained] == ["a", "p"]


async def test_drain_dedups_and_skips_forgotten_tasks(store: RedisStore) -> None:
    await store.submit([new("a"), new("b")], NOW)
    await store.cancel("a", NOW)
    assert await store.drain(0, 0) == []
    first = await store.drain(0, 2)
    assert isinstance(first, list) and [(s.id, s.status) for s in first] == [
        ("a", Status.CANCELLED),
        ("b", Status.QUEUED),
    ]
    rest = await store.drain(0, 10)
    assert isinstance(rest, list) and [s.id for s in rest] == ["a"]
    await store.redis.rpush(store.key("inbox"), "gone")
    assert await store.drain(0, 10) == []


async def test_drain_answers_a_snapshot_only_while_it_is_current(store: RedisStore) -> None:
    # A task re-created under the same id has version 1 again: its seq tells it apart.
    await store.submit([new("a")], NOW)
    await store.redis.delete(store.key("t", "a"))
    [(again, created)] = await store.submit([new("a", priority=Priority.LOW)], NOW + 1)
    assert created and again.seq == 2
    drained = await store.drain(0, 10)
    assert drained == [again.state()]
    # A field holding the separator: the entry is the bare id, and the state is read.
    [(odd, _)] = await store.submit([new("b", type="we\x1fird")], NOW)
    entries = await store.redis.lrange(store.key("inbox"), 0, -1)
    assert entries == ["b"]
    assert await store.drain(0, 10) == [odd.state()]


async def test_lease_expire_and_promote(store: RedisStore) -> None:
    await store.submit(
        [new("a"), new("b", depends_on=("a",)), new("late", run_at_ms=NOW + 50)], NOW
    )
    assert await store.raise_epoch(1)
    leased_a, missing, not_queued = await store.apply(
        [
            Lease(1, "a", "n1", NOW + 100, NOW),
            Lease(1, "zz", "n1", NOW + 100, NOW),
            Lease(1, "late", "n1", NOW + 100, NOW),
        ]
    )
    assert missing is None
    assert not isinstance(leased_a, str) and leased_a is not None
    assert (leased_a.status, leased_a.attempt, leased_a.lease_node) == (Status.RUNNING, 1, "n1")
    assert not isinstance(not_queued, str) and not_queued is not None
    assert not_queued.status is Status.PENDING
    assert await store.redis.lrange(store.key("a", "n1"), 0, -1) == ["a:1"]
    # Before the deadline, or for another attempt: unchanged.
    early, other = await store.apply(
        [Expire(1, "a", 1, NOW + 99, Status.QUEUED), Expire(1, "a", 2, NOW + 200, Status.QUEUED)]
    )
    assert isinstance(early, type(leased_a)) and early == leased_a
    assert other == leased_a
    [expired] = await store.apply([Expire(1, "a", 1, NOW + 100, Status.QUEUED)])
    assert not isinstance(expired, str) and expired is not None
    assert (expired.status, expired.lease_expiries, expired.lease_node) == (Status.QUEUED, 1, "")
    # Promote: blocked by a dependency, then by run_at, then queued.
    [b, late] = await store.apply([Promote(1, "b", NOW), Promote(1, "late", NOW + 49)])
    assert not isinstance(b, str) and b is not None and b.status is Status.PENDING
    assert not isinstance(late, str) and late is not None and late.status is Status.PENDING
    [late] = await store.apply([Promote(1, "late", NOW + 50)])
    assert not isinstance(late, str) and late is not None and late.status is Status.QUEUED
    # Lease again, expire to dead: the error says why.
    [again] = await store.apply([Lease(1, "a", "n2", NOW + 300, NOW + 200)])
    assert not isinstance(again, str) and again is not None and again.attempt == 2
    [dead] = await store.apply([Expire(1, "a", 2, NOW + 300, Status.DEAD)])
    assert not isinstance(dead, str) and dead is not None and dead.status is Status.DEAD
    a = await store.get("a")
    assert a is not None and a.error == {
        "kind": "lease_expired",
        "type": "LeaseExpired",
        "message": "lease lost 2 times (worker or node lost)",
    }
    # b's dependency is dead now: promote makes it dead, saying which and why.
    [b] = await store.apply([Promote(1, "b", NOW + 400)])
    assert not isinstance(b, str) and b is not None and b.status is Status.DEAD
    b_record = await store.get("b")
    assert b_record is not None and b_record.error["message"] == "dependency a is dead"
    check_indexes(await snapshot(store.redis, store.base), store.base)


async def test_expire_to_a_bad_target_raises_after_the_ops_before_it(store: RedisStore) -> None:
    await store.submit([new("a"), new("b")], NOW)
    with pytest.raises(ValueError, match="queued or to dead"):
        await store.apply(
            [
                Lease(0, "a", "n1", NOW + 1, NOW),
                Expire(0, "b", 1, NOW, Status.RUNNING),
                Lease(0, "b", "n1", NOW + 1, NOW),
            ]
        )
    a, b = await store.get("a"), await store.get("b")
    assert a is not None and a.status is Status.RUNNING  # applied, as in the model
    assert b is not None and b.status is Status.QUEUED  # never reached


async def test_live_states_in_chunks_in_seq_order(store: RedisStore) -> None:
    await store.submit([new(f"t{i:02d}") for i in range(25)], NOW)
    for i in range(0, 25, 4):
        await store.cancel(f"t{i:02d}", NOW)
    await leased(store, "t05")
    chunks = [chunk async for chunk in store.live_states(chunk=7)]
    ids = [s.id for chunk in chunks for s in chunk]
    assert ids == [f"t{i:02d}" for i in range(25) if i % 4]
    assert [len(c) for c in chunks] == [7, 7, 4]
    assert await store.live_states_after(10, 2) == (await store.live_states_after(10))[:2]


# ---------------------------------------------------------------------------- workers
async def test_take_skips_stale_entries_and_waits(store: RedisStore, wait_until: WaitUntil) -> None:
    await store.submit([new("a"), new("b")], NOW)
    attempt = await leased(store, "a")
    await store.cancel("a", NOW)  # its entry is stale now
    assert await store.take("n1") is None
    assert await store.redis.llen(store.key("a", "n1")) == 0
    # A waiting take is served by a lease made while it waits.
    waiting = asyncio.ensure_future(store.take("n1", 10.0))
    await wait_until(lambda: _blocked_clients(store))
    await store.apply([Lease(1, "b", "n1", NOW + 1000, NOW)])
    taken = await asyncio.wait_for(waiting, 10)
    assert taken is not None and taken.record.id == "b" and taken.attempt == 1
    assert taken.record.status is Status.RUNNING
    # A stale entry popped by BLPOP is dropped and the wait goes on until its timeout.
    waiting = asyncio.ensure_future(store.take("n1", 0.5))
    await wait_until(lambda: _blocked_clients(store))
    await store.redis.rpush(store.key("a", "n1"), f"a:{attempt}")
    assert await asyncio.wait_for(waiting, 10) is None


async def test_take_many_pops_current_entries_in_order(store: RedisStore) -> None:
    await store.submit([new("a"), new("b"), new("c"), new("d")], NOW)
    attempts = {t: await leased(store, t) for t in "abcd"}
    await store.cancel("b", NOW)  # a stale entry between two current ones
    taken = await store.take_many("n1", 2)
    assert [(t.record.id, t.attempt) for t in taken] == [("a", attempts["a"]), ("c", 1)]
    assert all(t.record.status is Status.RUNNING for t in taken)
    assert [t.record.id for t in await store.take_many("n1", 5)] == ["d"]
    assert await store.take_many("n1", 5) == []
    assert await store.take_many("n2", 1) == []
    with pytest.raises(ValueError):
        await store.take_many("n1", 0)


async def test_direct_leases_come_back_to_the_caller(store: RedisStore) -> None:
    await store.submit([new("a"), new("b"), new("c")], NOW)
    assert await store.raise_epoch(1)
    await store.apply([Lease(1, "c", "n1", NOW + 1000, NOW)])  # already running: no lease
    ops = [
        Lease(1, "a", "n1", NOW + 1000, NOW),
        Lease(1, "b", "n2", NOW + 1000, NOW),
        Lease(1, "c", "n1", NOW + 1000, NOW),
    ]
    answers, taken = await store.apply_direct(ops, "n1")
    assert [t.record.id for t in taken] == ["a"]
    assert taken[0].attempt == 1 and taken[0].record.status is Status.RUNNING
    assert taken[0].record.payload_json == "null" and taken[0].record.lease_node == "n1"
    assert [(s.id, s.status, s.lease_node) for s in answers if not isinstance(s, str | None)] == [
        ("a", Status.RUNNING, "n1"),
        ("b", Status.RUNNING, "n2"),
        ("c", Status.RUNNING, "n1"),
    ]
    assert answers[0] == taken[0].record.state()
    # a skipped n1's list (c's entry is from its own, earlier lease); b went to n2's.
    assert await store.redis.lrange(store.key("a", "n1"), 0, -1) == ["c:1"]
    assert await store.redis.lrange(store.key("a", "n2"), 0, -1) == ["b:1"]
    # A deposed leader's direct lease is fenced like any other.
    assert await store.raise_epoch(2)
    await store.submit([new("d")], NOW)
    answers, taken = await store.apply_direct([Lease(1, "d", "n1", NOW + 1000, NOW)], "n1")
    assert answers == [FENCED] and taken == []


async def _blocked_clients(store: RedisStore) -> bool:
    return int((await store.redis.info("clients"))["blocked_clients"]) > 0


async def test_take_times_out_promptly(store: RedisStore) -> None:
    loop = asyncio.get_running_loop()
    start = loop.time()
    assert await store.take("idle", 0.2) is None
    assert 0.15 < loop.time() - start < 2.0


async def test_heartbeat_refusals(store: RedisStore) -> None:
    attempt = await leased(store, "a")
    beats = [
        Heartbeat("a", attempt, "n1", NOW + 5000, NOW + 1),  # extends
        Heartbeat("a", attempt, "n1", NOW + 10, NOW + 2),  # earlier deadline: no change
        Heartbeat("a", attempt + 1, "n1", NOW + 9000, NOW + 3),  # stale attempt
        Heartbeat("a", attempt, "n2", NOW + 9000, NOW + 3),  # wrong node
        Heartbeat("zz", 1, "n1", NOW + 9000, NOW + 3),  # unknown
    ]
    assert await store.heartbeat_many(beats) == [
        (True, Status.RUNNING),
        (True, Status.RUNNING),
        (False, Status.RUNNING),
        (False, Status.RUNNING),
        (False, None),
    ]
    a = await store.get("a")
    assert a is not None and a.lease_deadline_ms == NOW + 5000 and a.version == 3


async def test_finish_each_end_and_refusals(store: RedisStore) -> None:
    await store.submit([new("s"), new("f"), new("d"), new("q")], NOW)
    attempts = {t: await leased(store, t) for t in "sfdq"}
    answers = await store.finish_many(
        [
            finish("s", attempts["s"], "n1", Status.SUCCEEDED, failures=0, result={"ok": [1]}),
            finish("f", attempts["f"], "n1", Status.FAILED, failures=1, run_at_ms=NOW + 500,
                   error={"kind": "error", "type": "E", "message": "m", "traceback": "tb"}),
            finish("d", attempts["d"], "n2", Status.DEAD, failures=9),  # wrong node
            finish("q", attempts["q"] + 1, "n1", Status.DEAD, failures=9),  # stale attempt
        ]
    )  # fmt: skip
    assert answers == [True, True, False, False]
    s, f = await store.get("s"), await store.get("f")
    assert s is not None and s.status is Status.SUCCEEDED and s.result_json == '{"ok": [1]}'
    assert s.finished_ms == NOW + 10
    assert f is not None and f.status is Status.FAILED and f.run_at_ms == NOW + 500
    assert f.error["traceback"] == "tb" and f.failures == 1 and f.finished_ms == 0
    # Again: the attempt no longer holds the task.
    assert not await store.finish(finish("s", attempts["s"], "n1", Status.SUCCEEDED, failures=0))
    # A status an attempt cannot end with: ValueError if it holds the task, nothing written.
    with pytest.raises(ValueError, match="cannot end"):
        await store.finish(finish("d", attempts["d"], "n1", Status.QUEUED, failures=0))
    d = await store.get("d")
    assert d is not None and d.status is Status.RUNNING
    assert not await store.finish(finish("s", 9, "n1", Status.QUEUED, failures=0))
    drained = await store.drain(1, 100)
    assert isinstance(drained, list) and {x.id for x in drained} >= {"s", "f"}
    check_indexes(await snapshot(store.redis, store.base), store.base)


async def test_finish_drain_is_finish_then_drain(store: RedisStore) -> None:
    await store.submit([new("s"), new("d"), new("q")], NOW)
    attempts = {t: await leased(store, t) for t in "sdq"}
    assert await store.drain(1, 100) != FENCED  # the inbox is empty now
    answers, drained = await store.finish_drain(
        [
            finish("s", attempts["s"], "n1", Status.SUCCEEDED, failures=0, result=[7]),
            finish("d", attempts["d"], "n1", Status.QUEUED, failures=0),  # not an end
            finish("q", attempts["q"] + 1, "n1", Status.DEAD, failures=9),  # stale attempt
        ],
        1,
        100,
    )  # fmt: skip
    assert answers[0] is True and answers[2] is False
    assert isinstance(answers[1], ValueError)
    s = await store.get("s")
    assert s is not None and s.status is Status.SUCCEEDED and s.result_json == "[7]"
    # The drain ran after the finishes: it answers the end just written, and only that.
    assert drained == [s.state()]
    # A deposed leader's drain is refused; the finishes (worker writes) are applied anyway.
    assert await store.raise_epoch(2)
    [ok], fenced = await store.finish_drain(
        [finish("d", attempts["d"], "n1", Status.DEAD, failures=1)], 1, 100
    )
    assert ok is True and fenced == FENCED
    d = await store.get("d")
    assert d is not None and d.status is Status.DEAD


async def test_finish_apply_drain_is_finish_then_apply_then_drain(store: RedisStore) -> None:
    await store.submit([new("s")], NOW)
    attempt = await leased(store, "s")
    assert await store.drain(1, 100) != FENCED  # the inbox is empty now
    # x and y's notifications wait in the inbox (submitted, not drained): the drain must run
    # after the leases, so it answers their leased state, not the queued one it was told of.
    await store.submit([new("x"), new("y")], NOW)
    answers, (applied, taken), drained = await store.finish_apply_drain(
        [finish("s", attempt, "n1", Status.SUCCEEDED, failures=0, result=[7])],
        [Lease(1, "x", "n1", NOW + 10_000, NOW), Lease(1, "y", "n2", NOW + 10_000, NOW)],
        "n1",
        1,
        100,
    )
    assert answers == [True]
    s = await store.get("s")
    assert s is not None and s.status is Status.SUCCEEDED
    # The leases were applied: the one to the caller's own node came back direct (no
    # assignment list entry), the other went on n2's list.
    assert [a.status if isinstance(a, TaskState) else a for a in applied] == [Status.RUNNING] * 2
    assert [t.record.id for t in taken] == ["x"]
    assert await store.take_many("n1", 10) == []
    assert [t.record.id for t in await store.take_many("n2", 10)] == ["y"]
    # The drain ran last: the finish just written, and x and y as leased (not as queued).
    assert isinstance(drained, list)
    by_id = {d.id: d for d in drained}
    assert by_id.pop("s") == s.state()
    assert {t: (d.status, d.lease_node) for t, d in by_id.items()} == {
        "x": (Status.RUNNING, "n1"),
        "y": (Status.RUNNING, "n2"),
    }
    # A deposed leader's ops and drain are refused; the finish (a worker write) is applied.
    await store.submit([new("z")], NOW)
    await store.drain(1, 100)
    a2 = taken[0].attempt
    assert await store.raise_epoch(2)
    [ok], (applied, taken), fenced = await store.finish_apply_drain(
        [finish("x", a2, "n1", Status.SUCCEEDED, failures=0)],
        [Lease(1, "z", "n1", NOW + 10_000, NOW)],
        "n1",
        1,
        100,
    )
    assert ok is True and applied == [FENCED] and taken == [] and fenced == FENCED
    z = await store.get("z")
    assert z is not None and z.status is Status.QUEUED
    check_indexes(await snapshot(store.redis, store.base), store.base)


async def test_the_leaders_requests_run_in_the_order_sent_with_many_in_flight(
    store: RedisStore,
) -> None:
    """The leader sends a round before the one ahead has answered (leader_link_ordered): Redis
    must apply them in the order sent. Each task is leased to n1 by one call and to n2 by the
    next, both in flight at once: the first must win every time, also while the connection
    is (re)opened."""
    assert store.leader_link_ordered
    ids = [f"o{i}" for i in range(60)]
    await store.submit([new(t) for t in ids], NOW)
    for part in (ids[:30], ids[30:]):
        calls = []
        for t in part:  # each call is sent at once (a task each), in this order
            for node in ("n1", "n2"):
                op = Lease(1, t, node, NOW + 10_000, NOW)
                calls.append(asyncio.create_task(store.apply_direct([op], "")))
        answers = await asyncio.gather(*calls)
        assert [a[0][0].lease_node for a in answers] == ["n1", "n1"] * len(part)
        # The second part goes over a connection opened anew, with all its calls waiting on it.
        lead = store._lead
        assert lead is not None and lead._slots[0] is not None
        lead._slots[0].close()
    for t in ids:
        rec = await store.get(t)
        assert rec is not None and rec.lease_node == "n1" and rec.attempt == 1


async def test_concurrent_finishes_are_group_committed(store: RedisStore) -> None:
    await store.submit([new(f"t{i}") for i in range(40)], NOW)
    attempts = [await leased(store, f"t{i}") for i in range(40)]
    before = store._finishes.flushes
    answers = await asyncio.gather(
        *(
            store.finish_many([finish(f"t{i}", a, "n1", Status.SUCCEEDED, failures=0)])
            for i, a in enumerate(attempts)
        )
    )
    assert answers == [[True]] * 40
    assert store._finishes.flushes - before < 40
    assert (await store.counts())["succeeded"] == 40


async def test_release_gives_the_task_back(store: RedisStore) -> None:
    attempt = await leased(store, "a")
    assert not await store.release(Release("a", attempt, "n2", NOW))
    assert not await store.release(Release("a", attempt + 1, "n1", NOW))
    assert await store.release(Release("a", attempt, "n1", NOW + 1))
    a = await store.get("a")
    assert a is not None and a.status is Status.QUEUED and a.lease_node == ""
    assert not await store.release(Release("a", attempt, "n1", NOW + 2))


# ---------------------------------------------------------------------------- reads
async def test_list_tasks_filters_and_cursor(store: RedisStore) -> None:
    batch = [
        new(f"t{i:02d}", type="odd" if i % 2 else "even", priority=Priority(i % 3))
        for i in range(30)
    ]
    await store.submit(batch, NOW)
    await store.cancel("t03", NOW)
    seen: list[str] = []
    cursor: int | None = 0
    while cursor is not None:
        page, cursor = await store.list_tasks(after_seq=cursor, limit=7)
        seen += [r.id for r in page]
    assert seen == [t.id for t in batch]
    odd_high, cursor = await store.list_tasks(type="odd", priority=Priority.HIGH, limit=100)
    assert [r.id for r in odd_high] == [f"t{i:02d}" for i in range(30) if i % 6 == 3]
    assert cursor is None
    cancelled, _ = await store.list_tasks(status=Status.CANCELLED)
    assert [r.id for r in cancelled] == ["t03"]
    page, cursor = await store.list_tasks(status="queued", limit=29)
    assert len(page) == 29 and cursor is None  # exactly the rest: no empty next page
    with pytest.raises(ValueError):
        await store.list_tasks(limit=0)


async def test_counts(store: RedisStore) -> None:
    await store.submit(
        [new("h", priority=Priority.HIGH), new("l", priority=Priority.LOW), new("m")], NOW
    )
    await store.submit([new("p", run_at_ms=NOW + 1)], NOW)
    await leased(store, "m")
    await store.cancel("l", NOW)
    assert await store.counts() == {
        "queued": {"high": 1, "medium": 0, "low": 0},
        "pending": 1,
        "running": 1,
        "succeeded": 0,
        "failed": 0,
        "dead": 0,
        "cancelled": 1,
    }


# ---------------------------------------------------------------------------- housekeeping
async def test_sweep_forgets_old_terminal_tasks_everywhere(store: RedisStore) -> None:
    await store.submit(
        [new("old", idempotency_key="k-old"), new("young", idempotency_key="k-young"), new("q")],
        NOW,
    )
    await store.cancel("old", NOW)
    await store.cancel("young", NOW + 30_000)
    assert await store.sweep(NOW + 59_999) == 0
    assert await store.sweep(NOW + 60_000) == 1
    assert await store.get("old") is None
    snap = await snapshot(store.redis, store.base)
    check_indexes(snap, store.base)
    assert "k-old" not in snap[store.key("idem")][1]
    # Its idempotency key is free again; its id too.
    [(again, created)] = await store.submit([new("old", idempotency_key="k-old")], NOW + 1)
    assert created and again.seq == 4


async def test_sweep_runs_in_bounded_steps(store: RedisStore) -> None:
    await store.submit([new(f"t{i}") for i in range(2500)], NOW)
    for i in range(2500):
        await store.cancel(f"t{i}", NOW)
    assert await store.sweep(NOW + 60_000) == 2500
    assert await store.redis.dbsize() == 3  # seq, inbox, qn remain


async def test_sweep_keeps_what_a_live_task_still_waits_on(store: RedisStore) -> None:
    # "dep" succeeds at once; "slow" keeps "child" pending for longer than the retention.
    await store.submit([new("dep"), new("slow")], NOW)
    await store.submit([new("child", depends_on=("dep", "slow"))], NOW)
    attempt = await leased(store, "dep")
    assert await store.finish(finish("dep", attempt, "n1", Status.SUCCEEDED, failures=0))
    assert await store.sweep(NOW + 600_000) == 0  # child is pending: dep stays
    dep = await store.get("dep")
    assert dep is not None and dep.status is Status.SUCCEEDED
    check_indexes(await snapshot(store.redis, store.base), store.base)
    # Held entries are stepped over, not counted again: the others are swept past them.
    await store.submit([new(f"x{i}") for i in range(3)], NOW)
    for i in range(3):
        await store.cancel(f"x{i}", NOW)
    assert await store.sweep(NOW + 600_000) == 3
    # Once child ends, nothing holds dep any more.
    await store.cancel("child", NOW + 600_000)
    assert await store.sweep(NOW + 1_200_000) == 2  # dep and child
    assert await store.get("dep") is None and await store.get("child") is None
    snap = await snapshot(store.redis, store.base)
    check_indexes(snap, store.base)
    assert not [k for k in snap if ":rd:" in k]


async def test_sweep_steps_over_many_held_entries(store: RedisStore) -> None:
    n = 1200  # more than one sweep chunk (SWEEP_CHUNK_MAX) of held entries
    await store.submit([new(f"d{i}") for i in range(n)], NOW)
    await store.submit(
        [new("waiter", depends_on=tuple(f"d{i}" for i in range(n)), run_at_ms=NOW * 2)], NOW
    )
    for i in range(n):
        await store.cancel(f"d{i}", NOW)  # terminal, but waiter still names them
    await store.submit([new("free")], NOW)
    await store.cancel("free", NOW + 1)
    assert await store.sweep(NOW + 600_000) == 1  # only "free": found behind the held ones
    assert await store.get("d0") is not None and await store.get("free") is None


async def test_node_registry(store: RedisStore) -> None:
    await store.register_node("n1", {"slots": 4, "types": ["echo"]}, NOW)
    await store.register_node("n2", {"slots": 1}, NOW + 5)
    nodes = await store.nodes()
    assert nodes == {
        "n1": {"slots": 4, "types": ["echo"], "last_seen_ms": NOW},
        "n2": {"slots": 1, "last_seen_ms": NOW + 5},
    }
    await store.unregister_node("n1")
    assert list(await store.nodes()) == ["n2"]


async def test_bell_rings_on_inbox_writes(store: RedisStore) -> None:
    bell = store.bell()
    ring = asyncio.ensure_future(anext(bell))
    for _ in range(500):
        if (await store.redis.pubsub_numsub(store.key("bell")))[0][1]:
            break
        await asyncio.sleep(0.01)
    await store.submit([new("a"), new("b")], NOW)
    assert await asyncio.wait_for(ring, 5) == 2
    await bell.aclose()


async def first_ring(pubsub: Any) -> list[str]:
    """The first bell message (as a one-item list), or [] if none comes within 5 s."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 5
    while loop.time() < deadline:
        message = await pubsub.get_message(ignore_subscribe_messages=True, timeout=0.5)
        if message is not None:
            return [message["data"]]
    return []


async def test_finish_drain_does_not_ring_the_bell(store: RedisStore) -> None:
    await store.submit([new("q"), new("r"), new("s")], NOW)
    attempts = {t: await leased(store, t) for t in "qrs"}
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(store.key("bell"))
    try:
        quiet = finish("q", attempts["q"], "n1", Status.SUCCEEDED, failures=0)
        # A drain of none: the quiet end stays in the inbox, for the drain below.
        assert await store.finish_drain([quiet], 1, 0) == ([True], [])
        loud = [finish(t, attempts[t], "n1", Status.SUCCEEDED, failures=0) for t in "rs"]
        assert await store.finish_many(loud) == [True, True]
        # Redis delivers in order: a ring from the quiet finish ("1") would come first.
        assert await first_ring(pubsub) == ["2"]
        # All are in the inbox all the same: the leader's drain still sees them.
        drained = await store.drain(1, 10)
        assert isinstance(drained, list) and {x.id for x in drained} == {"q", "r", "s"}
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_a_leading_nodes_submissions_do_not_ring(store: RedisStore) -> None:
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(store.key("bell"))
    try:
        store.submit_rings_bell = lambda: False  # this node leads: it wakes its own leader
        await store.submit([new("q1"), new("q2"), new("q3")], NOW)
        store.submit_rings_bell = lambda: True  # it no longer leads
        await store.submit([new("r1")], NOW)
        # Redis delivers in order: a ring from the quiet submission ("3") would come first.
        assert await first_ring(pubsub) == ["1"]
        drained = await store.drain(1, 10)
        assert isinstance(drained, list) and {x.id for x in drained} == {"q1", "q2", "q3", "r1"}
    finally:
        await pubsub.aclose()  # type: ignore[no-untyped-call]


async def test_prefixes_keep_two_clusters_apart(redis_url: str) -> None:
    one = await RedisStore.connect(redis_url, prefix="one")
    two = await RedisStore.connect(redis_url, prefix="two")
    try:
        await one.submit([new("a")], NOW)
        assert await two.get("a") is None
        await two.submit([new("a")], NOW)
        assert await one.raise_epoch(3) and await two.epoch() == 0
        assert all(k.startswith(("{one}:", "{two}:")) for k in await one.redis.keys("*"))
    finally:
        await one.close()
        await two.close()


# ---------------------------------------------------------------------------- failures
async def test_unreachable_redis_is_store_unavailable(redis_factory: RedisFactory) -> None:
    server = redis_factory()
    url = server.url
    server.stop()
    with pytest.raises(StoreUnavailable):
        await RedisStore.connect(url)
    server.start()
    store = await RedisStore.connect(url)
    try:
        server.kill()
        with pytest.raises(StoreUnavailable):
            await store.submit([new("a")], NOW)
        with pytest.raises(StoreUnavailable):
            await store.get("a")
        with pytest.raises(StoreUnavailable):
            await store.apply([Promote(1, "a", NOW)])
        with pytest.raises(StoreUnavailable):
            await store.take("n1", 0.5)
    finally:
        await store.close()


async def test_unix_socket_url(redis_factory: RedisFactory, tmp_path: Path) -> None:
    sock = tmp_path / "redis.sock"
    redis_factory(extra_args=("--unixsocket", str(sock), "--unixsocketperm", "700"))
    store = await RedisStore.connect(f"unix://{sock}?db=0")
    try:
        await store.submit([new("a")], NOW)
        assert await store.raise_epoch(1)
        await store.apply([Lease(1, "a", "n1", NOW + 10, NOW)])
        taken = await store.take("n1", 1.0)
        assert taken is not None and taken.record.id == "a"
    finally:
        await store.close()


async def test_subscriptions_fail_loudly_when_redis_goes(redis_factory: RedisFactory) -> None:
    server = redis_factory()
    store = await RedisStore.connect(server.url)
    bell = store.bell()
    try:
        ring = asyncio.ensure_future(anext(bell))
        for _ in range(500):
            if (await store.redis.pubsub_numsub(store.key("bell")))[0][1]:
                break
            await asyncio.sleep(0.01)
        server.kill()
        with pytest.raises(StoreUnavailable):
            await asyncio.wait_for(ring, 10)
    finally:
        await bell.aclose()
        await store.close()


async def test_password_in_url(redis_factory: RedisFactory) -> None:
    server = redis_factory(password="s3cret/pw")
    assert "s3cret%2Fpw" in server.url
    store = await RedisStore.connect(server.url)
    try:
        await store.submit([new("a")], NOW)
        assert await store.get("a") is not None
    finally:
        await store.close()
    with pytest.raises(StoreUnavailable):
        await RedisStore.connect(f"redis://:wrong@127.0.0.1:{server.port}/0")


@pytest.mark.parametrize("crash", [False, True])
async def test_seq_and_tasks_survive_a_restart_and_scripts_reload(
    redis_factory: RedisFactory, crash: bool
) -> None:
    # A kill -9 keeps every answered write only with fsync always: with everysec, Redis holds
    # its writes back (up to 2 s) while the previous fsync still runs on a busy disk, and
    # answers anyway (CI saw this once in 814 tests).
    server = redis_factory(fsync="always" if crash else "everysec")
    store = await RedisStore.connect(server.url)
    try:
        await store.submit([new("a"), new("b")], NOW)
        attempt = await leased(store, "a")
        if crash:
            server.kill()
        else:
            await server.stop_async()
        # Same port, same dir: the AOF is loaded; the script cache is empty. (Async, so the
        # event loop sees the old connections close, as it would in a running node.)
        await server.start_async()
        # Redis 6.2 logs SCRIPT LOAD in the AOF, so a restart alone may keep the scripts; a
        # failover or an AOF rewrite does not. Flush them to be sure NOSCRIPT is met.
        await store.redis.script_flush()
        assert await store.redis.script_exists(*_all_shas()) == [False] * len(_all_shas())
        # The same store object carries on: NOSCRIPT reloads, for one script and a pipeline.
        [(c, _)] = await store.submit([new("c")], NOW)
        assert c.seq == 3
        assert await store.finish(finish("a", attempt, "n1", Status.SUCCEEDED, failures=0))
        assert [r.seq for r in (await store.list_tasks())[0]] == [1, 2, 3]
        check_indexes(await snapshot(store.redis, store.base), store.base)
    finally:
        await store.close()


def _all_shas() -> list[str]:
    from node.store import _SHAS

    return list(_SHAS.values())


async def test_noscript_after_script_flush(store: RedisStore) -> None:
    await store.redis.script_flush()
    assert await store.raise_epoch(1)
    await store.redis.script_flush()
    assert len(await asyncio.gather(*(store.submit([new(f"t{i}")], NOW) for i in range(10)))) == 10
    await store.redis.script_flush()
    assert await store.heartbeat_many([Heartbeat("t1", 1, "n1", NOW, NOW)]) == [
        (False, Status.QUEUED)
    ]


@pytest.mark.slow
# Twenty clients cut by SIGKILL mid-request: a socket asyncio was still connecting can be
# finalized during the test (a ResourceWarning once in ~800 CI tests, not reproduced alone).
# What this test checks is the data; FastRedis's own leak on close is tested in test_resp.py.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
async def test_kill_9_with_fsync_always_loses_no_acknowledged_submit(
    redis_factory: RedisFactory, wait_until: WaitUntil
) -> None:
    server = redis_factory(fsync="always")
    store = await RedisStore.connect(server.url)
    acknowledged: list[str] = []
    failed = 0

    async def submitter(n: int) -> None:
        nonlocal failed
        for i in itertools.count():
            task_id = f"s{n}-{i}"
            try:
                await store.submit([new(task_id)], NOW)
            except StoreUnavailable:
                failed += 1
                return
            acknowledged.append(task_id)

    runners = [asyncio.ensure_future(submitter(n)) for n in range(20)]
    try:
        await wait_until(lambda: len(acknowledged) >= 1500, timeout_s=60)
        server.kill()
        await asyncio.wait_for(asyncio.gather(*runners), 30)
    finally:
        for r in runners:
            r.cancel()
        await store.close()
    assert failed == 20  # every submitter saw the crash
    server.start()
    after = await RedisStore.connect(server.url)
    try:
        got = await asyncio.gather(*(after.get(t) for t in acknowledged))
        missing = [t for t, r in zip(acknowledged, got, strict=True) if r is None]
        assert not missing, f"{len(missing)} of {len(acknowledged)} acknowledged tasks lost"
        seqs = [r.seq for r in got if r is not None]
        assert len(set(seqs)) == len(seqs)
        check_indexes(await snapshot(after.redis, after.base), after.base)
    finally:
        await after.close()


# ---------------------------------------------------------------------------- properties
ids_st = st.sampled_from(["a", "b", "c", "d", "é", "x:1"])
batch_st = st.lists(
    st.builds(
        NewTask,
        id=ids_st,
        type=st.just("t"),
        priority=st.sampled_from(list(Priority)),
        run_at_ms=st.sampled_from([0, NOW, NOW + 1]),
        depends_on=st.lists(ids_st, max_size=2).map(tuple),
        idempotency_key=st.sampled_from(["", "", "k1", "k2"]),
    ),
    min_size=1,
    max_size=4,
)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(batches=st.lists(batch_st, min_size=1, max_size=5))
async def test_property_submit_is_all_or_none(
    redis_server: EmbeddedRedis, batches: list[list[NewTask]]
) -> None:
    """Whatever the batches, each is written whole or not at all, and the indexes agree."""
    store = await RedisStore.connect(redis_server.url, prefix=f"prop{next(_prefixes)}")
    try:
        for batch in batches:
            before = await snapshot(store.redis, store.base)
            try:
                out = await store.submit(batch, NOW)
            except SubmitError:
                assert await snapshot(store.redis, store.base) == before
                continue
            for record, created in out:
                assert await store.get(record.id) == record
                assert created or record.idempotency_key
            check_indexes(await snapshot(store.redis, store.base), store.base)
    finally:
        await _drop(store)


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    ops=st.lists(
        st.tuples(
            st.sampled_from(["lease", "cancel", "retry", "expire", "finish", "promote"]),
            ids_st,
            st.sampled_from([Status.SUCCEEDED, Status.FAILED, Status.DEAD]),
        ),
        max_size=30,
    )
)
async def test_property_indexes_follow_every_transition(
    redis_server: EmbeddedRedis, ops: list[tuple[str, str, Status]]
) -> None:
    store = await RedisStore.connect(redis_server.url, prefix=f"prop{next(_prefixes)}")
    try:
        await store.submit([new(i) for i in ["a", "b", "c", "d", "é", "x:1"]], NOW)
        now = NOW
        for kind, task_id, end in ops:
            now += 10
            record = await store.get(task_id)
            assert record is not None
            if kind == "lease":
                await store.apply([Lease(0, task_id, "n1", now + 5, now)])
            elif kind == "cancel":
                await store.cancel(task_id, now)
            elif kind == "retry":
                await store.retry(task_id, now)
            elif kind == "expire":
                await store.apply([Expire(0, task_id, record.attempt, now, Status.QUEUED)])
            elif kind == "promote":
                await store.apply([Promote(0, task_id, now)])
            else:
                await store.finish(
                    Finish(task_id, record.attempt, "n1", AttemptEnd(end, 1, now + 5), now)
                )
            check_indexes(await snapshot(store.redis, store.base), store.base)
    finally:
        await _drop(store)


async def _drop(store: RedisStore) -> None:
    keys = [k async for k in store.redis.scan_iter(match=f"{store.base}:*", count=1000)]
    if keys:
        await store.redis.delete(*keys)
    await store.close()


async def test_forget_nodes_drops_only_long_unseen_entries_and_their_lists(
    store: RedisStore,
) -> None:
    await store.register_node("gone", {"slots": 5}, NOW - 700_000)
    await store.register_node("here", {"slots": 5}, NOW - 1_000)
    await leased(store, "t1", node="gone")  # leaves an entry in gone's assignment list
    await leased(store, "t2", node="here")
    raw = store._r
    assert await raw.llen(store.key("a", "gone")) == 1
    assert await store.forget_nodes(NOW, 600_000) == ["gone"]
    assert set(await store.nodes()) == {"here"}
    assert await raw.llen(store.key("a", "gone")) == 0
    assert await raw.llen(store.key("a", "here")) == 1
    assert await store.forget_nodes(NOW, 600_000) == []  # nothing more to forget


async def test_the_preludes_written_out_defaults_are_the_derived_ones(store: RedisStore) -> None:
    """_lib.lua writes STATE_DEFAULTS out (it runs at every call); derived from STATE_FIELDS
    and DEFAULTS here, in Redis, the two must agree."""
    from node.store import SCRIPTS

    lib = SCRIPTS["drain"][: SCRIPTS["drain"].index("-- drain:")]
    check = lib + (
        "local derived = {}\n"
        "for i, f in ipairs(STATE_FIELDS) do\n"
        "  if DEFAULTS[f] then derived[#derived + 1] = i .. '=' .. DEFAULTS[f] end\n"
        "end\n"
        "local written = {}\n"
        "for _, d in ipairs(STATE_DEFAULTS) do written[#written + 1] = d[1] .. '=' .. d[2] end\n"
        "return { table.concat(derived, ','), table.concat(written, ',') }\n"
    )
    derived, written = await store.redis.eval(check, 1, store.base)
    assert derived and written == derived

"""submit.lua runs a whole group-commit flush in one script call: each call in it must still
behave as its own script, in order (StoreModel.submit applied call after call). On a real Redis,
compared with the model."""

from __future__ import annotations

import asyncio

import pytest

from core.store_model import NewTask, StoreModel, SubmitError
from node.store import RedisStore
from tests.node.test_store import NOW, check_indexes, new, snapshot


def model_answers(calls: list[list[NewTask]], limit: int | None = None) -> list[object]:
    model = StoreModel(retention_ms=60_000)
    out: list[object] = []
    for batch in calls:
        try:
            out.append(
                [(r.id, r.seq, r.status, created) for r, created in model.submit(batch, NOW, limit)]
            )
        except SubmitError as exc:
            out.append(("refused", type(exc).__name__, exc.field, exc.index, str(exc)))
    return out


async def store_answers(
    store: RedisStore, calls: list[list[NewTask]], limit: int | None = None
) -> list[object]:
    flushes = store._submits.flushes
    # Queued together, so that they go in one flush (after the first, which flushes at once).
    results = await asyncio.gather(
        *(store.submit(batch, NOW, limit) for batch in calls), return_exceptions=True
    )
    assert store._submits.flushes - flushes <= 2
    out: list[object] = []
    for result in results:
        if isinstance(result, SubmitError):
            out.append(("refused", type(result).__name__, result.field, result.index, str(result)))
        else:
            assert not isinstance(result, BaseException), result
            out.append([(r.id, r.seq, r.status, created) for r, created in result])
    return out


CASES: dict[str, list[list[NewTask]]] = {
    "a key repeated across calls answers the first call's task": [
        [new("a0")],
        [new("a1", idempotency_key="k")],
        [new("a2", idempotency_key="k"), new("a3")],
        [new("a4", idempotency_key="k", run_at_ms=NOW + 1)],
    ],
    "a key resent with another task is refused, in the call that made it and in later ones": [
        [new("e1", idempotency_key="ke"), new("e2", idempotency_key="ke", type="noop")],
        [new("e3", idempotency_key="ke")],
        [new("e4"), new("e5", idempotency_key="ke", payload_json="1")],
        [new("e6", idempotency_key="ke", payload_json="null")],
    ],
    "a refused call between good ones writes nothing and leaves them be": [
        [new("b1"), new("b2")],
        [new("b3", idempotency_key="kb"), new("b4", depends_on=("missing",))],
        [new("b5", idempotency_key="kb")],
        [new("b1")],
        [new("b6"), new("b6")],
        [new("b7", depends_on=("b1", "b2"))],
    ],
    "dependencies on tasks of earlier calls and of earlier items": [
        [new("c1")],
        [new("c2", depends_on=("c1",)), new("c3", depends_on=("c2", "c1"))],
        [new("c4", depends_on=("c5",)), new("c5")],
        [new("c6", run_at_ms=NOW + 1), new("c7", depends_on=("c6",), run_at_ms=NOW)],
    ],
    "a repeated key inside one call and an id taken by a matched item": [
        [new("d1", idempotency_key="kd"), new("d2", idempotency_key="kd")],
        [new("d1", idempotency_key="kd"), new("d3")],
        [new("d3", idempotency_key="kd2"), new("d1")],
    ],
}


async def test_a_flush_counts_the_backlog_of_its_earlier_calls(store: RedisStore) -> None:
    # queued_tasks_max 3: each call sees what the calls before it in the flush created.
    calls = [
        [new("l1"), new("l2")],
        [new("l3"), new("l4")],
        [new("l5", run_at_ms=NOW + 1)],
        [new("l6")],
        [new("l7", idempotency_key="kl")],
    ]
    want = model_answers(calls, 3)
    assert [a[1] if isinstance(a, tuple) else "ok" for a in want] == [
        "ok",
        "QueueFull",
        "ok",
        "QueueFull",
        "QueueFull",
    ]
    assert await store_answers(store, calls, 3) == want
    check_indexes(await snapshot(store.redis, store.base), store.base)


@pytest.mark.parametrize("name", list(CASES))
async def test_one_flush_of_many_calls_is_those_calls_in_order(
    store: RedisStore, name: str
) -> None:
    calls = CASES[name]
    assert await store_answers(store, calls) == model_answers(calls)
    check_indexes(await snapshot(store.redis, store.base), store.base)


async def test_a_flush_of_a_thousand_single_calls(store: RedisStore) -> None:
    calls = [[new(f"s{i}", idempotency_key=f"k{i % 700}")] for i in range(1000)]
    results = await asyncio.gather(*(store.submit(batch, NOW) for batch in calls))
    created = [r for [(r, was_created)] in results if was_created]
    assert len(created) == 700
    assert sorted(r.seq for r in created) == list(range(1, 701))
    for i, [(record, _)] in enumerate(results):
        assert record.id == f"s{i % 700}"
    assert await store.redis.zcard(store.key("s", "queued")) == 700
    check_indexes(await snapshot(store.redis, store.base), store.base)


async def test_a_flush_over_the_script_bound_goes_as_several_scripts_in_order(
    store: RedisStore,
) -> None:
    # 2,500 tasks in one flush: three script calls in one pipeline, answered in order, a bad
    # call in the middle refused alone, seq consecutive over all of them.
    calls = [[new(f"big{c}-{i}") for i in range(400)] for c in range(6)]
    calls.insert(3, [new("bad", depends_on=("missing",))])
    calls.append([new("big0-0")])
    results = await asyncio.gather(
        *(store.submit(batch, NOW) for batch in calls), return_exceptions=True
    )
    assert isinstance(results[3], SubmitError) and results[3].field == "depends_on"
    assert isinstance(results[-1], SubmitError) and results[-1].field == "id"
    seqs = [r.seq for result in results if not isinstance(result, BaseException) for r, _ in result]
    assert seqs == list(range(1, 2401))
    assert await store.get("bad") is None
    check_indexes(await snapshot(store.redis, store.base), store.base)


async def test_a_pipelined_flush_rings_the_bell_once(store: RedisStore) -> None:
    pubsub = store.redis.pubsub(ignore_subscribe_messages=True)
    await pubsub.subscribe(store.key("bell"))
    try:
        calls = [[new(f"r{c}-{i}") for i in range(600)] for c in range(3)]  # three scripts
        await asyncio.gather(*(store.submit(batch, NOW) for batch in calls))
        assert await store.redis.llen(store.key("inbox")) == 1800
        rings = []
        deadline = asyncio.get_running_loop().time() + 1.0
        while asyncio.get_running_loop().time() < deadline:
            # None also for the (ignored) subscribe confirmation: read until the deadline.
            message = await pubsub.get_message(timeout=0.1)
            if message is not None:
                rings.append(message["data"])
        assert len(rings) == 1
    finally:
        await pubsub.aclose()

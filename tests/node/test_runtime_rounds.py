"""The node's leader loop around core's rounds (node/runtime.py), in process over a real Redis."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from core.events import Elected, EpochRaised, NodeSeen, Rebuilt
from core.task import AttemptEnd, Status
from core.worker import Finish
from node.config import NodeConfig
from node.metrics import Metrics
from node.runtime import NodeRuntime, SoloLeadership, now_ms
from node.store import RedisStore


def _leading_runtime(store: RedisStore) -> NodeRuntime:
    """A runtime (no loops started) whose scheduler leads in term 1."""
    runtime = NodeRuntime(
        NodeConfig(node_id="n1", workers=2), store, Metrics(), {}, SoloLeadership("n1")
    )
    t = now_ms()
    for event in (
        NodeSeen("n1", 2, None, t),
        Elected(1, t),
        EpochRaised(1, True, t),
        Rebuilt(1, t),
    ):
        runtime.scheduler.step(event)
    assert runtime.scheduler.leading
    return runtime


async def test_a_round_cancelled_before_its_first_step_gives_its_finishes_back(
    store: RedisStore,
) -> None:
    """Found in review: stop() cancels the rounds in flight, and a round created in the same
    pass never ran its own finally; its share of the node's finishes was neither sent nor
    given back, so stop() could not send it alone and its writer waited for good."""
    runtime = _leading_runtime(store)
    t = now_ms()
    waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    runtime._local_finishes.add(Finish("t1", 1, "n1", AttemptEnd(Status.SUCCEEDED, 0), t), waiter)
    runtime._start_round(True, 1, "n1", 2)
    [round_task] = runtime._rounds
    assert not runtime._local_finishes  # reserved by the round
    round_task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await round_task
    await asyncio.sleep(0)  # its done callbacks
    assert [f.task_id for f, _ in runtime._local_finishes] == ["t1"] and not runtime._rounds
    # stop() sends what is queued alone: the writer hears (refused: no such attempt holds t1).
    await runtime.stop(grace_s=0)
    assert waiter.done() and waiter.result() is False


async def test_a_round_that_finds_itself_deposed_sends_its_finishes_alone(
    store: RedisStore,
) -> None:
    """Found in review: a round that took its share of the node's finishes and then found
    itself deposed (no drain to carry them) flushed the queue before giving its share back,
    so the share waited for a later round (up to an idle wait) instead of going at once."""
    runtime = _leading_runtime(store)
    waiter: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
    runtime._local_finishes.add(
        Finish("t1", 1, "n1", AttemptEnd(Status.SUCCEEDED, 0), now_ms()), waiter
    )
    runtime._start_round(False, 1, None, 2)  # Raft says: no longer leading
    [round_task] = runtime._rounds
    await round_task
    assert not runtime.scheduler.leading
    assert waiter.done() and waiter.result() is False  # sent alone, in the round
    assert not runtime._local_finishes
    await runtime.stop(grace_s=0)


async def test_a_loop_that_dies_of_a_bug_starts_again_and_the_task_runs(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Left dead, the take loop would leave a node that announces free slots and never fills
    them: every task sent its way would wait out its lease, again and again."""
    from node import runtime as runtime_module
    from node.tasks import registered

    monkeypatch.setattr(runtime_module, "LOOP_RESTART_S", 0.05)
    config = NodeConfig(node_id="n1", workers=1)
    runtime = NodeRuntime(config, store, Metrics(), registered(), SoloLeadership("n1"))
    real = runtime._take_policy

    class FailsOnce:
        calls = 0

        def next(self, *args: Any) -> Any:
            self.calls += 1
            if self.calls == 1:
                raise RuntimeError("injected: a bug in the take loop")
            return real.next(*args)

    runtime._take_policy = FailsOnce()  # type: ignore[assignment]
    record = await _one_noop_runs(store, runtime)
    assert record.attempt == 1  # the loop came back long before the lease (10 s) ran out
    assert len(runtime.loop_failures["take"]) == 1
    assert runtime.readiness()[1]["failing_loops"] == []


async def test_a_task_whose_start_fails_goes_back_at_once(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node.tasks import registered

    config = NodeConfig(node_id="n1", workers=1)
    runtime = NodeRuntime(config, store, Metrics(), registered(), SoloLeadership("n1"))
    real_start = runtime.pool.start
    calls = 0

    def start_failing_once(*args: object) -> object:
        nonlocal calls
        calls += 1
        if calls == 1:
            raise RuntimeError("injected: a bug in the worker pool")
        return real_start(*args)  # type: ignore[arg-type]

    monkeypatch.setattr(runtime.pool, "start", start_failing_once)
    record = await _one_noop_runs(store, runtime)
    # Released, not left to its lease (10 s): the second attempt ran at once.
    assert record.attempt == 2
    assert not runtime.loop_failures


async def _one_noop_runs(store: RedisStore, runtime: NodeRuntime) -> Any:
    """Start the (solo) runtime, submit one no-op task, and answer its record once it
    succeeded (within 5 s), the runtime stopped."""
    from core.store_model import NewTask

    await runtime.leadership.start(store)  # type: ignore[attr-defined]
    await runtime.start()
    try:
        await store.submit([NewTask(id="t1", type="noop")], now_ms())
        runtime.notify_changed([])
        record = None
        for _ in range(100):
            record = await store.get("t1")
            if record is not None and record.status is Status.SUCCEEDED:
                return record
            await asyncio.sleep(0.05)
        raise AssertionError(f"t1 is {record and record.status} after 5 s, not succeeded")
    finally:
        await runtime.stop(grace_s=0)


async def test_a_leader_whose_leader_loop_keeps_dying_hands_leadership_over(
    store: RedisStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    from node import runtime as runtime_module

    monkeypatch.setattr(runtime_module, "LOOP_RESTART_S", 0.01)
    handed: list[bool] = []

    class Leading(SoloLeadership):
        def hand_over(self) -> None:
            handed.append(True)

    runtime = NodeRuntime(NodeConfig(node_id="n1"), store, Metrics(), {}, Leading("n1"))

    async def broken() -> None:
        raise RuntimeError("injected: a bug in the leader loop")

    runtime._leader_loop = broken  # type: ignore[method-assign]
    await runtime.leadership.start(store)  # type: ignore[attr-defined]
    await runtime.start()
    try:
        for _ in range(100):  # up to 2 s
            if handed:
                break
            await asyncio.sleep(0.02)
        assert handed, "the failing leader never handed over"
        assert "leader" in runtime.readiness()[1]["failing_loops"]
    finally:
        await runtime.stop(grace_s=0)

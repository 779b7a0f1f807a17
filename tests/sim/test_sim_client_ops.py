"""Runs that exercise what a client does besides submitting (cancel, retry by hand), per-node
task types, and a store that comes back from its last fsync point (everysec), judged by the
checker; each test also asserts that its path was taken, so a change of the seeds' streams
cannot turn it into a test of nothing."""

from __future__ import annotations

from sim.config import LoadConfig, SimConfig
from sim.load import TYPE_A
from sim.world import World

SHORT = SimConfig(duration_s=10.0, liveness_s=30.0)


def test_cancels_and_retries_by_hand_race_leases_and_failover() -> None:
    cancelled = retried = 0
    for seed in range(3):
        config = SHORT.with_(
            scenario="leader-crash",
            seed=seed,
            load=LoadConfig(cancel_p=0.2, retry_by_hand_p=0.7),
            keep_trace=True,
        )
        result = World(config).run()
        assert result.violation is None, result.violation
        cancelled += result.cancelled
        retried += result.retried_by_hand
        # Cancels reached tasks in every live state, not only ended ones.
        hit = {line.split()[-1] for line in result.trace if " cancel " in line}
        assert {"queued", "running"} <= hit
    assert cancelled > 0 and retried > 0


def test_store_restored_from_everysec_hands_over_no_attempt_twice() -> None:
    # A restore puts leases and assignments back that nodes already took (and may have run
    # and be sending the end of): the worker pool must not run those attempts again.
    redelivered = 0
    for seed in range(12):
        world = World(SHORT.with_(scenario="store-restart", seed=seed, fsync="everysec"))
        result = world.run()
        assert result.violation is None, (seed, result.violation)
        redelivered += sum(node.pool.redelivered for node in world.nodes)
    assert redelivered > 0


def test_typed_tasks_are_passed_over_only_by_nodes_that_cannot_run_them() -> None:
    # The last node runs no TYPE_B task; invariant 4 then allows it a lower priority only.
    for seed in range(2):
        world = World(SHORT.with_(scenario="random", seed=seed, keep_trace=True))
        result = world.run()
        assert result.violation is None, result.violation
        last = world.nodes[-1].id
        typed = {t for t, spec in world.specs.items() if spec.new.type != TYPE_A}
        leases = [line.split() for line in result.trace if " lease " in line]
        assert typed and not [f for f in leases if f[2] in typed and f[4] == last]
        assert any(f[2] in typed for f in leases)


def test_two_nodes_restarted_in_turn_elect_a_term_again_and_the_fence_parts_them() -> None:
    # Raft state is in memory: once both members of a two-node cluster have restarted, the
    # term the first leader held is elected again. The store refuses the second holder of that
    # epoch, and the newcomer stands above it (invariant 3 holds on the fence).
    refused = 0
    for seed in range(20, 30):
        config = SHORT.with_(nodes=2, scenario="rolling-restart", seed=seed, keep_trace=True)
        result = World(config).run()
        assert result.violation is None, (seed, result.violation)
        refused += sum(
            1 for line in result.trace if line.split()[1] == "epoch" and line.endswith("False")
        )
    assert refused > 0


def test_runs_whose_lease_a_restore_forgot_are_duplicates_not_violations() -> None:
    # everysec: the store comes back without a running attempt's lease and grants the task
    # again (the same attempt number, or the next) while the first run goes on elsewhere.
    config = SHORT.with_(
        scenario="store-restart",
        seed=624,
        fsync="everysec",
        skew_ms_max=200,
        load=LoadConfig(cancel_p=0.05),
    )
    world = World(config)
    result = world.run()
    assert result.violation is None, result.violation
    assert world.checker.counters.restore_reruns > 0

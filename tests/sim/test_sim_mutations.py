"""The checker catches real bugs: with a safety mechanism switched off (simulation-only switches),
a violation is found within a bounded number of seeds.

* --unsafe-no-fencing: the store ignores the epoch, so a deposed leader (partitioned away, or
  paused past its election timeout) keeps draining the inbox and writing leases after a newer
  leader raised the epoch: invariant 3 (or 2).
* --unsafe-ack-before-store: a node answers 201 before the store has the task; a store restart
  then loses acknowledged tasks outright: invariant 1.
"""

from __future__ import annotations

import pytest

from sim.config import SimConfig
from sim.world import RunResult, run_one

SEEDS_MAX = 12
BASE = SimConfig(duration_s=6.0, liveness_s=10.0)


def first_violation(config: SimConfig, invariants: set[int]) -> RunResult | None:
    for seed in range(SEEDS_MAX):
        result = run_one(config.with_(seed=seed))
        if result.violation is not None and result.violation.invariant in invariants:
            return result
    return None


@pytest.mark.parametrize("scenario", ["partition", "pause"])
def test_no_fencing_is_caught(scenario: str) -> None:
    found = first_violation(BASE.with_(scenario=scenario, unsafe_no_fencing=True), {2, 3})
    assert found is not None, f"{scenario}: no violation in {SEEDS_MAX} seeds without fencing"
    assert found.violation is not None
    assert "applied after epoch" in found.violation.message or found.violation.invariant == 2
    # The same seed with fencing on is clean.
    safe = run_one(BASE.with_(scenario=scenario, seed=found.seed))
    assert safe.violation is None or safe.violation.invariant not in (2, 3)


def test_ack_before_store_is_caught() -> None:
    config = BASE.with_(scenario="store-restart", unsafe_ack_before_store=True)
    found = first_violation(config, {1})
    assert found is not None and found.violation is not None
    assert "absent from the store" in found.violation.message

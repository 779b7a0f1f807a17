"""Every built-in scenario passes a few seeds: no invariant broken, all acknowledged work done."""

from __future__ import annotations

import pytest

from sim.config import SCENARIOS, SimConfig
from sim.report import format_violation
from sim.world import run_one

SEEDS = (0, 1, 2)
# Short runs: faults from 2 s to 6 s, load until 8 s, then up to 15 s to finish.
BASE = SimConfig(duration_s=8.0, liveness_s=15.0)


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("scenario", SCENARIOS)
def test_scenario_passes(scenario: str, seed: int) -> None:
    config = BASE.with_(scenario=scenario, seed=seed)
    result = run_one(config)
    assert result.violation is None, format_violation(result, config)
    assert result.plan, "the scenario injected no fault"
    assert result.acked > 400 and result.completed > 0.9 * result.acked
    assert result.drain_s is not None and result.drain_s <= BASE.liveness_s


def test_everysec_counts_lost_acknowledgements() -> None:
    """A store restart under everysec loses the last second's writes: counted, not a failure."""
    config = BASE.with_(scenario="store-restart", seed=0, fsync="everysec")
    result = run_one(config)
    assert result.violation is None, format_violation(result, config)
    assert result.lost_acked > 0

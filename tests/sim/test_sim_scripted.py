"""Scripted scenarios (tests/scenarios/*.txt) replay to their golden outcome, exactly.

Regenerate the goldens after an intended change: DSCHED_UPDATE_GOLDENS=1 python -m pytest
tests/sim/test_sim_scripted.py (then review the diff).
"""

from __future__ import annotations

import os

import pytest

from core.pacing import STORE_LOST_HANDOVER_MS
from sim.report import format_violation
from sim.scripted import (
    UPDATE_ENV,
    figures,
    read_golden,
    script_config,
    script_paths,
    write_golden,
)
from sim.world import run_one


@pytest.mark.parametrize("script", script_paths(), ids=os.path.basename)
def test_script_replays_to_its_golden(script: str) -> None:
    config = script_config(script)
    result = run_one(config)
    got = figures(result)
    if os.environ.get(UPDATE_ENV):
        write_golden(script, got)
    assert result.violation is None, format_violation(result, config)
    want = read_golden(script)
    assert want is not None, f"no golden for {script}: run with {UPDATE_ENV}=1"
    assert got == want


def test_a_leader_cut_off_from_the_store_hands_over_before_the_link_heals() -> None:
    script = next(p for p in script_paths() if p.endswith("leader-loses-store.txt"))
    result = run_one(script_config(script))
    assert result.violation is None
    # The cut lasts 8 s; a leader that stayed in office would make no failover at all.
    assert len(result.failovers_s) == 1
    assert result.failovers_s[0] < STORE_LOST_HANDOVER_MS / 1000 + 1.5

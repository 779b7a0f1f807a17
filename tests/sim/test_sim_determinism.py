"""The same seed gives the same run: the same trace hash twice in one process (so nothing leaks
between seeds), and in fresh interpreters with other PYTHONHASHSEEDs (so no salted str hash or
set order decides anything)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

import sim.raftnet
from sim.config import SimConfig
from sim.world import RunResult, run_one

REPO = Path(__file__).resolve().parents[2]
# A mix of faults (crash, pause, partition, store restart, flaky links) in a short run.
CONFIG = SimConfig(scenario="random", seed=3, duration_s=6.0, liveness_s=10.0)


def fingerprint(r: RunResult) -> tuple[object, ...]:
    return (
        r.trace_hash,
        r.raft_trace_hash,
        r.acked,
        r.completed,
        r.executions,
        r.duplicates,
        r.events,
        r.plan,
    )


def test_same_seed_same_trace_in_one_process() -> None:
    first = run_one(CONFIG)
    other = run_one(CONFIG.with_(seed=4))
    again = run_one(CONFIG)
    assert first.raft == "pysyncobj"
    assert first.events > 1000 and first.plan
    assert fingerprint(first) == fingerprint(again)
    assert first.trace_hash != other.trace_hash


def test_same_seed_same_trace_across_hash_seeds() -> None:
    result = run_one(CONFIG)
    here = f"{result.trace_hash} {result.raft_trace_hash}"
    code = (
        "from sim.config import SimConfig; from sim.world import run_one; "
        "r = run_one(SimConfig(scenario='random', seed=3, duration_s=6.0, "
        "liveness_s=10.0)); print(r.trace_hash, r.raft_trace_hash)"
    )
    for hash_seed in ("0", "4242"):
        env = {**os.environ, "PYTHONHASHSEED": hash_seed}
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=REPO,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        assert out.stdout.strip() == here, f"PYTHONHASHSEED={hash_seed}: {out.stderr[-2000:]}"


@pytest.mark.parametrize(
    "config",
    [
        CONFIG,
        SimConfig(scenario="pause", seed=5, duration_s=6.0, liveness_s=10.0),
        SimConfig(scenario="rolling-restart", seed=2, duration_s=6.0, liveness_s=10.0),
    ],
    ids=["random", "pause", "rolling-restart"],
)
def test_skipping_idle_raft_ticks_changes_nothing(
    config: SimConfig, monkeypatch: pytest.MonkeyPatch
) -> None:
    # sim/raftnet.py sleeps through Raft ticks that would change nothing: the very same run.
    skipped = run_one(config)
    monkeypatch.setattr(sim.raftnet, "SKIP_IDLE_TICKS", False)
    every_tick = run_one(config)
    assert fingerprint(skipped) == fingerprint(every_tick)

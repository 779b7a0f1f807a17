"""Scripted scenarios (tests/scenarios/*.txt) and their golden outcomes.

A script fixes the faults and the run's settings; the seed (from its ``set seed=`` line) fixes
the rest, so a script's outcome is deterministic. Its golden file (``<name>.golden.json`` beside
it) holds the figures a replay must reproduce exactly. Regenerate them after an intended change
of behaviour with ``DSCHED_UPDATE_GOLDENS=1 python -m pytest tests/sim/test_scenarios.py`` or
``python -m sim.scripted --update``, and review the diff like code.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import sys
from collections.abc import Sequence
from typing import Any

from sim.config import SimConfig
from sim.faults import apply_settings, parse_script
from sim.world import RunResult, run_one

SCENARIO_DIR = os.path.join(os.path.dirname(os.path.dirname(__file__)), "tests", "scenarios")
UPDATE_ENV = "DSCHED_UPDATE_GOLDENS"


def script_paths(directory: str = SCENARIO_DIR) -> list[str]:
    return sorted(glob.glob(os.path.join(directory, "*.txt")))


def golden_path(script: str) -> str:
    return script[: -len(".txt")] + ".golden.json"


def script_config(script: str, base: SimConfig | None = None) -> SimConfig:
    with open(script, encoding="utf-8") as f:
        settings, _ = parse_script(f.read())
    return apply_settings((base or SimConfig()).with_(script=script), settings)


def run_script(script: str, base: SimConfig | None = None) -> RunResult:
    return run_one(script_config(script, base))


def figures(result: RunResult) -> dict[str, Any]:
    """The deterministic outcome of a run (no wall-clock figure)."""
    v = result.violation
    return {
        "raft": result.raft,
        "trace_hash": result.trace_hash,
        "raft_trace_hash": result.raft_trace_hash,
        "violation": None if v is None else {"invariant": v.invariant, "message": v.message},
        "submitted": result.submitted,
        "acked": result.acked,
        "completed": result.completed,
        "dead": result.dead,
        "executions": result.executions,
        "duplicates": result.duplicates,
        "lost_acked": result.lost_acked,
        "fenced_writes": result.fenced_writes,
        "stale_refused": result.stale_refused,
        "overlaps": result.overlaps,
        "cancelled": result.cancelled,
        "retried_by_hand": result.retried_by_hand,
        "elections": result.elections,
        "failovers_ms": [round(x * 1000, 1) for x in result.failovers_s],
        "drain_ms": None if result.drain_s is None else round(result.drain_s * 1000, 1),
        "sim_end_s": round(result.sim_end_s, 3),
        "events": result.events,
    }


def read_golden(script: str) -> dict[str, Any] | None:
    path = golden_path(script)
    if not os.path.exists(path):
        return None
    with open(path, encoding="utf-8") as f:
        data: dict[str, Any] = json.load(f)
    return data


def write_golden(script: str, data: dict[str, Any]) -> None:
    with open(golden_path(script), "w", encoding="utf-8") as f:
        json.dump(data, f, indent=1, sort_keys=True)
        f.write("\n")


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m sim.scripted", description=__doc__)
    parser.add_argument("scripts", nargs="*", help="default: every tests/scenarios/*.txt")
    parser.add_argument("--update", action="store_true", help="rewrite the golden files")
    args = parser.parse_args(argv)
    status = 0
    for script in args.scripts or script_paths():
        got = figures(run_script(script))
        want = read_golden(script)
        name = os.path.basename(script)
        if args.update:
            write_golden(script, got)
            print(f"{name}: golden written")
        elif want != got:
            status = 1
            print(f"{name}: DIFFERS from its golden")
            for key in sorted(set(got) | set(want or {})):
                if (want or {}).get(key) != got.get(key):
                    print(f"  {key}: golden {(want or {}).get(key)!r} != now {got.get(key)!r}")
        else:
            print(f"{name}: matches its golden")
    return status


if __name__ == "__main__":
    sys.exit(main())

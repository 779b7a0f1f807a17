"""Membership changes under load: a node joins (`dsched members add`), a member leaves, and
every member's Raft configuration settles to the one asked for (invariant 6)."""

from __future__ import annotations

import itertools
import random
from pathlib import Path

import pytest

from node.cluster import REGISTRY_CONFIG_FRESH_MS, peers_from_registry
from sim.__main__ import main as sim_main
from sim.config import SimConfig
from sim.faults import format_plan, generate
from sim.leadership import RaftLeadership
from sim.report import format_violation
from sim.scripted import script_config
from sim.world import World, run_one

# The newcomer n4 is elected after the leader crashes; the crashed member restarts from an
# empty Raft journal with its first --peers, which do not name n4; then n1 leaves.
SCRIPT = str(Path(__file__).parents[1] / "scenarios" / "newcomer-leads-restart.txt")
CONFIG = script_config(SCRIPT).with_(keep_trace=True)
# One of three members is down when the operator removes the leader.
GUARD_SCRIPT = str(
    Path(__file__).parents[1] / "scenarios" / "removal-refused-while-a-member-is-down.txt"
)


def test_generated_plans_join_and_remove_members() -> None:
    """The scenario's plans: a join, then a member removed (up, or crashed and left down)."""
    config = SimConfig(scenario="membership", duration_s=8.0)
    plans = [format_plan(generate(config, random.Random(f"{seed}:faults"))) for seed in (1, 2)]
    assert all(plan.startswith("at ") and " join" in plan for plan in plans)
    assert any("leave crashed" in plan for plan in plans), plans
    assert any("restart crashed" in plan or "heal" in plan or "resume" in plan for plan in plans)


def test_a_node_joins_and_a_member_leaves_under_load() -> None:
    result = run_one(CONFIG)
    assert result.violation is None, format_violation(result, CONFIG)
    joined = [line for line in result.trace if " joined " in line]
    left = [line for line in result.trace if " left " in line]
    assert joined and joined[0].endswith("joined n4"), result.plan
    assert left, result.plan
    # The newcomer took work, and led after the crash.
    assert any(" run " in line and line.split()[-1] == "n4" for line in result.trace)
    assert any(line.split()[1:4] == ["role", "n4", "leading"] for line in result.trace)
    assert result.completed > 0.9 * result.acked


def test_without_the_leaders_published_configuration_a_restarted_member_is_left_out(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The bug the scenario found: with its --peers alone, the restarted member refuses the
    newcomer leader's connections and never rejoins. Either use of the leader's published
    configuration brings it back: at its start, or (a running member) on a registry read."""
    monkeypatch.setattr(World, "_start_peers", lambda self, index: set())
    assert "Raft configuration" in _passes_but_not_without_adopting(CONFIG, monkeypatch)


def test_peers_come_from_the_live_leader_of_the_highest_term() -> None:
    now = 1_000_000
    entries = {
        "a": {"raft_term": 3, "raft_config": ["x:1", "y:1", "me:1"], "last_seen_ms": now - 900},
        # A deposed leader's entry, still fresh: a lower term loses.
        "b": {"raft_term": 2, "raft_config": ["old:1"], "last_seen_ms": now},
        # A higher term, but its entry is stale (that node is gone).
        "c": {
            "raft_term": 9,
            "raft_config": ["gone:1"],
            "last_seen_ms": now - REGISTRY_CONFIG_FRESH_MS - 1,
        },
        "d": {"raft": "d:1", "last_seen_ms": now},  # a follower publishes no configuration
        "e": {"raft_term": "7", "raft_config": "z:1", "last_seen_ms": now},  # malformed
    }
    assert peers_from_registry(entries, now, "me:1") == {"x:1", "y:1"}
    assert peers_from_registry({"d": entries["d"]}, now, "me:1") == set()
    # Not in the leader's configuration (a newcomer, or a node of an earlier cluster on other
    # ports): its --peers alone, so no phantom member enters its configuration.
    assert peers_from_registry(entries, now, "new:1") == set()


def test_the_election_model_has_no_membership_changes(capsys: pytest.CaptureFixture[str]) -> None:
    assert sim_main(["--scenario", "membership", "--raft", "model", "--seeds", "1"]) == 2
    assert "needs --raft pysyncobj" in capsys.readouterr().err


def test_a_member_that_missed_a_join_adopts_the_newcomer_leader(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A member paused while n5 joined lacks n5, which then leads: it adopts n5 from the
    leader's published configuration. Without that, it sits out for good (invariant 6)."""
    script = str(Path(SCRIPT).with_name("paused-member-misses-a-join.txt"))
    message = _passes_but_not_without_adopting(script_config(script), monkeypatch)
    assert "n3's Raft configuration" in message


def _passes_but_not_without_adopting(config: SimConfig, monkeypatch: pytest.MonkeyPatch) -> str:
    """The run passes; with no member adopting the published configuration on its registry
    reads it fails invariant 6, whose message this answers."""
    result = run_one(config)
    assert result.violation is None, format_violation(result, config)
    monkeypatch.setattr(World, "registry_read", lambda self, index: None)
    result = run_one(config)
    assert result.violation is not None and result.violation.invariant == 6
    return result.violation.message


def _first_at(trace: list[str], event: str) -> float | None:
    """When (s) the first trace line with ``event`` (its words after the time, in us) happened."""
    for line in trace:
        at, _, rest = line.strip().partition(" ")
        if rest.startswith(event):
            return int(at) / 1e6
    return None


def _longest_lease_gap(trace: list[str], start_s: float, end_s: float) -> float:
    """The longest stretch between start_s and end_s in which no task was leased."""
    times = [start_s, end_s]
    for line in trace:
        at, event = line.split()[:2]
        if event == "lease" and start_s < int(at) / 1e6 < end_s:
            times.append(int(at) / 1e6)
    times.sort()
    return max(b - a for a, b in itertools.pairwise(times))


def test_a_removal_that_would_leave_no_majority_waits_for_the_member_that_is_down(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """The leader's guard (node.cluster.unsafe_membership_change, as NodeRuntime applies it)
    runs in the simulation too: removing the leader while another member is down would leave 1
    of 2 members reachable, so the leader refuses it and keeps leasing, and the member leaves
    once the crashed one is back. Without the guard, the leader hands over at once and the
    removal leaves a configuration with no reachable majority: no lease until the restart."""
    config = script_config(GUARD_SCRIPT).with_(keep_trace=True)
    result = run_one(config)
    assert result.violation is None, format_violation(result, config)
    restarted = _first_at(result.trace, "fault at 6 restart")
    left = _first_at(result.trace, "left ")
    assert restarted is not None and left is not None, result.plan
    assert result.membership_refused > 0
    assert _first_at(result.trace, "membership-unsafe ") == 3.5
    assert left > restarted
    # Tasks are leased about every 10 ms at this load: a 0.5 s gap is an outage.
    assert _longest_lease_gap(result.trace, 3.5, restarted) < 0.5

    monkeypatch.setattr(RaftLeadership, "membership_unsafe", lambda self, *args: "")
    result = run_one(config)
    assert result.violation is None, format_violation(result, config)
    assert result.membership_refused == 0
    assert _first_at(result.trace, "handover ") == 3.5
    assert _longest_lease_gap(result.trace, 3.5, restarted) > 1.0


def test_a_paused_leader_checks_the_guard_once_it_resumes(tmp_path: Path) -> None:
    """A request to a paused leader waits for it (the operator's is sent again), and the
    resumed leader runs the guard before anything else, as the node does: the removal that
    would leave one of two members reachable is refused, and leasing goes on."""
    script = tmp_path / "paused.txt"
    script.write_text(
        "set duration=12 seed=7\n"
        "at 2 crash leader\n"
        "at 3.5 pause leader\n"
        "at 3.6 leave 3\n"
        "at 3.8 resume paused\n"
        "at 8 restart crashed\n",
        encoding="utf-8",
    )
    config = script_config(str(script)).with_(keep_trace=True)
    result = run_one(config)
    assert result.violation is None, format_violation(result, config)
    assert result.membership_refused > 0
    resumed = _first_at(result.trace, "fault at 3.8 resume")
    unsafe = _first_at(result.trace, "membership-unsafe ")
    left = _first_at(result.trace, "left ")
    assert resumed is not None and unsafe is not None and unsafe >= resumed
    assert left is not None and left > 8.0
    # Leasing pauses with the leader, and goes on once it is back (no 4 s outage to the restart).
    assert _longest_lease_gap(result.trace, 4.5, 8.0) < 0.5

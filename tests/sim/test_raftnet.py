"""The real pysyncobj Raft (through node.raft.RaftMember) under simulated time and network.

Every scenario runs through SimRaftCluster.run_until, which checks after every 10 ms step that no
two members ever led in the same term; a failure names its seed, and the seed replays it.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
from pathlib import Path

import pysyncobj.syncobj as pysyncobj_syncobj
import pytest
import simpy

from node.raft import RaftConfig, RaftMember, RaftStatus
from sim.raftnet import SimRaftCluster

CONFIG = RaftConfig()
# Budgets in simulated seconds. An election needs one timeout (<= max) plus a round trip; allow
# for two split votes in a row before calling it a failure.
ELECTION_S = 3 * CONFIG.election_timeout_max_s + 0.1
# A deposed leader that cannot hear a majority steps down after the fallback timeout.
STEP_DOWN_S = CONFIG.leader_fallback_timeout_s + 0.2
REPO = Path(__file__).resolve().parents[2]


def elect(cluster: SimRaftCluster, timeout_s: float = 2.0) -> tuple[int, int]:
    assert cluster.run_until(lambda: cluster.agreed_leader() is not None, timeout_s), (
        f"seed {cluster.seed}: no agreed leader within {timeout_s} s; leaders {cluster.leaders()}"
    )
    agreed = cluster.agreed_leader()
    assert agreed is not None
    return agreed


def leader_and_a_follower(cluster: SimRaftCluster) -> tuple[int, int, int]:
    """Elect, let the followers catch up, and name one of them: (leader, term, follower)."""
    leader, term = elect(cluster)
    cluster.run_until(lambda: False, 0.5)
    return leader, term, next(i for i in range(len(cluster)) if i != leader)


def add_through(cluster: SimRaftCluster, leader: int, new: int) -> RaftMember:
    """Ask the leader to add member `new` and wait for its answer, which must be success.
    Returns the leader's member."""
    outcomes: list[tuple[bool, str]] = []
    member = cluster.member(leader)
    assert member is not None
    member.request_add_member(cluster.addr(new), lambda ok, why: outcomes.append((ok, why)))
    assert cluster.run_until(lambda: bool(outcomes), 2.0)
    assert outcomes == [(True, "success")]
    return member


def status_of(cluster: SimRaftCluster, i: int) -> RaftStatus:
    status = cluster.status(i)
    assert status is not None, f"member {i} is not running"
    return status


def scenario_hash(seed: int, skip_idle_ticks: bool | None = None) -> str:
    """A run with every kind of fault; its trace hash must depend on the seed alone."""
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed, skip_idle_ticks=skip_idle_ticks) as cluster:
        leader, _ = elect(cluster)
        cluster.crash(leader)
        cluster.run_until(lambda: False, 1.0)
        cluster.restart(leader)
        pid = cluster.partition([0], [1, 2])
        cluster.run_until(lambda: False, 1.5)
        cluster.heal(pid)
        cluster.pause(1)
        cluster.run_until(lambda: False, 0.7)
        cluster.resume(1)
        cluster.partition([2], [0], one_way=True)
        cluster.run_until(lambda: False, 1.0)
        cluster.heal()
        cluster.run_until(lambda: False, 2.0)
        return cluster.trace_hash()


def test_three_members_elect_exactly_one_leader_and_keep_it() -> None:
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed=1) as cluster:
        leader, term = elect(cluster, timeout_s=1.0)
        # Then 10 quiet seconds: no spurious election, everyone announced, quorum everywhere.
        assert not cluster.run_until(lambda: cluster.agreed_leader() != (leader, term), 10.0)
        statuses = [cluster.status(i) for i in range(3)]
        assert all(s is not None and s.has_quorum for s in statuses)
        for s in statuses:
            assert s is not None
            assert sorted(s.members) == ["node-0", "node-1", "node-2"]
            assert s.leader_id == f"node-{leader}"
            assert s.cluster_raft_addrs == ("n0", "n1", "n2")


def test_same_seed_same_trace_and_clock_restored() -> None:
    clock, rng = pysyncobj_syncobj.monotonicTime, pysyncobj_syncobj.random
    first = scenario_hash(11)
    assert scenario_hash(12) != first
    assert scenario_hash(11) == first
    # The patch is undone between runs, so seeds cannot leak into each other or into the node.
    assert pysyncobj_syncobj.monotonicTime is clock
    assert pysyncobj_syncobj.random is rng


@pytest.mark.parametrize("seed", [11, 12, 13])
def test_skipping_idle_ticks_changes_nothing(seed: int) -> None:
    # The driver sleeps through ticks that would change nothing; every message, status change
    # and fault must come out the same as with a tick at every tick_period_s.
    assert scenario_hash(seed, skip_idle_ticks=True) == scenario_hash(seed, skip_idle_ticks=False)


@pytest.mark.slow
def test_same_seed_same_trace_under_another_hash_seed() -> None:
    # str hashes are salted per process; pysyncobj iterates sets of nodes when it sends.
    code = "from tests.sim.test_raftnet import scenario_hash; print(scenario_hash(11))"
    env = {**os.environ, "PYTHONHASHSEED": "12345", "PYTHONPATH": str(REPO)}
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, env=env, capture_output=True, text=True, timeout=120
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == scenario_hash(11)


def test_crashed_leader_is_replaced_with_a_higher_term_and_rejoins() -> None:
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed=2) as cluster:
        old, old_term = elect(cluster)
        cluster.crash(old)
        crashed_at = env.now
        survivors = [i for i in range(3) if i != old]
        assert cluster.run_until(
            lambda: (a := cluster.agreed_leader(survivors)) is not None and a[1] > old_term,
            ELECTION_S,
        ), f"no new leader {ELECTION_S} s after the crash: {cluster.leaders()}"
        failover_s = env.now - crashed_at
        assert failover_s <= ELECTION_S
        new, new_term = elect(cluster)
        assert new != old
        # The old leader comes back with its journal (term, vote, log) and follows.
        cluster.restart(old)
        assert cluster.run_until(
            lambda: (
                (s := cluster.status(old)) is not None
                and s.leader_raft_addr == cluster.addr(new)
                and s.term >= new_term
            ),
            3.0,
        )
        assert cluster.agreed_leader() is not None


def test_partitioned_leader_is_replaced_steps_down_and_one_leader_after_heal() -> None:
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed=3) as cluster:
        old, old_term = elect(cluster)
        majority = [i for i in range(3) if i != old]
        pid = cluster.partition([old], majority)
        assert cluster.run_until(
            lambda: (a := cluster.agreed_leader(majority)) is not None and a[1] > old_term,
            ELECTION_S,
        ), f"majority elected nobody: {cluster.leaders()}"
        # The isolated leader gives up by itself, without hearing the new term, and says it
        # has no quorum (pings it read may keep has_quorum up one ping period longer).
        assert cluster.run_until(lambda: not status_of(cluster, old).is_leader, STEP_DOWN_S)
        assert cluster.run_until(
            lambda: not status_of(cluster, old).has_quorum, CONFIG.ping_period_s + 0.05
        )
        cluster.heal(pid)
        _leader, term = elect(cluster, timeout_s=3.0)
        assert term > old_term
        assert len(cluster.leaders()) == 1


def test_one_way_partition_from_the_leader() -> None:
    # The leader's messages stop reaching the others, theirs still reach it: they elect a new
    # leader, whose heartbeats depose the old one.
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed=4) as cluster:
        old, old_term = elect(cluster)
        others = [i for i in range(3) if i != old]
        pid = cluster.partition([old], others, one_way=True)
        assert cluster.run_until(
            lambda: (a := cluster.agreed_leader(others)) is not None and a[1] > old_term,
            ELECTION_S,
        )
        assert cluster.run_until(lambda: not status_of(cluster, old).is_leader, STEP_DOWN_S)
        cluster.heal(pid)
        elect(cluster, timeout_s=3.0)


def test_paused_leader_is_replaced_and_steps_down_on_resume() -> None:
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed=5) as cluster:
        old, old_term = elect(cluster)
        cluster.pause(old)
        others = [i for i in range(3) if i != old]
        assert cluster.run_until(
            lambda: (a := cluster.agreed_leader(others)) is not None and a[1] > old_term,
            ELECTION_S,
        )
        cluster.run_until(lambda: False, 1.0)
        # Frozen, it still believes it leads in the old term (fencing is what keeps it harmless).
        status = cluster.status(old)
        assert status is not None and status.is_leader and status.term == old_term
        cluster.resume(old)
        assert cluster.run_until(lambda: not status_of(cluster, old).is_leader, 0.5)
        _leader, term = elect(cluster, timeout_s=3.0)
        assert term > old_term


def test_dynamic_membership_join_and_leave() -> None:
    env = simpy.Environment()
    config = RaftConfig(dynamic_membership=True)
    with SimRaftCluster(env, 3, seed=6, config=config) as cluster:
        leader, _ = elect(cluster)
        new = cluster.add_member_host()
        member = add_through(cluster, leader, new)
        four = ("n0", "n1", "n2", "n3")
        assert cluster.run_until(
            lambda: all(
                (s := cluster.status(i)) is not None
                and s.cluster_raft_addrs == four
                and "node-3" in s.members
                for i in range(4)
            ),
            3.0,
        )
        elect(cluster)
        # A follower leaves: removed from the configuration and from the member map.
        leaving = next(i for i in range(3) if i != leader)
        outcomes: list[tuple[bool, str]] = []
        member.request_remove_member(cluster.addr(leaving), lambda ok, w: outcomes.append((ok, w)))
        assert cluster.run_until(lambda: bool(outcomes), 2.0)
        assert outcomes == [(True, "success")]
        stayers = [i for i in range(4) if i != leaving]
        assert cluster.run_until(
            lambda: all(
                (s := cluster.status(i)) is not None
                and cluster.addr(leaving) not in s.cluster_raft_addrs
                and f"node-{leaving}" not in s.members
                for i in stayers
            ),
            3.0,
        )
        cluster.crash(leaving)
        elect(cluster)


def test_leadership_transfer_is_faster_than_an_election() -> None:
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed=8) as cluster:
        leader, _term = elect(cluster)
        cluster.run_until(lambda: False, 0.5)  # followers caught up
        member = cluster.member(leader)
        assert member is not None
        outcomes: list[tuple[bool, str]] = []
        member.request_transfer_leadership(None, lambda ok, w: outcomes.append((ok, w)))
        start = env.now
        assert cluster.run_until(
            lambda: (a := cluster.agreed_leader()) is not None and a[0] != leader, 1.0
        )
        assert outcomes == [(True, "success")]
        # No election timeout to wait out: a few ticks and round trips.
        assert env.now - start < CONFIG.election_timeout_min_s


# Five members, longer waits: seeds 0, 18 and 92 left a member stuck in a higher term with the
# first Pre-Vote (a pause longer than its 3 s park), found in review. And five with leadership
# transfers and term bumps, which stand without Pre-Vote.
RANDOM_FAULT_RUNS = (
    [(3, False, seed, 20, 1.5) for seed in range(12)]
    + [(5, False, seed, 25, 2.5) for seed in (0, 18, 92)]
    + [(5, True, seed, 25, 2.5) for seed in range(3)]
)


@pytest.mark.parametrize(("n", "transfers", "seed", "steps", "wait_max_s"), RANDOM_FAULT_RUNS)
def test_random_faults_then_convergence(
    n: int, transfers: bool, seed: int, steps: int, wait_max_s: float
) -> None:
    """A fault phase (crashes, restarts, pauses, symmetric and one-way partitions, one change at
    a time; with `transfers`, leadership transfers and term bumps too), then a liveness phase:
    with every fault undone, one leader that everyone follows."""
    rng = random.Random(seed)
    env = simpy.Environment()
    actions = ["crash", "restart", "pause", "resume", "cut", "heal", "wait"]
    if transfers:
        actions += ["transfer", "bump"]
    with SimRaftCluster(env, n, seed) as cluster:
        elect(cluster)
        crashed: set[int] = set()
        paused: set[int] = set()
        partitions: list[int] = []
        for _ in range(steps):
            action = rng.choice(actions)
            i = rng.randrange(n)
            if action == "crash" and i not in crashed and len(crashed) < (n - 1) // 2:
                cluster.crash(i)
                crashed.add(i)
                paused.discard(i)
            elif action == "restart" and crashed:
                j = sorted(crashed)[0]
                cluster.restart(j)
                crashed.discard(j)
            elif action == "pause" and i not in crashed and i not in paused:
                cluster.pause(i)
                paused.add(i)
            elif action == "resume" and paused:
                j = sorted(paused)[0]
                cluster.resume(j)
                paused.discard(j)
            elif action == "cut":
                rest = [j for j in range(n) if j != i]
                partitions.append(cluster.partition([i], rest, one_way=rng.random() < 0.5))
            elif action == "heal" and partitions:
                cluster.heal(partitions.pop(0))
            elif action in ("transfer", "bump"):
                for j, _term in cluster.leaders()[:1]:
                    member = cluster.member(j)
                    assert member is not None
                    if action == "transfer":
                        member.request_transfer_leadership(None)
                    else:
                        member.raise_term_above(member.status.term + rng.randrange(3))
            cluster.run_until(lambda: False, rng.uniform(0.05, wait_max_s))
        for j in sorted(crashed):
            cluster.restart(j)
        for j in sorted(paused):
            cluster.resume(j)
        cluster.heal()
        elect(cluster, timeout_s=15.0 if transfers else 5.0)
        cluster.check_invariants()


def failover_terms(seed: int, config: RaftConfig = CONFIG) -> int:
    """Terms the survivors go through after the leader of an idle cluster crashes."""
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed, config=config) as cluster:
        elect(cluster)
        # Idle longer than connection_timeout_s: follower-follower links carry no Raft traffic.
        cluster.run_until(lambda: False, CONFIG.connection_timeout_s * 2)
        old, term = elect(cluster)
        cluster.crash(old)
        survivors = [i for i in range(3) if i != old]
        assert cluster.run_until(
            lambda: (a := cluster.agreed_leader(survivors)) is not None and a[1] > term, 5.0
        )
        agreed = cluster.agreed_leader(survivors)
        assert agreed is not None
        return agreed[1] - term


def test_pings_keep_idle_links_alive_so_one_election_suffices(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The research measured two elections per failover with pysyncobj as is: the first
    # RequestVote goes out on an idle follower-follower link, which fails pysyncobj's read
    # timeout check on send, and is lost. The simulation must show the same, and the pings fix it.
    # (With Pre-Vote the lost message is a pre-vote, which costs time but no term: measured
    # without it, as the research ran pysyncobj.)
    seeds = range(6)
    as_is = RaftConfig(pre_vote=False)
    with_pings = [failover_terms(s, as_is) for s in seeds]
    monkeypatch.setattr(RaftMember, "_ping_peers", lambda self: None)
    without_pings = [failover_terms(s, as_is) for s in seeds]
    assert without_pings == [2] * len(seeds)
    assert sum(with_pings) < sum(without_pings)
    assert with_pings.count(1) >= len(seeds) - 1  # a split vote may still cost a second term


def terms_seen_with_one_link_cut(seed: int, config: RaftConfig) -> tuple[int, int]:
    """Cut the links between the leader and one follower for 3 s (the third member hears both),
    then heal. Returns (terms the cluster went through, how many other members led meanwhile)."""
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed, config=config) as cluster:
        leader, term, cut_off = leader_and_a_follower(cluster)
        pid = cluster.partition([leader], [cut_off])
        leaders_seen = {leader}

        def note_leader() -> bool:
            for i, _ in cluster.leaders():
                leaders_seen.add(i)
            return False

        cluster.run_until(note_leader, 3.0)
        cluster.heal(pid)
        _, final_term = elect(cluster, timeout_s=3.0)
        cluster.run_until(note_leader, 1.0)
        return final_term - term, len(leaders_seen) - 1


@pytest.mark.parametrize("seed", range(4))
def test_pre_vote_keeps_a_member_cut_off_from_the_leader_alone_from_deposing_it(
    seed: int,
) -> None:
    # Without Pre-Vote the cut-off member raises its term on every timeout, and the member that
    # hears both takes the higher term and deposes the leader: elections for nothing (checked
    # first, so this test would see the difference). With it, the third member refuses the
    # pre-votes while it hears the leader: one term, one leader throughout.
    churn, _ = terms_seen_with_one_link_cut(seed, RaftConfig(pre_vote=False))
    assert churn >= 2
    churn, changes = terms_seen_with_one_link_cut(seed, CONFIG)
    assert (churn, changes) == (0, 0)


def test_pre_vote_lets_a_newcomer_join_without_an_election() -> None:
    # The CI failure this was written for: a newcomer whose election timer fires twice before
    # the leader reaches it raises the term and forces an election. Here the leader's link to
    # it stays cut for a second after it is added, so its timer fires many times.
    env = simpy.Environment()
    config = RaftConfig(dynamic_membership=True)
    with SimRaftCluster(env, 3, seed=6, config=config) as cluster:
        leader, term = elect(cluster)
        new = cluster.add_member_host()
        pid = cluster.partition([leader], [new])
        add_through(cluster, leader, new)
        cluster.run_until(lambda: False, 1.0)
        assert cluster.agreed_leader(range(3)) == (leader, term)
        cluster.heal(pid)
        assert cluster.run_until(lambda: cluster.agreed_leader() == (leader, term), 1.0), (
            cluster.leaders(),
            [cluster.status(i) for i in range(4)],
        )


@pytest.mark.parametrize("seed", range(6))
def test_pre_vote_holds_after_a_pause_longer_than_any_timeout(seed: int) -> None:
    # A follower frozen for 3.5 s, then resumed: it must ask before it stands, and the others
    # refuse while they hear the leader. (Parked only 3 s ahead, pysyncobj's own deadline fell
    # due during the pause and the member stood at its first tick: 2 of these 6 seeds.)
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed) as cluster:
        leader, term, follower = leader_and_a_follower(cluster)
        cluster.pause(follower)
        cluster.run_until(lambda: False, 3.5)
        cluster.resume(follower)
        cluster.run_until(lambda: False, 1.0)
        assert cluster.agreed_leader() == (leader, term), cluster.leaders()


@pytest.mark.parametrize("seed", range(4))
def test_a_member_whose_term_ran_ahead_is_brought_back(seed: int) -> None:
    # A transfer whose vote requests are all lost (the target's outgoing links cut one way for
    # 3 s) leaves the target a term ahead of the leader. pysyncobj answers a lower term's
    # AppendEntries with nothing and the others refuse pre-votes while they hear the leader, so
    # the target must stand without asking, once it hears a leader of a lower term (stuck as a
    # candidate for good in every seed before that rule).
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed) as cluster:
        leader, term, target = leader_and_a_follower(cluster)
        pid = cluster.partition([target], [i for i in range(3) if i != target], one_way=True)
        member = cluster.member(leader)
        assert member is not None
        member.request_transfer_leadership(cluster.addr(target))
        cluster.run_until(lambda: False, 3.0)
        assert status_of(cluster, target).term > term
        cluster.heal(pid)
        assert cluster.run_until(lambda: cluster.agreed_leader() is not None, 3.0), [
            cluster.status(i) for i in range(3)
        ]


@pytest.mark.parametrize("seed", range(3))
def test_a_deposed_leaders_late_heartbeats_do_not_let_a_follower_skip_the_pre_vote(
    seed: int,
) -> None:
    # Five members. The leader L hands over to C but never hears C (one-way cut), so L keeps
    # sending AppendEntries of the old term for up to the fallback timeout. Then M stops hearing
    # C: M has a leader in its own term, and its timer fires while L's stale heartbeats still
    # arrive. M must ask first, and C, heard by the others, keeps leading (found in review: the
    # rule for a member whose term ran ahead let M stand at once, deposing C in every seed).
    env = simpy.Environment()
    with SimRaftCluster(env, 5, seed) as cluster:
        old, _term, new = leader_and_a_follower(cluster)
        bystander = next(i for i in range(5) if i not in (old, new))
        cluster.partition([new], [old], one_way=True)
        member = cluster.member(old)
        assert member is not None
        member.request_transfer_leadership(cluster.addr(new))
        assert cluster.run_until(lambda: status_of(cluster, new).is_leader, 1.0)
        term = status_of(cluster, new).term
        cluster.run_until(lambda: False, 0.05)
        cluster.partition([new], [bystander], one_way=True)
        cluster.run_until(lambda: False, 2.0)
        assert cluster.leaders() == [(new, term)], cluster.leaders()


def test_accepts_is_false_across_a_cut_either_way_and_to_a_stopped_member() -> None:
    # The leader's probe of a newcomer (a TCP connect) needs both directions and a running
    # process; a paused one still accepts (its kernel does).
    env = simpy.Environment()
    with SimRaftCluster(env, 3, seed=5) as cluster:
        assert cluster.accepts(0, 1) and cluster.accepts(1, 0)
        pid = cluster.partition([0], [1], one_way=True)
        assert not cluster.accepts(0, 1) and not cluster.accepts(1, 0)
        assert cluster.accepts(0, 2)
        cluster.heal(pid)
        assert cluster.accepts(0, 1)
        cluster.pause(1)
        assert cluster.accepts(0, 1)
        cluster.resume(1)
        cluster.crash(2)
        assert not cluster.accepts(0, 2)

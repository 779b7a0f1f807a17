"""Three real node processes on 127.0.0.1, one real Redis: failover, fencing, partitions."""

from __future__ import annotations

import signal
import time
from typing import Any

import pytest

from tests.cluster.conftest import LEASE_MS, Cluster
from tests.probe_tasks import read_log
from tests.procs import http, wait_for

pytestmark = pytest.mark.slow


def test_cluster_view(cluster: Cluster) -> None:
    leader, term = cluster.wait_leader()

    def full_view() -> dict[str, Any] | None:
        # The registry refreshes every half second: wait until it lists everyone's process.
        v = cluster.view(cluster.nodes[1])
        return v if all(m["pid"] for m in v["members"]) and len(v["members"]) == 3 else None

    view = wait_for(full_view, 10, "cluster view lists every member")
    assert view["leader"] == leader and view["term"] == term >= 1
    ids = sorted(m["id"] for m in view["members"])
    assert ids == ["node1", "node2", "node3"]
    for m in view["members"]:
        assert set(m) >= {
            "id",
            "http",
            "raft",
            "role",
            "healthy",
            "pid",
            "workers_free",
            "workers_busy",
            "leases",
        }
        assert m["role"] == ("leader" if m["id"] == leader else "follower")
        assert m["pid"] == cluster.by_id(m["id"]).pid
    # Every node's workers run tasks, though only the leader assigns them.
    ids_submitted = cluster.submit_batch(cluster.nodes[0], 60, payload={"seconds": 0.05})
    cluster.wait_all_succeeded(ids_submitted)
    nodes_used = {e["node"] for e in read_log(cluster.probe_log)}
    assert nodes_used == {"node1", "node2", "node3"}


def test_kill_9_leader_under_load(cluster: Cluster) -> None:
    leader, term = cluster.wait_leader()
    ids: list[str] = []
    for node in cluster.nodes:
        ids += cluster.submit_batch(node, 1000, payload={"seconds": 0.003})
    wait_for(lambda: len(read_log(cluster.probe_log)) > 600, 30, "load running")
    victim = cluster.by_id(leader)
    cluster.killed_pids.add(victim.pid)
    victim.kill()
    survivors = cluster.live()
    new_leader, _new_term = cluster.wait_leader(survivors, above_term=term)
    assert new_leader != leader
    # Submissions still go through while and after the leader changes.
    ids += cluster.submit_batch(survivors[0], 200, payload={"seconds": 0.003})
    cluster.wait_all_succeeded(ids)
    cluster.check_executions()


def test_paused_leader_is_fenced_when_it_resumes(cluster: Cluster) -> None:
    leader, term = cluster.wait_leader()
    old = cluster.by_id(leader)
    ids = cluster.submit_batch(cluster.nodes[0], 300, payload={"seconds": 0.02})
    wait_for(lambda: len(read_log(cluster.probe_log)) > 40, 30, "load running")
    cluster.paused_pids.add(old.pid)
    old.signal(signal.SIGSTOP)
    others = [n for n in cluster.nodes if n is not old]
    _new_leader, _new_term = cluster.wait_leader(others, above_term=term)
    ids += cluster.submit_batch(others[0], 300, payload={"seconds": 0.02})
    old.signal(signal.SIGCONT)
    cluster.paused_pids.discard(old.pid)
    # The resumed node learns it was deposed and follows the new leader.
    cluster.wait_leader(cluster.nodes, above_term=term)
    cluster.wait_all_succeeded(ids)
    cluster.paused_pids.add(old.pid)  # its pre-pause attempts may overlap their re-runs
    cluster.check_executions()
    # Whatever it tried to write as leader after resuming was refused, and counted.
    status, text = http("GET", old.url + "/metrics")
    assert status == 200
    fenced = [
        float(line.split()[-1])
        for line in str(text).splitlines()
        if line.startswith("dsched_fenced_writes_total")
    ]
    assert fenced, "the fenced-writes counter is exported"
    print(f"fenced writes counted on the resumed leader: {fenced[0]:.0f}")


def test_partition_minority_leader_stops_majority_carries_on(cluster: Cluster) -> None:
    leader, term = cluster.wait_leader()
    minority = cluster.by_id(leader)
    i = cluster.nodes.index(minority)
    cluster.proxies.partition(
        [cluster.advertised[i]], [a for j, a in enumerate(cluster.advertised) if j != i]
    )
    majority = [n for n in cluster.nodes if n is not minority]
    new_leader, _new_term = cluster.wait_leader(majority, above_term=term)
    assert new_leader != leader
    # The old leader may still believe it leads for a moment; the fence makes that harmless.
    ids = cluster.submit_batch(majority[0], 200, payload={"seconds": 0.01})
    ids += cluster.submit_batch(minority, 100, payload={"seconds": 0.01})
    cluster.wait_all_succeeded(ids[:200])
    # The minority side does not lead for long: it gets no quorum.
    wait_for(lambda: cluster.view(minority)["leader"] != leader, 10, "minority steps down")
    cluster.proxies.heal()
    cluster.wait_leader(cluster.nodes, above_term=term)
    cluster.wait_all_succeeded(ids)
    cluster.check_executions()


def test_a_follower_cut_off_from_the_leader_alone_deposes_nobody(cluster: Cluster) -> None:
    # Without Pre-Vote the cut-off follower stands in a higher term at every election timeout
    # (0.1-0.3 s), and the third member, which hears both, takes that term and votes for it: a
    # new leader within a second. With it the third member refuses while it hears the leader.
    leader, term = cluster.wait_leader()
    lead = cluster.by_id(leader)
    cut_off, third = [n for n in cluster.nodes if n is not lead]
    cluster.proxies.partition(
        [cluster.advertised[cluster.nodes.index(lead)]],
        [cluster.advertised[cluster.nodes.index(cut_off)]],
    )
    # Stability is a property of a stretch of time: watch it, 3 s, in bounded steps.
    until = time.monotonic() + 3.0
    looks = 0
    while time.monotonic() < until and looks < 300:
        looks += 1
        for node in (lead, third):
            view = cluster.view(node)
            assert (view["leader"], view["term"]) == (leader, term), (node.name, view)
        time.sleep(0.01)
    # The cut-off node still works: its slots get tasks through Redis, not through Raft.
    ids = cluster.submit_batch(cut_off, 50, payload={"seconds": 0.01})
    cluster.wait_all_succeeded(ids)
    cluster.proxies.heal()
    assert cluster.wait_leader() == (leader, term)
    cluster.check_executions()


def test_leader_cut_off_from_redis_hands_over(store_cut_cluster: Cluster) -> None:
    """The leader loses Redis but not its peers: Raft alone would keep it leading (and nothing
    assigned) until the link healed; it hands over (core/pacing.py) and the others carry on."""
    cluster = store_cut_cluster
    assert cluster.store_proxies is not None
    leader, term = cluster.wait_leader()
    cut = cluster.by_id(leader)
    others = [n for n in cluster.nodes if n is not cut]
    started = time.monotonic()
    cluster.store_proxies.cut(cluster.nodes.index(cut))
    new_leader, _ = cluster.wait_leader(others, above_term=term)
    print(f"leader cut off from Redis: {new_leader} leads {time.monotonic() - started:.2f} s on")
    assert new_leader != leader
    # Work goes on while the cut lasts.
    ids = cluster.submit_batch(others[0], 100, payload={"seconds": 0.01})
    cluster.wait_all_succeeded(ids, timeout_s=30, via=others[0])  # the cut node reads nothing
    cluster.store_proxies.heal()
    seen: list[Any] = []

    def ready_again() -> bool:
        status, body = cut.get("/readyz", timeout_s=2)
        seen[:] = [body]
        return status == 200

    try:
        wait_for(ready_again, 30, "the cut node ready again")
    except AssertionError as exc:
        raise AssertionError(f"{exc}; its last /readyz: {seen}") from None
    ids = cluster.submit_batch(cut, 50, payload={"seconds": 0.01})
    cluster.wait_all_succeeded(ids, timeout_s=30)
    cluster.check_executions()


def test_a_node_cut_off_from_redis_stops_its_handlers_when_their_leases_lapse(
    store_cut_cluster: Cluster,
) -> None:
    """A follower that loses Redis (not its peers, nor its life) while it runs tasks longer than
    a lease: the leader runs them again elsewhere once the leases lapse, so the cut node must
    stop its own handlers by then (no heartbeat of its landed), not run them to their end."""
    cluster = store_cut_cluster
    assert cluster.store_proxies is not None
    leader, _ = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n.name != leader)
    run_s = 4 * LEASE_MS / 1000
    ids = cluster.submit_batch(cluster.by_id(leader), 12, payload={"seconds": run_s})

    def started_on_follower() -> set[str]:
        log = read_log(cluster.probe_log)
        return {e["task"] for e in log if e["node"] == follower.name and e["event"] == "start"}

    wait_for(lambda: bool(started_on_follower()), 20, "the follower running tasks")
    cut_at = time.time()
    cluster.store_proxies.cut(cluster.nodes.index(follower))
    held = started_on_follower()

    def stopped_on_follower() -> set[str]:
        log = read_log(cluster.probe_log)
        return {e["task"] for e in log if e["node"] == follower.name and e["event"] == "stopped"}

    wait_for(lambda: held <= stopped_on_follower(), 3 * LEASE_MS / 1000, "its handlers stopped")
    log = read_log(cluster.probe_log)
    stops = [e["t"] for e in log if e["node"] == follower.name and e["event"] == "stopped"]
    print(f"handlers stopped {min(stops) - cut_at:.2f}-{max(stops) - cut_at:.2f} s after the cut")
    # Not before the last lease its heartbeats renewed could lapse (one goes out every third
    # of a lease, so each lease holds at least two thirds of one past the cut), and well
    # before the handlers' own end.
    assert min(stops) >= cut_at + 0.5 * LEASE_MS / 1000, (cut_at, stops)
    assert max(stops) < cut_at + LEASE_MS / 1000 + 1.0, (cut_at, stops)
    others = [n for n in cluster.nodes if n is not follower]
    cluster.wait_all_succeeded(ids, timeout_s=60, via=others[0])
    cluster.store_proxies.heal()
    cluster.check_executions()  # the cut node was healthy: any overlap fails here


def test_follower_crash_its_leases_run_again_elsewhere(cluster: Cluster) -> None:
    leader, _ = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n.name != leader)
    ids = cluster.submit_batch(cluster.nodes[0], 15, payload={"seconds": 1.0})

    def follower_runs_some() -> bool:
        return any(e["node"] == follower.name for e in read_log(cluster.probe_log))

    wait_for(follower_runs_some, 20, "follower running tasks")
    log = read_log(cluster.probe_log)
    cut = {e["task"] for e in log if e["node"] == follower.name and e["event"] == "start"} - {
        e["task"] for e in log if e["node"] == follower.name and e["event"] == "end"
    }
    cluster.killed_pids.add(follower.pid)
    follower.kill()
    cluster.wait_all_succeeded(ids, timeout_s=60)
    cluster.check_executions()
    # Every task the crash cut short ran again, to the end, on another node.
    log = read_log(cluster.probe_log)
    finished_elsewhere = {
        e["task"] for e in log if e["event"] == "end" and e["node"] != follower.name
    }
    assert cut, "the follower held leases when it died"
    assert cut <= finished_elsewhere


def test_a_lone_survivor_names_no_leader_and_is_not_ready(cluster: Cluster) -> None:
    """Kill a follower, then the leader: the survivor has no majority, so it must not go on
    naming the dead leader nor call itself ready (nothing can be dispatched)."""
    leader, _ = cluster.wait_leader()
    follower, survivor = [n for n in cluster.nodes if n.name != leader]
    for victim in (follower, cluster.by_id(leader)):
        cluster.killed_pids.add(victim.pid)
        victim.kill()

    def alone() -> bool:
        view = cluster.view(survivor)
        return view["leader"] is None and survivor.get("/readyz", timeout_s=2)[0] == 503

    wait_for(alone, 15, "the survivor to name no leader and be not ready")


def test_a_follower_cut_off_from_redis_is_not_ready(store_cut_cluster: Cluster) -> None:
    cluster = store_cut_cluster
    assert cluster.store_proxies is not None
    leader, _ = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n.name != leader)
    cluster.store_proxies.cut(cluster.nodes.index(follower))

    def not_ready() -> bool:
        status, body = follower.get("/readyz", timeout_s=2)
        return status == 503 and body["checks"]["redis"] is False

    wait_for(not_ready, 15, "the cut follower to report Redis down")
    # And it keeps saying so while the cut lasts (its leader loop, which touches no store as
    # a follower, must not report Redis as reachable).
    polls = []
    for _ in range(20):
        time.sleep(0.1)
        polls.append(not_ready())
    assert all(polls), polls
    cluster.store_proxies.heal()
    wait_for(lambda: follower.get("/readyz", timeout_s=2)[0] == 200, 30, "ready again")

"""Three real node processes on 127.0.0.1, one real Redis: failover, fencing, partitions."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.raftproxy import RaftProxies
from tests.probe_tasks import read_log
from tests.procs import NodeProc, free_ports, http, terminal, wait_for

LEASE_MS = 1500
pytestmark = pytest.mark.slow


@dataclass
class Cluster:
    nodes: list[NodeProc]
    proxies: RaftProxies
    advertised: list[str]
    probe_log: str
    killed_pids: set[int] = field(default_factory=set)
    paused_pids: set[int] = field(default_factory=set)

    def live(self) -> list[NodeProc]:
        return [n for n in self.nodes if n.alive() and n.pid not in self.paused_pids]

    def view(self, node: NodeProc) -> dict[str, Any]:
        status, body = node.get("/v1/cluster", timeout_s=2)
        assert status == 200, body
        return body  # type: ignore[no-any-return]

    def agreed_leader(self, among: list[NodeProc] | None = None) -> tuple[str, int] | None:
        """(leader id, term) if every given node names the same leader in the same term."""
        views = [self.view(n) for n in (among or self.live())]
        pairs = {(v["leader"], v["term"]) for v in views}
        if len(pairs) == 1:
            leader, term = pairs.pop()
            if leader is not None:
                return leader, term
        return None

    def wait_leader(
        self, among: list[NodeProc] | None = None, above_term: int = 0
    ) -> tuple[str, int]:
        def agreed() -> tuple[str, int] | None:
            got = self.agreed_leader(among)
            return got if got and got[1] > above_term else None

        return wait_for(agreed, 30, "one agreed leader")  # type: ignore[no-any-return]

    def by_id(self, node_id: str) -> NodeProc:
        return next(n for n in self.nodes if n.name == node_id)

    def submit_batch(self, node: NodeProc, n: int, **task: Any) -> list[str]:
        status, body = node.post(
            "/v1/tasks/batch", {"tasks": [{"type": "probe", **task} for _ in range(n)]}
        )
        assert status == 201, body
        return [t["id"] for t in body["tasks"]]

    def wait_all_succeeded(self, ids: list[str], timeout_s: float = 90) -> None:
        pending = set(ids)

        def done() -> bool:
            node = self.live()[0]
            for tid in sorted(pending)[:200]:
                status, body = node.get(f"/v1/tasks/{tid}", timeout_s=2)
                if status == 200 and terminal(body["status"]):
                    assert body["status"] == "succeeded", body
                    pending.discard(tid)
            return not pending

        wait_for(done, timeout_s, f"{len(pending)} tasks to succeed", poll_s=0.2)

    def check_executions(self) -> dict[str, int]:
        """No task ran on two nodes at once unless the earlier holder had lost its lease
        (its process was killed or paused past the deadline). Returns re-runs per task."""
        starts: dict[tuple[str, int], dict[str, Any]] = {}
        ends: dict[tuple[str, int], float] = {}
        for e in read_log(self.probe_log):
            key = (e["task"], e["attempt"])
            if e["event"] == "start":
                assert key not in starts, f"attempt started twice: {key}"
                starts[key] = e
            else:
                ends[key] = e["t"]
        by_task: dict[str, list[dict[str, Any]]] = {}
        for (tid, _), e in starts.items():
            by_task.setdefault(tid, []).append(e)
        reruns: dict[str, int] = {}
        for tid, runs in by_task.items():
            runs.sort(key=lambda e: e["attempt"])
            for earlier, later in itertools.pairwise(runs):
                end = ends.get((tid, earlier["attempt"]))
                overlapped = end is None or end > later["t"]
                if overlapped:
                    assert earlier["pid"] in self.killed_pids | self.paused_pids, (
                        f"{tid}: attempt {later['attempt']} started on {later['node']} while "
                        f"attempt {earlier['attempt']} still ran on a healthy {earlier['node']}"
                    )
            if len(runs) > 1:
                reruns[tid] = len(runs) - 1
        return reruns


@pytest.fixture
def cluster(tmp_path: Path, redis_factory: Any) -> Iterator[Cluster]:
    redis = redis_factory(fsync="everysec")
    ports = free_ports(9)
    http_ports, raft_ports, proxy_ports = ports[0:3], ports[3:6], ports[6:9]
    advertised = [f"127.0.0.1:{p}" for p in proxy_ports]
    proxies = RaftProxies(dict(zip(advertised, raft_ports, strict=True))).start()
    probe_log = str(tmp_path / "probe.jsonl")
    nodes = []
    for i in range(3):
        nodes.append(
            NodeProc(
                tmp_path,
                f"node{i + 1}",
                http_ports[i],
                redis.url,
                raft_port=raft_ports[i],
                peers=[a for j, a in enumerate(advertised) if j != i],
                extra=[
                    "--raft-advertise",
                    advertised[i],
                    "--lease-ms",
                    str(LEASE_MS),
                    "--shutdown-grace-s",
                    "1",
                ],
                env={"DSCHED_PROBE_LOG": probe_log},
            ).start()
        )
    c = Cluster(nodes, proxies, advertised, probe_log)
    try:
        for node in nodes:
            node.wait_ready()
        c.wait_leader()
        yield c
    finally:
        for node in nodes:
            node.signal(signal.SIGCONT)
            node.kill()
        proxies.close()


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

"""Fixtures of the cluster tests: three real node processes behind Raft proxies, one Redis."""

from __future__ import annotations

import itertools
import signal
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from tests.cluster.raftproxy import RaftProxies
from tests.cluster.storeproxy import StoreProxies
from tests.probe_tasks import read_log
from tests.procs import NodeProc, free_ports, terminal, wait_for

LEASE_MS = 1500


@dataclass
class Cluster:
    nodes: list[NodeProc]
    proxies: RaftProxies
    advertised: list[str]
    probe_log: str
    store_proxies: StoreProxies | None = None
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

    def wait_all_succeeded(
        self, ids: list[str], timeout_s: float = 90, via: NodeProc | None = None
    ) -> None:
        """Read through ``via`` (default: the first live node, which must reach Redis)."""
        pending = set(ids)

        def done() -> bool:
            node = via or self.live()[0]
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


def _start_cluster(
    tmp_path: Path, redis: Any, store_proxies: StoreProxies | None = None
) -> Iterator[Cluster]:
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
                redis.url if store_proxies is None else store_proxies.url(i),
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
    c = Cluster(nodes, proxies, advertised, probe_log, store_proxies)
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
        if store_proxies is not None:
            store_proxies.close()


@pytest.fixture
def cluster(tmp_path: Path, redis_factory: Any) -> Iterator[Cluster]:
    yield from _start_cluster(tmp_path, redis_factory(fsync="everysec"))


@pytest.fixture
def store_cut_cluster(tmp_path: Path, redis_factory: Any) -> Iterator[Cluster]:
    """The cluster with each node's Redis link behind its own proxy (cluster.store_proxies)."""
    redis = redis_factory(fsync="everysec")
    store_proxies = StoreProxies(free_ports(3), redis.port).start()
    yield from _start_cluster(tmp_path, redis, store_proxies)

"""Nodes started with a Raft password (DSCHED_RAFT_PASSWORD) form one cluster and run work."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tests.procs import MkdirOnUnpickle, NodeProc, free_ports, send_raft_frame, terminal, wait_for


def test_nodes_with_a_raft_password_form_a_cluster_strangers_frames_are_refused(
    tmp_path: Path, redis_factory: Any
) -> None:
    redis = redis_factory(fsync="everysec")
    ports = free_ports(6)
    http_ports, raft_ports = ports[:3], ports[3:]
    addrs = [f"127.0.0.1:{p}" for p in raft_ports]
    nodes = [
        NodeProc(
            tmp_path,
            f"node{i + 1}",
            http_ports[i],
            redis.url,
            raft_port=raft_ports[i],
            peers=[a for a in addrs if a != addrs[i]],
            env={"DSCHED_RAFT_PASSWORD": "s3cret"},
        )
        for i in range(3)
    ]
    try:
        for node in nodes:
            node.start()
        for node in nodes:
            node.wait_ready()

        def agreed() -> str | None:
            views = [node.get("/v1/cluster", timeout_s=2)[1] for node in nodes]
            leaders = {(v["leader"], v["term"]) for v in views}
            return views[0]["leader"] if len(leaders) == 1 and views[0]["leader"] else None

        assert wait_for(agreed, 30, "one agreed leader") in {n.name for n in nodes}
        status, body = nodes[0].post("/v1/tasks", {"type": "noop"})
        assert status == 201, body

        def finished() -> bool:
            got = nodes[1].get(f"/v1/tasks/{body['id']}")[1]
            return terminal(got["status"]) and got["status"] == "succeeded"

        wait_for(finished, 30, "the task to succeed")
        # The password reached Raft: a frame from outside is not unpickled.
        marker = tmp_path / "unpickled"
        with send_raft_frame(addrs[0], MkdirOnUnpickle(str(marker))) as sock:
            sock.settimeout(10.0)
            assert sock.recv(1) == b""
        assert not marker.exists()
    finally:
        for node in nodes:
            node.kill()

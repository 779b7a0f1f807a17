"""A node joins a running cluster through Raft's dynamic membership, and leaves it."""

from __future__ import annotations

import io
from pathlib import Path

import pytest

from node.cli import main as cli_main
from tests.cluster.conftest import LEASE_MS, Cluster
from tests.procs import NodeProc, free_ports, http, wait_for

pytestmark = pytest.mark.slow


def start_newcomer(cluster: Cluster, tmp_path: Path, peers: list[str]) -> tuple[NodeProc, str]:
    """Start node4 on the cluster's Redis, outside its Raft configuration: (process, Raft
    address)."""
    http_port, raft_port = free_ports(2)
    redis_url = cluster.nodes[0].args[cluster.nodes[0].args.index("--redis-url") + 1]
    newcomer = NodeProc(
        tmp_path,
        "node4",
        http_port,
        redis_url,
        raft_port=raft_port,
        peers=peers,
        extra=["--lease-ms", str(LEASE_MS)],
    ).start()
    return newcomer, f"127.0.0.1:{raft_port}"


def test_a_node_joins_and_leaves(cluster: Cluster, tmp_path: Path) -> None:
    leader, term = cluster.wait_leader()
    newcomer, addr = start_newcomer(cluster, tmp_path, cluster.advertised)
    try:
        # Not in the configuration yet: nobody answers its votes or sends it heartbeats.
        wait_for(lambda: newcomer.get("/healthz")[0] == 200, 30, "newcomer up")
        assert newcomer.get("/v1/cluster")[1]["leader"] is None
        follower = next(n for n in cluster.nodes if n.name != leader)
        out = io.StringIO()
        # Sent to a follower on purpose: the client follows the 421 to the leader.
        code = cli_main(["members", "add", addr, "--url", follower.url])
        assert code == 0, out.getvalue()
        newcomer.wait_ready()
        # The newcomer follows the cluster's leader, with no election: all four name the leader
        # from before the join, in its term. (Without Pre-Vote, which pysyncobj lacks and the
        # node adds, a newcomer whose election timer fired twice before the leader's first
        # heartbeat reached it raised the term and forced an election: seen in CI under load.)
        assert cluster.wait_leader([*cluster.nodes, newcomer]) == (leader, term)
        for node in cluster.nodes:
            wait_for(
                lambda n=node: addr in cluster.view(n)["configuration"],  # type: ignore[misc]
                15,
                f"{node.name} has the newcomer in its configuration",
            )
        wait_for(
            lambda: "node4" in {m["id"] for m in cluster.view(follower)["members"]},
            10,
            "the newcomer listed as a member",
        )
        code = cli_main(["members", "remove", addr, "--url", cluster.by_id(leader).url])
        assert code == 0
        # Out of the configuration of every member.
        for node in cluster.nodes:
            wait_for(
                lambda n=node: addr not in cluster.view(n)["configuration"],  # type: ignore[misc]
                15,
                f"{node.name} dropped the newcomer",
            )
        # The three carry on: one leader, no new election needed.
        assert cluster.wait_leader() == (leader, term)
    finally:
        newcomer.kill()


def test_removing_the_leader_hands_over_and_refusals_are_409(cluster: Cluster) -> None:
    leader, term = cluster.wait_leader()
    lead = cluster.by_id(leader)
    i = cluster.nodes.index(lead)
    # Refusals that no retry can change are 409, naming why.
    status, body = lead.post("/v1/cluster/members", {"raft": cluster.advertised[(i + 1) % 3]})
    assert status == 409 and "already a member" in body["error"]["message"], body
    (free,) = free_ports(1)
    status, body = http("DELETE", f"{lead.url}/v1/cluster/members/127.0.0.1:{free}")
    assert status == 409 and "not a member" in body["error"]["message"], body
    # The leader itself: it hands over, and the client's retry reaches the new leader.
    code = cli_main(["members", "remove", cluster.advertised[i], "--url", lead.url])
    assert code == 0
    others = [n for n in cluster.nodes if n is not lead]
    new_leader, _ = cluster.wait_leader(others, above_term=term)
    assert new_leader != leader
    for node in others:
        wait_for(
            lambda n=node: cluster.advertised[i] not in cluster.view(n)["configuration"],  # type: ignore[misc]
            15,
            f"{node.name} dropped the old leader",
        )


def test_a_change_that_would_leave_no_reachable_majority_is_refused(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Raft commits nothing, not even a change's undoing, without a reachable majority of the
    new configuration. With one of three members down, adding an address where nothing runs
    left two of four: no leader, for good (found walking through the README). The leader
    refuses it; adding a node that is up still works."""
    leader, term = cluster.wait_leader()
    lead = cluster.by_id(leader)
    i = cluster.nodes.index(lead)
    down = cluster.nodes[(i + 1) % 3]
    down.kill()
    down_addr = cluster.advertised[(i + 1) % 3]
    wait_for(lambda: down_addr not in cluster.view(lead)["reachable"], 15, "the leader misses it")
    wait_for(
        lambda: {m["id"]: m["role"] for m in cluster.view(lead)["members"]}[down.name] == "down",
        15,
        "the leader shows it down",
    )
    (free,) = free_ports(1)
    ghost = f"127.0.0.1:{free}"
    status, body = lead.post("/v1/cluster/members", {"raft": ghost})
    assert status == 409, body
    assert body["error"]["code"] == "membership_unsafe" and body["error"]["field"] == "raft"
    assert "2 of 4" in body["error"]["message"] and "start that node" in body["error"]["message"]
    # Removing a live follower would leave one of two: refused too.
    other = cluster.nodes[(i + 2) % 3]
    status, body = http(
        "DELETE", f"{lead.url}/v1/cluster/members/{cluster.advertised[(i + 2) % 3]}"
    )
    assert status == 409 and body["error"]["code"] == "membership_unsafe", body
    # Nor does the leader hand over when asked to remove itself (1 of 2 would be left).
    status, body = http("DELETE", f"{lead.url}/v1/cluster/members/{cluster.advertised[i]}")
    assert status == 409 and body["error"]["code"] == "membership_unsafe", body
    assert sorted(cluster.view(lead)["configuration"]) == sorted(cluster.advertised)
    assert cluster.wait_leader([lead, other]) == (leader, term)
    # A newcomer that is up makes three of four: added.
    newcomer, addr = start_newcomer(cluster, tmp_path, cluster.advertised)
    try:
        wait_for(lambda: newcomer.get("/healthz")[0] == 200, 30, "newcomer up")
        status, body = lead.post("/v1/cluster/members", {"raft": addr}, timeout_s=15)
        assert status == 200, body
        wait_for(
            lambda: addr in cluster.view(lead)["reachable"], 15, "the leader hears the newcomer"
        )
    finally:
        newcomer.kill()


def test_a_member_restarted_with_peers_that_miss_the_leader_finds_it(cluster: Cluster) -> None:
    """Raft state is in memory: a restarted member knows only its --peers. After members joined
    and left, those may miss the current leader, whose connections pysyncobj refuses as from an
    unknown node: the member would never be brought up to date (found by the simulation's
    membership scenario). The leader publishes its configuration in its registry entry, and a
    starting member adds it to its peers."""
    leader, term = cluster.wait_leader()
    lead = cluster.by_id(leader)
    follower = next(n for n in cluster.nodes if n is not lead)
    third = next(n for n in cluster.nodes if n not in (lead, follower))
    follower.kill()
    # Restarted with --peers that name the third member only, as if written before the
    # leader joined the cluster.
    args = follower.args
    args[args.index("--peers") + 1] = cluster.advertised[cluster.nodes.index(third)]
    follower.start()
    wait_for(
        lambda: cluster.view(follower)["leader"] == leader,
        30,
        "the restarted member follows the leader its --peers do not name",
    )
    assert cluster.advertised[cluster.nodes.index(lead)] in cluster.view(follower)["configuration"]
    # No election was needed: the leader of before, in its term, for all three.
    assert cluster.wait_leader() == (leader, term)


def test_a_newcomer_whose_peers_miss_the_leader_adopts_it_once_added(
    cluster: Cluster, tmp_path: Path
) -> None:
    """A newcomer started with --peers that name one follower only (an operator's slip, or a
    member that missed joins while cut off): once added, the leader's connections to it are
    refused as from an unknown node. On its next registry read it adopts the members it lacks
    from the configuration the leader publishes, and follows the leader."""
    leader, term = cluster.wait_leader()
    follower = next(n for n in cluster.nodes if n.name != leader)
    newcomer, addr = start_newcomer(
        cluster, tmp_path, [cluster.advertised[cluster.nodes.index(follower)]]
    )
    try:
        wait_for(lambda: newcomer.get("/healthz")[0] == 200, 30, "newcomer up")
        lead_addr = cluster.advertised[cluster.nodes.index(cluster.by_id(leader))]
        assert lead_addr not in cluster.view(newcomer)["configuration"]
        assert cli_main(["members", "add", addr, "--url", cluster.by_id(leader).url]) == 0
        wait_for(
            lambda: cluster.view(newcomer)["leader"] == leader,
            30,
            "the newcomer follows a leader its --peers do not name",
        )
        assert lead_addr in cluster.view(newcomer)["configuration"]
        assert cluster.wait_leader([*cluster.nodes, newcomer]) == (leader, term)
    finally:
        newcomer.kill()

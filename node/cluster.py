"""The node's leadership in a cluster: a pysyncobj Raft member, seen from the event loop."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from typing import Any

from node.config import NodeConfig
from node.raft import RaftConfig, RaftMember, RaftStatus

log = logging.getLogger("dsched.cluster")

# The Raft configuration a node runs (the simulation runs the same): dynamic membership on, so
# that members can join and leave a running cluster.
NODE_RAFT_CONFIG = RaftConfig(dynamic_membership=True)
# A leader's registry entry (its "raft_config") counts when seen this recently: it is refreshed
# every second, and node clocks may differ by a little.
REGISTRY_CONFIG_FRESH_MS = 10_000


def published_configuration(
    entries: Mapping[str, Mapping[str, Any]], now_ms: int
) -> tuple[int, list[str]] | None:
    """(term, Raft configuration) that the live leader of the highest term publishes in its
    registry entry (NodeRuntime._raft_config_info), or None if no live leader publishes one."""
    best: tuple[int, list[str]] | None = None
    for info in entries.values():
        members, term, seen = (
            info.get("raft_config"),
            info.get("raft_term"),
            info.get("last_seen_ms"),
        )
        if not isinstance(members, list) or not isinstance(term, int):
            continue
        if not isinstance(seen, int) or abs(now_ms - seen) > REGISTRY_CONFIG_FRESH_MS:
            continue
        if best is None or term > best[0]:
            best = (term, [m for m in members if isinstance(m, str) and m])
    return best


def peers_from_registry(
    entries: Mapping[str, Mapping[str, Any]], now_ms: int, self_addr: str
) -> set[str]:
    """The published configuration (published_configuration) without ``self_addr``; empty if
    none is published, or if ``self_addr`` is not in it (a newcomer, whose --peers the operator
    gives; or a node of some earlier cluster on other ports, whose dead members must not
    become phantom peers).

    Raft state is in memory, so a member starts from its --peers alone. After members joined
    and left, those may miss the current leader, whose connections pysyncobj then refuses as
    from an unknown node: the member would never hear the log that brings it up to date, and
    would sit out of the cluster for good. Starting from --peers plus the leader's view, it
    reaches the leader, and the log (or a snapshot) then sets its configuration exactly."""
    published = published_configuration(entries, now_ms)
    if published is None or self_addr not in published[1]:
        return set()
    return set(published[1]) - {self_addr}


def adopt_published(
    member: RaftMember,
    self_addr: str,
    entries: Mapping[str, Mapping[str, Any]],
    now_ms: int,
) -> None:
    """A running member that missed joins (paused or cut off while they happened) takes the
    members it lacks from the configuration a leader of a higher term publishes
    (RaftMember.adopt_members), if that configuration names it. The runtime calls this on
    every registry read; the simulation too."""
    published = published_configuration(entries, now_ms)
    if published is None or self_addr not in published[1]:
        return
    term, members = published
    if term > member.status.term:
        member.adopt_members(members, term)


def reachable_members(member: RaftMember, self_addr: str) -> tuple[list[str], list[str]]:
    """(the configuration as ``member`` knows it, the members of it heard from lately, this
    one included): what unsafe_membership_change counts. The runtime and the simulation both
    read it here."""
    return sorted(member.status.cluster_raft_addrs), sorted({*member.heard_from(), self_addr})


def unsafe_membership_change(
    action: str, raft_addr: str, members: Sequence[str], heard: Sequence[str], listening: bool
) -> str:
    """Why adding or removing ``raft_addr`` would leave fewer reachable members than a majority
    of the new configuration (a cluster that can neither elect nor commit, and so cannot even
    undo the change), or "". ``members``: the configuration; ``heard``: those of it heard from
    lately, the asker included; ``listening``: a member being added takes connections (the
    README has operators start a node before they add it)."""
    if (raft_addr in members) != (action == "remove"):
        return ""  # Raft itself answers: already a member, or not one
    if action == "add":
        after = len(members) + 1
        up = len(heard) + listening
    else:
        after = len(members) - 1
        up = len(heard) - (raft_addr in heard)
    if 2 * up > after:
        return ""
    if action == "add" and not listening:
        advice = f"nothing answers at {raft_addr}: start that node first, then add it"
    else:
        advice = "bring the unreachable members back first"
    return (
        f"{action} {raft_addr} would leave {up} of {after} members reachable, fewer than the "
        f"{after // 2 + 1} Raft needs to elect a leader and commit (and so to undo it): {advice}"
    )


class RaftLeadership:
    """Who leads, from Raft. Status changes arrive on pysyncobj's tick thread and reach the
    event loop only through ``call_soon_threadsafe``: nothing here blocks the loop."""

    def __init__(self, config: NodeConfig, raft_config: RaftConfig | None = None) -> None:
        self.config = config
        self.raft_config = raft_config or NODE_RAFT_CONFIG
        self.node_id = config.resolved_node_id()
        self.bind_addr = f"{config.raft_host}:{config.raft_port}"
        self.self_addr = config.raft_advertise or self.bind_addr
        self.member: RaftMember | None = None
        self._listeners: list[Callable[[], None]] = []

    async def start(self, more_peers: Iterable[str] = ()) -> None:
        """Start the Raft member with --peers and ``more_peers`` (peers_from_registry)."""
        # Raft state is in memory: a member restarted within an election timeout could vote a
        # second time in a term it already voted in, and two leaders could share that term.
        # Waiting out the longest election timeout first closes that window.
        await asyncio.sleep(self.raft_config.election_timeout_max_s)
        loop = asyncio.get_running_loop()
        cfg = self.config
        # Built here, on the loop's (main) thread: pysyncobj's tick thread dies with its builder.
        peers = sorted({*cfg.peers, *more_peers} - {self.self_addr})
        self.member = RaftMember(
            self.self_addr,
            peers,
            node_id=self.node_id,
            http_addr=f"{cfg.http_host}:{cfg.http_port}",
            config=self.raft_config,
            bind_addr=self.bind_addr,
            password=cfg.raft_password or None,
        )

        def changed(_status: RaftStatus) -> None:
            for listener in list(self._listeners):
                loop.call_soon_threadsafe(listener)

        self.member.on_status(changed)
        log.info("raft member %s at %s, peers %s", self.node_id, self.self_addr, peers)

    def on_change(self, listener: Callable[[], None]) -> None:
        """Call ``listener`` on the event loop whenever leadership or membership changes."""
        self._listeners.append(listener)

    def snapshot(self) -> tuple[bool, int, str | None]:
        if self.member is None:
            return False, 0, None
        s = self.member.status
        # A member that has heard from no majority lately knows no leader, whatever it last
        # heard (a lone survivor keeps naming the dead one: pysyncobj holds no election
        # without a peer to ask).
        return s.is_leader, s.term, s.leader_id if s.has_quorum else None

    def members(self) -> list[dict[str, Any]]:
        if self.member is None:
            return []
        return [
            {"id": node_id, "http": m.http_addr, "raft": m.raft_addr}
            for node_id, m in sorted(self.member.status.members.items())
        ]

    async def change_membership(self, action: str, raft_addr: str, timeout_s: float = 10.0) -> str:
        """On the leader: add or remove a member through the Raft log. Answers "" when done,
        else the reason (not leader, timed out, refused)."""
        member = self.member
        if member is None or not member.status.is_leader:
            return "not the leader"
        loop = asyncio.get_running_loop()
        result: asyncio.Future[str] = loop.create_future()

        def done(ok: bool, reason: str) -> None:
            def settle() -> None:
                if not result.done():
                    result.set_result("" if ok else reason or "refused")

            loop.call_soon_threadsafe(settle)

        if action == "add":
            member.request_add_member(raft_addr, done)
        else:
            member.request_remove_member(raft_addr, done)
        try:
            return await asyncio.wait_for(result, timeout_s)
        except TimeoutError:
            # pysyncobj may lose the callback of a committed change: confirm from state.
            addrs = member.status.cluster_raft_addrs
            if (raft_addr in addrs) == (action == "add"):
                return ""
            return "timed out"

    def adopt_published(self, entries: Mapping[str, Mapping[str, Any]], now_ms: int) -> None:
        if self.member is not None:
            adopt_published(self.member, self.self_addr, entries, now_ms)

    def configuration(self) -> list[str]:
        """The Raft addresses in the cluster configuration, as this member knows it."""
        return sorted(self.member.status.cluster_raft_addrs) if self.member else []

    def reachable(self) -> tuple[list[str], list[str]]:
        """(the configuration, the members of it heard from lately, this one included)."""
        member = self.member
        if member is None:
            return [], []
        return reachable_members(member, self.self_addr)

    def epoch_refused(self, stored_epoch: int) -> None:
        """Our term is below the epoch in Redis (e.g. the whole cluster restarted): stand again
        in a higher term, or no election could ever pass the fence."""
        if self.member is not None:
            log.warning("raft term below stored epoch %d: standing again above it", stored_epoch)
            self.member.raise_term_above(stored_epoch)

    def hand_over(self) -> None:
        """We lead but cannot reach the store: let a follower that may reach it lead."""
        if self.member is not None and self.member.status.is_leader:
            self.member.request_transfer_leadership()

    async def stop(self) -> None:
        member, self.member = self.member, None
        if member is None:
            return
        if member.status.is_leader:
            # Hand over now instead of making the others wait out an election timeout.
            done = asyncio.Event()
            loop = asyncio.get_running_loop()

            def transferred(ok: bool, reason: str) -> None:
                loop.call_soon_threadsafe(done.set)

            member.request_transfer_leadership(on_done=transferred)
            try:
                await asyncio.wait_for(done.wait(), 1.0)
            except TimeoutError:
                log.info("leadership transfer did not confirm in time; stopping anyway")
        await asyncio.get_running_loop().run_in_executor(None, member.stop)

"""Who leads, in which term: the simulation's view of Raft, behind one small interface.

:class:`RaftLeadership` runs the real pysyncobj code under simulated time (``sim/raftnet.py``:
its in-memory TCP-like transport, its patched clock and seeded randomness); that is the default,
because then the simulation tests the Raft code that ships. :class:`ModelLeadership` is a small
election model with pysyncobj's observable behaviour (randomized election timeouts, a term per
election, a deposed leader that believes it leads until it hears a newer term or its fallback
timeout passes). It stands in when ``--raft model`` is asked for, or when pysyncobj cannot run.

Members are numbered from 0 here; nodes are named n1..nN.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import simpy


class Leadership(Protocol):
    name: str

    def status(self, index: int) -> tuple[bool, int]:
        """(member ``index`` believes it leads, its current term)."""

    def crash(self, index: int) -> None: ...

    def restart(
        self,
        index: int,
        fresh_state: bool,
        more_peers: Iterable[str] = (),
        less_peers: Iterable[int] = (),
    ) -> None:
        """Start member ``index`` again; with ``fresh_state`` its term, vote and log are gone
        (the shipped node keeps Raft state in memory only), else it keeps its journal. Its
        peers: those it first started with, without ``less_peers`` (members removed since:
        the operator took them out of its --peers) and with ``more_peers`` (the leader's
        configuration, which the node reads from the registry as it starts)."""

    def pause(self, index: int) -> None: ...

    def resume(self, index: int) -> None: ...

    def partition(self, side_a: list[int], side_b: list[int], one_way: bool) -> int:
        """Cut the member links from side a to side b (and back unless one_way); an id to heal."""

    def heal(self, partition_id: int) -> None: ...

    def on_change(self, index: int, listener: Callable[[], None]) -> None:
        """Call ``listener`` whenever member ``index``'s Raft status changes (the runtime wakes
        its leader loop so: node/cluster.py's RaftLeadership.on_change). Kept across restarts."""

    def raise_term_above(self, index: int, term: int) -> None:
        """Member ``index`` stands again in a term above ``term`` (its epoch was refused)."""

    def transfer(self, index: int, done: Callable[[], None]) -> None:
        """Member ``index`` hands its leadership over (a graceful stop); ``done`` when answered
        (perhaps never: the caller bounds its wait)."""

    def add_member(self, index: int) -> None:
        """Start member ``index``, a newcomer that knows every member so far but is in no one's
        configuration until the leader adds it (change_membership)."""

    def change_membership(
        self, leader: int, action: str, index: int, done: Callable[[bool, str], None]
    ) -> None:
        """Ask member ``leader`` to add or remove (``action``) member ``index`` through the Raft
        log; ``done(ok, reason)`` when answered (perhaps never: the caller bounds its wait)."""

    def membership_unsafe(self, leader: int, action: str, index: int) -> str:
        """Why member ``leader`` refuses to add or remove member ``index`` as one that would
        leave no reachable majority (node.cluster.unsafe_membership_change), or "": the check
        NodeRuntime.change_membership makes before it hands over or asks Raft."""

    def configuration(self, index: int) -> set[int]:
        """The members in member ``index``'s configuration, as it knows it (empty: down)."""

    def removed(self, index: int) -> None:
        """Member ``index`` was removed from the configuration for good (and stopped)."""

    def raft_addr(self, index: int) -> str:
        """Member ``index``'s Raft address."""

    def adopt_published(
        self, index: int, entries: Mapping[str, Mapping[str, Any]], now_ms: int
    ) -> None:
        """Member ``index`` read these registry entries (node.cluster.adopt_published)."""

    def start(self) -> None:
        """Begin (pysyncobj's clock and randomness are patched from here until close())."""

    def check(self) -> None:
        """Raise if Raft's own safety broke (two leaders in one term)."""

    def close(self) -> None:
        """Release what the run held (pysyncobj's patched clock)."""

    def trace_hash(self) -> str: ...


MEMBERSHIP_NEEDS_PYSYNCOBJ = "membership changes (join, leave) need --raft pysyncobj"


@dataclass(frozen=True, slots=True)
class ModelTiming:
    # Seconds, as RaftConfig's defaults in node/raft.py.
    election_timeout_min_s: float = 0.1
    election_timeout_max_s: float = 0.3
    heartbeat_s: float = 0.02
    leader_fallback_timeout_s: float = 1.0


class ModelLeadership:
    """Raft's elections, modelled: enough to exercise fencing, not a proof of Raft."""

    name = "model"

    def __init__(
        self, env: simpy.Environment, members: int, rng: random.Random, timing: ModelTiming
    ) -> None:
        self.env = env
        self.n = members
        self.rng = rng
        self.timing = timing
        self.alive = [True] * members
        self.paused = [False] * members
        self.term = [0] * members
        self.leader = [False] * members
        self.voted_in = [0] * members  # the last term each member voted in
        self.heard_at = [0.0] * members  # last time each heard a current leader
        self.quorum_at = [0.0] * members  # for a leader: last time a majority heard it
        self.deadline = [self._timeout() for _ in range(members)]
        self.cut: set[tuple[int, int]] = set()
        self._partitions: dict[int, list[tuple[int, int]]] = {}
        self.changes: list[tuple[int, int, int]] = []  # (time us, member, term) of each election
        self._listeners: dict[int, list[Callable[[], None]]] = {}
        env.process(self._run())

    def _timeout(self) -> float:
        t = self.timing
        return self.env.now + self.rng.uniform(t.election_timeout_min_s, t.election_timeout_max_s)

    def _up(self, i: int) -> bool:
        return self.alive[i] and not self.paused[i]

    def _link(self, a: int, b: int) -> bool:
        return self._up(a) and self._up(b) and (a, b) not in self.cut

    def _run(self) -> Any:
        period = self.timing.heartbeat_s
        while True:
            yield self.env.timeout(period)
            before = list(zip(self.leader, self.term, strict=True))
            self._step()
            for i, was in enumerate(before):
                if was != (self.leader[i], self.term[i]) and self._up(i):
                    for listener in self._listeners.get(i, ()):
                        listener()

    def _adopt(self, i: int, term: int) -> None:
        if term > self.term[i]:
            self.term[i] = term
            self.leader[i] = False

    def _step(self) -> None:
        now = self.env.now
        n = self.n
        # Leaders heartbeat; whoever hears a newer term steps back.
        for lead in range(n):
            if not (self.leader[lead] and self._up(lead)):
                continue
            heard_by = 1
            for i in range(n):
                if i == lead or not self._link(lead, i):
                    continue
                if self.term[i] > self.term[lead]:
                    if self._link(i, lead):
                        self._adopt(lead, self.term[i])
                    continue
                self._adopt(i, self.term[lead])
                self.leader[i] = False
                self.heard_at[i] = now
                self.deadline[i] = self._timeout()
                if self._link(i, lead):
                    heard_by += 1
            if 2 * heard_by > n:
                self.quorum_at[lead] = now
            elif now - self.quorum_at[lead] > self.timing.leader_fallback_timeout_s:
                self.leader[lead] = False  # pysyncobj's leader fallback
        # Followers whose election timeout passed stand for election, in member order.
        for cand in range(n):
            if self.leader[cand] or not self._up(cand) or now < self.deadline[cand]:
                continue
            term = self.term[cand] + 1
            self.term[cand] = term
            self.voted_in[cand] = term
            votes = 1
            for i in range(n):
                if i == cand or not self._link(cand, i):
                    continue
                self._adopt(i, term)
                if self.voted_in[i] < term and self._link(i, cand):
                    self.voted_in[i] = term
                    self.deadline[i] = self._timeout()
                    votes += 1
            self.deadline[cand] = self._timeout()
            if 2 * votes > n:
                self.leader[cand] = True
                self.quorum_at[cand] = now
                self.changes.append((round(now * 1e6), cand, term))

    # ------------------------------------------------------------------ interface
    def status(self, index: int) -> tuple[bool, int]:
        return self.leader[index], self.term[index]

    def crash(self, index: int) -> None:
        self.alive[index] = False
        self.leader[index] = False  # volatile; the term and vote are on disk

    def restart(
        self,
        index: int,
        fresh_state: bool,
        more_peers: Iterable[str] = (),
        less_peers: Iterable[int] = (),
    ) -> None:
        self.alive[index] = True
        if fresh_state:
            self.term[index] = 0
            self.voted_in[index] = 0
        self.deadline[index] = self._timeout()

    def pause(self, index: int) -> None:
        self.paused[index] = True

    def resume(self, index: int) -> None:
        self.paused[index] = False
        # Its election timer ran out while paused; a real member would notice at its next tick.
        self.deadline[index] = min(self.deadline[index], self.env.now)
        self.heard_at[index] = self.env.now - 1e9

    def partition(self, side_a: list[int], side_b: list[int], one_way: bool) -> int:
        links = [(a, b) for a in side_a for b in side_b if a != b]
        if not one_way:
            links += [(b, a) for a, b in links]
        pid = len(self._partitions) + 1
        while pid in self._partitions:
            pid += 1
        self._partitions[pid] = links
        self.cut = {link for cut in self._partitions.values() for link in cut}
        return pid

    def heal(self, partition_id: int) -> None:
        self._partitions.pop(partition_id, None)
        self.cut = {link for cut in self._partitions.values() for link in cut}

    def on_change(self, index: int, listener: Callable[[], None]) -> None:
        self._listeners.setdefault(index, []).append(listener)

    def raise_term_above(self, index: int, term: int) -> None:
        if self.term[index] <= term:
            self.term[index] = term
            self.leader[index] = False
            self.deadline[index] = self.env.now

    def transfer(self, index: int, done: Callable[[], None]) -> None:
        # Raft's TimeoutNow: the first up-to-date follower the leader reaches stands at once.
        if not self.leader[index]:
            return
        for i in range(self.n):
            if i != index and self._link(index, i) and self._link(i, index):
                self.deadline[i] = self.env.now
                done()
                return

    def add_member(self, index: int) -> None:
        raise ValueError(MEMBERSHIP_NEEDS_PYSYNCOBJ)

    def change_membership(
        self, leader: int, action: str, index: int, done: Callable[[bool, str], None]
    ) -> None:
        raise ValueError(MEMBERSHIP_NEEDS_PYSYNCOBJ)

    def membership_unsafe(self, leader: int, action: str, index: int) -> str:
        raise ValueError(MEMBERSHIP_NEEDS_PYSYNCOBJ)

    def configuration(self, index: int) -> set[int]:
        return set(range(self.n)) if self.alive[index] else set()

    def removed(self, index: int) -> None:
        raise ValueError(MEMBERSHIP_NEEDS_PYSYNCOBJ)

    def raft_addr(self, index: int) -> str:
        return f"n{index}"

    def adopt_published(
        self, index: int, entries: Mapping[str, Mapping[str, Any]], now_ms: int
    ) -> None:
        pass

    def start(self) -> None:
        pass

    def check(self) -> None:
        pass

    def close(self) -> None:
        pass

    def trace_hash(self) -> str:
        return ",".join(f"{t}:{m}:{term}" for t, m, term in self.changes)[-64:]


class RaftLeadership:
    """The real pysyncobj members of sim/raftnet.py's SimRaftCluster."""

    name = "pysyncobj"

    def __init__(self, cluster: Any) -> None:
        self.cluster = cluster
        self._listeners: dict[int, list[Callable[[], None]]] = {}

    def start(self) -> None:
        self.cluster.start()
        for index in range(len(self.cluster)):
            self._subscribe(index)

    def _subscribe(self, index: int) -> None:
        member = self.cluster.member(index)
        if member is not None:
            member.on_status(lambda _status: self._changed(index))

    def _changed(self, index: int) -> None:
        for listener in self._listeners.get(index, ()):
            listener()

    def on_change(self, index: int, listener: Callable[[], None]) -> None:
        self._listeners.setdefault(index, []).append(listener)

    def raise_term_above(self, index: int, term: int) -> None:
        member = self.cluster.member(index)
        if member is not None:
            member.raise_term_above(term)

    def transfer(self, index: int, done: Callable[[], None]) -> None:
        member = self.cluster.member(index)
        if member is not None:
            member.request_transfer_leadership(on_done=lambda _ok, _reason: done())

    def add_member(self, index: int) -> None:
        added = self.cluster.add_member_host()
        if added != index:
            raise RuntimeError(f"member {added} started for node index {index}")
        self._subscribe(index)

    def change_membership(
        self, leader: int, action: str, index: int, done: Callable[[bool, str], None]
    ) -> None:
        member = self.cluster.member(leader)
        if member is None:
            done(False, "down")
            return
        addr = self.cluster.addr(index)
        if action == "add":
            member.request_add_member(addr, done)
        else:
            member.request_remove_member(addr, done)

    def membership_unsafe(self, leader: int, action: str, index: int) -> str:
        from node.cluster import reachable_members, unsafe_membership_change

        member = self.cluster.member(leader)
        if member is None:
            return ""  # a leader that is down answers nothing; change_membership says so
        addr = self.cluster.addr(index)
        members, heard = reachable_members(member, self.cluster.addr(leader))
        listening = action == "add" and addr not in members and self.cluster.accepts(leader, index)
        return unsafe_membership_change(action, addr, members, heard, listening)

    def configuration(self, index: int) -> set[int]:
        status = self.cluster.status(index)
        if status is None:
            return set()
        # SimRaftCluster names member i "n<i>".
        return {int(addr[1:]) for addr in status.cluster_raft_addrs}

    def removed(self, index: int) -> None:
        self.cluster.removed.add(self.cluster.addr(index))

    def raft_addr(self, index: int) -> str:
        return str(self.cluster.addr(index))

    def adopt_published(
        self, index: int, entries: Mapping[str, Mapping[str, Any]], now_ms: int
    ) -> None:
        from node.cluster import adopt_published

        member = self.cluster.member(index)
        if member is not None:
            adopt_published(member, self.cluster.addr(index), entries, now_ms)

    def status(self, index: int) -> tuple[bool, int]:
        status = self.cluster.status(index)
        if status is None:  # crashed
            return False, 0
        return status.is_leader, status.term

    def crash(self, index: int) -> None:
        self.cluster.crash(index)

    def restart(
        self,
        index: int,
        fresh_state: bool,
        more_peers: Iterable[str] = (),
        less_peers: Iterable[int] = (),
    ) -> None:
        if self.cluster.member(index) is not None:
            return
        if fresh_state:
            # SimRaftCluster keeps a crashed member's journal, as a disk would; node/cluster.py
            # builds each RaftMember with a new in-memory journal. Start from an empty one.
            self.cluster.forget_state(index)
        self.cluster.restart(index, more_peers, less_peers)
        self._subscribe(index)  # a new RaftMember: the node subscribes again as it starts

    def pause(self, index: int) -> None:
        self.cluster.pause(index)

    def resume(self, index: int) -> None:
        self.cluster.resume(index)

    def partition(self, side_a: list[int], side_b: list[int], one_way: bool) -> int:
        return int(self.cluster.partition(side_a, side_b, one_way=one_way))

    def heal(self, partition_id: int) -> None:
        self.cluster.heal(partition_id)

    def check(self) -> None:
        self.cluster.check_invariants()

    def close(self) -> None:
        self.cluster.close()

    def trace_hash(self) -> str:
        return str(self.cluster.trace_hash())


def votes_overlap(members: int) -> int:
    """The fewest members two majorities of ``members`` share: once that many have forgotten
    their votes, a term can be won twice."""
    majority = members // 2 + 1
    return 2 * majority - members


def make_leadership(
    kind: str, env: simpy.Environment, members: int, seed: int, rng: random.Random
) -> Leadership:
    """The real pysyncobj cluster if asked and available, else the model."""
    if kind == "pysyncobj":
        try:
            from node.cluster import NODE_RAFT_CONFIG
            from sim.raftnet import SimRaftCluster
        except ImportError:  # pysyncobj missing: say so in the report (raft: model)
            pass
        else:
            return RaftLeadership(SimRaftCluster(env, members, seed, NODE_RAFT_CONFIG))
    return ModelLeadership(env, members, rng, ModelTiming())

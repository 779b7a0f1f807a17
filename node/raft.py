"""The node's Raft member: pysyncobj elects the leader, and this adapter says who leads.

Raft carries no task data. It elects one leader, whose term is the fencing token written to Redis
before it assigns anything, and it replicates one tiny idempotent map: node id -> (http address,
raft address), so that every node can list the cluster.

One class serves two drivers:

* a node process: ``RaftMember(..., auto_tick=True)`` runs pysyncobj's own tick thread over TCP;
* the simulation (``sim/raftnet.py``): ``auto_tick=False``, an injected ``transport_class``, a
  journal that outlives a simulated crash, and ``tick()`` called by SimPy under a patched clock.

Threading. pysyncobj runs everything (timers, sockets, log apply, callbacks) on its tick thread and
its internals are not locked, so this adapter reads Raft state only there (a tick callback, plus
pysyncobj's ``onStateChanged`` hook) and publishes it as an immutable :class:`RaftStatus` that any
thread may read. ``on_status`` callbacks run on the tick thread: keep them short and hand off
(the node wraps them with ``loop.call_soon_threadsafe``). This module never imports asyncio.

Clock. Every time read here goes through ``pysyncobj.syncobj.monotonicTime`` (looked up at call
time), the one name the simulation patches, so the adapter and pysyncobj share one clock.

``python -m node.raft --self ADDR --peers ADDR,ADDR`` runs a lone member that prints one JSON line
per status change; the real-process tests and the failover benchmark drive it.
"""

from __future__ import annotations

import argparse
import collections
import contextlib
import json
import logging
import math
import os
import queue
import signal
import sys
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from types import FrameType, MappingProxyType
from typing import Any, Final

import pysyncobj.syncobj as _syncobj  # type: ignore[import-untyped, unused-ignore]
from pysyncobj import (  # type: ignore[import-untyped, unused-ignore]
    SyncObj,
    SyncObjConf,
    SyncObjConsumer,
    replicated,
)
from pysyncobj.config import FAIL_REASON  # type: ignore[import-untyped, unused-ignore]
from pysyncobj.journal import MemoryJournal  # type: ignore[import-untyped, unused-ignore]
from pysyncobj.syncobj import _RAFT_STATE  # type: ignore[import-untyped, unused-ignore]
from pysyncobj.transport import TCPTransport  # type: ignore[import-untyped, unused-ignore]

log = logging.getLogger("dsched.raft")

# pysyncobj's message dispatch (SyncObj.__onMessageReceived) compares message["type"] with the
# names it knows and does nothing for any other, and TCPTransport.send pickles any dict on an
# identified link; so this type can travel on the same links. We drop it before pysyncobj anyway.
PING_MESSAGE_TYPE: Final = "dsched_ping"
# Pre-Vote (Raft thesis 9.6), which pysyncobj lacks, travels the same way: a member whose election
# timer fires asks first whether a majority would vote for it, and raises its term only if so.
PRE_VOTE_MESSAGE_TYPE: Final = "dsched_pre_vote"
PRE_VOTE_GRANTED_MESSAGE_TYPE: Final = "dsched_pre_vote_granted"
_OWN_MESSAGE_TYPES: Final = frozenset(
    {PING_MESSAGE_TYPE, PRE_VOTE_MESSAGE_TYPE, PRE_VOTE_GRANTED_MESSAGE_TYPE}
)
# Where Pre-Vote parks pysyncobj's election deadline: never due. A finite park (it was 3 s) let a
# member resumed after a longer pause stand at its first tick, before the adapter looked.
_PARKED: Final = math.inf

# pysyncobj's _RAFT_STATE values, as words for the status.
_STATE_NAMES: Final = {0: "follower", 1: "candidate", 2: "leader"}
_LEADER_STATE: Final = 2
_FAIL_REASON_NAMES: Final = {
    v: k.lower() for k, v in vars(FAIL_REASON).items() if not k.startswith("_")
}

# A pysyncobj transport factory: called as factory(syncobj, self_node, other_nodes).
TransportFactory = Callable[[Any, Any, Any], Any]
StatusCallback = Callable[["RaftStatus"], None]
DoneCallback = Callable[[bool, str], None]


class RaftBindError(RuntimeError):
    """The Raft port could not be bound (in use, or not an address of this host)."""


@dataclass(frozen=True, slots=True)
class RaftConfig:
    """Raft timing, in seconds. Defaults are from research/raft-under-load.md (2 cores, 3 members).

    The election timeout is the failover budget and the GIL-starvation margin at once: 0.05-0.15 s
    fails over in ~76 ms idle but had 3-14 spurious elections per 30 s with 2-4 CPU-busy threads
    per process; 0.1-0.3 s with a 20 ms heartbeat and a 1 ms switch interval had none with 4 busy
    threads. pysyncobj's own defaults (0.4-1.4 s, 30 s fallback) fail over in ~1.6 s.
    """

    # A follower that hears no leader for a random time in [min, max] starts an election.
    election_timeout_min_s: float = 0.1
    election_timeout_max_s: float = 0.3
    # The leader's heartbeat/replication period; at most a third of the minimum election timeout,
    # so two lost or late heartbeats in a row do not depose a live leader.
    append_entries_period_s: float = 0.02
    # Longest the tick thread sleeps in poll() when no socket is ready; it bounds how late timers
    # (election deadline, heartbeat) fire. Messages wake it at once regardless.
    tick_period_s: float = 0.005
    # A leader that has heard from no majority for this long steps down, and `has_quorum` turns
    # false on any member that has not heard from a majority for this long. pysyncobj's 30 s
    # default let an isolated leader and a newly elected one coexist for 29.9 s (fencing keeps
    # that safe, but the old one wastes its dispatch work). A leader's own tick thread would have
    # to stall for ~3x the maximum election timeout first, by which time the followers have
    # already elected another leader, so a tight value costs no extra elections.
    leader_fallback_timeout_s: float = 1.0
    # pysyncobj drops a TCP link on which nothing was read for this long (checked when sending or
    # reading). Pings below keep idle links alive; must be >= election_timeout_max_s.
    connection_timeout_s: float = 2.0
    # Pause between reconnect attempts to one peer (pysyncobj default 5 s: a restarted member
    # would wait that long to rejoin).
    connection_retry_s: float = 0.5
    # App-level ping on every link. Without it follower-follower links are idle, time out, and
    # the first RequestVote after a leader dies is lost on a dead link: two elections per
    # failover (1.62 s median with pysyncobj defaults, 0.79 s with a 1 s ping).
    ping_period_s: float = 0.25
    # How often a member re-sends its announcement until the replicated map shows it.
    announce_retry_s: float = 1.0
    # sys.setswitchinterval applied by a member that runs its own tick thread (None: leave it).
    # CPython lets a busy thread keep the GIL 5 ms at a time by default; the tick thread then
    # misses heartbeats and a follower starts a spurious election. 1 ms keeps it responsive.
    switch_interval_s: float | None = 0.001
    # Pre-Vote: a member stands for election only after a majority said it would vote for it,
    # and nobody says so while it still hears a live leader. Without it a member that cannot
    # hear the leader (a newcomer the leader has not reached yet, one cut off from the leader
    # alone) raises its term on every timeout, and its next vote request deposes a healthy
    # leader: an election, and a dispatch pause, for nothing. Costs one round trip per election.
    pre_vote: bool = True
    # Join/leave through pysyncobj's dynamicMembershipChange (addNodeToCluster and friends).
    dynamic_membership: bool = False
    # Bound on stop(): how long to wait for the tick thread to close its sockets and exit.
    stop_timeout_s: float = 2.0
    # Bound on queued Raft commands (announcements and membership changes: a handful).
    commands_queue_max: int = 1_000

    def __post_init__(self) -> None:
        # pysyncobj checks these with `assert`, which `python -O` strips: check them here.
        problems = []
        if not 0 < self.tick_period_s < self.append_entries_period_s:
            problems.append("need 0 < tick_period_s < append_entries_period_s")
        if not self.election_timeout_min_s > 3 * self.append_entries_period_s:
            problems.append("need election_timeout_min_s > 3 * append_entries_period_s")
        if not self.election_timeout_max_s > self.election_timeout_min_s:
            problems.append("need election_timeout_max_s > election_timeout_min_s")
        if not self.leader_fallback_timeout_s > self.election_timeout_max_s:
            problems.append("need leader_fallback_timeout_s > election_timeout_max_s")
        if not self.connection_timeout_s >= self.election_timeout_max_s:
            problems.append("need connection_timeout_s >= election_timeout_max_s")
        ping_max_s = min(self.connection_timeout_s, self.leader_fallback_timeout_s) / 2
        if not 0 < self.ping_period_s < ping_max_s:
            problems.append("need 0 < ping_period_s < connection and fallback timeouts / 2")
        if self.connection_retry_s < 0 or self.announce_retry_s <= 0 or self.stop_timeout_s <= 0:
            problems.append("retry and stop periods must be positive")
        if self.switch_interval_s is not None and not self.switch_interval_s > 0:
            problems.append("switch_interval_s must be positive or None")
        if self.commands_queue_max < 1:
            problems.append("commands_queue_max must be >= 1")
        if problems:
            raise ValueError("invalid RaftConfig: " + "; ".join(problems))


@dataclass(frozen=True, slots=True)
class MemberInfo:
    """What a member announced about itself through the replicated map."""

    node_id: str
    http_addr: str
    raft_addr: str


@dataclass(frozen=True, slots=True)
class RaftStatus:
    """One consistent reading of this member's Raft state, taken on the tick thread.

    `is_leader` is pysyncobj's own view and may be stale: a deposed leader believes it leads until
    it hears a newer term or `leader_fallback_timeout_s` passes. Safety comes from fencing with
    `term` in Redis, never from this flag; `has_quorum` tells whether acting on it is worth it.
    """

    self_id: str
    self_raft_addr: str
    state: str  # follower | candidate | leader
    is_leader: bool
    term: int
    leader_id: str | None  # the leader's node id, once it has announced itself
    leader_raft_addr: str | None
    # This member heard from a majority (itself included) within leader_fallback_timeout_s.
    has_quorum: bool
    # node id -> info, for every announced member of the current Raft configuration.
    members: Mapping[str, MemberInfo] = field(default_factory=lambda: MappingProxyType({}))
    # The Raft configuration as this member knows it (itself included), sorted.
    cluster_raft_addrs: tuple[str, ...] = ()

    def to_json(self) -> dict[str, Any]:
        # Not dataclasses.asdict: it deep-copies fields, and a mappingproxy cannot be copied.
        data = {f: getattr(self, f) for f in self.__slots__ if f != "members"}
        data["members"] = {k: asdict(v) for k, v in self.members.items()}
        data["cluster_raft_addrs"] = list(self.cluster_raft_addrs)
        return data


def apply_switch_interval(config: RaftConfig) -> None:
    """Lower the interpreter's GIL switch interval to config.switch_interval_s (never raise it:
    something else in the process may have chosen an even smaller one)."""
    wanted = config.switch_interval_s
    if wanted is not None and sys.getswitchinterval() > wanted:
        sys.setswitchinterval(wanted)


_RAFT_FOLLOWER = _RAFT_STATE.FOLLOWER


def _now() -> float:
    # Looked up on every call so that the simulation's patch of this one name moves our clock too.
    return float(_syncobj.monotonicTime())


class RestartableMemoryJournal(MemoryJournal):  # type: ignore[misc]
    """pysyncobj's in-memory journal, plus the commit index, which MemoryJournal forgets.

    Kept by the owner across restarts of a member (the simulation's "crash" keeps it, as a disk
    would), so a restarted member comes back with its log, term, vote and commit index.
    """

    def __init__(self) -> None:
        super().__init__()
        self._commit_index = 1

    def setRaftCommitIndex(self, raftCommitIndex: int) -> None:  # pysyncobj's names
        self._commit_index = raftCommitIndex

    def getRaftCommitIndex(self) -> int:
        return self._commit_index


class _Directory(SyncObjConsumer):  # type: ignore[misc]
    """The replicated member map. Its methods run on every member, in log order, on the tick
    thread. Attributes set after SyncObjConsumer.__init__ are what pysyncobj snapshots."""

    def __init__(self) -> None:
        super().__init__()
        self.entries: dict[str, tuple[str, str]] = {}  # node id -> (http addr, raft addr)
        self.version = 0  # bumped on every real change: lets the tick skip unchanged maps

    @replicated  # type: ignore[untyped-decorator, misc, unused-ignore]
    def announce(self, node_id: str, http_addr: str, raft_addr: str) -> None:
        # Idempotent: a retried or duplicated announcement leaves the same map. A raft address
        # belongs to one node id: a member restarted under a new id replaces its old entry.
        info = (http_addr, raft_addr)
        stale = [k for k, v in self.entries.items() if v[1] == raft_addr and k != node_id]
        if self.entries.get(node_id) == info and not stale:
            return
        for k in stale:
            del self.entries[k]
        self.entries[node_id] = info
        self.version += 1

    @replicated  # type: ignore[untyped-decorator, misc, unused-ignore]
    def forget(self, raft_addr: str) -> None:
        stale = [k for k, v in self.entries.items() if v[1] == raft_addr]
        for k in stale:
            del self.entries[k]
        if stale:
            self.version += 1


_JOURNAL_PATCH_LOCK = threading.Lock()


@contextlib.contextmanager
def _journal_injected(journal: Any) -> Iterator[None]:
    # SyncObj.__init__ creates its journal with the module-level createJournal(conf.journalFile)
    # and offers no parameter for an object; swap that name only while one SyncObj is built.
    with _JOURNAL_PATCH_LOCK:
        original = _syncobj.createJournal
        _syncobj.createJournal = lambda _journal_file=None: journal
        try:
            yield
        finally:
            _syncobj.createJournal = original


class RaftMember:
    """One Raft member (a pysyncobj SyncObj) and the status it publishes.

    self_addr and peer_addrs are Raft addresses ("host:port" for TCP). With auto_tick the member
    must be built in the main thread: pysyncobj's tick thread exits, without closing its sockets,
    as soon as the thread that built it exits.

    pysyncobj unpickles whatever arrives on the Raft port: only cluster members may reach it.
    `password` makes pysyncobj encrypt and authenticate every link (needs `cryptography`).
    """

    def __init__(
        self,
        self_addr: str,
        peer_addrs: Sequence[str],
        *,
        node_id: str,
        http_addr: str = "",
        config: RaftConfig | None = None,
        auto_tick: bool = True,
        bind_addr: str | None = None,
        transport_class: TransportFactory | None = None,
        node_class: Callable[[str], Any] | None = None,
        journal: Any | None = None,
        password: str | None = None,
    ) -> None:
        cfg = config or RaftConfig()
        if auto_tick and threading.current_thread() is not threading.main_thread():
            raise RuntimeError("build an auto-ticking RaftMember in the main thread")
        self._config = cfg
        self._auto_tick = auto_tick
        self._node_id = node_id
        self._http_addr = http_addr
        self._self_addr = self_addr
        self._lock = threading.Lock()
        self._callbacks: list[StatusCallback] = []
        self._status = RaftStatus(
            self_id=node_id,
            self_raft_addr=self_addr,
            state="follower",
            is_leader=False,
            term=0,
            leader_id=None,
            leader_raft_addr=None,
            has_quorum=False,
            cluster_raft_addrs=tuple(sorted({self_addr, *peer_addrs})),
        )
        self._status_key: tuple[Any, ...] = ()
        self._raft_state = 0  # pysyncobj starts every member as a follower
        self._other_nodes: set[Any] = set()
        self._others: tuple[str, ...] = ()
        self._heard_at: dict[str, float] = {}  # peer raft addr -> when we last read from it
        # Pre-Vote. _leader_heard_at: when the leader's AppendEntries last arrived (the lease in
        # which this member refuses pre-votes); _stale_leader_heard_at: when one of a lower term
        # did. _election_due: the election timer, taken over from pysyncobj. _standing: this
        # adapter set pysyncobj's deadline to 0 (a majority granted).
        self._leader_heard_at = -math.inf
        self._stale_leader_heard_at = -math.inf
        self._election_due = math.inf
        self._standing = False
        # When this member last voted (for itself or another) in a new term, and that vote.
        self._voted_at = -math.inf
        self._vote_seen: tuple[int, Any] = (0, None)
        self._pre_vote_round = 0
        self._pre_vote_started_at = -math.inf
        self._pre_vote_term = 0
        self._pre_vote_granted: dict[str, int] = {}  # peer raft addr -> its term, this round
        self._next_ping_at = -math.inf
        self._next_announce_at = -math.inf
        self._tick_thread_id: int | None = None
        # Work that must run on the tick thread (pysyncobj is not thread-safe), queued by others.
        self._on_tick_queue: collections.deque[Callable[[], None]] = collections.deque()
        self._stopped = False
        self._transport: Any = None
        self._sync: Any = None
        self._directory = _Directory()

        factory: TransportFactory = transport_class or TCPTransport

        made: list[Any] = []

        def make_transport(syncobj: Any, self_node: Any, other_nodes: Any) -> Any:
            # Keep a handle on the transport: the pings go out through it.
            made.append(factory(syncobj, self_node, other_nodes))
            return made[-1]

        conf = SyncObjConf(
            autoTick=auto_tick,
            autoTickPeriod=cfg.tick_period_s,
            raftMinTimeout=cfg.election_timeout_min_s,
            raftMaxTimeout=cfg.election_timeout_max_s,
            appendEntriesPeriod=cfg.append_entries_period_s,
            leaderFallbackTimeout=cfg.leader_fallback_timeout_s,
            connectionTimeout=cfg.connection_timeout_s,
            connectionRetryTime=cfg.connection_retry_s,
            dynamicMembershipChange=cfg.dynamic_membership,
            commandsQueueSize=cfg.commands_queue_max,
            onStateChanged=self._on_state_changed,
            # pysyncobj binds 0.0.0.0 unless told otherwise: listen only where we were asked to.
            bindAddress=bind_addr or self_addr,
            # Fail at once on a taken port (0 would retry forever, silently, in the tick thread).
            maxBindRetries=1,
            # No disk: Redis is the durable store. Snapshots stay in memory, never forked.
            journalFile=None,
            fullDumpFile=None,
            useFork=False,
            password=password,
        )
        node_kwargs = {} if node_class is None else {"nodeClass": node_class}
        self_node = self_addr if node_class is None else node_class(self_addr)
        peers = [p if node_class is None else node_class(p) for p in peer_addrs if p != self_addr]
        with _journal_injected(journal if journal is not None else RestartableMemoryJournal()):
            self._sync = SyncObj(
                self_node,
                peers,
                conf=conf,
                consumers=[self._directory],
                transportClass=make_transport,
                **node_kwargs,
            )
        self._transport = made[-1]
        if auto_tick and not self._transport.ready:
            # The bind failed, pysyncobj logged it and its tick thread is exiting: clean up here.
            self._await_tick_thread_exit(cfg.stop_timeout_s)
            self._sync._doDestroy()
            raise RaftBindError(f"cannot listen on {bind_addr or self_addr} for Raft")

        # Count every message read from a peer (for has_quorum) and keep pings out of pysyncobj.
        # The tick thread sleeps 0.1 s before its first tick, so nothing is delivered before this.
        deliver = self._transport._onMessageReceivedCallback

        pre_vote = cfg.pre_vote
        if pre_vote:
            self._take_deadline()  # before the tick thread's first tick stands on it

        def on_message(node: Any, message: Any) -> None:
            now = _now()
            self._heard_at[node.id] = now
            if isinstance(message, dict):
                kind = message.get("type")
                if kind in _OWN_MESSAGE_TYPES:
                    if kind == PRE_VOTE_MESSAGE_TYPE:
                        self._on_pre_vote(node, message, now)
                    elif kind == PRE_VOTE_GRANTED_MESSAGE_TYPE:
                        self._on_pre_vote_granted(node, message)
                    return
                if kind == "append_entries":
                    if message.get("term", -1) >= self._sync._getTerm():
                        self._leader_heard_at = now
                    else:
                        self._stale_leader_heard_at = now
                deliver(node, message)
                if kind == "request_vote":
                    self._note_vote(now)
                if pre_vote:
                    self._take_deadline()  # a leader heard, a vote granted: re-armed
                return
            deliver(node, message)

        self._transport.setOnMessageReceivedCallback(on_message)
        self._sync.addOnTickCallback(self._on_tick)
        if auto_tick:
            apply_switch_interval(cfg)

    # ------------------------------------------------------------------ reading
    @property
    def status(self) -> RaftStatus:
        """The latest published status; safe from any thread."""
        with self._lock:
            return self._status

    @property
    def config(self) -> RaftConfig:
        return self._config

    def on_status(self, callback: StatusCallback) -> Callable[[], None]:
        """Call `callback(status)` on the tick thread after every change; returns an unsubscribe.
        It is not called with the current status: read `.status` after subscribing."""
        with self._lock:
            self._callbacks.append(callback)

        def unsubscribe() -> None:
            with self._lock, contextlib.suppress(ValueError):
                self._callbacks.remove(callback)

        return unsubscribe

    # ------------------------------------------------------------------ driving
    def tick(self) -> None:
        """One pysyncobj tick without waiting (simulation only: auto_tick=False)."""
        if self._auto_tick:
            raise RuntimeError("tick() is for auto_tick=False members")
        if not self._stopped:
            self._sync.doTick(0.0)

    def stop(self, timeout_s: float | None = None) -> bool:
        """Stop ticking and close every socket. Idempotent. Returns False if the tick thread was
        still alive after timeout_s (default config.stop_timeout_s)."""
        if self._stopped:
            return True
        self._stopped = True
        with self._lock:
            self._callbacks.clear()
        self._sync.removeOnTickCallback(self._on_tick)
        if not self._auto_tick:
            self._sync.destroy()  # without a thread, destroy() closes everything right here
            return True
        if not self._sync.tick_thread_alive():
            # Its constructing thread is gone, so it exited without closing anything: do it here.
            self._sync._doDestroy()
            return True
        self._sync.destroy()  # a flag: the tick thread closes the sockets, then exits
        return self._await_tick_thread_exit(timeout_s or self._config.stop_timeout_s)

    def _await_tick_thread_exit(self, timeout_s: float) -> bool:
        # pysyncobj exposes no handle on its thread, only tick_thread_alive(): poll it, bounded.
        deadline = time.monotonic() + timeout_s
        while self._sync.tick_thread_alive():
            if time.monotonic() >= deadline:
                log.warning("raft tick thread still alive %.1f s after stop", timeout_s)
                return False
            time.sleep(0.005)
        return True

    # ------------------------------------------------------------------ membership
    def heard_from(self) -> tuple[str, ...]:
        """The other members of the configuration this one heard from within the window of
        ``has_quorum`` (leader_fallback_timeout_s), as of now. Any thread: the tick thread
        writes the times, and a copy of a dict is one atomic step."""
        now = _now()
        window = self._config.leader_fallback_timeout_s
        heard_at = dict(self._heard_at)
        return tuple(p for p in self._others if now - heard_at.get(p, -math.inf) <= window)

    def request_add_member(self, raft_addr: str, on_done: DoneCallback | None = None) -> None:
        """Ask the leader to add a member (dynamic_membership only). Start the new member first,
        with every current member as its peers. One change at a time: wait for on_done."""
        self._sync.addNodeToCluster(raft_addr, callback=_fail_reason_callback(on_done))

    def request_remove_member(self, raft_addr: str, on_done: DoneCallback | None = None) -> None:
        """Ask the leader to remove a member (not itself: transfer leadership first)."""

        def done(ok: bool, reason: str) -> None:
            if ok:
                self._directory.forget(raft_addr)
            if on_done is not None:
                on_done(ok, reason)

        self._sync.removeNodeFromCluster(raft_addr, callback=_fail_reason_callback(done))

    def request_transfer_leadership(
        self, raft_addr: str | None = None, on_done: DoneCallback | None = None
    ) -> None:
        """On the leader: hand leadership to an up-to-date follower (any, if raft_addr is None)
        at once, instead of letting the others wait out an election timeout (graceful stop)."""
        callback = _fail_reason_callback(on_done)
        # transferLeadership reads Raft state and sends directly: run it on the next tick.
        self._on_tick_queue.append(lambda: self._sync.transferLeadership(raft_addr, callback))

    def raise_term_above(self, term: int) -> None:
        """Step down and stand again in a term above ``term``.

        The leader's Raft term is its fencing token in Redis. Raft state lives in memory, so a
        cluster restarted as a whole starts again at term 1 while Redis still holds the old
        epoch, and every election would then be fenced off for good. A leader whose epoch was
        refused calls this: its next election runs in a term above the stored epoch. Safe:
        raising one's own term is what a Raft member does on any higher-term message.
        """

        def bump() -> None:
            sync = self._sync
            current = sync._getTerm()
            if current > term:
                return
            if term > current:  # in the same term, keep the vote already cast in it
                sync._SyncObj__setCurrentTerm(term, None)
            sync._SyncObj__raftLeader = None
            sync._SyncObj__setState(_RAFT_FOLLOWER)
            sync._SyncObj__raftElectionDeadline = 0.0  # stand at the next tick

        self._on_tick_queue.append(bump)

    def adopt_members(self, raft_addrs: Iterable[str], term: int) -> None:
        """Add to this member's configuration the members that a leader of a term above ours
        has and we lack: we missed their joins (paused, cut off, or restarted from --peers
        that predate them). pysyncobj refuses connections from a node it does not know, so a
        newcomer that now leads could never send us the log that adds it, and we would sit out
        of the cluster for good. Safe: a member added here is one the leader's log adds too
        (that entry, when it reaches us, changes nothing); a larger configuration only makes
        our own candidacy harder. Within the leader's term or above, the log rules alone."""
        addrs = sorted({a for a in raft_addrs if a and a != self._self_addr})

        def adopt() -> None:
            sync = self._sync
            if sync._getTerm() >= term:
                return
            known = {str(node.id) for node in sync.otherNodes}
            for addr in addrs:
                if addr not in known:
                    log.warning("raft: adopting member %s from the term-%d leader", addr, term)
                    sync._SyncObj__doChangeCluster(["add", addr])

        if addrs:
            self._on_tick_queue.append(adopt)

    def add_member(self, raft_addr: str, timeout_s: float) -> None:
        """Blocking request_add_member, from a thread other than the tick thread."""
        self._wait_for(lambda cb: self.request_add_member(raft_addr, cb), timeout_s)
        if raft_addr not in self.status.cluster_raft_addrs and not self._wait_status(
            lambda s: raft_addr in s.cluster_raft_addrs, timeout_s
        ):
            raise TimeoutError(f"{raft_addr} committed but not yet in the local configuration")

    def remove_member(self, raft_addr: str, timeout_s: float) -> None:
        """Blocking request_remove_member, from a thread other than the tick thread."""
        self._wait_for(lambda cb: self.request_remove_member(raft_addr, cb), timeout_s)

    def _wait_for(self, start: Callable[[DoneCallback], None], timeout_s: float) -> None:
        if not self._auto_tick or threading.get_ident() == self._tick_thread_id:
            raise RuntimeError("blocking calls need a tick thread other than the caller")
        done = threading.Event()
        outcome: list[tuple[bool, str]] = []

        def on_done(ok: bool, reason: str) -> None:
            outcome.append((ok, reason))
            done.set()

        start(on_done)
        if not done.wait(timeout_s):
            # pysyncobj can lose callbacks (after a snapshot install): the caller checks state.
            raise TimeoutError(f"no Raft answer within {timeout_s} s")
        ok, reason = outcome[0]
        if not ok:
            raise RuntimeError(f"Raft refused the change: {reason}")

    def _wait_status(self, predicate: Callable[[RaftStatus], bool], timeout_s: float) -> bool:
        deadline = time.monotonic() + timeout_s
        while not predicate(self.status):
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.01)
        return True

    # ------------------------------------------------------------------ tick thread
    def _on_state_changed(self, old_state: int, new_state: int) -> None:
        # pysyncobj reports every transition here, on the tick thread: the one place its state
        # (follower/candidate/leader) is readable without building getStatus()'s whole dict.
        self._raft_state = new_state
        if old_state == _LEADER_STATE and new_state != _LEADER_STATE and self._config.pre_vote:
            # A deposed leader's deadline is the one from before it led, long past: it would
            # stand at once, without Pre-Vote. A follower's timer starts afresh.
            sync = self._sync
            self._election_due = _now() + sync._SyncObj__generateRaftTimeout()
            if sync._SyncObj__raftElectionDeadline > 0:
                sync._SyncObj__raftElectionDeadline = _PARKED
        # Called in the middle of a transition. Only "became leader" is consistent at this point
        # (leader and term already set), and it is the one transition worth publishing without
        # waiting for the tick: the node starts fencing sooner, and the simulation's
        # one-leader-per-term check sees even a leadership that lasts one poll.
        if new_state == _LEADER_STATE and self._sync is not None and not self._stopped:
            self._refresh_status(_now())

    def _on_tick(self) -> None:
        try:
            self._tick_thread_id = threading.get_ident()
            while self._on_tick_queue:
                self._on_tick_queue.popleft()()
            now = _now()
            if now >= self._next_ping_at:
                self._next_ping_at = now + self._config.ping_period_s
                self._ping_peers()
            status = self._refresh_status(now)
            self._maybe_announce(now, status)
        except Exception:
            # Never let a bug here kill the tick: pysyncobj would only log it and retry anyway.
            log.exception("raft tick callback failed")
        if self._config.pre_vote:
            try:
                self._hold_election(_now())
            except Exception:
                # Elections must go on: hand the timer back to pysyncobj (no Pre-Vote this time).
                log.exception("pre-vote failed")
                sync = self._sync
                if sync._SyncObj__raftElectionDeadline == _PARKED:
                    due = self._election_due
                    if not math.isfinite(due):
                        due = _now() + sync._SyncObj__generateRaftTimeout()
                    sync._SyncObj__raftElectionDeadline = due

    # ------------------------------------------------------------------ Pre-Vote
    # pysyncobj's election check runs at the start of a tick, before this adapter's callback, so
    # pysyncobj's deadline stays parked (never due) and the adapter runs the election timer:
    # whenever pysyncobj re-arms its deadline (it heard a leader, granted a vote, stood), the
    # adapter takes the new value, right after the message that caused it or at the next tick.
    # When the timer fires a pre-vote round goes out and the timer re-arms; a majority of grants
    # sets pysyncobj's deadline to 0, and its next tick stands as before. A 0 set by pysyncobj
    # or raise_term_above (a leadership transfer's TimeoutNow, a term bump) is left alone: those
    # elections are meant to depose the leader.
    def _take_deadline(self) -> None:
        sync = self._sync
        deadline = sync._SyncObj__raftElectionDeadline
        if 0 < deadline < _PARKED:
            self._election_due = deadline
            sync._SyncObj__raftElectionDeadline = _PARKED

    def _note_vote(self, now: float) -> None:
        sync = self._sync
        seen = (sync._getTerm(), sync._SyncObj__votedForNodeId)
        if seen != self._vote_seen:
            self._vote_seen = seen
            if seen[1] is not None:
                self._voted_at = now

    def _hold_election(self, now: float) -> None:
        sync = self._sync
        self._note_vote(now)  # pysyncobj stands at the start of a tick: a vote for itself
        if sync._SyncObj__selfNode is None:
            return
        if sync._SyncObj__raftElectionDeadline <= 0:
            if self._standing and not sync._SyncObj__connectedToAnyone():
                # The grants are stale by the time a link is back: ask again then.
                self._standing = False
                sync._SyncObj__raftElectionDeadline = _PARKED
            return
        self._standing = False
        self._take_deadline()
        if self._raft_state == _LEADER_STATE or now < self._election_due:
            return
        self._election_due = now + sync._SyncObj__generateRaftTimeout()
        if (
            sync._getLeader() is None
            and now - self._stale_leader_heard_at < self._config.election_timeout_max_s
        ):
            # No leader in this member's term, and one heard in a lower term: its term ran
            # ahead (a transfer or a bump that lost its votes). pysyncobj answers a lower term's
            # AppendEntries with nothing and those who hear the leader refuse pre-votes, so only
            # a real vote request, at once, brings the terms together again. (A follower of a
            # leader in its own term that still hears the deposed one must ask, as any other.)
            self._stand()
            return
        self._start_pre_vote(now)

    def _stand(self) -> None:
        self._standing = True
        self._sync._SyncObj__raftElectionDeadline = 0.0  # stand at the next tick

    def _start_pre_vote(self, now: float) -> None:
        """Ask every peer (a lone member is its own majority, and stands at once)."""
        sync = self._sync
        self._pre_vote_round += 1
        self._pre_vote_granted = {}
        self._pre_vote_started_at = now
        self._pre_vote_term = sync._getTerm()
        request = {
            "type": PRE_VOTE_MESSAGE_TYPE,
            "round": self._pre_vote_round,
            "last_log_index": sync._SyncObj__getCurrentLogIndex(),
            "last_log_term": sync._SyncObj__getCurrentLogTerm(),
        }
        for node in sorted(sync.otherNodes, key=lambda n: str(n.id)):
            self._transport.send(node, request)
        self._maybe_stand()

    def _on_pre_vote(self, node: Any, message: dict[str, Any], now: float) -> None:
        sync = self._sync
        if node not in sync.otherNodes:
            return
        # No vote while a live leader is heard: a leader with a quorum, or a follower that had
        # its leader's AppendEntries within the minimum election timeout. Nor within that time
        # of a vote this member cast: the election it voted in is likely to end in a leader, and
        # a grant now would let a member whose timer fired a moment later depose it.
        if now - self._voted_at < self._config.election_timeout_min_s:
            return
        if self._raft_state == _LEADER_STATE:
            if self._status.has_quorum:
                return
        elif (
            sync._getLeader() is not None
            and now - self._leader_heard_at < self._config.election_timeout_min_s
        ):
            return
        # Raft's vote rule: the candidate's log is at least as up to date as ours.
        theirs = (message.get("last_log_term", -1), message.get("last_log_index", -1))
        ours = (sync._SyncObj__getCurrentLogTerm(), sync._SyncObj__getCurrentLogIndex())
        if theirs < ours:
            return
        # Not a vote: nothing here changes this member's term or whom it voted for. The grant
        # carries our term so the candidate stands above it (pysyncobj ignores a lower term's
        # vote request without an answer, so a candidate behind in terms would never learn it).
        self._transport.send(
            node,
            {
                "type": PRE_VOTE_GRANTED_MESSAGE_TYPE,
                "round": message.get("round"),
                "term": sync._getTerm(),
            },
        )

    def _on_pre_vote_granted(self, node: Any, message: dict[str, Any]) -> None:
        if message.get("round") != self._pre_vote_round or node not in self._sync.otherNodes:
            return
        self._pre_vote_granted[str(node.id)] = int(message.get("term", 0))
        self._maybe_stand()

    def _maybe_stand(self) -> None:
        sync = self._sync
        members = {str(n.id) for n in sync.otherNodes}
        granted = [t for a, t in self._pre_vote_granted.items() if a in members]
        if 2 * (len(granted) + 1) <= len(members) + 1:
            return
        if (
            self._raft_state == _LEADER_STATE
            or self._leader_heard_at > self._pre_vote_started_at
            or self._voted_at > self._pre_vote_started_at
            or sync._getTerm() != self._pre_vote_term
        ):
            return  # a leader turned up, or an election began, since the round went out
        self._pre_vote_round += 1  # late grants of this round count for nothing
        self._pre_vote_granted = {}
        top = max(granted, default=0)
        if top > sync._getTerm():
            # Raising one's own term to one seen is what a member does on any newer message.
            sync._SyncObj__setCurrentTerm(top, None)
        self._stand()

    def _ping_peers(self) -> None:
        # Sorted: the simulation needs the same send order in every run (str hashes are salted).
        for node in sorted(self._sync.otherNodes, key=lambda n: str(n.id)):
            self._transport.send(node, {"type": PING_MESSAGE_TYPE})

    def _refresh_status(self, now: float) -> RaftStatus:
        # The fields getStatus() would report, read directly: this runs on every tick (200/s),
        # and getStatus() formats a dict entry per peer each time.
        sync = self._sync
        other_nodes = sync.otherNodes  # a copy
        if other_nodes != self._other_nodes:
            self._other_nodes = other_nodes
            self._others = tuple(sorted(str(n.id) for n in other_nodes))
        others = self._others
        window = self._config.leader_fallback_timeout_s
        heard = sum(1 for p in others if now - self._heard_at.get(p, -math.inf) <= window)
        has_quorum = 2 * (heard + 1) > len(others) + 1
        leader_node = sync._getLeader()
        leader_addr = None if leader_node is None else str(leader_node.id)
        term = int(sync.raftCurrentTerm)
        state = self._raft_state
        directory = self._directory
        key = (state, term, leader_addr, has_quorum, directory.version, others)
        if key == self._status_key:
            return self._status
        self._status_key = key
        cluster = (*others, self._self_addr)
        members = {
            node_id: MemberInfo(node_id, http, raft)
            for node_id, (http, raft) in sorted(directory.entries.items())
            if raft in cluster
        }
        leader_id = None
        if leader_addr == self._self_addr:
            leader_id = self._node_id
        elif leader_addr is not None:
            by_addr = {m.raft_addr: m.node_id for m in members.values()}
            leader_id = by_addr.get(leader_addr)
        status = RaftStatus(
            self_id=self._node_id,
            self_raft_addr=self._self_addr,
            state=_STATE_NAMES.get(state, str(state)),
            is_leader=state == _LEADER_STATE,
            term=term,
            leader_id=leader_id,
            leader_raft_addr=leader_addr,
            has_quorum=has_quorum,
            members=MappingProxyType(members),
            cluster_raft_addrs=tuple(sorted(cluster)),
        )
        if status == self._status:
            return status  # e.g. a member-map change outside the current configuration
        with self._lock:
            self._status = status
            callbacks = list(self._callbacks)
        for callback in callbacks:
            try:
                callback(status)
            except Exception:
                log.exception("raft status callback failed")
        return status

    def _maybe_announce(self, now: float, status: RaftStatus) -> None:
        # Re-announce until the replicated map shows us: the command can be lost on a leader
        # change, so we confirm from state instead of trusting a callback.
        mine = (self._http_addr, self._self_addr)
        if self._directory.entries.get(self._node_id) == mine:
            return
        if status.leader_raft_addr is None or now < self._next_announce_at:
            return  # without a leader pysyncobj would only queue it
        self._next_announce_at = now + self._config.announce_retry_s
        self._directory.announce(self._node_id, self._http_addr, self._self_addr)


def _fail_reason_callback(on_done: DoneCallback | None) -> Callable[[Any, int], None] | None:
    if on_done is None:
        return None

    def callback(_result: Any, error: int) -> None:
        on_done(error == FAIL_REASON.SUCCESS, _FAIL_REASON_NAMES.get(error, str(error)))

    return callback


# ---------------------------------------------------------------------- runner
def main(argv: Sequence[str] | None = None) -> int:
    """Run one member and print its status as JSON lines (used by tests and benchmarks)."""
    parser = argparse.ArgumentParser(prog="python -m node.raft", description=main.__doc__)
    parser.add_argument("--self", dest="self_addr", required=True, help="own raft host:port")
    parser.add_argument("--peers", default="", help="comma-separated raft host:port of the others")
    parser.add_argument("--node-id", default="", help="node id (default: the raft address)")
    parser.add_argument("--http", default="", help="http address to announce")
    parser.add_argument("--busy-threads", type=int, default=0, help="CPU-burning threads (load)")
    parser.add_argument("--dynamic", action="store_true", help="enable dynamic membership")
    parser.add_argument("--run-s", type=float, default=600.0, help="exit after this long")
    parser.add_argument("--no-pre-vote", action="store_true", help="pysyncobj's elections as is")
    args = parser.parse_args(argv)
    config = RaftConfig(dynamic_membership=args.dynamic, pre_vote=not args.no_pre_vote)
    peers = [p for p in args.peers.split(",") if p]
    member = RaftMember(
        args.self_addr,
        peers,
        node_id=args.node_id or args.self_addr,
        http_addr=args.http,
        config=config,
        password=os.environ.get("DSCHED_RAFT_PASSWORD") or None,
    )
    changes: queue.Queue[tuple[float, RaftStatus]] = queue.Queue()
    stopping = threading.Event()

    def on_signal(_signum: int, _frame: FrameType | None) -> None:
        stopping.set()

    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    # Stamped on the tick thread, when the change happened; printed by the main thread, so that
    # the tick thread never blocks on a full stdout pipe.
    member.on_status(lambda status: changes.put((time.monotonic(), status)))
    changes.put((time.monotonic(), member.status))
    for _ in range(args.busy_threads):
        threading.Thread(target=_burn_cpu, args=(stopping,), daemon=True).start()
    parent = os.getppid()
    deadline = time.monotonic() + args.run_s
    try:
        while not stopping.is_set() and time.monotonic() < deadline and os.getppid() == parent:
            try:
                mono, status = changes.get(timeout=0.2)
            except queue.Empty:
                continue
            line = {"mono": mono, "pid": os.getpid(), **status.to_json()}
            print(json.dumps(line), flush=True)
    finally:
        member.stop()
    return 0


def _burn_cpu(stopping: threading.Event) -> None:
    # Like a busy event loop: 20 ms of pure-Python work, then a 1 ms sleep.
    while not stopping.is_set():
        end = time.perf_counter() + 0.02
        while time.perf_counter() < end:
            pass
        time.sleep(0.001)


if __name__ == "__main__":
    sys.exit(main())

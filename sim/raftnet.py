"""The real pysyncobj Raft, run by SimPy over an in-memory TCP-like network, deterministically.

Nothing of Raft is modelled here: every member is the node's own :class:`node.raft.RaftMember`
(hence pysyncobj itself) with ``auto_tick=False``, an in-memory transport, a journal that
outlives a crash, and, while a :class:`SimRaftCluster` is open, pysyncobj's clock
(``pysyncobj.syncobj.monotonicTime``) and its random source replaced by the SimPy clock and a
seeded ``random.Random``. One seed, one run: the trace hash proves it.

The network behaves like TCP, because pysyncobj relies on it (with lossy, reordering links it
stalls followers and diverges): one connection per pair of members, opened by the member with the
greater address (as pysyncobj's TCPTransport does); FIFO per direction; a per-link delay plus a
seeded jitter; a partition cuts directed links, and data on a cut direction waits (TCP
retransmits) until the cut heals or the connection is reset. Loss happens only as a reset: a
crashed process's kernel resets its connections, a reader that heard nothing for
``connection_timeout_s`` drops the link (the same check as pysyncobj's TcpConnection: when it
sends or reads), and data for a connection its receiver no longer has is answered by a reset.

Processes: each member runs a driver that ticks every ``tick_period_s`` and wakes at once when
something arrives, processing arrivals first and then ticking, like pysyncobj's poll loop. A
paused member (SIGSTOP) neither ticks nor reads, but its kernel still accepts connections and
buffers data, which it reads on resume.
"""

from __future__ import annotations

import collections
import functools
import hashlib
import math
import pickle
import random
import zlib
from collections.abc import Callable, Generator, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from types import TracebackType
from typing import Any

import pysyncobj.syncobj as _syncobj  # type: ignore[import-untyped, unused-ignore]
import simpy
from pysyncobj.node import Node  # type: ignore[import-untyped, unused-ignore]
from pysyncobj.transport import Transport  # type: ignore[import-untyped, unused-ignore]

from node.raft import RaftConfig, RaftMember, RaftStatus, RestartableMemoryJournal
from sim.leadership import votes_overlap
from sim.simenv import call_at, call_later, fire_if_pending

# The simulated clock starts here rather than at 0, like a real monotonic clock: pysyncobj keeps
# a few "last time" fields initialised to 0 that must read as long ago.
CLOCK_EPOCH_S = 1_000.0


class SimNode(Node):  # type: ignore[misc]
    """A pysyncobj node whose hash does not depend on the process: Node hashes its str id, which
    is salted per process, and pysyncobj iterates sets of nodes when it sends."""

    def __init__(self, node_id: str) -> None:
        super().__init__(node_id)
        self.crc = zlib.crc32(node_id.encode())  # hashed on every set operation: compute once

    def __hash__(self) -> int:
        return self.crc


# ---------------------------------------------------------------------- idle ticks
# Skip the ticks that would change nothing: the same run (the same trace hashes), with about a
# third of the ticks. Off: tick at every tick_period_s, as pysyncobj's own loop does.
SKIP_IDLE_TICKS = True
# A timer within this much of a grid point counts as due there (clock values are floats).
_DUE_MARGIN_S = 1e-6
_NO_SKIP = -math.inf
# Trace entries hashed per update.
_TRACE_CHUNK = 512


class _NoPoller:
    """pysyncobj's poller, for a member without sockets (nothing subscribes: see _start)."""

    def poll(self, timeout: float) -> None:
        pass


_NO_POLLER = _NoPoller()


class _PokingDeque(collections.deque[Callable[[], None]]):
    """RaftMember's queue of work for its next tick, which wakes a driver that skips ticks."""

    def __init__(self, poke: Callable[[], None]) -> None:
        super().__init__()
        self._poke = poke

    def append(self, item: Callable[[], None]) -> None:
        super().append(item)
        self._poke()


def _idle_until(member: RaftMember, transport: SimTransport | None) -> float:
    """The member clock before which a tick of this member, with nothing arrived and nothing
    asked of it meanwhile, changes nothing (or -inf: tick at the next grid point).

    Every input that is not the passing of time (an arrival, a queued tick callback, a
    command) wakes the driver or is checked here, so only pysyncobj's own timers and those
    of RaftMember and SimTransport decide; each is read as the tick reads it, and when in
    doubt the answer is "tick". The trace hashes of a run with and without skipping are the
    same (tests/sim/test_raftnet.py), which is the proof that nothing here is missed.
    """
    sync = member._sync
    if (
        member._stopped
        or member._on_tick_queue
        or sync._SyncObj__needLoadDumpFile
        or sync._SyncObj__commandsQueue._FastQueue__queue
        or sync._SyncObj__raftCommitIndex != sync._SyncObj__raftLastApplied
        or not sync._SyncObj__onReadyCalled
        or sync._SyncObj__forceLogCompaction
        or sync._SyncObj__serializer._Serializer__pid != 0
        or transport is None
        or transport._destroyed
    ):
        return _NO_SKIP
    conf = sync._SyncObj__conf
    if len(sync._SyncObj__raftLog) > conf.logCompactionMinEntries:
        return _NO_SKIP
    due = sync._SyncObj__lastSerializedTime + conf.logCompactionMinTime
    state = sync._SyncObj__raftState
    if state == _syncobj._RAFT_STATE.LEADER:
        if sync._SyncObj__raftCommitIndex < sync._SyncObj__getCurrentLogIndex():
            return _NO_SKIP  # entries to commit: leave it to the tick
        due = min(due, sync._SyncObj__newAppendEntriesTime)
        # Steps down once too few followers answered within the fallback timeout.
        now = _syncobj.monotonicTime()
        fallback = conf.leaderFallbackTimeout
        responded = sync._SyncObj__lastResponseTime
        for node in sync._SyncObj__otherNodes:
            at = responded[node]
            if at > now - fallback:
                due = min(due, at + fallback)
    elif sync._SyncObj__connectedNodes or not sync._SyncObj__otherNodes:
        due = min(due, sync._SyncObj__raftElectionDeadline)  # follower or candidate
    if state != _syncobj._RAFT_STATE.LEADER and member._config.pre_vote:
        # Pre-Vote parks pysyncobj's election timer and runs the real one itself.
        due = min(due, member._election_due)
    # RaftMember: pings, the quorum window of each peer heard from, the announcement retry.
    due = min(due, member._next_ping_at)
    now = _syncobj.monotonicTime()
    window = member._config.leader_fallback_timeout_s
    for at in member._heard_at.values():
        if now - at <= window:
            due = min(due, at + window)
    directory = member._directory
    if directory.entries.get(member._node_id) != (member._http_addr, member._self_addr):
        status = member._status
        if status.leader_raft_addr is not None:
            due = min(due, member._next_announce_at)
    # SimTransport: connection attempts to peers it should connect to.
    self_id = transport._self_id
    for peer in transport._nodes:
        if self_id > peer and peer not in transport._conns and peer not in transport._connecting:
            due = min(due, transport._last_attempt.get(peer, -1e18) + transport._retry_s)
    return float(due) - _DUE_MARGIN_S


class InvariantViolation(AssertionError):
    """Raft safety broken in the simulation (two leaders in one term)."""


_patched = False


@contextmanager
def simulated_pysyncobj(env: simpy.Environment, seed: int) -> Iterator[random.Random]:
    """Within this block pysyncobj reads the SimPy clock and draws from a Random seeded by `seed`.

    Restored on exit, so several seeds can run one after another in one process; refuses to nest,
    since the patch is global to pysyncobj.
    """
    global _patched
    if _patched:
        raise RuntimeError("one simulated pysyncobj at a time (the patch is module-global)")
    rng = random.Random(f"{seed}/pysyncobj")  # str seed: hashed with sha512, not hash()
    saved = (_syncobj.monotonicTime, _syncobj.random)
    # env._now, not the env.now property: pysyncobj reads its clock ~150k times a sim-minute.
    _syncobj.monotonicTime = lambda: CLOCK_EPOCH_S + env._now
    # pysyncobj calls random.random() on its module-level `random` for election timeouts.
    _syncobj.random = rng
    _patched = True
    try:
        yield rng
    finally:
        _syncobj.monotonicTime, _syncobj.random = saved
        _patched = False


# ---------------------------------------------------------------------- network
@dataclass(eq=False)
class _Conn:
    conn_id: int
    connector: str
    acceptor: str
    open_ends: set[str] = field(default_factory=set)  # ends whose process sees the link up
    last_read: dict[str, float] = field(default_factory=dict)
    # Which process incarnation owns each end's socket: data for a dead one is answered by RST.
    incarnations: dict[str, int] = field(default_factory=dict)


@dataclass(eq=False)
class _Item:
    conn: _Conn
    kind: str  # syn | synack | refused | hello | msg | fin
    payload: bytes = b""
    arrive_at: float | None = None  # None: waiting for a cut to heal


@dataclass(eq=False)
class _Stream:
    """One direction of one link: items leave in order, each at or after the one before."""

    src: str
    dst: str
    delay_s: float
    queue: collections.deque[_Item] = field(default_factory=collections.deque)
    last_arrival: float = 0.0
    generation: int = 0  # bumped on every (re)schedule: stale pump events do nothing


@dataclass(eq=False)
class _Host:
    index: int
    addr: str
    journal: RestartableMemoryJournal
    peers: list[str]
    member: RaftMember | None = None
    transport: SimTransport | None = None
    incarnation: int = 0
    paused: bool = False
    inbox: collections.deque[tuple[str, _Item]] = field(default_factory=collections.deque)
    wake: simpy.Event | None = None
    resume: simpy.Event | None = None
    # The driver's tick grid: when it last ticked, and when it next wakes unless something
    # arrives (later than the next grid point when the ticks in between would do nothing).
    ticked_at: float = 0.0
    sleep_until: float = 0.0

    @property
    def running(self) -> bool:
        return self.member is not None


class SimNetwork:
    """Links between hosts: delays, cuts, and the kernel side of each connection."""

    def __init__(
        self,
        env: simpy.Environment,
        rng: random.Random,
        trace: Callable[..., None],
        delay_min_s: float,
        delay_max_s: float,
        jitter_s: float,
    ) -> None:
        self.env = env
        self.rng = rng
        self.trace = trace
        self.delay_min_s = delay_min_s
        self.delay_max_s = delay_max_s
        self.jitter_s = jitter_s
        self.hosts: dict[str, _Host] = {}
        self.cuts: collections.Counter[tuple[str, str]] = collections.Counter()
        self._streams: dict[tuple[str, str], _Stream] = {}
        self._next_conn_id = 0

    def new_conn(self, connector: str, acceptor: str) -> _Conn:
        self._next_conn_id += 1
        conn = _Conn(self._next_conn_id, connector, acceptor)
        conn.incarnations[connector] = self.hosts[connector].incarnation
        return conn

    def now(self) -> float:
        return CLOCK_EPOCH_S + float(self.env._now)

    def _stream(self, src: str, dst: str) -> _Stream:
        stream = self._streams.get((src, dst))
        if stream is None:
            # Drawn on first use, in event order, so the same seed gives the same link delays.
            delay = self.rng.uniform(self.delay_min_s, self.delay_max_s)
            stream = self._streams[(src, dst)] = _Stream(src, dst, delay)
        return stream

    def send(self, src: str, dst: str, item: _Item) -> None:
        stream = self._stream(src, dst)
        stream.queue.append(item)
        if self.cuts[(src, dst)]:
            return  # checked at send: waits in the queue for the heal
        self._stamp(stream, item)
        if len(stream.queue) == 1:
            self._schedule_head(stream)

    def _stamp(self, stream: _Stream, item: _Item) -> None:
        at = self.env.now + stream.delay_s + self.rng.uniform(0.0, self.jitter_s)
        item.arrive_at = stream.last_arrival = max(at, stream.last_arrival)

    def _schedule_head(self, stream: _Stream) -> None:
        head = stream.queue[0]
        if head.arrive_at is None:
            return
        stream.generation += 1
        generation = stream.generation
        # What env.timeout(delay) with one callback would schedule, as one Timer.
        call_later(
            self.env,
            max(0.0, head.arrive_at - self.env._now),
            functools.partial(self._pump, stream, generation),
        )

    def _pump(self, stream: _Stream, generation: int) -> None:
        if generation != stream.generation:
            return
        if self.cuts[(stream.src, stream.dst)]:
            # Checked at delivery: everything on this direction waits for the heal.
            for item in stream.queue:
                item.arrive_at = None
            return
        while stream.queue:
            head = stream.queue[0]
            if head.arrive_at is None or head.arrive_at > self.env.now:
                break
            stream.queue.popleft()
            self._arrive(stream.src, stream.dst, head)
        if stream.queue:
            self._schedule_head(stream)

    def set_cut(self, links: Iterable[tuple[str, str]], cut: bool) -> None:
        for link in links:
            if cut:
                self.cuts[link] += 1
                continue
            self.cuts[link] -= 1
            if self.cuts[link] > 0:
                continue
            del self.cuts[link]
            stream = self._streams.get(link)
            if stream is None or not stream.queue:
                continue
            # Healed: what waited is retransmitted, in order, from now.
            stream.last_arrival = self.env.now
            for item in stream.queue:
                if item.arrive_at is None:
                    self._stamp(stream, item)
            self._schedule_head(stream)

    def _arrive(self, src: str, dst: str, item: _Item) -> None:
        """What the receiving kernel does, whatever its process is doing."""
        host = self.hosts[dst]
        owner = item.conn.incarnations.get(dst)
        if not host.running or owner not in (None, host.incarnation):
            if item.kind == "syn":
                self.send(dst, src, _Item(item.conn, "refused"))
            elif item.kind in ("hello", "msg"):
                self.send(dst, src, _Item(item.conn, "fin"))  # RST from a closed port
            return
        if item.kind == "syn":
            # The kernel completes the handshake even for a stopped process (listen backlog).
            item.conn.incarnations[dst] = host.incarnation
            self.send(dst, src, _Item(item.conn, "synack"))
            return
        host.inbox.append((src, item))
        if not host.paused and host.wake is not None and not host.wake.triggered:
            host.wake.succeed()


class SimTransport(Transport):  # type: ignore[misc]
    """pysyncobj's Transport over :class:`SimNetwork`, mirroring TCPTransport's behaviour."""

    def __init__(
        self, syncobj: Any, self_node: Any, other_nodes: Any, network: SimNetwork, host: _Host
    ) -> None:
        super().__init__(syncobj, self_node, other_nodes)
        self._net = network
        self._host = host
        self._self_id = str(self_node.id)
        self._timeout_s = float(syncobj.conf.connectionTimeout)
        self._retry_s = float(syncobj.conf.connectionRetryTime)
        self._nodes: dict[str, Any] = {}
        self._conns: dict[str, _Conn] = {}  # identified, open connections (this end's view)
        self._connecting: dict[str, _Conn] = {}
        self._last_attempt: dict[str, float] = {}
        self._destroyed = False
        for node in sorted(other_nodes, key=lambda n: str(n.id)):
            self.addNode(node)
        syncobj.addOnTickCallback(self._on_tick)

    # pysyncobj's Transport interface
    @property
    def ready(self) -> bool:
        return True

    def addNode(self, node: Any) -> None:
        self._nodes[str(node.id)] = node

    def dropNode(self, node: Any) -> None:
        peer = str(node.id)
        # Like TCPTransport.dropNode: close without a disconnect callback, never reconnect.
        self._close(peer, notify_peer=True, callback=False)
        self._connecting.pop(peer, None)
        self._nodes.pop(peer, None)

    def send(self, node: Any, message: Any) -> bool:
        peer = str(node.id)
        conn = self._conns.get(peer)
        if self._destroyed or conn is None:
            return False
        if self._net.now() - conn.last_read[self._self_id] > self._timeout_s:
            # TcpConnection checks its read timeout on every send, and drops the message.
            self._close(peer, notify_peer=True, callback=True)
            return False
        payload = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
        self._net.send(self._self_id, peer, _Item(conn, "msg", payload))
        return True

    def destroy(self) -> None:
        for peer in sorted(self._conns):
            self._close(peer, notify_peer=True, callback=False)
        self._connecting.clear()
        self._destroyed = True

    # the simulation's side
    def kernel_reset_all(self) -> None:
        """The process died: its kernel resets every connection; no code of it runs."""
        for peer, conn in sorted({**self._connecting, **self._conns}.items()):
            self._net.send(self._self_id, peer, _Item(conn, "fin"))
        self._conns.clear()
        self._connecting.clear()
        self._destroyed = True

    def process(self, src: str, item: _Item) -> None:
        """Handle one arrival, as the member's poll loop would."""
        if self._destroyed:
            return
        now = self._net.now()
        conn = item.conn
        if item.kind == "synack":
            if self._connecting.get(src) is conn:
                del self._connecting[src]
                self._open(src, conn, now)
                self._net.send(self._self_id, src, _Item(conn, "hello"))
                self._onNodeConnected(self._nodes[src])
        elif item.kind == "refused":
            if self._connecting.get(src) is conn:
                del self._connecting[src]
        elif item.kind == "hello":
            if src not in self._nodes:
                # Not a member we know (yet): TCPTransport disconnects unknown callers.
                self._net.send(self._self_id, src, _Item(conn, "fin"))
                return
            # A newer connection from the same peer silently replaces the old one, as in
            # TCPTransport._onIncomingMessageReceived.
            self._open(src, conn, now)
            self._onNodeConnected(self._nodes[src])
        elif item.kind == "msg":
            if self._conns.get(src) is not conn:
                self._net.send(self._self_id, src, _Item(conn, "fin"))  # we no longer have it
                return
            if now - conn.last_read[self._self_id] > self._timeout_s:
                self._close(src, notify_peer=True, callback=True)  # TcpConnection: check first
                return
            conn.last_read[self._self_id] = now
            self._onMessageReceived(self._nodes[src], pickle.loads(item.payload))
        elif item.kind == "fin":
            if self._conns.get(src) is conn:
                self._close(src, notify_peer=False, callback=True)
            elif self._connecting.get(src) is conn:
                del self._connecting[src]

    def _open(self, peer: str, conn: _Conn, now: float) -> None:
        self._conns[peer] = conn
        conn.open_ends.add(self._self_id)
        conn.last_read[self._self_id] = now

    def _close(self, peer: str, *, notify_peer: bool, callback: bool) -> None:
        conn = self._conns.pop(peer, None)
        if conn is None:
            return
        conn.open_ends.discard(self._self_id)
        if notify_peer:
            self._net.send(self._self_id, peer, _Item(conn, "fin"))
        if callback and peer in self._nodes:
            self._onNodeDisconnected(self._nodes[peer])

    def _on_tick(self) -> None:
        # Like TCPTransport._connectIfNecessary: the greater address connects, at most once per
        # connection_retry_s per peer.
        if self._destroyed:
            return
        now = self._net.now()
        for peer in sorted(self._nodes):
            if self._self_id <= peer or peer in self._conns or peer in self._connecting:
                continue
            if now - self._last_attempt.get(peer, -1e18) < self._retry_s:
                continue
            self._last_attempt[peer] = now
            conn = self._net.new_conn(self._self_id, peer)
            self._connecting[peer] = conn
            self._net.send(self._self_id, peer, _Item(conn, "syn"))


# ---------------------------------------------------------------------- cluster
class SimRaftCluster:
    """n RaftMembers on a simulated network, under simulated time. Use as a context manager:

        env = simpy.Environment()
        with SimRaftCluster(env, 3, seed=7) as cluster:
            cluster.run_until(lambda: len(cluster.leaders()) == 1, timeout_s=5)

    Members are numbered 0..n-1 (address "n<i>"). Every status change of every member is checked
    against Raft's election safety (at most one leader per term, ever); `check_invariants()`
    raises on the first violation, and a failing run's seed replays it exactly.
    """

    def __init__(
        self,
        env: simpy.Environment,
        n: int,
        seed: int,
        config: RaftConfig | None = None,
        *,
        delay_min_s: float = 0.0002,
        delay_max_s: float = 0.002,
        jitter_s: float = 0.0005,
        skip_idle_ticks: bool | None = None,
    ) -> None:
        if n < 1:
            raise ValueError("a cluster needs at least one member")
        self.env = env
        self.seed = seed
        self.config = config or RaftConfig()
        self.skip_idle_ticks = SKIP_IDLE_TICKS if skip_idle_ticks is None else skip_idle_ticks
        self._n_initial = n
        self._delays = (delay_min_s, delay_max_s, jitter_s)
        self._hash = hashlib.blake2b(digest_size=16)
        self._pending: list[bytes] = []  # traced, not hashed yet (see _flush_trace)
        self._hosts: list[_Host] = []
        self._partitions: dict[int, list[tuple[str, str]]] = {}
        self._next_partition_id = 0
        # The leaders of each term (more than one only where history was lost), and when the
        # last of them led (election safety).
        self._term_leaders: dict[int, tuple[set[str], float]] = {}
        # When each member last restarted from an empty journal (forget_state).
        self._forgot_at: dict[str, float] = {}
        self.violations: list[str] = []
        # Members removed from the configuration for good (membership): the majorities that
        # elect leaders are of the members left.
        self.removed: set[str] = set()
        self.events_traced = 0
        self._patch: Any = None
        self._net: SimNetwork | None = None

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> SimRaftCluster:
        """Patch pysyncobj's clock and randomness, then start the members. Pair with close()
        (or use the cluster as a context manager, which does both)."""
        if self._patch is not None:
            raise RuntimeError("cluster already started")
        self._patch = simulated_pysyncobj(self.env, self.seed)
        self._patch.__enter__()
        try:
            self._net = SimNetwork(
                self.env, random.Random(f"{self.seed}/network"), self._trace, *self._delays
            )
            addrs = [f"n{i}" for i in range(self._n_initial)]
            for addr in addrs:
                self._add_host(addr, [a for a in addrs if a != addr])
            for host in self._hosts:
                self._start(host)
        except BaseException:
            self._patch.__exit__(None, None, None)
            self._patch = None
            raise
        return self

    def close(self) -> None:
        """Stop every member and give pysyncobj its real clock back. Idempotent."""
        if self._patch is None:
            return
        try:
            for host in self._hosts:
                if host.member is not None:
                    host.member.stop()
                    host.member = None
                    host.incarnation += 1
        finally:
            patch, self._patch = self._patch, None
            patch.__exit__(None, None, None)

    def __enter__(self) -> SimRaftCluster:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def net(self) -> SimNetwork:
        if self._net is None:
            raise RuntimeError("enter the cluster first (with SimRaftCluster(...) as cluster)")
        return self._net

    def _add_host(self, addr: str, peers: list[str]) -> _Host:
        host = _Host(len(self._hosts), addr, RestartableMemoryJournal(), peers)
        self._hosts.append(host)
        self.net.hosts[addr] = host
        return host

    def _start(self, host: _Host, peers: list[str] | None = None) -> None:
        host.incarnation += 1
        host.paused = False
        host.inbox.clear()
        network = self.net

        def transport(syncobj: Any, self_node: Any, other_nodes: Any) -> SimTransport:
            host.transport = SimTransport(syncobj, self_node, other_nodes, network, host)
            return host.transport

        member = RaftMember(
            host.addr,
            host.peers if peers is None else peers,
            node_id=f"node-{host.index}",
            http_addr=f"http://{host.addr}",
            config=self.config,
            auto_tick=False,
            transport_class=transport,
            node_class=SimNode,
            journal=host.journal,
        )
        member.on_status(functools.partial(self._on_status, host))
        sync = member._sync
        if sync._SyncObj__conf.appendEntriesUseBatch:
            # The simulated transport has no sockets, so the poll() that ends every tick (a
            # system call) has nothing to wait for: skip it.
            sync._poller = _NO_POLLER
        if self.skip_idle_ticks:
            # What is asked of a member between ticks runs at its next tick: bring the driver
            # back to its grid for it (transfers, term bumps, membership commands).
            poke = functools.partial(self._poke, host)
            member._on_tick_queue = _PokingDeque(poke)
            commands = member._sync._SyncObj__commandsQueue
            put = commands.put_nowait

            def put_nowait(value: Any) -> None:
                put(value)
                poke()

            commands.put_nowait = put_nowait
        host.member = member
        self._trace("start", host.addr, host.incarnation)
        self.env.process(self._drive(host, host.incarnation))

    def _drive(self, host: _Host, incarnation: int) -> Generator[simpy.Event, Any, None]:
        tick_s = self.config.tick_period_s
        while host.incarnation == incarnation and host.member is not None:
            if host.paused:
                host.resume = self.env.event()
                yield host.resume
                continue
            # What arrived first (pysyncobj reads in poll() at the end of a tick), then a tick.
            while host.inbox and host.transport is not None and host.incarnation == incarnation:
                src, item = host.inbox.popleft()
                self._trace_recv(host.addr, src, item)
                host.transport.process(src, item)
            if host.member is None or host.incarnation != incarnation:
                return
            member = host.member
            member.tick()
            env = self.env
            host.wake = env.event()
            host.ticked_at = env.now
            at = env.now + tick_s  # the time SimPy gives env.timeout(tick_s)
            idle_until = _idle_until(member, host.transport) if self.skip_idle_ticks else -1.0
            if CLOCK_EPOCH_S + at < idle_until:
                # A tick is a no-op until one of the member's timers is due: skip those grid
                # points (the same trace: see _idle_until). Whatever arrives still wakes the
                # driver at once, and _poke brings it back to the grid.
                while CLOCK_EPOCH_S + at < idle_until:
                    at = at + tick_s  # as the chain of timeouts would have added it up
            host.sleep_until = at
            # Wake on an arrival or at the next grid point, whichever comes first.
            call_at(env, at, functools.partial(fire_if_pending, host.wake))
            yield host.wake

    def _poke(self, host: _Host) -> None:
        """Wake a sleeping driver at the grid point where it would have ticked next had it not
        skipped idle ticks: something now waits for its next tick."""
        wake = host.wake
        if wake is None or wake.triggered:
            return
        env = self.env
        tick_s = self.config.tick_period_s
        at = host.ticked_at + tick_s
        while at < env.now:
            at = at + tick_s
        if at >= host.sleep_until:
            return
        host.sleep_until = at
        call_at(env, at, functools.partial(fire_if_pending, wake))

    # ------------------------------------------------------------------ faults
    def crash(self, i: int) -> None:
        """Kill member i: volatile state is gone, its journal is kept, its kernel resets links."""
        host = self._hosts[i]
        if host.member is None:
            return
        if host.transport is not None:
            host.transport.kernel_reset_all()
        host.member = None  # no code of a crashed process runs: no stop(), no destroy()
        host.transport = None
        host.incarnation += 1
        host.inbox.clear()
        self._trace("crash", host.addr)
        if host.resume is not None and not host.resume.triggered:
            host.resume.succeed()  # let a paused driver see that it is gone

    def restart(
        self, i: int, more_peers: Iterable[str] = (), less_peers: Iterable[int] = ()
    ) -> None:
        """Start member i again with the journal it had when it crashed; its peers are the
        ones it first started with, without ``less_peers`` (member indexes: the members
        removed since, which the operator took out of its --peers) and with ``more_peers``
        (Raft addresses: node/cluster.py's peers_from_registry)."""
        host = self._hosts[i]
        if host.member is not None:
            raise RuntimeError(f"member {i} is running")
        extra = {addr for addr in more_peers if addr != host.addr}
        gone = {self._hosts[j].addr for j in less_peers}
        self._start(host, sorted((set(host.peers) - gone) | extra))

    def pause(self, i: int) -> None:
        """SIGSTOP: no ticks, nothing read; arrivals queue up in its kernel."""
        host = self._hosts[i]
        host.paused = True
        self._trace("pause", host.addr)
        self._poke(host)  # the driver notices at its next grid point

    def resume(self, i: int) -> None:
        """SIGCONT: read what queued up, then tick."""
        host = self._hosts[i]
        host.paused = False
        self._trace("resume", host.addr)
        if host.resume is not None and not host.resume.triggered:
            host.resume.succeed()

    def partition(
        self, a: int | Iterable[int], b: int | Iterable[int], one_way: bool = False
    ) -> int:
        """Cut every link from a to b (and b to a unless one_way); a and b are member indexes
        or collections of them. Returns an id for heal()."""
        side_a = [self._hosts[i].addr for i in sorted({a} if isinstance(a, int) else set(a))]
        side_b = [self._hosts[i].addr for i in sorted({b} if isinstance(b, int) else set(b))]
        links = [(x, y) for x in side_a for y in side_b if x != y]
        if not one_way:
            links += [(y, x) for x, y in links]
        self._next_partition_id += 1
        self._partitions[self._next_partition_id] = links
        self.net.set_cut(links, cut=True)
        self._trace("partition", self._next_partition_id, links)
        return self._next_partition_id

    def heal(self, partition_id: int | None = None) -> None:
        """Heal one partition, or (None) every partition, one at a time in creation order."""
        ids = sorted(self._partitions) if partition_id is None else [partition_id]
        for pid in ids:
            links = self._partitions.pop(pid)
            self.net.set_cut(links, cut=False)
            self._trace("heal", pid)

    def add_member_host(self) -> int:
        """Start a new member that knows every existing one but is not in their configuration
        yet (dynamic membership: ask the leader with request_add_member). Returns its index."""
        addrs = [h.addr for h in self._hosts]
        host = self._add_host(f"n{len(self._hosts)}", addrs)
        self._start(host)
        return host.index

    # ------------------------------------------------------------------ reading
    def __len__(self) -> int:
        return len(self._hosts)

    def member(self, i: int) -> RaftMember | None:
        return self._hosts[i].member

    def addr(self, i: int) -> str:
        return self._hosts[i].addr

    def accepts(self, a: int, b: int) -> bool:
        """Whether member ``b``'s Raft port would take a connection from member ``a`` now (the
        leader's probe of a newcomer, node.runtime.accepts_connections): b's process runs
        (paused too: its kernel still accepts) and neither direction between them is cut."""
        net, src, dst = self._net, self._hosts[a].addr, self._hosts[b].addr
        if net is None or self._hosts[b].member is None:
            return False
        return not net.cuts[(src, dst)] and not net.cuts[(dst, src)]

    def status(self, i: int) -> RaftStatus | None:
        member = self._hosts[i].member
        return None if member is None else member.status

    def running(self) -> list[int]:
        return [h.index for h in self._hosts if h.member is not None and not h.paused]

    def leaders(self) -> list[tuple[int, int]]:
        """(member index, term) of every running member that believes it leads."""
        return [
            (h.index, h.member.status.term)
            for h in self._hosts
            if h.member is not None and h.member.status.is_leader
        ]

    def agreed_leader(self, among: Sequence[int] | None = None) -> tuple[int, int] | None:
        """(leader index, term) if the leader leads with quorum and every member in `among`
        (default: running, unpaused members) follows it in that term; else None."""
        indexes = self.running() if among is None else list(among)
        leaders = [(i, t) for i, t in self.leaders() if i in indexes]
        if len(leaders) != 1:
            return None
        leader, term = leaders[0]
        leader_addr = self._hosts[leader].addr
        for i in indexes:
            status = self.status(i)
            if status is None or status.term != term or status.leader_raft_addr != leader_addr:
                return None
        return leader, term

    def run_until(
        self, predicate: Callable[[], bool], timeout_s: float, step_s: float = 0.01
    ) -> bool:
        """Advance simulated time in steps of step_s until predicate() holds or timeout_s has
        passed; checks the invariants after every step."""
        deadline = self.env.now + timeout_s
        while True:
            self.check_invariants()
            if predicate():
                return True
            if self.env.now >= deadline:
                return False
            self.env.run(until=min(deadline, self.env.now + step_s))

    def check_invariants(self) -> None:
        if self.violations:
            raise InvariantViolation(f"seed {self.seed}: {self.violations[0]}")

    def trace_hash(self) -> str:
        """Digest of every arrival read by a member, every status change and every fault."""
        self._flush_trace()
        return self._hash.hexdigest()

    # ------------------------------------------------------------------ internals
    def _on_status(self, host: _Host, status: RaftStatus) -> None:
        self._trace(
            "status",
            host.addr,
            status.state,
            status.term,
            status.leader_raft_addr,
            status.has_quorum,
            tuple(sorted(status.members)),
        )
        if status.is_leader:
            now = float(self.env.now)
            leaders, since = self._term_leaders.setdefault(status.term, ({host.addr}, now))
            if host.addr not in leaders:
                # Its votes were cast up to an election round before it led.
                if self.history_lost_since(since - self.config.election_timeout_max_s):
                    leaders.add(host.addr)
                    self._term_leaders[status.term] = (leaders, now)
                else:
                    self.violations.append(
                        f"two leaders in term {status.term}: {sorted(leaders)[0]} and "
                        f"{host.addr} (t={self.env.now:.6f})"
                    )

    def forget_state(self, i: int) -> None:
        """Member i (crashed) starts again from an empty journal, as node/cluster.py ships it:
        its term, vote and log are gone."""
        host = self._hosts[i]
        if host.member is not None:
            raise RuntimeError(f"member {i} is running")
        host.journal = RestartableMemoryJournal()
        self._forgot_at[host.addr] = float(self.env.now)

    def history_lost_since(self, since: float) -> bool:
        """Whether enough members restarted from an empty journal after ``since`` that a
        term's votes may be forgotten: as many as two majorities share (one of three, two of
        four). Raft terms are then no longer unique (memory journals): a majority that
        includes fresh members may elect a leader of a term that had one. The store's fence
        (epoch and holder) is what keeps those two apart."""
        fresh = sum(1 for at in self._forgot_at.values() if at > since)
        return fresh >= votes_overlap(len(self._hosts) - len(self.removed))

    def _trace(self, *parts: Any) -> None:
        self.events_traced += 1
        pending = self._pending
        now = round(float(self.env._now), 9)
        payloads = [p for p in parts if isinstance(p, bytes)]
        if payloads:
            pending.append(repr((now, *[p for p in parts if not isinstance(p, bytes)])).encode())
            pending.extend(payloads)
        else:
            pending.append(repr((now, *parts)).encode())
        if len(pending) >= _TRACE_CHUNK:
            self._flush_trace()

    def _trace_recv(self, addr: str, src: str, item: _Item) -> None:
        """_trace("recv", addr, src, item.kind, item.conn.conn_id, item.payload), the hottest
        trace event, without sorting its parts."""
        self.events_traced += 1
        pending = self._pending
        now = round(float(self.env._now), 9)
        pending.append(repr((now, "recv", addr, src, item.kind, item.conn.conn_id)).encode())
        pending.append(item.payload)
        if len(pending) >= _TRACE_CHUNK:
            self._flush_trace()

    def _flush_trace(self) -> None:
        # One hash update per chunk: blake2b of the concatenation is the digest of the updates.
        pending = self._pending
        if pending:
            self._hash.update(b"".join(pending))
            pending.clear()

"""One simulated run: the cluster, its store, its network, its load and its faults, from a seed.

Phases: load from ``load_start_s`` to ``duration_s``; faults inside the fault window, all healed by
its end; then the liveness phase, in which every acknowledged task must reach a terminal state
within ``liveness_s`` of the last heal (or of the end of the load, whichever is later).

Everything random comes from generators seeded with strings derived from the seed (``random``
hashes str seeds with SHA-512, not the salted ``hash``), one per concern, so that adding a draw in
one place does not shift every other one.
"""

from __future__ import annotations

import random
import time
import traceback
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from typing import Any

from core.priority import Priority
from core.scheduler import Role
from sim.checker import Checker, TaskFacts, ViolationFound
from sim.config import SimConfig
from sim.faults import Step, format_plan, generate, is_heal, parse_script
from sim.leadership import (
    MEMBERSHIP_NEEDS_PYSYNCOBJ,
    Leadership,
    make_leadership,
    votes_overlap,
)
from sim.load import Clients, TaskSpec
from sim.net import STORE, Caller, Network, Partition
from sim.node import SimNode
from sim.simenv import Environment
from sim.store import SimStore
from sim.trace import Trace

# Time series sampling period (charts), and the liveness phase's polling period.
SAMPLE_S = 0.5
LIVENESS_POLL_S = 0.25
# The operator's membership request (dsched members add/remove), as node/client.py and
# NodeRuntime.change_membership serve it: asked of the leader; a leader asked to remove itself
# hands over and is asked again; retried this often, this many times.
MEMBERSHIP_RETRY_S = 0.25
MEMBERSHIP_ATTEMPTS_MAX = 60
# Refusals as unsafe (node.cluster.unsafe_membership_change), and requests a paused leader
# leaves unanswered, are waits, not attempts: the operator asks again while members come back
# or the leader resumes, this many times (two minutes) at most.
MEMBERSHIP_WAITS_MAX = 480
# node/cluster.py's RaftLeadership.change_membership: how long the leader waits for Raft's
# answer before it reads the answer off its configuration.
MEMBERSHIP_ANSWER_S = 10.0
# A member that left stops gracefully with this grace (`dsched members remove`, then stop).
LEAVE_GRACE_S = 1.0


@dataclass
class Violation:
    invariant: int
    message: str
    at_s: float
    events: list[str]


@dataclass
class RunResult:
    seed: int
    scenario: str
    raft: str
    trace_hash: str  # of this run's events (sim/trace.py)
    raft_trace_hash: str  # of every Raft message, status change and fault (sim/raftnet.py)
    violation: Violation | None
    submitted: int
    acked: int
    completed: int
    dead: int
    executions: int
    cancelled: int  # tasks that ended cancelled (and were not retried by hand after)
    retried_by_hand: int
    ran_cancelled: int  # Counters.ran_cancelled
    duplicates: int
    lost_acked: int
    gave_up: int
    refused: int
    fenced_writes: int
    stale_refused: int
    overlaps: int  # Counters.overlaps
    elections: int
    failovers_s: list[float]
    drain_s: float | None  # from the last heal / end of load to the last acked task's end
    duration_s: float  # when the load stopped
    sim_end_s: float
    wall_s: float
    events: int
    plan: str
    fault_windows: list[tuple[float, float, str]] = field(default_factory=list)
    series: dict[str, list[float]] = field(default_factory=dict)
    trace: list[str] = field(default_factory=list)
    # Membership requests a leader refused as leaving no reachable majority (the operator
    # asked again later): node.cluster.unsafe_membership_change at work.
    membership_refused: int = 0


class World:
    def __init__(self, config: SimConfig) -> None:
        self.config = config
        seed = config.seed
        self.env = Environment()
        env = self.env
        self.trace = Trace(keep_all=config.keep_trace)
        self.facts: dict[str, TaskFacts] = {}
        self.specs: dict[str, TaskSpec] = {}
        self.checker = Checker(self.facts, config.skew_ms_max, lambda: env.now)
        self.net = Network(env, config.net, random.Random(f"{seed}:net"))
        self.store = SimStore(
            env,
            self.checker,
            self.trace,
            no_fencing=config.unsafe_no_fencing,
            retention_ms=config.retention_s * 1000,
        )
        self.store.set_bell(self._ring)
        self.caller = Caller(env, self.net, self.store.serve)
        self.leadership: Leadership = make_leadership(
            config.raft, env, config.nodes, seed, random.Random(f"{seed}:raft")
        )
        if config.script:
            with open(config.script, encoding="utf-8") as f:
                _, self.plan = parse_script(f.read())
        else:
            self.plan = generate(config, random.Random(f"{seed}:faults"))
        # A node for each `join`: down, and in no Raft configuration, until its step.
        joins = sum(1 for step in self.plan if step.verb == "join")
        if joins and self.leadership.name != "pysyncobj":
            raise ValueError(MEMBERSHIP_NEEDS_PYSYNCOBJ)
        self._spares = list(range(config.nodes, config.nodes + joins))
        self._left: set[int] = set()  # removed from Raft (or being removed): down for good
        self._removed: set[int] = set()  # removal committed
        self._joined: set[int] = set()
        self._hosts = set(range(config.nodes))  # nodes whose Raft member has been started
        self._membership_busy = 0  # join and leave requests not yet answered
        self._membership_failed: list[str] = []
        self._membership_refused = 0
        skew_rng = random.Random(f"{seed}:skew")
        self.nodes = [
            SimNode(self, i, skew_rng.randint(-config.skew_ms_max, config.skew_ms_max))
            for i in range(config.nodes + joins)
        ]
        for node in self.nodes:
            # As the runtime: a Raft status change wakes the leader loop at once.
            self.leadership.on_change(node.index, node.wake)
        self.clients = Clients(
            env,
            config.load,
            config.net,
            random.Random(f"{seed}:load"),
            self.nodes,
            self._on_ack,
            self.facts,
            self.specs,
            random.Random(f"{seed}:ops"),
        )
        self.checker.on_ended = self.clients.ended
        self.store.set_cancel_channel(self._tell_cancel)
        self.runs: dict[str, int] = {}  # task -> handler runs so far (decides its outcome)
        # When each node's Raft member last started from an empty journal.
        self._forgot_at: dict[int, float] = {}
        self.checker.raft_history_lost_since = self._raft_history_lost_since
        self.fault_windows: list[tuple[float, float, str]] = []
        self._open_faults: dict[str, list[tuple[float, str]]] = {}
        self._crashed: list[int] = []
        self._paused: list[int] = []
        self._raft_partitions: list[tuple[Partition, int | None]] = []
        self.last_heal_s = 0.0
        self.series: dict[str, list[float]] = {
            "t": [],
            "completed": [],
            "running": [],
            "high": [],
            "medium": [],
            "low": [],
        }

    # ------------------------------------------------------------------ wiring
    def _on_ack(self, task_id: str) -> None:
        self.trace.emit(self.env.now, "ack", task_id)
        self.checker.on_ack(task_id)

    def node(self, node_id: str) -> SimNode:
        """The node named ``node_id`` ("n1" is nodes[0])."""
        return self.nodes[int(node_id[1:]) - 1]

    def _ring(self, node_id: str) -> None:
        node = self.node(node_id)
        self.net.send(STORE, node_id, node.ring, _nothing)

    def _raft_history_lost_since(self, since: float) -> bool:
        """Enough members started from an empty journal after ``since`` that a term's votes
        may be forgotten (SimRaftCluster.history_lost_since)."""
        fresh = sum(1 for at in self._forgot_at.values() if at > since)
        return fresh >= votes_overlap(len(self._hosts - self._removed))

    def _tell_cancel(self, node_id: str, task_id: str, attempt: int) -> None:
        node = self.node(node_id)
        self.net.send(STORE, node_id, partial(node.cancel_heard, task_id, attempt), _nothing)

    def handler_outcome(self, task_id: str, node: SimNode) -> tuple[float, bool]:
        """(run time, succeeds) of the next run of this task on this node."""
        spec = self.specs[task_id]
        runs = self.runs.get(task_id, 0) + 1
        self.runs[task_id] = runs
        run_s = spec.run_s * node.slowness
        if spec.hangs and runs == 1:
            run_s = 3.0 * spec.new.timeout_ms / 1000
        ok = spec.fail_runs is not None and runs > spec.fail_runs
        if ok and node.fail_p and node.rng.random() < node.fail_p:
            ok = False
        return run_s, ok

    # ------------------------------------------------------------------ leadership
    def leader_index(self) -> int | None:
        """The up member that leads in the highest term, as Raft reports it."""
        best: tuple[int, int] | None = None
        for node in self.nodes:
            if not node.up:
                continue
            leads, term = self.leadership.status(node.index)
            if leads and (best is None or term > best[0]):
                best = (term, node.index)
        return None if best is None else best[1]

    # ------------------------------------------------------------------ faults
    def _node_ref(self, ref: str) -> int | None:
        if ref == "leader":
            return self.leader_index()
        if ref == "crashed":  # the earliest crashed that is not being removed
            return next((i for i in self._crashed if i not in self._left), None)
        if ref == "paused":
            return self._paused[0] if self._paused else None
        index = int(ref) - 1
        if not 0 <= index < len(self.nodes):
            raise ValueError(f"no node {ref}")
        return index

    def _explicit(self, text: str) -> tuple[set[str], bool]:
        """The names a side lists ('{1,leader,store}'), and whether it says 'others'."""
        names: set[str] = set()
        others = False
        for ref in text.strip("{}").split(","):
            ref = ref.strip()
            if ref == "others":
                others = True
            elif ref == "store":
                names.add(STORE)
            elif ref:
                index = self._node_ref(ref)
                if index is not None:
                    names.add(self.nodes[index].id)
        return names, others

    def _sides(self, text_a: str, text_b: str) -> tuple[set[str], set[str]]:
        """Resolve both sides of a partition; 'others' is every node the other side does not
        list."""
        all_nodes = {n.id for n in self.nodes}
        side_a, others_a = self._explicit(text_a)
        side_b, others_b = self._explicit(text_b)
        if others_a:
            side_a |= all_nodes - side_b
        if others_b:
            side_b |= all_nodes - side_a
        return side_a, side_b - side_a

    def _open(self, key: str, label: str) -> None:
        self._open_faults.setdefault(key, []).append((self.env.now, label))

    def _close(self, key: str) -> None:
        opened = self._open_faults.get(key)
        if opened:
            start, label = opened.pop(0)
            self.fault_windows.append((start, self.env.now, label))

    def _lose_leader_if(self, index: int | None) -> None:
        if index is not None and index == self.leader_index():
            self.checker.on_leader_lost(self.leadership.status(index)[1])

    def _raft_partition(self, part: Partition) -> None:
        """Cut the same member links in Raft's network (the store is not a Raft member)."""
        # Only Raft members started so far: a node still to join has no links to cut (a
        # partition's cut does not reach the links of a node that joins after it).
        side_a = sorted(
            i for n in part.side_a if n != STORE and (i := int(n[1:]) - 1) in self._hosts
        )
        side_b = sorted(
            i for n in part.side_b if n != STORE and (i := int(n[1:]) - 1) in self._hosts
        )
        pid = self.leadership.partition(side_a, side_b, part.one_way) if side_a and side_b else None
        self._raft_partitions.append((part, pid))

    def _raft_heal(self, part: Partition) -> None:
        for i, (known, pid) in enumerate(self._raft_partitions):
            if known == part:
                del self._raft_partitions[i]
                if pid is not None:
                    self.leadership.heal(pid)
                return

    def inject(self, step: Step) -> None:
        verb, args = step.verb, step.args
        now = self.env.now
        self.trace.emit(now, "fault", step.text())
        if is_heal(step):
            self.last_heal_s = now
        if verb in ("crash", "stop"):
            index = self._node_ref(args[0])
            if index is None or not self.nodes[index].up:
                return
            node = self.nodes[index]
            self._open(f"down:{index}", f"{verb} {node.id}")
            if verb == "crash":
                self._lose_leader_if(index)
                self._crash(index)
            else:
                grace = float(args[1]) if len(args) > 1 else 1.0
                self.env.process(self._stop(index, grace))
        elif verb == "restart":
            index = self._node_ref(args[0])
            if index is None or index in self._paused or index in self._left:
                return
            node = self.nodes[index]
            if node.up and node.stopping:
                self._crash(index)  # still draining its handlers: cut it short
            if node.up or node.starting:
                return
            if index in self._crashed:
                self._crashed.remove(index)
            self._close(f"down:{index}")
            self.env.process(self._start(index))
        elif verb == "pause":
            index = self._node_ref(args[0])
            if index is None or not self.nodes[index].up or index in self._paused:
                return
            self._lose_leader_if(index)
            self._paused.append(index)
            self._open(f"pause:{index}", f"pause {self.nodes[index].id}")
            self.nodes[index].pause()
            self.leadership.pause(index)
        elif verb == "resume":
            index = self._node_ref(args[0])
            if index is None or index not in self._paused:
                return
            self._paused.remove(index)
            self._close(f"pause:{index}")
            self.leadership.resume(index)
            self.nodes[index].resume()
        elif verb == "partition":
            if len(args) < 3 or args[1] != "from":
                raise ValueError(f"partition needs '{{A}} from {{B}}': {step.text()}")
            side_a, side_b = self._sides(args[0], args[2])
            part = Partition(frozenset(side_a), frozenset(side_b), "one-way" in args)
            leader = self.leader_index()
            if leader is not None:
                lid = self.nodes[leader].id
                # Leadership is lost when the leader can no longer heartbeat a majority.
                links = set(part.links())
                members = [n for n in self.nodes if n.index in self._hosts - self._left]
                cut_off = sum(1 for n in members if n.id != lid and (lid, n.id) in links)
                # So is a leader that cannot reach the store (it hands over: core.pacing), as a
                # dispatcher: failover runs from the cut.
                if 2 * (len(members) - cut_off) <= len(members) or (
                    (lid, STORE) in links or (STORE, lid) in links
                ):
                    self._lose_leader_if(leader)
            self.net.add_partition(part)
            self._raft_partition(part)
            self._open(f"part:{part.describe()}", f"partition {part.describe()}")
        elif verb == "heal":
            healed: list[Partition | None] = (
                list(self.net.partitions) if args[:1] == ("all",) else [None]
            )
            for one in healed:
                done = self.net.heal(one)
                if done is not None:
                    self._raft_heal(done)
                    self._close(f"part:{done.describe()}")
        elif verb == "store":
            if args[0] == "down":
                if self.store.up:
                    self._open("store", "store down")
                    self.store.crash(lose_unsynced=self.config.fsync == "everysec")
            else:
                if not self.store.up:
                    self._close("store")
                    self.store.restart()
        elif verb == "net":
            if "normal" in args:
                cfg = self.config.net
                self.net.set_quality(cfg.delay_s, cfg.jitter_s, cfg.drop_p)
                self._close("net")
            else:
                opts = dict(a.split("=", 1) for a in args)
                self.net.set_quality(
                    float(opts.get("delay", self.config.net.delay_s)),
                    float(opts.get("jitter", self.config.net.jitter_s)),
                    float(opts.get("drop", self.config.net.drop_p)),
                )
                self._open("net", "network " + " ".join(args))
        elif verb == "handlers":
            index = self._node_ref(args[0])
            if index is None:
                return
            node = self.nodes[index]
            if "normal" in args:
                node.slowness, node.fail_p = 1.0, 0.0
                self._close(f"handlers:{index}")
            else:
                opts = dict(a.split("=", 1) for a in args[1:])
                node.slowness = float(opts.get("slow", 1))
                node.fail_p = float(opts.get("fail", 0))
                self._open(f"handlers:{index}", f"handlers {node.id} " + " ".join(args[1:]))
        elif verb == "skew":
            index = self._node_ref(args[0])
            if index is not None:
                self.nodes[index].skew_ms = int(args[1])
        elif verb == "join":
            if self._spares:
                index = self._spares.pop(0)
                self._open(f"member:{index}", f"join {self.nodes[index].id}")
                self.env.process(self._join(index))
        elif verb == "leave":
            index = self._node_ref(args[0])
            if index is None or index in self._left:
                return
            if not self.nodes[index].up and index not in self._crashed:
                return  # starting: removed once up, by a later step if any
            if self._runs_a_type_alone(index):
                self.trace.emit(now, "leave-skipped", self.nodes[index].id)
                return
            # A crashed member may be removed too (a dead node replaced): it stays down.
            self._left.add(index)
            self._open(f"member:{index}", f"leave {self.nodes[index].id}")
            self.env.process(self._leave(index))
        else:
            raise ValueError(f"unknown fault {step.text()}")

    def _crash(self, index: int) -> None:
        node = self.nodes[index]
        if index in self._paused:  # a frozen process can be killed too
            self._paused.remove(index)
            self._close(f"pause:{index}")
            self.leadership.resume(index)
        node.crash()
        self.leadership.crash(index)
        if index not in self._crashed:
            self._crashed.append(index)

    def _stop(self, index: int, grace_s: float) -> Any:
        node = self.nodes[index]
        yield from node.stop(grace_s)
        if not node.up:
            self.leadership.crash(index)
            if index not in self._crashed:
                self._crashed.append(index)

    def _start(self, index: int) -> Any:
        """A node process starts: it waits out an election timeout (node/cluster.py), then
        starts its Raft member and its loops."""
        node = self.nodes[index]
        node.starting = True
        yield self.env.timeout(self.config.raft_start_delay_s)
        node.starting = False
        if node.up:
            return
        fresh = self.config.raft_journal == "memory"
        if fresh:
            self._forgot_at[index] = self.env.now
        self.leadership.restart(
            index,
            fresh_state=fresh,
            more_peers=self._start_peers(index),
            less_peers=self._left,
        )
        node.boot()

    def _join(self, index: int) -> Any:
        """A new node process starts with every member as its peers (its Raft member after the
        start delay, as _start), and the operator asks the leader to add it."""
        node = self.nodes[index]
        node.starting = True
        yield self.env.timeout(self.config.raft_start_delay_s)
        node.starting = False
        self.leadership.add_member(index)
        self._hosts.add(index)
        node.boot()
        self._membership_busy += 1
        added = yield from self._membership("add", index)
        self._membership_busy -= 1
        self.trace.emit(self.env.now, "joined" if added else "join-gave-up", node.id)
        if added:
            self._joined.add(index)
        else:
            self._membership_failed.append(f"{node.id} was never added")
        self._close(f"member:{index}")

    def _leave(self, index: int) -> Any:
        """The operator removes a member from Raft, then stops its node for good."""
        node = self.nodes[index]
        self._membership_busy += 1
        try:
            removed = yield from self._membership("remove", index)
            self.trace.emit(self.env.now, "left" if removed else "leave-gave-up", node.id)
            if not removed:
                self._left.discard(index)
                if not node.up and index in self._crashed:
                    # A member that is down cannot be removed without a majority (a two-member
                    # cluster with one down): the operator starts it again instead.
                    self._crashed.remove(index)
                    self._close(f"down:{index}")
                    self.last_heal_s = self.env.now
                    self.env.process(self._start(index))
                else:
                    self._membership_failed.append(f"{node.id} was never removed")
                return
            self.leadership.removed(index)
            self._removed.add(index)
            if node.up:
                yield from node.stop(LEAVE_GRACE_S)
            if node.up:  # paused through its grace: the operator kills it
                self._crash(index)
            self.leadership.crash(index)
            if index in self._crashed:  # removed while down: its crash ends here
                self._crashed.remove(index)
                self._close(f"down:{index}")
        finally:
            self._membership_busy -= 1
            self._close(f"member:{index}")

    def _membership(self, action: str, index: int) -> Any:
        """As `dsched members add|remove` against NodeRuntime.change_membership: ask the
        leader; a leader refuses a change that would leave no reachable majority (409
        membership_unsafe: the operator brings members back, or waits, and asks again); a
        leader asked to remove itself hands over, and the new one is asked. True once the
        change is made (or found made: Raft refuses a change already in place)."""
        env = self.env
        wanted = action == "add"
        attempts = waits = 0
        refused_why = ""
        while attempts < MEMBERSHIP_ATTEMPTS_MAX and waits < MEMBERSHIP_WAITS_MAX:
            leader = self.leader_index()
            if leader is not None and self.nodes[leader].paused:
                # A paused process answers nothing: the operator's request times out and is
                # sent again. Once it resumes, the guard below runs before anything else, as
                # in NodeRuntime.change_membership.
                waits += 1
                yield env.timeout(MEMBERSHIP_RETRY_S)
                continue
            unsafe = (
                "" if leader is None else self.leadership.membership_unsafe(leader, action, index)
            )
            if unsafe:
                waits += 1
                self._membership_refused += 1
                if unsafe != refused_why:
                    # Raft addresses count from n0, node ids from n1: name both.
                    raft = self.leadership.raft_addr(index)
                    node_id = self.nodes[index].id
                    self.trace.emit(env.now, "membership-unsafe", node_id, f"(raft {raft})", unsafe)
                refused_why = unsafe
                yield env.timeout(MEMBERSHIP_RETRY_S)
                continue
            refused_why = ""
            attempts += 1
            if leader is not None and leader == index and not wanted:
                self.trace.emit(env.now, "handover", self.nodes[leader].id, "leave")
                self.leadership.transfer(leader, _nothing)
            elif leader is not None:
                answered = env.event()
                outcome: list[bool] = []

                def done(
                    ok: bool, _reason: str, answered: Any = answered, outcome: Any = outcome
                ) -> None:
                    if not outcome:
                        outcome.append(ok)
                        answered.succeed()

                self.leadership.change_membership(leader, action, index, done)
                yield answered | env.timeout(MEMBERSHIP_ANSWER_S)
                # Refused (request_denied): perhaps because the change is already made.
                if (
                    outcome[:1] == [True]
                    or (index in self.leadership.configuration(leader)) == wanted
                ):
                    return True
            yield env.timeout(MEMBERSHIP_RETRY_S)
        return False

    def _runs_a_type_alone(self, index: int) -> bool:
        """Whether node ``index`` is the last member that runs some task type: an operator does
        not remove it (the tasks of that type would wait for good)."""
        mine = self.nodes[index].types
        if mine is None:  # one type, which every node runs
            return False
        covered: set[str] = set()
        for i in self._hosts - self._left - {index}:
            covered |= self.nodes[i].types or mine
        return not mine <= covered

    def registry_read(self, index: int) -> None:
        """Node ``index`` read the registry (its registry loop): as NodeRuntime, a member that
        missed joins adopts the members it lacks (node.cluster.adopt_published)."""
        if not self._hosts - set(range(self.config.nodes)):
            return  # no member ever joined: every configuration is the first one
        self.leadership.adopt_published(index, self._registry_entries(), 0)

    def _start_peers(self, index: int) -> set[str]:
        """What starting node ``index`` adds to its --peers from the registry (node/app.py:
        _registry_peers)."""
        from node.cluster import peers_from_registry  # pysyncobj's: as make_leadership

        return peers_from_registry(self._registry_entries(), 0, self.leadership.raft_addr(index))

    def _registry_entries(self) -> dict[str, dict[str, Any]]:
        """The registry entries that publish a Raft configuration, as a node reads them: the
        live leader's (NodeRuntime._raft_config_info), if the store answers. (The real entry
        is refreshed every second; this is the leader's view now, stamped as just seen.)"""
        if not self.store.up:
            return {}
        leader = self.leader_index()
        if leader is None or self.nodes[leader].paused:
            return {}
        addr = self.leadership.raft_addr
        return {
            self.nodes[leader].id: {
                "raft_term": self.leadership.status(leader)[1],
                "raft_config": sorted(addr(i) for i in self.leadership.configuration(leader)),
                "last_seen_ms": 0,
            }
        }

    def _membership_unsettled(self) -> str | None:
        """Why Raft membership has not settled (None once it has): a request still out or
        refused for good, or an up member whose configuration is not the one asked for."""
        if self._membership_failed:
            return "; ".join(self._membership_failed)
        if self._membership_busy:
            return f"{self._membership_busy} membership request(s) still unanswered"
        expected = (set(range(self.config.nodes)) | self._joined) - self._left
        for node in self.nodes:
            if node.up and not node.paused:
                known = self.leadership.configuration(node.index)
                if known != expected:
                    names = sorted(self.nodes[i].id for i in known)
                    want = sorted(self.nodes[i].id for i in expected)
                    return f"{node.id}'s Raft configuration is {names}, not {want}"
        return None

    def _faults(self) -> Any:
        for step in self.plan:
            if step.at_s > self.env.now:
                yield self.env.timeout(step.at_s - self.env.now)
            self.inject(step)

    def _fsync_points(self) -> Any:
        """With everysec, snapshot the store at the fsync point before each store restart."""
        downs = [s.at_s for s in self.plan if s.verb == "store" and s.args[:1] == ("down",)]
        # Fsync points fall on a per-run phase, so the loss window varies from 0 to 1 s.
        phase = random.Random(f"{self.config.seed}:fsync").random()
        points = sorted({max(0.0, int(t - phase) + phase) for t in downs if t - phase >= 0})
        for at in points:
            if at > self.env.now:
                yield self.env.timeout(at - self.env.now)
            self.store.fsync_point()

    # ------------------------------------------------------------------ observation
    def _sample(self) -> Any:
        series = self.series
        while True:
            series["t"].append(self.env.now)
            series["completed"].append(float(self.checker.counters.completed))
            series["running"].append(float(sum(len(n.pool.running) for n in self.nodes if n.up)))
            counts = {p: 0 for p in Priority}
            leader = max(
                (n for n in self.nodes if n.up and n.sched.role is Role.LEADING),
                key=lambda n: n.sched.term,
                default=None,
            )
            if leader is not None:
                counts = leader.sched.queue.counts()
            self.leadership.check()
            for p in Priority:
                series[p.label].append(float(counts.get(p, 0)))
            yield self.env.timeout(SAMPLE_S)

    # ------------------------------------------------------------------ run
    def run(self) -> RunResult:
        cfg = self.config
        env = self.env
        started = time.perf_counter()
        self.leadership.start()
        for node in self.nodes[: cfg.nodes]:
            node.boot()
        self.clients.start(cfg.load_start_s, cfg.duration_s)
        env.process(self._faults())
        if cfg.fsync == "everysec":
            env.process(self._fsync_points())
        env.process(self._sample())
        violation: Violation | None = None
        drain_s: float | None = None
        try:
            end_of_faults = max((s.at_s for s in self.plan), default=0.0)
            env.run(until=max(cfg.duration_s, end_of_faults))
            settle_from = max(env.now, self.last_heal_s)
            bound = settle_from + cfg.liveness_s
            checker = self.checker
            missing = checker.unfinished(self.store.model)
            membership = self._membership_unsettled
            drained_at = None if missing else env.now
            # A heal may come late (a removal given up, then a restart): liveness from it.
            while (missing or membership()) and env.now < (
                limit := max(bound, self.last_heal_s + cfg.liveness_s)
            ):
                acked = checker.counters.acked
                env.run(until=min(limit, env.now + LIVENESS_POLL_S))
                # Only what was missing can still be missing, unless new acknowledgements came
                # in (a client's retry) or a store restore rolled tasks back: then look again.
                recheck = acked != checker.counters.acked or self.store.restored_since_poll()
                missing = checker.unfinished(self.store.model, None if recheck else missing)
                if drained_at is None and not missing:
                    drained_at = env.now
            if not missing and drained_at is not None:
                drain_s = drained_at - settle_from
            leader = max(
                (n for n in self.nodes if n.up and n.sched.fence_term),
                key=lambda n: n.sched.term,
                default=None,
            )
            self.checker.final_check(
                self.store.model,
                missing,
                cfg.liveness_s,
                None if leader is None else leader.sched,
            )
            self.leadership.check()
            unsettled = membership()
            if unsettled is not None:
                raise ViolationFound(
                    6, f"Raft membership unsettled {cfg.liveness_s:g} s after faults: {unsettled}"
                )
        except ViolationFound as exc:
            violation = Violation(exc.invariant, exc.message, env.now, self.trace.recent())
        except Exception as exc:  # a core invariant, or a driver crash: both are findings
            # SimPy re-raises a process's exception from env.run: report the original one.
            root: BaseException = exc
            while root.__cause__ is not None:
                root = root.__cause__
            frames = traceback.format_tb(root.__traceback__)[-4:]
            # Raft's own check (sim/raftnet.py: two leaders in one term) is invariant 3.
            invariant = 3 if type(root).__name__ == "InvariantViolation" else 0
            violation = Violation(
                invariant,
                f"{type(root).__name__}: {root}\n" + "".join(frames).rstrip(),
                env.now,
                self.trace.recent(),
            )
        finally:
            self.leadership.close()
        wall = time.perf_counter() - started
        return self._result(violation, drain_s, wall)

    def _result(self, violation: Violation | None, drain_s: float | None, wall: float) -> RunResult:
        counters = self.checker.counters
        load = self.clients.stats
        fenced = sum(n.fenced_total + n.stats.fenced_writes for n in self.nodes)
        for _key, opened in sorted(self._open_faults.items()):
            for start, label in opened:
                self.fault_windows.append((start, self.env.now, label))
        return RunResult(
            seed=self.config.seed,
            scenario=self.config.label,
            raft=self.leadership.name,
            trace_hash=self.trace.hexdigest(),
            raft_trace_hash=self.leadership.trace_hash(),
            violation=violation,
            submitted=load.submitted,
            acked=counters.acked,
            completed=counters.completed,
            dead=counters.dead,
            executions=counters.executions,
            cancelled=counters.cancelled,
            retried_by_hand=counters.retried_by_hand,
            ran_cancelled=counters.ran_cancelled,
            duplicates=self.checker.duplicates(),
            lost_acked=self.checker.lost_acked(self.store.model),
            gave_up=load.gave_up,
            refused=load.refused,
            fenced_writes=fenced,
            stale_refused=counters.stale_refused,
            overlaps=counters.overlaps,
            elections=counters.elections,
            failovers_s=list(counters.failovers_s),
            drain_s=drain_s,
            duration_s=self.config.duration_s,
            sim_end_s=self.env.now,
            wall_s=wall,
            events=self.trace.count,
            plan=format_plan(self.plan),
            fault_windows=sorted(self.fault_windows),
            series=self.series,
            trace=self.trace.lines() if self.config.keep_trace else [],
            membership_refused=self._membership_refused,
        )


def _nothing() -> None:
    pass


def run_one(config: SimConfig) -> RunResult:
    return World(config).run()


RunFn = Callable[[SimConfig], RunResult]

"""The node's runtime: two thin drivers over core's state machines, plus the registry heartbeat.

* The leader driver feeds :class:`core.scheduler.Scheduler` (elections, inbox notifications,
  store answers, ticks) and carries out its effects against Redis, one batch per round trip. Every
  answer goes back in the order Redis applied it: the scheduler relies on that.
* The worker driver feeds :class:`core.worker.WorkerPool` (assignments taken, handlers ended,
  ticks, refused heartbeats) and runs handlers: async ones on the loop, sync ones in threads.

Neither decides anything itself; whatever logic lived here would escape the simulation.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import contextvars
import functools
import json
import logging
import os
import random
import time
import traceback
from collections import deque
from collections.abc import Awaitable, Callable, Coroutine
from concurrent.futures import ThreadPoolExecutor
from typing import Any, Protocol

from core.driver import (
    ApplyDrainRequest,
    ApplyRequest,
    DrainRequest,
    FinishRequest,
    HeartbeatRequest,
    InterruptHandler,
    LeaderStats,
    LiveStatesRequest,
    Procedure,
    RaiseEpochRequest,
    ReleaseRequest,
    Request,
    leader_round,
    worker_effects,
)
from core.events import Event, NodeLeft, NodeSeen
from core.pacing import (
    END_RETRY_S,
    LEADER_ROUNDS_IN_FLIGHT_MAX,
    NODE_FORGET_MS,
    REGISTRY_PERIOD_S,
    SWEEP_PERIOD_S,
    TAKE_WAIT_S,
    HandoverWatch,
    LocalFinishes,
    Reservation,
    TakePolicy,
    TakeStep,
    leader_wait_s,
    own_seen_due,
    start_round,
)
from core.priority import PRIORITY_LABELS, Priority
from core.scheduler import Scheduler, SchedulerConfig
from core.store_model import Taken, TaskRecord
from core.task import Outcome
from core.worker import (
    Assignment,
    Finish,
    Heartbeat,
    Release,
    RunHandler,
    WorkerEffect,
    WorkerPool,
)
from node.cluster import unsafe_membership_change
from node.config import NodeConfig
from node.metrics import Metrics
from node.store import RedisStore, StoreUnavailable
from node.tasks import Handler, TaskContext, TaskRejected, is_async, set_current

log = logging.getLogger("dsched.runtime")

# After a leader round the store did not answer (or answered with an error), the next waits
# this long.
STORE_RETRY_S = 0.2
# How long the leader waits for a member it is asked to add to take a TCP connection.
MEMBER_PROBE_TIMEOUT_S = 1.0
# A node loop that died of an unexpected error (a bug) starts again after this long; readiness
# reports it failing while it has died this many times within LOOP_FAILURES_WINDOW_S.
LOOP_RESTART_S = 1.0
LOOP_FAILURES_UNREADY = 3
LOOP_FAILURES_WINDOW_S = 60.0


async def accepts_connections(raft_addr: str, timeout_s: float) -> bool:
    """Whether a TCP connection to ``raft_addr`` (host:port) opens within ``timeout_s``."""
    host, _, port = raft_addr.rpartition(":")
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, int(port)), timeout_s)
    except (OSError, TimeoutError, ValueError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def now_ms() -> int:
    # Wall-clock milliseconds: leases written by one node are judged by another, so all nodes
    # must share a time base. Clock skew between nodes is bounded by the lease grace.
    return time.time_ns() // 1_000_000


class Leadership(Protocol):
    """Who leads, and in which term: Raft in a cluster, the node itself when alone."""

    def snapshot(self) -> tuple[bool, int, str | None]:
        """(this node leads, term, leader node id or None)."""

    def members(self) -> list[dict[str, Any]]:
        """Cluster members as Raft knows them (id, http, raft), for GET /v1/cluster."""


class SoloLeadership:
    """A node without peers leads itself. Its term is one above the stored epoch at start, so a
    node that restarts (or a second solo node pointed at the same Redis) fences the earlier one."""

    def __init__(self, node_id: str) -> None:
        self.node_id = node_id
        self.term = 0

    async def start(self, store: RedisStore) -> None:
        self.term = await store.epoch() + 1

    def snapshot(self) -> tuple[bool, int, str | None]:
        return (self.term > 0, self.term, self.node_id if self.term > 0 else None)

    def members(self) -> list[dict[str, Any]]:
        return []


class LeaderWake:
    """What wakes the leader loop: :meth:`set` gives it a reason to run a round (a submission,
    a finish of its own, the registry, an election); :meth:`round_ended` only makes it look
    again, since a round in flight ended (another may start now)."""

    __slots__ = ("_event", "_woken")

    def __init__(self) -> None:
        self._event = asyncio.Event()
        self._woken = False

    def set(self) -> None:
        self._woken = True
        self._event.set()

    def round_ended(self) -> None:
        self._event.set()

    def take(self) -> bool:
        """Whether it was set since the last take; starts over either way."""
        woken, self._woken = self._woken, False
        self._event.clear()
        return woken

    async def wait(self) -> None:
        await self._event.wait()


# How much of a handler's error message and traceback a task keeps.
ERROR_MESSAGE_CHARS_MAX = 2000
ERROR_TRACEBACK_CHARS_MAX = 8000


def handler_outcome(exc: BaseException) -> Outcome:
    """The outcome of an attempt whose handler raised ``exc``: a rejection if it is
    TaskRejected, or a group (asyncio.TaskGroup's) of nothing else; else a failure that the
    task's policy retries. Never raises, whatever the exception's __str__ does: an error here
    skipped the attempt's end, and its worker slot stayed busy for good."""
    rejected = isinstance(exc, TaskRejected) or (
        isinstance(exc, BaseExceptionGroup) and exc.split(TaskRejected)[1] is None
    )
    try:
        message = str(exc)[:ERROR_MESSAGE_CHARS_MAX]
    except BaseException:  # a __str__ that raises, or returns no str
        message = f"<{type(exc).__name__}: str() failed>"
    try:
        trace = "".join(traceback.format_exception(exc, limit=20))[-ERROR_TRACEBACK_CHARS_MAX:]
    except BaseException:
        trace = ""
    make = Outcome.rejected if rejected else Outcome.error
    return make(type(exc).__name__, message, trace)


class NodeRuntime:
    def __init__(
        self,
        config: NodeConfig,
        store: RedisStore,
        metrics: Metrics,
        handlers: dict[str, Handler],
        leadership: Leadership,
        rng: random.Random | None = None,
    ) -> None:
        self.config = config
        self.node_id = config.resolved_node_id()
        self.store = store
        self.metrics = metrics
        self.handlers = handlers
        # Whether each type's handler is a coroutine function, asked of inspect once per type.
        self._asyncness: dict[str, bool] = {}
        self.leadership = leadership
        self.rng = rng or random.Random()
        self.scheduler = Scheduler(self.node_id, SchedulerConfig(lease_ms=config.lease_ms))
        # notify_changed wakes our own leader: while we lead, submissions need not ring.
        store.submit_rings_bell = lambda: not self.scheduler.leading
        self.pool = WorkerPool(self.node_id, config.workers, config.lease_ms)
        self._executor = ThreadPoolExecutor(
            max_workers=max(1, config.workers), thread_name_prefix="dsched-task"
        )
        self._wake = LeaderWake()
        # Leader rounds in flight (core.pacing.start_round says how many may be).
        self._rounds: set[asyncio.Task[None]] = set()
        self._slot_free = asyncio.Event()
        # Leases this node's own leader made to this node come back from the apply script
        # itself (StoreModel.apply's direct node): no assignment list, no take round trip. They
        # wait here for a free slot.
        self._direct: deque[Taken] = deque()
        self._background_tasks: set[asyncio.Task[None]] = set()
        self._take_policy = TakePolicy()
        self._handover = HandoverWatch()
        self.leader_stats = LeaderStats()
        self._fenced_reported = 0
        self._handlers_running: dict[tuple[str, int], asyncio.Task[None]] = {}
        self._tasks: list[asyncio.Task[None]] = []
        self._accepting = True
        self._stopping = False
        self._last_dispatch_ms = 0
        self._registry_seen: dict[str, int] = {}
        self._registry_info: dict[str, dict[str, Any]] = {}
        self._store_ok = True
        self._store_lost_logged_at: float | None = None  # while the leader loop lacks Redis
        self._loop_alive_ms = now_ms()
        # When each loop last died of an unexpected error (monotonic seconds), newest last.
        self.loop_failures: dict[str, deque[float]] = {}
        self._seen_leader: str | None = None
        self._taking = 0
        # Set by stop(): handler threads still running when the loops stopped (their tasks
        # were given back); the process exits without waiting for them.
        self.abandoned_threads = 0
        # This node's finishes while it leads: its leader's next drain carries them to Redis
        # (finish, then drain, one round trip), so the drain sees them at once.
        self._local_finishes: LocalFinishes[asyncio.Future[bool]] = LocalFinishes()
        self._depth_shown: dict[Priority, int] | None = None
        # This node's own entry in the leader's NodeSeen events (own_seen_due).
        self._own_seen: tuple[int, int] | None = None

    # ------------------------------------------------------------------ lifecycle
    async def start(self) -> None:
        on_change = getattr(self.leadership, "on_change", None)
        if on_change is not None:
            on_change(self._wake.set)
        await self._register()
        loops: tuple[tuple[str, Callable[[], Awaitable[None]]], ...] = (
            ("leader", self._leader_loop),
            ("take", self._take_loop),
            ("worker-ticks", self._worker_ticks),
            ("registry", self._registry_loop),
            ("cancels", self._cancel_listener),
            ("bell", self._bell_listener),
            ("sweep", self._sweep_loop),
        )
        self._tasks = [
            asyncio.create_task(self._supervised(name, loop), name=f"dsched-{name}")
            for name, loop in loops
        ]

    async def _supervised(self, name: str, loop: Callable[[], Awaitable[None]]) -> None:
        """Run one of the node's loops until the node stops. A loop that dies of an error
        nothing in it expected (a bug) is logged and started again: left dead, the node would
        go on announcing slots it never fills (take), or never renew a lease (worker ticks),
        and the tasks sent its way would wait out their leases, again and again."""
        while not self._stopping:
            try:
                await loop()
                return
            except asyncio.CancelledError:
                raise
            except Exception:
                if self._stopping:
                    return  # stop() cancelled it, and the cancel surfaced as something else
                failures = self.loop_failures.setdefault(name, deque(maxlen=LOOP_FAILURES_UNREADY))
                failures.append(time.monotonic())
                log.exception("the %s loop failed; it starts again in %.1f s", name, LOOP_RESTART_S)
                if name == "leader" and name in self._failing_loops():
                    self._hand_over_failing_leader()
                await asyncio.sleep(LOOP_RESTART_S)

    def _hand_over_failing_leader(self) -> None:
        """A leader whose leader loop keeps dying assigns nothing, yet Raft keeps it in office:
        hand leadership to a member that may lead."""
        hand_over = getattr(self.leadership, "hand_over", None)
        if hand_over is not None and self.leadership.snapshot()[0]:
            log.error("the leader loop keeps failing: handing leadership over")
            hand_over()

    def _failing_loops(self) -> list[str]:
        """Loops that died LOOP_FAILURES_UNREADY times within the last LOOP_FAILURES_WINDOW_S."""
        since = time.monotonic() - LOOP_FAILURES_WINDOW_S
        return [
            name
            for name, times in sorted(self.loop_failures.items())
            if len(times) >= LOOP_FAILURES_UNREADY and times[0] >= since
        ]

    async def stop(self, grace_s: float | None = None) -> None:
        """Graceful: stop taking work, let running tasks finish within the grace, give back the
        rest (they run again elsewhere), then stop the loops. Nothing is lost either way."""
        if self._stopping:
            return
        self._accepting = False
        grace_ms = int(1000 * (self.config.shutdown_grace_s if grace_s is None else grace_s))
        await self._carry_out(self.pool.shutdown(now_ms(), grace_ms))
        # Leased here but not started: give them back to run elsewhere.
        leftover = list(self._direct)
        self._direct.clear()
        await self._give_back(leftover)
        deadline = time.monotonic() + grace_ms / 1000 + 5.0
        while not self.pool.idle and time.monotonic() < deadline:
            await asyncio.sleep(0.02)
            await self._carry_out(self.pool.tick(now_ms()))
        self._stopping = True
        self._wake.set()
        self._slot_free.set()
        # Rounds in flight too: a cancelled one gives its unsent finishes back to the queue,
        # which then goes alone.
        tasks = [*self._tasks, *self._rounds]
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        await self._finishes_alone(self._local_finishes.take_all())
        with contextlib.suppress(Exception):
            await self.store.unregister_node(self.node_id)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self.abandoned_threads = self.pool.held
        if self.abandoned_threads:
            log.warning(
                "%d sync handler threads still run past the grace (their tasks were given "
                "back and will run again): not waiting for them",
                self.abandoned_threads,
            )

    # ------------------------------------------------------------------ RuntimeView (HTTP side)
    def notify_changed(self, records: list[TaskRecord]) -> None:
        # The inbox already holds these; wake the leader loop so it drains now, not at the
        # next idle tick. That is what keeps submit-to-start in the low milliseconds.
        self._wake.set()

    def accepting(self) -> bool:
        return self._accepting

    def readiness(self) -> tuple[bool, dict[str, Any]]:
        leader = self.leadership.snapshot()[2]
        loop_age_ms = now_ms() - self._loop_alive_ms
        failing = self._failing_loops()
        checks: dict[str, Any] = {
            "redis": self._store_ok,
            "leader_known": leader is not None,
            "dispatch_loop_age_ms": loop_age_ms,
            "dispatch_alive": loop_age_ms < 5_000,
            "accepting": self._accepting,
            "failing_loops": failing,
        }
        ready = bool(self._store_ok and leader is not None and loop_age_ms < 5_000)
        return ready and self._accepting and not failing, checks

    def cluster(self) -> dict[str, Any]:
        _, term, leader = self.leadership.snapshot()
        members = []
        now = now_ms()
        raft_members = {m["id"]: m for m in self.leadership.members()}
        ids = sorted(set(self._registry_info) | set(raft_members) | {self.node_id})
        for node_id in ids:
            info = dict(self._registry_info.get(node_id, {}))
            if node_id == self.node_id:
                info.update(self._own_info())
            raft = raft_members.get(node_id, {})
            seen_ms = int(info.get("last_seen_ms", 0))
            healthy = now - seen_ms < self.scheduler.config.node_timeout_ms
            members.append(
                {
                    "id": node_id,
                    "http": info.get("http") or raft.get("http", ""),
                    "raft": info.get("raft") or raft.get("raft", ""),
                    # Down: its registry entry went stale (the counts below are its last ones).
                    "role": "leader" if node_id == leader else "follower" if healthy else "down",
                    "healthy": healthy,
                    "pid": info.get("pid"),
                    "workers_free": info.get("workers_free", 0),
                    "workers_busy": info.get("workers_busy", 0),
                    "leases": info.get("leases", 0),
                }
            )
        reachable = getattr(self.leadership, "reachable", None)
        configuration, heard = reachable() if reachable else ([], [])
        return {
            "leader": leader,
            "term": term,
            "self": self.node_id,
            "members": members,
            # Raft's own member list (addresses), which joins and leaves change.
            "configuration": configuration,
            # The members of it this node heard from lately (itself included): on the leader,
            # what a membership change is checked against.
            "reachable": heard,
        }

    async def change_membership(self, action: str, raft_addr: str) -> tuple[int, dict[str, Any]]:
        change = getattr(self.leadership, "change_membership", None)
        if change is None:
            return 409, {
                "error": {
                    "code": "not_clustered",
                    "field": None,
                    "message": "this node runs alone (no --raft-port)",
                }
            }
        _, _, leader = self.leadership.snapshot()
        if leader != self.node_id:
            info = self._registry_info.get(leader or "", {})
            return 421, {
                "error": {
                    "code": "not_leader",
                    "field": None,
                    "message": "membership changes go to the leader",
                    "leader": leader,
                    "leader_http": info.get("http"),
                }
            }
        # Before a leader asked to remove itself hands over: else the new leader refuses it.
        unsafe = await self._quorum_after(action, raft_addr)
        if unsafe:
            return 409, {"error": {"code": "membership_unsafe", "field": "raft", "message": unsafe}}
        own = getattr(self.leadership, "self_addr", None)
        if action == "remove" and raft_addr == own:
            # Raft refuses a leader's removal of itself: hand over, and let the client's retry
            # reach the new leader (421 names it), which removes this member.
            hand_over = getattr(self.leadership, "hand_over", None)
            if hand_over is not None:
                hand_over()
            return 503, {
                "error": {
                    "code": "leader_handing_over",
                    "field": "raft",
                    "message": "this member leads: it is handing leadership over; retry, and "
                    "the new leader removes it",
                }
            }
        reason = await change(action, raft_addr)
        if reason == "request_denied":
            configuration = getattr(self.leadership, "configuration", None)
            known = configuration is not None and raft_addr in configuration()
            why = (
                "is already a member"
                if action == "add" and known
                else "is not a member"
                if action == "remove" and not known
                else "was refused by Raft (another membership change may be in progress)"
            )
            return 409, {
                "error": {
                    "code": "membership_refused",
                    "field": "raft",
                    "message": f"{raft_addr} {why}",
                }
            }
        if reason:
            return 503, {"error": {"code": "membership", "field": "raft", "message": reason}}
        return 200, {"action": action, "raft": raft_addr, "cluster": self.cluster()}

    async def _quorum_after(self, action: str, raft_addr: str) -> str:
        """node.cluster.unsafe_membership_change for this change, from what this member hears
        and, for an addition, whether the newcomer's Raft port takes a connection."""
        reachable = getattr(self.leadership, "reachable", None)
        if reachable is None:
            return ""
        members, heard = reachable()
        listening = (
            action == "add"
            and raft_addr not in members
            and await accepts_connections(raft_addr, MEMBER_PROBE_TIMEOUT_S)
        )
        return unsafe_membership_change(action, raft_addr, members, heard, listening)

    # ------------------------------------------------------------------ registry
    def _own_info(self) -> dict[str, Any]:
        cfg = self.config
        raft = cfg.raft_advertise or (f"{cfg.raft_host}:{cfg.raft_port}" if cfg.raft_port else "")
        return {
            "http": f"{cfg.http_host}:{cfg.http_port}",
            "raft": raft,
            "pid": os.getpid(),
            "slots": self._slots(),
            "types": sorted(self.handlers),
            "workers_free": self.pool.free,
            "workers_busy": self.pool.busy,
            "leases": len(self.pool.running),
            "last_seen_ms": now_ms(),
            **self._raft_config_info(),
        }

    def _raft_config_info(self) -> dict[str, Any]:
        """A leader publishes its Raft configuration and term: a member that starts reads it
        (node.cluster.peers_from_registry), so that it can reach the members that joined."""
        configuration = getattr(self.leadership, "configuration", None)
        leads, term, _ = self.leadership.snapshot()
        if configuration is None or not leads:
            return {}
        return {"raft_term": term, "raft_config": configuration()}

    def _slots(self) -> int:
        if not self._accepting:
            return 0
        # A node whose take or worker loop keeps dying announces no slots: the leader would
        # send it tasks that wait out their leases.
        failing = self._failing_loops() if self.loop_failures else ()
        if "take" in failing or "worker-ticks" in failing:
            return 0
        return self.pool.offered

    def _free(self) -> int:
        return self.pool.free - self._taking

    async def _register(self) -> None:
        await self.store.register_node(self.node_id, self._own_info(), now_ms())

    async def _registry_loop(self) -> None:
        while not self._stopping:
            try:
                await self._register()
                self._registry_info = await self.store.nodes()
                adopt = getattr(self.leadership, "adopt_published", None)
                if adopt is not None:
                    adopt(self._registry_info, now_ms())
                self._store_ok = True
                self._handover.store_answered()
            except StoreUnavailable:
                self._store_ok = False
            except asyncio.CancelledError:
                raise
            except Exception:
                # Whatever a client library raises on a half-broken link, this loop must go
                # on: it alone keeps this node's entry fresh (else the leader deems it gone)
                # and tells /readyz whether Redis answers.
                log.exception("registry refresh failed; retrying")
                self._store_ok = False
            self.metrics.set_workers_busy(self.pool.busy)
            self._wake.set()
            await asyncio.sleep(REGISTRY_PERIOD_S)

    def _node_events(self, now: int) -> list[Event]:
        """NodeSeen for every registry entry that was refreshed since we last looked. The
        leader timestamps with its own clock: another node's clock only tells 'it changed'."""
        events: list[Event] = []
        info_now = dict(self._registry_info)
        slots = self._slots()
        if own_seen_due(self._own_seen, slots, now):
            self._own_seen = (now, slots)
            info_now[self.node_id] = self._own_info()
        else:
            info_now.pop(self.node_id, None)
        for node_id, info in sorted(info_now.items()):
            stamp = int(info.get("last_seen_ms", 0))
            if self._registry_seen.get(node_id) == stamp:
                continue
            self._registry_seen[node_id] = stamp
            types = info.get("types")
            events.append(
                NodeSeen(
                    node_id,
                    int(info.get("slots", 0)),
                    frozenset(types) if isinstance(types, list) else None,
                    now,
                )
            )
        return events

    # ------------------------------------------------------------------ leader driver
    async def _bell_listener(self) -> None:
        """Redis pub/sub bell: another node wrote to the inbox. Lossy by nature; the leader
        loop also drains every LEADER_IDLE_S, so a lost ring only costs latency."""
        while not self._stopping:
            try:
                async for _ in self.store.bell():
                    self._wake.set()
            except StoreUnavailable:
                await asyncio.sleep(0.5)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("bell listener failed; retrying")
                await asyncio.sleep(0.5)

    async def _leader_loop(self) -> None:
        """Starts leader rounds as core.pacing.start_round paces them: one at a time, and a
        second beside it that carries this node's own ended handlers, both on the store's
        ordered leader link (one round at a time if the link is not ordered)."""
        wake = self._wake
        rounds = self._rounds
        in_flight_max = LEADER_ROUNDS_IN_FLIGHT_MAX if self.store.leader_link_ordered else 1
        woken = True
        while not self._stopping:
            woken = wake.take() or woken
            leads, term, leader = self.leadership.snapshot()
            sched = self.scheduler
            steady = leads and sched.leading and term == sched.term
            if start_round(len(rounds), in_flight_max, woken, steady, bool(self._local_finishes)):
                woken = False
                self._start_round(leads, term, leader, in_flight_max)
                # The round sends its first request before the loop looks again, so a round
                # started next goes after it on the ordered link.
                await asyncio.sleep(0)
                continue
            if rounds:
                await wake.wait()  # woken, or a round ended
                continue
            timeout = leader_wait_s(self.leader_stats.timer_at_ms, now_ms())
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(wake.wait(), timeout)
            woken = True  # woken, or the timer is due

    def _start_round(self, leads: bool, term: int, leader: str | None, in_flight_max: int) -> None:
        sched = self.scheduler
        started = self._loop_alive_ms = now_ms()
        events = self._node_events(started)
        previous = self._seen_leader
        if leads and term != sched.term and previous not in (None, self.node_id):
            # The leader we followed is gone or cut off: assign it nothing until its registry
            # entry is refreshed (NodeSeen), or the tie-break by node id may hand it the first
            # task, which then waits out a whole lease. leader_round feeds node events
            # before the election, which rebuilds and dispatches within the same round.
            events.append(NodeLeft(previous, started))
        if leader is not None:
            self._seen_leader = leader
        # Only a leader's round talks to the store: a follower's tells nothing of it.
        touches_store = leads or sched.leading
        reservation, more = self._local_finishes.reserve(
            sched.leading, len(self._rounds), in_flight_max
        )
        if more:
            self._wake.set()  # the rest go with the next round, at once
        proc = leader_round(
            sched, leads, term, events, now_ms, self.leader_stats, LocalFinishes.ends(reservation)
        )
        task = asyncio.create_task(self._round(proc, reservation, leads, touches_store, started))
        self._rounds.add(task)
        task.add_done_callback(functools.partial(self._round_done, reservation))

    def _round_done(
        self, reservation: Reservation[asyncio.Future[bool]], task: asyncio.Task[None]
    ) -> None:
        # Its finishes back in line, if the round did not give them back itself: a round
        # cancelled before its first step (stop()) never ran its own finally.
        self._local_finishes.unreserve(reservation)
        self._rounds.discard(task)
        self._wake.round_ended()

    async def _round(
        self,
        proc: Procedure,
        reservation: Reservation[asyncio.Future[bool]],
        leads: bool,
        touches_store: bool,
        started: int,
    ) -> None:
        failed = False
        try:
            await self._serve(proc, reservation)
            if touches_store:
                if self._store_lost_logged_at is not None:
                    self._store_lost_logged_at = None
                    log.info("store reachable again")
                self._store_ok = True
            self._handover.after_round(leads, True, started, now_ms())
        except StoreUnavailable as exc:
            lost_at = self._store_lost_logged_at
            if lost_at is None or time.monotonic() >= lost_at + 10.0:
                # Once when it goes, then every 10 s: a long outage fills no log.
                self._store_lost_logged_at = time.monotonic()
                log.warning("store unavailable in leader loop: %s", exc)
            self._store_ok = False
            self._hand_over_if_cut_off(leads, started)
            failed = True
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception("leader loop round failed")
            failed = True
        finally:
            # A round that ended before its drain (deposed, the store lost on the way) sent
            # none of its reserved finishes: they wait for the next one, or go alone.
            self._local_finishes.unreserve(reservation)
        if not failed:
            await self._finishes_alone(self._local_finishes.to_flush(self.scheduler.leading))
        if self.leader_stats.epoch_refused_term:
            self.leader_stats.epoch_refused_term = 0
            refused = getattr(self.leadership, "epoch_refused", None)
            if refused is not None:
                with contextlib.suppress(StoreUnavailable):
                    refused(await self.store.epoch())
        fenced = self.leader_stats.fenced_writes
        if fenced > self._fenced_reported:
            self.metrics.fenced(fenced - self._fenced_reported)
            self._fenced_reported = fenced
        counts = self.scheduler.queue.counts()
        if counts != self._depth_shown:
            self._depth_shown = counts
            self.metrics.set_queue_depth({p.label: n for p, n in counts.items()})
        if failed:
            await asyncio.sleep(STORE_RETRY_S)

    def _hand_over_if_cut_off(self, leads: bool, started_ms: int) -> None:
        if not self._handover.after_round(leads, False, started_ms, now_ms()):
            return
        hand_over = getattr(self.leadership, "hand_over", None)
        if hand_over is not None:  # a solo node has no one to hand over to
            log.warning("leading without reaching the store: handing leadership over")
            hand_over()

    async def _finish_drain(
        self,
        request: DrainRequest | ApplyDrainRequest,
        reservation: Reservation[asyncio.Future[bool]] | None,
    ) -> tuple[list[Any] | None, list[Any] | str]:
        """The finishes for this drain (the round's reservation, if it holds one), then the
        request's ops (if any), then the drain, in one round trip. Answers the ops' answers
        (None without ops) and the drain's."""
        batch, more = self._local_finishes.for_drain(reservation)
        if more:
            self._wake.set()  # the rest go with the next drain, at once
        finishes = [f for f, _ in batch]
        applied: list[Any] | None = None
        try:
            if isinstance(request, ApplyDrainRequest):
                answers, (applied, taken), drained = await self.store.finish_apply_drain(
                    finishes, request.ops, self.node_id, request.term, request.count_max
                )
                self._took_direct(taken)
            else:
                answers, drained = await self.store.finish_drain(
                    finishes, request.term, request.count_max
                )
        except BaseException as exc:
            for _, future in batch:
                if not future.done():
                    future.set_exception(
                        exc if isinstance(exc, StoreUnavailable) else StoreUnavailable(str(exc))
                    )
            raise
        for (_, future), answer in zip(batch, answers, strict=True):
            if future.done():  # its caller went away meanwhile
                continue
            if isinstance(answer, BaseException):
                future.set_exception(answer)
            else:
                future.set_result(answer)
        return applied, drained

    def _took_direct(self, taken: list[Taken]) -> None:
        """Leases to this node that came back with the leader's apply: start them now."""
        if taken and not self._accepting:
            # Leased here while we stop (the registry still showed our slots): give them
            # back now, not after their leases run out.
            self._background(self._give_back(taken))
        elif taken:
            self._direct.extend(taken)
            rest = self._start_direct()
            if rest:  # interrupts of older attempts, say: not the leader's to wait for
                self._background(self._carry_out_logged(rest))

    async def _finishes_alone(self, batch: list[tuple[Finish, asyncio.Future[bool]]]) -> None:
        """Finishes queued for a drain that will not come (deposed, stopping): each alone, as
        a follower's are (group-committed all the same)."""
        if not batch:
            return

        async def alone(finish: Finish, future: asyncio.Future[bool]) -> None:
            try:
                [ok] = await self.store.finish_many([finish])
            except Exception as exc:
                if not future.done():
                    future.set_exception(exc)
                return
            if not future.done():
                future.set_result(ok)

        await asyncio.gather(*(alone(f, future) for f, future in batch))

    async def _sweep_loop(self) -> None:
        """Retention: only the leader sweeps, so nodes do not all scan the same indexes."""
        while not self._stopping:
            await asyncio.sleep(SWEEP_PERIOD_S)
            if self.scheduler.leading:
                try:
                    swept = await self.store.sweep(now_ms())
                    if swept:
                        log.info("swept %d finished tasks past retention", swept)
                    gone = await self.store.forget_nodes(now_ms(), NODE_FORGET_MS)
                    if gone:
                        log.info("forgot nodes unseen for %d s: %s", NODE_FORGET_MS // 1000, gone)
                except StoreUnavailable:
                    pass

    async def _serve(
        self, proc: Procedure, reservation: Reservation[asyncio.Future[bool]] | None = None
    ) -> None:
        """Run a core procedure: carry out each request it yields, send the answer back in.
        ``reservation``: a leader round's share of this node's finishes (its first drain's)."""
        try:
            request = next(proc)
            while True:
                try:
                    answer = await self._execute(request, reservation)
                except StoreUnavailable as exc:
                    request = proc.throw(exc)
                    continue
                request = proc.send(answer)
        except StopIteration:
            return

    async def _execute(
        self, request: Request, reservation: Reservation[asyncio.Future[bool]] | None = None
    ) -> Any:
        store = self.store
        if isinstance(request, DrainRequest):
            if not reservation and not self._local_finishes:
                return await store.drain(request.term, request.count_max)
            return (await self._finish_drain(request, reservation))[1]
        if isinstance(request, ApplyDrainRequest):
            return await self._finish_drain(request, reservation)
        if isinstance(request, ApplyRequest):
            answers, taken = await store.apply_direct(request.ops, self.node_id)
            self._took_direct(taken)
            return answers
        if isinstance(request, RaiseEpochRequest):
            ok = await store.raise_epoch(request.term, request.holder)
            if not ok:
                log.warning("term %d is older than the stored epoch: not leading", request.term)
            return ok
        if isinstance(request, LiveStatesRequest):
            return await store.live_states_after(request.after_seq, request.count_max)
        if isinstance(request, HeartbeatRequest):
            return await store.heartbeat_many(list(request.beats))
        if isinstance(request, FinishRequest):
            if LocalFinishes.wanted(self.scheduler.leading, self._stopping):
                # Our own leader carries it with its next drain (woken now): no bell, and one
                # round trip for the finish and for the leader to hear of it.
                future: asyncio.Future[bool] = asyncio.get_running_loop().create_future()
                self._local_finishes.add(request.finish, future)
                self._wake.set()
                return await future
            [ok] = await store.finish_many([request.finish])
            return ok
        if isinstance(request, ReleaseRequest):
            return await store.release(request.release)
        if isinstance(request, InterruptHandler):
            it = request.interrupt
            task = self._handlers_running.get((it.task_id, it.attempt))
            if task is not None:
                task.cancel()
            return None
        raise TypeError(f"unknown request {request!r}")

    # ------------------------------------------------------------------ worker driver
    async def _take_loop(self) -> None:
        """Pull when slots are free, as TakePolicy says (no prefetch)."""
        loop = asyncio.get_running_loop()
        policy = self._take_policy
        while not self._stopping:
            free = self._free()
            leading = self.scheduler.leading
            plan = policy.next(free, bool(self._direct), leading, loop.time())
            step = plan.step
            if step is TakeStep.WAIT_SLOT:
                self._slot_free.clear()
                await self._slot_free.wait()
                continue
            if step is TakeStep.START_DIRECT:
                await self._carry_out(self._start_direct())
                continue
            if step is TakeStep.SLEEP:
                await asyncio.sleep(plan.sleep_s)
                continue
            try:
                self._taking += plan.count
                try:
                    taken = await self.store.take_many(self.node_id, plan.count)
                finally:
                    self._taking -= plan.count
                if not taken and plan.block_one:
                    self._taking += 1
                    try:
                        one = await self.store.take(self.node_id, TAKE_WAIT_S)
                    finally:
                        self._taking -= 1
                    taken = [] if one is None else [one]
            except StoreUnavailable:
                await asyncio.sleep(0.2)
                continue
            effects: list[WorkerEffect] = []
            for item in taken:
                effects += self._start(item)
            await self._carry_out(effects)

    def _start_direct(self) -> list[WorkerEffect]:
        """Start direct leases while slots are free; answers the effects still to carry out."""
        effects: list[WorkerEffect] = []
        while self._direct and self._free() > 0:
            effects += self._start(self._direct.popleft())
        return effects

    def _start(self, taken: Taken) -> list[WorkerEffect]:
        try:
            return self._start_one(taken)
        except Exception:
            # A bug in starting one: the others taken with it still start, and this one goes
            # back to run again at once rather than wait out its lease.
            log.exception("starting %s attempt %d failed", taken.record.id, taken.attempt)
            return [Release(taken.record.id, taken.attempt, self.node_id, now_ms())]

    def _start_one(self, taken: Taken) -> list[WorkerEffect]:
        """Start the handler of what a slot took (no await: a direct lease starts the moment
        its apply answers). Answers the other effects, for the caller to carry out."""
        record = taken.record
        if not self.pool.accepting:
            # Taken just as we began to stop: give it straight back.
            return [Release(record.id, taken.attempt, self.node_id, now_ms())]
        assignment = taken.assignment()
        now = now_ms()
        priority = PRIORITY_LABELS[record.priority]
        others: list[WorkerEffect] = []
        for effect in self.pool.start(assignment, now):
            if isinstance(effect, RunHandler):
                self.metrics.started(
                    record.type, priority, max(0.0, (now - record.created_ms) / 1000)
                )
                key = (record.id, taken.attempt)
                self._handlers_running[key] = asyncio.create_task(
                    self._run_handler(assignment, record.payload_json, priority)
                )
            else:
                others.append(effect)
        return others

    async def _give_back(self, items: list[Taken]) -> None:
        for item in items:
            back = Release(item.record.id, item.attempt, self.node_id, now_ms())
            with contextlib.suppress(StoreUnavailable):
                await self.store.release(back)

    def _background(self, coro: Coroutine[Any, Any, None]) -> None:
        # The loop keeps only weak references to tasks: hold each until it is done.
        task = asyncio.create_task(coro)
        self._background_tasks.add(task)
        task.add_done_callback(self._background_tasks.discard)

    async def _carry_out_logged(self, effects: list[WorkerEffect]) -> None:
        try:
            await self._carry_out(effects)
        except StoreUnavailable as exc:
            log.warning("store unavailable while starting tasks: %s", exc)

    async def _run_handler(self, a: Assignment, payload_json: str, priority: str) -> None:
        started = time.monotonic()
        handler = self.handlers.get(a.type)
        outcome: Outcome
        # A sync handler's thread still running once its attempt is over (WorkerPool.held).
        outlived: concurrent.futures.Future[Any] | None = None
        try:
            if handler is None:
                raise LookupError(f"no handler registered for task type {a.type!r} here")
            # Most payloads of a busy queue are "null" (no payload): no decoder call for it.
            payload = None if payload_json == "null" else json.loads(payload_json)
            # This coroutine runs as its own asyncio task, so its context is its own.
            set_current(TaskContext(a.task_id, a.attempt, a.type, self.node_id))
            asyncness = self._asyncness.get(a.type)
            if asyncness is None:
                asyncness = self._asyncness[a.type] = is_async(handler)
            if asyncness:
                result = await handler(payload)
            else:
                ctx = contextvars.copy_context()
                running = self._executor.submit(ctx.run, handler, payload)
                try:
                    result = await asyncio.wrap_future(running)
                except asyncio.CancelledError:
                    if not running.done():
                        outlived = running
                    raise
            if result is not None:  # a result we cannot store is the handler's error
                size = len(json.dumps(result, allow_nan=False))  # ASCII: chars are bytes
                if size > self.config.limits.result_bytes_max:
                    raise ValueError(
                        f"the result is {size} bytes of JSON, over the "
                        f"{self.config.limits.result_bytes_max} a task keeps (result_bytes_max)"
                    )
            outcome = Outcome.success(result)
        except asyncio.CancelledError:
            outcome = Outcome.error("Interrupted", "interrupted by the worker")
        except BaseException as exc:
            # Whatever the handler raised is its attempt's outcome: SystemExit and
            # KeyboardInterrupt too (sys.exit or an argparse error in a handler stopped the
            # node, and again on every node the task was leased to after).
            outcome = handler_outcome(exc)
        finally:
            self._handlers_running.pop((a.task_id, a.attempt), None)
        if outlived is not None and self.pool.handler_outlives(a.task_id, a.attempt):
            self._hold_slot_until_done(outlived)
        effects = self.pool.handler_ended(a.task_id, a.attempt, outcome, now_ms(), self.rng)
        run_s = time.monotonic() - started
        for effect in effects:
            if isinstance(effect, Finish):
                self.metrics.finished(a.type, priority, effect.end.status.value, run_s)
        self._slot_free.set()
        await self._write_end(a, effects)

    async def _write_end(self, a: Assignment, effects: list[WorkerEffect]) -> None:
        """Write a handler's end; if the store does not answer, again every END_RETRY_S while
        the attempt's lease can still hold."""
        deadline = time.monotonic() + self.config.lease_ms / 1000
        while True:
            try:
                await self._carry_out(effects)
                return
            except StoreUnavailable as exc:
                if self._stopping or time.monotonic() >= deadline:
                    log.warning(
                        "the end of %s attempt %d was not written (%s): it runs again once its "
                        "lease lapses",
                        a.task_id,
                        a.attempt,
                        exc,
                    )
                    return
            await asyncio.sleep(END_RETRY_S)

    def _hold_slot_until_done(self, running: concurrent.futures.Future[Any]) -> None:
        """The attempt ended but its thread runs on: its slot stays taken until it returns."""
        loop = asyncio.get_running_loop()
        log.warning("a sync handler outlived its attempt: its thread keeps a slot until it returns")

        def returned() -> None:
            self.pool.outlived_handler_returned()
            self._slot_free.set()
            self._wake.set()  # the leader sees the slot again at its next round

        running.add_done_callback(lambda _f: loop.call_soon_threadsafe(returned))

    async def _worker_ticks(self) -> None:
        beating: asyncio.Task[None] | None = None
        while not self._stopping:
            effects = self.pool.tick(now_ms())
            beats: list[WorkerEffect] = [e for e in effects if isinstance(e, Heartbeat)]
            with contextlib.suppress(StoreUnavailable):
                # Interrupts (a timeout, a lease run out) call no store: at once.
                await self._carry_out([e for e in effects if not isinstance(e, Heartbeat)])
            if beats and (beating is None or beating.done()):
                # Heartbeats in the background: a store that hangs (no answer for up to its
                # command timeout) must not hold up the ticks that stop handlers whose lease
                # ran out meanwhile. At most one batch in flight; a skipped one is the next
                # period's to send.
                beating = asyncio.create_task(self._heartbeats(beats))
                self._background_tasks.add(beating)
                beating.add_done_callback(self._background_tasks.discard)
            due = self.pool.next_due_ms()
            delay = 0.1 if due is None else min(0.1, max(0.001, (due - now_ms()) / 1000))
            await asyncio.sleep(delay)

    async def _heartbeats(self, beats: list[WorkerEffect]) -> None:
        try:
            await self._carry_out(beats)
        except StoreUnavailable:
            pass  # the lease check stops the handlers if no later beat lands in time
        except Exception:
            log.exception("heartbeat failed")

    async def _cancel_listener(self) -> None:
        """A client cancelled a task running here: interrupt it now, not at the next heartbeat."""
        while not self._stopping:
            try:
                async for task_id, attempt in self.store.cancels(self.node_id):
                    await self._carry_out(self.pool.cancelled(task_id, attempt))
            except asyncio.CancelledError:
                raise
            except Exception:
                await asyncio.sleep(0.5)

    async def _carry_out(self, effects: list[WorkerEffect]) -> None:
        await self._serve(worker_effects(self.pool, effects))

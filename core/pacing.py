"""How a node paces its loops, written once for both drivers (node/runtime.py and sim/node.py).

The drivers differ only in how they wait (asyncio against SimPy); when to wait, for how long,
what a free slot does next and which finishes ride the leader's drain are decided here, so the
simulation proves the pacing that ships. No I/O and no clock: times are arguments.
"""

from __future__ import annotations

import heapq
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from typing import Any, Generic, TypeVar

from core.worker import Finish

# The leader reads the node registry this often, and each node writes its entry this often.
REGISTRY_PERIOD_S = 0.5
# Upper bound on how long the leader loop sleeps with nothing to do: a lost pub/sub message
# (Redis pub/sub is fire-and-forget) costs at most this much latency, never a stuck task.
LEADER_IDLE_S = 0.05
# How often the leader removes finished tasks past their retention (bounded work per call).
SWEEP_PERIOD_S = 60.0
# How long a follower's blocking take waits before it re-checks for shutdown and leadership.
TAKE_WAIT_S = 1.0
# How often the leader's own take loop looks at its assignment list, where its own leases do
# not go (they come back from the apply script) but an earlier leader's may have.
TAKE_LIST_CHECK_S = 0.1
# How often the leader refreshes its own entry in its scheduler's node table (NodeSeen): it
# steps every round, and its own liveness needs no millisecond stamp.
OWN_SEEN_PERIOD_MS = 100
# At most this many of the node's own finishes ride one drain (one script call's worth).
LOCAL_FINISHES_PER_DRAIN_MAX = 1000
# A handler's end (finish, release) that the store did not take is sent again this often, for
# as long as the attempt's lease can still hold (lease_ms): dropped, the task would wait out
# its lease and run again. Sent twice, the second is refused (attempt-fenced): harmless.
END_RETRY_S = 0.2

# The leader forgets a node's registry entry (and its assignment list) once unseen this long,
# at its sweep: a node killed without unregistering would stay listed for good. Far beyond
# any lease, so whatever was assigned to it has long been taken back.
NODE_FORGET_MS = 10 * 60 * 1000

# A leader that has not reached the store for this long hands its leadership to a follower,
# which may reach it: Raft alone keeps a leader cut off from Redis in office for good, and
# nothing would be assigned until the link healed. Also the least time between two handovers
# by one node. Each handover that the store did not answer since (the store is down for
# everyone, say) doubles this node's wait, up to STORE_LOST_HANDOVER_MAX_MS: leadership then
# moves round ever slower instead of an election every 2 s for the whole outage.
STORE_LOST_HANDOVER_MS = 2000
STORE_LOST_HANDOVER_MAX_MS = 30_000


def leader_wait_s(timer_at_ms: int | None, now_ms: int) -> float:
    """How long the leader loop may sleep after a round that was not woken meanwhile: until
    the scheduler's next due time, and never longer than LEADER_IDLE_S."""
    if timer_at_ms is None:
        return LEADER_IDLE_S
    return max(0.0, min(LEADER_IDLE_S, (timer_at_ms - now_ms) / 1000))


def own_seen_due(last: tuple[int, int] | None, slots: int, now_ms: int) -> bool:
    """Whether the leader's own NodeSeen is due: ``last`` is (stamp_ms, slots) of the one it
    fed last. Due when its slots changed, or OWN_SEEN_PERIOD_MS after the last one."""
    return last is None or last[1] != slots or now_ms - last[0] >= OWN_SEEN_PERIOD_MS


class HandoverWatch:
    """Tells a leader loop when to hand leadership over: after it has led for
    :meth:`wait_ms` without one round that reached the store."""

    __slots__ = ("_fruitless", "_reached_ms")

    def __init__(self) -> None:
        # When this node, leading, last reached the store (or began to lead); None: not leading.
        self._reached_ms: int | None = None
        # Handovers since the store last answered this node.
        self._fruitless = 0

    def wait_ms(self) -> int:
        """How long this node leads without the store before it hands over."""
        return min(STORE_LOST_HANDOVER_MAX_MS, STORE_LOST_HANDOVER_MS << min(self._fruitless, 8))

    def store_answered(self) -> None:
        """The store answered this node (any request, leading or not): the next handover waits
        the shortest time again."""
        self._fruitless = 0

    def after_round(self, leads: bool, reached_store: bool, started_ms: int, now_ms: int) -> bool:
        """A leader round ran from ``started_ms`` to ``now_ms``; ``leads`` is what Raft said at
        its start. True: hand over now."""
        if not leads:
            self._reached_ms = None
            return False
        if reached_store:
            self._reached_ms = now_ms
            self._fruitless = 0
            return False
        if self._reached_ms is None:
            self._reached_ms = started_ms
        if now_ms - self._reached_ms < self.wait_ms():
            return False
        self._reached_ms = now_ms  # the next handover no sooner than one wait from now
        self._fruitless += 1
        return True


# Leader rounds whose requests may be in flight at once. They travel one ordered link to the
# store (one Redis connection; one simulated FIFO link), so the store applies them in the order
# they were sent and the scheduler is fed their answers in that order. One at a time, node and
# store work in turn: the store idles while the node starts what a round leased and hears those
# handlers end, and the node idles while the store applies the round that follows. With two,
# the store applies one round while the node carries out the other's answer.
LEADER_ROUNDS_IN_FLIGHT_MAX = 2


def start_round(
    in_flight: int, in_flight_max: int, woken: bool, steady: bool, own_ends_queued: bool
) -> bool:
    """Whether a leader loop starts a round now, ``in_flight`` rounds being on the wire.

    Alone, a round starts once the loop is woken (a submission's ring, a finish, the registry)
    or its timer ran out (the driver then passes ``woken``). Beside rounds in flight, only one
    that carries this node's own ended handlers, and only while the scheduler leads in the term
    Raft names (``steady``): their slots' leases go with it, which is the work worth
    overlapping. Anything else waits for the round in flight, whose end wakes the loop again;
    an election or a step down never runs beside another round."""
    if in_flight <= 0:
        return woken
    return in_flight < in_flight_max and steady and own_ends_queued


W = TypeVar("W")
# A finish waiting to ride a drain: its place in line (the order finishes were added), the
# finish, the driver's waiter.
Queued = tuple[int, Finish, W]
# A leader round's share of the finishes: told to the scheduler as OwnEnded, carried by the
# round's first drain, given back if the round ends before it.
Reservation = list[Queued[W]]


class LocalFinishes(Generic[W]):
    """The leader's own finishes, waiting to ride a drain of its leader rounds (finish, then
    drain, one round trip, so the drain sees them at once and no bell is rung). ``W`` is the
    driver's waiter (an asyncio future, a SimPy event), answered with the finish's result.

    A leader round takes its share at its start (:meth:`reserve`): the scheduler hears of them
    (leader_round's own_ends) and leases their slots in the same round trip, so the round's
    first drain must carry exactly those (:meth:`for_drain`); a round that ends before its
    drain gives them back with :meth:`unreserve`, to their place in line. Several rounds may
    hold reservations at once (LEADER_ROUNDS_IN_FLIGHT_MAX); what no round holds is the queue,
    which ``len``, ``bool`` and iteration show, oldest first.

    A finish is queued only while this node leads and its loops run; whatever is left when
    it stops leading (or stops) goes alone, as a follower's would."""

    __slots__ = ("_added", "_queue")

    def __init__(self) -> None:
        self._queue: list[Queued[W]] = []
        self._added = 0

    def __len__(self) -> int:
        return len(self._queue)

    def __bool__(self) -> bool:
        return bool(self._queue)

    def __iter__(self) -> Iterator[tuple[Finish, W]]:
        for _, finish, waiter in self._queue:
            yield finish, waiter

    @staticmethod
    def wanted(leading: bool, loops_stopped: bool) -> bool:
        """Whether a finish of this node should wait for its own leader's drain."""
        return leading and not loops_stopped

    @staticmethod
    def ends(reservation: Reservation[W]) -> tuple[tuple[str, int], ...]:
        """A reservation as the scheduler hears of it: (task id, attempt) of each."""
        return tuple((f.task_id, f.attempt) for _, f, _ in reservation)

    def add(self, finish: Finish, waiter: W) -> None:
        self._queue.append((self._added, finish, waiter))
        self._added += 1

    def _take(self, count: int) -> Reservation[W]:
        queue = self._queue
        if len(queue) <= count:
            self._queue = []
            return queue
        batch = queue[:count]
        del queue[:count]
        return batch

    def reserve(
        self, leading: bool, in_flight: int = 0, in_flight_max: int = 1
    ) -> tuple[Reservation[W], bool]:
        """At a leader round's start, while leading: the round's share, oldest first, and
        whether finishes are left (the driver then wakes its leader loop again at once).

        A drain's worth, but half of what waits when no round is in flight and another may go
        beside this one: the second half goes at once in that second round, so the store
        applies one while the node runs what the other leased (handlers that end together
        would otherwise keep the rounds in lockstep, one at a time)."""
        queue = self._queue
        if not leading or not queue:
            return [], False
        count = min(len(queue), LOCAL_FINISHES_PER_DRAIN_MAX)
        if in_flight == 0 and in_flight_max > 1 and count > 1:
            count = (count + 1) // 2
        batch = self._take(count)
        return batch, bool(self._queue)

    def unreserve(self, reservation: Reservation[W]) -> None:
        """The round ended without sending its reservation: back to their place in line
        (ahead of anything added after them, whichever round gives back first)."""
        if reservation:
            self._queue = list(heapq.merge(reservation, self._queue, key=_place))
            reservation.clear()

    def for_drain(
        self, reservation: Reservation[W] | None = None
    ) -> tuple[list[tuple[Finish, W]], bool]:
        """The finishes for the drain about to go, oldest first: the round's reservation, if
        it still holds one (it is emptied: the drain carries them), else a drain's worth of
        the queue; and whether more are queued (the driver then wakes its leader loop again
        at once)."""
        if reservation:
            batch = [(f, w) for _, f, w in reservation]
            reservation.clear()
            return batch, False  # reserve() already told of the rest
        batch = [(f, w) for _, f, w in self._take(LOCAL_FINISHES_PER_DRAIN_MAX)]
        return batch, bool(self._queue)

    def to_flush(self, leading: bool) -> list[tuple[Finish, W]]:
        """After a round: the queued finishes no drain of ours will carry (not leading now),
        to go alone. Empty while leading."""
        if leading or not self._queue:
            return []
        return self.take_all()

    def take_all(self) -> list[tuple[Finish, W]]:
        """Every queued finish (not those rounds in flight hold)."""
        batch, self._queue = self._queue, []
        return [(f, w) for _, f, w in batch]


def _place(queued: Queued[Any]) -> int:
    return queued[0]


class TakeStep(Enum):
    WAIT_SLOT = "wait-slot"  # no free slot: wait until one frees
    START_DIRECT = "start-direct"  # start the direct leases (from our own leader's apply)
    SLEEP = "sleep"  # the leader's list is not due for a look yet
    TAKE = "take"  # take up to `count` from the assignment list


@dataclass(frozen=True, slots=True)
class TakePlan:
    step: TakeStep
    count: int = 0
    sleep_s: float = 0.0
    # TAKE only: if the list is empty, wait on it for one (a follower's BLPOP, TAKE_WAIT_S),
    # one slot reserved, so direct leases can still start elsewhere should this node be
    # elected meanwhile.
    block_one: bool = False


class TakePolicy:
    """What a node's take loop does next: pull only when a slot is free (no prefetch); first
    what its own leader leased to it directly; then its assignment list, every free slot in
    one request. A follower then waits on the list; the leader looks at it only every
    TAKE_LIST_CHECK_S, for entries an earlier leader queued there."""

    __slots__ = ("list_check_at_s",)

    def __init__(self) -> None:
        self.list_check_at_s = 0.0

    def next(self, free: int, direct_waiting: bool, leading: bool, now_s: float) -> TakePlan:
        if free <= 0:
            return _WAIT_SLOT
        if direct_waiting:
            return _START_DIRECT
        if leading:
            wait_s = self.list_check_at_s - now_s
            if wait_s > 0:
                return TakePlan(TakeStep.SLEEP, sleep_s=wait_s)
            self.list_check_at_s = now_s + TAKE_LIST_CHECK_S
        return TakePlan(TakeStep.TAKE, count=free, block_one=not leading)


_WAIT_SLOT = TakePlan(TakeStep.WAIT_SLOT)
_START_DIRECT = TakePlan(TakeStep.START_DIRECT)

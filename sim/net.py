"""The simulated network between the nodes and the store.

Each directed link has a latency (base + uniform jitter) and delivers in FIFO order, as a TCP
connection does: a message never overtakes an earlier one on its link. A message is lost when its
link is cut (a partition, symmetric or one-way) when it is sent or when it would arrive, or, with
probability ``drop_p``, as a connection reset. A request that gets no answer fails after the
client's timeout; the store may well have applied it (only the answer was lost), which is exactly
the ambiguity a real client lives with.

Partitions are added and healed one at a time. The Raft links between nodes are not carried here
(sim/raftnet.py moves pysyncobj's messages); the world forwards every partition to both.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from heapq import heappush
from typing import Any

import simpy
from simpy.events import NORMAL

from sim.config import NetConfig
from sim.simenv import Timer, fire

STORE = "store"
Answer = Callable[[Any], None]


class Unavailable:
    """The answer a caller gets when its request timed out or its connection was reset."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "UNAVAILABLE"


UNAVAILABLE = Unavailable()


@dataclass(frozen=True, slots=True)
class Partition:
    """Messages from any member of ``side_a`` to any of ``side_b`` are lost (and back, unless
    ``one_way``)."""

    side_a: frozenset[str]
    side_b: frozenset[str]
    one_way: bool = False

    def links(self) -> Iterable[tuple[str, str]]:
        for a in sorted(self.side_a):
            for b in sorted(self.side_b):
                yield a, b
                if not self.one_way:
                    yield b, a

    def describe(self) -> str:
        arrow = "->" if self.one_way else "<->"
        return f"{{{','.join(sorted(self.side_a))}}}{arrow}{{{','.join(sorted(self.side_b))}}}"


class Network:
    def __init__(self, env: simpy.Environment, config: NetConfig, rng: random.Random) -> None:
        self.env = env
        self.config = config
        self.rng = rng
        self.delay_s = config.delay_s
        self.jitter_s = config.jitter_s
        self.drop_p = config.drop_p
        self.partitions: list[Partition] = []
        self._cut: set[tuple[str, str]] = set()
        self._last_arrival: dict[tuple[str, str], float] = {}
        self._random = rng.random
        self.sent = 0
        self.lost = 0

    # ------------------------------------------------------------------ faults
    def add_partition(self, partition: Partition) -> None:
        self.partitions.append(partition)
        self._recompute()

    def heal(self, partition: Partition | None = None) -> Partition | None:
        """Heal one partition (the oldest if none is named). Returns the one healed."""
        if not self.partitions:
            return None
        if partition is None:
            partition = self.partitions[0]
        self.partitions.remove(partition)
        self._recompute()
        return partition

    def _recompute(self) -> None:
        self._cut = {link for p in self.partitions for link in p.links()}

    def is_cut(self, src: str, dst: str) -> bool:
        return (src, dst) in self._cut

    def set_quality(self, delay_s: float, jitter_s: float, drop_p: float) -> None:
        self.delay_s, self.jitter_s, self.drop_p = delay_s, jitter_s, drop_p

    # ------------------------------------------------------------------ delivery
    def later(self, at_s: float, fn: Callable[[], None]) -> None:
        """Call ``fn`` at simulated time ``at_s`` (now, if that has passed)."""
        env = self.env
        now = env._now
        delay = at_s - now
        # What Timeout(env, delay) would schedule, without the Timeout.
        heappush(env._queue, (now + (delay if delay > 0 else 0), NORMAL, next(env._eid), Timer(fn)))

    def send(
        self, src: str, dst: str, deliver: Callable[[], None], lost: Callable[[], None]
    ) -> None:
        """Carry one message; call ``deliver`` on arrival or ``lost`` when it is lost (at the
        moment the loss happens: the receiver never knows)."""
        # The hot path of the whole simulation (a dozen messages per task): no helper calls.
        self.sent += 1
        link = (src, dst)
        if link in self._cut or (self.drop_p and self._random() < self.drop_p):
            self.lost += 1
            lost()
            return
        env = self.env
        now = env._now
        at = now + self.delay_s + self._random() * self.jitter_s
        last = self._last_arrival.get(link, 0.0)
        if at < last:
            at = last  # FIFO per link
        self._last_arrival[link] = at
        # The message is its own event: what Timeout(env, at - now) would schedule, with the
        # message as its callback, but one object instead of three.
        message = _Message(self, link, deliver, lost)
        heappush(env._queue, (now + (at - now), NORMAL, next(env._eid), message))


def _fire_message(event: _Message) -> None:
    net = event.net
    if event.link in net._cut:
        net.lost += 1
        event.lost()
    else:
        event.deliver()


class _Message:
    """One message in flight, as its own SimPy event: delivered on arrival unless its link was
    cut meanwhile."""

    __slots__ = ("_ok", "callbacks", "deliver", "link", "lost", "net")

    def __init__(
        self,
        net: Network,
        link: tuple[str, str],
        deliver: Callable[[], None],
        lost: Callable[[], None],
    ) -> None:
        self._ok = True
        self.callbacks = [_fire_message]
        self.net = net
        self.link = link
        self.deliver = deliver
        self.lost = lost


class Caller:
    """Request/answer over the network, with the client's timeout: one pending event per call."""

    def __init__(
        self, env: simpy.Environment, net: Network, serve: Callable[[str, Any, Answer], None]
    ) -> None:
        self.env = env
        self.net = net
        self.serve = serve
        self.timeout_s = net.config.request_timeout_s

    def call(self, node: str, request: Any, timeout_s: float = 0.0) -> simpy.Event:
        """Send ``request`` from ``node`` to the store. ``serve(node, request, answer)`` runs
        at the store on arrival and must eventually call ``answer(value)`` once (or never, if
        the store dies). The returned event succeeds with the value, or with UNAVAILABLE after
        the timeout."""
        call = _Request(self, node, request, timeout_s or self.timeout_s)
        self.net.send(node, STORE, call.arrive, call.lost)
        return call.reply


class _Request:
    """One request's round trip. The store answers through ``answer``; a loss anywhere makes
    the caller wait out its timeout (it cannot tell a lost request from a lost answer)."""

    __slots__ = ("budget", "caller", "node", "reply", "request", "sent_at", "value")

    def __init__(self, caller: Caller, node: str, request: Any, budget: float) -> None:
        env = caller.env
        self.caller = caller
        self.node = node
        self.request = request
        self.budget = budget
        self.sent_at = env._now
        self.reply = simpy.Event(env)
        self.value: Any = None

    def arrive(self) -> None:
        self.caller.serve(self.node, self.request, self.answer)

    def answer(self, value: Any) -> None:
        net = self.caller.net
        if value is UNAVAILABLE:
            # The store reset the connection (it is down): the caller learns at once.
            net.send(STORE, self.node, self.give_up, self.lost)
            return
        self.value = value
        net.send(STORE, self.node, self.deliver, self.lost)

    # Both run from the event loop (a message arriving, the timeout's timer), so the caller
    # resumes at once rather than through another queued event.
    def deliver(self) -> None:
        if not self.reply.triggered:
            fire(self.reply, self.value)

    def give_up(self) -> None:
        if not self.reply.triggered:
            fire(self.reply, UNAVAILABLE)

    def lost(self) -> None:
        # Nobody tells the caller: it notices when its timeout fires.
        self.caller.net.later(self.sent_at + self.budget, self.give_up)

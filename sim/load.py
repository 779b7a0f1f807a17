"""The load: a seeded Poisson arrival of tasks with mixed priorities, run times, failures,
dependencies and delays, and the clients that submit them.

A client sends each task to a live node and counts it acknowledged only when the node answers
that the store applied it. A client that gets an error (the node lost the store) or no answer
(the node crashed or froze) resubmits to another node with the same idempotency key, so a
submission applied twice is still one task. What a handler does (how long it runs, whether it
fails) is decided by the task's spec and the number of times it has run, so a re-run after a lost
lease behaves like the first run would have.
"""

from __future__ import annotations

import math
import random
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import simpy

from core.priority import Priority
from core.store_model import NewTask
from sim.checker import TaskFacts
from sim.config import LoadConfig, NetConfig
from sim.simenv import call_later

if TYPE_CHECKING:
    from sim.node import SimNode

# Task types (LoadConfig.typed_every): every node runs TYPE_A, not every node TYPE_B.
TYPE_A = "sim"
TYPE_B = "sim-b"
# Dependencies are drawn among the last this many acknowledged tasks.
RECENT_ACKED_MAX = 64


@dataclass(frozen=True, slots=True)
class TaskSpec:
    task_id: str
    priority: Priority
    run_s: float
    # The first `fail_runs` runs raise; None: every run raises (the task ends dead).
    fail_runs: int | None
    # The first run hangs past the task's timeout (the worker interrupts it).
    hangs: bool
    new: NewTask
    # A plain function run in a thread: an interrupt settles its attempt at once, but the
    # thread runs on to its end, holding its slot (WorkerPool.held). Else a coroutine, which
    # stops when interrupted.
    sync: bool = False


@dataclass(slots=True)
class Submission:
    spec: TaskSpec
    attempts: int = 0
    # Bumped on every (re)send: an answer for an older send is one the client stopped waiting for.
    token: int = 0
    done: bool = False
    node: str = ""


@dataclass(slots=True)
class ClientOp:
    """A client's cancel (DELETE /v1/tasks/{id}) or retry by hand (POST .../retry). Both are
    idempotent at the store, so a client that heard nothing sends it again elsewhere."""

    kind: str  # "cancel" | "retry"
    task_id: str
    attempts: int = 0
    token: int = 0
    done: bool = False


@dataclass
class LoadStats:
    submitted: int = 0
    acked: int = 0
    retried: int = 0
    gave_up: int = 0
    refused: int = 0
    acked_at_s: list[float] = field(default_factory=list)


class Clients:
    def __init__(
        self,
        env: simpy.Environment,
        load: LoadConfig,
        net: NetConfig,
        rng: random.Random,
        nodes: list[SimNode],
        on_ack: Callable[[str], None],
        facts: dict[str, TaskFacts],
        specs: dict[str, TaskSpec],
        ops_rng: random.Random | None = None,
    ) -> None:
        self.env = env
        self.load = load
        self.net = net
        self.rng = rng
        self.nodes = nodes
        self.on_ack = on_ack
        self.facts = facts
        self.specs = specs
        self.stats = LoadStats()
        self.recent_acked: deque[str] = deque(maxlen=RECENT_ACKED_MAX)
        self._count = 0
        # Cancels and retries by hand draw from a stream of their own: the arrivals' stream
        # stays as it was without them.
        self.ops_rng = ops_rng or random.Random(0)
        self._stop_s = 0.0
        self._retried_by_hand: set[str] = set()

    # ------------------------------------------------------------------ arrivals
    def start(self, start_s: float, stop_s: float) -> None:
        """Arrivals from ``start_s`` until ``stop_s``: a chain of timers (one event per task,
        as a process waiting on timeouts would take, without the process)."""
        self._stop_s = stop_s
        rate = self.load.rate_per_s
        if rate <= 0:
            return
        env = self.env
        expovariate = self.rng.expovariate

        def arrive() -> None:
            if env._now >= stop_s:
                return
            self.submit(self.make_spec())
            call_later(env, expovariate(rate), arrive)

        call_later(env, start_s, lambda: call_later(env, expovariate(rate), arrive))

    def make_spec(self) -> TaskSpec:
        cfg = self.load
        rng = self.rng
        self._count += 1
        task_id = f"t{self._count:06d}"
        roll = rng.random()
        priority = (
            Priority.HIGH
            if roll < cfg.share_high
            else Priority.LOW
            if roll < cfg.share_high + cfg.share_low
            else Priority.MEDIUM
        )
        run_s = cfg.run_median_s * math.exp(rng.gauss(0.0, cfg.run_sigma))
        if rng.random() < cfg.slow_p:
            run_s = cfg.slow_s * (0.5 + rng.random())
        hangs = rng.random() < cfg.hang_p
        fail_runs: int | None = 0
        roll = rng.random()
        if roll < cfg.doomed_p:
            fail_runs = None
        elif roll < cfg.doomed_p + cfg.flaky_p:
            fail_runs = rng.randint(1, cfg.max_retries)
        depends_on: tuple[str, ...] = ()
        if self.recent_acked and rng.random() < cfg.depends_p:
            count = min(len(self.recent_acked), rng.randint(1, 2))
            depends_on = tuple(sorted(rng.sample(list(self.recent_acked), count)))
        run_at_ms = 0
        if rng.random() < cfg.delay_p:
            # Absolute time in the client's clock (true time: clients are not skewed).
            run_at_ms = int((self.env.now + rng.uniform(0.05, cfg.delay_max_s)) * 1000)
        new = NewTask(
            id=task_id,
            type=TYPE_B if cfg.typed_every and self._count % cfg.typed_every == 0 else TYPE_A,
            priority=priority,
            max_retries=cfg.max_retries,
            backoff_base_ms=cfg.backoff_base_ms,
            backoff_cap_ms=cfg.backoff_cap_ms,
            timeout_ms=int(cfg.timeout_s * 1000),
            run_at_ms=run_at_ms,
            depends_on=depends_on,
            idempotency_key=task_id,
        )
        # Every other task (no draw from the rng: the seeds' streams stay as they were).
        spec = TaskSpec(task_id, priority, run_s, fail_runs, hangs, new, self._count % 2 == 0)
        self.specs[task_id] = spec
        self.facts[task_id] = TaskFacts(int(priority), cfg.max_retries, depends_on, new.type)
        return spec

    # ------------------------------------------------------------------ submitting
    def submit(self, spec: TaskSpec) -> None:
        self.stats.submitted += 1
        self._send(Submission(spec))

    def _send(self, sub: Submission) -> None:
        live = [node for node in self.nodes if node.up]
        if not live:
            self._retry_later(sub)
            return
        node = live[self.rng.randrange(len(live))] if len(live) > 1 else live[0]
        sub.attempts += 1
        sub.token += 1
        sub.node = node.id
        # The arrival time is the time the request reaches the node: a constant client->node
        # hop would only shift the Poisson process, and costs an event per task.
        node.accept(sub, sub.token)

    def acked(self, sub: Submission, token: int) -> None:
        if sub.done or token != sub.token:
            return  # the client stopped waiting for this send
        sub.done = True
        self.stats.acked += 1
        self.stats.acked_at_s.append(self.env.now)
        self.recent_acked.append(sub.spec.task_id)
        self.on_ack(sub.spec.task_id)
        cfg = self.load
        if self.ops_rng.random() < cfg.cancel_p:
            delay = self.ops_rng.expovariate(1.0 / cfg.cancel_after_s)
            self._op_later(ClientOp("cancel", sub.spec.task_id), delay)

    def failed(self, sub: Submission, token: int) -> None:
        """The node answered an error, or the connection broke: try again elsewhere."""
        if sub.done or token != sub.token:
            return
        self._retry_later(sub)

    def refused(self, sub: Submission, token: int) -> None:
        """The store refused the task itself (e.g. a dependency a store restart lost)."""
        if sub.done or token != sub.token:
            return
        sub.done = True
        self.stats.refused += 1

    def timeout_after(self, sub: Submission, token: int) -> None:
        """No answer from a frozen node: give up on this send after the client's timeout."""

        def fire(_e: object) -> None:
            self.failed(sub, token)

        self.env.timeout(self.net.client_timeout_s).callbacks.append(fire)

    def _retry_later(self, sub: Submission) -> None:
        if sub.attempts >= self.net.client_attempts_max:
            sub.done = True
            self.stats.gave_up += 1
            return
        self.stats.retried += 1
        sub.token += 1  # whatever answer the old send gets, the client no longer listens
        delay = 0.1 + 0.2 * self.rng.random()
        self.env.timeout(delay).callbacks.append(lambda _e: self._send(sub))

    # ------------------------------------------------------------------ cancels, retries by hand
    def ended(self, task_id: str, cancelled: bool) -> None:
        """The store ended a task cancelled or dead (a client polling it would see so): retry
        it by hand, once per task, with probability retry_by_hand_p."""
        cfg = self.load
        if self.ops_rng.random() >= cfg.retry_by_hand_p or task_id in self._retried_by_hand:
            return
        self._retried_by_hand.add(task_id)
        self._op_later(ClientOp("retry", task_id), self.ops_rng.uniform(0.05, cfg.retry_after_s))

    def _op_later(self, op: ClientOp, delay_s: float) -> None:
        if self.env.now + delay_s >= self._stop_s:
            return  # only while the load runs: the liveness phase judges a quiet cluster
        self.env.timeout(delay_s).callbacks.append(lambda _e: self._send_op(op))

    def _send_op(self, op: ClientOp) -> None:
        if op.done:
            return
        if op.attempts >= self.net.client_attempts_max:
            op.done = True  # the client gives up (the checker counts what the store applied)
            return
        op.attempts += 1
        op.token += 1
        token = op.token
        live = [node for node in self.nodes if node.up]
        if live:
            node = live[self.ops_rng.randrange(len(live))] if len(live) > 1 else live[0]
            node.client_op(op, token)

        def no_answer(_e: object) -> None:
            if not op.done and op.token == token:
                self._send_op(op)  # a crashed or frozen node, or no node up: elsewhere

        self.env.timeout(self.net.client_timeout_s).callbacks.append(no_answer)

    def op_answered(self, op: ClientOp, token: int, ok: bool) -> None:
        """The node answered (ok) or failed (the store unreachable: send again elsewhere)."""
        if op.done or token != op.token:
            return
        if ok:
            op.done = True
        else:
            op.token += 1
            delay = 0.1 + 0.2 * self.ops_rng.random()
            self.env.timeout(delay).callbacks.append(lambda _e: self._send_op(op))

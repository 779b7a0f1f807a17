"""Real node processes for integration and cluster tests: start, await readiness, kill by PID."""

from __future__ import annotations

import json
import os
import pickle
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.error
import urllib.request
import zlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def free_ports(n: int) -> list[int]:
    """n distinct free ports (held open together so the OS cannot hand one out twice)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def wait_for(
    condition: Callable[[], Any], timeout_s: float, what: str, poll_s: float = 0.02
) -> Any:
    """The first truthy value of condition() before the deadline, else AssertionError."""
    deadline = time.monotonic() + timeout_s
    last_exc: Exception | None = None
    while True:
        try:
            value = condition()
            if value:
                return value
        except Exception as exc:
            last_exc = exc
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout_s} s (last error: {last_exc})")
        time.sleep(poll_s)


def http(method: str, url: str, body: Any = None, timeout_s: float = 5.0) -> tuple[int, Any]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        req.add_header("Content-Type", "application/json")
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(req, timeout=timeout_s) as resp:
            raw = resp.read()
            if "json" not in resp.headers.get("Content-Type", ""):
                return resp.status, raw.decode(errors="replace")
            return resp.status, json.loads(raw) if raw else None
    except urllib.error.HTTPError as err:
        raw = err.read()
        try:
            return err.code, json.loads(raw)
        except ValueError:
            return err.code, raw.decode(errors="replace")


class NodeProc:
    """One `python -m node node ...` process, its log in a file."""

    def __init__(
        self,
        workdir: Path,
        name: str,
        http_port: int,
        redis_url: str,
        *,
        raft_port: int = 0,
        peers: list[str] | None = None,
        workers: int = 5,
        extra: list[str] | None = None,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.name = name
        self.http_port = http_port
        self.raft_port = raft_port
        self.url = f"http://127.0.0.1:{http_port}"
        self.args = [
            sys.executable,
            "-m",
            "node",
            "node",
            "--node-id",
            name,
            "--http-port",
            str(http_port),
            "--redis-url",
            redis_url,
            "--data-dir",
            str(workdir / name),
            "--workers",
            str(workers),
            "--tasks",
            "tests.probe_tasks",
        ]
        if raft_port:
            self.args += ["--raft-port", str(raft_port), "--peers", ",".join(peers or [])]
        self.args += extra or []
        self.env = {**os.environ, "PYTHONPATH": str(ROOT), **(env or {})}
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / f"{name}.log"

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid

    def start(self) -> NodeProc:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        log = open(self.log_path, "ab")  # noqa: SIM115 - handed to the child
        self.proc = subprocess.Popen(
            self.args, cwd=str(self.workdir), env=self.env, stdout=log, stderr=log
        )
        log.close()
        return self

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def get(self, path: str, timeout_s: float = 5.0) -> tuple[int, Any]:
        return http("GET", self.url + path, timeout_s=timeout_s)

    def post(self, path: str, body: Any, timeout_s: float = 5.0) -> tuple[int, Any]:
        return http("POST", self.url + path, body, timeout_s=timeout_s)

    def wait_ready(self, timeout_s: float = 30.0) -> None:
        def ready() -> bool:
            if not self.alive():
                raise AssertionError(f"{self.name} exited: {self.tail()}")
            status, _ = self.get("/readyz", timeout_s=1.0)
            return status == 200

        wait_for(ready, timeout_s, f"{self.name} ready")

    def signal(self, sig: int) -> None:
        if self.alive():
            os.kill(self.pid, sig)

    def kill(self) -> None:
        """SIGKILL, and reap it."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(timeout=10)

    def stop(self, timeout_s: float = 20.0) -> int | None:
        """SIGTERM (graceful), SIGKILL past the timeout. Answers the exit code."""
        if self.proc is None:
            return None
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
            self.proc.terminate()
            try:
                self.proc.wait(timeout=timeout_s)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(timeout=10)
        return self.proc.returncode

    def tail(self, lines: int = 40) -> str:
        try:
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        except FileNotFoundError:
            return "(no log)"


def terminal(status: str) -> bool:
    return status in ("succeeded", "dead", "cancelled")


class MkdirOnUnpickle:
    """Unpickled, it makes a directory: what any frame sent to an open Raft port could do."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self) -> tuple[Any, ...]:
        return (os.mkdir, (self.path,))


def send_raft_frame(addr: str, payload: object) -> socket.socket:
    """A pysyncobj frame (4-byte length, zlib-compressed pickle), as a stranger would send it."""
    host, port = addr.rsplit(":", 1)
    data = zlib.compress(pickle.dumps(payload), 3)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.sendall(struct.pack("i", len(data)) + data)
    return sock

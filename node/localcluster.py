"""`dsched cluster --nodes 3`: a local cluster of node processes sharing one embedded Redis."""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import time

from node.redis_server import EmbeddedRedis

# How long a node gets to stop on SIGTERM (its own grace plus a margin) before SIGKILL.
NODE_STOP_S = 20.0
STARTUP_S = 30.0


def port_free(host: str, port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((host, port))
        except OSError:
            return False
    return True


def node_commands(
    nodes: int, base_port: int, redis_url: str, data_dir: str, workers: int, tasks: list[str]
) -> list[list[str]]:
    """The command line of each member: HTTP on base+2i, Raft on base+2i+1, all other Raft
    ports as peers (8080/8081, 8082/8083, 8084/8085 by default)."""
    raft = [f"127.0.0.1:{base_port + 2 * i + 1}" for i in range(nodes)]
    commands = []
    for i in range(nodes):
        cmd = [
            sys.executable,
            "-m",
            "node",
            "node",
            "--node-id",
            f"node{i + 1}",
            "--http-port",
            str(base_port + 2 * i),
            "--raft-port",
            str(base_port + 2 * i + 1),
            "--peers",
            ",".join(p for j, p in enumerate(raft) if j != i),
            "--redis-url",
            redis_url,
            "--data-dir",
            os.path.join(data_dir, f"node{i + 1}"),
            "--workers",
            str(workers),
        ]
        for module in tasks:
            cmd += ["--tasks", module]
        commands.append(cmd)
    return commands


def run_local_cluster(args: argparse.Namespace) -> int:
    nodes: int = args.nodes
    if nodes < 1 or nodes > 9:
        print("dsched cluster: --nodes must be between 1 and 9", file=sys.stderr)
        return 2
    base: int = args.base_port
    ports = [base + k for k in range(2 * nodes)] + [args.redis_port]
    taken = [p for p in ports if not port_free("127.0.0.1", p)]
    if taken:
        print(
            f"dsched cluster: port(s) {', '.join(map(str, taken))} on 127.0.0.1 already in use; "
            "pick others with --base-port / --redis-port",
            file=sys.stderr,
        )
        return 2
    os.makedirs(args.data_dir, exist_ok=True)
    redis = EmbeddedRedis(os.path.join(args.data_dir, "redis"), port=args.redis_port)
    redis.start()
    print(f"redis      {redis.url} (AOF in {os.path.join(args.data_dir, 'redis')})", flush=True)
    procs: list[subprocess.Popen[bytes]] = []
    stopping = False

    def stop(*_: object) -> None:
        nonlocal stopping
        stopping = True

    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGTERM, stop)
    try:
        for i, cmd in enumerate(
            node_commands(nodes, base, redis.url, args.data_dir, args.workers, args.tasks or [])
        ):
            procs.append(subprocess.Popen(cmd))
            http_port, raft_port = base + 2 * i, base + 2 * i + 1
            print(
                f"node{i + 1}      http://127.0.0.1:{http_port}  raft 127.0.0.1:{raft_port}"
                f"  pid {procs[-1].pid}",
                flush=True,
            )
        print("Ctrl-C stops the cluster.", flush=True)
        reported: set[int] = set()
        while not stopping:
            for i, p in enumerate(procs):
                if p.poll() is not None and i not in reported:
                    # Reported, not restarted: the survivors carry on, as in production.
                    reported.add(i)
                    print(f"node{i + 1} exited with {p.returncode}", file=sys.stderr, flush=True)
            if len(reported) == len(procs):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        deadline = time.monotonic() + NODE_STOP_S
        for p in procs:
            try:
                p.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                p.kill()
                p.wait(timeout=5)
        redis.stop()
    print("cluster stopped", flush=True)
    return 0

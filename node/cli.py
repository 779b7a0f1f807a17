"""The ``dsched`` command: client subcommands over HTTP, plus ``node`` and ``cluster``.

Client subcommands (``submit``, ``status``, ``tasks``, ``cancel``, ``retry``, ``wait``) talk to
``--url`` (env DSCHED_URL) through :class:`node.client.Client`, print a short readable answer
(``--json`` for the raw one), and exit 1 with a one-line message when the server refuses or
cannot be reached: an operator needs the reason, not a traceback.

``node`` and ``cluster`` are hooks into node/main.py, imported only when used, so that the client
commands start fast and do not load the server.
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO

from node.client import DEFAULT_URL, ApiError, Client
from node.config import (
    DEFAULT_HTTP_PORT,
    DEFAULT_REDIS_PORT,
    PORT_MAX,
    WORKERS_MAX,
    add_node_arguments,
    float_in,
    http_port,
    int_in,
    raft_address,
)

PRIORITIES = ("high", "medium", "low")
# Seconds a client flag may give (nan, inf and negatives are usage errors; the node checks its
# own limits, and names the field, past this).
SECONDS_FLAG_MAX = 1e9
seconds = float_in(0, SECONDS_FLAG_MAX)
STATUSES = ("pending", "queued", "running", "succeeded", "failed", "dead", "cancelled")
WAIT_TIMEOUT_S_DEFAULT = 60.0
TASKS_LIMIT_DEFAULT = 20
# `dsched cluster`: node i takes base+2i and base+2i+1, so the last node's ports bound the base.
CLUSTER_NODES_MAX = 9
CLIENT_COMMANDS = ("submit", "status", "tasks", "cancel", "retry", "wait", "members")


def _default_url() -> str:
    return os.environ.get("DSCHED_URL", DEFAULT_URL)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="dsched", description="dsched: a distributed scheduler of prioritized tasks"
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Shared by the client commands only, so that `dsched tasks --json` reads naturally.
    client_opts = argparse.ArgumentParser(add_help=False)
    client_opts.add_argument(
        "--url",
        default=_default_url(),
        help=f"a node's base URL (env DSCHED_URL; default {DEFAULT_URL})",
    )
    client_opts.add_argument("--json", action="store_true", help="print the raw JSON answer")

    p = sub.add_parser("submit", parents=[client_opts], help="submit a task")
    p.add_argument("type", help="a registered task type")
    p.add_argument("--payload", default="null", help="the payload as JSON (default null)")
    p.add_argument("--priority", choices=PRIORITIES, default="medium")
    start = p.add_mutually_exclusive_group()
    start.add_argument("--delay-s", type=seconds, help="start no earlier than this from now")
    start.add_argument("--run-at", help="start no earlier than this RFC 3339 time")
    p.add_argument("--max-retries", type=int)
    p.add_argument("--timeout-s", type=seconds, help="timeout of one attempt")
    p.add_argument("--depends-on", action="append", metavar="ID", help="repeatable")
    p.add_argument("--idempotency-key")
    p.add_argument("--wait", action="store_true", help="wait for the task to finish")
    p.add_argument("--wait-timeout-s", type=seconds, default=WAIT_TIMEOUT_S_DEFAULT)

    p = sub.add_parser("status", parents=[client_opts], help="show one task")
    p.add_argument("id")

    p = sub.add_parser("tasks", parents=[client_opts], help="list tasks, oldest first")
    p.add_argument("--status", choices=STATUSES)
    p.add_argument("--type")
    p.add_argument("--priority", choices=PRIORITIES)
    p.add_argument("--limit", type=int, default=TASKS_LIMIT_DEFAULT)
    p.add_argument("--cursor", help="next_cursor of the previous page")

    p = sub.add_parser("cancel", parents=[client_opts], help="cancel an unfinished task")
    p.add_argument("id")

    p = sub.add_parser("retry", parents=[client_opts], help="run a dead or cancelled task again")
    p.add_argument("id")

    p = sub.add_parser(
        "wait",
        parents=[client_opts],
        help="wait until a task is finished; exit 0 only if it succeeded",
    )
    p.add_argument("id")
    # --wait-timeout-s as on `dsched submit --wait`, where --timeout-s is an attempt's timeout.
    p.add_argument(
        "--wait-timeout-s",
        "--timeout-s",
        dest="timeout_s",
        type=seconds,
        default=WAIT_TIMEOUT_S_DEFAULT,
    )

    p = sub.add_parser(
        "members", parents=[client_opts], help="add or remove a Raft member of a running cluster"
    )
    p.add_argument("action", choices=["add", "remove"])
    p.add_argument(
        "raft",
        type=raft_address,
        help="the member's Raft address, host:port (its --raft-advertise)",
    )

    # ---- hooks into node/main.py (their implementation is the node's, not the client's)
    p = sub.add_parser("node", help="run a node (HTTP API, workers, Raft member)")
    add_node_arguments(p)

    p = sub.add_parser("cluster", help="run a local cluster of nodes sharing one Redis")
    p.add_argument("--nodes", type=int_in(1, CLUSTER_NODES_MAX), default=3)
    p.add_argument(
        "--base-port",
        type=http_port,
        default=DEFAULT_HTTP_PORT,
        help="node i serves HTTP on base+2i and Raft on base+2i+1",
    )
    p.add_argument("--redis-port", type=int_in(1, PORT_MAX), default=DEFAULT_REDIS_PORT)
    p.add_argument("--data-dir", default="./dsched-cluster")
    p.add_argument(
        "--workers", type=int_in(0, WORKERS_MAX), default=5, help="worker slots per node"
    )
    p.add_argument("--tasks", action="append", default=[], metavar="MODULE", help="repeatable")
    return parser


def run_node_command(args: argparse.Namespace) -> int:
    from node.main import run_node

    return run_node(args)


def run_cluster_command(args: argparse.Namespace) -> int:
    from node.main import run_cluster

    return run_cluster(args)


# ---------------------------------------------------------------------------- output


def _table(rows: list[list[str]], out: TextIO) -> None:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        out.write("  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip())
        out.write("\n")


def _short(value: Any, chars_max: int = 100) -> str:
    text = json.dumps(value)
    return text if len(text) <= chars_max else text[: chars_max - 3] + "..."


def _print_task(task: dict[str, Any], out: TextIO) -> None:
    fields = [
        ("id", task["id"]),
        ("type", task["type"]),
        ("status", task["status"]),
        ("priority", task["priority"]),
        ("attempt", f"{task['attempt']} (max retries {task['max_retries']})"),
        ("created", task.get("created_at")),
        ("run at", task.get("run_at")),
        ("started", task.get("started_at")),
        ("finished", task.get("finished_at")),
        ("node", task.get("node")),
        ("depends on", ", ".join(task.get("depends_on") or []) or None),
        ("payload", _short(task.get("payload"))),
    ]
    if task.get("result") is not None:
        fields.append(("result", _short(task["result"])))
    error = task.get("error")
    if error:
        fields.append(("error", f"{error.get('type', '')}: {error.get('message', '')}"))
    for name, value in fields:
        if value is not None:
            out.write(f"{name + ':':<12}{value}\n")


def _print_json(value: Any, out: TextIO) -> None:
    out.write(json.dumps(value, indent=2) + "\n")


def _print_short(task: dict[str, Any], raw: bool, out: TextIO) -> None:
    if raw:
        _print_json(task, out)
    else:
        out.write(f"{task['id']}  {task['status']}\n")


def _finished_code(task: dict[str, Any]) -> int:
    return 0 if task["status"] == "succeeded" else 1


# ---------------------------------------------------------------------------- commands


def _submit(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    try:
        payload = json.loads(args.payload)
    except ValueError as exc:
        raise UsageError(f"--payload is not JSON: {exc}") from None
    task = client.submit(
        args.type,
        payload,
        args.priority,
        delay_s=args.delay_s,
        run_at=args.run_at,
        max_retries=args.max_retries,
        timeout_s=args.timeout_s,
        depends_on=args.depends_on,
        idempotency_key=args.idempotency_key,
    )
    if not args.wait:
        if args.json:
            _print_json(task, out)
        else:
            out.write(f"{task['id']}  {task['status']}  {task['type']}  {task['priority']}\n")
        return 0
    task = client.wait(task["id"], args.wait_timeout_s)
    if args.json:
        _print_json(task, out)
    else:
        _print_task(task, out)
    return _finished_code(task)


def _status(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    task = client.get(args.id)
    if args.json:
        _print_json(task, out)
    else:
        _print_task(task, out)
    return 0


def _tasks(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    page = client.list(args.status, args.type, args.priority, args.cursor, args.limit)
    if args.json:
        _print_json(page, out)
        return 0
    tasks = page["tasks"]
    if not tasks:
        out.write("no tasks\n")
    else:
        rows = [["ID", "TYPE", "PRIORITY", "STATUS", "ATTEMPT", "CREATED"]]
        rows += [
            [
                t["id"],
                t["type"],
                t["priority"],
                t["status"],
                str(t["attempt"]),
                t.get("created_at") or "",
            ]
            for t in tasks
        ]
        _table(rows, out)
    if page.get("next_cursor"):
        out.write(f"more: {_next_page_command(args, page['next_cursor'])}\n")
    return 0


def _next_page_command(args: argparse.Namespace, cursor: str) -> str:
    """The `dsched tasks` command line of the next page: the same filters, limit and node."""
    argv = ["dsched", "tasks"]
    for flag, value in [
        ("--status", args.status),
        ("--type", args.type),
        ("--priority", args.priority),
    ]:
        if value is not None:
            argv += [flag, value]
    if args.limit != TASKS_LIMIT_DEFAULT:
        argv += ["--limit", str(args.limit)]
    if args.url != _default_url():
        argv += ["--url", args.url]
    argv += ["--cursor", cursor]
    return shlex.join(argv)


def _cancel(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    task = client.cancel(args.id)
    _print_short(task, args.json, out)
    return 0


def _retry(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    task = client.retry(args.id)
    _print_short(task, args.json, out)
    return 0


def _wait(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    task = client.wait(args.id, args.timeout_s)
    if args.json:
        _print_json(task, out)
    else:
        _print_task(task, out)
    return _finished_code(task)


def _members(client: Client, args: argparse.Namespace, out: TextIO) -> int:
    answer = client.change_member(args.action, args.raft)
    if args.json:
        _print_json(answer, out)
    else:
        done = "added" if args.action == "add" else "removed"
        out.write(f"{args.raft} {done}\n")
    return 0


class UsageError(Exception):
    """A client command's argument that argparse cannot check (e.g. --payload is not JSON)."""


COMMANDS: dict[str, Callable[[Client, argparse.Namespace, TextIO], int]] = {
    "submit": _submit,
    "status": _status,
    "tasks": _tasks,
    "cancel": _cancel,
    "retry": _retry,
    "wait": _wait,
    "members": _members,
}


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command == "node":
        return run_node_command(args)
    if args.command == "cluster":
        last_port = args.base_port + 2 * args.nodes - 1
        if last_port > PORT_MAX:
            # As argparse reports a bad value (exit 2); the bound depends on two flags.
            print(
                f"dsched cluster: error: argument --base-port: {args.nodes} nodes take ports "
                f"{args.base_port} to {last_port}; the base can be at most "
                f"{PORT_MAX + 1 - 2 * args.nodes}",
                file=sys.stderr,
            )
            return 2
        return run_cluster_command(args)
    try:
        client = Client(args.url)
    except ValueError as exc:
        print(f"dsched {args.command}: --url: {exc}", file=sys.stderr)
        return 2
    try:
        return COMMANDS[args.command](client, args, sys.stdout)
    except ApiError as exc:
        print(f"dsched {args.command}: {exc}", file=sys.stderr)
    except TimeoutError as exc:
        # Before OSError: TimeoutError is one, but here it means the wait ran out.
        print(f"dsched {args.command}: timed out: {exc}", file=sys.stderr)
    except OSError as exc:  # connection refused, DNS, reset: ConnectionError and its kin
        print(f"dsched {args.command}: {exc}", file=sys.stderr)
    except UsageError as exc:
        print(f"dsched {args.command}: {exc}", file=sys.stderr)
        return 2
    return 1


if __name__ == "__main__":
    sys.exit(main())

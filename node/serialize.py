"""TaskRecord -> the task's JSON in responses.

Field names mirror the submission (``timeout_s``, ``run_at``, ...) so that what a client sent reads
back the same way; times are RFC 3339 UTC strings with milliseconds, or null when unset.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import Any

import orjson

from core.priority import Priority
from core.store_model import TaskRecord
from core.task import Status
from node.rows import SubmitRow


@functools.lru_cache(maxsize=4096)
def rfc3339_ms(ms: int) -> str | None:
    """Epoch milliseconds -> ``2030-01-01T12:00:00.000Z``; 0 (the store's "unset") -> None."""
    if ms <= 0:
        return None
    stamp = datetime.fromtimestamp(ms / 1000, tz=UTC)
    return stamp.strftime("%Y-%m-%dT%H:%M:%S.") + f"{ms % 1000:03d}Z"


# Dict lookups, not Enum calls: a batch answer renders a thousand of these.
_LABELS: dict[int, str] = {p: p.label for p in Priority}


def _seconds(ms: int) -> float | int:
    # Whole seconds stay integers: 300 reads back as 300, not 300.0.
    return ms // 1000 if ms % 1000 == 0 else ms / 1000


def task_json(record: TaskRecord) -> dict[str, Any]:
    return {
        "id": record.id,
        "type": record.type,
        "status": record.status.value,
        "priority": _LABELS[record.priority],
        "payload": json.loads(record.payload_json),
        "seq": record.seq,
        "attempt": record.attempt,
        "failures": record.failures,
        "max_retries": record.max_retries,
        "timeout_s": _seconds(record.timeout_ms),
        "backoff_base_s": _seconds(record.backoff_base_ms),
        "backoff_cap_s": _seconds(record.backoff_cap_ms),
        "run_at": rfc3339_ms(record.run_at_ms),
        "depends_on": list(record.depends_on),
        "idempotency_key": record.idempotency_key or None,
        "created_at": rfc3339_ms(record.created_ms),
        "updated_at": rfc3339_ms(record.updated_ms),
        "started_at": rfc3339_ms(record.started_ms),
        "finished_at": rfc3339_ms(record.finished_ms),
        "node": record.lease_node or None,
        "lease_expiries": record.lease_expiries,
        "result": json.loads(record.result_json) if record.result_json else None,
        "error": dict(record.error) or None,
    }


def _json_text(value: str) -> str:
    return orjson.dumps(value).decode()


@functools.lru_cache(maxsize=256)
def _type_text(type_name: str) -> str:
    return _json_text(type_name)


@functools.lru_cache(maxsize=1024)
def _policy_text(max_retries: int, timeout_ms: int, base_ms: int, cap_ms: int) -> str:
    return (
        f'"max_retries":{max_retries},"timeout_s":{_number_text(_seconds(timeout_ms))},'
        f'"backoff_base_s":{_number_text(_seconds(base_ms))},'
        f'"backoff_cap_s":{_number_text(_seconds(cap_ms))}'
    )


def _number_text(value: float | int) -> str:
    return orjson.dumps(value).decode()


def _time_text(ms: int) -> str:
    stamp = rfc3339_ms(ms)
    return "null" if stamp is None else f'"{stamp}"'


@functools.lru_cache(maxsize=64)
def _created_tail(now_ms: int) -> str:
    stamp = _time_text(now_ms)
    return (
        f',"created_at":{stamp},"updated_at":{stamp},"started_at":null,'
        '"finished_at":null,"node":null,"lease_expiries":0,"result":null,"error":null}'
    )


class CreatedJson:
    """Renders a task the store just created from ``row`` (seq and status from its answer) as
    the JSON text task_json of its record would give, straight from the row: a batch answer
    renders a thousand of these, and a dict per task for orjson to walk cost more than the
    rest of the answer. What a batch shares (the created stamp, a type, a retry policy) is
    rendered once. tests/node/test_fast_paths.py checks it against task_json."""

    __slots__ = ("_tail",)

    def __init__(self, now_ms: int) -> None:
        self._tail = _created_tail(now_ms)

    def __call__(self, row: SubmitRow, seq: int, status: Status) -> str:
        task_id = row[0]
        # Ids are made by the server, hex; anything else is quoted properly all the same.
        id_text = f'"{task_id}"' if task_id.isascii() and task_id.isalnum() else _json_text(task_id)
        run_at = "null" if row[8] <= 0 else _time_text(row[8])
        key = "null" if not row[9] else _json_text(row[9])
        return (
            f'{{"id":{id_text},"type":{_type_text(row[1])},"status":"{status.value}",'
            f'"priority":"{_LABELS[row[3]]}","payload":{row[2]},"seq":{seq},'
            f'"attempt":0,"failures":0,{_policy_text(row[4], row[7], row[5], row[6])},'
            f'"run_at":{run_at},"depends_on":{row[10]},"idempotency_key":{key}{self._tail}'
        )


def dumps(data: Any) -> bytes:
    """JSON for a response body: orjson (compact, UTF-8), or the standard library for what
    orjson does not take (integers beyond 64 bits, non-string keys)."""
    try:
        return orjson.dumps(data)
    except TypeError:
        return json.dumps(data, ensure_ascii=False, separators=(",", ":")).encode("utf-8")


# The response schema of a task, published in /openapi.json; a test checks that its properties
# are exactly the keys task_json produces.
TIME_OR_NULL: dict[str, Any] = {"type": ["string", "null"], "format": "date-time"}
TASK_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": [
        "id",
        "type",
        "status",
        "priority",
        "payload",
        "seq",
        "attempt",
        "failures",
        "max_retries",
        "timeout_s",
        "backoff_base_s",
        "backoff_cap_s",
        "run_at",
        "depends_on",
        "idempotency_key",
        "created_at",
        "updated_at",
        "started_at",
        "finished_at",
        "node",
        "lease_expiries",
        "result",
        "error",
    ],
    "properties": {
        "id": {"type": "string", "description": "made by the server (uuid4 hex)"},
        "type": {"type": "string"},
        "status": {
            "type": "string",
            "enum": [
                "pending",
                "queued",
                "running",
                "succeeded",
                "failed",
                "dead",
                "cancelled",
            ],
            "description": "failed is an attempt waiting for its retry; succeeded, dead and "
            "cancelled are final",
        },
        "priority": {"type": "string", "enum": [p.label for p in Priority]},
        "payload": {"description": "the submitted JSON value"},
        "seq": {"type": "integer", "description": "submission order, cluster-wide"},
        "attempt": {"type": "integer", "description": "attempts started so far"},
        "failures": {"type": "integer", "description": "failed attempts since the last retry"},
        "max_retries": {"type": "integer"},
        "timeout_s": {"type": "number"},
        "backoff_base_s": {"type": "number"},
        "backoff_cap_s": {"type": "number"},
        "run_at": {**TIME_OR_NULL, "description": "earliest start (or next retry)"},
        "depends_on": {"type": "array", "items": {"type": "string"}},
        "idempotency_key": {"type": ["string", "null"]},
        "created_at": TIME_OR_NULL,
        "updated_at": TIME_OR_NULL,
        "started_at": {**TIME_OR_NULL, "description": "start of the latest attempt"},
        "finished_at": TIME_OR_NULL,
        "node": {"type": ["string", "null"], "description": "node running it, if running"},
        "lease_expiries": {"type": "integer"},
        "result": {"description": "the handler's return value, once succeeded"},
        "error": {
            "type": ["object", "null"],
            "properties": {
                "kind": {
                    "type": "string",
                    "description": "error (the handler raised: retried by the policy), "
                    "rejected (it raised TaskRejected: dead at once), timeout, "
                    "lease_expired, dependency, unknown_type, cancelled",
                },
                "type": {"type": "string"},
                "message": {"type": "string"},
                "traceback": {"type": "string"},
            },
        },
    },
}

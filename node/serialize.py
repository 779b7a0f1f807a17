"""TaskRecord -> the task's JSON in responses.

Field names mirror the submission (``timeout_s``, ``run_at``, ...) so that what a client sent reads
back the same way; times are RFC 3339 UTC strings with milliseconds, or null when unset.
"""

from __future__ import annotations

import functools
import json
from datetime import UTC, datetime
from typing import Any, Final

import orjson

from core.priority import Priority
from core.store_model import TaskRecord
from core.task import Status
from node.rows import NO_DEPS_JSON, SubmitRow


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


_NO_DEPS: Final = orjson.Fragment(NO_DEPS_JSON)


def created_json(row: SubmitRow, seq: int, status: Status, stamp: str | None) -> dict[str, Any]:
    """task_json of the record the store made from ``row`` (seq and status from its answer,
    created and updated at ``stamp``), built from the row: a batch answer renders a thousand of
    these. The payload and depends_on go out as the JSON text already made (orjson Fragments);
    tests/node/test_serialize.py checks that both paths render the same."""
    return {
        "id": row[0],
        "type": row[1],
        "status": status.value,
        "priority": _LABELS[row[3]],
        "payload": orjson.Fragment(row[2]),
        "seq": seq,
        "attempt": 0,
        "failures": 0,
        "max_retries": row[4],
        "timeout_s": _seconds(row[7]),
        "backoff_base_s": _seconds(row[5]),
        "backoff_cap_s": _seconds(row[6]),
        "run_at": rfc3339_ms(row[8]),
        "depends_on": _NO_DEPS if row[10] == NO_DEPS_JSON else orjson.Fragment(row[10]),
        "idempotency_key": row[9] or None,
        "created_at": stamp,
        "updated_at": stamp,
        "started_at": None,
        "finished_at": None,
        "node": None,
        "lease_expiries": 0,
        "result": None,
        "error": None,
    }


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
                "kind": {"type": "string"},
                "type": {"type": "string"},
                "message": {"type": "string"},
                "traceback": {"type": "string"},
            },
        },
    },
}

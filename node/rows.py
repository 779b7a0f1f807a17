"""A validated submission as the submit script reads it: one flat tuple per task.

The API's fast path builds these straight from request JSON (node/validation.py) and renders its
answer from them (node/serialize.py), so a batch of a thousand tasks makes no NewTask and no
TaskRecord objects; the store sends them to Redis as one JSON argument (node/lua/submit.lua).
``NewTask`` remains the store's typed interface: :func:`row_of` converts.
"""

from __future__ import annotations

import json
from typing import Final

from core.priority import Priority
from core.store_model import NewTask, TaskRecord, definition_fingerprint
from core.task import Status

# (id, type, payload_json, priority, max_retries, backoff_base_ms, backoff_cap_ms, timeout_ms,
#  run_at_ms, idempotency_key, depends_on_json, definition): the order submit.lua reads.
# definition is core.store_model.definition_fingerprint of the task when it has an idempotency
# key (what a resend with that key must match), else "".
SubmitRow = tuple[str, str, str, int, int, int, int, int, int, str, str, str]

ID: Final = 0
TYPE: Final = 1
PAYLOAD_JSON: Final = 2
PRIORITY: Final = 3
MAX_RETRIES: Final = 4
BACKOFF_BASE_MS: Final = 5
BACKOFF_CAP_MS: Final = 6
TIMEOUT_MS: Final = 7
RUN_AT_MS: Final = 8
IDEMPOTENCY_KEY: Final = 9
DEPENDS_ON_JSON: Final = 10
DEFINITION: Final = 11

NO_DEPS_JSON: Final = "[]"


def deps_json(depends_on: tuple[str, ...] | list[str]) -> str:
    """The stored form of depends_on: "[]" when empty (readers test for it), else a JSON array
    with raw UTF-8 (Lua's cjson then decodes any id byte for byte)."""
    if not depends_on:
        return NO_DEPS_JSON
    return json.dumps(list(depends_on), ensure_ascii=False)


_PRIORITIES: Final = {int(p): p for p in Priority}


def created_record(row: SubmitRow, seq: int, status: Status, now_ms: int) -> TaskRecord:
    """The record the store made from ``row`` (its seq and status from the store's answer)."""
    deps_text = row[DEPENDS_ON_JSON]
    return TaskRecord(
        row[ID],
        row[TYPE],
        row[PAYLOAD_JSON],
        _PRIORITIES[row[PRIORITY]],
        seq,
        status,
        row[MAX_RETRIES],
        row[BACKOFF_BASE_MS],
        row[BACKOFF_CAP_MS],
        row[TIMEOUT_MS],
        row[RUN_AT_MS],
        () if deps_text == NO_DEPS_JSON else tuple(json.loads(deps_text)),
        row[IDEMPOTENCY_KEY],
        now_ms,
        now_ms,
    )


def row_of(new: NewTask) -> SubmitRow:
    return (
        new.id,
        new.type,
        new.payload_json,
        int(new.priority),
        new.max_retries,
        new.backoff_base_ms,
        new.backoff_cap_ms,
        new.timeout_ms,
        new.run_at_ms,
        new.idempotency_key,
        deps_json(new.depends_on),
        definition_fingerprint(
            new.type,
            new.payload_json,
            int(new.priority),
            new.max_retries,
            new.backoff_base_ms,
            new.backoff_cap_ms,
            new.timeout_ms,
            new.depends_on,
        )
        if new.idempotency_key
        else "",
    )

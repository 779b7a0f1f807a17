"""The submission fast paths agree with the generic ones they stand in for.

* validation: validate_task_row / validate_batch_rows (precompiled checks, rows) against
  validate_task / validate_batch (the FieldSpec table, NewTasks): the same acceptance, the same
  values and ids, the same RequestError (field, status, code, message) on every drawn input;
* rendering: CreatedJson (from a row and the store's answer) against task_json of the record;
* ids: uuid4 hex, version 4, RFC 4122 variant, distinct.
"""

from __future__ import annotations

import itertools
import json
import uuid
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from core.limits import Limits
from core.task import Status
from node.api import new_id, uuid4_hex_many
from node.rows import created_record, row_of
from node.serialize import CreatedJson, task_json
from node.validation import (
    Intake,
    RequestError,
    validate_batch,
    validate_batch_rows,
    validate_task,
    validate_task_row,
)

NOW_MS = 1_700_000_000_000
LIMITS = Limits(payload_bytes_max=200, batch_tasks_max=5, depends_on_max=3)
TYPES = frozenset({"echo", "noop", "é", "x" * 200})


def intake(limits: Limits = LIMITS, bulk: bool = False) -> Intake:
    ids = itertools.count(1)

    def many(n: int) -> list[str]:
        return [f"id{next(ids)}" for _ in range(n)]

    return Intake(limits, TYPES, NOW_MS, lambda: f"id{next(ids)}", many if bulk else None)


def outcome(call: Any) -> Any:
    try:
        return ("ok", call())
    except RequestError as exc:
        return ("refused", exc.field, exc.status, exc.code, exc.message, exc.extra)


# Values near every boundary the checks draw, of every JSON kind.
numbers = st.one_of(
    st.integers(-5, 10**13),
    st.sampled_from([0, 1, 100, 101, 0.0, 1e-9, 0.5, 1.5, 604800, 604801, 31536000, 31536001]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.booleans(),
)
json_values = st.recursive(
    st.none() | st.booleans() | numbers | st.text(max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=10,
)
field_values = {
    "type": st.one_of(st.sampled_from([*sorted(TYPES), "", "missing", "ECHO"]), json_values),
    "payload": st.one_of(st.text(max_size=250), json_values, st.just("\ud800")),
    "priority": st.one_of(st.sampled_from(["high", "medium", "low", "HIGH", ""]), json_values),
    "max_retries": numbers,
    "timeout_s": numbers,
    "delay_s": numbers,
    "run_at": st.one_of(numbers, st.sampled_from(["2024-01-01T00:00:00Z", "soon"])),
    "depends_on": st.one_of(
        st.just([]), st.lists(st.sampled_from(["a", "b", "", 1]), max_size=4), json_values
    ),
    "idempotency_key": st.one_of(
        st.text(max_size=3), st.just("k" * 257), st.just("\udc00"), json_values
    ),
    "backoff_base_s": numbers,
    "backoff_cap_s": numbers,
    "prio": st.just("high"),
}
submissions = st.one_of(
    st.fixed_dictionaries(
        {"type": st.sampled_from(["echo", "noop"])},
        optional={name: v for name, v in field_values.items() if name != "type"},
    ),
    st.dictionaries(st.sampled_from(sorted(field_values)), json_values, max_size=4),
    json_values,
)


@settings(max_examples=600, deadline=None)
@given(body=submissions)
def test_one_submission_fast_and_generic_agree(body: Any) -> None:
    fast = outcome(lambda: validate_task_row(body, intake()))
    generic = outcome(lambda: row_of(validate_task(body, intake())))
    assert fast == generic


@settings(max_examples=300, deadline=None)
@given(items=st.lists(submissions, min_size=0, max_size=6), bulk=st.booleans())
def test_batches_fast_and_generic_agree(items: list[Any], bulk: bool) -> None:
    body = {"tasks": items}
    fast = outcome(lambda: validate_batch_rows(body, intake(bulk=bulk)))
    generic = outcome(lambda: [row_of(t) for t in validate_batch(body, intake())])
    assert fast == generic


@pytest.mark.parametrize("body", [None, [], {"tasks": 1}, {"tasks": [], "x": 1}, {}])
def test_batch_shape_errors_are_the_same(body: Any) -> None:
    fast = outcome(lambda: validate_batch_rows(body, intake()))
    generic = outcome(lambda: validate_batch(body, intake()))
    assert fast[0] == "refused" and fast == generic


@settings(max_examples=300, deadline=None)
@given(
    body=st.fixed_dictionaries(
        {"type": st.sampled_from(["echo", "noop"])},
        optional={
            "payload": json_values,
            "priority": st.sampled_from(["high", "medium", "low"]),
            "max_retries": st.integers(0, 100),
            "timeout_s": st.sampled_from([1, 0.001, 1.5, 300, 86400.25]),
            "delay_s": st.sampled_from([0, 0.5, 10]),
            "run_at": st.sampled_from([0, 1_700_000_000.5, "2023-11-14T22:13:20.123Z"]),
            "depends_on": st.lists(st.sampled_from(["a", "b", "é/x"]), max_size=2, unique=True),
            "idempotency_key": st.text(min_size=1, max_size=5),
            "backoff_base_s": st.sampled_from([0, 0.25, 2]),
        },
    ),
    seq=st.integers(1, 2**40),
    status=st.sampled_from([Status.QUEUED, Status.PENDING]),
)
def test_created_json_renders_what_task_json_does_to_the_record(
    body: dict[str, Any], seq: int, status: Status
) -> None:
    try:
        row = validate_task_row(body, intake(Limits()))
    except RequestError:
        return  # e.g. delay_s and run_at together
    record = created_record(row, seq, status, NOW_MS)
    fast = orjson.loads(CreatedJson(NOW_MS)(row, seq, status))
    assert fast == json.loads(json.dumps(task_json(record)))


def test_ids_are_uuid4_hex_and_distinct() -> None:
    ids = uuid4_hex_many(5000) + [new_id() for _ in range(3000)]
    assert len(set(ids)) == len(ids)
    for text in ids[:100] + ids[-100:]:
        parsed = uuid.UUID(hex=text)
        assert parsed.hex == text and parsed.version == 4 and parsed.variant == uuid.RFC_4122

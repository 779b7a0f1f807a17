"""node/validation.py: strict JSON -> NewTask, and its agreement with the published schema."""

from __future__ import annotations

import itertools
import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from core.limits import Limits
from core.priority import Priority
from core.store_model import NewTask
from node.openapi import build_openapi, submission_schema
from node.validation import (
    FIELDS_BY_NAME,
    TASK_FIELDS,
    Intake,
    RequestError,
    parse_json,
    validate_batch,
    validate_batch_rows,
    validate_task,
    validate_task_row,
)

NOW_MS = 1_700_000_000_000
LIMITS = Limits(payload_bytes_max=1000, batch_tasks_max=5, depends_on_max=3)
TYPES = frozenset({"echo", "noop"})


def intake(limits: Limits = LIMITS) -> Intake:
    ids = itertools.count(1)
    return Intake(limits, TYPES, NOW_MS, lambda: f"id{next(ids)}")


def refused(body: Any, *, batch: bool = False) -> RequestError:
    with pytest.raises(RequestError) as info:
        if batch:
            validate_batch(body, intake())
        else:
            validate_task(body, intake())
    return info.value


def test_minimal_submission_takes_the_store_defaults() -> None:
    new = validate_task({"type": "echo"}, intake())
    assert new == NewTask(id="id1", type="echo")


def test_every_field() -> None:
    new = validate_task(
        {
            "type": "noop",
            "payload": {"a": [1, 2.5, "é", None, True]},
            "priority": "high",
            "max_retries": 0,
            "timeout_s": 1.5,
            "delay_s": 2,
            "depends_on": ["x", "y"],
            "idempotency_key": "k-1",
            "backoff_base_s": 0.5,
            "backoff_cap_s": 10,
        },
        intake(),
    )
    assert new == NewTask(
        id="id1",
        type="noop",
        payload_json='{"a":[1,2.5,"é",null,true]}',
        priority=Priority.HIGH,
        max_retries=0,
        backoff_base_ms=500,
        backoff_cap_ms=10_000,
        timeout_ms=1500,
        run_at_ms=NOW_MS + 2000,
        depends_on=("x", "y"),
        idempotency_key="k-1",
    )


@pytest.mark.parametrize(
    ("value", "expected_ms"),
    [
        ("2024-01-01T00:00:00Z", 1_704_067_200_000),
        ("2024-01-01t00:00:00z", 1_704_067_200_000),
        ("2024-01-01T02:00:00+02:00", 1_704_067_200_000),
        ("2024-01-01T00:00:00.123456789Z", 1_704_067_200_123),
        (1_704_067_200, 1_704_067_200_000),
        (1_704_067_200.5, 1_704_067_200_500),
        (0, 0),
    ],
)
def test_run_at_forms(value: Any, expected_ms: int) -> None:
    assert validate_task({"type": "echo", "run_at": value}, intake()).run_at_ms == expected_ms


def test_zero_delay_is_no_start_time_and_tiny_timeout_stays_positive() -> None:
    new = validate_task({"type": "echo", "delay_s": 0, "timeout_s": 1e-9}, intake())
    assert new.run_at_ms == 0
    assert new.timeout_ms == 1


def test_a_long_base_alone_raises_the_cap() -> None:
    new = validate_task({"type": "echo", "backoff_base_s": 120}, intake())
    assert (new.backoff_base_ms, new.backoff_cap_ms) == (120_000, 120_000)


def test_payload_null_is_a_value() -> None:
    assert validate_task({"type": "echo", "payload": None}, intake()).payload_json == "null"


BAD = [
    # (body, field named, status)
    ([], None, 422),
    ({}, "type", 422),
    ({"type": "echo", "id": "mine"}, "id", 422),
    ({"type": "echo", "ref": "a"}, "ref", 422),
    ({"type": 3}, "type", 422),
    ({"type": ""}, "type", 422),
    ({"type": "x" * 200}, "type", 422),
    ({"type": "missing"}, "type", 422),
    ({"type": "echo", "priority": "HIGH"}, "priority", 422),
    ({"type": "echo", "priority": "urgent"}, "priority", 422),
    ({"type": "echo", "priority": 0}, "priority", 422),
    ({"type": "echo", "priority": None}, "priority", 422),
    ({"type": "echo", "max_retries": True}, "max_retries", 422),
    ({"type": "echo", "max_retries": 2.0}, "max_retries", 422),
    ({"type": "echo", "max_retries": -1}, "max_retries", 422),
    ({"type": "echo", "max_retries": 101}, "max_retries", 422),
    ({"type": "echo", "max_retries": "3"}, "max_retries", 422),
    ({"type": "echo", "timeout_s": 0}, "timeout_s", 422),
    ({"type": "echo", "timeout_s": -5}, "timeout_s", 422),
    ({"type": "echo", "timeout_s": 10**30}, "timeout_s", 422),
    ({"type": "echo", "timeout_s": float("inf")}, "timeout_s", 422),
    ({"type": "echo", "timeout_s": float("nan")}, "timeout_s", 422),
    ({"type": "echo", "timeout_s": False}, "timeout_s", 422),
    ({"type": "echo", "delay_s": -1}, "delay_s", 422),
    ({"type": "echo", "delay_s": 10**12}, "delay_s", 422),
    ({"type": "echo", "delay_s": "5"}, "delay_s", 422),
    ({"type": "echo", "delay_s": 1, "run_at": 5}, "run_at", 422),
    ({"type": "echo", "run_at": "tomorrow"}, "run_at", 422),
    ({"type": "echo", "run_at": "2030-01-01T00:00:00"}, "run_at", 422),
    ({"type": "echo", "run_at": "2030-02-30T00:00:00Z"}, "run_at", 422),
    ({"type": "echo", "run_at": "9999-01-01T00:00:00Z"}, "run_at", 422),
    ({"type": "echo", "run_at": -1}, "run_at", 422),
    ({"type": "echo", "run_at": True}, "run_at", 422),
    ({"type": "echo", "run_at": float("inf")}, "run_at", 422),
    ({"type": "echo", "depends_on": "abc"}, "depends_on", 422),
    ({"type": "echo", "depends_on": ["a", "b", "c", "d"]}, "depends_on", 422),
    ({"type": "echo", "depends_on": ["a", "a"]}, "depends_on[1]", 422),
    ({"type": "echo", "depends_on": ["a", 1]}, "depends_on[1]", 422),
    ({"type": "echo", "depends_on": [""]}, "depends_on[0]", 422),
    ({"type": "echo", "depends_on": ["x" * 200]}, "depends_on[0]", 422),
    ({"type": "echo", "idempotency_key": ""}, "idempotency_key", 422),
    ({"type": "echo", "idempotency_key": "k" * 257}, "idempotency_key", 422),
    ({"type": "echo", "idempotency_key": 7}, "idempotency_key", 422),
    ({"type": "echo", "idempotency_key": "\ud800"}, "idempotency_key", 422),
    ({"type": "echo", "backoff_base_s": -1}, "backoff_base_s", 422),
    ({"type": "echo", "backoff_cap_s": 10**9}, "backoff_cap_s", 422),
    ({"type": "echo", "backoff_base_s": 10, "backoff_cap_s": 5}, "backoff_cap_s", 422),
    ({"type": "echo", "payload": "x" * 1000}, "payload", 413),
    ({"type": "echo", "payload": [float("inf")]}, "payload", 422),
    ({"type": "echo", "payload": {"s": "\udc00"}}, "payload", 422),
]


@pytest.mark.parametrize(("body", "field", "status"), BAD)
def test_bad_submissions_name_the_field(body: Any, field: str | None, status: int) -> None:
    error = refused(body)
    assert (error.field, error.status) == (field, status)
    envelope = error.body()["error"]
    assert envelope["field"] == field
    assert envelope["code"] == ("too_large" if status == 413 else "invalid")
    assert envelope["message"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"type": "echo", "payload": "\ud800"}, "payload"),
        ({"type": "echo", "payload": {"s": ["\udc00"]}}, "payload"),
        ({"type": "echo", "payload": {"\ud800": 1}}, "payload"),
        ({"type": "echo", "idempotency_key": "\ud800"}, "idempotency_key"),
    ],
)
def test_a_lone_surrogate_is_an_invalid_unicode_escape(body: Any, field: str) -> None:
    # The payload says what the other string fields say (not "numbers must be finite"), on
    # the generic path and on the fast one, alone and in a batch.
    for call, where in [
        (lambda: validate_task(body, intake()), field),
        (lambda: validate_task_row(body, intake()), field),
        (
            lambda: validate_batch({"tasks": [{"type": "echo"}, body]}, intake()),
            f"tasks[1].{field}",
        ),
        (lambda: validate_batch_rows({"tasks": [body]}, intake()), f"tasks[0].{field}"),
    ]:
        with pytest.raises(RequestError) as info:
            call()
        error = info.value
        assert (error.field, error.status, error.code) == (where, 422, "invalid")
        assert error.message == "contains an invalid unicode escape"


def test_the_run_at_error_shows_forms_that_are_accepted() -> None:
    error = refused({"type": "echo", "run_at": "tomorrow"})
    assert error.field == "run_at"
    # Whatever timestamp the message shows as an example, it is one a submission may carry.
    for stamp in re.findall(r"\d{4}-\d{2}-\d{2}T[\d:.]+(?:Z|[+-]\d{2}:\d{2})", error.message):
        validate_task({"type": "echo", "run_at": stamp}, intake())
    assert "YYYY-MM-DDTHH:MM:SSZ" in error.message and "epoch seconds" in error.message


def test_unknown_type_lists_the_known_ones() -> None:
    error = refused({"type": "nope"})
    assert error.body()["error"]["allowed"] == ["echo", "noop"]
    assert "echo, noop" in error.message


def test_unknown_field_lists_the_accepted_ones() -> None:
    error = refused({"type": "echo", "prio": "high"})
    assert "priority" in error.message


@pytest.mark.parametrize(
    ("body", "field", "status"),
    [
        ([], None, 422),
        ({"tasks": [{"type": "echo"}], "extra": 1}, "extra", 422),
        ({}, "tasks", 422),
        ({"tasks": {"type": "echo"}}, "tasks", 422),
        ({"tasks": []}, "tasks", 422),
        ({"tasks": [{"type": "echo"}] * 6}, "tasks", 413),
        (
            {"tasks": [{"type": "echo"}] * 3 + [{"type": "echo", "priority": "x"}]},
            "tasks[3].priority",
            422,
        ),
        ({"tasks": [{"type": "echo"}, 5]}, "tasks[1]", 422),
        ({"tasks": [{"type": "echo"}, {"type": "echo", "wat": 1}]}, "tasks[1].wat", 422),
        ({"tasks": [{"payload": 1}]}, "tasks[0].type", 422),
        ({"tasks": [{"type": "echo", "depends_on": ["a", "a"]}]}, "tasks[0].depends_on[1]", 422),
    ],
)
def test_bad_batches_name_the_item_and_field(body: Any, field: str | None, status: int) -> None:
    error = refused(body, batch=True)
    assert (error.field, error.status) == (field, status)


def test_batch_keeps_order_and_makes_distinct_ids() -> None:
    batch = validate_batch(
        {"tasks": [{"type": "echo", "payload": i, "priority": "low"} for i in range(5)]}, intake()
    )
    assert [t.payload_json for t in batch] == ["0", "1", "2", "3", "4"]
    assert len({t.id for t in batch}) == 5


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"   ",
        b"{",
        b"\xff\xfe{}",
        b'\xef\xbb\xbf{"type": "echo"}',
        b'{"type": "echo", "timeout_s": NaN}',
        b'{"type": "echo", "timeout_s": Infinity}',
        b'{"type": "echo", "timeout_s": -Infinity}',
        b'{"type": "echo", "type": "noop"}',
        b'{"type": "echo", "payload": {"a": 1, "a": 2}}',
        b'{"type": "echo", "payload": ' + b"1" * 5000 + b"}",
        b"[" * 100_000 + b"]" * 100_000,
        b"{'type': 'echo'}",
    ],
)
def test_malformed_json_is_400(raw: bytes) -> None:
    with pytest.raises(RequestError) as info:
        parse_json(raw)
    assert (info.value.status, info.value.code, info.value.field) == (400, "malformed", None)


def test_parse_json_accepts_ordinary_json() -> None:
    assert parse_json(b'{"type": "echo", "payload": [1e3, "\\u00e9"]}') == {
        "type": "echo",
        "payload": [1000.0, "é"],
    }


def test_huge_exponent_is_refused_by_the_field() -> None:
    body = parse_json(b'{"type": "echo", "timeout_s": 1e999}')
    assert refused(body).field == "timeout_s"


# ---------------------------------------------------------------------------- schema agreement


def test_schema_lists_exactly_the_accepted_fields() -> None:
    schema = submission_schema(LIMITS, sorted(TYPES))
    assert set(schema["properties"]) == set(FIELDS_BY_NAME)
    assert schema["required"] == ["type"]
    assert schema["additionalProperties"] is False
    assert schema["properties"]["type"]["enum"] == ["echo", "noop"]
    published = build_openapi(LIMITS, sorted(TYPES))["components"]["schemas"]["TaskSubmission"]
    assert published == schema


def test_schema_defaults_are_what_validation_fills_in() -> None:
    props = submission_schema(LIMITS, sorted(TYPES))["properties"]
    body = {"type": "echo"}
    defaults = {name: p["default"] for name, p in props.items() if "default" in p}
    assert validate_task(body, intake()) == validate_task({**body, **defaults}, intake())


def _bounds(spec_name: str) -> tuple[float, float, bool, bool]:
    schema = FIELDS_BY_NAME[spec_name].schema(LIMITS, [])
    low: float = schema["minimum"] if "minimum" in schema else schema["exclusiveMinimum"]
    return low, schema["maximum"], "exclusiveMinimum" in schema, schema["type"] == "integer"


NUMERIC = [s.name for s in TASK_FIELDS if s.schema(LIMITS, []).get("type") in ("number", "integer")]


def test_numeric_fields_are_known() -> None:
    assert set(NUMERIC) == {
        "max_retries",
        "timeout_s",
        "delay_s",
        "backoff_base_s",
        "backoff_cap_s",
    }


@pytest.mark.parametrize("name", NUMERIC)
@given(data=st.data())
def test_numeric_bounds_agree_with_the_schema(name: str, data: st.DataObject) -> None:
    low, high, exclusive, integer = _bounds(name)
    body: dict[str, Any] = {"type": "echo"}
    inside: float
    outside: float
    if name == "backoff_base_s":
        body["backoff_cap_s"] = LIMITS.backoff_cap_ms_max / 1000  # keep base <= cap
    if name == "backoff_cap_s":
        body["backoff_base_s"] = 0  # the cross-field rule (base <= cap) is tested on its own
    if integer:
        inside = data.draw(st.integers(int(low), int(high)))
        outside = data.draw(
            st.one_of(st.integers(max_value=int(low) - 1), st.integers(min_value=int(high) + 1))
        )
    else:
        inside = data.draw(
            st.floats(low, high, exclude_min=exclusive, allow_nan=False, allow_infinity=False)
        )
        outside = data.draw(
            st.one_of(
                st.floats(max_value=low, exclude_max=not exclusive, allow_nan=False),
                st.floats(min_value=high, exclude_min=True, allow_nan=False),
            )
        )
    validate_task({**body, name: inside}, intake())
    with pytest.raises(RequestError) as info:
        validate_task({**body, name: outside}, intake())
    assert info.value.field == name


@given(
    st.recursive(
        st.none()
        | st.booleans()
        | st.integers()
        | st.floats(allow_nan=False, allow_infinity=False)
        | st.text(max_size=5),
        lambda children: (
            st.lists(children, max_size=3)
            | st.dictionaries(st.text(max_size=5), children, max_size=3)
        ),
        max_leaves=10,
    )
)
def test_any_json_payload_round_trips(payload: Any) -> None:
    new = validate_task({"type": "echo", "payload": payload}, intake(Limits()))
    assert json.loads(new.payload_json) == payload

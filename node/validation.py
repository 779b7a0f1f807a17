"""Request bodies -> :class:`NewTask`: strict, complete, and pure (no I/O, no clock).

Every field a submission may carry is one :class:`FieldSpec` in :data:`TASK_FIELDS`: its parser
and its OpenAPI schema sit side by side, and node/openapi.py builds the published schema from this
same table, so the document and the checks cannot disagree. Anything not in the table is refused.

Everything is checked before the store is called: the store's submit is all-or-none, and a refusal
here leaves nothing behind. Errors name the field (``tasks[3].priority`` inside a batch).
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from core.limits import Limits
from core.priority import Priority
from core.store_model import NewTask, definition_fingerprint
from node.rows import SubmitRow, row_of

# Ids are server-made uuid4 hex (32 characters); this bound only keeps an absurd string from
# reaching the store's scripts. A well-formed id that does not exist is the store's refusal.
TASK_ID_CHARS_MAX = 128

_NEW_TASK_DEFAULTS: dict[str, Any] = {f.name: f.default for f in dataclasses.fields(NewTask)}

_RFC3339 = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}:\d{2}(\.\d+)?([Zz]|[+-]\d{2}:\d{2})")


def printable(text: str) -> str:
    """``text`` as UTF-8 can carry it: a lone surrogate (a JSON key or value of ``\\ud800``
    decodes to one) becomes its backslash escape, so that an error naming it can be sent."""
    if text.isascii():
        return text
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode("utf-8")
    return text


class RequestError(Exception):
    """A refused request: HTTP status, a machine-readable code, the field at fault and why.

    ``extra`` adds keys to the error object (e.g. the accepted choices), never replaces one.
    The field and the message are made :func:`printable`: they may quote the client's input.
    """

    def __init__(
        self,
        field: str | None,
        message: str,
        status: int = 422,
        code: str = "invalid",
        extra: Mapping[str, Any] | None = None,
    ) -> None:
        message = printable(message)
        super().__init__(message)
        self.field = None if field is None else printable(field)
        self.message = message
        self.status = status
        self.code = code
        self.extra = dict(extra or {})

    def body(self) -> dict[str, Any]:
        error: dict[str, Any] = {**self.extra}
        error.update(code=self.code, field=self.field, message=self.message)
        return {"error": error}


@dataclass(frozen=True, slots=True)
class Intake:
    """What validation needs from outside, passed in so that it stays pure."""

    limits: Limits
    task_types: frozenset[str]
    now_ms: int
    new_id: Callable[[], str]
    # ``n`` ids at once, for a batch; without it, new_id is called n times.
    new_ids: Callable[[int], list[str]] | None = None


# ---------------------------------------------------------------------------- JSON bodies


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _unique_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    # Duplicate keys mean two clients' readings of one body can differ (which one wins?).
    obj = dict(pairs)
    if len(obj) != len(pairs):
        seen: set[str] = set()
        for key, _ in pairs:
            if key in seen:
                raise ValueError(f"duplicate key {key!r}")
            seen.add(key)
    return obj


def parse_json(body: bytes) -> Any:
    """Decode a request body strictly: UTF-8, no NaN/Infinity literals, no duplicate keys."""
    if not body or body.isspace():  # what strip() would empty, without copying the body
        raise RequestError(None, "the body is empty; expected a JSON object", 400, "malformed")
    try:
        text = body.decode("utf-8")
    except UnicodeDecodeError:
        raise RequestError(None, "the body is not valid UTF-8", 400, "malformed") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_unique_keys)
    except RecursionError:
        raise RequestError(None, "the body is nested too deeply", 400, "malformed") from None
    except ValueError as exc:
        raise RequestError(None, f"malformed JSON: {exc}", 400, "malformed") from None


# ---------------------------------------------------------------------------- field parsers


def _kind(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, (int, float)):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    return "an object"


def _text(value: Any, field: str, chars_max: int) -> str:
    if not isinstance(value, str):
        raise RequestError(field, f"must be a string, not {_kind(value)}")
    if not value:
        raise RequestError(field, "must not be empty")
    if len(value) > chars_max:
        raise RequestError(field, f"must be at most {chars_max} characters")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        # A lone surrogate escape (\ud800) decodes to a str that no store can encode.
        raise RequestError(field, "contains an invalid unicode escape") from None
    return value


def _number(value: Any, field: str) -> float | int:
    # bool is an int in Python; true must never mean 1 here.
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise RequestError(field, f"must be a number, not {_kind(value)}")
    if isinstance(value, float) and not math.isfinite(value):
        raise RequestError(field, "must be a finite number")
    return value


def _integer(value: Any, field: str, low: int, high: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise RequestError(field, f"must be an integer, not {_kind(value)}")
    if not low <= value <= high:
        raise RequestError(field, f"must be between {low} and {high}")
    return value


def _seconds_to_ms(value: Any, field: str, low_s: float, high_s: float, positive: bool) -> int:
    seconds = _number(value, field)
    if positive and seconds <= 0:
        raise RequestError(field, "must be greater than 0")
    if not low_s <= seconds <= high_s:
        raise RequestError(field, f"must be between {low_s:g} and {high_s:g}")
    # Round up: a tiny positive timeout must stay positive, never become 0 ms.
    return math.ceil(seconds * 1000) if positive else round(seconds * 1000)


def _parse_type(value: Any, field: str, intake: Intake) -> str:
    name = _text(value, field, intake.limits.task_type_chars_max)
    if name not in intake.task_types:
        known = sorted(intake.task_types)
        raise RequestError(
            field,
            f"unknown task type {name!r}; known types: {', '.join(known) or '(none)'}",
            extra={"allowed": known},
        )
    return name


# What json.dumps(separators=(",", ":"), ensure_ascii=False, allow_nan=False) builds per call.
_PAYLOAD_ENCODER = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False)


def _parse_payload(value: Any, field: str, intake: Intake) -> str:
    try:
        text = _PAYLOAD_ENCODER.encode(value)
        size = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        # Before ValueError, of which it is a subclass: a lone surrogate escape (\ud800).
        raise RequestError(field, "contains an invalid unicode escape") from None
    except ValueError:  # 1e999 parses as inf, which JSON cannot carry back out
        raise RequestError(field, "numbers must be finite") from None
    except RecursionError:
        raise RequestError(field, "is nested too deeply") from None
    if size > intake.limits.payload_bytes_max:
        raise RequestError(
            field,
            f"is {size} bytes as JSON; the limit is {intake.limits.payload_bytes_max}",
            413,
            "too_large",
        )
    depth_max = intake.limits.payload_depth_max
    if _may_nest_deeper(text, depth_max) and _nests_deeper(value, depth_max):
        raise RequestError(field, f"nests arrays and objects over {depth_max} deep")
    return text


def _may_nest_deeper(text: str, depth_max: int) -> bool:
    """False if the JSON ``text`` cannot nest over ``depth_max`` deep: it opens no more arrays
    and objects (two counts in C, where the walk of _nests_deeper is Python)."""
    return text.count("[") + text.count("{") > depth_max


def _nests_deeper(value: Any, depth_max: int) -> bool:
    """Whether the parsed JSON ``value`` nests arrays and objects over ``depth_max`` deep."""
    level = [value] if type(value) in (dict, list) else []
    depth = 0
    while level:
        depth += 1
        if depth > depth_max:
            return True
        deeper = []
        for container in level:
            items = container.values() if type(container) is dict else container
            deeper += [item for item in items if type(item) in (dict, list)]
        level = deeper
    return False


_PRIORITY_BY_LABEL: dict[str, Priority] = {p.label: p for p in Priority}


def _parse_priority(value: Any, field: str, intake: Intake) -> Priority:
    found = _PRIORITY_BY_LABEL.get(value) if isinstance(value, str) else None
    if found is not None:
        return found
    labels = list(_PRIORITY_BY_LABEL)
    if not isinstance(value, str) or value not in labels:
        # Only the exact lowercase names: one spelling per value keeps clients honest.
        shown = repr(value) if isinstance(value, str) else _kind(value)
        raise RequestError(
            field, f"must be one of {', '.join(labels)}, not {shown}", extra={"allowed": labels}
        )
    return Priority.parse(value)


def _parse_max_retries(value: Any, field: str, intake: Intake) -> int:
    return _integer(value, field, 0, intake.limits.max_retries_max)


def _parse_timeout(value: Any, field: str, intake: Intake) -> int:
    return _seconds_to_ms(value, field, 0, intake.limits.timeout_s_max, positive=True)


def _parse_delay(value: Any, field: str, intake: Intake) -> int:
    delay_ms = _seconds_to_ms(value, field, 0, intake.limits.delay_s_max, positive=False)
    # 0 means "now" in the store; a zero delay must not stamp a start time.
    return intake.now_ms + delay_ms if delay_ms else 0


def _parse_run_at(value: Any, field: str, intake: Intake) -> int:
    if isinstance(value, str):
        if not _RFC3339.fullmatch(value):
            raise RequestError(
                field,
                # No example date: a fixed one is refused while it is more than delay_s_max
                # (a year) away, and reads as stale once it is past.
                "must be an RFC 3339 date and time with an offset, as YYYY-MM-DDTHH:MM:SSZ or "
                "YYYY-MM-DDTHH:MM:SS+HH:MM (the seconds may have a fraction), or a number of "
                "epoch seconds",
            )
        # fromisoformat wants at most 6 fraction digits and an uppercase T/Z (3.11).
        text = value.upper().replace("Z", "+00:00")
        text = re.sub(r"(\.\d{6})\d+", r"\1", text)
        try:
            seconds: float = datetime.fromisoformat(text).timestamp()
        except (ValueError, OverflowError):
            raise RequestError(field, f"is not a valid date and time: {value!r}") from None
    else:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise RequestError(
                field, f"must be an RFC 3339 string or epoch seconds, not {_kind(value)}"
            )
        seconds = _number(value, field)
    if seconds < 0:
        raise RequestError(field, "must not be before 1970-01-01T00:00:00Z")
    latest_ms = intake.now_ms + intake.limits.delay_s_max * 1000
    ms = seconds * 1000
    # A float near its maximum is infinity in milliseconds, which round() cannot make an
    # integer (an OverflowError: a 500, not this 422): anything that far out is refused first.
    if ms > latest_ms + 1 or round(ms) > latest_ms:
        raise RequestError(
            field, f"is more than {intake.limits.delay_s_max} seconds (delay_s_max) away"
        )
    return round(ms)


def _parse_depends_on(value: Any, field: str, intake: Intake) -> tuple[str, ...]:
    if not isinstance(value, list):
        raise RequestError(field, f"must be an array of task ids, not {_kind(value)}")
    if len(value) > intake.limits.depends_on_max:
        raise RequestError(field, f"must list at most {intake.limits.depends_on_max} task ids")
    seen: set[str] = set()
    for i, item in enumerate(value):
        task_id = _text(item, f"{field}[{i}]", TASK_ID_CHARS_MAX)
        if task_id in seen:
            raise RequestError(f"{field}[{i}]", f"task id {task_id!r} is listed twice")
        seen.add(task_id)
    return tuple(value)


def _parse_idempotency_key(value: Any, field: str, intake: Intake) -> str:
    return _text(value, field, intake.limits.idempotency_key_chars_max)


def _parse_backoff_base(value: Any, field: str, intake: Intake) -> int:
    return _seconds_to_ms(value, field, 0, intake.limits.backoff_base_ms_max / 1000, False)


def _parse_backoff_cap(value: Any, field: str, intake: Intake) -> int:
    return _seconds_to_ms(value, field, 0, intake.limits.backoff_cap_ms_max / 1000, False)


# ---------------------------------------------------------------------------- the field table

Schema = dict[str, Any]


@dataclass(frozen=True, slots=True)
class FieldSpec:
    """One accepted field: how it is checked and how it is published."""

    name: str
    description: str
    # Parses the JSON value into the NewTask attribute ``target`` (raises RequestError).
    parse: Callable[[Any, str, Intake], Any]
    # The field's JSON Schema under the given limits and registered task types.
    schema: Callable[[Limits, list[str]], Schema]
    target: str
    required: bool = False


def _default_s(attr: str) -> float:
    ms: int = _NEW_TASK_DEFAULTS[attr]
    return ms / 1000 if ms % 1000 else ms // 1000


TASK_FIELDS: tuple[FieldSpec, ...] = (
    FieldSpec(
        "type",
        "A task type registered on this node.",
        _parse_type,
        lambda lim, types: {
            "type": "string",
            "minLength": 1,
            "maxLength": lim.task_type_chars_max,
            "enum": types,
        },
        "type",
        required=True,
    ),
    FieldSpec(
        "payload",
        "Any JSON value, handed to the handler as is.",
        _parse_payload,
        lambda lim, types: {
            "description": f"at most {lim.payload_bytes_max} bytes as compact JSON, arrays "
            f"and objects nested at most {lim.payload_depth_max} deep",
            "default": None,
        },
        "payload_json",
    ),
    FieldSpec(
        "priority",
        "Higher priorities are dispatched first; FIFO within one.",
        _parse_priority,
        lambda lim, types: {
            "type": "string",
            "enum": [p.label for p in Priority],
            "default": Priority(_NEW_TASK_DEFAULTS["priority"]).label,
        },
        "priority",
    ),
    FieldSpec(
        "max_retries",
        "Failed attempts retried (after backoff) before the task is dead.",
        _parse_max_retries,
        lambda lim, types: {
            "type": "integer",
            "minimum": 0,
            "maximum": lim.max_retries_max,
            "default": _NEW_TASK_DEFAULTS["max_retries"],
        },
        "max_retries",
    ),
    FieldSpec(
        "timeout_s",
        "An attempt running longer than this fails with a timeout.",
        _parse_timeout,
        lambda lim, types: {
            "type": "number",
            "exclusiveMinimum": 0,
            "maximum": lim.timeout_s_max,
            "default": _default_s("timeout_ms"),
        },
        "timeout_ms",
    ),
    FieldSpec(
        "delay_s",
        "Start no earlier than this many seconds from now. Not together with run_at.",
        _parse_delay,
        lambda lim, types: {"type": "number", "minimum": 0, "maximum": lim.delay_s_max},
        "run_at_ms",
    ),
    FieldSpec(
        "run_at",
        "Start no earlier than this time: RFC 3339 with an offset, or epoch seconds. "
        "Not together with delay_s.",
        _parse_run_at,
        lambda lim, types: {
            "oneOf": [
                {"type": "string", "format": "date-time"},
                {"type": "number", "minimum": 0},
            ]
        },
        "run_at_ms",
    ),
    FieldSpec(
        "depends_on",
        "Ids of existing tasks that must succeed first. Tasks of the same batch cannot be "
        "named (their ids are made by the server): submit those in a second request.",
        _parse_depends_on,
        lambda lim, types: {
            "type": "array",
            "items": {"type": "string", "minLength": 1, "maxLength": TASK_ID_CHARS_MAX},
            "maxItems": lim.depends_on_max,
            "uniqueItems": True,
        },
        "depends_on",
    ),
    FieldSpec(
        "idempotency_key",
        "Submitting the same key again with the same task (type, payload, priority, retries, "
        "timeout, backoff, depends_on; not the start time) answers the first task (200), never "
        "a second one; with another task it is refused (409, idempotency_conflict).",
        _parse_idempotency_key,
        lambda lim, types: {
            "type": "string",
            "minLength": 1,
            "maxLength": lim.idempotency_key_chars_max,
        },
        "idempotency_key",
    ),
    FieldSpec(
        "backoff_base_s",
        "First retry delay; doubles per failure, with jitter.",
        _parse_backoff_base,
        lambda lim, types: {
            "type": "number",
            "minimum": 0,
            "maximum": lim.backoff_base_ms_max / 1000,
            "default": _default_s("backoff_base_ms"),
        },
        "backoff_base_ms",
    ),
    FieldSpec(
        "backoff_cap_s",
        "Longest retry delay; at least backoff_base_s.",
        _parse_backoff_cap,
        lambda lim, types: {
            "type": "number",
            "minimum": 0,
            "maximum": lim.backoff_cap_ms_max / 1000,
            "default": _default_s("backoff_cap_ms"),
        },
        "backoff_cap_ms",
    ),
)

FIELDS_BY_NAME: dict[str, FieldSpec] = {spec.name: spec for spec in TASK_FIELDS}
# Fields that may not appear together: both set the start time.
EXCLUSIVE_FIELDS: tuple[str, str] = ("delay_s", "run_at")


def _joined(prefix: str, name: str) -> str:
    return f"{prefix}.{name}" if prefix else name


def validate_task(obj: Any, intake: Intake, where: str = "", task_id: str | None = None) -> NewTask:
    """One submission -> NewTask, or RequestError naming the first offending field.

    ``where`` prefixes field names (``tasks[3]``) so that a batch error points at its item;
    ``task_id`` is the id to give it (else a new one from the intake).
    """
    if not isinstance(obj, dict):
        raise RequestError(where or None, f"must be a JSON object, not {_kind(obj)}")
    for key in obj:
        if key not in FIELDS_BY_NAME:
            raise RequestError(
                _joined(where, key),
                f"unknown field {key!r}; accepted fields: {', '.join(FIELDS_BY_NAME)}",
            )
    first, second = EXCLUSIVE_FIELDS
    if first in obj and second in obj:
        raise RequestError(_joined(where, second), f"give either {first} or {second}, not both")
    values: dict[str, Any] = {}
    for spec in TASK_FIELDS:
        if spec.name in obj:
            values[spec.target] = spec.parse(obj[spec.name], _joined(where, spec.name), intake)
        elif spec.required:
            raise RequestError(_joined(where, spec.name), "is required")
    base_ms = values.get("backoff_base_ms", _NEW_TASK_DEFAULTS["backoff_base_ms"])
    if "backoff_cap_ms" in values:
        if values["backoff_cap_ms"] < base_ms:
            raise RequestError(_joined(where, "backoff_cap_s"), "must be at least backoff_base_s")
    else:
        # A long base alone should lengthen the cap, not be refused over a default.
        values["backoff_cap_ms"] = max(base_ms, _NEW_TASK_DEFAULTS["backoff_cap_ms"])
    return NewTask(id=intake.new_id() if task_id is None else task_id, **values)


def validate_batch(obj: Any, intake: Intake) -> list[NewTask]:
    """``{"tasks": [...]}`` -> NewTasks in order; one bad item refuses the whole batch."""
    items = _batch_items(obj, intake)
    return [validate_task(item, intake, f"tasks[{i}]") for i, item in enumerate(items)]


def _batch_items(obj: Any, intake: Intake) -> list[Any]:
    """The items of a batch body, checked as a whole (not yet one by one)."""
    if not isinstance(obj, dict):
        raise RequestError(None, f"the body must be a JSON object, not {_kind(obj)}")
    for key in obj:
        if key != "tasks":
            raise RequestError(key, f"unknown field {key!r}; the batch body has only 'tasks'")
    if "tasks" not in obj:
        raise RequestError("tasks", "is required")
    items = obj["tasks"]
    if not isinstance(items, list):
        raise RequestError("tasks", f"must be an array, not {_kind(items)}")
    if not items:
        raise RequestError("tasks", "must not be empty")
    batch_max = intake.limits.batch_tasks_max
    if len(items) > batch_max:
        raise RequestError(
            "tasks", f"has {len(items)} tasks; at most {batch_max} per batch", 413, "too_large"
        )
    return items


# ---------------------------------------------------------------------------- the fast path
# The generic path above (one FieldSpec at a time, every field name formatted, a NewTask per
# task) cost about 10 us per task, a fifth of the node's time on a batch. The fast path below
# accepts only what the generic path accepts, with the very values it would produce, and hands
# every doubt to it (a value of a less common form, anything it would refuse): errors therefore
# come from one place, word for word, and tests/node/test_validation.py checks that the paths
# agree on every input they draw.

_MISSING: Any = object()
_ROW_DEFAULTS = row_of(NewTask(id="", type=""))
_PRIORITY_VALUES: dict[str, int] = {p.label: int(p) for p in Priority}
# Fields the fast path takes as they come; any other field sends the task to the generic path.
_FAST_FIELDS = frozenset(
    {"type", "payload", "priority", "max_retries", "timeout_s", "delay_s", "idempotency_key"}
)


@dataclass(frozen=True, slots=True)
class _Compiled:
    """The limits and task types of a request, in the shape the fast path tests them."""

    types: frozenset[str]
    payload_bytes_max: int
    payload_depth_max: int
    max_retries_max: int
    timeout_s_max: int
    delay_s_max: int
    key_chars_max: int


@functools.lru_cache(maxsize=64)
def _compiled(limits: Limits, task_types: frozenset[str]) -> _Compiled:
    return _Compiled(
        # Only names the generic path accepts: non-empty, within the limit, encodable.
        types=frozenset(
            t for t in task_types if 0 < len(t) <= limits.task_type_chars_max and _utf8(t)
        ),
        payload_bytes_max=limits.payload_bytes_max,
        payload_depth_max=limits.payload_depth_max,
        max_retries_max=limits.max_retries_max,
        timeout_s_max=limits.timeout_s_max,
        delay_s_max=limits.delay_s_max,
        key_chars_max=limits.idempotency_key_chars_max,
    )


def _utf8(text: str) -> bool:
    if text.isascii():
        return True
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _fast_row(obj: Any, c: _Compiled, now_ms: int, task_id: str) -> SubmitRow | None:
    """The row of a submission of the common form, or None: then the generic path decides."""
    if type(obj) is not dict or not obj.keys() <= _FAST_FIELDS:
        return None
    type_name = obj.get("type")
    if type(type_name) is not str or type_name not in c.types:
        return None
    payload_json, priority, max_retries, base_ms, cap_ms, timeout_ms, run_at_ms, key, deps = (
        _ROW_DEFAULTS[2:11]
    )
    payload = obj.get("payload")
    if payload is not None:
        try:
            payload_json = _PAYLOAD_ENCODER.encode(payload)
        except (ValueError, RecursionError):
            return None
        if payload_json.isascii():
            size = len(payload_json)
        else:
            try:
                size = len(payload_json.encode("utf-8"))
            except UnicodeEncodeError:
                return None
        if size > c.payload_bytes_max or _may_nest_deeper(payload_json, c.payload_depth_max):
            return None
    value = obj.get("priority", _MISSING)
    if value is not _MISSING:
        if type(value) is not str or value not in _PRIORITY_VALUES:
            return None
        priority = _PRIORITY_VALUES[value]
    value = obj.get("max_retries", _MISSING)
    if value is not _MISSING:
        if type(value) is not int or not 0 <= value <= c.max_retries_max:
            return None
        max_retries = value
    value = obj.get("timeout_s", _MISSING)
    if value is not _MISSING:
        # NaN fails every comparison and infinity the upper bound: both go to the generic path.
        if (type(value) is not int and type(value) is not float) or not (
            0 < value <= c.timeout_s_max
        ):
            return None
        timeout_ms = math.ceil(value * 1000)
    value = obj.get("delay_s", _MISSING)
    if value is not _MISSING:
        if (type(value) is not int and type(value) is not float) or not (
            0 <= value <= c.delay_s_max
        ):
            return None
        delay_ms = round(value * 1000)
        run_at_ms = now_ms + delay_ms if delay_ms else 0
    value = obj.get("idempotency_key", _MISSING)
    if value is not _MISSING:
        if type(value) is not str or not 0 < len(value) <= c.key_chars_max or not _utf8(value):
            return None
        key = value
    return (
        task_id,
        type_name,
        payload_json,
        priority,
        max_retries,
        base_ms,
        cap_ms,
        timeout_ms,
        run_at_ms,
        key,
        deps,
        definition_fingerprint(
            type_name, payload_json, priority, max_retries, base_ms, cap_ms, timeout_ms, ()
        )
        if key
        else "",
    )


def _ids(intake: Intake, n: int) -> list[str]:
    if intake.new_ids is not None:
        return intake.new_ids(n)
    return [intake.new_id() for _ in range(n)]


def validate_task_row(obj: Any, intake: Intake) -> SubmitRow:
    """:func:`validate_task` as the store's row (node/rows.py): the same acceptance, values and
    errors, through the fast path where the submission allows."""
    task_id = intake.new_id()
    row = _fast_row(obj, _compiled(intake.limits, intake.task_types), intake.now_ms, task_id)
    if row is None:
        row = row_of(validate_task(obj, intake, task_id=task_id))
    return row


def validate_batch_rows(obj: Any, intake: Intake) -> list[SubmitRow]:
    """:func:`validate_batch` as rows: the same acceptance, values, ids (in order) and errors."""
    items = _batch_items(obj, intake)
    ids = _ids(intake, len(items))
    c = _compiled(intake.limits, intake.task_types)
    now = intake.now_ms
    rows: list[SubmitRow] = []
    for i, item in enumerate(items):
        row = _fast_row(item, c, now, ids[i])
        if row is None:
            row = row_of(validate_task(item, intake, f"tasks[{i}]", task_id=ids[i]))
        rows.append(row)
    return rows

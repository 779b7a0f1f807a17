"""Every limit dsched enforces, named with its unit last, in one place.

The HTTP layer enforces these where input enters; the core re-checks the ones whose violation
would break an invariant (a negative retry count, an absurd timeout) and raises.
"""

from dataclasses import dataclass

MIB = 1024 * 1024


@dataclass(frozen=True, slots=True)
class Limits:
    # A payload is stored inline in the task hash; large blobs belong in object storage.
    payload_bytes_max: int = 1 * MIB
    # Arrays and objects nested in a payload: deeper ones could not be serialised back out (the
    # JSON encoders of the read path recurse once per level).
    payload_depth_max: int = 100
    # A handler's result is stored inline too, as JSON: a larger one is the attempt's error
    # (a 20 MB result was stored, and a page of 1,000 such tasks answered 53 MB).
    result_bytes_max: int = 1 * MIB
    # One batch request is validated and written as one Redis script call.
    batch_tasks_max: int = 1000
    # A request body bigger than a full batch of maximal payloads is refused before parsing.
    request_bytes_max: int = 16 * MIB
    task_type_chars_max: int = 128
    idempotency_key_chars_max: int = 256
    depends_on_max: int = 100
    max_retries_max: int = 100
    timeout_s_max: int = 7 * 24 * 3600
    delay_s_max: int = 365 * 24 * 3600
    # Backoff: exponential from base, capped; jittered so retries of one failure burst spread out.
    backoff_base_ms_max: int = 3600 * 1000
    backoff_cap_ms_max: int = 7 * 24 * 3600 * 1000
    # Live backlog of the whole cluster (queued + pending tasks, as Redis counts them): a
    # submission that would take it past this is refused whole (HTTP 503, Retry-After). Checked
    # in the submit script, so submitters on several nodes cannot pass it together.
    queued_tasks_max: int = 10_000_000
    # A page of GET /v1/tasks.
    page_tasks_max: int = 1000
    # A lease lost this many times (worker crashed, node lost) makes the task dead: a task that
    # kills its worker must not take the cluster down with it, one node at a time.
    lease_expiries_max: int = 3


DEFAULT_LIMITS = Limits()

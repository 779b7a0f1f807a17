"""node/metrics.py: the counts land in the very series GET /metrics shows, as prometheus_client
would show them."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest

from node.metrics import HTTP_BUCKETS_S, LabelledCounter, LabelledHistogram, Metrics, _Collector


def _sample(text: str, name: str, **labels: str) -> float | None:
    want = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    for line in text.splitlines():
        if line.startswith(f"{name}{{{want}}} "):
            return float(line.rsplit(" ", 1)[1])
    return None


def test_counts_accumulate_per_label_set() -> None:
    m = Metrics()
    for _ in range(3):
        m.started("noop", "high", 0.002)
    m.started("noop", "low", 0.002)
    m.finished("noop", "high", "succeeded", 0.01)
    m.finished("noop", "high", "dead", 0.01)
    text = m.render()[0].decode()
    assert _sample(text, "dsched_tasks_started_total", type="noop", priority="high") == 3
    assert _sample(text, "dsched_tasks_started_total", type="noop", priority="low") == 1
    assert _sample(text, "dsched_tasks_succeeded_total", type="noop", priority="high") == 1
    assert _sample(text, "dsched_tasks_dead_total", type="noop", priority="high") == 1
    assert _sample(text, "dsched_tasks_failed_total", type="noop", priority="high") == 1
    assert _sample(text, "dsched_task_run_seconds_count", type="noop") == 2
    m.set_queue_depth({"high": 4})
    m.set_queue_depth({"medium": 2})  # high is absent now: 0, not the stale 4
    text = m.render()[0].decode()
    assert _sample(text, "dsched_queue_depth", priority="high") == 0
    assert _sample(text, "dsched_queue_depth", priority="medium") == 2


def test_http_methods_are_a_bounded_label() -> None:
    m = Metrics()
    m.observe_http("GET", "/v1/tasks", 200, 0.001)
    for method in ("BREW", "XYZZY", "PROPFIND"):
        m.observe_http(method, "/v1/tasks", 405, 0.001)
    text = m.render()[0].decode()
    labels = {"route": "/v1/tasks"}
    assert _sample(text, "dsched_http_request_seconds_count", method="GET", status="200", **labels)
    assert (
        _sample(text, "dsched_http_request_seconds_count", method="other", status="405", **labels)
        == 3
    )
    assert "BREW" not in text


@given(
    st.lists(
        st.tuples(
            st.sampled_from(["a", "b"]),
            st.one_of(st.sampled_from(HTTP_BUCKETS_S), st.floats(0, 20, allow_nan=False)),
        ),
        max_size=40,
    )
)
@settings(max_examples=200, deadline=None)
def test_histograms_and_counters_expose_what_prometheus_client_would(
    observations: list[tuple[str, float]],
) -> None:
    """The plain-number series render exactly as prometheus_client's own Histogram and Counter
    fed the same values (bounds included: buckets are "le")."""
    ours = LabelledHistogram("h", "doc", ("k",), HTTP_BUCKETS_S)
    counter = LabelledCounter("c", "doc", ("k",))
    theirs = CollectorRegistry()
    reference = Histogram("h", "doc", ("k",), buckets=HTTP_BUCKETS_S, registry=theirs)
    reference_counter = Counter("c", "doc", ("k",), registry=theirs)
    for key, value in observations:
        ours.observe((key,), value)
        counter.inc((key,))
        reference.labels(key).observe(value)
        reference_counter.labels(key).inc()
    mine = CollectorRegistry()
    mine.register(_Collector([ours, counter]))

    def samples(registry: CollectorRegistry) -> list[str]:
        text = generate_latest(registry).decode()
        return sorted(line for line in text.splitlines() if "_created" not in line)

    assert samples(mine) == samples(theirs)

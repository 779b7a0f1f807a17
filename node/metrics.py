"""Prometheus metrics of one node, in a registry of its own.

A private CollectorRegistry (not the process-global default) lets several apps live in one test
process, and lets GET /metrics show exactly this node's series.

The per-task and per-request series (counters and histograms with labels) are plain Python
numbers that a collector turns into Prometheus families when /metrics is read: a task start
and end touched prometheus_client's labelled children six times (a lock and a Python call
each, a histogram's buckets searched one by one), about 7% of a node's CPU per no-op task. Every
call comes from the event loop's thread (handlers' threads never count), so no lock is needed.
"""

from __future__ import annotations

import gc
from bisect import bisect_left
from collections.abc import Callable, Iterator, Mapping
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Gauge, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST
from prometheus_client.metrics_core import CounterMetricFamily, HistogramMetricFamily, Metric
from prometheus_client.registry import Collector
from prometheus_client.utils import floatToGoString

from core.priority import Priority

# Submit-to-start is the scheduler's headline latency: resolve the low milliseconds.
START_BUCKETS_S = (
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2.5,
    5,
    10,
    30,
    60,
    300,
)
RUN_BUCKETS_S = (0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300, 1800, 3600)
HTTP_BUCKETS_S = (0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 10)

TASK_LABELS = ("type", "priority")
HTTP_METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})


# How prometheus_client writes a bucket bound ("1.0", "0.0025"): untyped there.
_go_float = cast(Callable[[float], str], floatToGoString)


class LabelledCounter:
    """A counter per label set, exposed as ``<name>_total``."""

    __slots__ = ("doc", "labels", "name", "values")

    def __init__(self, name: str, doc: str, labels: tuple[str, ...]) -> None:
        self.name = name
        self.doc = doc
        self.labels = labels
        self.values: dict[tuple[str, ...], float] = {}

    def inc(self, key: tuple[str, ...], n: float = 1) -> None:
        values = self.values
        values[key] = values.get(key, 0) + n

    def family(self) -> Metric:
        family = CounterMetricFamily(self.name, self.doc, labels=self.labels)
        for key, value in sorted(self.values.items()):
            family.add_metric(key, value)
        return family


class LabelledHistogram:
    """A histogram per label set: each series holds its per-bucket counts (the last: above
    every bound) and its sum."""

    __slots__ = ("bounds", "doc", "labels", "name", "series")

    def __init__(
        self, name: str, doc: str, labels: tuple[str, ...], bounds: tuple[float, ...]
    ) -> None:
        if list(bounds) != sorted(set(bounds)):
            raise ValueError("bucket bounds must increase")
        self.name = name
        self.doc = doc
        self.labels = labels
        self.bounds = bounds
        self.series: dict[tuple[str, ...], list[Any]] = {}

    def observe(self, key: tuple[str, ...], value: float) -> None:
        series = self.series.get(key)
        if series is None:
            series = self.series[key] = [[0] * (len(self.bounds) + 1), 0.0]
        # The first bucket whose bound is >= value (Prometheus buckets are "le").
        series[0][bisect_left(self.bounds, value)] += 1
        series[1] += value

    def family(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.doc, labels=self.labels)
        les = [_go_float(b) for b in self.bounds] + ["+Inf"]
        for key, (counts, total) in sorted(self.series.items()):
            cumulative, buckets = 0, []
            for le, n in zip(les, counts, strict=True):
                cumulative += n
                buckets.append((le, cumulative))
            family.add_metric(key, buckets, total)
        return family


class _Collector(Collector):
    def __init__(self, metrics: list[LabelledCounter | LabelledHistogram]) -> None:
        self.metrics = metrics

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.family()


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Every name carries the dsched_ prefix: no collision on a shared Prometheus.
        self.tasks_submitted = LabelledCounter(
            "dsched_tasks_submitted", "Tasks created (idempotent repeats excluded)", TASK_LABELS
        )
        self.tasks_started = LabelledCounter(
            "dsched_tasks_started", "Attempts started by this node's workers", TASK_LABELS
        )
        self.tasks_succeeded = LabelledCounter(
            "dsched_tasks_succeeded", "Attempts that succeeded", TASK_LABELS
        )
        self.tasks_failed = LabelledCounter(
            "dsched_tasks_failed",
            "Attempts that failed (raised or timed out), whether retried or dead",
            TASK_LABELS,
        )
        self.tasks_retried = LabelledCounter(
            "dsched_tasks_retried",
            "Retries: failed attempts scheduled again after backoff, and retries by hand",
            TASK_LABELS,
        )
        self.tasks_dead = LabelledCounter(
            "dsched_tasks_dead", "Attempts that left their task dead", TASK_LABELS
        )
        self.task_run_seconds = LabelledHistogram(
            "dsched_task_run_seconds", "Handler run time of one attempt", ("type",), RUN_BUCKETS_S
        )
        self.task_submit_to_start_seconds = LabelledHistogram(
            "dsched_task_submit_to_start_seconds",
            "From submission to the start of an attempt",
            ("priority",),
            START_BUCKETS_S,
        )
        self.http_request_seconds = LabelledHistogram(
            "dsched_http_request_seconds",
            "HTTP request latency by route template (not raw path: bounded label values)",
            ("method", "route", "status"),
            HTTP_BUCKETS_S,
        )
        r.register(
            _Collector(
                [
                    self.tasks_submitted,
                    self.tasks_started,
                    self.tasks_succeeded,
                    self.tasks_failed,
                    self.tasks_retried,
                    self.tasks_dead,
                    self.task_run_seconds,
                    self.task_submit_to_start_seconds,
                    self.http_request_seconds,
                ]
            )
        )
        self.fenced_writes = Counter(
            "dsched_fenced_writes_total",
            "Store writes refused because a newer leader's term fenced them",
            registry=r,
        )
        self.queue_depth = Gauge(
            "dsched_queue_depth",
            "Queued tasks in the leader's ready heap",
            ("priority",),
            registry=r,
        )
        self.workers_busy = Gauge("dsched_workers_busy", "Worker slots running a task", registry=r)
        # node.main.freeze_startup_objects: what the cyclic collector no longer walks.
        Gauge(
            "dsched_gc_frozen_objects",
            "Objects frozen out of the cyclic garbage collector at startup",
            registry=r,
        ).set_function(gc.get_freeze_count)
        # Every priority shows a depth from the start, so dashboards see 0 rather than nothing.
        self._depth = {p.label: self.queue_depth.labels(p.label) for p in Priority}
        for gauge in self._depth.values():
            gauge.set(0)

    # ------------------------------------------------------------------ called by the runtime/API
    def submitted(self, type: str, priority_label: str, n: int = 1) -> None:
        self.tasks_submitted.inc((type, priority_label), n)

    def started(self, type: str, priority_label: str, submit_to_start_s: float) -> None:
        self.tasks_started.inc((type, priority_label))
        self.task_submit_to_start_seconds.observe((priority_label,), submit_to_start_s)

    def finished(self, type: str, priority_label: str, status: str, run_s: float) -> None:
        """An attempt ended: ``status`` is succeeded, failed (a retry follows) or dead."""
        labels = (type, priority_label)
        if status == "succeeded":
            self.tasks_succeeded.inc(labels)
        elif status == "failed":
            self.tasks_failed.inc(labels)
            self.tasks_retried.inc(labels)
        elif status == "dead":
            self.tasks_failed.inc(labels)
            self.tasks_dead.inc(labels)
        else:
            raise ValueError(f"an attempt cannot finish as {status!r}")
        self.task_run_seconds.observe((type,), run_s)

    def retried(self, type: str, priority_label: str, n: int = 1) -> None:
        """A dead or cancelled task retried by hand (POST /v1/tasks/{id}/retry)."""
        self.tasks_retried.inc((type, priority_label), n)

    def fenced(self, n: int = 1) -> None:
        self.fenced_writes.inc(n)

    def set_queue_depth(self, depth: Mapping[str, int]) -> None:
        # A priority absent from the mapping has nothing queued: show 0, not a stale value.
        for label, gauge in self._depth.items():
            gauge.set(depth.get(label, 0))

    def set_workers_busy(self, n: int) -> None:
        self.workers_busy.set(n)

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        # A client chooses the method: any other token would add a series.
        method = method if method in HTTP_METHODS else "other"
        self.http_request_seconds.observe((method, route, str(status)), seconds)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its Content-Type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

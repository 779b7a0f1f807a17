"""Prometheus metrics of one node, in a registry of its own.

A private CollectorRegistry (not the process-global default) lets several apps live in one test
process, and lets GET /metrics show exactly this node's series.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

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


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        # Every name carries the dsched_ prefix: no collision on a shared Prometheus.
        self.tasks_submitted = Counter(
            "dsched_tasks_submitted_total",
            "Tasks created (idempotent repeats excluded)",
            TASK_LABELS,
            registry=r,
        )
        self.tasks_started = Counter(
            "dsched_tasks_started_total",
            "Attempts started by this node's workers",
            TASK_LABELS,
            registry=r,
        )
        self.tasks_succeeded = Counter(
            "dsched_tasks_succeeded_total", "Attempts that succeeded", TASK_LABELS, registry=r
        )
        self.tasks_failed = Counter(
            "dsched_tasks_failed_total",
            "Attempts that failed (raised or timed out), whether retried or dead",
            TASK_LABELS,
            registry=r,
        )
        self.tasks_retried = Counter(
            "dsched_tasks_retried_total",
            "Retries: failed attempts scheduled again after backoff, and retries by hand",
            TASK_LABELS,
            registry=r,
        )
        self.tasks_dead = Counter(
            "dsched_tasks_dead_total", "Attempts that left their task dead", TASK_LABELS, registry=r
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
        self.task_run_seconds = Histogram(
            "dsched_task_run_seconds",
            "Handler run time of one attempt",
            ("type",),
            buckets=RUN_BUCKETS_S,
            registry=r,
        )
        self.task_submit_to_start_seconds = Histogram(
            "dsched_task_submit_to_start_seconds",
            "From submission to the start of an attempt",
            ("priority",),
            buckets=START_BUCKETS_S,
            registry=r,
        )
        self.http_request_seconds = Histogram(
            "dsched_http_request_seconds",
            "HTTP request latency by route template (not raw path: bounded label values)",
            ("method", "route", "status"),
            buckets=HTTP_BUCKETS_S,
            registry=r,
        )
        # Every priority shows a depth from the start, so dashboards see 0 rather than nothing.
        # labels() takes a lock and builds a key on every call; the per-task paths ask for the
        # same few children thousands of times a second, so they are looked up once.
        self._children: dict[tuple[Any, ...], Any] = {}
        for p in Priority:
            self.queue_depth.labels(p.label).set(0)

    def _child(self, metric: Any, *labels: str) -> Any:
        key = (id(metric), *labels)
        child = self._children.get(key)
        if child is None:
            child = self._children[key] = metric.labels(*labels)
        return child

    # ------------------------------------------------------------------ called by the runtime/API
    def submitted(self, type: str, priority_label: str, n: int = 1) -> None:
        self._child(self.tasks_submitted, type, priority_label).inc(n)

    def started(self, type: str, priority_label: str, submit_to_start_s: float) -> None:
        self._child(self.tasks_started, type, priority_label).inc()
        self._child(self.task_submit_to_start_seconds, priority_label).observe(submit_to_start_s)

    def finished(self, type: str, priority_label: str, status: str, run_s: float) -> None:
        """An attempt ended: ``status`` is succeeded, failed (a retry follows) or dead."""
        labels = (type, priority_label)
        if status == "succeeded":
            self._child(self.tasks_succeeded, *labels).inc()
        elif status == "failed":
            self._child(self.tasks_failed, *labels).inc()
            self._child(self.tasks_retried, *labels).inc()
        elif status == "dead":
            self._child(self.tasks_failed, *labels).inc()
            self._child(self.tasks_dead, *labels).inc()
        else:
            raise ValueError(f"an attempt cannot finish as {status!r}")
        self._child(self.task_run_seconds, type).observe(run_s)

    def retried(self, type: str, priority_label: str, n: int = 1) -> None:
        """A dead or cancelled task retried by hand (POST /v1/tasks/{id}/retry)."""
        self._child(self.tasks_retried, type, priority_label).inc(n)

    def fenced(self, n: int = 1) -> None:
        self.fenced_writes.inc(n)

    def set_queue_depth(self, depth: Mapping[str, int]) -> None:
        # A priority absent from the mapping has nothing queued: show 0, not a stale value.
        for p in Priority:
            self._child(self.queue_depth, p.label).set(depth.get(p.label, 0))

    def set_workers_busy(self, n: int) -> None:
        self.workers_busy.set(n)

    def observe_http(self, method: str, route: str, status: int, seconds: float) -> None:
        # A client chooses the method: any other token would add a series (and a cached child).
        method = method if method in HTTP_METHODS else "other"
        self._child(self.http_request_seconds, method, route, str(status)).observe(seconds)

    def render(self) -> tuple[bytes, str]:
        """The text exposition format and its Content-Type."""
        return generate_latest(self.registry), CONTENT_TYPE_LATEST

"""Prometheus figures of the executor: stage durations and run outcomes."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram

_BUCKETS = (0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600, 24 * 3600)


class ExecutorMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        self.prepare_seconds = Histogram(
            "appengine_executor_prepare_seconds",
            "Taking a run to its container start: image, container, inputs",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.run_seconds = Histogram(
            "appengine_executor_run_seconds", "Task container run time", buckets=_BUCKETS, registry=registry
        )
        self.collect_seconds = Histogram(
            "appengine_executor_collect_seconds",
            "Container exit to the run's end: logs, outputs, final event",
            buckets=_BUCKETS,
            registry=registry,
        )
        self.outcomes = Counter(
            "appengine_executor_runs_total",
            "Runs this executor ended or handed back, by outcome (finished, a failure code, retried, ...)",
            ["outcome"],
            registry=registry,
        )
        self.image_loads = Counter(
            "appengine_executor_image_loads_total", "Task images loaded into the engine", registry=registry
        )

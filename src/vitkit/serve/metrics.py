"""Prometheus metrics of one server: latency, queueing, batch sizes, requests and errors by code, predictions by
class, confidence, and the process's memory (prometheus-client's process collector). Each app has its own
registry, so several apps in one process (tests) do not mix their counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Histogram, ProcessCollector

from vitkit.serve.batching import BatchRecord

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)
CONFIDENCE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95, 0.99)


class ServerMetrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.latency = Histogram(
            "vitkit_request_seconds", "Request latency, by endpoint.", ["endpoint"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.queue = Histogram(
            "vitkit_queue_seconds",
            "Time a request waited for its batch.",
            ["model"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.compute = Histogram(
            "vitkit_batch_seconds", "Forward-pass time per batch.", ["model"], buckets=LATENCY_BUCKETS, registry=r
        )
        self.batch_size = Histogram(
            "vitkit_batch_size", "Images per forward pass.", ["model"], buckets=BATCH_BUCKETS, registry=r
        )
        self.requests = Counter(
            "vitkit_requests", "Requests, by endpoint and HTTP status code.", ["endpoint", "code"], registry=r
        )
        self.predictions = Counter(
            "vitkit_predictions", "Predicted top-1 classes.", ["model", "version", "label"], registry=r
        )
        self.confidence = Histogram(
            "vitkit_confidence",
            "Top-1 probability of each prediction.",
            ["model", "version"],
            buckets=CONFIDENCE_BUCKETS,
            registry=r,
        )
        self.version_errors = Counter(
            "vitkit_version_errors",
            "Forward passes that failed, by version and role (answer or shadow).",
            ["model", "version", "role"],
            registry=r,
        )
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds

    def observer(self, model: str):
        def observe(record: BatchRecord) -> None:
            self.batch_size.labels(model).observe(record.images)
            self.compute.labels(model).observe(record.compute_seconds)
            for seconds in record.queue_seconds:
                self.queue.labels(model).observe(seconds)

        return observe

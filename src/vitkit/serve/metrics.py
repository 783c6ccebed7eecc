"""Prometheus metrics of one server: latency, queueing, batch sizes, requests and errors by code, predictions by
class, confidence, and the process's memory (prometheus-client's process collector). Each app has its own
registry, so several apps in one process (tests) do not mix their counts."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector

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
        labels = ["model", "version"]
        self.drift_p = Gauge("vitkit_drift_p_value", "Latest drift test p-value.", [*labels, "test"], registry=r)
        self.entropy_shift = Gauge(
            "vitkit_attention_entropy_shift", "Largest |z| of a layer's attention entropy.", labels, registry=r
        )
        self.drift_alarm = Gauge("vitkit_drift_alarm", "1 while a drift test is below alpha.", labels, registry=r)
        self.latency_p99 = Gauge("vitkit_latency_p99_seconds", "p99 latency over the window.", labels, registry=r)
        self.rss_trend = Gauge(
            "vitkit_rss_trend_mib_per_1k_images", "Resident memory growth per 1000 images.", labels, registry=r
        )
        ProcessCollector(registry=r)  # process_resident_memory_bytes, cpu seconds, open fds

    def monitor_report(self, model: str, version: str, report: dict) -> None:
        for test in ("confidence", "embedding"):
            if test in report:
                self.drift_p.labels(model, version, test).set(report[test]["p_value"])
        if "attention" in report:
            self.entropy_shift.labels(model, version).set(report["attention"]["max_abs_z"])
        self.drift_alarm.labels(model, version).set(float(report.get("alarm", False)))
        if report.get("latency_p99_ms") is not None:
            self.latency_p99.labels(model, version).set(report["latency_p99_ms"] / 1000)
        if report.get("rss_trend_mib_per_1k") is not None:
            self.rss_trend.labels(model, version).set(report["rss_trend_mib_per_1k"])

    def observer(self, model: str):
        def observe(record: BatchRecord) -> None:
            self.batch_size.labels(model).observe(record.images)
            self.compute.labels(model).observe(record.compute_seconds)
            for seconds in record.queue_seconds:
                self.queue.labels(model).observe(seconds)

        return observe

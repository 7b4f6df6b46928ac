"""Prometheus metrics, in a registry per app (tests create many apps)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator
from typing import Protocol

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    ProcessCollector,
    disable_created_metrics,
)
from prometheus_client.core import InfoMetricFamily, Metric
from prometheus_client.registry import Collector

# The *_created series only add noise to every scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
# Stalls of the whole process: event-loop lag, garbage collections
_PAUSE_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 10.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# The front ends, the values of the `protocol` label: our own REST API (/predict, /v1/models),
# the Open Inference Protocol over HTTP and over gRPC, TensorFlow Serving's REST predict API.
PROTOCOLS = ("rest", "v2_http", "v2_grpc", "tf_serving")
# The values of imgserve_http_edge_refusals_total's `reason` label (app/edge.py's refusals).
EDGE_REFUSAL_REASONS = (
    "header_timeout",
    "header_too_large",
    "too_many_headers",
    "bad_host",
    "invalid",
    "connection_cap",
    "body_framing",
    "send_timeout",
)


class Metrics:
    """Every metric the service exports; names start with ``imgserve_``."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        r = self.registry
        self.requests = Counter(
            "imgserve_http_requests",
            "Requests by route, method, status and protocol (gRPC: route is the RPC, status its code name).",
            ["route", "method", "status", "protocol"],
            registry=r,
        )
        self.request_latency = Histogram(
            "imgserve_http_request_duration_seconds",
            "Time from request start to response end.",
            ["route", "method"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.images = Counter(
            "imgserve_images", "Images classified successfully, by protocol.", ["protocol"], registry=r
        )
        for protocol in PROTOCOLS:  # every series exists (at 0) from the start
            self.images.labels(protocol)
        self.batch_size = Histogram(
            "imgserve_batch_size", "Images per model run.", buckets=_BATCH_BUCKETS, registry=r
        )
        self.inference_seconds = Histogram(
            "imgserve_inference_duration_seconds",
            "Time of one batched model run.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.preprocess_seconds = Histogram(
            "imgserve_preprocess_duration_seconds",
            "Decode and preprocess time of one image.",
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.queue_images = Gauge(
            "imgserve_queue_images",
            "Images admitted and waiting (decoding or queued for a batch).",
            registry=r,
        )
        self.running_images = Gauge("imgserve_running_images", "Images in the batch now running.", registry=r)
        self.decoding_pixels = Gauge(
            "imgserve_decoding_pixels",
            "Pixels admitted for decoding and not yet decoded (the max_decoding_pixels budget).",
            registry=r,
        )
        self.buffered_body_bytes = Gauge(
            "imgserve_buffered_body_bytes",
            "Request body bytes held by requests in progress (the max_buffered_body_bytes budget).",
            registry=r,
        )
        self.ready = Gauge(
            "imgserve_ready", "1 when ready to serve, 0 while starting or draining.", registry=r
        )
        # By model and version: only versions served or draining have series (they are removed
        # on unload), so the cardinality is bounded by max_loaded_versions.
        version_labels = ["model", "version"]
        self.model_batch_size = Histogram(
            "imgserve_model_batch_size",
            "Images per model run, by model version.",
            version_labels,
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.model_inference_seconds = Histogram(
            "imgserve_model_inference_duration_seconds",
            "Time of one batched model run, by model version.",
            version_labels,
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.model_queue_images = Gauge(
            "imgserve_model_queue_images",
            "Images admitted and waiting, by model version.",
            version_labels,
            registry=r,
        )
        self.model_running_images = Gauge(
            "imgserve_model_running_images",
            "Images running now, by model version.",
            version_labels,
            registry=r,
        )
        self.model_requests_in_flight = Gauge(
            "imgserve_model_requests_in_flight",
            "Requests being classified, by model version (a retired version drains to 0).",
            version_labels,
            registry=r,
        )
        self.onnx_sessions = Gauge(
            "imgserve_onnx_sessions",
            "ONNX Runtime sessions alive in the process: served, loading or draining versions.",
            registry=r,
        )
        # The HTTP edge (app/edge.py): what it answers itself never reaches the request metrics.
        self.http_connections = Gauge(
            "imgserve_http_connections", "Open HTTP connections (max_connections caps them).", registry=r
        )
        self.edge_refusals = Counter(
            "imgserve_http_edge_refusals",
            "Requests answered by the HTTP edge itself, by reason: header_timeout (408), "
            "header_too_large or too_many_headers (431), bad_host or invalid (400), "
            "connection_cap (503).",
            ["reason"],
            registry=r,
        )
        for reason in EDGE_REFUSAL_REASONS:
            self.edge_refusals.labels(reason)
        # app/runtime_watch.py: what stalls the whole process
        self.event_loop_lag = Histogram(
            "imgserve_event_loop_lag_seconds",
            "How late the event loop ran a timer due every 100 ms: time it could serve nothing else.",
            buckets=_PAUSE_BUCKETS,
            registry=r,
        )
        self.gc_pause = Histogram(
            "imgserve_gc_pause_seconds",
            "Python's garbage collections, each one's duration (every thread waits), by generation.",
            ["generation"],
            buckets=_PAUSE_BUCKETS,
            registry=r,
        )
        for generation in ("0", "1", "2"):
            self.gc_pause.labels(generation)
        self._served: Callable[[], Iterable[ServedVersion]] = list
        r.register(_ModelInfoCollector(lambda: self._served()))

    def observe_request(self, route: str, method: str, status: str, protocol: str, seconds: float) -> None:
        self.requests.labels(route, method, status, protocol).inc()
        self.request_latency.labels(route, method).observe(seconds)

    def count_images(self, protocol: str, count: int) -> None:
        self.images.labels(protocol).inc(count)

    def observe_batch(self, size: int, seconds: float) -> None:
        self.batch_size.observe(size)
        self.inference_seconds.observe(seconds)

    def observe_preprocess(self, seconds: float) -> None:
        self.preprocess_seconds.observe(seconds)

    def track_queue(self, queued: Callable[[], float], running: Callable[[], float]) -> None:
        self.queue_images.set_function(queued)
        self.running_images.set_function(running)

    def track_budgets(self, decoding_pixels: Callable[[], float], body_bytes: Callable[[], float]) -> None:
        self.decoding_pixels.set_function(decoding_pixels)
        self.buffered_body_bytes.set_function(body_bytes)

    def track_served(
        self, served: Callable[[], Iterable[ServedVersion]], sessions: Callable[[], float]
    ) -> None:
        """``imgserve_model_info`` lists ``served()``; ``imgserve_onnx_sessions`` is ``sessions()``."""
        self._served = served
        self.onnx_sessions.set_function(sessions)

    # -- per model version (app.inference.control's VersionObserver) -------------------------------
    def for_version(self, model_name: str, version: str) -> VersionMetrics:
        return VersionMetrics(self, model_name, version)

    def track_version(self, model: TrackedVersion) -> None:
        labels = (model.name, model.version)
        self.model_queue_images.labels(*labels).set_function(lambda: model.queued_images)
        self.model_running_images.labels(*labels).set_function(lambda: model.running_images)
        self.model_requests_in_flight.labels(*labels).set_function(lambda: model.in_flight_requests)

    def forget_version(self, model: TrackedVersion) -> None:
        for metric in (
            self.model_batch_size,
            self.model_inference_seconds,
            self.model_queue_images,
            self.model_running_images,
            self.model_requests_in_flight,
        ):
            with contextlib.suppress(KeyError):  # never observed
                metric.remove(model.name, model.version)


class ServedVersion(Protocol):
    @property
    def name(self) -> str: ...
    @property
    def version(self) -> str: ...
    @property
    def execution_provider(self) -> str: ...
    @property
    def precision(self) -> str: ...


class TrackedVersion(ServedVersion, Protocol):
    @property
    def queued_images(self) -> int: ...
    @property
    def running_images(self) -> int: ...
    @property
    def in_flight_requests(self) -> int: ...


class VersionMetrics:
    """The process-wide batch metrics, plus the same labelled with one model version."""

    def __init__(self, metrics: Metrics, model_name: str, version: str) -> None:
        self._metrics = metrics
        self._batch_size = metrics.model_batch_size.labels(model_name, version)
        self._inference_seconds = metrics.model_inference_seconds.labels(model_name, version)

    def observe_batch(self, size: int, seconds: float) -> None:
        self._metrics.observe_batch(size, seconds)
        self._batch_size.observe(size)
        self._inference_seconds.observe(seconds)

    def observe_preprocess(self, seconds: float) -> None:
        self._metrics.observe_preprocess(seconds)


class _ModelInfoCollector(Collector):
    """``imgserve_model_info{name, version, provider, precision} 1`` for each version served."""

    def __init__(self, served: Callable[[], Iterable[ServedVersion]]) -> None:
        self._served = served

    def collect(self) -> Iterator[Metric]:
        family = InfoMetricFamily(
            "imgserve_model",
            "The model versions being served.",
            labels=["name", "version", "provider", "precision"],
        )
        for model in self._served():
            family.add_metric([model.name, model.version, model.execution_provider, model.precision], {})
        yield family

"""Prometheus metrics, in a registry per app (tests create many apps)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import (
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    Info,
    ProcessCollector,
    disable_created_metrics,
)

# The *_created series only add noise to every scrape.
disable_created_metrics()  # type: ignore[no-untyped-call]

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)

# The front ends, the values of the `protocol` label: our own REST API (/predict, /v1/models),
# the Open Inference Protocol over HTTP and over gRPC, TensorFlow Serving's REST predict API.
PROTOCOLS = ("rest", "v2_http", "v2_grpc", "tf_serving")


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
        self.ready = Gauge(
            "imgserve_ready", "1 when ready to serve, 0 while starting or draining.", registry=r
        )
        self.model = Info("imgserve_model", "The model being served.", registry=r)

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

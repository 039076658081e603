"""Prometheus metrics, one CollectorRegistry per app (tests build several apps).

``ServiceMetrics`` holds every metric object of one app: HTTP requests and latencies by route
template and status, inference batch sizes and latency, predictions by label. The predictor
(app/predictor.py) reports each model call through ``observe_batch``; routes and the
middleware below report the rest.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, Counter, Histogram
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)


class ServiceMetrics:
    """The metric objects of one app, registered in their own registry."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.http_requests = Counter(
            "radlens_http_requests",
            "HTTP requests by method, route template and status code.",
            ("method", "route", "status"),
            registry=self.registry,
        )
        self.http_latency = Histogram(
            "radlens_http_request_duration_seconds",
            "HTTP request latency by method, route template and status code.",
            ("method", "route", "status"),
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.inference_batch_size = Histogram(
            "radlens_inference_batch_size",
            "Images per model call (micro-batch size).",
            buckets=BATCH_BUCKETS,
            registry=self.registry,
        )
        self.inference_latency = Histogram(
            "radlens_inference_duration_seconds",
            "Wall time of one model call on one micro-batch.",
            buckets=LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.predictions = Counter(
            "radlens_predictions",
            "Predictions stored, by model and label (re-posted duplicates are not counted).",
            ("model", "label"),
            registry=self.registry,
        )

        self.gated_inputs = Counter(
            "radlens_gated_inputs",
            "Uploads the intended-use gate refused or flagged, by reason (outside-intended-use: "
            "DICOM metadata; out-of-distribution: the image score) and action.",
            ("reason", "action"),
            registry=self.registry,
        )

    def observe_batch(self, batch_size: int, seconds: float) -> None:
        """Record one model call: how many images it ran and how long it took."""
        self.inference_batch_size.observe(batch_size)
        self.inference_latency.observe(seconds)

    def observe_gated(self, reason: str, action: str) -> None:
        """Count one upload refused or flagged by the gate (app/gate.py)."""
        self.gated_inputs.labels(reason=reason, action=action).inc()

    def observe_prediction(self, model: str, label: str) -> None:
        self.predictions.labels(model=model, label=label).inc()


class MetricsMiddleware:
    """Count and time every HTTP request by its route template (never the raw path)."""

    def __init__(self, app: ASGIApp, *, metrics: ServiceMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500

        async def recording_send(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, recording_send)
        finally:
            route = getattr(scope.get("route"), "path", "<unmatched>")
            labels = {"method": scope.get("method", ""), "route": route, "status": str(status)}
            self.metrics.http_requests.labels(**labels).inc()
            self.metrics.http_latency.labels(**labels).observe(time.perf_counter() - start)

"""Prometheus metrics, one CollectorRegistry per app (tests build several apps).

``ServiceMetrics`` holds every metric object of one app: HTTP requests and latencies by route
template and status, inference batch sizes and latency, predictions by label, database errors
by problem code, whether the database stores predictions and GET /readyz's last answer
(never checked by a scrape itself: a scrape does not touch the database). The predictor
(app/predictor.py) reports each model call through ``observe_batch``; routes and the
middleware below report the rest.
"""

from __future__ import annotations

import functools
import re
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128)
SCORE_BUCKETS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1.0)


DATABASE_ERROR_CODES = (
    "database-unavailable",
    "database-full",
    "database-read-only",
    "database-io-error",
)

# radlens_dicom_outbox_enqueue_failures_total's label values (app/outbox.py raises them)
OUTBOX_KINDS = ("sr", "sc")
OUTBOX_FAILURE_REASONS = ("build", "spool", "database", "no-overlay", "error")


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

        # what a model owner watches (app/drift.py): scores per class, input metadata, drift
        self.prediction_scores = Histogram(
            "radlens_prediction_score",
            "Score of each class in each stored prediction, by model and class.",
            ("model", "class_name"),
            buckets=SCORE_BUCKETS,
            registry=self.registry,
        )
        self.inputs = Counter(
            "radlens_inputs",
            "Stored predictions by input format, modality, body part, photometric "
            "interpretation, size bucket (longest side) and manufacturer (a known vendor, "
            "other or unknown).",
            ("format", "modality", "body_part", "photometric", "size", "manufacturer"),
            registry=self.registry,
        )
        self.gated_inputs = Counter(
            "radlens_gated_inputs",
            "Uploads the intended-use gate refused or flagged, by reason (outside-intended-use: "
            "DICOM metadata; out-of-distribution: the image score) and action.",
            ("reason", "action"),
            registry=self.registry,
        )
        # what the SRE is paged by: the database refusing requests, and writes in particular
        self.database_errors = Counter(
            "radlens_database_errors",
            "Requests answered 503 because of the database, by problem code "
            "(database-unavailable, database-full, database-read-only).",
            ("code",),
            registry=self.registry,
        )
        # every code at 0 from the start: a series born at its first error, with a value that
        # was never 0 in Prometheus, shows no increase() for that error
        for code in DATABASE_ERROR_CODES:
            self.database_errors.labels(code=code)
        self.database_writable = Gauge(
            "radlens_database_writable",
            "0 while the database refuses to store predictions: the last write failed as a "
            "whole (full, read-only, failing storage) and no write probe of GET /readyz has "
            "passed since; else 1. Read from the writer's state at each scrape (no database "
            "access).",
            registry=self.registry,
        )
        self.database_writable.set(1)
        # GET /readyz's last answer. A scrape never checks readiness itself: it would wait for
        # the database (a host that does not answer held each scrape for the whole scrape
        # timeout, so every series was lost during the outage; QA 51)
        self.ready = Gauge(
            "radlens_ready",
            "1 when the last GET /readyz (the orchestrator's readiness probe) answered 200: "
            "model warmed up, database answering and storing; 0 when it answered 503. Set by "
            "GET /readyz only, never by a scrape; NaN until the process's first GET /readyz "
            "(radlens_ready_checked_timestamp_seconds says how old the answer is).",
            registry=self.registry,
        )
        self.ready.set(float("nan"))  # not known: neither == 0 (RadlensNotReady) nor == 1
        self.ready_checked = Gauge(
            "radlens_ready_checked_timestamp_seconds",
            "Unix time of the last GET /readyz, whose answer radlens_ready is (0: none yet).",
            registry=self.registry,
        )
        # results lost on the way to the PACS (app/ingest.py Ingestor._send_back): the
        # prediction is stored and answered 201, its SR or SC never queued (QA 54: a log line
        # was all that said so). One per destination's entry not written, as
        # radlens_dicom_outbox_pending counts the written ones (QA 68: a spool write failing
        # for a second destination lost the first one's count). Every series at 0 from the
        # start, as database_errors.
        self.outbox_enqueue_failures = Counter(
            "radlens_dicom_outbox_enqueue_failures",
            "Results (SR/SC objects) of stored predictions that could not be queued for a "
            "DICOM destination, one per destination that wanted it; not sent unless the "
            "instance is received again. By kind and reason (build: the object could not be "
            "built; spool: writing RADLENS_DICOM_OUTBOX_DIR failed; database: the stored "
            "overlay could not be read; no-overlay: no Grad-CAM overlay; error: other).",
            ("kind", "reason"),
            registry=self.registry,
        )
        for kind in OUTBOX_KINDS:
            for reason in OUTBOX_FAILURE_REASONS:
                self.outbox_enqueue_failures.labels(kind=kind, reason=reason)
        self.drift: Any = None  # app.drift.DriftMonitor, set once the model is loaded
        # () -> {queue name: items waiting}, set in the lifespan (predictor and writer queues)
        self.queue_depths: Callable[[], dict[str, int]] | None = None
        from radlens.app.drift import DriftCollector

        self.registry.register(DriftCollector(self))
        self.registry.register(QueueCollector(self))

    def observe_upload(self, model: str, scores: dict[str, Any], image: Any, label: str) -> None:
        """Record one stored prediction's scores and input (a PreprocessedImage) for the
        score histograms and the input counts (the drift window reads the database)."""
        for name, value in scores.items():
            self.prediction_scores.labels(model=model, class_name=name).observe(float(value))
        meta = image.metadata
        self.inputs.labels(
            format=meta.format,
            modality=modality_label(meta.modality),
            body_part=body_part_label(meta.body_part),
            photometric=photometric_label(meta.photometric_interpretation),
            size=size_bucket(meta.rows, meta.columns),
            manufacturer=manufacturer_label(getattr(meta, "manufacturer", None)),
        ).inc()

    def observe_readiness(self, ready: bool) -> None:
        """Record GET /readyz's answer (200: True, 503: False) and when, for radlens_ready."""
        self.ready.set(1 if ready else 0)
        self.ready_checked.set_to_current_time()

    def observe_batch(self, batch_size: int, seconds: float) -> None:
        """Record one model call: how many images it ran and how long it took."""
        self.inference_batch_size.observe(batch_size)
        self.inference_latency.observe(seconds)

    def observe_gated(self, reason: str, action: str) -> None:
        """Count one upload refused or flagged by the gate (app/gate.py)."""
        self.gated_inputs.labels(reason=reason, action=action).inc()

    def observe_prediction(self, model: str, label: str) -> None:
        self.predictions.labels(model=model, label=label).inc()


class QueueCollector(Collector):
    """``radlens_queue_depth{queue}``: items waiting in the bounded queues, read at scrape
    time (predictions: uploads waiting for a model call; writes: predictions waiting to be
    stored)."""

    def __init__(self, holder: ServiceMetrics) -> None:
        self.holder = holder

    def collect(self) -> Iterator[GaugeMetricFamily]:
        depths = self.holder.queue_depths
        if depths is None:
            return
        gauge = GaugeMetricFamily(
            "radlens_queue_depth",
            "Items waiting in a bounded queue (predictions: for the model; writes: to be stored).",
            labels=["queue"],
        )
        for name, depth in depths().items():
            gauge.add_metric([name], depth)
        yield gauge


SIZE_BUCKETS = (256, 512, 1024, 2048)


def size_bucket(rows: int, columns: int) -> str:
    """The image's longest side as a bucket label: "<256", "256-511", ..., ">=2048"."""
    side = max(rows, columns)
    low = 0
    for edge in SIZE_BUCKETS:
        if side < edge:
            return f"<{edge}" if low == 0 else f"{low}-{edge - 1}"
        low = edge
    return f">={SIZE_BUCKETS[-1]}"


# Manufacturer (0008,0070) is free text typed into each modality ("GE MEDICAL SYSTEMS",
# "G.E. Medical Systems", "GE Healthcare", ...): a label value per distinct string would grow
# without bound and could carry whatever someone typed. The label is one of these vendors (the
# first whose rule matches the normalised words), "other" or "unknown"; nothing else.
MANUFACTURERS: tuple[tuple[str, tuple[str, ...]], ...] = (
    # (label, words or word prefixes ending in "*"; "G E" is two words: G.E. normalised)
    ("ge", ("GE", "G E", "GEMS", "GENERAL ELECTRIC")),
    ("siemens", ("SIEMENS",)),
    ("philips", ("PHILIPS",)),
    ("canon", ("CANON", "TOSHIBA")),  # Toshiba Medical Systems is Canon Medical since 2018
    ("fujifilm", ("FUJI*",)),
    ("agfa", ("AGFA",)),
    ("carestream", ("CARESTREAM", "KODAK")),  # Kodak's medical imaging became Carestream
    ("konica-minolta", ("KONICA",)),
    ("hologic", ("HOLOGIC",)),
    ("samsung", ("SAMSUNG",)),
    ("hitachi", ("HITACHI", "ALOKA")),
    ("shimadzu", ("SHIMADZU",)),
    ("united-imaging", ("UIH", "UNITED IMAGING")),
    ("mindray", ("MINDRAY",)),
    ("esaote", ("ESAOTE",)),
)
MANUFACTURER_LABELS = (*(label for label, _ in MANUFACTURERS), "other", "unknown")
_MAX_MANUFACTURER_CHARS = 64  # the LO value representation's limit


def manufacturer_label(value: str | None) -> str:
    """The bounded label for a Manufacturer value: a vendor of :data:`MANUFACTURERS` (case,
    punctuation and spacing ignored: "G.E. Medical Systems" and "GE MEDICAL SYSTEMS" are both
    "ge"), "other" for any other text, "unknown" when absent or blank. Always one of
    :data:`MANUFACTURER_LABELS`, whatever the file holds."""
    return _vendor(str(value or "")[:_MAX_MANUFACTURER_CHARS])


@functools.lru_cache(maxsize=1024)  # a site sends a handful of distinct values, over and over
def _vendor(value: str) -> str:
    words = re.findall(r"[A-Z0-9]+", value.upper())
    if not words:
        return "unknown"
    spaced = f" {' '.join(words)} "  # whole words: " GE " is in it, "AGE" is not
    for label, needles in _MANUFACTURER_NEEDLES:
        if any(needle in spaced for needle in needles):
            return label
    return "other"


# each rule as a substring of the spaced words: " SIEMENS " (a word), " G E " (consecutive
# words), " FUJI" (a word prefix, from "FUJI*")
_MANUFACTURER_NEEDLES = tuple(
    (label, tuple(f" {rule[:-1]}" if rule.endswith("*") else f" {rule} " for rule in rules))
    for label, rules in MANUFACTURERS
)


# Photometric Interpretation's defined terms (PS3.3 C.7.6.3.1.2)
PHOTOMETRIC_INTERPRETATIONS = frozenset(
    {
        "MONOCHROME1",
        "MONOCHROME2",
        "PALETTE COLOR",
        "RGB",
        "HSV",
        "ARGB",
        "CMYK",
        "YBR_FULL",
        "YBR_FULL_422",
        "YBR_PARTIAL_422",
        "YBR_PARTIAL_420",
        "YBR_ICT",
        "YBR_RCT",
    }
)


def _known_or_other(value: str | None, known: str | None) -> str:
    """The label of a header value: ``known`` (a fixed vocabulary's term), "unknown" when the
    value is absent or blank, "other" for any other text: free text (a name typed into Body
    Part Examined) never becomes a label, and the series count cannot grow with the input."""
    if known is not None:
        return known
    return "other" if value is not None and str(value).strip(" \x00") else "unknown"


def modality_label(value: str | None) -> str:
    """A Modality's label: its DICOM term (CID 33, models/intended_use.py), or other/unknown."""
    from radlens.models.intended_use import normalise_modality

    return _known_or_other(value, normalise_modality(value))


def body_part_label(value: str | None) -> str:
    """A Body Part Examined's label: the canonical body part the gate reads (``thorax``,
    ``Chest_PA`` -> CHEST), or other/unknown."""
    from radlens.models.intended_use import normalise_body_part

    return _known_or_other(value, normalise_body_part(value))


def photometric_label(value: str | None) -> str:
    """A Photometric Interpretation's label: a defined term, or other/unknown."""
    text = str(value or "").strip(" \x00").upper()
    return _known_or_other(value, text if text in PHOTOMETRIC_INTERPRETATIONS else None)


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

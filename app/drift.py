"""Drift monitoring in the service: the recent stored predictions of the loaded model compared
with the reference distributions it carries (``metrics["drift_reference"]``, written at
training export; models/drift.py has the statistics).

The window is the database's, not one process's: the last ``RADLENS_DRIFT_WINDOW`` stored
predictions of the loaded model (name and version), whichever replica stored them, with their
scores, labels and the model input's intensity statistics (columns of 0014, written by
``Ingestor.prepare``). ``radlens drift --since`` reads the same rows (:func:`recent`). Nothing
is computed on the upload path beyond the two statistics: the PSI and KS statistics are
computed when /metrics is scraped (:class:`DriftCollector`, gauges ``radlens_drift_psi`` /
``radlens_drift_ks`` per feature) or when the summary is asked for (``GET /v1/drift``,
``/ui/drift``), and the summary is kept ``RADLENS_DRIFT_CACHE_S`` seconds so frequent scrapes
and page views cost one query per interval. Below :data:`MIN_SAMPLES` recent predictions (per
feature: predictions stored before 0014 have no input statistics) nothing is reported.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector
from sqlalchemy import select
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from radlens.models.decision import is_positive
from radlens.models.drift import PSI_DRIFT, compare
from radlens.models.manifest import ModelManifest

logger = logging.getLogger(__name__)

MIN_SAMPLES = 30
# Prediction column -> models/drift.input_features name
INPUT_COLUMNS = {
    "input_mean_intensity": "mean_intensity",
    "input_std_intensity": "std_intensity",
}


def reference_of(manifest: ModelManifest) -> dict[str, Any] | None:
    """The manifest's drift reference when it is one for these classes, else None (a model
    exported before references were written has none)."""
    reference = (manifest.metrics or {}).get("drift_reference")
    if not isinstance(reference, Mapping):
        return None
    scores = reference.get("scores")
    if not isinstance(scores, Mapping) or list(scores) != list(manifest.class_names):
        return None
    return dict(reference)


@dataclass(frozen=True)
class Recent:
    """Stored predictions of one model, newest first."""

    scores: np.ndarray  # (n, classes) in the manifest's class order
    features: list[dict[str, float]]  # input statistics; {} for a row stored before 0014
    labels: list[str]


def recent(
    session: Session,
    name: str,
    version: int,
    class_names: Sequence[str],
    *,
    limit: int,
    since: datetime | None = None,
) -> Recent:
    """The last ``limit`` stored predictions of model ``name:version`` (created at or after
    ``since`` when given): one indexed query (0014's (model, version, created_at) index)."""
    from radlens.app.tables import Prediction

    columns = [getattr(Prediction, column) for column in INPUT_COLUMNS]
    stmt = select(Prediction.scores, Prediction.label, *columns).where(
        Prediction.model_name == name, Prediction.model_version == version
    )
    if since is not None:
        stmt = stmt.where(Prediction.created_at >= since)
    stmt = stmt.order_by(Prediction.created_at.desc(), Prediction.id.desc()).limit(limit)
    rows = session.execute(stmt).all()
    scores = np.asarray(
        [[float(row.scores.get(c, 0.0)) for c in class_names] for row in rows], dtype=np.float64
    ).reshape(-1, len(class_names))
    features = [
        {
            feature: float(value)
            for column, feature in INPUT_COLUMNS.items()
            if (value := getattr(row, column)) is not None
        }
        for row in rows
    ]
    return Recent(scores=scores, features=features, labels=[str(row.label) for row in rows])


SCRAPE_WAIT_S = 1.0  # the longest a scrape waits for the drift query (DriftMonitor)


class DriftMonitor:
    """The loaded model's drift window, read from the database and summarised at most once
    per ``cache_seconds`` (0: at every call).

    A failed read is remembered for as long: within ``cache_seconds`` of it the same error is
    raised again at once, without the database. While PostgreSQL does not answer, each new
    connection waits ``RADLENS_DATABASE_CONNECT_TIMEOUT_S``; paid at every scrape, that wait
    would outlast Prometheus' scrape timeout (10 s by default) and lose every other series of
    the scrape, exactly when an operator needs them."""

    def __init__(
        self,
        manifest: ModelManifest,
        window: int,
        sessions: Callable[[], Session],
        *,
        cache_seconds: float = 0.0,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.model = manifest.ref
        self.name = manifest.name
        self.version = manifest.version
        self.class_names = list(manifest.class_names)
        # a multi-label model decides each finding at its own threshold
        self.finding_thresholds = (
            dict(manifest.finding_thresholds) if manifest.multi_label else None
        )
        self.reference = reference_of(manifest)
        self.window = window
        self.cache_seconds = cache_seconds
        self._sessions = sessions
        self._clock = clock
        self._cached: tuple[float, dict[str, Any]] | None = None
        self._failed: tuple[float, SQLAlchemyError] | None = None
        self._lock = threading.Lock()  # one query at a time: concurrent scrapes share it
        self._refresher: threading.Thread | None = None  # summary_for_scrape's refresh
        self._refresher_lock = threading.Lock()

    def summary(self) -> dict[str, Any]:
        """What an operator reads: per feature PSI/KS and drifted or not, label rates recent
        vs reference, and an overall status (no-reference, collecting, stable, drift).
        Raises the database's errors (SQLAlchemyError) when it cannot be read."""
        with self._lock:
            now = self._clock()
            if self._cached is not None and now - self._cached[0] < self.cache_seconds:
                return self._cached[1]
            if self._failed is not None and now - self._failed[0] < self.cache_seconds:
                raise self._failed[1].with_traceback(None)
            try:
                with self._sessions() as session:
                    rows = recent(
                        session, self.name, self.version, self.class_names, limit=self.window
                    )
            except SQLAlchemyError as exc:
                self._failed = (now, exc)
                raise
            self._failed = None
            out = summarise(
                self.reference,
                self.class_names,
                rows.scores,
                rows.features,
                rows.labels,
                finding_thresholds=self.finding_thresholds,
            )
            summary = {"model": self.model, "window": self.window, **out}
            self._cached = (now, summary)
            return summary

    def summary_for_scrape(self, wait_s: float = SCRAPE_WAIT_S) -> dict[str, Any] | None:
        """The summary for a Prometheus scrape, which waits at most ``wait_s`` for the
        database: a stale summary is refreshed in a thread (one at a time) and, when the
        database has not answered by then, the last summary is served (None before the
        first). A database host that accepts connections and never answers made every other
        scrape wait its connect timeout (10 s), past Prometheus' scrape timeout, losing every
        series exactly during the outage (QA round 51)."""
        cached = self._cached
        if cached is not None and self._clock() - cached[0] < self.cache_seconds:
            return cached[1]
        with self._refresher_lock:
            if self._refresher is None or not self._refresher.is_alive():
                self._refresher = threading.Thread(
                    target=self._refresh, name="radlens-drift-refresh", daemon=True
                )
                self._refresher.start()
            refresher = self._refresher
        refresher.join(wait_s)
        cached = self._cached
        return None if cached is None else cached[1]

    def _refresh(self) -> None:
        try:
            self.summary()
        except SQLAlchemyError as exc:  # a database outage: the last summary is served
            logger.warning("drift gauges not refreshed: %s", type(exc).__name__)


def summarise(
    reference: Mapping[str, Any] | None,
    class_names: Sequence[str],
    scores: np.ndarray,
    features: Sequence[Mapping[str, float]] | None,
    labels: Sequence[str],
    *,
    finding_thresholds: Mapping[str, float] | None = None,
) -> dict[str, Any]:
    """Recent scores (``(n, classes)``), input features (None: not known; a row's dict may
    lack a statistic, e.g. a prediction stored before 0014) and labels against
    ``reference``. A multi-label model (``finding_thresholds``: its manifest's) decides each
    finding at its own threshold: a finding's rate is the fraction of recent scores at or
    above it, as the reference's is on validation. Its stored label (the positive findings
    joined by ``|``, or ``"<n> findings"`` when they do not fit the column) equals no
    finding's name."""
    n = len(labels)
    out: dict[str, Any] = {
        "n": n,
        "min_samples": MIN_SAMPLES,
        "psi_threshold": PSI_DRIFT,
        "reference": None,
        "features": [],
        "label_rates": {},
        "drifted": [],
    }
    if finding_thresholds is None:
        recent_rates = {name: (labels.count(name) / n if n else None) for name in class_names}
    else:
        positive = is_positive(
            np.asarray(scores, dtype=np.float64).reshape(n, len(class_names)),
            np.asarray([finding_thresholds[name] for name in class_names]),
        )
        recent_rates = {
            name: (float(positive[:, j].mean()) if n else None)
            for j, name in enumerate(class_names)
        }
    if reference is None:
        out["status"] = "no-reference"
        out["label_rates"] = {
            name: {"recent": rate, "reference": None} for name, rate in recent_rates.items()
        }
        return out
    out["reference"] = {
        "split": reference.get("split", "val"),
        "split_size": reference.get("split_size"),
    }
    reference_rates = reference.get("label_rates", {})
    out["label_rates"] = {
        name: {"recent": recent_rates[name], "reference": reference_rates.get(name)}
        for name in class_names
    }
    if n < MIN_SAMPLES:
        out["status"] = "collecting"
        return out
    if features is None:  # compare the scores only
        reference = {key: value for key, value in reference.items() if key != "inputs"}
    else:  # an input statistic is compared only over enough rows that have it (0014 on)
        inputs = {
            name: spec
            for name, spec in reference.get("inputs", {}).items()
            if sum(name in f for f in features) >= MIN_SAMPLES
        }
        reference = {**reference, "inputs": inputs}
    comparisons = compare(reference, scores, features or [])
    out["features"] = [c.to_dict() for c in comparisons]
    out["drifted"] = [c.feature for c in comparisons if c.drifted]
    out["status"] = "drift" if out["drifted"] else "stable"
    return out


class DriftCollector(Collector):
    """Prometheus gauges computed at scrape time from a holder's ``drift`` monitor."""

    def __init__(self, holder: Any) -> None:
        self.holder = holder  # ServiceMetrics: its .drift is set once the model is loaded

    def describe(self) -> Sequence[GaugeMetricFamily]:
        return []  # collected only at scrape time (the model is not known at registration)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        monitor: DriftMonitor | None = getattr(self.holder, "drift", None)
        if monitor is None:
            return
        # a database outage must neither fail nor hold up the whole scrape: the last summary,
        # or no drift gauges until the first one
        summary = monitor.summary_for_scrape()
        if summary is None:
            return
        model = summary["model"]
        window = GaugeMetricFamily(
            "radlens_drift_window_inputs",
            "Stored predictions in the drift window (the model's last RADLENS_DRIFT_WINDOW, "
            "from every replica).",
            labels=["model"],
        )
        window.add_metric([model], summary["n"])
        yield window
        present = GaugeMetricFamily(
            "radlens_drift_reference_present",
            "1 when the loaded model's manifest carries a drift reference, else 0.",
            labels=["model"],
        )
        present.add_metric([model], 0 if summary["reference"] is None else 1)
        yield present
        rates = GaugeMetricFamily(
            "radlens_label_rate",
            "Fraction of each label: in the drift window (recent) and on the model's "
            "validation split (reference).",
            labels=["model", "label", "window"],
        )
        for label, pair in summary["label_rates"].items():
            for which in ("recent", "reference"):
                if pair[which] is not None:
                    rates.add_metric([model, label, which], pair[which])
        yield rates
        psi = GaugeMetricFamily(
            "radlens_drift_psi",
            "Population stability index of a feature (score:<class>, input:<statistic>) in "
            "the drift window vs the reference; >= 0.2 is a shift.",
            labels=["model", "feature"],
        )
        ks = GaugeMetricFamily(
            "radlens_drift_ks",
            "Kolmogorov-Smirnov statistic (binned) of a feature in the drift window vs the "
            "reference.",
            labels=["model", "feature"],
        )
        for comparison in summary["features"]:
            psi.add_metric([model, comparison["feature"]], comparison["psi"])
            ks.add_metric([model, comparison["feature"]], comparison["ks"])
        yield psi
        yield ks

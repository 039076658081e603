"""Drift monitoring in the service: a rolling window of recent uploads compared with the
reference distributions the loaded model carries (``metrics["drift_reference"]``, written at
training export; models/drift.py has the statistics).

Each stored prediction (``Ingestor.commit``, re-posts excluded) adds its scores, its label
and its model input's intensity statistics to the window (the last ``RADLENS_DRIFT_WINDOW``
uploads of this process). Nothing is computed on the upload path beyond that: the PSI and KS
statistics are computed when /metrics is scraped (:class:`DriftCollector`, gauges
``radlens_drift_psi`` / ``radlens_drift_ks`` per feature) or when the summary is asked for
(``GET /v1/drift``, ``/ui/drift``). Below :data:`MIN_SAMPLES` recent uploads the statistics
are not reported (too few to mean anything).
"""

from __future__ import annotations

import threading
from collections import deque
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import numpy as np
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from radlens.models.drift import PSI_DRIFT, compare, input_features
from radlens.models.manifest import ModelManifest

MIN_SAMPLES = 30


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


class DriftMonitor:
    """The recent uploads of one model and their comparison with its reference."""

    def __init__(self, manifest: ModelManifest, window: int) -> None:
        self.model = manifest.ref
        self.class_names = list(manifest.class_names)
        self.reference = reference_of(manifest)
        self.window = window
        self._scores: deque[list[float]] = deque(maxlen=window)
        self._features: deque[dict[str, float]] = deque(maxlen=window)
        self._labels: deque[str] = deque(maxlen=window)
        self._lock = threading.Lock()

    def observe(self, scores: Mapping[str, float], pixels: np.ndarray, label: str) -> None:
        """Add one stored prediction (its scores by class, model input, label)."""
        row = [float(scores.get(name, 0.0)) for name in self.class_names]
        features = input_features(pixels)
        with self._lock:
            self._scores.append(row)
            self._features.append(features)
            self._labels.append(label)

    def _snapshot(self) -> tuple[np.ndarray, list[dict[str, float]], list[str]]:
        with self._lock:
            return (
                np.asarray(list(self._scores), dtype=np.float64).reshape(-1, len(self.class_names)),
                list(self._features),
                list(self._labels),
            )

    def summary(self) -> dict[str, Any]:
        """What an operator reads: per feature PSI/KS and drifted or not, label rates recent
        vs reference, and an overall status (no-reference, collecting, stable, drift)."""
        scores, features, labels = self._snapshot()
        out = summarise(self.reference, self.class_names, scores, features, labels)
        return {"model": self.model, "window": self.window, **out}


def summarise(
    reference: Mapping[str, Any] | None,
    class_names: Sequence[str],
    scores: np.ndarray,
    features: Sequence[Mapping[str, float]] | None,
    labels: Sequence[str],
) -> dict[str, Any]:
    """Recent scores (``(n, classes)``), input features (None: not known, e.g. read back from
    the database, which keeps none) and labels against ``reference``."""
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
    recent_rates = {name: (labels.count(name) / n if n else None) for name in class_names}
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
        summary = monitor.summary()
        model = summary["model"]
        window = GaugeMetricFamily(
            "radlens_drift_window_inputs",
            "Recent stored predictions in the drift window (at most RADLENS_DRIFT_WINDOW).",
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

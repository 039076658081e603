"""Drift monitoring through the running service: a tiny model whose manifest carries a
reference built from its own scores on a set of images; uploads like those keep every
statistic low, brighter uploads move the input statistic over the threshold — in
GET /v1/drift, on /metrics and on /ui/drift. The window is the database's: two apps on one
database (replicas) see each other's uploads. Plus the score histograms and input counts."""

from __future__ import annotations

import contextlib
import io
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.app.conftest import TestClient, make_settings, save_tiny_model

WINDOW = 40


def _png(rng: np.random.Generator, brightness: float = 0.0) -> bytes:
    from PIL import Image

    base = rng.uniform(0.25, 0.55)
    pixels = np.clip(base + rng.normal(0, 0.08, size=(32, 32)) + brightness, 0, 1)
    buffer = io.BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _reference(rng: np.random.Generator) -> dict[str, Any]:
    """The reference the tiny model's export would write: its scores on 300 images."""
    import keras

    from radlens.models.drift import build_reference
    from radlens.models.preprocessing import preprocess
    from tests.app.conftest import build_tiny_model

    keras.utils.set_random_seed(7)  # the same weights save_tiny_model stores
    model = build_tiny_model()
    pixels = np.stack([preprocess(_png(rng), size=(32, 32)).pixels for _ in range(300)])
    scores = model.predict(pixels[..., np.newaxis], verbose=0)
    return build_reference(scores, pixels, ["normal", "abnormal"], 0.5)


@pytest.fixture(scope="session")  # trained once: see tests/app/conftest.py databases
def watched_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store with the tiny model "watched" whose manifest carries a drift reference."""
    store = tmp_path_factory.mktemp("drift") / "store"
    reference = _reference(np.random.default_rng(0))
    save_tiny_model(store, name="watched", metrics={"val": {}, "drift_reference": reference})
    return store


@pytest.fixture(scope="module")
def drift_client(
    watched_store: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[TestClient]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = f"sqlite:///{tmp_path_factory.mktemp('drift-db') / 'drift.db'}"
    upgrade(url)
    app = create_app(make_settings(url, watched_store, drift_window=WINDOW, drift_cache_s=0))
    with TestClient(app) as client:
        yield client


def _post_all(client: TestClient, images: list[bytes]) -> None:
    for data in images:
        response = client.post("/v1/predictions", files={"file": ("x.png", data, "image/png")})
        assert response.status_code == 201, response.text


def _gauge(text: str, name: str, feature: str) -> float:
    match = re.search(rf'^{name}\{{feature="{feature}",model="watched:1"\}} (\S+)$', text, re.M)
    assert match, text
    return float(match.group(1))


def test_drift_summary_stays_low_then_moves_with_a_shifted_stream(
    drift_client: TestClient,
) -> None:
    first = drift_client.get("/v1/drift").json()
    assert first["status"] == "collecting" and first["n"] == 0
    assert first["reference"] == {"split": "val", "split_size": 300}
    # the window is the database's stored predictions, not this process's uploads (QA 19)
    collecting = drift_client.get("/ui/drift").text
    assert "Status: collecting." in collecting
    assert "stored predictions of this model: too few to compare" in collecting

    rng = np.random.default_rng(1)
    _post_all(drift_client, [_png(rng) for _ in range(WINDOW)])
    stable = drift_client.get("/v1/drift").json()
    assert stable["n"] == WINDOW
    psi = {f["feature"]: f["psi"] for f in stable["features"]}
    assert stable["status"] == "stable", stable
    assert psi["input:mean_intensity"] < 0.2
    metrics = drift_client.get("/metrics").text
    assert _gauge(metrics, "radlens_drift_psi", "input:mean_intensity") < 0.2
    assert 'radlens_drift_window_inputs{model="watched:1"} 40.0' in metrics

    _post_all(drift_client, [_png(rng, brightness=0.3) for _ in range(WINDOW)])
    shifted = drift_client.get("/v1/drift").json()
    assert shifted["status"] == "drift"
    assert "input:mean_intensity" in shifted["drifted"]
    metrics = drift_client.get("/metrics").text
    assert _gauge(metrics, "radlens_drift_psi", "input:mean_intensity") > 0.2
    assert _gauge(metrics, "radlens_drift_ks", "input:mean_intensity") > 0.5
    page = drift_client.get("/ui/drift")
    assert page.status_code == 200 and "Status: drift." in page.text
    assert "input:mean_intensity" in page.text


def test_score_histograms_and_input_counts(drift_client: TestClient) -> None:
    _post_all(drift_client, [_png(np.random.default_rng(9))])
    metrics = drift_client.get("/metrics").text
    assert re.search(
        r'^radlens_prediction_score_count\{class_name="abnormal",model="watched:1"\} \d+',
        metrics,
        re.M,
    )
    assert re.search(
        r'^radlens_inputs_total\{body_part="unknown",format="png",manufacturer="unknown",'
        r'modality="unknown",photometric="unknown",size="<256"\} \d+',
        metrics,
        re.M,
    )
    assert re.search(
        r'^radlens_label_rate\{label="normal",model="watched:1",window="reference"\}', metrics, re.M
    )


def _with_manufacturer(value: str) -> bytes:
    import pydicom

    from tests.app.conftest import dicom_bytes

    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(seed=3)))
    ds.Manufacturer = value
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


def test_input_counts_carry_a_bounded_manufacturer(drift_client: TestClient) -> None:
    """A real GE CT counts as manufacturer="ge"; free text (here identifying-looking) counts
    as "other" and never appears on /metrics."""
    from pydicom.data import get_testdata_file

    junk = "Doe^Jane St Elsewhere Scanner 4"
    for name, data in (
        ("ct.dcm", Path(str(get_testdata_file("CT_small.dcm"))).read_bytes()),
        ("junk.dcm", _with_manufacturer(junk)),
    ):
        response = drift_client.post(
            "/v1/predictions", files={"file": (name, data, "application/dicom")}
        )
        assert response.status_code == 201, response.text
    metrics = drift_client.get("/metrics").text
    inputs = [line for line in metrics.splitlines() if line.startswith("radlens_inputs_total{")]
    values = {re.search(r'manufacturer="([^"]*)"', line).group(1) for line in inputs}  # type: ignore[union-attr]
    assert {"ge", "other"} <= values, inputs
    assert any('manufacturer="ge",modality="CT"' in line for line in inputs), inputs
    assert "Doe" not in metrics and "Elsewhere" not in metrics


def test_a_model_without_a_reference_says_so(tmp_path: Path) -> None:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    save_tiny_model(tmp_path / "store", name="old")
    url = f"sqlite:///{tmp_path / 'o.db'}"
    upgrade(url)
    with TestClient(create_app(make_settings(url, tmp_path / "store"))) as client:
        summary = client.get("/v1/drift").json()
        assert summary["status"] == "no-reference" and summary["features"] == []
        assert 'radlens_drift_reference_present{model="old:1"} 0.0' in client.get("/metrics").text
        assert "holds no reference distribution" in client.get("/ui/drift").text


def test_size_buckets() -> None:
    from radlens.app.metrics import size_bucket

    assert [size_bucket(r, 10) for r in (64, 256, 511, 1024, 2047, 4096)] == [
        "<256",
        "256-511",
        "256-511",
        "1024-2047",
        "1024-2047",
        ">=2048",
    ]


REPO = Path(__file__).resolve().parents[2]
_SERIES = re.compile(r"\bradlens_[a-z0-9_]+")


def _exported(text: str) -> set[str]:
    return {
        line.split("{", 1)[0].split(" ", 1)[0]
        for line in text.splitlines()
        if line and not line.startswith("#")
    }


def test_dashboard_and_alert_rules_name_series_that_metrics_exports(
    drift_client: TestClient,
) -> None:
    """monitoring/grafana/radlens.json and monitoring/prometheus/alerts.yml query only series
    the service exports (after uploads, with a model that has a reference): a renamed metric
    fails here, not silently on an operator's empty panel."""
    import json

    import yaml

    rng = np.random.default_rng(11)
    _post_all(drift_client, [_png(rng) for _ in range(WINDOW)])
    exported = _exported(drift_client.get("/metrics").text)
    dashboard = json.loads((REPO / "monitoring" / "grafana" / "radlens.json").read_text())
    queries = [t["expr"] for p in dashboard["panels"] for t in p["targets"]]
    rules = yaml.safe_load((REPO / "monitoring" / "prometheus" / "alerts.yml").read_text())
    alerts = {r["alert"]: r["expr"] for g in rules["groups"] for r in g["rules"]}
    assert {
        "RadlensDrift",
        "RadlensHighErrorRate",
        "RadlensHighLatency",
        "RadlensQueueBacklog",
    } <= set(alerts)
    used = {name for expr in [*queries, *alerts.values()] for name in _SERIES.findall(expr)}
    assert len(used) >= 12, used
    assert used <= exported, sorted(used - exported)
    assert "Not for clinical use".lower() in dashboard["description"].lower()


# --- the window comes from the database (replicas) -------------------------------------


def test_replicas_on_one_database_share_the_drift_window(
    watched_store: Path, migrated_database_url: str
) -> None:
    """Two apps on one database (SQLite and PostgreSQL), as replicas behind a load balancer:
    uploads to one show in the other's GET /v1/drift and radlens_drift_* gauges, and the
    stored rows carry the input statistics that make that possible."""
    from radlens.app.main import create_app

    def settings() -> Any:
        return make_settings(
            migrated_database_url, watched_store, drift_window=WINDOW, drift_cache_s=0
        )

    with (
        TestClient(create_app(settings())) as first,
        TestClient(create_app(settings())) as second,
    ):
        rng = np.random.default_rng(21)
        _post_all(first, [_png(rng) for _ in range(WINDOW)])
        seen = second.get("/v1/drift").json()
        assert seen["n"] == WINDOW and seen["status"] == "stable", seen
        assert {f["feature"] for f in seen["features"]} >= {"input:mean_intensity"}
        assert f'radlens_drift_window_inputs{{model="watched:1"}} {WINDOW}.0' in (
            second.get("/metrics").text
        )

        _post_all(second, [_png(rng, brightness=0.3) for _ in range(WINDOW)])
        moved = first.get("/v1/drift").json()
        assert moved["status"] == "drift" and "input:mean_intensity" in moved["drifted"]
        assert _gauge(first.get("/metrics").text, "radlens_drift_psi", "input:mean_intensity") > 0.2


def _store_rows(url: str, means: list[float | None]) -> None:
    from radlens.app.db import make_engine, make_sessionmaker
    from tests.app.conftest import prediction_row

    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            for i, mean in enumerate(means):
                row = prediction_row(f"sha256:{i}-{mean}-{np.random.default_rng().random()}")
                row.model_name, row.scores = "watched", {"normal": 0.6, "abnormal": 0.4}
                row.input_mean_intensity = mean
                row.input_std_intensity = None if mean is None else 0.08
                session.add(row)
            session.commit()
    finally:
        engine.dispose()


@contextlib.contextmanager
def _monitor(url: str, store: Path, **kwargs: Any) -> Iterator[Any]:
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.drift import DriftMonitor
    from radlens.models.registry import ModelRegistry

    manifest = ModelRegistry(store).check_seal("watched", 1)
    engine = make_engine(url)
    try:
        yield DriftMonitor(manifest, WINDOW, make_sessionmaker(engine), **kwargs)
    finally:
        engine.dispose()


def test_the_summary_is_cached_for_cache_seconds(
    watched_store: Path, migrated_database_url: str
) -> None:
    """Within RADLENS_DRIFT_CACHE_S a summary is reused (one query per interval, whatever the
    scrape rate); after it, the database is read again."""
    now = [0.0]
    url = migrated_database_url
    with _monitor(url, watched_store, cache_seconds=10, clock=lambda: now[0]) as monitor:
        assert monitor.summary()["n"] == 0
        _store_rows(url, [0.4] * 5)
        now[0] = 9.9
        assert monitor.summary()["n"] == 0
        now[0] = 10.0
        assert monitor.summary()["n"] == 5


def test_a_failed_read_is_not_retried_within_cache_seconds(
    watched_store: Path, migrated_database_url: str
) -> None:
    """While the database does not answer, scrapes within RADLENS_DRIFT_CACHE_S of the failure
    get the error at once instead of each waiting for a connection; then it is tried again."""
    from sqlalchemy.exc import OperationalError

    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.drift import DriftMonitor
    from radlens.models.registry import ModelRegistry

    now = [0.0]
    engine = make_engine(migrated_database_url)
    working = make_sessionmaker(engine)
    down = [True]
    opened = []

    def sessions() -> Any:
        opened.append(now[0])
        if down[0]:
            raise OperationalError("SELECT 1", {}, Exception("connection timeout expired"))
        return working()

    manifest = ModelRegistry(watched_store).check_seal("watched", 1)
    monitor = DriftMonitor(manifest, WINDOW, sessions, cache_seconds=10, clock=lambda: now[0])
    try:
        with pytest.raises(OperationalError):
            monitor.summary()
        now[0] = 9.9
        with pytest.raises(OperationalError, match="connection timeout expired"):
            monitor.summary()
        assert opened == [0.0]  # the second scrape did not wait for the database
        down[0] = False
        now[0] = 10.0
        assert monitor.summary()["n"] == 0
        assert opened == [0.0, 10.0]
    finally:
        engine.dispose()


def test_rows_without_input_statistics_compare_scores_only(
    watched_store: Path, migrated_database_url: str
) -> None:
    """Predictions stored before 0014 (no input statistics) count for the scores and labels;
    an input statistic is compared only once MIN_SAMPLES rows carry it, and the window is the
    newest RADLENS_DRIFT_WINDOW rows."""
    _store_rows(migrated_database_url, [None] * WINDOW)
    with _monitor(migrated_database_url, watched_store) as monitor:
        summary = monitor.summary()
        assert summary["n"] == WINDOW
        assert {f["feature"] for f in summary["features"]} == {"score:normal", "score:abnormal"}
        _store_rows(migrated_database_url, [0.9] * 30)  # newer: 30 with statistics, 10 without
        summary = monitor.summary()
    features = {f["feature"]: f for f in summary["features"]}
    assert summary["n"] == WINDOW and features["input:mean_intensity"]["n"] == 30
    assert "input:mean_intensity" in summary["drifted"]


def test_a_database_outage_leaves_the_drift_gauges_out_of_the_scrape(
    watched_store: Path, tmp_path: Path
) -> None:
    """The drift query failing does not fail /metrics: the other series are still served."""
    from prometheus_client import generate_latest

    from radlens.app.metrics import ServiceMetrics

    metrics = ServiceMetrics()
    with _monitor(f"sqlite:///{tmp_path / 'never-migrated.db'}", watched_store) as monitor:
        metrics.drift = monitor
        metrics.observe_prediction("watched:1", "normal")
        text = generate_latest(metrics.registry).decode()
    assert "radlens_predictions_total" in text and "radlens_drift_" not in text


def test_a_multi_label_models_rates_are_per_finding_at_its_threshold() -> None:
    """A multi-label prediction's label is its positive findings joined by '|' (or "<n>
    findings"): every finding's recent rate read 0, since no label equals a finding's name
    (QA round 12). Each finding is decided at its own threshold, as the reference is."""
    from radlens.app.drift import summarise

    names = ["Cardiomegaly", "Effusion", "Infiltration"]
    scores = np.array([[0.1, 0.9, 0.6], [0.2, 0.7, 0.1], [0.1, 0.1, 0.1], [0.8, 0.5, 0.2]])
    labels = ["Effusion|Infiltration", "Effusion", "No Finding", "2 findings"]
    thresholds = {"Cardiomegaly": 0.5, "Effusion": 0.5, "Infiltration": 0.6}
    out = summarise(None, names, scores, None, labels, finding_thresholds=thresholds)
    assert {name: rate["recent"] for name, rate in out["label_rates"].items()} == {
        "Cardiomegaly": 0.25,
        "Effusion": 0.75,
        "Infiltration": 0.25,
    }
    # a single-label model's rates are its labels'
    single = summarise(None, ["a", "b"], scores[:, :2], None, ["a", "b", "b", "a"])
    assert single["label_rates"]["a"]["recent"] == 0.5


def test_a_database_that_does_not_answer_does_not_hold_up_the_scrape(
    watched_store: Path, migrated_database_url: str
) -> None:
    """A database host that accepts connections and never answers: the scrape waits at most
    SCRAPE_WAIT_S for the drift query, then serves the other series (before: the whole connect
    timeout at every other scrape, past Prometheus' scrape timeout: every series lost, QA round
    51). Once the query answers, the next scrape has the drift gauges."""
    import threading

    from prometheus_client import generate_latest

    from radlens.app.metrics import ServiceMetrics

    answering = threading.Event()
    metrics = ServiceMetrics()
    with _monitor(migrated_database_url, watched_store) as monitor:
        real_sessions = monitor._sessions

        def sessions() -> Any:  # the first query hangs until the database "answers"
            answering.wait(timeout=60)
            return real_sessions()

        monitor._sessions = sessions
        metrics.drift = monitor
        metrics.observe_prediction("watched:1", "normal")
        scraped: list[str] = []
        scrape = threading.Thread(
            target=lambda: scraped.append(generate_latest(metrics.registry).decode())
        )
        scrape.start()
        scrape.join(timeout=30)  # a hang check, not a timing: the query waits 60 s
        try:
            assert scraped, "the scrape waited for the database"
            assert "radlens_predictions_total" in scraped[0]
            assert "radlens_drift_" not in scraped[0]  # no summary yet
        finally:
            answering.set()
        assert monitor._refresher is not None
        monitor._refresher.join(timeout=30)
        text = generate_latest(metrics.registry).decode()
    assert "radlens_drift_window_inputs" in text

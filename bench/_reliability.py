"""Shared parts of the reliability benches (bench/soak.py, bench/db_outage.py,
bench/kill_during_writes.py, bench/fuzz_upload.py): a small model in a temporary store, the
real service in a subprocess (uvicorn, loopback only), fresh uploads, /proc readings and a
private throwaway PostgreSQL cluster.

Not a test and not imported by the service. Authentication: the service runs with API keys
on (the default); :func:`prepare_database` migrates the bench database and creates a key with
`radlens keys create --json` (the CLI users run), and the benches send it as
``Authorization: Bearer <key>``.
"""

from __future__ import annotations

import asyncio
import contextlib
import glob
import io
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

REPO_ROOT = Path(__file__).resolve().parents[1]
MODEL_NAME = "bench-reliability"


# --- model -------------------------------------------------------------------------------------


def save_small_model(store: Path, architecture: str = "simple_cnn", size: int = 64) -> str:
    """A small model (weights=None, 2 classes) saved through models.registry; returns its ref."""
    import keras

    from radlens.models.architectures import build_model
    from radlens.models.registry import ModelRegistry

    keras.utils.set_random_seed(0)
    manifest = ModelRegistry(store).save(
        build_model(architecture, input_shape=(size, size, 1), num_classes=2),
        name=MODEL_NAME,
        architecture=architecture,
        class_names=["normal", "abnormal"],
        threshold=0.5,
        window=None,
        filters=[],
        metrics={},
        training_config={},
        data_fingerprint=None,
        description=f"bench reliability: {architecture} at {size} px",
    )
    return f"{manifest.name}:{manifest.version}"


# --- uploads -----------------------------------------------------------------------------------


_UID_TEMPLATE = "2.25." + "1" * 38  # 43 characters; replaced by same-length UIDs


def _fresh_uid() -> str:
    return "2.25." + str(uuid.uuid4().int % 10**38).zfill(38)


def dicom_template(size: int = 64) -> bytes:
    """A small CT instance whose SOP Instance UID is a placeholder of fixed length."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(_UID_TEMPLATE)
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = "2.25.9" + "0" * 30
    ds.SeriesInstanceUID = "2.25.8" + "0" * 30
    ds.Modality = "CT"
    ds.Rows = size
    ds.Columns = size
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    rng = np.random.default_rng(0)
    ds.PixelData = rng.integers(0, 4096, size=(size, size), dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class Uploads:
    """Distinct uploads: random 8-bit PNGs and DICOMs with a fresh SOP Instance UID, so the
    service's de-duplication never answers from the database instead of predicting."""

    def __init__(self, size: int = 64, seed: int = 0) -> None:
        self.template = dicom_template(size)
        self.rng = np.random.default_rng(seed)
        self.size = size
        self.count = 0

    def next(self) -> tuple[str, bytes]:
        from PIL import Image

        self.count += 1
        if self.count % 4 == 0:
            uid = _fresh_uid()
            return "image.dcm", self.template.replace(_UID_TEMPLATE.encode(), uid.encode())
        array = self.rng.integers(0, 256, size=(self.size, self.size), dtype=np.uint8)
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format="PNG")
        return "image.png", buf.getvalue()


def auth_headers(api_key: str | None) -> dict[str, str]:
    return {"Authorization": f"Bearer {api_key}"} if api_key else {}


def prepare_database(database_url: str) -> str:
    """Migrate the database to head and create an API key (scopes predict,read) with the CLI;
    returns the key."""
    import json

    from radlens.app.migrate import upgrade

    upgrade(database_url)
    cmd = [
        sys.executable, "-m", "radlens.cli.main", "keys", "create", "--name", "bench",
        "--scopes", "predict,read", "--database-url", database_url, "--json",
    ]  # fmt: skip
    done = subprocess.run(cmd, cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)
    if done.returncode != 0:
        raise RuntimeError(f"radlens keys create failed: {done.stderr.strip()[-500:]}")
    return str(json.loads(done.stdout.strip().splitlines()[-1])["key"])


# --- the service -------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class ServiceProcess:
    proc: subprocess.Popen[bytes]
    base: str
    log_path: Path
    log_file: Any

    @property
    def pid(self) -> int:
        return self.proc.pid


def start_service(
    tmp: Path, store: Path, ref: str, database_url: str, **env_overrides: str
) -> ServiceProcess:
    """uvicorn app.main:create_app on a free loopback port (the same app `radlens serve` runs)."""
    port = free_port()
    env = dict(os.environ)
    env.update(
        RADLENS_DATABASE_URL=database_url,
        RADLENS_MODEL_STORE=str(store),
        RADLENS_MODEL=ref,
        RADLENS_DEVICE="cpu",
        RADLENS_LOG_LEVEL="warning",
        TF_CPP_MIN_LOG_LEVEL="2",
        CUDA_VISIBLE_DEVICES="",
    )
    env.update(env_overrides)
    cmd = [
        sys.executable, "-m", "uvicorn", "radlens.app.main:create_app", "--factory",
        "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning", "--no-access-log",
    ]  # fmt: skip
    log_path = tmp / f"service-{port}.log"
    log = open(log_path, "wb")  # noqa: SIM115 - closed by stop_service
    proc = subprocess.Popen(cmd, cwd=REPO_ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    return ServiceProcess(proc, f"http://127.0.0.1:{port}", log_path, log)


def stop_service(service: ServiceProcess) -> None:
    proc = service.proc
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # graceful: lifespan stop
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)
    service.log_file.close()


async def wait_ready(service: ServiceProcess, timeout_s: float = 120.0) -> float:
    import httpx

    t0 = time.perf_counter()
    async with httpx.AsyncClient(base_url=service.base, timeout=5.0) as client:
        while time.perf_counter() - t0 < timeout_s:
            if service.proc.poll() is not None:
                tail = service.log_path.read_text(errors="replace")[-2000:]
                raise RuntimeError(f"the service exited ({service.proc.returncode}):\n{tail}")
            try:
                if (await client.get("/readyz")).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.25)
    raise RuntimeError(f"the service was not ready within {timeout_s:.0f} s")


async def assert_auth_enforced(service: ServiceProcess) -> None:
    """The service refuses an upload without a key (401): the bench really runs with auth on."""
    import httpx

    async with httpx.AsyncClient(base_url=service.base, timeout=10.0) as client:
        response = await client.post("/v1/predictions", files={"file": ("a.png", b"x")})
    if response.status_code != 401:
        raise RuntimeError(f"expected 401 without an API key, got {response.status_code}")


def rss_bytes(pid: int) -> int:
    """Resident memory of the process now (VmRSS from /proc)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError(f"no VmRSS for pid {pid}")


def is_problem(response: Any) -> bool:
    return str(response.headers.get("content-type", "")).startswith("application/problem+json")


# --- a private throwaway PostgreSQL ------------------------------------------------------------


def _pg_bin(tool: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
    if not found:
        raise RuntimeError(f"no {tool} under /usr/lib/postgresql/*/bin (PostgreSQL server tools)")
    return found[-1]


def _as_postgres(cmd: list[str]) -> list[str]:
    # initdb and postgres refuse to run as root
    if os.geteuid() != 0:
        return cmd
    return ["runuser", "-u", "postgres", "--", *cmd]


@dataclass
class PrivatePostgres:
    """A PostgreSQL cluster in a temporary directory on its own port (never the shared 5432)."""

    datadir: Path
    port: int
    log: Path

    @property
    def url(self) -> str:
        return f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"

    def _ctl(self, *args: str, timeout: float = 60.0) -> None:
        cmd = _as_postgres([_pg_bin("pg_ctl"), "-D", str(self.datadir), *args])
        subprocess.run(cmd, check=True, timeout=timeout, capture_output=True)

    def start(self) -> None:
        self._ctl("-l", str(self.log), "-w", "-t", "60", "start")

    def stop(self, mode: str = "fast") -> None:
        self._ctl("-m", mode, "-w", "-t", "60", "stop")


@contextlib.contextmanager
def private_postgres() -> Iterator[PrivatePostgres]:
    """initdb into a temp dir, start on a free port, yield, then stop and delete everything."""
    root = Path(tempfile.mkdtemp(prefix="radlens-pg-"))
    os.chmod(root, 0o777)
    datadir = root / "data"
    port = free_port()
    pg = PrivatePostgres(datadir, port, root / "postgres.log")
    if os.geteuid() == 0:
        shutil.chown(root, "postgres", "postgres")
    subprocess.run(
        _as_postgres(
            [_pg_bin("initdb"), "-D", str(datadir), "-U", "postgres", "-A", "trust", "--no-sync"]
        ),
        check=True,
        capture_output=True,
        timeout=120,
    )
    with open(datadir / "postgresql.conf", "a") as conf:
        conf.write(
            f"\nport = {port}\nlisten_addresses = '127.0.0.1'\n"
            f"unix_socket_directories = '{root}'\nfsync = on\n"
        )
    if os.geteuid() == 0:
        shutil.chown(datadir / "postgresql.conf", "postgres", "postgres")
    try:
        pg.start()
        yield pg
    finally:
        with contextlib.suppress(Exception):
            pg.stop("immediate")
        shutil.rmtree(root, ignore_errors=True)

"""Service test fixtures: a tiny real model, SQLite and PostgreSQL databases built by the
migrations, and one running app (lifespan included) per database backend.

The PostgreSQL variant creates a uniquely named database on 127.0.0.1:5432 for the test
session and drops it afterwards; it is skipped, with the reason, only when the server cannot
be reached.
"""

from __future__ import annotations

import io
import shutil
import subprocess
import sys
import uuid
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest

with warnings.catch_warnings():
    # starlette.testclient warns at import when the `httpx2` package is absent (we pin httpx).
    warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
    from fastapi.testclient import TestClient

PG_ADMIN_URL = "postgresql://postgres@127.0.0.1:5432/test"
PG_SQLALCHEMY = "postgresql+psycopg://postgres@127.0.0.1:5432/{database}"
CLASS_NAMES = ["normal", "abnormal"]

# Limits small enough to test cheaply, large enough for every real test file.
TEST_MAX_UPLOAD_BYTES = 8 * 1024 * 1024
TEST_MAX_PIXELS = 4_000_000


# --- the model ------------------------------------------------------------------------


def build_tiny_model() -> Any:
    """A small CNN on 32x32x1 input, 2-class softmax (weights random: the tests check the
    service, not diagnostic quality)."""
    try:
        from radlens.models.architectures import build_model
    except ImportError:  # models/architectures.py not merged yet: same contract, by hand
        import keras

        inputs = keras.Input((32, 32, 1))
        x = keras.layers.Conv2D(4, 3, activation="relu")(inputs)
        x = keras.layers.GlobalAveragePooling2D()(x)
        outputs = keras.layers.Dense(2, activation="softmax")(x)
        return keras.Model(inputs, outputs)
    return build_model("simple_cnn", input_shape=(32, 32, 1), num_classes=2)


def save_tiny_model(store: Path, name: str = "tiny", **overrides: Any) -> Any:
    import keras

    from radlens.models.registry import ModelRegistry

    keras.utils.set_random_seed(7)
    fields: dict[str, Any] = {
        "architecture": "simple_cnn",
        "class_names": CLASS_NAMES,
        "threshold": 0.5,
        "window": None,
        "filters": [],
        "metrics": {"val": {"auc": 0.5}},
        "training_config": {"note": "test fixture"},
        "data_fingerprint": None,
    }
    fields.update(overrides)
    return ModelRegistry(store).save(build_tiny_model(), name=name, **fields)


@pytest.fixture(scope="session")
def model_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    store = tmp_path_factory.mktemp("store")
    save_tiny_model(store)
    return store


# --- databases ------------------------------------------------------------------------


def postgres_available() -> str | None:
    """None when the server answers, else the reason it does not."""
    try:
        import psycopg

        with psycopg.connect(PG_ADMIN_URL, connect_timeout=3):
            return None
    except Exception as exc:  # any failure to connect means: skip, with the reason
        return f"PostgreSQL on 127.0.0.1:5432 unreachable: {type(exc).__name__}: {exc}"


@dataclass
class Databases:
    """Creates empty databases of one backend; drops what it created at the end."""

    backend: str
    tmp: Path
    created: list[str]
    template: str | None = None  # a database this session upgraded to head (see migrated)

    def new(self, template: str | None = None) -> str:
        """A new empty database, or a copy of ``template`` (a database name or SQLite URL)."""
        if self.backend == "sqlite":
            url = f"sqlite:///{self.tmp / f'{uuid.uuid4().hex}.db'}"
            if template is not None:
                shutil.copyfile(_sqlite_path(template), _sqlite_path(url))
            return url
        import psycopg

        name = f"radlens_test_{uuid.uuid4().hex[:16]}"
        copy = "" if template is None else f' TEMPLATE "{template}"'
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"{copy}')
        self.created.append(name)
        return PG_SQLALCHEMY.format(database=name)

    def migrated(self) -> str:
        """A new database at the migrations' head. The session's first is upgraded by the
        migrations (``app.migrate.upgrade``), kept unused as a template, and every later one is
        its copy (the same tables, indexes, constraints and alembic_version row, no other
        rows): CREATE DATABASE ... TEMPLATE on PostgreSQL, a copy of the file on SQLite,
        rather than the migrations run again for each test (a test of the migrations
        themselves starts from ``new()``)."""
        from radlens.app.migrate import upgrade

        if self.template is None:
            url = self.new()
            upgrade(url)  # its engine is disposed: no connection left on the template
            if self.backend == "sqlite":
                # SQLite checkpointed its WAL when the last connection closed: the file is all
                wal = _sqlite_path(url).with_name(_sqlite_path(url).name + "-wal")
                assert not wal.exists() or wal.stat().st_size == 0, wal
                self.template = url
            else:
                self.template = url.rsplit("/", 1)[1]
        return self.new(template=self.template)

    def drop_all(self) -> None:
        """Drop the databases this instance created, in a detached process that no test waits
        for: PostgreSQL checkpoints at every DROP DATABASE (seconds each on a loaded machine),
        and the drops run side by side there so that one checkpoint serves several."""
        if not self.created:
            return
        # sh starts the dropper in the background and exits at once: the dropper, in a
        # session of its own, outlives the test session (and is no child left running)
        command = [sys.executable, "-c", _DROP_DATABASES, PG_ADMIN_URL, *self.created]
        subprocess.run(
            ["sh", "-c", '"$@" &', "sh", *command],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
            check=True,
        )
        self.created.clear()


_DROP_DATABASES = """
import sys
from concurrent.futures import ThreadPoolExecutor

import psycopg

def drop(name):
    with psycopg.connect(sys.argv[1], autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')

with ThreadPoolExecutor(8) as pool:
    list(pool.map(drop, sys.argv[2:]))
"""


def _sqlite_path(url: str) -> Path:
    return Path(url.removeprefix("sqlite:///"))


# Session-scoped and parametrised: pytest groups the whole run by backend, so a module whose
# tests use it is visited twice (its SQLite tests, other modules, then its PostgreSQL tests) and
# its module-scoped fixtures are built once per visit. A fixture that trains a model and needs
# no database is therefore session-scoped in its module ("trained once": built once per run).
@pytest.fixture(
    scope="session", params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]
)
def databases(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Databases]:
    backend = request.param
    if backend == "postgresql":
        reason = postgres_available()
        if reason is not None:
            pytest.skip(reason)
    dbs = Databases(backend, tmp_path_factory.mktemp(f"db-{backend}"), [])
    try:
        yield dbs
    finally:
        dbs.drop_all()


@pytest.fixture()
def empty_database_url(databases: Databases) -> str:
    return databases.new()


@pytest.fixture()
def migrated_database_url(databases: Databases) -> str:
    return databases.migrated()


# --- the running service --------------------------------------------------------------


def make_settings(database_url: str, store: Path, **overrides: Any) -> Any:
    from radlens.app.settings import Settings

    values: dict[str, Any] = {
        "database_url": database_url,
        "model_store": store,
        "device": "cpu",
        "max_batch_size": 4,
        "max_batch_wait_ms": 2.0,
        "batch_tuning": "off",  # batches up to max_batch_size; tuning: tests/app/test_predictor.py
        "max_upload_bytes": TEST_MAX_UPLOAD_BYTES,
        "max_pixels": TEST_MAX_PIXELS,
        # apps built ad hoc test other things; the `service` fixture and test_auth.py use keys
        "auth": "disabled",
    }
    values.update(overrides)
    return Settings(**values)


def prediction_row(dedupe_key: str) -> Any:
    """An unsaved ``app.tables.Prediction`` of the tiny model, for database-level tests."""
    from radlens.app.tables import Prediction

    return Prediction(
        id=uuid.uuid4(),
        model_name="tiny",
        model_version=1,
        preprocessing_version="1",
        device="/CPU:0",
        label="normal",
        scores={"normal": 0.9, "abnormal": 0.1},
        threshold=0.5,
        inference_ms=1.0,
        batch_size=1,
        dedupe_key=dedupe_key,
        input_sha256="0" * 64,
        input_format="dicom",
        rows=8,
        columns=8,
        frames=1,
    )


def create_api_key(database_url: str, scopes: str = "predict,read", name: str = "test") -> str:
    """Store a new API key in a migrated database and return the full key."""
    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.keys import create_key

    engine = make_engine(database_url)
    try:
        with make_sessionmaker(engine)() as session:
            key = create_key(session, name=name, scopes=scopes)
            session.commit()
            return key.secret
    finally:
        engine.dispose()


@dataclass
class Service:
    """A running app and a way to read its predictions table directly."""

    client: TestClient
    app: Any
    database_url: str
    backend: str
    api_key: str | None = None  # the client sends it by default (all scopes)

    def rows(self) -> list[dict[str, Any]]:
        """Every row of every table, read with plain SQL (not through the ORM)."""
        from sqlalchemy import inspect, text

        engine = self.app.state.resources.engine
        dump: list[dict[str, Any]] = []
        with engine.connect() as conn:
            for table in inspect(conn).get_table_names():
                result = conn.execute(text(f'SELECT * FROM "{table}"'))
                dump.extend({"table": table, **row} for row in result.mappings())
        return dump

    def count(self) -> int:
        from sqlalchemy import func, select

        from radlens.app.tables import Prediction

        with self.app.state.resources.sessionmaker() as session:
            return int(session.scalar(select(func.count()).select_from(Prediction)) or 0)

    def post(self, data: bytes, filename: str = "image.bin", **kwargs: Any) -> Any:
        return self.client.post(
            "/v1/predictions",
            files={"file": (filename, data, "application/octet-stream")},
            **kwargs,
        )


@pytest.fixture(scope="session")
def service(databases: Databases, model_store: Path) -> Iterator[Service]:
    """One app per backend for the session, started through its real lifespan."""
    from radlens.app.main import create_app

    url = databases.migrated()
    key = create_api_key(url)
    app = create_app(make_settings(url, model_store, auth="enabled"))
    with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:
        yield Service(
            client=client, app=app, database_url=url, backend=databases.backend, api_key=key
        )


@pytest.fixture()
def signed_in_ui(service: Service) -> Iterator[TestClient]:
    """The service's client logged in to the /ui pages with its key (no /ui cookies before or
    after)."""
    from tests.app.test_ui import login

    service.client.cookies.clear()
    login(service.client, service.api_key or "")
    yield service.client
    service.client.cookies.clear()


def ui_detail_text(ui: TestClient, prediction_id: str) -> str:
    """A prediction's /ui detail page, its whitespace runs made one space."""
    import re

    page = ui.get(f"/ui/predictions/{prediction_id}")
    assert page.status_code == 200, page.text
    return re.sub(r"\s+", " ", page.text)


# --- images ---------------------------------------------------------------------------


def png_bytes(seed: int | None = None, size: tuple[int, int] = (48, 40)) -> bytes:
    """A random 8-bit gray PNG (distinct bytes per seed: a new instance for dedupe)."""
    from PIL import Image

    rng = np.random.default_rng(seed if seed is not None else uuid.uuid4().int % 2**32)
    array = rng.integers(0, 256, size=size, dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    return buf.getvalue()


def new_uid() -> str:
    return f"2.25.{uuid.uuid4().int}"


def dicom_bytes(
    *,
    study: str | None = None,
    series: str | None = None,
    sop: str | None = None,
    rows: int = 16,
    columns: int = 16,
    pixels: bool = True,
    transfer_syntax: str | None = None,
    patient: dict[str, str] | None = None,
    seed: int = 0,
    instance: int | str | None = None,
) -> bytes:
    """A small CT instance written by pydicom (Explicit VR Little Endian by default);
    ``instance``: its Instance Number (absent when None)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import UID, CTImageStorage, ExplicitVRLittleEndian

    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = UID(sop or new_uid())
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = meta.MediaStorageSOPInstanceUID
    ds.StudyInstanceUID = study or new_uid()
    ds.SeriesInstanceUID = series or new_uid()
    ds.Modality = "CT"
    if instance is not None:
        ds.InstanceNumber = instance
    for keyword, value in (patient or {}).items():
        setattr(ds, keyword, value)
    ds.Rows = rows
    ds.Columns = columns
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleSlope = 1
    ds.RescaleIntercept = -1024
    if pixels:
        rng = np.random.default_rng(seed)
        ds.PixelData = rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16).tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    if transfer_syntax is not None:
        # rewrite the meta header's UID in place (same length keeps the group length valid)
        old = str(ExplicitVRLittleEndian).encode()
        new = transfer_syntax.encode().ljust(len(old), b"\0")[: len(old)]
        data = data.replace(old, new, 1)
    return data


ProblemCheck = Callable[..., dict[str, Any]]


def upload_scope(
    boundary: str, length: int, *, key: str | None = None, path: str = "/v1/predictions"
) -> dict[str, Any]:
    """The ASGI scope of a multipart/form-data POST of ``length`` bytes, for tests that feed a
    body chunk by chunk (stalls, disconnects, concurrent uploads) through ``app(scope, ...)``."""
    headers = [
        (b"host", b"testserver"),
        (b"content-type", f"multipart/form-data; boundary={boundary}".encode()),
        (b"content-length", str(length).encode()),
    ]
    if key is not None:
        headers.append((b"authorization", f"Bearer {key}".encode()))
    return {
        "type": "http",
        "asgi": {"version": "3.0", "spec_version": "2.3"},
        "http_version": "1.1",
        "method": "POST",
        "scheme": "http",
        "path": path,
        "raw_path": path.encode(),
        "query_string": b"",
        "root_path": "",
        "headers": headers,
        "client": ("127.0.0.1", 50000),
        "server": ("testserver", 80),
        "state": {},
    }


def app_client(databases: Databases, model_store: Path, **overrides: Any) -> Iterator[Any]:
    """A migrated database of the backend and an app on it built with ``overrides`` (started
    through its lifespan); yields ``(client, app)``. For fixtures that need a setting the
    session's ``service`` does not have."""
    from radlens.app.main import create_app

    url = databases.migrated()
    app = create_app(make_settings(url, model_store, **overrides))
    with TestClient(app) as client:
        yield client, app


def assert_problem(response: Any, status: int, *, code: str | None = None) -> dict[str, Any]:
    """The response is an RFC 9457 problem with a useful title; returns its body."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/problem+json")
    body = response.json()
    assert body["status"] == status
    assert body["type"].startswith("urn:radlens:problem:")
    if code is not None:
        assert body["type"] == f"urn:radlens:problem:{code}", body
    assert len(body["title"]) > 15 and body["title"][0].isupper(), body
    assert body["detail"], body
    assert body["instance"].startswith("/")
    return body

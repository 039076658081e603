"""Start-up: a missing, corrupt or incompatible model or an un-migrated database stops the
service with a message naming which and why; SQLite is migrated automatically."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from radlens.app.errors import DatabaseNotMigratedError, DatabaseUnavailableError
from radlens.models.errors import ModelCorruptError, ModelIncompatibleError, ModelNotFoundError
from tests.app.conftest import Databases, TestClient, make_settings, postgres_available


def start(settings: object) -> None:
    from radlens.app.main import create_app

    with TestClient(create_app(settings)) as client:  # type: ignore[arg-type]
        assert client.get("/readyz").status_code == 200


@pytest.fixture()
def store_copy(model_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(model_store, copy)
    return copy


def version_dir(store: Path) -> Path:
    return store / "tiny" / "1"


def reseal(store: Path) -> None:
    """Seal a deliberate manifest edit (`radlens models seal`), as an operator would."""
    from radlens.models.registry import ModelRegistry

    ModelRegistry(store).seal("tiny:1")


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'radlens.db'}"


class TestModelProblems:
    def test_empty_store(self, sqlite_url: str, tmp_path: Path) -> None:
        with pytest.raises(ModelNotFoundError, match="holds no models"):
            start(make_settings(sqlite_url, tmp_path / "empty-store"))

    def test_unknown_model_name_names_the_known_ones(
        self, sqlite_url: str, model_store: Path
    ) -> None:
        with pytest.raises(ModelNotFoundError, match=r"'chest'.*tiny"):
            start(make_settings(sqlite_url, model_store, model="chest"))

    def test_unknown_version(self, sqlite_url: str, model_store: Path) -> None:
        with pytest.raises(ModelNotFoundError, match="no version 9"):
            start(make_settings(sqlite_url, model_store, model="tiny:9"))

    def test_altered_model_file_is_corrupt(self, sqlite_url: str, store_copy: Path) -> None:
        with open(version_dir(store_copy) / "model.keras", "ab") as fh:
            fh.write(b"tampered")
        with pytest.raises(ModelCorruptError, match="sha256"):
            start(make_settings(sqlite_url, store_copy))

    def test_unreadable_model_with_matching_hash_is_corrupt(
        self, sqlite_url: str, store_copy: Path
    ) -> None:
        from radlens.models.registry import file_sha256

        model_file = version_dir(store_copy) / "model.keras"
        model_file.write_bytes(b"this is not a keras archive")
        manifest_path = version_dir(store_copy) / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["model_sha256"] = file_sha256(model_file)
        manifest_path.write_text(json.dumps(manifest))
        reseal(store_copy)
        with pytest.raises(ModelCorruptError, match="Keras could not load"):
            start(make_settings(sqlite_url, store_copy))

    def test_other_preprocessing_version_is_incompatible(
        self, sqlite_url: str, store_copy: Path
    ) -> None:
        manifest_path = version_dir(store_copy) / "manifest.json"
        manifest = json.loads(manifest_path.read_text())
        manifest["preprocessing_version"] = "0-old"
        manifest_path.write_text(json.dumps(manifest))
        reseal(store_copy)
        with pytest.raises(ModelIncompatibleError, match="0-old"):
            start(make_settings(sqlite_url, store_copy))

    def test_preflight_finds_the_same_problems_without_keras(
        self, sqlite_url: str, store_copy: Path
    ) -> None:
        from radlens.app.migrate import head_revision
        from radlens.app.startup import check_model, preflight

        settings = make_settings(sqlite_url, store_copy)
        report = preflight(settings)
        assert (report.model.ref, report.schema_revision) == ("tiny:1", head_revision())
        with open(version_dir(store_copy) / "model.keras", "ab") as fh:
            fh.write(b"tampered")
        with pytest.raises(ModelCorruptError, match="sha256"):
            check_model(settings)
        with pytest.raises(ModelNotFoundError):
            check_model(make_settings(sqlite_url, store_copy, model="nope"))


class TestDatabaseAtStartUp:
    def test_sqlite_is_created_and_migrated_automatically(
        self, sqlite_url: str, model_store: Path, tmp_path: Path
    ) -> None:
        from sqlalchemy import create_engine, inspect

        assert not (tmp_path / "var").exists()
        start(make_settings(sqlite_url, model_store))
        engine = create_engine(sqlite_url)
        try:
            assert "predictions" in inspect(engine).get_table_names()
        finally:
            engine.dispose()

    @pytest.mark.postgres
    def test_unmigrated_postgres_refuses_to_start(self, model_store: Path, tmp_path: Path) -> None:
        reason = postgres_available()
        if reason is not None:
            pytest.skip(reason)
        databases = Databases("postgresql", tmp_path, [])
        try:
            url = databases.new()
            with pytest.raises(
                DatabaseNotMigratedError, match=r"none \(empty\).*radlens db upgrade"
            ):
                start(make_settings(url, model_store))
        finally:
            databases.drop_all()

    def test_unreachable_database(self, model_store: Path) -> None:
        url = "postgresql+psycopg://postgres@127.0.0.1:1/nothing"
        with pytest.raises(DatabaseUnavailableError, match=r"127\.0\.0\.1:1/"):
            start(make_settings(url, model_store))


def test_expected_startup_failure_reaches_the_server_as_one_line(tmp_path: Path) -> None:
    """What uvicorn logs when the lifespan fails: one line for an expected failure."""
    import anyio

    from radlens.app.main import create_app

    app = create_app(make_settings(f"sqlite:///{tmp_path / 'r.db'}", tmp_path / "no-store"))
    sent: list[dict[str, object]] = []

    async def receive() -> dict[str, object]:
        return {"type": "lifespan.startup"}

    async def send(message: dict[str, object]) -> None:
        sent.append(message)

    async def run() -> None:
        scope = {"type": "lifespan", "asgi": {"version": "3.0"}, "state": {}}
        with pytest.raises(ModelNotFoundError):
            await app(scope, receive, send)  # type: ignore[arg-type]

    anyio.run(run)
    (failed,) = [m for m in sent if m["type"] == "lifespan.startup.failed"]
    text = str(failed["message"])
    assert text.startswith("radlens: error: No such model")
    assert "\n" not in text and "Traceback" not in text


def test_notice_is_dropped_only_for_a_clinically_validated_model(
    store_copy: Path, sqlite_url: str
) -> None:
    from radlens.app.main import create_app
    from tests.app.conftest import png_bytes

    manifest_path = version_dir(store_copy) / "manifest.json"
    manifest = json.loads(manifest_path.read_text())
    manifest["validated_for_clinical_use"] = True
    manifest_path.write_text(json.dumps(manifest))
    reseal(store_copy)
    with TestClient(create_app(make_settings(sqlite_url, store_copy))) as client:
        created = client.post("/v1/predictions", files={"file": ("a.png", png_bytes())})
        assert created.status_code == 201
        assert created.json()["notice"] is None
        (model,) = client.get("/v1/models").json()["models"]
        assert model["validated_for_clinical_use"] is True and model["notice"] is None


class TestStoreAtStartUp:
    def test_missing_store_names_the_variable_and_what_to_do(
        self, sqlite_url: str, tmp_path: Path
    ) -> None:
        from radlens.app.startup import check_model

        missing = tmp_path / "nonexistent"
        with pytest.raises(ModelNotFoundError) as info:
            check_model(make_settings(sqlite_url, missing))
        text = str(info.value)
        assert f"RADLENS_MODEL_STORE={missing}" in text and "does not exist" in text
        assert "radlens train" in text and not missing.exists()

    def test_empty_store_names_the_variable(self, sqlite_url: str, tmp_path: Path) -> None:
        from radlens.app.startup import check_model

        empty = tmp_path / "empty"
        empty.mkdir()
        with pytest.raises(ModelNotFoundError, match="holds no models") as info:
            check_model(make_settings(sqlite_url, empty))
        assert f"RADLENS_MODEL_STORE={empty}" in str(info.value)


class TestListenersAndSpoolsInTheLifespan:
    """What the pre-flight of `radlens serve` checks, found again by the lifespan (another
    launcher, or a port taken between the pre-flight and the bind): a RadlensError naming the
    variable, which the server reports in one line, and what was started is stopped."""

    def _fails(self, settings: object, match: str) -> None:
        import threading
        import time

        from radlens.models.errors import ConfigurationError

        before = set(threading.enumerate())
        with pytest.raises(ConfigurationError, match=match):
            start(settings)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            left = [t for t in set(threading.enumerate()) - before if t.is_alive()]
            if not left:
                break
            time.sleep(0.05)
        assert not left, left

    def test_dimse_bind_that_does_not_resolve(self, sqlite_url: str, model_store: Path) -> None:
        settings = make_settings(sqlite_url, model_store, dimse_port=0, dimse_bind="not-an-ip")
        self._fails(settings, r"RADLENS_DIMSE_BIND='not-an-ip'")

    def test_dimse_port_in_use(self, sqlite_url: str, model_store: Path) -> None:
        import socket

        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen(1)
            port = busy.getsockname()[1]
            settings = make_settings(sqlite_url, model_store, dimse_port=port)
            self._fails(settings, rf"RADLENS_DIMSE_PORT={port}.*already in use")

    def test_dimse_inbox_under_a_file(
        self, sqlite_url: str, model_store: Path, tmp_path: Path
    ) -> None:
        (tmp_path / "afile").write_text("x")
        inbox = tmp_path / "afile" / "inbox"
        settings = make_settings(
            sqlite_url, model_store, dimse_port=0, dimse_ack="queued", dimse_inbox_dir=inbox
        )
        self._fails(settings, rf"RADLENS_DIMSE_INBOX_DIR='{inbox}'.*Not a directory")

    def test_outbox_under_a_file(self, sqlite_url: str, model_store: Path, tmp_path: Path) -> None:
        (tmp_path / "afile").write_text("x")
        outbox = tmp_path / "afile" / "outbox"
        settings = make_settings(
            sqlite_url,
            model_store,
            dicom_destinations="PACS@127.0.0.1:8725/sr",
            dicom_outbox_dir=outbox,
        )
        self._fails(settings, rf"RADLENS_DICOM_OUTBOX_DIR='{outbox}'.*Not a directory")

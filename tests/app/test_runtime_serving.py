"""The service on a converted model: RADLENS_RUNTIME / RADLENS_PRECISION pick OpenVINO or
TensorFlow, /readyz and each prediction say which, bad converted files stop or fall back."""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import numpy as np
import pytest
from pydantic import ValidationError

from radlens.models.errors import ModelCorruptError, RuntimeUnavailableError
from radlens.models.runtime import bf16_supported, openvino_version, recorded_parity
from tests.app.conftest import TestClient, make_settings, png_bytes, save_tiny_model
from tests.conftest import shared_data_path

pytestmark = pytest.mark.skipif(openvino_version() is None, reason="openvino not installed")


def parity_images() -> tuple[np.ndarray, np.ndarray]:
    """PneumoniaMNIST validation images at the tiny model's 32 px (real pixels, real labels)."""
    from radlens.models.preprocessing import preprocess_array

    path = shared_data_path("pneumoniamnist", "pneumoniamnist_28_trainval.npz")
    with np.load(path) as data:
        images, labels = data["val_images"][:128], data["val_labels"][:128].reshape(-1)
    batch = np.stack([preprocess_array(im, size=(32, 32)) for im in images])[..., None]
    return batch.astype(np.float32), labels


@pytest.fixture(scope="module")
def converted_store(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from radlens.models.registry import ModelRegistry
    from radlens.models.runtime import add_openvino_runtime

    store = tmp_path_factory.mktemp("converted")
    save_tiny_model(store)
    images, labels = parity_images()
    add_openvino_runtime(ModelRegistry(store), "tiny:1", images=images, labels=labels)
    return store


@pytest.fixture()
def store_copy(converted_store: Path, tmp_path: Path) -> Path:
    copy = tmp_path / "store"
    shutil.copytree(converted_store, copy)
    return copy


@pytest.fixture()
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'var' / 'radlens.db'}"


def openvino_file(store: Path, name: str) -> Path:
    (found,) = (store / "tiny" / "1").glob(f"openvino-*/{name}")
    return found


class TestServing:
    def test_openvino_fp32_serves_records_and_explains(
        self, sqlite_url: str, converted_store: Path
    ) -> None:
        from radlens.app.main import create_app

        settings = make_settings(sqlite_url, converted_store, runtime="openvino", precision="fp32")
        with TestClient(create_app(settings)) as client:
            ready = client.get("/readyz").json()
            assert (ready["runtime"], ready["precision"]) == ("openvino", "fp32")
            assert ready["parity"]["n"] == 128 and ready["parity"]["flips"] == 0
            assert "RADLENS_RUNTIME=openvino" in ready["runtime_reason"]
            created = client.post(
                "/v1/predictions",
                files={"file": ("a.png", png_bytes(seed=3))},
                params={"explain": "true"},  # Grad-CAM still runs on the Keras model
            )
            assert created.status_code == 201, created.text
            body = created.json()
            assert (body["runtime"], body["precision"]) == ("openvino", "fp32")
            again = client.get(f"/v1/predictions/{body['id']}").json()
            assert (again["runtime"], again["precision"]) == ("openvino", "fp32")
            heatmap = client.get(f"/v1/predictions/{body['id']}/heatmap")
            assert heatmap.status_code == 200
            assert heatmap.headers["content-type"] == "image/png"

    def test_scores_match_tensorflow(self, sqlite_url: str, converted_store: Path) -> None:
        from radlens.app.main import create_app

        scores = {}
        for runtime in ("tensorflow", "openvino"):
            settings = make_settings(
                f"{sqlite_url}-{runtime}", converted_store, runtime=runtime, precision="fp32"
            )
            with TestClient(create_app(settings)) as client:
                body = client.post(
                    "/v1/predictions", files={"file": ("a.png", png_bytes(seed=5))}
                ).json()
                assert (body["runtime"], body["precision"]) == (runtime, "fp32")
                scores[runtime] = body["scores"]
        for name, value in scores["tensorflow"].items():
            assert scores["openvino"][name] == pytest.approx(value, abs=1e-5)

    def test_auto_picks_by_cpu_and_recorded_parity(
        self, sqlite_url: str, converted_store: Path
    ) -> None:
        from radlens.app.main import create_app
        from radlens.models.registry import ModelRegistry
        from radlens.models.runtime import Tolerance

        manifest = ModelRegistry(converted_store).read_manifest("tiny", 1)
        bf16 = recorded_parity(manifest, "bf16")
        expected = "bf16" if bf16_supported() and bf16 and Tolerance().allows(bf16) else "fp32"
        with TestClient(create_app(make_settings(sqlite_url, converted_store))) as client:
            ready = client.get("/readyz").json()
        assert (ready["runtime"], ready["precision"]) == ("openvino", expected)

    def test_unconverted_model_auto_keeps_tensorflow(
        self, sqlite_url: str, model_store: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        from radlens.app.main import create_app

        with (
            caplog.at_level(logging.INFO),
            TestClient(create_app(make_settings(sqlite_url, model_store))) as client,
        ):
            ready = client.get("/readyz").json()
            body = client.post("/v1/predictions", files={"file": ("a.png", png_bytes())}).json()
        assert (ready["runtime"], ready["precision"], ready["parity"]) == (
            "tensorflow",
            "fp32",
            None,
        )
        assert (body["runtime"], body["precision"]) == ("tensorflow", "fp32")
        assert "no converted openvino runtime" in caplog.text
        assert "runtime tensorflow fp32" in caplog.text  # the start-up line


class TestBadConvertedFiles:
    def test_altered_file_with_explicit_openvino_stops_start_up(
        self, sqlite_url: str, store_copy: Path
    ) -> None:
        from radlens.app.startup import preflight

        with open(openvino_file(store_copy, "model.bin"), "ab") as fh:
            fh.write(b"\0")
        settings = make_settings(sqlite_url, store_copy, runtime="openvino")
        with pytest.raises(RuntimeUnavailableError, match=r"sha256 of .*model\.bin"):
            preflight(settings)

    def test_missing_file_with_auto_falls_back_logged(
        self, sqlite_url: str, store_copy: Path, caplog: pytest.LogCaptureFixture
    ) -> None:
        from radlens.app.main import create_app

        openvino_file(store_copy, "model.xml").unlink()
        with (
            caplog.at_level(logging.WARNING),
            TestClient(create_app(make_settings(sqlite_url, store_copy))) as client,
        ):
            ready = client.get("/readyz").json()
        assert (ready["runtime"], ready["precision"]) == ("tensorflow", "fp32")
        assert "model.xml" in ready["runtime_reason"] and "is missing" in ready["runtime_reason"]
        assert "serving with TensorFlow fp32" in caplog.text

    def test_unreadable_ir_with_matching_hash(self, sqlite_url: str, store_copy: Path) -> None:
        """Corrupt content that the manifest vouches for (re-sealed): OpenVINO's own error."""
        import json

        from radlens.app.predictor import load_predictor
        from radlens.models.registry import ModelRegistry, file_sha256

        xml = openvino_file(store_copy, "model.xml")
        xml.write_text("<net broken")
        path = store_copy / "tiny" / "1" / "manifest.json"
        data = json.loads(path.read_text())
        (key,) = [k for k in data["runtimes"]["openvino"]["files"] if k.endswith("model.xml")]
        data["runtimes"]["openvino"]["files"][key] = file_sha256(xml)
        path.write_text(json.dumps(data))
        ModelRegistry(store_copy).seal("tiny:1")
        explicit = make_settings(sqlite_url, store_copy, runtime="openvino", precision="fp32")
        with pytest.raises(ModelCorruptError, match="OpenVINO could not load"):
            load_predictor(explicit)
        fallback = load_predictor(make_settings(sqlite_url, store_copy, precision="fp32"))
        assert fallback.selection.runtime == "tensorflow" and fallback.selection.fallback

    def test_openvino_absent(self, sqlite_url: str, converted_store: Path, monkeypatch) -> None:
        from radlens.app.startup import preflight
        from radlens.models import runtime as runtime_module

        monkeypatch.setattr(runtime_module, "openvino_version", lambda: None)
        with pytest.raises(RuntimeUnavailableError, match="openvino package is not installed"):
            preflight(make_settings(sqlite_url, converted_store, runtime="openvino"))
        report = preflight(make_settings(sqlite_url, converted_store))
        assert report.runtime is not None and report.runtime.runtime == "tensorflow"
        assert "not installed" in report.runtime.reason


class TestSettings:
    def test_tensorflow_with_bf16_is_refused(self, sqlite_url: str, model_store: Path) -> None:
        with pytest.raises(ValidationError, match="bf16 is served by OpenVINO"):
            make_settings(sqlite_url, model_store, runtime="tensorflow", precision="bf16")

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("runtime", "onnx"),
            ("precision", "fp16"),
            ("parity_max_flip_fraction", 1.5),
            ("model_signing_key", "short"),
        ],
    )
    def test_bad_values(self, sqlite_url: str, model_store: Path, field: str, value: object):
        from radlens.app.settings import describe_validation_error

        with pytest.raises(ValidationError) as info:
            make_settings(sqlite_url, model_store, **{field: value})
        line = describe_validation_error(info.value)
        assert f"RADLENS_{field.upper()}" in line
        if field == "model_signing_key":
            assert "short" not in line  # a secret is never quoted

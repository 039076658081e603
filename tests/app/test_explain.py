"""Grad-CAM in the service: POST ?explain=true stores the overlay, GET .../heatmap serves it,
on SQLite and PostgreSQL; both architectures; explanations next to concurrent predictions."""

from __future__ import annotations

import io
import threading
import types
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.app.conftest import Service, assert_problem, dicom_bytes, png_bytes
from tests.conftest import shared_data_path


def _explanations(service: Service, prediction_id: str) -> list[dict[str, Any]]:
    return [
        row
        for row in service.rows()
        if row["table"] == "explanations"
        and str(row["prediction_id"]).replace("-", "") == prediction_id.replace("-", "")
    ]


def _png_pixels(data: bytes) -> np.ndarray:
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        assert image.format == "PNG"
        return np.asarray(image.convert("RGB"))


class TestExplainOnPost:
    def test_explain_stores_the_overlay_and_heatmap_serves_it(self, service: Service) -> None:
        response = service.post(png_bytes(size=(40, 48)), "x.png", params={"explain": "true"})
        assert response.status_code == 201, response.text
        body = response.json()
        heatmap_url = f"/v1/predictions/{body['id']}/heatmap"
        assert response.headers["link"].startswith(f"<{heatmap_url}>")

        heatmap = service.client.get(heatmap_url)
        assert heatmap.status_code == 200, heatmap.text
        assert heatmap.headers["content-type"] == "image/png"
        assert heatmap.headers["x-radlens-explained-class"] == "abnormal"  # binary: class 1
        assert heatmap.headers["x-radlens-explained-layer"] == "conv4"  # simple_cnn's last conv
        pixels = _png_pixels(heatmap.content)
        # two panels (model input | map on the image at display resolution), legend included
        assert pixels.shape[1] == 1024
        # a colour map and a colour bar: some pixels are not gray
        assert np.any(np.abs(pixels[..., 0].astype(int) - pixels[..., 2].astype(int)) > 40)

        rows = _explanations(service, body["id"])
        assert len(rows) == 1
        assert bytes(rows[0]["png"]) == heatmap.content
        # Grad-CAM's own forward pass agrees with the stored prediction
        assert rows[0]["score"] == pytest.approx(body["scores"]["abnormal"], abs=1e-4)

    def test_without_explain_heatmap_is_404_then_a_repost_adds_it(self, service: Service) -> None:
        data = png_bytes(size=(36, 36))
        first = service.post(data, "y.png")
        assert first.status_code == 201
        assert "link" not in first.headers
        pid = first.json()["id"]
        problem = assert_problem(
            service.client.get(f"/v1/predictions/{pid}/heatmap"), 404, code="explanation-not-found"
        )
        assert "?explain=true" in problem["title"]
        assert pid in problem["detail"]

        again = service.post(data, "y.png", params={"explain": "true"})
        assert again.status_code == 200  # the stored prediction, now explained
        assert again.json()["id"] == pid
        assert service.client.get(f"/v1/predictions/{pid}/heatmap").status_code == 200
        service.post(data, "y.png", params={"explain": "true"})
        assert len(_explanations(service, pid)) == 1  # never twice

    def test_unknown_prediction_is_404(self, service: Service) -> None:
        assert_problem(
            service.client.get("/v1/predictions/00000000-0000-4000-8000-000000000000/heatmap"),
            404,
            code="not-found",
        )

    def test_explain_is_a_boolean(self, service: Service) -> None:
        assert_problem(service.post(png_bytes(), "z.png", params={"explain": "maybe"}), 422)

    def test_real_chest_cr(self, service: Service) -> None:
        data = shared_data_path("dicom", "rsna_chest_cr_jpeg_baseline.dcm").read_bytes()
        response = service.post(data, "cr.dcm", params={"explain": "true"})
        assert response.status_code in (200, 201), response.text
        heatmap = service.client.get(f"/v1/predictions/{response.json()['id']}/heatmap")
        assert heatmap.status_code == 200
        assert _png_pixels(heatmap.content).shape[1] == 1024  # model input | map on the image

    def test_patient_data_stays_out_of_the_explanation(self, service: Service) -> None:
        patient = {"PatientName": "Doe^Janet", "PatientID": "PID-778899"}
        response = service.post(dicom_bytes(patient=patient), "p.dcm", params={"explain": "1"})
        assert response.status_code == 201
        for row in service.rows():
            for value in row.values():
                text = bytes(value) if isinstance(value, bytes | memoryview) else str(value)
                for secret in ("Doe^Janet", "PID-778899"):
                    needle = secret.encode() if isinstance(text, bytes) else secret
                    assert needle not in text, row["table"]


class TestExplainer:
    def test_concurrent_explanations_and_predictions_match_sequential(
        self, service: Service
    ) -> None:
        """Keras inference from several threads: the predictor's tf.function and Grad-CAM's
        gradient model on the same weights give the same scores as one at a time."""
        from radlens.app.explain import explainer_for

        predictor = service.app.state.resources.predictor
        explainer = explainer_for(predictor)
        rng = np.random.default_rng(3)
        images = rng.random((6, *predictor.input_size, 1), dtype=np.float32)
        sequential_scores = predictor._infer(images)
        sequential_maps = [explainer.explain(image).png for image in images[:3]]

        results: dict[str, Any] = {}
        errors: list[BaseException] = []

        def explain(i: int) -> None:
            try:
                results[f"e{i}"] = explainer.explain(images[i])
            except BaseException as exc:  # reported below
                errors.append(exc)

        def infer(i: int) -> None:
            try:
                results[f"p{i}"] = predictor._infer(images[i : i + 1])
            except BaseException as exc:
                errors.append(exc)

        threads = [threading.Thread(target=explain, args=(i,)) for i in range(3)]
        threads += [threading.Thread(target=infer, args=(i,)) for i in range(6)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(timeout=60)
        assert not errors, errors
        for i in range(6):
            np.testing.assert_allclose(results[f"p{i}"][0], sequential_scores[i], atol=1e-5)
        for i in range(3):
            out = results[f"e{i}"]
            np.testing.assert_allclose(out.scores, sequential_scores[i], atol=1e-5)
            assert out.png == sequential_maps[i]

    def test_resnet50_explains_its_last_block(self, tmp_path: Path) -> None:
        from radlens.app.explain import Explainer
        from radlens.models.architectures import build_model

        model = build_model("resnet50", input_shape=(32, 32, 1), num_classes=3, weights=None)
        fake_predictor = types.SimpleNamespace(
            model=model,
            manifest=types.SimpleNamespace(class_names=["a", "b", "c"]),
            device=types.SimpleNamespace(name="/CPU:0"),
            input_size=(32, 32),
        )
        explainer = Explainer(fake_predictor)  # type: ignore[arg-type]
        assert explainer.class_index() is None  # multi-class: the predicted class
        image = np.random.default_rng(0).random((32, 32, 1), dtype=np.float32)
        out = explainer.explain(image)
        assert out.layer == "backbone/conv5_block3_out"
        scores = np.asarray(model(image[None], training=False))[0]
        assert out.class_index == int(np.argmax(scores))
        assert out.score == pytest.approx(float(scores.max()), abs=1e-5)
        assert _png_pixels(out.png).shape[1] == 512

    def test_warmup_at_start_up(self, tmp_path: Path, model_store: Path) -> None:
        from radlens.app.explain import explainer_for
        from radlens.app.main import create_app
        from tests.app.conftest import TestClient, make_settings

        url = f"sqlite:///{tmp_path / 'warm.db'}"
        app = create_app(make_settings(url, model_store, explain_warmup=True))
        with TestClient(app):
            assert explainer_for(app.state.resources.predictor).warmed


def test_deleting_a_prediction_deletes_its_explanation(service: Service) -> None:
    """Retention (radlens purge) deletes predictions in bulk: the overlay goes with them."""
    import uuid

    from sqlalchemy import delete

    from radlens.app.tables import Prediction

    response = service.post(png_bytes(), "gone.png", params={"explain": "true"})
    pid = response.json()["id"]
    assert len(_explanations(service, pid)) == 1
    with service.app.state.resources.sessionmaker() as session:
        session.execute(delete(Prediction).where(Prediction.id == uuid.UUID(pid)))
        session.commit()
    assert _explanations(service, pid) == []
    assert service.client.get(f"/v1/predictions/{pid}/heatmap").status_code == 404


def test_overlay_is_drawn_at_display_resolution(service: Service) -> None:
    """The stored overlay (GET .../heatmap, the /ui page, the SC) shows the map upsampled
    onto the upload at display size: its panels have the source's aspect ratio (4:1 here),
    not the square 32 px model input's."""
    response = service.post(png_bytes(size=(60, 240)), "wide.png", params={"explain": "true"})
    assert response.status_code == 201, response.text
    heatmap = service.client.get(f"/v1/predictions/{response.json()['id']}/heatmap")
    pixels = _png_pixels(heatmap.content)
    assert pixels.shape[1] == 1024
    assert pixels.shape[0] < 0.3 * pixels.shape[1], pixels.shape


def test_an_exif_turned_upload_is_predicted_and_drawn_upright(service: Service) -> None:
    """A JPEG whose EXIF Orientation says a quarter turn (a phone's picture) is predicted
    and drawn as a viewer shows it: rows/columns and the overlay are the turned image's."""
    from PIL import Image

    with Image.open(io.BytesIO(png_bytes(size=(60, 240)))) as image:
        exif = image.getexif()
        exif[0x0112] = 6  # stored 60x240 (wide), shown 240x60 (tall)
        buffer = io.BytesIO()
        image.convert("L").save(buffer, format="JPEG", quality=95, exif=exif)
    response = service.post(buffer.getvalue(), "phone.jpg", params={"explain": "true"})
    assert response.status_code == 201, response.text
    body = response.json()
    assert (body["rows"], body["columns"]) == (240, 60)
    heatmap = service.client.get(f"/v1/predictions/{body['id']}/heatmap")
    pixels = _png_pixels(heatmap.content)
    assert pixels.shape[0] > 0.6 * pixels.shape[1], pixels.shape  # tall panels, not 4:1 wide

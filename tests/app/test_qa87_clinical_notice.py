"""QA 87: "not for clinical use" exactly when the model that made a result is not validated.

Before, the DICOM SR and Secondary Capture (downloaded, from WADO-RS, sent by the outbox)
said "Research use only, not for clinical use." even when the model's manifest said
``validated_for_clinical_use: true`` (the builders were not told), and the JSON and /ui
notices were decided by the model serving *now*: a result of a validated model read while
another model served gained the notice. Now every output asks app/clinical.py about the
model that made the result (its sealed manifest in the store).

One SQLite database, one store holding tiny:1 (not validated) and tiny:2 (validated), and a
service for each model: each makes one prediction, and each result is read from both
services (the stored-result-after-a-model-switch case, both ways).
"""

from __future__ import annotations

import contextlib
import io
import json
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest

from tests.app.conftest import (
    TestClient,
    dicom_bytes,
    make_settings,
    new_uid,
    png_bytes,
    prediction_row,
    save_tiny_model,
)

NOTICE_JSON = (
    "Not for clinical use: this model has not been validated for diagnosis; "
    "a qualified clinician must read the image."
)
NOTICE_DICOM = "Research use only, not for clinical use."
SR_RESEARCH = "radlens AI result (research use, not for clinical use)"
SC_RESEARCH = "radlens Grad-CAM overlay (research use, not for clinical use)"
CLOSED = "PACS@127.0.0.1:28711/sr+sc"  # QA 87's ports; nothing listens: entries wait
UNVALIDATED, VALIDATED = 1, 2  # tiny:1, tiny:2


def validate(store: Path, name: str, version: int) -> None:
    """What an operator does after a clinical validation: edit the manifest, seal it."""
    from radlens.models.registry import ModelRegistry

    path = store / name / str(version) / "manifest.json"
    path.write_text(
        json.dumps({**json.loads(path.read_text()), "validated_for_clinical_use": True})
    )
    ModelRegistry(store).seal(f"{name}:{version}")


@dataclass
class Switch:
    clients: dict[int, TestClient]  # by the version each serves
    posted: dict[int, dict[str, Any]]  # the POST answer of each model's prediction


@pytest.fixture(scope="module")
def switch(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Switch]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    root = tmp_path_factory.mktemp("qa87")
    store = root / "store"
    save_tiny_model(store)  # tiny:1
    save_tiny_model(store)  # tiny:2
    validate(store, "tiny", VALIDATED)
    url = f"sqlite:///{root / 'qa87.db'}"
    upgrade(url)
    with contextlib.ExitStack() as stack:
        clients: dict[int, TestClient] = {}
        for version in (UNVALIDATED, VALIDATED):
            settings = make_settings(
                url,
                store,
                model=f"tiny:{version}",
                dicom_destinations=CLOSED,
                dicom_outbox_dir=root / f"spool-{version}",
                dicom_outbox_retry_s=60,
                dicom_outbox_retry_max_s=60,
                dimse_acse_timeout_s=2,
                dimse_network_timeout_s=2,
            )
            clients[version] = stack.enter_context(TestClient(create_app(settings)))
        posted = {}
        for version, client in clients.items():
            data = dicom_bytes(study=new_uid(), series=new_uid(), sop=new_uid(), seed=version)
            response = client.post(
                "/v1/predictions",
                params={"explain": "true"},
                files={"file": ("ct.dcm", data, "application/dicom")},
            )
            assert response.status_code == 201, response.text
            posted[version] = response.json()
            assert posted[version]["model"] == {"name": "tiny", "version": version}
        yield Switch(clients, posted)


def _both_ways(switch: Switch) -> Iterator[tuple[int, TestClient, int, dict[str, Any]]]:
    """(serving version, its client, version that made the result, the result's POST answer)
    for every pair: each result read by its own model's service and by the other one."""
    for serving, client in switch.clients.items():
        for maker, body in switch.posted.items():
            yield serving, client, maker, body


def _read(data: bytes) -> pydicom.Dataset:
    return pydicom.dcmread(io.BytesIO(data))


def assert_sr(data: bytes, maker: int, where: str) -> None:
    ds = _read(data)
    text = data.lower()
    if maker == UNVALIDATED:
        assert ds.SeriesDescription == SR_RESEARCH, where
        assert NOTICE_DICOM.encode() in data, where  # the Algorithm Parameters
    else:
        assert ds.SeriesDescription == "radlens AI result", where
        assert b"clinical use" not in text and b"research use" not in text, where


def assert_sc(data: bytes, maker: int, where: str) -> None:
    ds = _read(data)
    assert "clinical" not in str(ds.DerivationDescription).lower(), where
    if maker == UNVALIDATED:
        assert ds.SeriesDescription == SC_RESEARCH, where
        assert str(ds.ImageComments).endswith(f" {NOTICE_DICOM}"), where
    else:
        assert ds.SeriesDescription == "radlens Grad-CAM overlay", where
        assert "clinical use" not in str(ds.ImageComments).lower(), where
        assert str(ds.ImageComments).endswith("not a finding's position or outline."), where


# --- JSON --------------------------------------------------------------------------------


def test_a_stored_result_keeps_its_models_notice_whichever_model_serves(switch: Switch) -> None:
    assert switch.posted[UNVALIDATED]["notice"] == NOTICE_JSON  # the POST answers
    assert switch.posted[VALIDATED]["notice"] is None
    for serving, client, maker, body in _both_ways(switch):
        expected = NOTICE_JSON if maker == UNVALIDATED else None
        where = f"tiny:{maker}'s result read while tiny:{serving} serves"
        assert client.get(f"/v1/predictions/{body['id']}").json()["notice"] == expected, where
        listed = {i["id"]: i for i in client.get("/v1/predictions").json()["items"]}
        assert listed[body["id"]]["notice"] == expected, where
        series = client.get(f"/v1/series/{body['series_instance_uid']}").json()
        assert [r["notice"] for r in series["results"]] == [expected], where
        study = client.get(f"/v1/studies/{body['study_instance_uid']}").json()
        assert [r["notice"] for r in study["results"]] == [expected], where


# --- DICOM -------------------------------------------------------------------------------


def test_sr_and_sc_downloads_say_it_by_the_model_that_made_them(switch: Switch) -> None:
    for serving, client, maker, body in _both_ways(switch):
        where = f"tiny:{maker}'s result read while tiny:{serving} serves"
        sr = client.get(f"/v1/predictions/{body['id']}/dicom/sr")
        assert sr.status_code == 200, sr.text
        assert_sr(sr.content, maker, where)
        sc = client.get(f"/v1/predictions/{body['id']}/dicom/secondary-capture")
        assert sc.status_code == 200, sc.text
        assert_sc(sc.content, maker, where)
        series_sr = client.get(f"/v1/series/{body['series_instance_uid']}/dicom/sr")
        assert series_sr.status_code == 200, series_sr.text
        assert_sr(series_sr.content, maker, f"series SR: {where}")


def test_wado_rs_and_qido_rs_say_it_by_the_model_that_made_them(switch: Switch) -> None:
    for serving, client, maker, body in _both_ways(switch):
        where = f"tiny:{maker}'s result read while tiny:{serving} serves"
        study = body["study_instance_uid"]
        found = client.get(f"/dicomweb/studies/{study}/series")
        assert found.status_code == 200, found.text
        descriptions = sorted(s["0008103E"]["Value"][0] for s in found.json())
        if maker == UNVALIDATED:
            assert descriptions == [SR_RESEARCH, SC_RESEARCH], where
        else:
            assert descriptions == ["radlens AI result", "radlens Grad-CAM overlay"], where
        kinds = set()
        for series in found.json():
            series_uid = series["0020000E"]["Value"][0]
            url = f"/dicomweb/studies/{study}/series/{series_uid}"
            (instance,) = client.get(f"{url}/instances").json()
            sop = instance["00080018"]["Value"][0]
            data = client.get(
                f"{url}/instances/{sop}", headers={"Accept": "application/dicom"}
            ).content
            modality = _read(data).Modality
            kinds.add(modality)
            (assert_sr if modality == "SR" else assert_sc)(data, maker, f"WADO-RS: {where}")
        assert kinds == {"SR", "OT"}, where


def test_the_outbox_sends_it_by_the_model_that_made_them(switch: Switch) -> None:
    for version, client in switch.clients.items():
        outbox = client.app.state.resources.ingestor.outbox  # type: ignore[attr-defined]
        entries = [e for e in outbox.entries() if e.prediction_id == switch.posted[version]["id"]]
        assert sorted(e.kind for e in entries) == ["sc", "sr"]
        for entry in entries:
            check = assert_sr if entry.kind == "sr" else assert_sc
            check(outbox.payload(entry), version, f"outbox {entry.kind} of tiny:{version}")


# --- /ui ---------------------------------------------------------------------------------


def _says_it(page: Any) -> bool:
    assert page.status_code == 200, page.text
    return "not for clinical use" in re.sub(r"\s+", " ", page.text).lower()


def test_ui_pages_say_it_by_the_model_that_made_the_results(switch: Switch) -> None:
    for serving, client, maker, body in _both_ways(switch):
        where = f"tiny:{maker}'s result read while tiny:{serving} serves"
        expected = maker == UNVALIDATED
        assert _says_it(client.get(f"/ui/predictions/{body['id']}")) is expected, where
        series = body["series_instance_uid"]
        assert _says_it(client.get(f"/ui/series/{series}")) is expected, where
        listed = client.get(f"/ui/predictions?model=tiny:{maker}")
        assert body["id"] in listed.text, where
        assert _says_it(listed) is expected, where
    for client in switch.clients.values():  # both results listed: one is not validated
        assert _says_it(client.get("/ui/predictions"))


# --- the builders and the lookup ---------------------------------------------------------


def _flagged_row() -> Any:
    """A stored prediction the OOD check flagged (not a valid result)."""
    row = prediction_row("sha256:" + "7" * 64)
    row.study_instance_uid, row.series_instance_uid = new_uid(), new_uid()
    row.sop_instance_uid, row.sop_class_uid = new_uid(), "1.2.840.10008.5.1.4.1.1.2"
    row.in_distribution = False
    row.uids_pseudonymised = False
    return row


@pytest.mark.parametrize("validated", [False, True])
def test_an_invalid_results_band_stays_and_only_its_notice_follows_validation(
    validated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.app import dicom_outputs
    from radlens.models import overlay

    banners: list[list[str]] = []
    add_banner = overlay.add_banner

    def spy(image: np.ndarray, lines: Any) -> np.ndarray:
        banners.append(list(lines))
        return add_banner(image, lines)

    monkeypatch.setattr(overlay, "add_banner", spy)
    row = _flagged_row()
    source = dicom_outputs.source_from_prediction(row)
    sc = _read(dicom_outputs.build_sc(row, source, png_bytes(seed=87), validated=validated))
    (lines,) = banners
    assert lines[0].startswith("NOT A VALID RESULT: out of distribution")
    assert (NOTICE_DICOM in lines) is not validated
    assert sc.ImageComments.startswith("NOT A VALID RESULT (out of distribution)")
    assert sc.ImageComments.endswith(NOTICE_DICOM) is not validated
    raw = dicom_outputs.build_sr(row, source, validated=validated)
    assert b"NOT A VALID RESULT (out of distribution)" in raw
    assert (NOTICE_DICOM.encode() in raw) is not validated


def test_only_a_sealed_manifest_in_the_store_makes_a_model_validated(tmp_path: Path) -> None:
    from radlens.app import clinical

    store = tmp_path / "store"
    save_tiny_model(store)  # tiny:1
    settings = make_settings(f"sqlite:///{tmp_path / 'x.db'}", store)
    assert clinical.validated(settings, "tiny", 1) is False
    assert clinical.validated(settings, "tiny", 9) is False  # not in the store (any more)
    path = store / "tiny" / "1" / "manifest.json"
    path.write_text(
        json.dumps({**json.loads(path.read_text()), "validated_for_clinical_use": True})
    )
    assert clinical.validated(settings, "tiny", 1) is False  # edited, not sealed: tampered
    validate(store, "tiny", 1)
    assert clinical.validated(settings, "tiny", 1) is True  # re-read: the file changed


# --- the overlay's caption ---------------------------------------------------------------


def _captions(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    from matplotlib.figure import Figure

    written: list[str] = []
    text = Figure.text

    def spy(self: Any, x: float, y: float, s: str, *args: Any, **kwargs: Any) -> Any:
        written.append(str(s))
        return text(self, x, y, s, *args, **kwargs)

    monkeypatch.setattr(Figure, "text", spy)
    return written


@pytest.mark.parametrize("validated", [False, True])
@pytest.mark.parametrize("with_display", [False, True])
def test_the_overlay_caption_says_it_unless_validated(
    validated: bool, with_display: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    from radlens.models.overlay import render_overlay

    written = _captions(monkeypatch)
    rng = np.random.default_rng(87)
    pixels, heat = rng.random((16, 16)), rng.random((16, 16))
    display = rng.random((40, 40)) if with_display else None
    png = render_overlay(pixels, heat, title="abnormal 0.9", display=display, validated=validated)
    assert png.startswith(b"\x89PNG")
    (caption,) = [t for t in written if t.startswith("Grad-CAM:")]
    assert ("Not for clinical use." in caption) is not validated
    assert "not a finding's outline" in caption


def test_explain_image_passes_validation_to_the_caption(monkeypatch: pytest.MonkeyPatch) -> None:
    from radlens.models.gradcam import explain_image
    from tests.app.conftest import build_tiny_model

    model = build_tiny_model()
    image = np.random.default_rng(87).random((32, 32, 1)).astype(np.float32)
    written = _captions(monkeypatch)
    for validated in (False, True):
        written.clear()
        explain_image(model, image, class_names=["normal", "abnormal"], validated=validated)
        (caption,) = [t for t in written if t.startswith("Grad-CAM:")]
        assert ("Not for clinical use." in caption) is not validated


@pytest.mark.parametrize("validated", [False, True])
def test_the_services_explainer_captions_by_its_models_manifest(
    validated: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    import types

    from radlens.app.explain import Explainer
    from tests.app.conftest import build_tiny_model

    predictor = types.SimpleNamespace(
        model=build_tiny_model(),
        manifest=types.SimpleNamespace(
            class_names=["normal", "abnormal"], validated_for_clinical_use=validated
        ),
        device=types.SimpleNamespace(name="/CPU:0"),
    )
    written = _captions(monkeypatch)
    image = np.random.default_rng(87).random((32, 32, 1)).astype(np.float32)
    Explainer(predictor).explain(image)  # type: ignore[arg-type]
    (caption,) = [t for t in written if t.startswith("Grad-CAM:")]
    assert ("Not for clinical use." in caption) is not validated

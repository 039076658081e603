"""QIDO-RS and WADO-RS (app/routes/wado.py, app/catalogue.py) through dicomweb-client, a
real DICOMweb client, against a real uvicorn server with API keys on."""

from __future__ import annotations

import io
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.app.conftest import (
    Databases,
    create_api_key,
    dicom_bytes,
    make_settings,
    new_uid,
    png_bytes,
    prediction_row,
)
from tests.app.test_docs_browser import _Server  # uvicorn on a free loopback port

pytest.importorskip("dicomweb_client")
import requests
from dicomweb_client.api import DICOMwebClient
from pydicom import dcmread

SR = "1.2.840.10008.5.1.4.1.1.88.34"
SC = "1.2.840.10008.5.1.4.1.1.7"


@dataclass
class Served:
    url: str
    key: str
    study_a: str
    study_b: str
    explained: dict[str, Any]  # the prediction posted with ?explain=true (study A)
    plain: dict[str, Any]  # study A, no explanation
    pseudonymised_study: str
    database_url: str

    def client(self, key: str | None = None) -> DICOMwebClient:
        return DICOMwebClient(
            f"{self.url}/dicomweb", headers={"Authorization": f"Bearer {key or self.key}"}
        )

    def get(self, path: str, key: str | None = None, **kwargs: Any) -> requests.Response:
        headers = {"Authorization": f"Bearer {key or self.key}"} if key != "" else {}
        return requests.get(f"{self.url}{path}", headers=headers, timeout=60, **kwargs)


def _post(url: str, key: str, data: bytes, explain: bool = False) -> dict[str, Any]:
    response = requests.post(
        f"{url}/v1/predictions",
        params={"explain": "true"} if explain else None,
        files={"file": ("x.dcm", data, "application/octet-stream")},
        headers={"Authorization": f"Bearer {key}"},
        timeout=120,
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def _insert_pseudonymised(url: str) -> str:
    """A stored row whose UIDs are pseudonyms: its outputs are not listed."""
    from radlens.app.db import make_engine, make_sessionmaker

    study = new_uid()
    row = prediction_row(f"sop:{new_uid()}")
    row.study_instance_uid, row.series_instance_uid = study, new_uid()
    row.sop_instance_uid, row.sop_class_uid = new_uid(), "1.2.840.10008.5.1.4.1.1.2"
    row.uids_pseudonymised, row.pseudonym_key_id = True, "0" * 16
    engine = make_engine(url)
    try:
        with make_sessionmaker(engine)() as session:
            session.add(row)
            session.commit()
    finally:
        engine.dispose()
    return study


@pytest.fixture(scope="module")
def served(databases: Databases, model_store: Path) -> Iterator[Served]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    key = create_api_key(url)
    app = create_app(make_settings(url, model_store, auth="enabled"))
    with _Server(app) as base:
        study_a, study_b = new_uid(), new_uid()
        explained = _post(base, key, dicom_bytes(study=study_a, seed=1), explain=True)
        plain = _post(base, key, dicom_bytes(study=study_a, seed=2))
        _post(base, key, dicom_bytes(study=study_b, seed=3))
        _post(base, key, png_bytes(seed=4))  # not DICOM: no outputs
        yield Served(base, key, study_a, study_b, explained, plain, _insert_pseudonymised(url), url)


def _value(item: dict[str, Any], tag: str) -> Any:
    values = item[tag].get("Value", [])
    return values[0] if len(values) == 1 else values


def _sr_of(served: Served, prediction: dict[str, Any]) -> Any:
    response = served.get(f"/v1/predictions/{prediction['id']}/dicom/sr")
    assert response.status_code == 200, response.text
    return dcmread(io.BytesIO(response.content))


def test_search_studies(served: Served) -> None:
    studies = {_value(s, "0020000D"): s for s in served.client().search_for_studies()}
    assert set(studies) == {served.study_a, served.study_b}  # no PNG, no pseudonymised row
    a = studies[served.study_a]
    assert _value(a, "00201208") == 3  # 2 SRs + 1 SC
    assert _value(a, "00201206") == 3
    assert sorted(a["00080061"]["Value"]) == ["OT", "SR"]
    assert "Value" not in a["00100020"]  # Patient ID: empty (radlens stores none)
    assert _value(a, "00081190").endswith(f"/dicomweb/studies/{served.study_a}")
    assert [
        _value(s, "0020000D")
        for s in served.client().search_for_studies(search_filters={"ModalitiesInStudy": "OT"})
    ] == [served.study_a]
    only_b = served.client().search_for_studies(search_filters={"StudyInstanceUID": served.study_b})
    assert [_value(s, "0020000D") for s in only_b] == [served.study_b]
    assert served.client().search_for_studies(search_filters={"PatientID": "12345"}) == []
    paged = served.client().search_for_studies(limit=1, offset=1)
    assert len(paged) == 1


def test_search_series_and_instances(served: Served) -> None:
    client = served.client()
    series = client.search_for_series(served.study_a)
    assert sorted(_value(s, "00080060") for s in series) == ["OT", "SR", "SR"]
    (sc_series,) = client.search_for_series(served.study_a, search_filters={"Modality": "OT"})
    assert _value(sc_series, "00200011") == 9902
    instances = client.search_for_instances(served.study_a)
    assert sorted(_value(i, "00080016") for i in instances) == [SC, SR, SR]
    (sc,) = client.search_for_instances(served.study_a, _value(sc_series, "0020000E"))
    assert _value(sc, "00080016") == SC
    everywhere = client.search_for_instances(search_filters={"SOPClassUID": SR})
    assert {_value(i, "0020000D") for i in everywhere} == {served.study_a, served.study_b}
    top_series = client.search_for_series(
        search_filters={"SeriesInstanceUID": _value(sc_series, "0020000E")}
    )
    assert len(top_series) == 1


def test_unsupported_key_is_named_in_a_warning(served: Served) -> None:
    response = served.get("/dicomweb/studies", params={"InstitutionName": "x"})
    assert response.status_code == 200
    assert "InstitutionName" in response.headers["warning"]
    assert response.headers["content-type"].startswith("application/dicom+json")


def test_retrieve_instance_is_the_sr_of_the_prediction(served: Served) -> None:
    expected = _sr_of(served, served.plain)
    client = served.client()
    ds = client.retrieve_instance(
        served.study_a, expected.SeriesInstanceUID, expected.SOPInstanceUID
    )
    assert ds.SOPInstanceUID == expected.SOPInstanceUID
    assert ds.SOPClassUID == SR
    assert ds.StudyInstanceUID == served.study_a
    assert ds.ContentSequence == expected.ContentSequence
    (meta,) = [
        client.retrieve_instance_metadata(
            served.study_a, expected.SeriesInstanceUID, expected.SOPInstanceUID
        )
    ]
    assert _value(meta, "00080018") == expected.SOPInstanceUID
    assert len(client.retrieve_series(served.study_a, expected.SeriesInstanceUID)) == 1


def test_retrieve_sc_metadata_and_frame(served: Served) -> None:
    client = served.client()
    (sc,) = client.search_for_instances(served.study_a, search_filters={"SOPClassUID": SC})
    study, series, sop = (_value(sc, t) for t in ("0020000D", "0020000E", "00080018"))
    meta = client.retrieve_instance_metadata(study, series, sop)
    assert meta["7FE00010"]["BulkDataURI"].endswith(f"/instances/{sop}/frames/1")
    assert _value(meta, "00080008") == ["DERIVED", "SECONDARY"]
    (frame,) = client.retrieve_instance_frames(study, series, sop, [1])
    rows, columns = _value(meta, "00280010"), _value(meta, "00280011")
    assert len(frame) == rows * columns * 3
    full = served.get(f"/v1/predictions/{served.explained['id']}/dicom/secondary-capture")
    assert dcmread(io.BytesIO(full.content)).PixelData == frame
    assert len(client.retrieve_study(served.study_a)) == 3
    assert len(client.retrieve_study_metadata(served.study_a)) == 3


def test_missing_object_is_a_404_problem(served: Served) -> None:
    response = served.get(f"/dicomweb/studies/{served.study_a}/series/1.2.3/instances/4.5.6")
    assert response.status_code == 404
    assert response.headers["content-type"].startswith("application/problem+json")
    assert served.get(f"/dicomweb/studies/{served.pseudonymised_study}").status_code == 404


def test_read_scope_is_required(served: Served) -> None:
    assert served.get("/dicomweb/studies", key="").status_code == 401
    predict_only = create_api_key(served.database_url, scopes="predict", name="predict-only")
    assert served.get("/dicomweb/studies", key=predict_only).status_code == 403
    assert served.get(f"/dicomweb/studies/{served.study_a}", key=predict_only).status_code == 403

"""A class or finding name outside ASCII reaches the PACS as it is in the SR and SC.

Written under DICOM's default repertoire (no Specific Character Set), each character outside it
became '?' (pydicom: "Failed to encode value", QA round 28: "normal — κανονικό" read back as
"normal ? ????????"). An output holding such text now declares UTF-8 (ISO_IR 192); one holding
only ASCII is written as before, without the attribute."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import pydicom
import pytest

from tests.app.conftest import TestClient, dicom_bytes, make_settings, save_tiny_model

NAMES = ["normal — κανονικό", "effusion — πλευριτική συλλογή"]


def _texts(ds: Any) -> list[str]:
    found: list[str] = []
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                found.extend(_texts(item))
        elif isinstance(element.value, str):
            found.append(element.value)
    return found


@pytest.mark.parametrize(
    ("names", "declared"), [(NAMES, "ISO_IR 192"), (["normal", "abnormal"], None)]
)
def test_sr_and_sc_carry_the_class_names(
    tmp_path: Path, names: list[str], declared: str | None
) -> None:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    store = tmp_path / "store"
    save_tiny_model(store, class_names=names)
    url = f"sqlite:///{tmp_path / 'out.db'}"
    upgrade(url)
    with TestClient(create_app(make_settings(url, store))) as client:
        created = client.post(
            "/v1/predictions?explain=true", files={"file": ("a.dcm", dicom_bytes(seed=77))}
        )
        assert created.status_code == 201, created.text
        label = created.json()["label"]
        for route in ("dicom/sr", "dicom/secondary-capture"):
            response = client.get(f"/v1/predictions/{created.json()['id']}/{route}")
            assert response.status_code == 200, response.text
            ds = pydicom.dcmread(io.BytesIO(response.content))
            assert ds.get("SpecificCharacterSet") == declared, route
            texts = " ".join(_texts(ds))
            assert label in texts, (route, texts[:500])
            assert "?" not in label and "? ?" not in texts

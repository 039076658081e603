"""QA round 31: what a client typed into a URL reached the append-only audit trail.

`GET /v1/predictions/<id>` with an accession number or MRN in place of the prediction id (an
integrator looking a study up by what it knows) is a 422, and its failure row recorded the
path segment as its target, as received; a listing's query kept every parameter name as typed
(`GET /v1/predictions?0012345678` recorded `0012345678=*`). docs/security.md promises targets
that are prediction ids and queries without identifiers, and the table refuses UPDATE and
DELETE, so such a row could not be removed. A target that does not have the form of what its
action targets is now withheld (`*`), and so is a parameter name the listings do not have.
"""

from __future__ import annotations

from typing import Any

import pytest

from radlens.app import audit
from tests.app.conftest import Service, dicom_bytes

MRN = "ZZPHI-QQMRN7431"


def rows_holding(service: Service, text: str) -> list[dict[str, Any]]:
    return [row for row in service.rows() if any(text in str(v) for v in row.values())]


@pytest.mark.parametrize(
    "path",
    [
        f"/v1/predictions/{MRN}",
        "/v1/predictions/0012345678",  # an MRN of digits
        f"/v1/predictions/{MRN}/heatmap",
        f"/v1/predictions/{MRN}/dicom/sr",
    ],
)
def test_a_path_segment_that_is_no_prediction_id_is_not_audited(
    service: Service, path: str
) -> None:
    typed = path.split("/")[3]
    answer = service.client.get(path)
    assert answer.status_code == 422, answer.text
    assert rows_holding(service, typed) == []
    failures = [r for r in service.rows() if r["table"] == "audit_events" and r["status"] == 422]
    assert failures[-1]["target"] == "*"


def test_a_listing_parameter_name_the_listing_does_not_have_is_withheld(service: Service) -> None:
    answer = service.client.get(f"/v1/predictions?{MRN}&label=normal&study_instance_uid=1.2.3")
    assert answer.status_code == 200, answer.text
    assert rows_holding(service, "QQMRN7431") == []
    listed = [r for r in service.rows() if r.get("action") == "prediction.list"]
    assert listed[-1]["query"] == "*=*&label=normal&study_instance_uid=*"


def test_the_ids_that_are_targets_are_still_recorded(service: Service) -> None:
    created = service.post(dicom_bytes(seed=3131), "x.dcm")
    assert created.status_code in (200, 201), created.text
    prediction_id = created.json()["id"]
    assert service.client.get(f"/v1/predictions/{prediction_id}").status_code == 200
    reads = [r for r in service.rows() if r.get("action") == "prediction.read"]
    assert reads[-1]["target"] == prediction_id


@pytest.mark.parametrize(
    ("action", "target", "recorded"),
    [
        ("key.create", "0123456789ab", "0123456789ab"),
        ("key.revoke", MRN, "*"),
        (
            "auth.denied",
            "GET /v1/predictions/{prediction_id}",
            "GET /v1/predictions/{prediction_id}",
        ),
        ("auth.denied", f"GET {MRN}", "*"),
        ("dimse.store", "1.2.826.0.1.3680043.8.498.1", "1.2.826.0.1.3680043.8.498.1"),
        ("dimse.store", "ZZPHIUIDQQMRN7431", "*"),
        (
            "prediction.purge",
            "6c9fe1a4-7a4e-4a55-b4d5-8b1f6d3c2e10",
            "6c9fe1a4-7a4e-4a55-b4d5-8b1f6d3c2e10",
        ),
        ("prediction.read", "1.2.3", "*"),
        ("prediction.read", None, None),
    ],
)
def test_safe_target(action: str, target: str | None, recorded: str | None) -> None:
    assert audit.safe_target(action, target) == recorded

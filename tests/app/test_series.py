"""Series and study results (app/series.py, app/routes/series.py) on SQLite and PostgreSQL:
aggregation as instances arrive, links to the instance predictions, pseudonymised UIDs, the
series SR, instances that disagree with their series, concurrent uploads of one series."""

from __future__ import annotations

import asyncio
import io
import math
from collections.abc import Iterator
from typing import Any

import pydicom
import pytest

from tests.app.conftest import (
    Service,
    TestClient,
    assert_problem,
    create_api_key,
    dicom_bytes,
    make_settings,
    new_uid,
)
from tests.app.test_stowrs import parse, stow


def with_modality(data: bytes, modality: str) -> bytes:
    ds = pydicom.dcmread(io.BytesIO(data))
    ds.Modality = modality
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


def abnormal(response: Any) -> float:
    return float(response.json()["scores"]["abnormal"])


def series_rows(service: Service, series: str) -> list[dict[str, Any]]:
    return [
        r
        for r in service.rows()
        if r["table"] == "predictions" and r["series_instance_uid"] == series
    ]


# --- aggregation, pure -----------------------------------------------------------------------


class TestAggregate:
    def test_max(self) -> None:
        from radlens.app.series import aggregate

        assert aggregate([0.1, 0.7, 0.3], "max", 2) == 0.7

    def test_mean_of_the_top_k(self) -> None:
        from radlens.app.series import aggregate

        assert aggregate([0.1, 0.7, 0.3, 0.5], "mean_top_k", 2) == pytest.approx(0.6)
        assert aggregate([0.2, 0.4], "mean_top_k", 5) == pytest.approx(0.3)  # fewer than k

    def test_noisy_or(self) -> None:
        from radlens.app.series import aggregate

        assert aggregate([0.5, 0.5], "noisy_or", 1) == pytest.approx(0.75)
        assert aggregate([0.2, 0.1, 0.3], "noisy_or", 1) == pytest.approx(1 - 0.8 * 0.9 * 0.7)
        assert aggregate([1.0, 0.1], "noisy_or", 1) == 1.0
        many = aggregate([1e-9] * 1000, "noisy_or", 1)  # log space: no underflow to 0
        assert many == pytest.approx(1e-6, rel=1e-6)

    def test_refusals_quote_what_was_received(self) -> None:
        from radlens.app.series import aggregate

        with pytest.raises(ValueError, match=r"Received: 'median'"):
            aggregate([0.1], "median", 1)
        with pytest.raises(ValueError, match=r"Received: \[\]"):
            aggregate([], "max", 1)
        with pytest.raises(ValueError, match=r"k=0"):
            aggregate([0.1], "max", 0)


def _row(scores: dict[str, float], threshold: float | None, sop: str, model: int = 1) -> Any:
    from datetime import UTC, datetime

    from tests.app.conftest import prediction_row

    row = prediction_row(f"sop:{sop}")
    row.scores, row.threshold, row.sop_instance_uid = scores, threshold, sop
    row.model_version, row.created_at = model, datetime.now(UTC)
    return row


class TestModelResult:
    def test_binary_uses_the_positive_class_and_the_threshold(self) -> None:
        from radlens.app.series import model_result

        rows = [
            _row({"normal": 0.7, "abnormal": 0.3}, 0.35, "1"),
            _row({"normal": 0.6, "abnormal": 0.4}, 0.35, "2"),
            _row({"normal": 0.9, "abnormal": 0.1}, 0.35, "3"),
        ]
        result = model_result(rows, "mean_top_k", 2)
        assert result.class_name == "abnormal"
        assert result.score == pytest.approx(0.35)
        assert (result.label, result.positive, result.threshold) == ("abnormal", True, 0.35)
        assert [i.prediction.sop_instance_uid for i in result.key_instances] == ["2", "1"]
        assert [i.score for i in result.instances] == [0.4, 0.3, 0.1]

    def test_binary_without_a_threshold_decides_at_one_half(self) -> None:
        from radlens.app.series import model_result

        rows = [_row({"normal": 0.55, "abnormal": 0.45}, None, "1")]
        result = model_result(rows, "max", 3)
        assert (result.label, result.positive, result.threshold) == ("normal", False, 0.5)

    def test_multi_class_aggregates_each_class(self) -> None:
        from radlens.app.series import model_result

        rows = [
            _row({"a": 0.5, "b": 0.3, "c": 0.2}, None, "1"),
            _row({"a": 0.1, "b": 0.8, "c": 0.1}, None, "2"),
        ]
        result = model_result(rows, "max", 1)
        assert (result.label, result.class_name, result.positive) == ("b", "b", None)
        assert result.score == pytest.approx(0.8)
        assert [i.prediction.sop_instance_uid for i in result.key_instances] == ["2"]

    def test_models_are_never_mixed(self) -> None:
        from radlens.app.series import results_by_model

        rows = [
            _row({"normal": 0.1, "abnormal": 0.9}, 0.5, "1", model=1),
            _row({"normal": 0.8, "abnormal": 0.2}, 0.5, "1", model=2),
        ]
        results = results_by_model(rows, "max", 3)
        assert {(r.model_version, r.score) for r in results} == {(1, 0.9), (2, 0.2)}
        assert results[0].model_version == 2  # the newest prediction first


def test_the_aggregation_setting_is_checked() -> None:
    from pydantic import ValidationError

    from radlens.app.settings import Settings

    with pytest.raises(ValidationError, match="series_aggregation"):
        Settings(series_aggregation="median")
    with pytest.raises(ValidationError, match="series_top_k"):
        Settings(series_top_k=0)


# --- the service -----------------------------------------------------------------------------


class TestSeries:
    def test_aggregate_is_updated_as_instances_arrive(self, service: Service) -> None:
        study, series = new_uid(), new_uid()
        scores: dict[str, float] = {}
        ids: dict[str, str] = {}
        for seed in range(4):
            sop = new_uid()
            response = service.post(dicom_bytes(study=study, series=series, sop=sop, seed=seed))
            assert response.status_code == 201, response.text
            scores[sop], ids[sop] = abnormal(response), response.json()["id"]

            got = service.client.get(f"/v1/series/{series}")
            assert got.status_code == 200, got.text
            body = got.json()
            (result,) = body["results"]
            assert result["instance_count"] == seed + 1
            assert result["class_name"] == "abnormal"
            assert result["score"] == pytest.approx(max(scores.values()))
            assert result["positive"] == (result["score"] >= 0.5)
            assert result["label"] == ("abnormal" if result["positive"] else "normal")
            assert result["notice"].startswith("Not for clinical use")

        assert body["series_instance_uid"] == series
        assert body["study_instance_uid"] == study
        assert (body["modality"], body["rows"], body["columns"]) == ("CT", 16, 16)
        assert body["aggregation"] == "max" and body["top_k"] == 3
        ranked = sorted(scores, key=lambda s: -scores[s])
        assert [i["sop_instance_uid"] for i in result["key_instances"]] == ranked[:3]
        assert [i["sop_instance_uid"] for i in result["instances"]] == ranked
        for item in result["instances"]:  # each link is the instance's own prediction
            assert item["prediction_id"] == ids[item["sop_instance_uid"]]
            linked = service.client.get(item["href"])
            assert linked.status_code == 200
            assert linked.json()["sop_instance_uid"] == item["sop_instance_uid"]
            assert linked.json()["scores"]["abnormal"] == pytest.approx(item["score"])

        study_body = service.client.get(body["study_href"]).json()
        assert study_body["study_instance_uid"] == study
        (link,) = study_body["series"]
        assert link["series_instance_uid"] == series and link["instance_count"] == 4
        assert service.client.get(link["href"]).json() == body
        (study_result,) = study_body["results"]
        assert study_result["score"] == pytest.approx(result["score"])
        assert study_result["key_series_instance_uid"] == series

    def test_a_repost_does_not_count_twice(self, service: Service) -> None:
        series = new_uid()
        data = dicom_bytes(series=series)
        assert service.post(data).status_code == 201
        assert service.post(data).status_code == 200
        body = service.client.get(f"/v1/series/{series}").json()
        assert body["results"][0]["instance_count"] == 1

    def test_study_with_two_series_takes_its_most_positive_series(self, service: Service) -> None:
        study = new_uid()
        best: dict[str, float] = {}
        for series_seed in range(2):
            series = new_uid()
            for seed in range(2):
                response = service.post(
                    dicom_bytes(study=study, series=series, seed=10 * series_seed + seed + 50)
                )
                best[series] = max(best.get(series, 0.0), abnormal(response))
        body = service.client.get(f"/v1/studies/{study}").json()
        top = max(best, key=lambda s: best[s])
        (result,) = body["results"]
        assert result["key_series_instance_uid"] == top
        assert result["score"] == pytest.approx(best[top])
        assert result["series_count"] == 2 and result["instance_count"] == 4
        assert [s["series_instance_uid"] for s in body["series"]] == sorted(
            best, key=lambda s: -best[s]
        )

    def test_stow_of_one_series_is_one_result(self, service: Service) -> None:
        study, series = new_uid(), new_uid()
        parts = [dicom_bytes(study=study, series=series, seed=s) for s in range(5)]
        response = stow(service, parts)
        assert response.status_code == 200, response.text
        body = service.client.get(f"/v1/series/{series}").json()
        assert body["results"][0]["instance_count"] == 5

    def test_stow_mixing_studies_gives_a_result_per_study(self, service: Service) -> None:
        # POST /dicomweb/studies may carry several studies (PS3.18 10.5); each is its own
        # result. (POST /dicomweb/studies/{uid} refuses another study's instance:
        # tests/app/test_stowrs.py::TestStow::test_study_in_the_url.)
        a, b = new_uid(), new_uid()
        parts = [dicom_bytes(study=a), dicom_bytes(study=a), dicom_bytes(study=b)]
        assert stow(service, parts).status_code == 200
        counts = {
            uid: sum(
                s["instance_count"]
                for s in service.client.get(f"/v1/studies/{uid}").json()["series"]
            )
            for uid in (a, b)
        }
        assert counts == {a: 2, b: 1}

    def test_unknown_series_and_study_are_404(self, service: Service) -> None:
        uid = new_uid()
        assert_problem(service.client.get(f"/v1/series/{uid}"), 404, code="not-found")
        assert_problem(service.client.get(f"/v1/studies/{uid}"), 404, code="not-found")
        assert_problem(service.client.get(f"/v1/series/{uid}/dicom/sr"), 404, code="not-found")

    @pytest.mark.parametrize("bad", ["abc", "1.2.x", "1" * 65, "1..2"])
    def test_malformed_uid_is_422(self, service: Service, bad: str) -> None:
        assert_problem(service.client.get(f"/v1/series/{bad}"), 422)
        assert_problem(service.client.get(f"/v1/studies/{bad}"), 422)


class TestSeriesMismatch:
    def test_other_rows_and_columns_are_refused_and_nothing_stored(self, service: Service) -> None:
        study, series = new_uid(), new_uid()
        assert service.post(dicom_bytes(study=study, series=series, seed=1)).status_code == 201
        before_rows, before = service.rows(), service.client.get(f"/v1/series/{series}").json()

        response = service.post(dicom_bytes(study=study, series=series, rows=20, columns=24))
        body = assert_problem(response, 422, code="series-mismatch")
        assert "20x24" in body["detail"] and "16x16" in body["detail"]
        assert "Study" not in body["detail"] and "Modality" not in body["detail"]
        after_rows = service.rows()
        assert [r for r in after_rows if r["table"] != "audit_events"] == [
            r for r in before_rows if r["table"] != "audit_events"
        ]
        assert service.client.get(f"/v1/series/{series}").json() == before

    def test_other_modality_is_refused(self, service: Service) -> None:
        study, series = new_uid(), new_uid()
        assert service.post(dicom_bytes(study=study, series=series)).status_code == 201
        response = service.post(with_modality(dicom_bytes(study=study, series=series), "MR"))
        body = assert_problem(response, 422, code="series-mismatch")
        assert "'MR'" in body["detail"] and "'CT'" in body["detail"]
        assert "Study" not in body["detail"]
        assert len(series_rows(service, series)) == 1

    def test_another_study_is_refused(self, service: Service) -> None:
        series = new_uid()
        assert service.post(dicom_bytes(series=series)).status_code == 201
        body = assert_problem(service.post(dicom_bytes(series=series)), 422, code="series-mismatch")
        assert "Study Instance UID differs" in body["detail"]
        assert "Modality" not in body["detail"] and "Rows" not in body["detail"]
        assert len(series_rows(service, series)) == 1

    def test_in_a_stow_request_only_the_disagreeing_instance_fails(self, service: Service) -> None:
        study, series = new_uid(), new_uid()
        good = [dicom_bytes(study=study, series=series, seed=s) for s in range(3)]
        bad_sop = new_uid()
        bad = dicom_bytes(study=study, series=series, sop=bad_sop, rows=20, columns=20)
        assert service.post(good[0]).status_code == 201  # the series is 16x16 from here on
        response = stow(service, [*good[1:], bad])
        assert response.status_code == 202, response.text
        ds = parse(response)
        (failed,) = ds.FailedSOPSequence
        assert failed.ReferencedSOPInstanceUID == bad_sop
        assert failed.FailureReason == 0xA900
        assert failed[0x00991004].value == "series-mismatch"
        assert len(ds.ReferencedSOPSequence) == 2
        assert (
            service.client.get(f"/v1/series/{series}").json()["results"][0]["instance_count"] == 3
        )
        assert bad_sop not in {r["sop_instance_uid"] for r in series_rows(service, series)}


# --- concurrency: two replicas (two apps, two writers) on one database -----------------------


@pytest.fixture()
def two_replicas(migrated_database_url: str, model_store: Any) -> Iterator[list[Any]]:
    from radlens.app.main import create_app

    key = create_api_key(migrated_database_url)
    apps = [
        create_app(make_settings(migrated_database_url, model_store, auth="enabled"))
        for _ in range(2)
    ]
    for app in apps:
        app.state.test_headers = {"Authorization": f"Bearer {key}"}
    yield apps


async def _post_concurrently(apps: list[Any], uploads: list[bytes], series: str) -> list[Any]:
    import contextlib

    import httpx

    async with contextlib.AsyncExitStack() as stack:
        clients = []
        for app in apps:
            await stack.enter_async_context(app.router.lifespan_context(app))
            clients.append(
                await stack.enter_async_context(
                    httpx.AsyncClient(
                        transport=httpx.ASGITransport(app=app),
                        base_url="http://test",
                        headers=app.state.test_headers,
                    )
                )
            )

        async def post(i: int, data: bytes) -> Any:
            files = {"file": ("image.dcm", data, "application/octet-stream")}
            return await clients[i % len(clients)].post("/v1/predictions", files=files)

        responses = list(await asyncio.gather(*(post(i, d) for i, d in enumerate(uploads))))
        aggregate = await clients[0].get(f"/v1/series/{series}")
        return [*responses, aggregate]


def test_concurrent_uploads_of_one_series_on_two_replicas(two_replicas: list[Any]) -> None:
    """Instances of one series with two geometries, posted at once through two apps (two
    writer threads: concurrent transactions on one database): exactly one geometry wins, every
    stored instance has it, every other is a 422, and the aggregate counts what was stored."""
    from sqlalchemy import select

    from radlens.app.db import make_engine
    from radlens.app.tables import Prediction, PredictionSeries

    study, series = new_uid(), new_uid()
    uploads = [
        dicom_bytes(
            study=study,
            series=series,
            seed=i,
            rows=16 if i % 2 else 24,
            columns=16 if i % 2 else 24,
        )
        for i in range(16)
    ]
    *responses, aggregate = asyncio.run(_post_concurrently(two_replicas, uploads, series))
    statuses = sorted(r.status_code for r in responses)
    assert set(statuses) <= {201, 422}, [r.text for r in responses if r.status_code >= 500]
    assert statuses.count(201) == 8 and statuses.count(422) == 8, statuses
    refused = [r for r in responses if r.status_code == 422]
    assert all(r.json()["type"].endswith("series-mismatch") for r in refused)

    engine = make_engine(two_replicas[0].state.settings.database_url)
    try:
        with engine.connect() as conn:
            sizes = set(
                conn.execute(
                    select(Prediction.rows, Prediction.columns).where(
                        Prediction.series_instance_uid == series
                    )
                ).all()
            )
            reference = conn.execute(
                select(PredictionSeries.rows, PredictionSeries.columns).where(
                    PredictionSeries.series_instance_uid == series
                )
            ).one()
    finally:
        engine.dispose()
    assert sizes == {tuple(reference)}
    assert aggregate.json()["results"][0]["instance_count"] == 8
    scores = [r.json()["scores"]["abnormal"] for r in responses if r.status_code == 201]
    assert aggregate.json()["results"][0]["score"] == pytest.approx(max(scores))
    assert not math.isnan(aggregate.json()["results"][0]["score"])


# --- pseudonymised UIDs and the series SR ----------------------------------------------------


@pytest.fixture()
def pseudonymising(migrated_database_url: str, model_store: Any) -> Iterator[TestClient]:
    from radlens.app.main import create_app

    settings = make_settings(
        migrated_database_url,
        model_store,
        uid_pseudonym_key="a-site-key-of-at-least-16-chars",
        dedupe_key="a-separate-dedupe-key-16+",
        series_aggregation="mean_top_k",
        series_top_k=2,
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_pseudonymised_series_is_found_by_its_original_uid_and_its_pseudonym(
    pseudonymising: TestClient,
) -> None:
    client = pseudonymising
    study, series = new_uid(), new_uid()
    scores = []
    for seed in range(3):
        files = {"file": ("x.dcm", dicom_bytes(study=study, series=series, seed=seed), "x")}
        response = client.post("/v1/predictions", files=files)
        assert response.status_code == 201
        scores.append(response.json()["scores"]["abnormal"])
    pseudonym = response.json()["series_instance_uid"]
    assert pseudonym != series

    by_original = client.get(f"/v1/series/{series}")
    assert by_original.status_code == 200
    body = by_original.json()
    assert body["series_instance_uid"] == pseudonym and body["uids_pseudonymised"]
    assert series not in by_original.text and study not in by_original.text
    assert client.get(f"/v1/series/{pseudonym}").json() == body
    top2 = sorted(scores, reverse=True)[:2]
    assert body["aggregation"] == "mean_top_k"
    assert body["results"][0]["score"] == pytest.approx(sum(top2) / 2)
    assert len(body["results"][0]["key_instances"]) == 2

    study_body = client.get(f"/v1/studies/{study}").json()
    assert client.get(body["study_href"]).json() == study_body
    assert study_body["series"][0]["series_instance_uid"] == pseudonym
    # an SR must name the real source study: the pseudonyms cannot
    assert_problem(client.get(f"/v1/series/{series}/dicom/sr"), 409, code="uids-pseudonymised")


def test_series_sr_references_the_key_instances(service: Service) -> None:
    study, series = new_uid(), new_uid()
    for seed in range(5):
        service.post(dicom_bytes(study=study, series=series, seed=seed + 20))
    result = service.client.get(f"/v1/series/{series}").json()["results"][0]
    keys = [i["sop_instance_uid"] for i in result["key_instances"]]
    assert len(keys) == 3

    response = service.client.get(f"/v1/series/{series}/dicom/sr")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/dicom"
    sr = pydicom.dcmread(io.BytesIO(response.content))
    assert sr.Modality == "SR" and sr.StudyInstanceUID == study
    assert sr.SeriesInstanceUID != series
    evidence = [
        item.ReferencedSOPInstanceUID
        for study_item in sr.CurrentRequestedProcedureEvidenceSequence
        for series_item in study_item.ReferencedSeriesSequence
        for item in series_item.ReferencedSOPSequence
    ]
    assert sorted(evidence) == sorted(keys)
    text = str(sr)
    assert f"{result['score']:.3f}"[:4] in text or "Series max score" in text
    assert "Series max score for abnormal" in text
    for key in keys:
        assert key in text  # the measurement group's source images

    again = service.client.get(f"/v1/series/{series}/dicom/sr").content
    assert pydicom.dcmread(io.BytesIO(again)).SOPInstanceUID == sr.SOPInstanceUID  # stable
    service.post(dicom_bytes(study=study, series=series, seed=99))
    grown = pydicom.dcmread(io.BytesIO(service.client.get(f"/v1/series/{series}/dicom/sr").content))
    assert grown.SOPInstanceUID != sr.SOPInstanceUID  # a new result is a new instance


# --- multi-frame instances, frame by frame ---------------------------------------------------


def multiframe_bytes(
    frames: int,
    *,
    declared: int | None = None,
    rows: int = 16,
    columns: int = 16,
    series: str | None = None,
    study: str | None = None,
    seed: int = 0,
) -> tuple[bytes, list[Any]]:
    """A multi-frame CT instance (each frame different) and its frames' pixel arrays."""
    import numpy as np

    rng = np.random.default_rng(seed)
    arrays = [rng.integers(0, 4096, size=(rows, columns), dtype=np.uint16) for _ in range(frames)]
    ds = pydicom.dcmread(
        io.BytesIO(dicom_bytes(rows=rows, columns=columns, series=series, study=study))
    )
    ds.NumberOfFrames = declared if declared is not None else frames
    ds.PixelData = b"".join(a.tobytes() for a in arrays)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue(), arrays


def single_frame_bytes(array: Any) -> bytes:
    """One frame's pixels as a single-frame instance of its own (a new SOP Instance UID)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(rows=array.shape[0], columns=array.shape[1])))
    ds.PixelData = array.tobytes()
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    return buf.getvalue()


class TestMultiFrame:
    def test_every_frame_is_predicted_and_the_key_frame_named(self, service: Service) -> None:
        data, arrays = multiframe_bytes(5, seed=3)
        response = service.post(data)
        assert response.status_code == 201, response.text
        body = response.json()
        result = body["frame_result"]
        assert body["frames"] == 5
        assert result["frames"] == [0, 1, 2, 3, 4]
        assert result["class_name"] == "abnormal" and result["aggregation"] == "max"
        # each frame's score is what the model gives that frame alone
        alone = [abnormal(service.post(single_frame_bytes(a))) for a in arrays]
        assert result["scores"] == pytest.approx(alone, abs=1e-5)
        assert result["key_frame"] == max(range(5), key=lambda i: alone[i])
        assert body["scores"]["abnormal"] == pytest.approx(max(alone), abs=1e-5)
        assert body["scores"]["normal"] == pytest.approx(1 - body["scores"]["abnormal"])
        assert body["label"] == ("abnormal" if body["scores"]["abnormal"] >= 0.5 else "normal")
        stored = service.client.get(f"/v1/predictions/{body['id']}").json()
        assert stored["frame_result"] == result

    def test_grad_cam_explains_the_key_frame(self, service: Service) -> None:
        from radlens.app.explain import explainer_for

        data, arrays = multiframe_bytes(3, seed=8)
        response = service.post(data, params={"explain": "true"})
        assert response.status_code == 201, response.text
        key = response.json()["frame_result"]["key_frame"]
        assert key != 1  # not the middle frame (what the first preprocess picks): seed chosen
        stored = service.client.get(f"/v1/predictions/{response.json()['id']}/heatmap")
        assert stored.status_code == 200
        # the same overlay as Grad-CAM on the key frame posted alone
        predictor = service.app.state.resources.predictor
        from radlens.models.overlay import display_size
        from radlens.models.preprocessing import preprocess

        single = single_frame_bytes(arrays[key])
        alone = preprocess(single, size=predictor.input_size, window=None)
        # drawn on the key frame at display size (a middle-frame backdrop would differ)
        shown = preprocess(single, size=display_size(alone.metadata.rows, alone.metadata.columns))
        # titled with the instance's label, threshold and aggregate score (QA 83)
        body = response.json()
        expected = explainer_for(predictor).explain(
            alone.model_input(),
            shown.pixels,
            label=body["label"],
            threshold=body["threshold"],
            positive_score=body["scores"]["abnormal"],
        )
        assert stored.content == expected.png

    def test_a_single_frame_instance_has_no_frame_result(self, service: Service) -> None:
        assert service.post(dicom_bytes()).json()["frame_result"] is None

    def test_the_series_lists_the_key_frame(self, service: Service) -> None:
        series, study = new_uid(), new_uid()
        data, _ = multiframe_bytes(3, series=series, study=study, seed=4)
        key = service.post(data).json()["frame_result"]["key_frame"]
        (instance,) = service.client.get(f"/v1/series/{series}").json()["results"][0]["instances"]
        assert instance["key_frame"] == key

    def test_over_the_declared_frame_limit_is_refused(self, service: Service) -> None:
        # 10,000 declared frames is the preprocessing limit (models.preprocessing.MAX_FRAMES)
        data, _ = multiframe_bytes(2, declared=10_001)
        before = service.count()
        body = assert_problem(service.post(data), 422, code="image-too-large")
        assert "10001 frames" in body["detail"]
        assert service.count() == before

    def test_fewer_frames_than_declared_is_refused_and_nothing_stored(
        self, service: Service
    ) -> None:
        data, _ = multiframe_bytes(3, declared=6)
        before = service.count()
        response = service.post(data)
        assert 400 <= response.status_code < 500, response.text
        assert_problem(response, response.status_code)
        assert service.count() == before


@pytest.fixture()
def two_frames_at_most(migrated_database_url: str, model_store: Any) -> Iterator[TestClient]:
    from radlens.app.main import create_app

    settings = make_settings(
        migrated_database_url, model_store, max_frames=2, series_aggregation="mean_top_k"
    )
    with TestClient(create_app(settings)) as client:
        yield client


def test_above_max_frames_every_kth_frame_is_predicted(two_frames_at_most: TestClient) -> None:
    from radlens.models.preprocessing import frame_indices

    data, _ = multiframe_bytes(7, seed=5)
    files = {"file": ("x.dcm", data, "application/dicom")}
    response = two_frames_at_most.post("/v1/predictions", files=files)
    assert response.status_code == 201, response.text
    result = response.json()["frame_result"]
    assert result["frames"] == frame_indices(7, 2) == [1, 5]  # every 4th, centred
    assert len(result["scores"]) == 2
    assert result["aggregation"] == "mean_top_k"
    assert response.json()["scores"]["abnormal"] == pytest.approx(
        sum(result["scores"]) / 2, abs=1e-6
    )

"""Times radlens emits and reads, for a site in another time zone with replicas whose clocks
and TZ differ (QA 47): SR/SC dates and times say their zone and do not depend on the
process's TZ; time filters read offsets (also a '+' the URL turned into a space) the same on
SQLite and PostgreSQL; pagination keeps rows that share a time; a refused time filter's value
is not written to the audit trail."""

from __future__ import annotations

import io
import os
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pydicom
import pytest

from tests.app.conftest import Service, dicom_bytes, new_uid, prediction_row


@pytest.fixture()
def process_tz() -> Iterator[Any]:
    """Switch this process's TZ (as `TZ=Asia/Kolkata radlens serve` would run); restored after."""
    before = os.environ.get("TZ")

    def switch(zone: str) -> None:
        os.environ["TZ"] = zone
        time.tzset()

    yield switch
    if before is None:
        os.environ.pop("TZ", None)
    else:
        os.environ["TZ"] = before
    time.tzset()


def _post(service: Service, data: bytes) -> dict[str, Any]:
    response = service.post(data, "src.dcm", params={"explain": "true"})
    assert response.status_code in (200, 201), response.text
    body: dict[str, Any] = response.json()
    return body


def _every_time(ds: Any, found: dict[str, str] | None = None) -> dict[str, str]:
    """Every DA, TM and DT value of ``ds`` (nested sequences too) by keyword."""
    found = {} if found is None else found
    for element in ds:
        if element.VR == "SQ":
            for item in element.value:
                _every_time(item, found)
        elif element.VR in ("DA", "TM", "DT") and element.value:
            found[element.keyword] = str(element.value)
    return found


def _times(data: bytes) -> tuple[str, str, str, str, str | None]:
    ds = pydicom.dcmread(io.BytesIO(data))
    return (
        ds.InstanceCreationDate,
        ds.InstanceCreationTime,
        ds.ContentDate,
        ds.ContentTime,
        ds.get("TimezoneOffsetFromUTC"),
    )


class TestDicomOutputTimes:
    @pytest.mark.parametrize("kind", ["sr", "secondary-capture"])
    def test_same_instant_in_utc_whatever_the_process_tz(
        self, service: Service, process_tz: Any, kind: str
    ) -> None:
        """A Kolkata replica and a UTC one (or two downloads) gave one SOP Instance UID two
        different local times, without an offset: now the prediction's time, in UTC, named."""
        prediction = _post(service, dicom_bytes())
        url = f"/v1/predictions/{prediction['id']}/dicom/{kind}"
        seen, every = [], []
        for zone in ("Asia/Kolkata", "UTC", "Europe/Berlin"):
            process_tz(zone)
            response = service.client.get(url)
            assert response.status_code == 200, response.text
            seen.append(_times(response.content))
            every.append(_every_time(pydicom.dcmread(io.BytesIO(response.content))))
        assert seen[0] == seen[1] == seen[2]
        created = datetime.fromisoformat(prediction["created_at"]).astimezone(UTC)
        day, clock = created.strftime("%Y%m%d"), created.strftime("%H%M%S.%f")
        assert seen[0] == (day, clock, day, clock, "+0000")
        # no other date or time of the instance is in the process's zone (highdicom's Date
        # and Time of Secondary Capture, its Contribution DateTime were)
        assert every[0] == every[1] == every[2]
        for keyword, value in every[0].items():
            assert value in (day, clock, day + clock + "+0000"), (keyword, value)

    def test_series_sr_states_its_newest_instance_time_in_utc(
        self, service: Service, process_tz: Any
    ) -> None:
        study, series = new_uid(), new_uid()
        posted = [
            _post(service, dicom_bytes(study=study, series=series, seed=i, instance=i + 1))
            for i in range(2)
        ]
        newest = max(datetime.fromisoformat(p["created_at"]) for p in posted).astimezone(UTC)
        every = []
        for zone in ("Asia/Kolkata", "UTC"):
            process_tz(zone)
            response = service.client.get(f"/v1/series/{series}/dicom/sr")
            assert response.status_code == 200, response.text
            every.append(_every_time(pydicom.dcmread(io.BytesIO(response.content))))
        assert every[0] == every[1]
        day, clock = newest.strftime("%Y%m%d"), newest.strftime("%H%M%S.%f")
        assert every[0]["ContentDate"] == day and every[0]["ContentTime"] == clock
        assert set(every[0].values()) <= {day, clock, day + clock + "+0000"}

    def test_copied_study_time_keeps_the_source_zone(self, process_tz: Any) -> None:
        """With the source's study date/time copied (RADLENS_DICOM_COPY_PATIENT), the output's
        own times are given in the source's Timezone Offset From UTC."""
        from radlens.app.dicom_outputs import build_sr, source_from_dataset

        process_tz("UTC")
        ds = pydicom.dcmread(
            io.BytesIO(dicom_bytes(patient={"StudyDate": "20260329", "StudyTime": "031500"}))
        )
        ds.TimezoneOffsetFromUTC = "+0200"  # Berlin, summer time from that night
        prediction = prediction_row(f"sop:{ds.SOPInstanceUID}")
        prediction.study_instance_uid = ds.StudyInstanceUID
        prediction.series_instance_uid = ds.SeriesInstanceUID
        prediction.sop_instance_uid = ds.SOPInstanceUID
        prediction.sop_class_uid = ds.SOPClassUID
        prediction.created_at = datetime(2026, 3, 29, 1, 30, tzinfo=UTC)
        sr = build_sr(prediction, source_from_dataset(ds, copy_patient=True))
        assert _times(sr) == ("20260329", "033000.000000", "20260329", "033000.000000", "+0200")
        assert pydicom.dcmread(io.BytesIO(sr)).StudyTime == "031500"
        every = _every_time(pydicom.dcmread(io.BytesIO(sr)))
        assert every["ContributionDateTime"] == "20260329033000.000000+0200"
        # a source that names no zone: its study time is the site's local time, and so are
        # the output's (Kolkata here), with no offset claimed for either
        process_tz("Asia/Kolkata")
        del ds.TimezoneOffsetFromUTC
        sr = build_sr(prediction, source_from_dataset(ds, copy_patient=True))
        assert _times(sr) == ("20260329", "070000.000000", "20260329", "070000.000000", None)


class TestTimeFilters:
    def _stamped(self, service: Service, times: list[datetime]) -> list[uuid.UUID]:
        """Rows with these created_at values (as replicas with other clocks would store)."""
        from radlens.app.services import record_prediction

        ids = []
        with service.app.state.resources.sessionmaker() as session:
            for at in times:
                row = prediction_row(f"sha256:{uuid.uuid4().hex}")
                row.created_at = at
                stored, created = record_prediction(session, row)
                assert created
                ids.append(stored.id)
            session.commit()
        return ids

    def _listed(self, service: Service, query: str) -> Any:
        limit = "" if "limit=" in query else "&limit=100"
        return service.client.get(f"/v1/predictions?model_name=tiny{limit}&{query}")

    def test_offsets_and_a_decoded_plus_select_the_same_rows(self, service: Service) -> None:
        """2099-03-29 01:30Z is 03:30+02:00 (Berlin, summer time) and 07:00+05:30 (Kolkata);
        a '+' typed into a URL arrives as a space and was a 422."""
        base = datetime(2099, 3, 29, 1, 30, tzinfo=UTC)
        ids = self._stamped(service, [base - timedelta(seconds=1), base + timedelta(seconds=1)])
        later = str(ids[1])
        queries = [
            "created_after=2099-03-29T01:30:00Z",
            "created_after=2099-03-29T01:30:00",  # naive: UTC
            "created_after=2099-03-29T03:30:00%2B02:00",
            "created_after=2099-03-29T03:30:00+02:00",  # '+' unencoded: a space
            "created_after=2099-03-29T07:00:00+05:30",
            "created_after=2099-03-29T07:00:00+0530",
            "created_after=2099-03-28T21:30:00-04:00",
        ]
        for query in queries:
            response = self._listed(service, f"{query}&created_before=2099-03-30T00:00:00Z")
            assert response.status_code == 200, (query, response.text)
            assert [i["id"] for i in response.json()["items"]] == [later], query

    def test_a_time_that_is_none_is_a_422(self, service: Service) -> None:
        for value in ("2099-13-01T00:00:00Z", "yesterday", "2099-03-29", "4102444800"):
            response = self._listed(service, f"created_after={value}")
            assert response.status_code == 422, value
            assert "created_after" in response.text

    def test_pages_keep_rows_that_share_a_time(self, service: Service) -> None:
        """Five rows of one microsecond (a batch, or two replicas): each once over the pages."""
        at = datetime(2098, 6, 1, 12, 0, 0, 123456, tzinfo=UTC)
        ids = self._stamped(service, [at] * 5)
        window = "created_after=2098-06-01T11:00:00Z&created_before=2098-06-01T13:00:00Z"
        seen: list[str] = []
        cursor = None
        for _ in range(5):
            query = f"{window}&limit=2" + (f"&cursor={cursor}" if cursor else "")
            body = self._listed(service, query).json()
            seen.extend(i["id"] for i in body["items"])
            cursor = body["next_cursor"]
            if cursor is None:
                break
        assert sorted(seen) == sorted(str(i) for i in ids)
        assert len(seen) == 5

    def test_a_row_stored_behind_the_cursor_by_a_late_clock_is_on_a_later_page(
        self, service: Service
    ) -> None:
        """Newest first: a row a slow-clocked replica stores after page 1 was read, with a time
        before the cursor, is still read on the next page."""
        base = datetime(2097, 1, 1, 12, 0, tzinfo=UTC)
        self._stamped(service, [base + timedelta(seconds=s) for s in (10, 20, 30)])
        window = "created_after=2097-01-01T11:00:00Z&created_before=2097-01-01T13:00:00Z"
        first = self._listed(service, f"{window}&limit=2").json()
        (late,) = self._stamped(service, [base + timedelta(seconds=5)])
        second = self._listed(service, f"{window}&limit=2&cursor={first['next_cursor']}").json()
        assert str(late) in [i["id"] for i in second["items"]]


class TestAuditOfTimeFilters:
    def test_a_refused_time_filter_value_is_withheld(self, service: Service) -> None:
        """?created_after=<a name and birth date> (a 422) was written into the append-only
        audit trail as typed; a number that is none (?limit=<MRN>) too."""
        from sqlalchemy import select

        from radlens.app.security_tables import AuditEvent

        response = service.client.get(
            "/v1/predictions",
            params={"created_after": "DOE^JOHN 19610402", "limit": "MRN0012345"},
        )
        assert response.status_code == 422
        fine = service.client.get(
            "/v1/predictions", params={"created_after": "2099-03-29T03:30:00+02:00", "limit": "5"}
        )
        assert fine.status_code == 200
        with service.app.state.resources.sessionmaker() as session:
            queries = list(
                session.scalars(
                    select(AuditEvent.query)
                    .where(AuditEvent.action == "prediction.list")
                    .order_by(AuditEvent.id.desc())
                    .limit(2)
                )
            )
        assert queries[1] == "created_after=*&limit=*"
        assert "DOE" not in repr(queries) and "MRN" not in repr(queries)
        assert queries[0] == "created_after=2099-03-29T03:30:00+02:00&limit=5"

    def test_an_all_digit_identifier_in_a_number_is_withheld(self, service: Service) -> None:
        """An MRN of digits typed as ?limit= or ?model_version= has a number's form: withheld
        beyond the digits such a value can have (QA round 50: limit=12345678 was recorded)."""
        from sqlalchemy import select

        from radlens.app.security_tables import AuditEvent

        response = service.client.get(
            "/v1/predictions", params={"limit": "12345678", "model_version": "9876543210"}
        )
        assert response.status_code == 422
        with service.app.state.resources.sessionmaker() as session:
            query = session.scalars(
                select(AuditEvent.query)
                .where(AuditEvent.action == "prediction.list")
                .order_by(AuditEvent.id.desc())
                .limit(1)
            ).one()
        assert query == "limit=*&model_version=*"

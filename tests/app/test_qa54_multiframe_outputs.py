"""QA round 54: the DICOM outputs of a prediction on some frames of a multi-frame instance.

A multi-frame instance (enhanced CT/MR, a cine) is predicted frame by frame, every k-th frame
above RADLENS_MAX_FRAMES and blank frames left out (app/ingest.py); a row stored before that
was predicted on the middle frame. The SR referenced the whole instance whatever was read: its
"Source of Measurement" now carries the Referenced Frame Numbers of the frames the scores come
from (none when every frame was used, as PS3.3 Table 10-3 asks). The overlay's right panel was
titled with its display size (the source scaled down to <= 1024 px a side) as if it were the
image's; the title gives no size now, and the SC's Derivation Description gives the true one.

Real files: pydicom-data's enhanced MR (emri_small.dcm, 10 frames of 64x64) and enhanced CT
(eCT_Supplemental.dcm, 2 frames of 512x512); ../shared/data/dicom holds no multi-frame file.
A generated 3-frame 1100x1300 CT with a blank frame covers a source larger than the display.
The objects are read back with pydicom and highdicom, and with dcmtk's dsrdump when installed.
"""

from __future__ import annotations

import io
import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from tests.app.conftest import Databases, dicom_bytes, prediction_row
from tests.app.test_outbox import outbox_settings, wait_for

pytest.importorskip("highdicom")
import pydicom

MAX_FRAMES = 4
PACS_PORT = 25410  # QA 54's range; nothing listens: the entries stay in the spool to be read


def _testdata(name: str) -> bytes:
    try:
        from pydicom.data import get_testdata_file

        path = get_testdata_file(name)
    except Exception as exc:  # pydicom-data absent or its cache unusable
        pytest.skip(f"pydicom-data's {name} is not available: {type(exc).__name__}")
    if path is None:
        pytest.skip(f"pydicom-data's {name} is not installed")
    return Path(str(path)).read_bytes()


def _large_multiframe() -> bytes:
    """A 3-frame CT of 1300 rows x 1100 columns (larger than the 1024 px display), frame 2
    blank (left out of the aggregate)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(rows=1300, columns=1100)))
    rng = np.random.default_rng(54)
    frames = [rng.integers(0, 4096, size=(1300, 1100), dtype=np.uint16) for _ in range(3)]
    frames[1][:] = 0
    ds.NumberOfFrames = 3
    ds.PixelData = b"".join(f.tobytes() for f in frames)
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue()


class App:
    def __init__(self, client: TestClient, spool: Path) -> None:
        self.client = client
        self.spool = spool

    def post(self, data: bytes) -> dict[str, Any]:
        response = self.client.post(
            "/v1/predictions", files={"file": ("mf.dcm", data, "application/dicom")}
        )
        assert response.status_code == 201, response.text
        body: dict[str, Any] = response.json()
        return body

    def output(self, prediction_id: str, kind: str) -> Any:
        path = "sr" if kind == "sr" else "secondary-capture"
        response = self.client.get(f"/v1/predictions/{prediction_id}/dicom/{path}")
        assert response.status_code == 200, response.text
        return pydicom.dcmread(io.BytesIO(response.content))

    def queued(self, prediction_id: str, kind: str) -> Any:
        """The object the outbox queued for the PACS (the spool is not encrypted here)."""

        def find() -> Path | None:
            for state in self.spool.glob("*.json"):
                entry = json.loads(state.read_text())
                if entry["prediction_id"] == prediction_id and entry["kind"] == kind:
                    return state.with_suffix(".dcm")
            return None

        return pydicom.dcmread(wait_for(find, 30, f"the queued {kind}"))


@pytest.fixture(scope="module")
def app(databases: Databases, model_store: Path, tmp_path_factory: Any) -> Iterator[App]:
    from radlens.app.main import create_app
    from radlens.app.migrate import upgrade

    url = databases.new()
    upgrade(url)
    spool = tmp_path_factory.mktemp("qa54-spool")
    settings = outbox_settings(
        url,
        model_store,
        spool,
        f"PACS@127.0.0.1:{PACS_PORT}/sr+sc",
        max_frames=MAX_FRAMES,
        max_upload_bytes=16 * 1024 * 1024,
        dicom_outbox_retry_s=60,
        dicom_outbox_retry_max_s=60,
    )
    with TestClient(create_app(settings)) as client:
        yield App(client, spool)


def _sources(sr: Any) -> list[tuple[str, list[int] | None]]:
    """Every measurement group's source images: (SOP Instance UID, frame numbers or None),
    parsed back by highdicom."""
    import highdicom as hd

    parsed = hd.sr.Comprehensive3DSR.from_dataset(sr)
    return [
        (str(image.referenced_sop_instance_uid), image.referenced_frame_numbers)
        for group in parsed.content.get_image_measurement_groups()
        for image in group.source_images
    ]


def _dsrdump(sr: Any, tmp_path: Path) -> str:
    """dcmtk's dump of the SR (-v: its warnings on stderr must be none); '' without dcmtk."""
    if shutil.which("dsrdump") is None:
        return ""
    path = tmp_path / "sr.dcm"
    sr.save_as(path, enforce_file_format=True)
    done = subprocess.run(
        ["dsrdump", "-v", str(path)], capture_output=True, text=True, timeout=60, check=False
    )
    assert done.returncode == 0 and done.stderr == "", done.stderr
    return done.stdout


def test_the_sr_of_a_sampled_enhanced_mr_references_the_frames_read(
    app: App, tmp_path: Path
) -> None:
    """10 frames above RADLENS_MAX_FRAMES=4: the scores come from frames 1, 4, 7 and 10; the SR
    served and the SR queued for the PACS both say so (they referenced all 10)."""
    data = _testdata("emri_small.dcm")
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    body = app.post(data)
    read = [i + 1 for i in body["frame_result"]["frames"]]
    assert body["frames"] == 10 and read == [1, 4, 7, 10]
    for sr in (app.output(body["id"], "sr"), app.queued(body["id"], "sr")):
        assert _sources(sr) == [(str(source.SOPInstanceUID), read)]
        (item,) = [
            item
            for group in sr.ContentSequence
            if "ContentSequence" in group
            for measurements in group.ContentSequence
            if "ContentSequence" in measurements
            for item in measurements.ContentSequence
            if item.ValueType == "IMAGE"
        ]
        assert [int(n) for n in item.ReferencedSOPSequence[0].ReferencedFrameNumber] == read
        # the evidence names the instance, as that macro (no frame numbers) does
        evidence = sr.CurrentRequestedProcedureEvidenceSequence[0].ReferencedSeriesSequence[0]
        assert evidence.ReferencedSOPSequence[0].ReferencedSOPInstanceUID == source.SOPInstanceUID
    dump = _dsrdump(app.output(body["id"], "sr"), tmp_path)
    if dump:
        assert '"Source of Measurement")=(MRe image,,1,...)' in dump, dump
    # the SC still names the one frame its overlay explains, the key frame
    sc = app.queued(body["id"], "sc")
    key = body["frame_result"]["key_frame"] + 1
    assert sc.SourceImageSequence[0].ReferencedFrameNumber == key
    assert f"of frame {key} of 10 (64 columns x 64 rows)" in sc.DerivationDescription


def test_an_enhanced_ct_read_whole_is_referenced_whole(app: App, tmp_path: Path) -> None:
    """2 frames, both predicted: a reference without frame numbers is to every frame."""
    data = _testdata("eCT_Supplemental.dcm")
    body = app.post(data)
    assert body["frame_result"]["frames"] == [0, 1]
    sr = app.output(body["id"], "sr")
    ((_, frames),) = _sources(sr)
    assert frames is None
    assert not any(e.keyword == "ReferencedFrameNumber" for e in sr.iterall())
    _dsrdump(sr, tmp_path)
    sc = app.output(body["id"], "sc")
    assert "(512 columns x 512 rows)" in sc.DerivationDescription


def test_a_large_source_names_its_own_size_and_the_frames_not_blank(
    app: App, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1300 x 1100 pixels: the overlay's right panel was titled "866x1024" (its display size,
    models.overlay.display_size) as the image's size. Its blank frame 2 is left out of the
    aggregate, and so out of the SR's reference."""
    from matplotlib.axes import Axes

    titles: list[str] = []
    original = Axes.set_title

    def recording(self: Any, label: str, *args: Any, **kwargs: Any) -> Any:
        titles.append(str(label))
        return original(self, label, *args, **kwargs)

    monkeypatch.setattr(Axes, "set_title", recording)
    body = app.post(_large_multiframe())
    assert body["frame_result"]["frames"] == [0, 2]
    assert body["frame_result"]["blank_frames"] == [1]
    sr = app.queued(body["id"], "sr")
    ((_, frames),) = _sources(sr)
    assert frames == [1, 3]
    # the overlay was drawn (two panels), and no title gives a size but the model input's
    assert "Grad-CAM on the image" in titles and "model input 32x32" in titles, titles
    sizes = {s for t in titles for s in re.findall(r"\d+x\d+", t)}
    assert sizes == {"32x32"}, titles
    sc = app.queued(body["id"], "sc")
    assert "(1100 columns x 1300 rows)" in sc.DerivationDescription


def test_the_series_sr_references_its_key_instance_frames(app: App) -> None:
    data = _testdata("emri_small.dcm")
    source = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    response = app.client.post(
        "/v1/predictions", files={"file": ("mf.dcm", data, "application/dicom")}
    )
    assert response.status_code in (200, 201), response.text  # stored by the test above
    series = app.client.get(f"/v1/series/{source.SeriesInstanceUID}/dicom/sr")
    assert series.status_code == 200, series.text
    sr = pydicom.dcmread(io.BytesIO(series.content))
    assert _sources(sr) == [(str(source.SOPInstanceUID), [1, 4, 7, 10])]


class TestAnalysedFrames:
    """The frames a stored row's scores come from, by what the row recorded."""

    def _row(self, frames: int, frame_result: dict[str, Any] | None) -> Any:
        row = prediction_row("sha256:" + "1" * 64)
        row.frames = frames
        row.frame_result = frame_result
        return row

    @pytest.mark.parametrize(
        ("frames", "frame_result", "expected"),
        [
            (1, None, None),  # single frame
            (5, None, [3]),  # stored before frame-by-frame prediction: the middle frame
            (4, None, [3]),  # frames // 2, the later of the two central ones
            (5, {"frames": [0, 1, 2, 3, 4]}, None),  # every frame: the whole instance
            (5, {"frames": [0, 2, 4]}, [1, 3, 5]),
            (5, {"frames": [0, 9]}, None),  # a frame the instance does not have: whole
            (5, {"frames": "bad"}, None),
        ],
    )
    def test_by_the_row(
        self, frames: int, frame_result: dict[str, Any] | None, expected: list[int] | None
    ) -> None:
        from radlens.app.dicom_outputs import analysed_frames

        assert analysed_frames(self._row(frames, frame_result)) == expected

    def test_an_older_rows_sr_names_the_middle_frame(self) -> None:
        """A row stored when a multi-frame instance was predicted on its middle frame alone."""
        from radlens.app.dicom_outputs import SourceRef, build_sr

        row = self._row(7, None)
        row.sop_class_uid = "1.2.840.10008.5.1.4.1.1.2.1"  # Enhanced CT Image Storage
        source = SourceRef("2.25.1", "2.25.2", "2.25.3", row.sop_class_uid, "CT")
        sr = pydicom.dcmread(io.BytesIO(build_sr(row, source)))
        assert _sources(sr) == [("2.25.3", [4])]

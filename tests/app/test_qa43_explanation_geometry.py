"""QA round 43: does the Grad-CAM heat land where the model looked, on the right pixels of the
original image, for real non-square, MONOCHROME1, multi-frame and EXIF-turned uploads?

The model is hand-weighted so that where it looks is known: it keeps only the upper-right
quadrant of its 64x64 input (Cropping2D + ZeroPadding2D), its one convolution ("blob", 3x3
mean, bias -0.9, ReLU) fires only where that quadrant is uniformly near white, and the class
"blob" rises with it. A white disk is painted into real images at (0.25, 0.72) of their height
and width (upper right) and a decoy at (0.72, 0.25) (its transpose, outside the model's field):
the heat must sit on the first in source pixel coordinates, never on the decoy, and the decoy
must show white in the overlay as a viewer shows the source (MONOCHROME1 painted with the
lowest stored value).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from tests.app.conftest import Databases, app_client

DATA = Path(__file__).resolve().parents[2] / ".." / "shared" / "data" / "dicom"
SIZE = 64
BLOB = (0.25, 0.72)  # (row, column) as fractions of the source's height and width
DECOY = (0.72, 0.25)
RADIUS = 0.07  # of the shorter side
TOLERANCE = 0.03  # of the side


def _blob_model(multi_label: bool = False) -> Any:
    import keras

    half = SIZE // 2
    inputs = keras.Input((SIZE, SIZE, 1))
    x = keras.layers.Cropping2D(((0, half), (half, 0)))(inputs)  # the upper-right quadrant
    x = keras.layers.ZeroPadding2D(((0, half), (half, 0)))(x)
    conv = keras.layers.Conv2D(1, 3, padding="same", activation="relu", name="blob")
    x = keras.layers.GlobalAveragePooling2D()(conv(x))
    head = keras.layers.Dense(2, activation="sigmoid" if multi_label else "softmax")
    model = keras.Model(inputs, head(x))
    conv.set_weights([np.full((3, 3, 1, 1), 1 / 9, np.float32), np.array([-0.9], np.float32)])
    if multi_label:  # "blob" rises with the blob, "other" ignores it
        head.set_weights([np.array([[400.0, 0.0]], np.float32), np.array([-1.0, -1.0], np.float32)])
    else:
        head.set_weights(
            [np.array([[-400.0, 400.0]], np.float32), np.array([1.0, -1.0], np.float32)]
        )
    return model


def _save(store: Path, multi_label: bool) -> None:
    from radlens.models.registry import ModelRegistry

    names = ["blob", "other"] if multi_label else ["normal", "blob"]
    ModelRegistry(store).save(
        _blob_model(multi_label),
        name="blob",
        architecture="simple_cnn",
        class_names=names,
        threshold=None if multi_label else 0.5,
        window=None,
        filters=[],
        metrics={"val": {"auc": 0.5}},
        training_config={"note": "QA43 hand-weighted blob detector"},
        data_fingerprint=None,
        findings=(
            {
                "label_mode": "multi-label",
                "scores": "independent",
                "none_name": "no blob",
                "thresholds": {"blob": 0.5, "other": 0.5},
            }
            if multi_label
            else None
        ),
    )


def _client(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory, multi_label: bool
) -> Iterator[Any]:
    store = tmp_path_factory.mktemp("qa43-store")
    _save(store, multi_label)
    yield from app_client(databases, store, max_upload_bytes=16 * 1024 * 1024, max_pixels=4_000_000)


@pytest.fixture(scope="module")
def client(databases: Databases, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    for client, _ in _client(databases, tmp_path_factory, multi_label=False):
        yield client


@pytest.fixture(scope="module")
def findings_client(
    databases: Databases, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Any]:
    for client, _ in _client(databases, tmp_path_factory, multi_label=True):
        yield client


# --- images -----------------------------------------------------------------------------


def _disk(rows: int, columns: int, centre: tuple[float, float], radius: float) -> np.ndarray:
    yy, xx = np.mgrid[0:rows, 0:columns]
    r = radius * min(rows, columns)
    return (yy + 0.5 - centre[0] * rows) ** 2 + (xx + 0.5 - centre[1] * columns) ** 2 <= r * r


def _paint(pixels: np.ndarray, value: Any, decoy: bool = True) -> np.ndarray:
    out = pixels.copy()
    rows, columns = out.shape
    out[_disk(rows, columns, BLOB, RADIUS)] = value
    if decoy:
        out[_disk(rows, columns, DECOY, RADIUS)] = value
    return out


def _dicom(path: Path, frames: dict[int, bool] | None = None) -> tuple[bytes, int, int]:
    """The file with the blob painted white (as displayed), uncompressed; ``frames``: for a
    multi-frame file, frame index -> with the decoy, the others left alone."""
    import pydicom
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    if not path.exists():
        pytest.skip(f"{path} is absent (../shared/data or pydicom-data not installed)")
    ds = pydicom.dcmread(path)
    pixels = ds.pixel_array
    white = pixels.min() if ds.PhotometricInterpretation == "MONOCHROME1" else pixels.max()
    if frames is None:
        pixels = _paint(pixels, white)
    else:
        pixels = pixels.copy()
        for index, decoy in frames.items():
            pixels[index] = _paint(pixels[index], white, decoy)
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.PixelData = pixels.tobytes()
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    buffer = io.BytesIO()
    ds.save_as(buffer, enforce_file_format=True)
    return buffer.getvalue(), int(ds.Rows), int(ds.Columns)


def _testdata(name: str) -> Path:
    try:
        from pydicom.data import get_testdata_file

        found = get_testdata_file(name, download=False)
    except Exception:  # pydicom-data absent: nothing may be downloaded
        found = None
    return Path(found) if found else Path("/nonexistent") / name


def _png(rows: int, columns: int) -> bytes:
    from PIL import Image

    base = np.random.default_rng(43).integers(40, 160, (rows, columns), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(_paint(base, 255)).save(buffer, format="PNG")
    return buffer.getvalue()


def _jpeg_turned(rows: int, columns: int) -> bytes:
    """A JPEG stored on its side with EXIF Orientation 6: a viewer shows it rows x columns,
    blob upper right."""
    from PIL import Image

    base = np.random.default_rng(44).integers(40, 160, (rows, columns), dtype=np.uint8)
    stored = Image.fromarray(_paint(base, 255)).transpose(Image.Transpose.ROTATE_90)
    exif = Image.Exif()
    exif[274] = 6
    buffer = io.BytesIO()
    stored.save(buffer, format="JPEG", quality=95, exif=exif.tobytes())
    return buffer.getvalue()


# --- reading the overlay ----------------------------------------------------------------


def _right_panel(png: bytes) -> np.ndarray:
    """The display-resolution panel of a two-panel overlay (models.overlay._render_pair's
    layout: axes at 0.44..0.86 of the width, 0.6 in under the top, 0.35 in over the bottom
    at 100 dpi), RGB in [0, 1]."""
    from PIL import Image

    image = np.asarray(Image.open(io.BytesIO(png)).convert("RGB"), dtype=np.float32) / 255
    height, width = image.shape[:2]
    return image[60 : height - 35, round(0.44 * width) : round(0.86 * width)]


def _heat_centre(panel: np.ndarray) -> tuple[float, float]:
    """Centroid (row, column fractions) of the colour the heat adds to the gray image."""
    colour = panel.max(axis=2) - panel.min(axis=2)
    colour = np.where(colour > 0.06, colour, 0.0)
    assert colour.sum() > 0, "no heat in the overlay"
    yy, xx = np.mgrid[0 : panel.shape[0], 0 : panel.shape[1]]
    total = colour.sum()
    return (
        float(((yy + 0.5) * colour).sum() / total / panel.shape[0]),
        float(((xx + 0.5) * colour).sum() / total / panel.shape[1]),
    )


def _explain(client: Any, data: bytes, query: str = "") -> dict[str, Any]:
    files = {"file": ("image", data, "application/octet-stream")}
    response = client.post(f"/v1/predictions?explain=true{query}", files=files)
    assert response.status_code == 201, response.text
    return dict(response.json())


def _check_overlay(client: Any, prediction_id: str, rows: int, columns: int) -> None:
    response = client.get(f"/v1/predictions/{prediction_id}/heatmap")
    assert response.status_code == 200, response.text
    panel = _right_panel(response.content)
    # the panel has the source's aspect (rows x columns, not transposed, not the model's)
    assert panel.shape[0] / panel.shape[1] == pytest.approx(rows / columns, rel=0.01)
    row, column = _heat_centre(panel)
    assert abs(row - BLOB[0]) < TOLERANCE and abs(column - BLOB[1]) < TOLERANCE, (row, column)
    # the decoy (no heat there) shows white, as a viewer shows the source
    decoy = _disk(panel.shape[0], panel.shape[1], DECOY, RADIUS / 2)
    assert panel[decoy].mean() > 0.9


# --- tests ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "source",
    [
        pytest.param(lambda: _dicom(DATA / "dx_image.dcm"), id="dx-monochrome1-169x211"),
        pytest.param(lambda: _dicom(_testdata("RG1_UNCR.dcm")), id="rg1-monochrome1-1955x1841"),
        pytest.param(lambda: (_png(300, 180), 300, 180), id="png-portrait"),
        pytest.param(lambda: (_jpeg_turned(300, 200), 300, 200), id="jpeg-exif-6"),
    ],
)
def test_heat_lands_on_the_blob_in_source_coordinates(client: Any, source: Any) -> None:
    data, rows, columns = source()
    created = _explain(client, data)
    assert (created["rows"], created["columns"]) == (rows, columns)
    assert created["scores"]["blob"] > 0.13  # the blob was seen (0.12 without it)
    _check_overlay(client, created["id"], rows, columns)


def test_secondary_capture_names_the_explained_frame(client: Any) -> None:
    """An enhanced CT of 2 frames with the blob in frame 0 (not the middle one): the key frame,
    explained and drawn, is frame 0, and the SC's reference says frame number 1."""
    import pydicom

    data, _, _ = _dicom(_testdata("eCT_Supplemental.dcm"), frames={0: False})
    created = _explain(client, data)
    assert created["frame_result"]["key_frame"] == 0
    _check_overlay_heat_only(client, created["id"])
    response = client.get(f"/v1/predictions/{created['id']}/dicom/secondary-capture")
    assert response.status_code == 200, response.text
    sc = pydicom.dcmread(io.BytesIO(response.content))
    reference = sc.SourceImageSequence[0]
    assert reference.ReferencedFrameNumber == 1
    assert "frame 1 of 2" in sc.DerivationDescription


def _check_overlay_heat_only(client: Any, prediction_id: str) -> None:
    response = client.get(f"/v1/predictions/{prediction_id}/heatmap")
    row, column = _heat_centre(_right_panel(response.content))
    assert abs(row - BLOB[0]) < TOLERANCE and abs(column - BLOB[1]) < TOLERANCE, (row, column)


def test_explained_frame_of_a_row_without_frame_result() -> None:
    """A multi-frame row stored without a key frame: the frame preprocessing picks (middle)."""
    from radlens.app.dicom_outputs import explained_frame
    from tests.app.conftest import prediction_row

    row = prediction_row("sha256:qa43")
    assert explained_frame(row) is None
    row.frames = 5
    assert explained_frame(row) == 3
    row.frame_result = {"key_frame": 4}
    assert explained_frame(row) == 5


def test_multi_label_overlay_is_drawn_on_the_source(findings_client: Any) -> None:
    """A multi-label model's overlay was drawn at the model input only: a 300x180 portrait
    radiograph came out square. Each finding's overlay now shows the source's aspect."""
    created = _explain(findings_client, _png(300, 180), "&finding=blob")
    _check_overlay(findings_client, created["id"], 300, 180)

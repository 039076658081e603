"""Small generated CT series (pydicom-written, 32 px) and series-labelled CSVs for the tests.

A positive ("nodule") series carries a bright disc on most of its slices, a negative
("normal") one only noise, so a tiny CNN learns the label in a few epochs; one slice of each
positive series shows nothing, as in real scans where the finding sits on a few slices.
Identifiers are synthetic.
"""

from __future__ import annotations

import csv
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

UID_ROOT = "1.2.826.0.1.3680043.10.1104."  # a test-only root, with a counter appended
SIZE = 32


def uid(*parts: object) -> str:
    """A deterministic UID from ``parts`` (pydicom's generator, the tests' prefix)."""
    from pydicom.uid import generate_uid

    return str(generate_uid(prefix=UID_ROOT, entropy_srcs=[str(p) for p in parts]))


def write_slice(
    path: Path,
    pixels: np.ndarray,
    *,
    patient_id: str,
    series_uid: str,
    instance: int,
    modality: str = "CT",
) -> Path:
    """One CT Image Storage file (uint16 stored values, rescale to HU); pixels (H, W) or
    (frames, H, W) for a multi-frame instance."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    stored = np.asarray(pixels, dtype=np.uint16)
    sop = uid("sop", series_uid, instance)
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = CTImageStorage
    meta.MediaStorageSOPInstanceUID = sop
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID = CTImageStorage
    ds.SOPInstanceUID = sop
    ds.Modality = modality
    ds.PatientID = patient_id
    ds.StudyInstanceUID = uid("study", patient_id)
    ds.SeriesInstanceUID = series_uid
    ds.InstanceNumber = instance
    ds.SamplesPerPixel = 1
    ds.PhotometricInterpretation = "MONOCHROME2"
    ds.Rows, ds.Columns = (int(v) for v in stored.shape[-2:])
    if stored.ndim == 3:
        ds.NumberOfFrames = stored.shape[0]
    ds.BitsAllocated = 16
    ds.BitsStored = 12
    ds.HighBit = 11
    ds.PixelRepresentation = 0
    ds.RescaleIntercept = "-1024"
    ds.RescaleSlope = "1"
    ds.PixelData = np.ascontiguousarray(stored, dtype="<u2").tobytes()
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path


def slice_pixels(rng: np.random.Generator, positive: bool, size: int = SIZE) -> np.ndarray:
    """Noise around -700 HU; a positive slice adds a bright disc (+900 HU) at a random place."""
    image = rng.normal(324.0, 60.0, (size, size))
    if positive:
        yy, xx = np.mgrid[:size, :size]
        cy, cx = rng.integers(size // 4, 3 * size // 4, 2)
        image[(yy - cy) ** 2 + (xx - cx) ** 2 <= (size // 6) ** 2] += 900.0
    return np.clip(image, 0, 4095).astype(np.uint16)


def write_series(
    folder: Path,
    *,
    patient_id: str,
    series_uid: str,
    positive: bool,
    slices: int,
    rng: np.random.Generator,
) -> Path:
    """``slices`` files in ``folder``; a positive series' first slice shows nothing."""
    for i in range(slices):
        write_slice(
            folder / f"slice{i:02d}.dcm",
            slice_pixels(rng, positive and i > 0),
            patient_id=patient_id,
            series_uid=series_uid,
            instance=i + 1,
        )
    return folder


def series_dataset(
    root: Path,
    *,
    patients: int = 6,
    slices: int = 4,
    seed: int = 0,
    by: str = "path",
    labels: tuple[str, str] = ("normal", "nodule"),
) -> Path:
    """``patients`` x 2 series (one of each label) of ``slices`` slices under ``root/dicom``
    and ``root/series.csv``; ``by``: "path" (series_path), "uid" (series_uid) or "both"."""
    rng = np.random.default_rng(seed)
    rows = []
    for p in range(patients):
        patient = f"SYN{p:03d}"
        for s, label in enumerate(labels):
            series_uid = uid("series", seed, p, s)
            folder = root / "dicom" / patient / f"series{s}"
            write_series(
                folder,
                patient_id=patient,
                series_uid=series_uid,
                positive=s == 1,
                slices=slices,
                rng=rng,
            )
            row = {"patient_id": patient, "label": label}
            if by in ("path", "both"):
                row["series_path"] = folder.relative_to(root).as_posix()
            if by in ("uid", "both"):
                row["series_uid"] = series_uid
            rows.append(row)
    return write_rows(root / "series.csv", rows)


def write_rows(path: Path, rows: Iterable[Mapping[str, object]]) -> Path:
    """A CSV of ``rows`` (the union of their keys as columns, first-seen order)."""
    rows = list(rows)
    columns: list[str] = []
    for row in rows:
        columns.extend(k for k in row if k not in columns)
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w", newline="", encoding="utf-8") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return path


def read_rows(path: Path) -> list[dict[str, str]]:
    with path.open(newline="", encoding="utf-8") as fh:
        return list(csv.DictReader(fh))

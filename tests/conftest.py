"""Shared fixtures: where the real data lives, and skips that say why."""

from __future__ import annotations

import hashlib
import io
import os
from itertools import islice
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]
SHARED_DATA = Path(os.environ.get("RADLENS_SHARED_DATA", REPO_ROOT.parent / "shared" / "data"))
SHARED_DICOM = SHARED_DATA / "dicom"

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

# The suite's longest single tests, with their seconds in one process on the shared 2-core
# machine (QA 107; their relative sizes are what counts). Under `make test` (pytest-xdist,
# --dist worksteal) each worker is first handed one contiguous half of the collection, and an
# idle worker then steals the *tail* of the other's queue, so a long test near the end of the
# collection (all of these are) could run last while the other worker sat idle: the run's
# wall time was its duration added to the rest. pytest_xdist_make_scheduler below hands them
# out first instead, longest first, shared by their seconds; every test still runs, and the
# others keep their order.
_RUN = "tests/training/test_run.py::"
LONGEST_TESTS = {
    "tests/test_quickstart.py::test_quickstart_sets_up_database_demo_data_and_demo_model": 320,
    _RUN + "test_resnet50_from_scratch_trains_everything_including_batchnorm": 200,
    _RUN + "test_deterministic_runs_repeat_exactly": 150,
    _RUN + "test_resnet50_two_phases_interrupted_in_phase_two_and_resumed": 115,
}
# Built and run only where .ci/run could start a Docker engine (otherwise it says skipped at once).
if os.environ.get("RADLENS_CONTAINER_CHECK") == "1":
    LONGEST_TESTS[
        "tests/test_container_check.py::test_the_image_builds_migrates_trains_serves_and_predicts"
    ] = 400


def longest_first(collection: list[str], workers: int) -> list[int]:
    """The order in which to hand out ``collection`` (node ids) so that the worksteal
    scheduler's first hand-out (worker k gets the next ``len(pending) // (workers - k)``)
    starts each worker on its share of LONGEST_TESTS; the others keep their order."""
    long = sorted(
        (i for i, nodeid in enumerate(collection) if nodeid in LONGEST_TESTS),
        key=lambda i: -LONGEST_TESTS[collection[i]],
    )
    heads: list[list[int]] = [[] for _ in range(workers)]
    seconds = [0] * workers
    for i in long:  # longest first, each to the least loaded worker
        k = seconds.index(min(seconds))
        heads[k].append(i)
        seconds[k] += LONGEST_TESTS[collection[i]]
    rest = iter([i for i, nodeid in enumerate(collection) if nodeid not in LONGEST_TESTS])
    order: list[int] = []
    remaining = len(collection)
    for k in range(workers):
        size = remaining // (workers - k)
        remaining -= size
        order += heads[k] + list(islice(rest, max(0, size - len(heads[k]))))
    order += list(rest)
    return order


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config: pytest.Config, log: object) -> object:
    """`make test`'s worksteal scheduling, with LONGEST_TESTS handed out first."""
    if config.getoption("dist") != "worksteal":
        return None
    from xdist.scheduler import WorkStealingScheduling

    class LongestFirst(WorkStealingScheduling):
        def schedule(self) -> None:
            collections = list(self.node2collection.values())
            # the first call (one whose collections differ is left to the base class's report)
            if (
                self.collection is None
                and collections[0]
                and collections.count(collections[0]) == len(collections)
            ):
                self.collection = collections[0]
                self.pending[:] = longest_first(self.collection, len(self.nodes))
            super().schedule()  # the collection is set: its first hand-out follows `pending`

    return LongestFirst(config, log)


def pynetdicom_dicom_paths() -> list[Path]:
    """The real DICOM files pynetdicom's wheel ships for its own tests (a CT with a bad file
    meta, big endian and JPEG 2000 MR, an RT image, a deflated secondary capture)."""
    import pynetdicom

    folder = Path(pynetdicom.__file__).parent / "tests" / "dicom_files"
    return sorted(folder.glob("*.dcm")) if folder.is_dir() else []


def packaged_dicom_paths() -> list[Path]:
    """The real DICOM files two more wheels ship, one path per distinct file: deid-data's (a
    cat's DX of 3072x2614, JPEG Baseline colour secondary captures, gray and RGB ultrasound,
    one a 30-frame cine) and nibabel's test files (Siemens MR: three mosaics, see
    KNOWN_MOSAICS; a JPEG 2000 one with an empty Slice Thickness; one whose pixels were
    zeroed, see KNOWN_BLANK)."""
    import deid_data
    import nibabel

    paths: dict[bytes, Path] = {}
    for package in (deid_data, nibabel):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*.dcm")):
            paths.setdefault(hashlib.sha256(path.read_bytes()).digest(), path)
    return list(paths.values())


# Real files whose every stored pixel is one value: the service refuses them (blank-image).
KNOWN_BLANK = {"decimal_rescale.dcm"}  # nibabel's rescale test: its pixel values are zeroed

# Real Siemens MR mosaics (Image Type ...\MOSAIC: many slices tiled in one frame), nibabel's
# nicom test files: every radlens path refuses them (invalid-image): the service's uploads and
# training's files through parse_dicom (QA 75), the CLI's preprocess(bytes) (QA 76).
KNOWN_MOSAICS = {"0.dcm", "1.dcm", "csa_slice_norm.dcm"}


def known_mosaic(path: Path) -> bool:
    """True for one of nibabel's mosaics (:data:`KNOWN_MOSAICS`; other corpora may have a
    ``0.dcm`` too)."""
    return path.name in KNOWN_MOSAICS and "nibabel" in path.parts


def mosaic_paths() -> list[Path]:
    """The corpus's real mosaics, one path per distinct file (:func:`packaged_dicom_paths`)."""
    return [path for path in packaged_dicom_paths() if known_mosaic(path)]


def real_dicom_paths(pattern: str = "*") -> list[Path]:
    """Every file matching ``pattern`` in pydicom's test, character-set and palette files and
    pydicom-data's test files, then pynetdicom's (:func:`pynetdicom_dicom_paths`), deid-data's
    and nibabel's (:func:`packaged_dicom_paths`) and the ``*.dcm`` of ../shared/data/dicom
    (when present).
    By directory: pydicom's ``get_testdata_files()`` would try to download its remote files."""
    from pydicom.data.data_manager import DATA_ROOT, external_data_sources

    # charset_files: names in Japanese, Korean, Chinese, Arabic, Hebrew, Greek, Cyrillic and
    # Latin-1 (QA round 11: the dicom-sr patient copy turned them into '?'); palettes: colour
    # palette instances, no pixels
    roots = [Path(DATA_ROOT) / name for name in ("test_files", "charset_files", "palettes")]
    roots += [Path(source.data_path) for source in external_data_sources().values()]
    paths = sorted(p for root in roots for p in root.rglob(pattern) if p.is_file())
    paths += [p for p in pynetdicom_dicom_paths() if p.match(pattern)]
    paths += [p for p in packaged_dicom_paths() if p.match(pattern)]
    if SHARED_DICOM.is_dir():
        paths += sorted(SHARED_DICOM.glob("*.dcm"))
    return paths


def segmentation_of_ct_small() -> bytes:
    """A binary SEG of pydicom's CT_small, built by highdicom: pixels (a mask), no picture."""
    import highdicom as hd
    import numpy as np
    import pydicom
    from pydicom.data import get_testdata_file
    from pydicom.sr.codedict import codes

    source = pydicom.dcmread(get_testdata_file("CT_small.dcm"))
    mask = np.zeros((1, source.Rows, source.Columns), dtype=bool)
    mask[0, 40:80, 40:80] = True
    seg = hd.seg.Segmentation(
        source_images=[source],
        pixel_array=mask,
        segmentation_type=hd.seg.SegmentationTypeValues.BINARY,
        segment_descriptions=[
            hd.seg.SegmentDescription(
                segment_number=1,
                segment_label="lesion",
                segmented_property_category=codes.SCT.MorphologicallyAbnormalStructure,
                segmented_property_type=codes.SCT.Neoplasm,
                algorithm_type=hd.seg.SegmentAlgorithmTypeValues.MANUAL,
            )
        ],
        series_instance_uid=hd.UID(),
        series_number=2,
        sop_instance_uid=hd.UID(),
        instance_number=1,
        manufacturer="test",
        manufacturer_model_name="test",
        software_versions="1",
        device_serial_number="1",
    )
    buf = io.BytesIO()
    seg.save_as(buf)
    return buf.getvalue()


def shared_data_path(*parts: str) -> Path:
    """Path into ../shared/data, skipping the calling test when it is absent."""
    path = SHARED_DATA.joinpath(*parts)
    if not path.exists():
        pytest.skip(f"real data not available: {path} is absent (see ../shared/data/README.md)")
    return path


@pytest.fixture(scope="session")
def shared_dicom_dir() -> Path:
    return shared_data_path("dicom")


@pytest.fixture()
def clean_radlens_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No ``RADLENS_`` variable from the caller's environment, and no cached settings: what a
    settings or CLI test sees is only what it sets itself."""
    for key in list(os.environ):
        if key.startswith("RADLENS_"):
            monkeypatch.delenv(key)
    from radlens.app.settings import get_settings

    get_settings.cache_clear()


def record_decodes(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The pixel decodes models.preprocessing starts (a full frame, a reduced JPEG 2000 or
    JPEG one), by name, as each starts (then run as usual). A refusal said to come from the
    header, before any decode, checks that this list is empty rather than timing the refusal
    (QA 94: speed is measured in bench/, not asserted in tests)."""
    from radlens.models import preprocessing

    started: list[str] = []
    for name in ("_decode_frame", "_decode_j2k_reduced", "_decode_jpeg_reduced"):
        real = getattr(preprocessing, name)

        def recorded(
            *args: object, _real: object = real, _name: str = name, **kw: object
        ) -> object:
            started.append(_name)
            return _real(*args, **kw)  # type: ignore[operator]

        monkeypatch.setattr(preprocessing, name, recorded)
    return started

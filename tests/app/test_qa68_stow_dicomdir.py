"""QA 68: STOW-RS of a DICOM media export sends its DICOMDIR too (app/routes/dicomweb.py).

A DICOMweb client uploading the folder of a CD/DVD/USB export (IHE PDI) posts every Part 10
file in it: the images and the DICOMDIR, the media's index (Media Storage Directory Storage,
1.2.840.10008.1.3.10: a directory of patients, studies and files, no image, no SOP Class or
Instance UID in its data set, only in its file meta information). Each was a failure, 0x0122
``no-pixel-data`` without its UIDs, so the upload was a 202 (Orthanc fails its whole STOW-RS
job on one failure, docs/pacs-integration.md). It is now acknowledged as the instances of other
classes that hold no image are: listed in the ReferencedSOPSequence with its UIDs and
``(0099,1003)`` "non-image", not predicted, nothing of it stored
(RADLENS_NON_IMAGE_INSTANCES=acknowledge, the default); under ``refuse`` it fails with 0x0122
naming what it is, with its UIDs. It belongs to no study: a study's STOW-RS does not fail it as
another study's.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from pydicom import dcmread

from tests.app.conftest import Databases, Service, app_client, new_uid
from tests.app.test_qa35_non_image_dimse import encoded, everything_stored, mixed_study
from tests.app.test_stowrs import multipart_related, parse

DICOMDIR_CLASS = "1.2.840.10008.1.3.10"


def _export_dicomdir(root: Path) -> bytes:
    """The DICOMDIR of a media export pydicom's FileSet writes (three CT images)."""
    from tests.training.test_qa53_media_export import write_export

    write_export(root, ["QA68"], seed=68, junk=False)
    return (root / "DICOMDIR").read_bytes()


def _pydicom_dicomdir() -> bytes:
    """pydicom's own DICOMDIR test file (a real one, written by another toolkit)."""
    from pydicom.data import get_testdata_file

    found = get_testdata_file("DICOMDIR")
    if not found:
        pytest.skip("pydicom's DICOMDIR test file is not installed")
    return Path(str(found)).read_bytes()


def _post(client: Any, parts: list[bytes], url: str = "/dicomweb/studies") -> Any:
    body, content_type = multipart_related(parts)
    return client.post(url, content=body, headers={"Content-Type": content_type})


def _meta_uids(data: bytes) -> tuple[str, str]:
    import io

    meta = dcmread(io.BytesIO(data), stop_before_pixels=True).file_meta
    return str(meta.MediaStorageSOPClassUID), str(meta.MediaStorageSOPInstanceUID)


@pytest.mark.parametrize("which", ["fileset", "pydicom"])
@pytest.mark.parametrize("scoped", [False, True], ids=["studies", "one-study"])
def test_a_dicomdir_is_acknowledged_with_the_images(
    service: Service, tmp_path: Path, which: str, scoped: bool
) -> None:
    dicomdir = _export_dicomdir(tmp_path / "CD") if which == "fileset" else _pydicom_dicomdir()
    sop_class, sop_instance = _meta_uids(dicomdir)
    assert sop_class == DICOMDIR_CLASS
    study = new_uid()
    shown, _rest = mixed_study(study)
    before = service.count()
    url = f"/dicomweb/studies/{study}" if scoped else "/dicomweb/studies"
    response = _post(service.client, [dicomdir, *(encoded(ds) for ds in shown)], url)
    assert response.status_code == 200, response.text
    body = parse(response)
    assert "FailedSOPSequence" not in body
    items = {str(i.ReferencedSOPInstanceUID): i for i in body.ReferencedSOPSequence}
    item = items[sop_instance]
    assert str(item.ReferencedSOPClassUID) == DICOMDIR_CLASS
    assert item[0x00991003].value == "non-image"
    assert 0x00991001 not in item and 0x00081190 not in item  # no prediction
    assert [items[str(ds.SOPInstanceUID)][0x00991003].value for ds in shown] == ["created"] * 2
    assert service.count() == before + len(shown)
    assert sop_instance not in everything_stored(service.app)


def test_a_dicomdir_alone_is_a_200_and_the_model_never_sees_it(
    service: Service, tmp_path: Path
) -> None:
    dicomdir = _export_dicomdir(tmp_path / "CD")
    ingestor = service.app.state.resources.ingestor
    prepared: list[int] = []
    real = ingestor.prepare

    async def counting(data: bytes, *args: Any, **kwargs: Any) -> Any:
        prepared.append(len(data))
        return await real(data, *args, **kwargs)

    ingestor.prepare = counting
    try:
        response = _post(service.client, [dicomdir])
    finally:
        del ingestor.prepare
    assert response.status_code == 200, response.text
    (item,) = parse(response).ReferencedSOPSequence
    assert item[0x00991003].value == "non-image"
    assert prepared == []


@pytest.fixture(scope="module")
def refusing(databases: Databases, model_store: Path) -> Iterator[Any]:
    for client, _app in app_client(databases, model_store, non_image_instances="refuse"):
        yield client


def test_refuse_fails_it_with_its_uids_and_what_it_is(refusing: Any, tmp_path: Path) -> None:
    dicomdir = _export_dicomdir(tmp_path / "CD")
    sop_class, sop_instance = _meta_uids(dicomdir)
    study = new_uid()
    shown, _rest = mixed_study(study)
    response = _post(
        refusing, [dicomdir, *(encoded(ds) for ds in shown)], f"/dicomweb/studies/{study}"
    )
    assert response.status_code == 202, response.text
    (failed,) = parse(response).FailedSOPSequence
    assert failed.FailureReason == 0x0122
    assert (str(failed.ReferencedSOPClassUID), str(failed.ReferencedSOPInstanceUID)) == (
        sop_class,
        sop_instance,
    )
    assert failed[0x00991004].value == "no-pixel-data"
    assert "DICOMDIR, the index of a DICOM media export" in failed[0x00991005].value

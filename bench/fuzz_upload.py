"""A longer fuzz of the upload path (issue 7): mutated DICOM, PNG and JPEG files, field-level
DICOM mutations and raw bytes, posted to POST /v1/predictions; never a 5xx.

Not a test (CI runs the bounded schemathesis fuzz, tests/app/test_schemathesis.py, and the
bad-input corpus, tests/app/test_bad_inputs.py). Run from the repository root:

    .venv/bin/python -m bench.fuzz_upload                          # 2000 examples, SQLite
    .venv/bin/python -m bench.fuzz_upload --examples 300 --seed 1

Hypothesis generates each upload from valid seeds (a small CT DICOM in Explicit VR Little
Endian, one RLE Lossless, pydicom's small JPEG 2000 and JPEG-LS MR files, a 8-bit and a
16-bit PNG, a JPEG) by byte flips, truncation, insertion, deletion and splicing; by setting
DICOM attributes (Rows, Columns, BitsAllocated, BitsStored, SamplesPerPixel,
PhotometricInterpretation, NumberOfFrames, PixelRepresentation, the transfer syntax) to
arbitrary values; and as raw bytes. Each goes through the real app in
process (lifespan, tiny model, SQLite built by the migrations, auth on, the request's key)
via Starlette's TestClient. The property: the answer is 201/200, or a 413/415/422
application/problem+json; a 5xx or another status fails and Hypothesis shrinks it to a
minimal upload. At the end it prints counts by status and problem type, and checks that the
predictions table holds exactly one row per 201.
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
import warnings
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

ALLOWED = {200, 201, 413, 415, 422}


def seeds() -> dict[str, bytes]:
    from PIL import Image
    from pydicom import dcmread
    from pydicom.data import get_testdata_file
    from pydicom.uid import RLELossless

    from bench._reliability import dicom_template

    rng = np.random.default_rng(0)
    dicom = dicom_template(16)
    ds = dcmread(io.BytesIO(dicom))
    ds.compress(RLELossless, encoding_plugin="pydicom")
    rle = io.BytesIO()
    ds.save_as(rle, enforce_file_format=True)
    out = {"dicom": dicom, "dicom-rle": rle.getvalue()}
    # JPEG 2000 and JPEG-LS (decoded by models/codecs.py's imagecodecs plugin): small files
    # that ship inside pydicom's wheel
    for name, fname in (
        ("dicom-j2k", "MR_small_jp2klossless.dcm"),
        ("dicom-jpegls", "MR_small_jpeg_ls_lossless.dcm"),
    ):
        out[name] = Path(str(get_testdata_file(fname))).read_bytes()
    for name, array, fmt in (
        ("png8", rng.integers(0, 256, (12, 10), dtype=np.uint8), "PNG"),
        ("png16", rng.integers(0, 65536, (12, 10), dtype=np.uint16), "PNG"),
        ("jpeg", rng.integers(0, 256, (12, 10), dtype=np.uint8), "JPEG"),
    ):
        buf = io.BytesIO()
        Image.fromarray(array).save(buf, format=fmt)
        out[name] = buf.getvalue()
    return out


def strategies(seed_files: dict[str, bytes]) -> Any:
    from hypothesis import strategies as st

    seed = st.sampled_from(sorted(seed_files)).map(seed_files.__getitem__)

    @st.composite
    def mutated(draw: Any) -> bytes:
        data = bytearray(draw(seed))
        for _ in range(draw(st.integers(1, 6))):
            op = draw(st.sampled_from(["flip", "truncate", "insert", "delete", "splice"]))
            if not data:
                break
            at = draw(st.integers(0, len(data) - 1))
            if op == "flip":
                data[at] = draw(st.integers(0, 255))
            elif op == "truncate":
                del data[at:]
            elif op == "insert":
                data[at:at] = draw(st.binary(min_size=1, max_size=64))
            elif op == "delete":
                del data[at : at + draw(st.integers(1, 64))]
            else:  # splice in a slice of another seed
                other = draw(seed)
                start = draw(st.integers(0, len(other) - 1))
                data[at:at] = other[start : start + draw(st.integers(1, 256))]
        return bytes(data)

    @st.composite
    def dicom_fields(draw: Any) -> bytes:
        from pydicom import dcmread
        from pydicom.uid import UID

        ds = dcmread(io.BytesIO(seed_files[draw(st.sampled_from(["dicom", "dicom-rle"]))]))
        small = st.integers(-2, 70_000)
        for keyword, values in (
            ("Rows", small),
            ("Columns", small),
            ("BitsAllocated", st.sampled_from([0, 1, 7, 8, 12, 16, 32, 64, 65535])),
            ("BitsStored", st.integers(0, 70)),
            ("SamplesPerPixel", st.integers(0, 9)),
            ("PixelRepresentation", st.integers(0, 3)),
            ("NumberOfFrames", st.integers(-1, 100_000)),
            (
                "PhotometricInterpretation",
                st.sampled_from(["MONOCHROME1", "RGB", "YBR_FULL", "PALETTE COLOR", "XYZ", ""]),
            ),
        ):
            if draw(st.booleans()):
                value = draw(values)
                # a value pydicom refuses itself is not an upload we can build: left as it was
                with (
                    warnings.catch_warnings(),
                    contextlib.suppress(ValueError, TypeError, OverflowError),
                ):
                    warnings.simplefilter("ignore")
                    setattr(ds, keyword, value)
        if draw(st.booleans()):
            ds.file_meta.TransferSyntaxUID = UID(
                draw(
                    st.sampled_from(
                        [
                            "1.2.840.10008.1.2",
                            "1.2.840.10008.1.2.2",
                            "1.2.840.10008.1.2.4.50",
                            "1.2.840.10008.1.2.4.90",
                            "1.2.840.10008.1.2.5",
                            "1.2.840.10008.1.2.1.99",
                            "1.2.3.4",
                        ]
                    )
                )
            )
        buf = io.BytesIO()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            try:
                ds.save_as(buf, enforce_file_format=True)
            except Exception:  # an unwritable dataset is not an upload; use the raw seed
                return seed_files["dicom"]
        return buf.getvalue()

    return st.one_of(mutated(), dicom_fields(), st.binary(max_size=4096))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)

    from hypothesis import HealthCheck, given, seed, settings

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=r"Using `httpx` with `starlette\.testclient`")
        from fastapi.testclient import TestClient

    from bench._reliability import prepare_database, save_small_model
    from radlens.app.main import create_app
    from radlens.app.settings import Settings

    statuses: Counter[str] = Counter()
    created = 0
    with tempfile.TemporaryDirectory(prefix="radlens-fuzz-") as tmp_name:
        tmp = Path(tmp_name)
        store = tmp / "store"
        save_small_model(store, "simple_cnn", 32)
        url = f"sqlite:///{tmp / 'fuzz.db'}"
        key = prepare_database(url)
        settings_ = Settings(
            database_url=url,
            model_store=store,
            device="cpu",
            auth="enabled",
            max_upload_bytes=1 << 20,
            max_pixels=4_000_000,
        )
        app = create_app(settings_)
        seed_files = seeds()
        t0 = time.monotonic()
        with TestClient(app, headers={"Authorization": f"Bearer {key}"}) as client:

            @seed(args.seed)
            @settings(
                max_examples=args.examples,
                deadline=None,
                database=None,
                suppress_health_check=list(HealthCheck),
            )
            @given(strategies(seed_files))
            def fuzz(data: bytes) -> None:
                nonlocal created
                r = client.post(
                    "/v1/predictions", files={"file": ("upload", data, "application/octet-stream")}
                )
                problem = r.headers.get("content-type", "").startswith("application/problem+json")
                kind = r.json().get("type", "").rsplit(":", 1)[-1] if problem else ""
                statuses[f"{r.status_code} {kind}".strip()] += 1
                created += r.status_code == 201
                assert r.status_code in ALLOWED, (r.status_code, r.text[:300], data[:64])
                if r.status_code >= 400:
                    assert problem, r.headers.get("content-type")

            failed = None
            try:
                fuzz()
            except AssertionError as exc:
                failed = exc
            from sqlalchemy import func, select

            from radlens.app.tables import Prediction

            with app.state.resources.sessionmaker() as session:
                rows = int(session.scalar(select(func.count()).select_from(Prediction)) or 0)
        elapsed = time.monotonic() - t0
    total = sum(statuses.values())
    print(
        f"fuzz_upload: {total} uploads in {elapsed:.0f} s ({total / elapsed:.1f}/s), "
        f"seed {args.seed}"
    )
    for name, count in statuses.most_common():
        print(f"  {count:6d}  {name}")
    # 200s are re-posts of an already-stored instance (same UID or bytes): no new row
    print(f"  rows in predictions: {rows}; 201 responses: {created}")
    if failed is not None:
        print(f"FAIL: {failed}")
        return 1
    ok = rows == created
    print("PASS" if ok else "FAIL")
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

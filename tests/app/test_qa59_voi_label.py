"""QA 59: the VOI label stored with a prediction (predictions.voi, migration 0018) holds numbers
and fixed words only: what preprocessing writes for hostile window attributes, what it would
write were pydicom to apply a function it does not know, and what app/ingest.recorded_voi lets
into the column; and 0018 goes down and up on SQLite and PostgreSQL keeping the rows."""

from __future__ import annotations

import io
import re
from typing import Any

import pydicom
import pytest

from tests.app.conftest import dicom_bytes

NAME = b"JOHN^DOE"  # the same length as the placeholders it replaces in the file's bytes
PLACEHOLDER = "1234.567"  # a valid DS
WORD = "ABCDEFGH"  # a valid CS


def windowed(replace: bool = False, **attributes: Any) -> bytes:
    """The conftest CT with ``attributes``; ``replace``: the placeholder's bytes become a
    patient's name (text where a number or a function name belongs, as a hostile file has it;
    written as bytes: pydicom refuses to write it)."""
    ds = pydicom.dcmread(io.BytesIO(dicom_bytes(seed=59)))
    for keyword, value in attributes.items():
        setattr(ds, keyword, value)
    buf = io.BytesIO()
    ds.save_as(buf, enforce_file_format=True)
    data = buf.getvalue()
    if replace:
        placeholders = [p.encode() for p in (PLACEHOLDER, WORD) if data.count(p.encode())]
        assert len(placeholders) == 1 and data.count(placeholders[0]) == 1
        data = data.replace(placeholders[0], NAME)
    return data


def label_of(data: bytes) -> str:
    from radlens.models.preprocessing import preprocess

    return preprocess(data, size=(32, 32)).metadata.window


HOSTILE_FILES = {
    "function": (True, {"VOILUTFunction": WORD}),
    "function, two values": (False, {"VOILUTFunction": ["SIGMOID", "JOHN"]}),
    "center": (True, {"WindowCenter": PLACEHOLDER}),
    "second center": (True, {"WindowCenter": ["40", PLACEHOLDER]}),
    "width": (True, {"WindowWidth": PLACEHOLDER}),
    "explanation": (False, {"WindowCenterWidthExplanation": "JOHN DOE"}),
}


@pytest.mark.parametrize("case", list(HOSTILE_FILES))
def test_hostile_window_attributes_give_a_label_of_numbers_and_names(case: str) -> None:
    from radlens.app.ingest import recorded_voi

    replace, attributes = HOSTILE_FILES[case]
    base = {"WindowCenter": "40", "WindowWidth": "400"}
    label = label_of(windowed(replace, **{**base, **attributes}))
    assert "JOHN" not in label.upper() and "DOE" not in label.upper()
    assert recorded_voi(label) == label  # a form the column takes as it is


def test_a_function_pydicom_let_through_is_not_named(monkeypatch: pytest.MonkeyPatch) -> None:
    """Were pydicom to apply a VOI LUT Function it does not know (a later release, a lenient
    reader), its text still would not reach the label: only LINEAR_EXACT and SIGMOID are
    named; anything else is an unusable window (min-max)."""
    import copy

    import pydicom.pixels

    real = pydicom.pixels.apply_windowing

    def lenient(arr: Any, ds: Any, *args: Any, **kwargs: Any) -> Any:
        linear = copy.deepcopy(ds)
        linear.pop("VOILUTFunction", None)
        return real(arr, linear, *args, **kwargs)

    monkeypatch.setattr(pydicom.pixels, "apply_windowing", lenient)
    data = windowed(True, WindowCenter="40", WindowWidth="400", VOILUTFunction=WORD)
    assert label_of(data) == "minmax(not file:unusable)"
    sigmoid = windowed(WindowCenter="40", WindowWidth="400", VOILUTFunction="SIGMOID")
    assert label_of(sigmoid) == "file:40/400 SIGMOID"


KNOWN = [
    "preset:lung(-600/1500)",
    "preset:soft_tissue(40/400)",
    "file:40/400",
    "file:600/1600 SIGMOID",
    "file:-1.79769e+308/1.79769e+308 LINEAR_EXACT",
    "file:1.5e-05/inf",
    "voi-lut",
    "minmax",
    "minmax(not file:40/1)",
    "minmax(not file:unusable)",
    "minmax(not voi-lut)",
    "minmax(not file:nan/1600)",
    "minmax(not file:-1.79769e+308/-1.79769e+308 LINEAR_EXACT)",
    "full-range",
]


@pytest.mark.parametrize("label", KNOWN)
def test_every_label_preprocessing_writes_is_recorded(label: str) -> None:
    from radlens.app.ingest import VOI_LENGTH, recorded_voi
    from radlens.app.tables import Prediction

    assert recorded_voi(label) == label
    assert len(label) <= VOI_LENGTH == Prediction.__table__.c["voi"].type.length


@pytest.mark.parametrize(
    "label",
    [
        "file:40/400 DOE^JOHN",
        "file:40/400 SIGMOID\n",
        "file:JOHN/400",
        "minmax(not file:40/400 JOHN)",
        "preset:lung(-600/1500) ",
        "Preset:LUNG(-600/1500)",
        "file:" + "1" * 70 + "/400",
        "",
    ],
)
def test_anything_else_is_unrecognised(label: str) -> None:
    from radlens.app.ingest import recorded_voi

    assert recorded_voi(label) == "unrecognised"


def test_the_preprocessing_docs_name_the_labels_the_column_takes() -> None:
    """docs/internals.md's ImageMetadata.window examples are labels the column takes."""
    from pathlib import Path

    from radlens.app.ingest import recorded_voi

    text = (Path(__file__).resolve().parents[2] / "docs" / "internals.md").read_text()
    block = text[text.index("window: str  ") :][:400]
    examples = re.findall(r'"([^"]+)"', block.split("manufacturer")[0])
    assert len(examples) >= 8, examples
    assert [recorded_voi(e) for e in examples] == examples


def test_0018_down_and_up_keeps_the_predictions(migrated_database_url: str) -> None:
    """0018 adds one nullable column; undoing it drops only that column (the rows stay), and
    redoing it leaves the existing rows unknown (NULL), as rows stored before 0018 are."""
    from sqlalchemy import inspect, text

    from radlens.app.db import make_engine, make_sessionmaker
    from radlens.app.migrate import current_revision, downgrade, head_revision, upgrade
    from tests.app.conftest import prediction_row
    from tests.app.test_migrations import _diff

    url = migrated_database_url
    engine = make_engine(url)

    def columns() -> set[str]:
        return {c["name"] for c in inspect(engine).get_columns("predictions")}

    try:
        with make_sessionmaker(engine)() as session:
            row = prediction_row("sha256:voi")
            row.voi = "file:40/400"
            session.add(row)
            session.commit()
        downgrade(url, "0017")
        assert current_revision(engine) == "0017"
        assert "voi" not in columns()
        with engine.connect() as conn:
            assert conn.execute(text("SELECT count(*) FROM predictions")).scalar() == 1
        upgrade(url, "0018")
        assert "voi" in columns()
        with engine.connect() as conn:
            values = conn.execute(text("SELECT voi FROM predictions")).all()
        assert [tuple(v) for v in values] == [(None,)]
        upgrade(url)
        assert current_revision(engine) == head_revision()
    finally:
        engine.dispose()
    assert _diff(url) == []

"""The service's tables. No patient identifiers: only UIDs, image geometry and provenance.

A prediction is unique per (model name, model version, dedupe identity), the identity being a
keyed hash of the SOP Instance UID as received, else the input's sha256 (app/dedupe.py), so
re-posting the same instance to the same model returns the stored prediction whatever the
pseudonymisation. Rows stored before migration 0010 have no identity and are unique per (model
name, model version, dedupe key), where the dedupe key is ``sop:<SOP Instance UID as stored>``
for DICOM instances that carry one and ``sha256:<input sha256>`` otherwise (new rows keep
recording it, so both rules are enforced by the database).
"""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    String,
    UniqueConstraint,
    Uuid,
)
from sqlalchemy.orm import Mapped, mapped_column

from radlens.app.db import Base, UTCDateTime, utcnow
from radlens.app.dedupe import IDENTITY_LENGTH

UID_LENGTH = 64  # DICOM UI value representation: at most 64 characters
VOI_LENGTH = 64  # predictions.voi (0018): the longest label preprocessing writes is ~57


class Prediction(Base):
    """One model decision on one uploaded image, with its provenance."""

    __tablename__ = "predictions"
    __table_args__ = (
        UniqueConstraint("model_name", "model_version", "dedupe_key"),
        # (0010) the identity that survives pseudonymisation changes (app/dedupe.py); NULL
        # (rows before 0010) never conflicts: those rows keep the dedupe_key rule
        UniqueConstraint("model_name", "model_version", "dedupe_identity"),
        Index(None, "created_at", "id"),
        Index(None, "study_instance_uid"),
        Index(None, "label"),
        Index(None, "series_instance_uid"),  # (0008) GET /v1/series/{uid}
        # (0014) the drift window: the last N predictions of one model (app/drift.py)
        Index(None, "model_name", "model_version", "created_at"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(as_uuid=True), primary_key=True, default=uuid.uuid4)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)

    model_name: Mapped[str] = mapped_column(String(128))
    model_version: Mapped[int] = mapped_column(Integer)
    preprocessing_version: Mapped[str] = mapped_column(String(32))
    device: Mapped[str] = mapped_column(String(32))
    runtime: Mapped[str | None] = mapped_column(String(16))  # tensorflow | openvino (0005)
    precision: Mapped[str | None] = mapped_column(String(8))  # fp32 | bf16 (0005)

    label: Mapped[str] = mapped_column(String(128))
    scores: Mapped[dict[str, Any]] = mapped_column(JSON)
    threshold: Mapped[float | None] = mapped_column(Float)
    # (0011) the manifest's operating point whose threshold decided the label
    # (RADLENS_OPERATING_POINT; "chosen": the model's own); NULL: multi-class, or before 0011
    operating_point: Mapped[str | None] = mapped_column(String(32))
    inference_ms: Mapped[float] = mapped_column(Float)
    batch_size: Mapped[int] = mapped_column(Integer)

    dedupe_key: Mapped[str] = mapped_column(String(80))
    input_sha256: Mapped[str] = mapped_column(String(64))
    input_format: Mapped[str] = mapped_column(String(16))
    study_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    series_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    sop_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    modality: Mapped[str | None] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[int] = mapped_column(Integer)
    frames: Mapped[int] = mapped_column(Integer)
    photometric_interpretation: Mapped[str | None] = mapped_column(String(32))
    transfer_syntax_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    # kept so DICOM outputs (SR, Secondary Capture) can reference the source instance
    sop_class_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    # (0004) whether the Study/Series/SOP UIDs above are pseudonyms (app/pseudonym.py) and the
    # id of the key that made them; NULL in both: stored before 0004, not recorded
    uids_pseudonymised: Mapped[bool | None] = mapped_column(Boolean)
    pseudonym_key_id: Mapped[str | None] = mapped_column(String(16))
    # (0010) app/dedupe.dedupe_identity: a keyed hash of the SOP Instance UID as received (or
    # the input's sha256), the same whatever the pseudonymisation; NULL: stored before 0010
    dedupe_identity: Mapped[str | None] = mapped_column(String(IDENTITY_LENGTH))

    # (0008) a multi-frame instance predicted frame by frame (app/ingest.py): the frames used,
    # their scores for the aggregated class, the aggregation and the key frame; NULL otherwise
    frame_result: Mapped[dict[str, Any] | None] = mapped_column(JSON)

    # (0006, app/gate.py) the model's out-of-distribution score and its verdict (NULL: the
    # model has no detector, RADLENS_OOD=off, or stored before 0006), and the intended-use
    # violations a RADLENS_GATE=flag service let through (NULL: none)
    ood_score: Mapped[float | None] = mapped_column(Float)
    in_distribution: Mapped[bool | None] = mapped_column(Boolean)
    intended_use_violations: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON)

    # (0014, app/drift.py) the model input's mean and standard deviation of intensity in [0, 1]
    # (models/drift.input_features): what the drift window of every replica and `radlens
    # drift` compare with the model's reference; NULL: stored before 0014
    input_mean_intensity: Mapped[float | None] = mapped_column(Float)
    input_std_intensity: Mapped[float | None] = mapped_column(Float)
    # (0013) the source's DICOM Burned In Annotation, "YES" or "NO" (NULL: unknown: absent or
    # another value, not DICOM, or stored before 0013), so every page showing the prediction
    # can warn that its pixels may carry text (a name, a date); identifies no one itself
    burned_in_annotation: Mapped[str | None] = mapped_column(String(3))
    # (0015) the source's DICOM Instance Number (1 to 2**31 - 1; NULL: absent, out of range,
    # not DICOM, or stored before 0015): the prediction's SR and SC carry it, so the outputs of
    # a series' predictions, grouped in one series per model version, sort as their sources
    instance_number: Mapped[int | None] = mapped_column(Integer)
    # (0018) how the VOI of the image the model saw was chosen (ImageMetadata.window:
    # "preset:lung(-600/1500)", "file:40/400", "voi-lut", "minmax(not file:40/1)",
    # "full-range", ...; app/ingest.recorded_voi: numbers and fixed words only); a multi-frame
    # instance: its key frame's (frame_result.frame_voi: each frame's when they differ);
    # NULL: stored before 0018
    voi: Mapped[str | None] = mapped_column(String(VOI_LENGTH))


class Explanation(Base):
    """The Grad-CAM overlay of one prediction (stored only when asked with ?explain=true).

    ``png`` is the rendered overlay (the image as the model saw it, the map, a legend): the
    only pixels the service keeps, and only on request. The Secondary Capture is built from it.
    """

    __tablename__ = "explanations"

    id: Mapped[uuid.UUID] = mapped_column(Uuid(as_uuid=True), primary_key=True, default=uuid.uuid4)
    prediction_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("predictions.id", ondelete="CASCADE"), unique=True
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    layer: Mapped[str] = mapped_column(String(128))
    class_index: Mapped[int] = mapped_column(Integer)
    class_name: Mapped[str] = mapped_column(String(128))
    score: Mapped[float] = mapped_column(Float)
    png: Mapped[bytes] = mapped_column(LargeBinary)


class PredictionFinding(Base):
    """One finding of a multi-label prediction (0007): its score, threshold and decision.

    A multi-label model scores every finding independently, so a prediction has one row per
    finding of the model, written in the prediction's transaction; single-label predictions
    have none. ``(finding, positive)`` is indexed for ``GET /v1/predictions?finding=&positive=``.
    """

    __tablename__ = "prediction_findings"
    __table_args__ = (
        UniqueConstraint("prediction_id", "finding"),
        Index(None, "finding", "positive"),
    )

    id: Mapped[uuid.UUID] = mapped_column(Uuid(as_uuid=True), primary_key=True, default=uuid.uuid4)
    prediction_id: Mapped[uuid.UUID] = mapped_column(
        Uuid(as_uuid=True), ForeignKey("predictions.id", ondelete="CASCADE")
    )
    finding: Mapped[str] = mapped_column(String(128))
    score: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    positive: Mapped[bool] = mapped_column(Boolean)


class PredictionSeries(Base):
    """(0008) The attributes every instance of one series must share (app/series.py).

    Written by the first instance of a series that is stored, in the same transaction as its
    prediction; a later instance that disagrees is refused (422) before its row is written.
    One row per Series Instance UID as stored (a pseudonym when the UIDs are pseudonymised):
    the row is the series' lock, so concurrent writers (threads or replicas) agree on it.
    """

    __tablename__ = "prediction_series"

    series_instance_uid: Mapped[str] = mapped_column(String(UID_LENGTH), primary_key=True)
    study_instance_uid: Mapped[str | None] = mapped_column(String(UID_LENGTH))
    modality: Mapped[str | None] = mapped_column(String(16))
    rows: Mapped[int] = mapped_column(Integer)
    columns: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


def dedupe_key(*, sop_instance_uid: str | None, input_sha256: str) -> str:
    """The per-model identity of an input: its SOP Instance UID, else its bytes' sha256."""
    if sop_instance_uid:
        return f"sop:{sop_instance_uid}"
    return f"sha256:{input_sha256}"


# API keys and the audit trail share this metadata (Alembic and the migrations test see them),
# as do (0012) the rate limiter's token buckets, shared by replicas (app/ratelimit.py).
from radlens.app.ratelimit import RateLimitBucket  # noqa: E402, F401
from radlens.app.security_tables import ApiKey, AuditEvent  # noqa: E402, F401

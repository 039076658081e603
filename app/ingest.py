"""One uploaded instance -> a stored prediction (and, on request, its explanation).

The one path every upload takes (``POST /v1/predictions``, ``POST /v1/predictions/dicom-sr``,
each instance of a STOW-RS request): preprocess exactly as in training (off the event loop:
on the predictor stream that runs it, or with one stream in a worker thread) -> the
micro-batched predictor -> lookup-or-insert (dedupe per model; for ``POST /v1/predictions``
through the group-committing PredictionWriter) -> optionally Grad-CAM, stored once per
prediction.
"""

from __future__ import annotations

import functools
import hashlib
import logging
import uuid
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import String
from sqlalchemy.orm import Session

from app import services
from app.errors import InvalidDicomAttributeError
from app.explain import ExplanationOutput, explainer_for, get_explanation, record_explanation
from app.metrics import ServiceMetrics
from app.pseudonym import pseudonymise_uid
from app.settings import Settings
from app.tables import Explanation, Prediction, dedupe_key
from app.writer import PredictionWriter

if TYPE_CHECKING:
    from app.predictor import Predictor
    from models.manifest import ModelManifest
    from models.preprocessing import PreprocessedImage

logger = logging.getLogger("radlens.app")


@dataclass
class Ingested:
    prediction: Prediction
    created: bool  # False: this model had predicted this instance before (stored row returned)
    image: PreprocessedImage
    explanation: Explanation | None = None
    explanation_created: bool = False


def preprocess_upload(
    data: bytes, size: tuple[int, int], window: str | None, max_pixels: int
) -> PreprocessedImage:
    from models.preprocessing import preprocess

    return preprocess(data, size=size, window=window, max_pixels=max_pixels)


def _column_length(field: str) -> int:
    column_type = Prediction.__table__.c[field].type
    assert isinstance(column_type, String) and column_type.length is not None
    return column_type.length


# The DICOM attributes a prediction records: ImageMetadata field -> (keyword, the length of its
# column). The columns are sized to the standard's maxima (a UID has at most 64 characters, a
# code string 16).
RECORDED_ATTRIBUTES = {
    field: (keyword, _column_length(field))
    for field, keyword in (
        ("study_instance_uid", "StudyInstanceUID"),
        ("series_instance_uid", "SeriesInstanceUID"),
        ("sop_instance_uid", "SOPInstanceUID"),
        ("sop_class_uid", "SOPClassUID"),
        ("modality", "Modality"),
        ("photometric_interpretation", "PhotometricInterpretation"),
    )
}


def check_recordable(image: PreprocessedImage) -> None:
    """Refuse (422) a file whose recorded attributes do not fit their columns or hold control
    characters: such a value is not valid DICOM, and it is refused before the model runs
    rather than truncated (a cut UID names another instance) or left to the database (which
    would refuse it, as PostgreSQL does a NUL, only at the write)."""
    meta = image.metadata
    for field, (keyword, limit) in RECORDED_ATTRIBUTES.items():
        value = getattr(meta, field)
        if value is None:
            continue
        shown = value if len(value) <= 24 else value[:21] + "..."
        if len(value) > limit:
            raise InvalidDicomAttributeError(
                f"{keyword} is {len(value)} characters long; at most {limit} are allowed. "
                f"Received: {shown!r}"
            )
        bad = next((i for i, ch in enumerate(value) if not ch.isprintable()), None)
        if bad is not None:
            raise InvalidDicomAttributeError(
                f"{keyword} holds a control character (U+{ord(value[bad]):04X} at position "
                f"{bad + 1}). Received: {shown!r}"
            )


def _prepare_upload(
    data: bytes, size: tuple[int, int], window: str | None, max_pixels: int
) -> tuple[np.ndarray, tuple[PreprocessedImage, str]]:
    """The upload -> (model input, (preprocessed image, sha256 of the upload)); runs off the
    event loop (on a predictor stream or a worker thread), the checks and the hash included."""
    image = preprocess_upload(data, size, window, max_pixels)
    check_recordable(image)
    return image.model_input(), (image, hashlib.sha256(data).hexdigest())


@dataclass
class Candidate:
    """A preprocessed upload and the model's prediction on it, not stored yet."""

    prediction: Prediction
    image: PreprocessedImage


async def predict_and_store(
    data: bytes,
    *,
    session: Session,
    predictor: Predictor,
    settings: Settings,
    metrics: ServiceMetrics,
    explain: bool = False,
) -> Ingested:
    """Predict on one upload and store the result; with ``explain``, also the Grad-CAM overlay
    (added to an existing prediction that has none). Raises the preprocessing errors."""
    candidate = await run_model(data, predictor=predictor, settings=settings)
    return await store(
        candidate, session=session, predictor=predictor, metrics=metrics, explain=explain
    )


async def run_model(data: bytes, *, predictor: Predictor, settings: Settings) -> Candidate:
    """Preprocess (off the event loop) and predict (micro-batched); safe to run concurrently.

    Raises the preprocessing errors. The model runs before the database is touched, so the
    request's transaction is only the short lookup-or-insert in record_prediction (SQLite
    serialises writers; a transaction held open across inference would stall other requests).
    A re-post runs the model again but stores nothing and returns the stored prediction.
    """
    manifest = predictor.manifest
    prepare = functools.partial(
        _prepare_upload, data, predictor.input_size, manifest.window, settings.max_pixels
    )
    output = await predictor.predict_prepared(prepare)  # on its stream, or a worker thread
    image, digest = output.prepared
    meta = image.metadata
    # RADLENS_UID_PSEUDONYM_KEY: store keyed-hash pseudonyms of the instance UIDs (app/pseudonym.py)
    pseudonym_key = settings.uid_pseudonym_key_bytes
    study_uid, series_uid, sop_uid = (
        pseudonymise_uid(uid, pseudonym_key)
        for uid in (meta.study_instance_uid, meta.series_instance_uid, meta.sop_instance_uid)
    )
    key = dedupe_key(sop_instance_uid=sop_uid, input_sha256=digest)

    prediction = Prediction(
        id=uuid.uuid4(),
        model_name=manifest.name,
        model_version=manifest.version,
        preprocessing_version=manifest.preprocessing_version,
        device=predictor.device.name,
        runtime=predictor.selection.runtime,
        precision=predictor.selection.precision,
        label=output.label,
        scores={
            name: float(s) for name, s in zip(manifest.class_names, output.scores, strict=True)
        },
        threshold=manifest.threshold,
        inference_ms=float(output.inference_ms),
        batch_size=int(output.batch_size),
        dedupe_key=key,
        input_sha256=digest,
        input_format=meta.format,
        study_instance_uid=study_uid,
        series_instance_uid=series_uid,
        sop_instance_uid=sop_uid,
        modality=meta.modality,
        rows=meta.rows,
        columns=meta.columns,
        frames=meta.frames,
        photometric_interpretation=meta.photometric_interpretation,
        transfer_syntax_uid=meta.transfer_syntax_uid,
        sop_class_uid=meta.sop_class_uid,
    )
    return Candidate(prediction=prediction, image=image)


async def store_committed(
    candidate: Candidate,
    *,
    writer: PredictionWriter,
    predictor: Predictor,
    metrics: ServiceMetrics,
    actor: str | None,
) -> Ingested:
    """Lookup-or-insert the prediction with its audit row, committed: the upload route's whole
    transaction, written by the service's PredictionWriter together with the other uploads
    waiting at that moment (app/writer.py). Raises the database errors, nothing committed."""
    stored, created = await writer.write(candidate.prediction, actor)
    _observe(stored, created, predictor.manifest, metrics)
    return Ingested(prediction=stored, created=created, image=candidate.image)


def _observe(
    stored: Prediction, created: bool, manifest: ModelManifest, metrics: ServiceMetrics
) -> None:
    if created:
        metrics.observe_prediction(manifest.ref, stored.label)
        logger.info(
            "prediction %s: model %s label %s (%.1f ms, batch %d)",
            stored.id,
            manifest.ref,
            stored.label,
            stored.inference_ms,
            stored.batch_size,
        )
    else:
        logger.info("prediction %s: already stored for model %s", stored.id, manifest.ref)


async def store(
    candidate: Candidate,
    *,
    session: Session,
    predictor: Predictor,
    metrics: ServiceMetrics,
    explain: bool = False,
) -> Ingested:
    """Lookup-or-insert the prediction (and explain it when asked). One at a time per session."""
    manifest = predictor.manifest
    stored, created = await run_in_threadpool(
        services.record_prediction, session, candidate.prediction
    )
    _observe(stored, created, manifest, metrics)
    result = Ingested(prediction=stored, created=created, image=candidate.image)
    if explain:
        result.explanation, result.explanation_created = await ensure_explanation(
            session, stored, candidate.image, predictor
        )
    return result


async def ensure_explanation(
    session: Session, prediction: Prediction, image: PreprocessedImage, predictor: Predictor
) -> tuple[Explanation, bool]:
    """The stored explanation of ``prediction``, computed (off the event loop) if missing."""
    existing = await run_in_threadpool(get_explanation, session, prediction.id)
    if existing is not None:
        return existing, False
    explainer = explainer_for(predictor)
    output: ExplanationOutput = await run_in_threadpool(explainer.explain, image.model_input())
    logger.info(
        "explanation for prediction %s: %s %.2f at %s (%.0f ms)",
        prediction.id,
        output.class_name,
        output.score,
        output.layer,
        output.seconds * 1000,
    )
    return await run_in_threadpool(record_explanation, session, prediction.id, output)

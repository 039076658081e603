"""One uploaded instance -> a stored prediction (and, on request, its explanation).

The one path every upload takes (``POST /v1/predictions``, ``POST /v1/predictions/dicom-sr``,
each instance of a STOW-RS request), through the service's one :class:`Ingestor` (built in
the lifespan, ``Resources.ingestor``):

1. ``prepare(data) -> Candidate``: preprocess exactly as in training (off the event loop: on
   the predictor stream that runs it, or with one stream in a worker thread) and the
   micro-batched model call; nothing touches the database;
2. ``explain(candidate)`` (on request): Grad-CAM in a worker thread, still before any
   transaction;
3. ``commit(candidate, actor)``: lookup-or-insert (dedupe per model), the explanation, and the
   "prediction.create" audit row, in one transaction of the group-committing PredictionWriter
   (app/writer.py), the only owner of an upload's commit.

So no transaction is open while the model, Grad-CAM or a DICOM output builder runs, and the
hot path costs no hop or round trip beyond the predictor's and the writer's.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import logging
import uuid
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import String

from radlens.app.errors import InvalidDicomAttributeError
from radlens.app.explain import ExplanationOutput, explainer_for
from radlens.app.metrics import ServiceMetrics
from radlens.app.pseudonym import pseudonym_key_id, pseudonymise_uid
from radlens.app.settings import Settings
from radlens.app.tables import Explanation, Prediction, dedupe_key
from radlens.app.writer import PredictionWriter
from radlens.models.errors import RadlensError

if TYPE_CHECKING:
    from radlens.app.dicom_outputs import SourceRef
    from radlens.app.outbox import Outbox
    from radlens.app.predictor import Predictor
    from radlens.models.preprocessing import PreprocessedImage

logger = logging.getLogger(__name__)


def preprocess_upload(
    data: bytes, size: tuple[int, int], window: str | None, max_pixels: int, version: str
) -> PreprocessedImage:
    """Preprocess as the model was trained: ``version`` is its manifest's preprocessing
    version (an older model is fed exactly as before, models.preprocessing)."""
    from radlens.models.preprocessing import preprocess

    return preprocess(data, size=size, window=window, max_pixels=max_pixels, version=version)


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
    data: bytes, size: tuple[int, int], window: str | None, max_pixels: int, version: str
) -> tuple[np.ndarray, tuple[PreprocessedImage, str]]:
    """The upload -> (model input, (preprocessed image, sha256 of the upload)); runs off the
    event loop (on a predictor stream or a worker thread), the checks and the hash included."""
    image = preprocess_upload(data, size, window, max_pixels, version)
    check_recordable(image)
    return image.model_input(), (image, hashlib.sha256(data).hexdigest())


def _source_from_header(data: bytes, *, copy_patient: bool) -> SourceRef:
    import io

    import pydicom

    from radlens.app.dicom_outputs import source_from_dataset

    ds = pydicom.dcmread(io.BytesIO(data), stop_before_pixels=True)
    return source_from_dataset(ds, copy_patient=copy_patient)


@dataclass(frozen=True)
class Candidate:
    """A preprocessed upload and the model's prediction on it, not stored yet."""

    prediction: Prediction  # the unsaved row
    image: PreprocessedImage
    explanation: ExplanationOutput | None = None  # set by Ingestor.explain
    # the sender's own UIDs (never pseudonymised), in memory only: set when results are sent
    # back (RADLENS_DICOM_DESTINATIONS, app/outbox.py), for the SR/SC to reference them
    source: SourceRef | None = None


@dataclass(frozen=True)
class Ingested:
    """A committed upload."""

    prediction: Prediction
    created: bool  # False: this model had predicted this instance before (stored row returned)
    image: PreprocessedImage
    explanation: Explanation | None = None
    explanation_created: bool = False


class Ingestor:
    """The upload path: ``prepare`` -> (``explain``) -> ``commit``; see the module docstring."""

    def __init__(
        self,
        predictor: Predictor,
        writer: PredictionWriter,
        settings: Settings,
        metrics: ServiceMetrics,
    ) -> None:
        self.predictor = predictor
        self.writer = writer
        self.settings = settings
        self.metrics = metrics
        # RADLENS_UID_PSEUDONYM_KEY: store keyed-hash pseudonyms of the UIDs (app/pseudonym.py)
        self._pseudonym_key = settings.uid_pseudonym_key_bytes
        self._pseudonym_key_id = (
            pseudonym_key_id(self._pseudonym_key) if self._pseudonym_key is not None else None
        )
        self.outbox: Outbox | None = None  # RADLENS_DICOM_DESTINATIONS (set in the lifespan)

    def check_capacity(self) -> None:
        """503 + Retry-After (ServiceBusyError) at once when the predictor's or the writer's
        queue is full: called before an upload's body is read, so a refused upload is never
        held in memory."""
        self.predictor.check_capacity()
        self.writer.queue.check()

    async def ingest(self, data: bytes, actor: str | None, *, explain: bool = False) -> Ingested:
        """``prepare``, then ``commit``: predict on one upload and store the result."""
        return await self.commit(await self.prepare(data), actor, explain=explain)

    async def prepare(self, data: bytes) -> Candidate:
        """Preprocess (off the event loop) and predict (micro-batched); safe to run
        concurrently. Raises the preprocessing errors (and InvalidDicomAttributeError).
        A re-post runs the model again but stores nothing and returns the stored prediction."""
        predictor = self.predictor
        manifest = predictor.manifest
        prepare = functools.partial(
            _prepare_upload,
            data,
            predictor.input_size,
            manifest.window,
            self.settings.max_pixels,
            manifest.preprocessing_version,
        )
        output = await predictor.predict_prepared(prepare)  # on its stream, or a worker thread
        image, digest = cast(tuple["PreprocessedImage", str], output.prepared)
        meta = image.metadata
        pseudonymised = self._pseudonym_key is not None and meta.format == "dicom"
        study_uid, series_uid, sop_uid = (
            pseudonymise_uid(uid, self._pseudonym_key)
            for uid in (meta.study_instance_uid, meta.series_instance_uid, meta.sop_instance_uid)
        )
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
            dedupe_key=dedupe_key(sop_instance_uid=sop_uid, input_sha256=digest),
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
            uids_pseudonymised=pseudonymised,
            pseudonym_key_id=self._pseudonym_key_id if pseudonymised else None,
        )
        source = await self._source(data, image) if self.outbox is not None else None
        return Candidate(prediction=prediction, image=image, source=source)

    async def _source(self, data: bytes, image: PreprocessedImage) -> SourceRef | None:
        """What the SR/SC sent back reference: the upload's own UIDs (not the stored
        pseudonyms); with RADLENS_DICOM_COPY_PATIENT or an SC to send, read from the header
        (patient identification, Burned In Annotation), else from the image's metadata."""
        from radlens.app.dicom_outputs import SourceRef

        meta = image.metadata
        uids = (
            meta.study_instance_uid,
            meta.series_instance_uid,
            meta.sop_instance_uid,
            meta.sop_class_uid,
        )
        if meta.format != "dicom" or not all(uids):
            return None
        assert self.outbox is not None
        if self.settings.dicom_copy_patient or self.outbox.wants("sc"):
            return await asyncio.to_thread(
                _source_from_header, data, copy_patient=self.settings.dicom_copy_patient
            )
        study, series, sop, sop_class = (str(u) for u in uids)
        return SourceRef(study, series, sop, sop_class, meta.modality)

    async def explain(self, candidate: Candidate) -> Candidate:
        """The candidate with its Grad-CAM overlay, computed in a worker thread (no
        transaction is open). Stored with the prediction unless the stored row has one."""
        explainer = explainer_for(self.predictor)
        output = await run_in_threadpool(explainer.explain, candidate.image.model_input())
        logger.info(
            "explanation for prediction %s: %s %.2f at %s (%.0f ms)",
            candidate.prediction.id,
            output.class_name,
            output.score,
            output.layer,
            output.seconds * 1000,
        )
        return replace(candidate, explanation=output)

    async def commit(
        self, candidate: Candidate, actor: str | None, *, explain: bool = False
    ) -> Ingested:
        """Lookup-or-insert the prediction (with ``explain``, its explanation, computed first
        when the candidate has none) and its audit row, committed by the writer together with
        the other uploads waiting at that moment. Raises ServiceBusyError (503) when the
        writer's queue is full and the database's errors, nothing of this upload committed."""
        send_back = self.outbox is not None and candidate.source is not None
        if send_back and self.outbox is not None and self.outbox.wants("sc"):
            explain = True  # the Secondary Capture shows the Grad-CAM overlay
        if explain and candidate.explanation is None:
            candidate = await self.explain(candidate)
        written = await self.writer.commit(candidate.prediction, actor, candidate.explanation)
        self._observe(written.prediction, written.created)
        if send_back and written.created:
            await self._send_back(written, candidate)
        return Ingested(
            prediction=written.prediction,
            created=written.created,
            image=candidate.image,
            explanation=written.explanation,
            explanation_created=written.explanation_created,
        )

    async def _send_back(self, written: Any, candidate: Candidate) -> None:
        """Queue the new prediction's SR/SC for the destinations (app/outbox.py). The
        prediction is committed already: a failure here is logged, never the upload's."""
        assert self.outbox is not None and candidate.source is not None
        overlay = written.explanation.png if written.explanation is not None else None
        try:
            await asyncio.to_thread(
                self.outbox.submit, written.prediction, candidate.source, overlay
            )
        except (RadlensError, OSError) as exc:
            logger.error(
                "prediction %s: results not queued for the DICOM destinations: %s",
                written.prediction.id,
                type(exc).__name__,
            )

    def _observe(self, stored: Prediction, created: bool) -> None:
        ref = self.predictor.manifest.ref
        if created:
            self.metrics.observe_prediction(ref, stored.label)
            logger.info(
                "prediction %s: model %s label %s (%.1f ms, batch %d)",
                stored.id,
                ref,
                stored.label,
                stored.inference_ms,
                stored.batch_size,
            )
        else:
            logger.info("prediction %s: already stored for model %s", stored.id, ref)

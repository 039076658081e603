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
import itertools
import json
import logging
import re
import time
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, Any, cast

import numpy as np
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import String

from radlens.app import clinical
from radlens.app.dedupe import dedupe_identity
from radlens.app.errors import InvalidDicomAttributeError
from radlens.app.explain import Explainer, ExplanationOutput, explainer_for
from radlens.app.gate import (
    OOD_FRAME_FRACTION,
    GatePolicy,
    OutOfDistributionError,
    OutsideIntendedUseError,
    check_colour,
    check_metadata,
    dataset_gate_header,
    dicom_gate_header,
    frames_ood,
    violation_records,
)
from radlens.app.metrics import ServiceMetrics
from radlens.app.pseudonym import pseudonym_key_id, pseudonymise_uid
from radlens.app.services import FindingValue
from radlens.app.settings import Settings
from radlens.app.tables import Explanation, Prediction, dedupe_key
from radlens.app.writer import PredictionWriter
from radlens.models.errors import BlankImageError
from radlens.models.intended_use import IntendedUse, Violation, from_record

if TYPE_CHECKING:
    from pydicom.dataset import Dataset

    from radlens.app.dicom_outputs import SourceRef
    from radlens.app.outbox import Outbox
    from radlens.app.predictor import PredictionOutput, Predictor
    from radlens.models.manifest import ModelManifest
    from radlens.models.preprocessing import PreprocessedImage

logger = logging.getLogger(__name__)


def preprocess_upload(
    data: bytes,
    size: tuple[int, int],
    window: str | None,
    max_pixels: int,
    version: str,
    frame: int | None = None,
    dataset: Dataset | None = None,
) -> PreprocessedImage:
    """Preprocess as the model was trained: ``version`` is its manifest's preprocessing
    version (an older model is fed exactly as before, models.preprocessing); ``frame``: a
    multi-frame image's frame (None: the middle one); ``dataset``: the upload as
    models.preprocessing.parse_dicom parsed it (not parsed again)."""
    from radlens.models.preprocessing import preprocess

    extra: dict[str, Any] = {}
    if frame is not None:
        extra["frame"] = frame
    if dataset is not None:
        extra["dataset"] = dataset
    return preprocess(
        data, size=size, window=window, max_pixels=max_pixels, version=version, **extra
    )


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


def _input_statistics(image: PreprocessedImage) -> dict[str, float]:
    """The model input's intensity statistics as Prediction columns (0014): a few
    microseconds of mean and standard deviation, stored so the drift window is the
    database's, not one process's."""
    from radlens.models.drift import input_features

    features = input_features(image.pixels)
    return {
        "input_mean_intensity": features["mean_intensity"],
        "input_std_intensity": features["std_intensity"],
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


def gate_upload(
    data: bytes,
    intended_use: IntendedUse,
    policy: GatePolicy,
    max_pixels: int | None = None,
    dataset: Dataset | None = None,
) -> list[Violation]:
    """The metadata gate (app/gate.py) on a DICOM upload's header, before its pixels are
    decoded: raises OutsideIntendedUseError (``refuse``) or returns the violations (``flag``).
    ``max_pixels`` bounds a deflated header's inflation (default: preprocessing's default);
    ``dataset``: the upload already parsed (models.preprocessing.parse_dicom), read instead
    of the bytes."""
    if policy == "off" or intended_use.empty:
        return []
    if dataset is not None:
        return check_metadata(dataset_gate_header(dataset), intended_use, policy)
    from radlens.models.errors import NotAnImageError
    from radlens.models.preprocessing import DEFAULT_MAX_PIXELS, sniff_format

    try:
        if sniff_format(data) != "dicom":
            return []  # PNG/JPEG carry no metadata: the OOD score covers them
    except NotAnImageError:
        return []  # preprocessing says what is wrong with it
    header = dicom_gate_header(data, DEFAULT_MAX_PIXELS if max_pixels is None else max_pixels)
    return check_metadata(header, intended_use, policy)


def _prepare_upload(
    data: bytes,
    size: tuple[int, int],
    window: str | None,
    max_pixels: int,
    version: str,
    intended_use: IntendedUse | None = None,
    gate: GatePolicy = "off",
    *,
    keep_dataset: bool = False,
) -> tuple[np.ndarray, _Prepared]:
    """The upload -> (model input, :class:`_Prepared`); runs off the event loop (on a
    predictor stream or a worker thread), the checks and the hash included. A DICOM upload is
    parsed once: the gate reads its header from the dataset preprocessing then decodes, kept
    as ``_Prepared.dataset`` when the instance has more frames to read (_predict_frames) or
    (``keep_dataset``) its header is read again for the results sent back (Ingestor._sender)."""
    intended_use = intended_use or IntendedUse()
    dataset = _parse_upload(data, max_pixels, intended_use, gate)
    flagged = gate_upload(data, intended_use, gate, max_pixels, dataset=dataset)
    if dataset is None:
        image = preprocess_upload(data, size, window, max_pixels, version)
    else:
        image = preprocess_upload(data, size, window, max_pixels, version, dataset=dataset)
    if not (keep_dataset or (image.metadata.format == "dicom" and image.metadata.frames > 1)):
        dataset = None  # only the frames still to read, or the header sent back, need it
    check_recordable(image)
    meta = image.metadata
    flagged = flagged + check_colour(meta.colour_fraction, intended_use, gate)
    if meta.blank and not (meta.format == "dicom" and meta.frames > 1):  # else _predict_frames
        from radlens.models.preprocessing import blank_image_error

        raise blank_image_error(meta)
    return image.model_input(), _Prepared(image, hashlib.sha256(data).hexdigest(), flagged, dataset)


@dataclass(frozen=True, slots=True)
class _Prepared:
    """What :func:`_prepare_upload` hands back with the model input."""

    image: PreprocessedImage
    digest: str  # sha256 of the upload
    flagged: list[Violation]  # intended-use violations flagged (RADLENS_GATE=flag)
    # the parsed file, when still needed: a multi-frame instance's other frames are read from
    # it, and the header the SR/SC reference (else None)
    dataset: Dataset | None = None


def _parse_upload(
    data: bytes, max_pixels: int, intended_use: IntendedUse, gate: GatePolicy
) -> Dataset | None:
    """A DICOM upload parsed once, for the gate and preprocessing (None: not DICOM, or not
    bytes; preprocessing says what is wrong). When the parse fails, the gate still reads
    what header it can first, so an upload outside the intended use is refused as such
    (as when the gate read the header on its own), then the parse error is raised."""
    from radlens.models.errors import NotAnImageError, PreprocessingError
    from radlens.models.preprocessing import parse_dicom, sniff_format

    try:
        if not isinstance(data, bytes | bytearray | memoryview) or sniff_format(data) != "dicom":
            return None
    except NotAnImageError:
        return None
    try:
        return parse_dicom(data, max_pixels=max_pixels)
    except PreprocessingError:
        gate_upload(data, intended_use, gate, max_pixels)
        raise


def decided_findings(scores: np.ndarray, manifest: ModelManifest) -> tuple[FindingValue, ...]:
    """Every finding of a multi-label model with its score, threshold and decision (the
    manifest's rule, models.decision); () for a single-label model."""
    if not manifest.multi_label:
        return ()
    from radlens.models.decision import decide_findings

    return tuple(
        FindingValue(d.name, d.score, d.threshold, d.positive)
        for d in decide_findings(scores, manifest)
    )


LABEL_LENGTH = _column_length("label")


def fit_label(label: str, findings: tuple[FindingValue, ...]) -> str:
    """The label as stored: a multi-label model's positive findings joined by ``|`` when they
    fit the column, else ``"<n> findings"`` (each one is in prediction_findings)."""
    if len(label) <= LABEL_LENGTH or not findings:
        return label
    return f"{sum(f.positive for f in findings)} findings"


VOI_LENGTH = _column_length("voi")

# The labels models/preprocessing.py writes in ImageMetadata.window: fixed words and numbers
# formatted by Python (``:g``: "-600", "1.5e-05", "inf", "nan"), the VOI LUT Function only
# as one of its known names, and a preset only by its name in WINDOW_PRESETS (letters).
_NUMBER = r"-?(?:inf|nan|[0-9]+(?:\.[0-9]+)?(?:e[+-][0-9]+)?)"
_FILE_VOI = rf"file:{_NUMBER}/{_NUMBER}(?: (?:LINEAR_EXACT|SIGMOID))?|file:unusable|voi-lut"
_VOI_LABEL = re.compile(
    rf"preset:[a-z_]{{1,24}}\({_NUMBER}/{_NUMBER}\)|{_FILE_VOI}|minmax(?:\(not (?:{_FILE_VOI})\))?"
    r"|full-range"
)
UNRECOGNISED_VOI = "unrecognised"


def recorded_voi(window: str) -> str:
    """``ImageMetadata.window`` as predictions.voi stores it (0018): the label itself when it
    is one preprocessing writes (:data:`_VOI_LABEL`) and fits the column, else
    ``"unrecognised"``: the column holds numbers and fixed words only, never other text a
    file could bring in (a VOI LUT Function, a window explanation), whatever preprocessing
    becomes."""
    if len(window) <= VOI_LENGTH and _VOI_LABEL.fullmatch(window):
        return window
    logger.warning("a VOI label of an unknown form was not recorded (%d characters)", len(window))
    return UNRECOGNISED_VOI


def _next_frames(frames: Iterator[PreprocessedImage], count: int) -> list[PreprocessedImage]:
    """Up to ``count`` more frames from models.preprocessing.preprocess_frames (blocking:
    each is decoded, transformed and resized here)."""
    return list(itertools.islice(frames, count))


@dataclass(frozen=True)
class FramesPredicted:
    """A multi-frame instance predicted frame by frame, aggregated into one result."""

    scores: np.ndarray  # (classes,): the aggregate; binary: (1 - p, p)
    label: str
    image: PreprocessedImage  # the key frame, as the model saw it (Grad-CAM explains it)
    inference_ms: float  # summed over the frames' model calls
    batch_size: int  # the largest batch a frame was in
    result: dict[str, Any]  # predictions.frame_result


def aggregate_frames(
    indices: list[int],
    frame_scores: np.ndarray,
    class_names: list[str],
    threshold: float | None,
    method: str,
    k: int,
    *,
    binary: bool | None = None,
) -> tuple[np.ndarray, int, dict[str, Any]]:
    """The frames' scores (n, classes) -> (aggregated scores, position of the key frame,
    frame_result). Binary models aggregate the positive class (index 1) and keep scores summing
    to one; others aggregate each class. The key frame has the highest score for the class the
    aggregate decides on (binary: the positive class). ``binary`` defaults to "two classes";
    a multi-label model with two findings passes False (each finding is aggregated alone)."""
    from radlens.app.series import aggregate
    from radlens.models.decision import decide_indices

    if (len(class_names) == 2) if binary is None else binary:
        positive = aggregate(frame_scores[:, 1].tolist(), method, k)
        scores = np.array([1.0 - positive, positive])
        column = 1
    else:
        scores = np.array(
            [aggregate(frame_scores[:, c].tolist(), method, k) for c in range(len(class_names))]
        )
        column = int(decide_indices(scores[np.newaxis], threshold)[0])
    key = int(np.argmax(frame_scores[:, column]))  # the first on a tie
    result = {
        "aggregation": method,
        "top_k": k,
        "class_name": class_names[column],
        "frames": [int(i) for i in indices],
        "scores": [float(s) for s in frame_scores[:, column]],
        "key_frame": int(indices[key]),
    }
    return scores, key, result


def _source_from_header(
    data: bytes, *, copy_patient: bool, max_pixels: int, dataset: Dataset | None = None
) -> SourceRef:
    """What the SR/SC reference, read from the upload's header: ``dataset``, the upload as
    models.preprocessing.parse_dicom parsed it (not parsed again), else the bytes."""
    from radlens.app.dicom_outputs import source_from_dataset

    if dataset is None:
        from radlens.models.dicomread import read_dicom_bytes

        # force: as preprocessing read it (a file without preamble and file meta was
        # predicted, then this read raised InvalidDicomError: a 500 wherever destinations are
        # set)
        dataset = read_dicom_bytes(data, max_pixels=max_pixels, stop_before_pixels=True, force=True)
    return source_from_dataset(dataset, copy_patient=copy_patient)


@dataclass(frozen=True)
class Candidate:
    """A preprocessed upload and the model's prediction on it, not stored yet."""

    prediction: Prediction  # the unsaved row
    image: PreprocessedImage
    explanation: ExplanationOutput | None = None  # set by Ingestor.explain
    findings: tuple[FindingValue, ...] = ()  # multi-label models: every finding, decided
    source: bytes | None = None  # the upload, for the display-resolution overlay (explain)
    # the upload as parsed once (models.preprocessing.parse_dicom), when kept: the overlay is
    # drawn from it at display size without parsing the bytes again (QA round 83)
    dataset: Dataset | None = None
    # the sender's own UIDs (never pseudonymised), in memory only: set when results are sent
    # back (RADLENS_DICOM_DESTINATIONS, app/outbox.py), for the SR/SC to reference them
    sender: SourceRef | None = None


_COPY_GAP = 0.01  # scores this close, same label: a copy in another encoding, said at INFO


def _note_other_bytes(mine: Prediction, stored: Prediction) -> None:
    """Log a re-post recognised by its SOP Instance UID that came in other bytes than the
    stored prediction's: a re-encoded copy (another transfer syntax, a file meta a Storage
    SCP rewrote: the same image), or a UID the sender reused for another image, which the
    stored result does not describe. The answer stays the stored prediction (docs/security.md,
    de-duplication); the line says how far this upload's own scores were from it (the same
    model scored both: identity is per model version). Same label and scores within
    ``_COPY_GAP``: INFO; otherwise a WARNING (a reused UID shows there, though a reused UID
    whose images score alike cannot be told from a copy)."""
    if mine.input_sha256 == stored.input_sha256:
        return
    gap: float | None = None
    try:
        shared = set(mine.scores or {}) & set(stored.scores or {})
        gap = max(abs(float(mine.scores[k]) - float(stored.scores[k])) for k in shared)
    except (TypeError, ValueError, ArithmeticError):  # scores of another shape: no gap
        gap = None
    alike = gap is not None and gap <= _COPY_GAP and mine.label == stored.label
    logger.log(
        logging.INFO if alike else logging.WARNING,
        "prediction %s: its SOP Instance UID was stored before from other bytes (a re-encoded "
        "copy, or the UID reused for another image); the stored result was returned%s",
        stored.id,
        ""
        if gap is None
        else f" (this upload scored label {mine.label}, up to {gap:.3f} from the stored scores)",
    )


@dataclass(frozen=True)
class Ingested:
    """A committed upload."""

    prediction: Prediction
    created: bool  # False: this model had predicted this instance before (stored row returned)
    image: PreprocessedImage
    explanation: Explanation | None = None
    explanation_created: bool = False
    findings: tuple[FindingValue, ...] = ()  # as decided for this upload (multi-label)
    # the intended-use gate's verdict on the header this upload came with (app/gate.py): its
    # violations as stored ([]: none), or None when the gate did not judge it (RADLENS_GATE
    # off, a model stating no intended use). A re-post is answered with the stored
    # prediction, whose verdict was its own upload's: :meth:`intended_use_verdict`
    gated_violations: list[dict[str, Any]] | None = None

    def intended_use_verdict(
        self,
    ) -> tuple[list[dict[str, Any]] | None, list[dict[str, Any]] | None]:
        """``(violations, stored)``: the intended-use violations the answer to this upload
        shows, and the stored prediction's when they differ (else None).

        A new prediction, or a re-post judged as the stored one was: the stored violations,
        None. A re-post whose header the gate judged otherwise (RADLENS_GATE=flag: its Body
        Part Examined or Modality changed since, or now the SOP class; the colour rule on
        other pixels) is answered with the stored label and scores, but with the verdict on
        the header it was sent with: a result that the tags it came with put outside the
        model's intended use is not shown as valid (QA 88: it was, and only the log said
        so); ``stored`` is then what the stored prediction carries ([]: nothing), which
        GET /v1/predictions/{id}, the web UI and the SR show. The stored row is not changed:
        its verdict belongs to the upload it was predicted from (docs/security.md)."""
        stored = self.prediction.intended_use_violations
        mine = self.gated_violations
        if self.created or mine is None or _same_violations(stored or [], mine):
            return stored, None
        return (mine or None), list(stored or [])


INTENDED_USE_HEADER = "Radlens-Intended-Use"


def verdict_header(result: Ingested) -> str | None:
    """For an answer whose body is the stored prediction's DICOM object (the SR of
    ``POST /v1/predictions/dicom-sr``, which cannot carry another verdict under its UID): the
    :data:`INTENDED_USE_HEADER` value saying that this re-post's verdict differs from the
    stored one's, e.g. ``outside: BodyPartExamined WRIST; stored: none``; None when it
    does not (:meth:`Ingested.intended_use_verdict`). ASCII, attribute and value only."""
    mine, stored = result.intended_use_verdict()
    if stored is None:
        return None

    def said(records: list[dict[str, Any]] | None) -> str:
        named = ", ".join(f"{r.get('attribute')} {r.get('value')}" for r in records or [])
        return "".join(c for c in named if " " <= c <= "~")[:200] or "none"

    return f"{'outside' if mine else 'inside'}: {said(mine)}; stored: {said(stored)}"


def _same_violations(a: list[dict[str, Any]], b: list[dict[str, Any]]) -> bool:
    """Whether two lists of violation records (:func:`app.gate.violation_records`) say the
    same, whatever their order."""

    def key(records: list[dict[str, Any]]) -> list[str]:
        return sorted(json.dumps(r, sort_keys=True, default=str) for r in records)

    return key(a) == key(b)


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
        # RADLENS_GATE: what the metadata gate accepts (the manifest's intended use)
        self._intended_use = from_record(predictor.manifest.intended_use)
        # RADLENS_UID_PSEUDONYM_KEY: store keyed-hash pseudonyms of the UIDs (app/pseudonym.py)
        self._pseudonym_key = settings.uid_pseudonym_key_bytes
        self._pseudonym_key_id = (
            pseudonym_key_id(self._pseudonym_key) if self._pseudonym_key is not None else None
        )
        # RADLENS_DEDUPE_KEY: the identity of a re-post, whatever the pseudonymisation
        self._dedupe_key = settings.dedupe_key_bytes
        self.outbox: Outbox | None = None  # RADLENS_DICOM_DESTINATIONS (set in the lifespan)

    def refuse_outside_intended_use(self, data: bytes) -> None:
        """The metadata gate alone, on the header (nothing decoded): raises
        OutsideIntendedUseError when ``RADLENS_GATE=refuse`` and the header contradicts the
        model's intended use. For a sender that is answered before the instance is predicted
        (DIMSE ``queued``): refused while it can still be, as ingest would refuse it later."""
        if self.settings.gate != "refuse":
            return
        try:
            gate_upload(data, self._intended_use, "refuse", self.settings.max_pixels)
        except OutsideIntendedUseError:
            self.metrics.observe_gated("outside-intended-use", "refused")
            raise

    def check_capacity(self) -> None:
        """503 + Retry-After (ServiceBusyError) at once when the predictor's or the writer's
        queue is full: called before an upload's body is read, so a refused upload is never
        held in memory."""
        self.predictor.check_capacity()
        self.writer.queue.check()

    async def ingest(
        self,
        data: bytes,
        actor: str | None,
        *,
        explain: bool = False,
        findings: Sequence[str] | None = None,
    ) -> Ingested:
        """``prepare``, then ``commit``: predict on one upload and store the result
        (``findings``: the findings a multi-label model's explanation shows)."""
        return await self.commit(
            await self.prepare(data, explain=explain), actor, explain=explain, findings=findings
        )

    async def prepare(self, data: bytes, *, explain: bool = False) -> Candidate:
        """Preprocess (off the event loop) and predict (micro-batched); safe to run
        concurrently. Raises the preprocessing errors (and InvalidDicomAttributeError).
        A re-post runs the model again but stores nothing and returns the stored prediction.
        ``explain``: the overlay will be drawn, so the parsed upload is kept for it
        (``Candidate.dataset``; it is kept anyway for a multi-frame instance and when the
        results sent back read its header)."""
        predictor = self.predictor
        manifest = predictor.manifest
        prepare = functools.partial(
            _prepare_upload,
            data,
            predictor.input_size,
            manifest.window,
            self.settings.max_pixels,
            manifest.preprocessing_version,
            self._intended_use,
            self.settings.gate,
            keep_dataset=explain or self._sender_reads_header(),
        )
        try:
            output = await predictor.predict_prepared(prepare)  # its stream, or a worker thread
        except OutsideIntendedUseError as exc:
            self.metrics.observe_gated("outside-intended-use", "refused")
            logger.info("upload refused: outside the intended use of %s: %s", manifest.ref, exc)
            raise
        prepared = cast(_Prepared, output.prepared)
        image, digest, flagged = prepared.image, prepared.digest, prepared.flagged
        # read again by _predict_frames, _sender and _explain, when kept
        dataset = prepared.dataset
        scores, label = output.scores, output.label
        inference_ms, batch_size = float(output.inference_ms), int(output.batch_size)
        frame_result = None
        if image.metadata.format == "dicom" and image.metadata.frames > 1:
            frames = await self._predict_frames(data, image, output, dataset)
            scores, label, image = frames.scores, frames.label, frames.image
            inference_ms, batch_size = frames.inference_ms, frames.batch_size
            frame_result = frames.result
        # every frame is scored: the instance's verdict is the frames' (app/gate.py frames_ood)
        ood_score, frames_in = output.ood_score, None
        if frame_result is not None and "ood_scores" in frame_result:
            key = frame_result["frames"].index(frame_result["key_frame"])
            ood_score = frame_result["ood_scores"][key]
            frames_in = bool(frame_result["in_distribution"])
        in_distribution = self._ood_verdict(ood_score, frames_in)
        findings = decided_findings(scores, manifest)
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
            label=fit_label(label, findings),
            scores={name: float(s) for name, s in zip(manifest.class_names, scores, strict=True)},
            threshold=predictor.operating_point.threshold,
            operating_point=predictor.operating_point.name,
            inference_ms=inference_ms,
            batch_size=batch_size,
            dedupe_key=dedupe_key(sop_instance_uid=sop_uid, input_sha256=digest),
            # over the UID as received (never stored): the same with or without pseudonyms
            dedupe_identity=dedupe_identity(
                sop_instance_uid=meta.sop_instance_uid, input_sha256=digest, key=self._dedupe_key
            ),
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
            frame_result=frame_result,
            ood_score=ood_score,
            in_distribution=in_distribution,
            intended_use_violations=violation_records(flagged),
            # the drift window of every replica reads these back (app/drift.py)
            **_input_statistics(image),
            burned_in_annotation=meta.burned_in_annotation,
            instance_number=meta.instance_number,
            voi=recorded_voi(meta.window),
        )
        sender = await self._sender(data, image, dataset) if self.outbox is not None else None
        return Candidate(
            prediction=prediction,
            image=image,
            findings=findings,
            source=data,
            sender=sender,
            dataset=dataset,
        )

    def _sender_reads_header(self) -> bool:
        """Whether :meth:`_sender` reads the upload's header (then kept parsed for it)."""
        return self.outbox is not None and (
            self.settings.dicom_copy_patient or self.outbox.wants("sc")
        )

    async def _sender(
        self, data: bytes, image: PreprocessedImage, dataset: Dataset | None = None
    ) -> SourceRef | None:
        """What the SR/SC sent back reference: the upload's own UIDs (not the stored
        pseudonyms); with RADLENS_DICOM_COPY_PATIENT or an SC to send, read from the header
        (patient identification, Burned In Annotation): ``dataset``, the upload as parsed for
        the gate and preprocessing (not parsed again), else from the image's metadata."""
        from radlens.app.dicom_outputs import SourceRef, missing_uids

        meta = image.metadata
        uids = (
            meta.study_instance_uid,
            meta.series_instance_uid,
            meta.sop_instance_uid,
            meta.sop_class_uid,
        )
        if meta.format != "dicom":
            return None
        if not all(uids):
            # an output must reference its source by these: nothing is sent back, and the log
            # says so (it said nothing: the SR and SC simply never reached the PACS)
            logger.warning(
                "results not sent to the DICOM destinations: the instance lacks %s",
                missing_uids(uids),
            )
            return None
        if self._sender_reads_header():
            return await asyncio.to_thread(
                _source_from_header,
                data,
                copy_patient=self.settings.dicom_copy_patient,
                max_pixels=self.settings.max_pixels,
                dataset=dataset,
            )
        study, series, sop, sop_class = (str(u) for u in uids)
        return SourceRef(
            study, series, sop, sop_class, meta.modality, instance_number=meta.instance_number
        )

    async def _predict_frames(
        self,
        data: bytes,
        first: PreprocessedImage,
        output: PredictionOutput,
        dataset: Dataset | None = None,
    ) -> FramesPredicted:
        """Predict a multi-frame instance frame by frame: every frame, or every k-th above
        RADLENS_MAX_FRAMES (models.preprocessing.frame_indices). The file is parsed once for
        all the frames (models.preprocessing.preprocess_frames; parsing it again per frame
        cost more than the frame's model call): ``dataset``, the parse the first frame was
        read from, or parsed here when None, and the frames are decoded in a worker
        thread a batch at a time, each batch's model calls queued while the next is decoded,
        so they share micro-batches (with each other and other requests); the frame already
        predicted (the middle one) is not predicted again. A frame that fails fails the
        instance (nothing is stored). Blank frames are not sent to the model (the first one,
        already predicted, aside) and are left out of the aggregate (``blank_frames``); an
        instance whose every frame read is blank is refused."""
        from radlens.models.preprocessing import frame_indices, preprocess_frames

        predictor = self.predictor
        manifest = predictor.manifest
        indices = frame_indices(first.metadata.frames, self.settings.max_frames)
        others = [i for i in indices if i != first.metadata.frame_index]
        frames = await asyncio.to_thread(
            preprocess_frames,
            data,
            others,
            size=predictor.input_size,
            window=manifest.window,
            max_pixels=self.settings.max_pixels,
            version=manifest.preprocessing_version,
            dataset=dataset,
        )
        images = {first.metadata.frame_index: first}
        calls: dict[int, asyncio.Task[PredictionOutput]] = {}
        try:
            while batch := await asyncio.to_thread(
                _next_frames, frames, max(1, predictor.batch_limit)
            ):
                for image in batch:
                    index = image.metadata.frame_index
                    images[index] = image
                    if image.metadata.blank:  # no evidence: not sent to the model
                        continue
                    calls[index] = asyncio.create_task(predictor.predict(image.model_input()))
            outputs = dict(zip(calls, await asyncio.gather(*calls.values()), strict=True))
        except BaseException:
            for call in calls.values():
                call.cancel()
            await asyncio.gather(*calls.values(), return_exceptions=True)
            raise
        outputs[first.metadata.frame_index] = output
        called = list(outputs.values())  # every model call made (the first frame's is made)
        # a blank frame (every stored pixel one value: padding, a frame before the exposure)
        # is no evidence: it is left out of the aggregate, and an instance of blanks refused
        blank = [i for i in indices if images[i].metadata.blank]
        kept = [i for i in indices if i not in blank]
        first_index = first.metadata.frame_index
        if not kept and not first.metadata.blank:
            # every sampled frame blank (RADLENS_MAX_FRAMES), the middle one, read and
            # predicted first though not sampled, is not: it stands for the instance
            kept = [first_index]
        if not kept:
            read = len(set(indices) | {first_index})
            sampled = read < first.metadata.frames
            raise BlankImageError(
                f"every stored pixel of each of the {read} frames read (of "
                f"{first.metadata.frames}) has one value"
                + (
                    "; above RADLENS_MAX_FRAMES only every k-th frame is read, and the others "
                    "were not"
                    if sampled
                    else ""
                )
            )
        indices = kept
        done = [(outputs[i], images[i]) for i in indices]
        frame_scores = np.stack([np.asarray(o.scores, dtype=np.float64) for o, _ in done])
        scores, key, result = aggregate_frames(
            indices,
            frame_scores,
            list(manifest.class_names),
            predictor.operating_point.threshold,
            self.settings.series_aggregation,
            self.settings.series_top_k,
            binary=manifest.is_binary,
        )
        from radlens.models.registry import decide

        result.update(frames_ood([o.ood_score for o, _ in done], key, predictor.ood) or {})
        # the row's voi is the key frame's (the image explained, as its ood_score); frames
        # whose VOI was chosen otherwise (a per-frame window, one passed over for min-max)
        # are said here, each frame's label aligned with frames
        vois = [recorded_voi(image.metadata.window) for _, image in done]
        if len(set(vois)) > 1:
            result["frame_voi"] = vois
        if blank:
            result["blank_frames"] = blank
        return FramesPredicted(
            scores=scores,
            label=decide(scores, manifest, predictor.operating_point),
            image=done[key][1],
            inference_ms=sum(float(o.inference_ms) for o in called),
            batch_size=max(int(o.batch_size) for o in called),
            result=result,
        )

    def _ood_verdict(self, score: float | None, frames_in: bool | None = None) -> bool | None:
        """In distribution or not (None: not scored); raises OutOfDistributionError with
        RADLENS_OOD=refuse. ``frames_in``: a multi-frame instance's verdict over its frames
        (app/gate.py frames_ood), which ``score`` (the key frame's) alone does not decide."""
        detector = self.predictor.ood
        if score is None or detector is None:
            return None
        if detector.in_distribution(score) if frames_in is None else frames_in:
            return True
        if self.settings.ood == "refuse":
            self.metrics.observe_gated("out-of-distribution", "refused")
            above = (
                f"OOD score {score:.4g} is above the model's threshold {detector.threshold:.4g}"
                if not detector.in_distribution(score)
                else f"more than {OOD_FRAME_FRACTION:.0%} of the frames' OOD scores are above "
                f"the model's threshold {detector.threshold:.4g}"
            )
            raise OutOfDistributionError(
                f"{above} ({detector.method}, the {detector.quantile:.0%} quantile of its "
                "validation images)"
            )
        return False  # counted as flagged once stored (_observe)

    async def explain(
        self, candidate: Candidate, findings: Sequence[str] | None = None
    ) -> Candidate:
        """The candidate with its Grad-CAM overlay, computed in a worker thread (no
        transaction is open). Stored with the prediction unless the stored row has one."""
        explainer = explainer_for(self.predictor)
        output = await run_in_threadpool(self._explain, explainer, candidate, findings)
        logger.info(
            "explanation for prediction %s: %s %.2f at %s (%.0f ms)",
            candidate.prediction.id,
            output.class_name,
            output.score,
            output.layer,
            output.seconds * 1000,
        )
        return replace(candidate, explanation=output)

    def _explain(
        self, explainer: Explainer, candidate: Candidate, findings: Sequence[str] | None = None
    ) -> ExplanationOutput:
        """Grad-CAM, drawn on the upload preprocessed again at display size (the same steps
        and version as the model input, models/overlay.display_size) when the upload is at
        hand, from the dataset it was parsed into when that was kept (``Candidate.dataset``:
        the bytes are not parsed again); blocking. A multi-frame upload is drawn from the
        frame that was explained (the key frame), not the middle one. The overlay's title
        says the prediction's label and how its threshold decided it (a binary model's map
        explains its positive class whatever the label; models.gradcam.overlay_title)."""
        display = None
        manifest = self.predictor.manifest
        if candidate.source is not None:
            from radlens.models.overlay import display_size

            meta = candidate.image.metadata
            display = preprocess_upload(
                candidate.source,
                display_size(meta.rows, meta.columns),
                manifest.window,
                self.settings.max_pixels,
                manifest.preprocessing_version,
                meta.frame_index if meta.frames > 1 else None,
                dataset=candidate.dataset,
            ).pixels
        # the caption says "Not for clinical use." unless the store's sealed manifest of the
        # model says validated, as every other output of the prediction (app/clinical.py)
        validated = clinical.validated(self.settings, manifest.name, manifest.version)
        if findings is not None:
            return explainer.explain(
                candidate.image.model_input(), display, findings, validated=validated
            )
        prediction = candidate.prediction
        names = list(manifest.class_names)
        scores = prediction.scores or {}
        positive = scores.get(names[1]) if len(names) == 2 else None
        return explainer.explain(
            candidate.image.model_input(),
            display,
            label=prediction.label,
            threshold=prediction.threshold,
            positive_score=None if positive is None else float(positive),
            validated=validated,
        )

    async def commit(
        self,
        candidate: Candidate,
        actor: str | None,
        *,
        explain: bool = False,
        findings: Sequence[str] | None = None,
    ) -> Ingested:
        """Lookup-or-insert the prediction (with ``explain``, its explanation, computed first
        when the candidate has none) and its audit row, committed by the writer together with
        the other uploads waiting at that moment. Raises ServiceBusyError (503) when the
        writer's queue is full and the database's errors, nothing of this upload committed."""
        send_back = self.outbox is not None and candidate.sender is not None
        if send_back and self.outbox is not None and self.outbox.wants("sc"):
            explain = True  # the Secondary Capture shows the Grad-CAM overlay
        if explain and candidate.explanation is None and not await self._explained(candidate):
            candidate = await self.explain(candidate, findings)
        written = await self.writer.commit(
            candidate.prediction,
            actor,
            candidate.explanation,
            candidate.findings,
            no_outbox=self._no_outbox(candidate),
        )
        self._observe(written.prediction, written.created, candidate.findings)
        if not written.created:
            _note_other_bytes(candidate.prediction, written.prediction)
            self._note_other_flags(candidate.prediction, written.prediction)
        if written.created:  # score histograms, input counts, drift window (app/drift.py)
            stored = written.prediction
            self.metrics.observe_upload(
                self.predictor.manifest.ref, stored.scores, candidate.image, stored.label
            )
        if send_back and (written.created or not await self._results_queued(written)):
            await self._send_back(written, candidate)
        elif written.created and self._nothing_to_send(candidate):
            await self._record_nothing_queued(written)
        judged = self.settings.gate != "off" and not self._intended_use.empty
        return Ingested(
            prediction=written.prediction,
            created=written.created,
            image=candidate.image,
            explanation=written.explanation,
            explanation_created=written.explanation_created,
            findings=candidate.findings,
            gated_violations=(
                list(candidate.prediction.intended_use_violations or []) if judged else None
            ),
        )

    def _nothing_to_send(self, candidate: Candidate) -> bool:
        """Whether a new prediction's results could not be sent back (destinations set, the
        instance lacking a UID they must reference: :meth:`_sender`) while a re-post of it
        could be: a DICOM instance recognised by its SOP Instance UID, whose header may come
        with those UIDs next time (an upload recognised by its bytes never does)."""
        identity = candidate.prediction.dedupe_identity or ""
        return self.outbox is not None and candidate.sender is None and identity.startswith("uid:")

    def _no_outbox(self, candidate: Candidate) -> bool:
        """Whether a new prediction's "prediction.create" row says this process has no
        destinations (app/writer.py ``NO_OUTBOX_QUERY``): a DICOM instance recognised by its SOP
        Instance UID, whose re-post on a replica with destinations then queues the results at
        once instead of waiting CLAIM_WAIT_S for a queue row this process never writes (QA 104).
        An upload recognised by its bytes is never sent back: its row stays as it was."""
        identity = candidate.prediction.dedupe_identity or ""
        return self.outbox is None and identity.startswith("uid:")

    async def _record_nothing_queued(self, written: Any) -> None:
        """Tell a re-post (on any replica) that this request queued nothing and never will, so
        it queues the results at once instead of waiting CLAIM_WAIT_S for a queue row
        (app/outbox.py ``Outbox.record_nothing_queued``; QA 88: it waited the whole 5 s)."""
        assert self.outbox is not None
        try:
            await asyncio.to_thread(self.outbox.record_nothing_queued, str(written.prediction.id))
        except Exception as exc:  # committed: never the upload's failure (a re-post waits)
            logger.warning("outbox: queue row not written: %s", type(exc).__name__)

    async def _explained(self, candidate: Candidate) -> bool:
        """Whether the instance's prediction is stored already with its explanation, which the
        writer returns in place of a new one: a re-sent instance (a PACS forwarding a study
        again, with a destination that wants the Secondary Capture) computed its Grad-CAM,
        0.5-0.7 s a slice, only for it to be dropped (QA round 30). One indexed lookup; on a
        database error, False (the writer's commit reports that error)."""
        from sqlalchemy import select

        from radlens.app.db import READ_ONLY
        from radlens.app.services import find_existing
        from radlens.app.tables import Explanation

        prediction = candidate.prediction

        def lookup() -> bool:
            with self.writer.sessionmaker() as session:
                session.connection(execution_options=READ_ONLY)  # never waits for the writer
                stored = find_existing(
                    session,
                    model_name=prediction.model_name,
                    model_version=prediction.model_version,
                    dedupe_key=prediction.dedupe_key,
                    dedupe_identity=prediction.dedupe_identity,
                )
                if stored is None:
                    return False
                query = select(Explanation.id).where(Explanation.prediction_id == stored.id)
                return session.scalars(query).first() is not None

        try:
            return await asyncio.to_thread(lookup)
        except Exception as exc:  # the database: the commit that follows says what is wrong
            logger.debug("explanation lookup failed: %s", type(exc).__name__)
            return False

    def _stored_overlay(self, prediction_id: Any) -> bytes | None:
        """The stored explanation's overlay PNG of a prediction, or None (blocking)."""
        from sqlalchemy import select

        from radlens.app.db import READ_ONLY
        from radlens.app.tables import Explanation

        with self.writer.sessionmaker() as session:
            session.connection(execution_options=READ_ONLY)
            query = select(Explanation.png).where(Explanation.prediction_id == prediction_id)
            return session.scalars(query).first()

    async def _results_queued(self, written: Any) -> bool:
        """Whether a stored prediction's results went to the outbox before. An instance
        received again whose prediction was committed but whose results were never queued (a
        crash between the two; a queued DIMSE instance replayed after a restart) gets them
        now; one whose results were queued or delivered gets nothing twice."""
        from radlens.app.outbox import CLAIM_POLL_S

        assert self.outbox is not None
        outbox, prediction_id = self.outbox, str(written.prediction.id)
        try:
            found, wait = await asyncio.to_thread(outbox.handled_or_wait, prediction_id)
            if found or wait <= 0:
                return found
            # the same instance being stored by another request (here or on another replica)
            # that has yet to write its queue row: waited for here, between queries, not in a
            # worker thread (8 such waits took every thread of a 2-core pool, the creating
            # request's own queue row among them: QA round 50), until the row accounts for
            # everything, or comes leaving something out (that request is done: what it left
            # out is queued now, not after the rest of the wait, QA 78)
            deadline = time.monotonic() + wait
            while time.monotonic() < deadline:
                await asyncio.sleep(CLAIM_POLL_S)
                queued, over = await asyncio.to_thread(
                    outbox.queued_since, prediction_id, final=False
                )
                if over:
                    return queued
            queued, _ = await asyncio.to_thread(outbox.queued_since, prediction_id, final=True)
            return queued
        except Exception as exc:  # the database: not known, so not sent a second time
            logger.warning(
                "outbox: could not tell whether results were sent: %s", type(exc).__name__
            )
            return True

    async def _send_back(self, written: Any, candidate: Candidate) -> None:
        """Queue the prediction's SR/SC for the destinations (app/outbox.py): all of them for
        a new prediction; for a stored one whose results were not all queued
        (:meth:`_results_queued`; a re-send: ``resend=True``), those not queued before. The
        prediction is committed already: a failure here is never the upload's; each result
        not queued is logged and counted (radlens_dicom_outbox_enqueue_failures_total, which
        alerts: a log line was all that said so before QA round 54). An unforeseen error also
        writes the ``dicom.send.none`` row (:meth:`_record_nothing_queued`), as a submit that
        queued nothing does, and is logged by its type alone (its message may quote the
        instance's UIDs)."""
        from radlens.app.outbox import ResultsNotQueuedError

        assert self.outbox is not None and candidate.sender is not None
        prediction_id = written.prediction.id
        overlay = written.explanation.png if written.explanation is not None else None
        unread: BaseException | None = None
        if overlay is None and self.outbox.wants("sc"):
            # a stored prediction whose results were never queued, its explanation stored
            # and so not computed again (_explained): the SC is drawn from the stored one
            try:
                overlay = await asyncio.to_thread(self._stored_overlay, prediction_id)
            except Exception as exc:  # the database: the SC is lost, the SR still goes
                unread = exc
        failures: list[tuple[str, str, BaseException | None]] = []
        try:
            await asyncio.to_thread(
                functools.partial(
                    self.outbox.submit,
                    written.prediction,
                    candidate.sender,
                    overlay,
                    resend=not written.created,
                )
            )
        except ResultsNotQueuedError as exc:
            failures = exc.failures
        except Exception as exc:  # unforeseen: counted as every kind wanted, not queued
            failures = [(k, "error", exc) for k in ("sr", "sc") if self.outbox.wants(k)]
            # and this request is done: a re-post does not wait CLAIM_WAIT_S for its queue
            # row (QA 96; what was queued before the error is read from the spool)
            await self._record_nothing_queued(written)
        for kind, reason, cause in failures:
            if reason == "no-overlay" and unread is not None:
                reason, cause = "database", unread
            self.metrics.outbox_enqueue_failures.labels(kind=kind, reason=reason).inc()
            logger.error(
                "prediction %s: %s not queued for the DICOM destinations (%s%s); it will not "
                "be sent (sending the instance again queues what of it was not queued)",
                prediction_id,
                kind.upper(),
                reason,
                f": {type(cause).__name__}" if cause is not None else "",
            )

    def _note_other_flags(self, mine: Prediction, stored: Prediction) -> None:
        """RADLENS_GATE=flag: a re-post whose header the gate flags for what the stored
        prediction's was not flagged for (its Body Part Examined or Modality changed since, or
        its SOP Instance UID reused for another image) is answered with the stored prediction's
        result and this upload's flag (:meth:`Ingested.intended_use_verdict`, QA 88; STOW-RS's
        (0099,1007) and the uploader's web UI page, QA 93), while the stored prediction, which
        GET and the SR show, does not carry it: the log
        says so (WARNING, without the UID) and radlens_gated_inputs_total counts the upload as
        flagged (QA 78: both were silent). The gate runs before any stored result is looked
        up, so with RADLENS_GATE=refuse such a re-post is refused (422) as a new upload would
        be."""
        known = stored.intended_use_violations or []
        new = [v for v in mine.intended_use_violations or [] if v not in known]
        if not new:
            return
        self.metrics.observe_gated("outside-intended-use", "flagged")
        logger.warning(
            "prediction %s: this upload is outside the model's intended use (%s), which the "
            "stored prediction of its SOP Instance UID was not flagged for; this upload's "
            "answer (the API, STOW-RS, the uploader's web UI page) carries its flag with the "
            "stored result, the stored prediction (GET, the SR) does not (an instance whose "
            "header changed, or a UID reused for another image, needs its own SOP Instance UID "
            "to be predicted)",
            stored.id,
            "; ".join(f"{v.get('attribute')} {v.get('value')!r}" for v in new),
        )

    def _observe(
        self, stored: Prediction, created: bool, findings: tuple[FindingValue, ...] = ()
    ) -> None:
        ref = self.predictor.manifest.ref
        if created:
            # flagged uploads are counted by what was stored: a re-post of a stored instance is
            # answered with the stored prediction, whatever its own pixels scored (a header
            # flagged for what the stored one was not: _note_other_flags)
            if stored.intended_use_violations:
                self.metrics.observe_gated("outside-intended-use", "flagged")
            if stored.in_distribution is False:
                self.metrics.observe_gated("out-of-distribution", "flagged")
            # multi-label: one count per positive finding (or the no-finding name), never the
            # joined label, whose combinations would multiply the metric's label values
            positive = [f.name for f in findings if f.positive]
            none_name = str((self.predictor.manifest.findings or {}).get("none_name", ""))
            for label in (positive or [none_name]) if findings else [stored.label]:
                self.metrics.observe_prediction(ref, label)
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

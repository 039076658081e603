"""Response schemas of API v1 (one per use), and the problem document shape."""

from __future__ import annotations

import uuid
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from radlens.app.errors import PROBLEM_MEDIA_TYPE

NOT_FOR_CLINICAL_USE = (
    "Not for clinical use: this model has not been validated for diagnosis; "
    "a qualified clinician must read the image."
)


class Problem(BaseModel):
    """An RFC 9457 problem document (media type application/problem+json)."""

    model_config = ConfigDict(
        extra="allow",
        json_schema_extra={
            "example": {
                "type": "urn:radlens:problem:not-an-image",
                "title": "Not a DICOM, PNG or JPEG file; send one of those",
                "status": 415,
                "detail": "received 18432 bytes starting 25 50 44 46 2d 31 2e 37",
                "instance": "/v1/predictions",
            }
        },
    )

    type: str = Field(description="URI naming the kind of problem (urn:radlens:problem:<code>)")
    title: str = Field(description="What went wrong and what to do")
    status: int = Field(description="The HTTP status code")
    detail: str = Field(description="This occurrence, quoting what was received")
    instance: str = Field(description="The request path")


def problem_responses(*statuses: int) -> dict[int | str, dict[str, Any]]:
    """OpenAPI ``responses=`` entries for the given error statuses."""
    descriptions = {
        400: "The request could not be parsed",
        401: "No API key, or an unknown or revoked one (WWW-Authenticate: Bearer)",
        403: "The API key lacks the scope this request needs",
        404: "No such resource",
        413: "The upload is larger than RADLENS_MAX_UPLOAD_BYTES",
        415: "Not multipart/form-data, or the file is not DICOM, PNG or JPEG",
        422: "Invalid parameters, or an image that cannot be processed",
        429: "Too many requests for this API key (Retry-After says when to retry)",
        500: "Internal error (logged without request data)",
        503: "The model or the database is not ready",
    }
    return {
        status: {
            "description": descriptions.get(status, "Error"),
            "content": {PROBLEM_MEDIA_TYPE: {"schema": {"$ref": "#/components/schemas/Problem"}}},
        }
        for status in statuses
    }


class ModelRef(BaseModel):
    name: str = Field(examples=["chest"])
    version: int = Field(examples=[3])


SCORES_DESCRIPTION = (
    "Score per class name. label_mode single-label: the model's softmax, the scores sum to "
    "one and label is the decided class. label_mode multi-label: one independent sigmoid "
    "score per finding (they do not sum to one), each decided at its own threshold (see "
    "findings); label is the positive findings joined by '|', or the no-finding name. A "
    "score is not the probability of disease: it is calibrated only when GET /v1/models "
    "shows a calibration (then on data like the training data), and it means nothing for an "
    "image out of distribution or outside the intended use (in_distribution, "
    "intended_use_violations)"
)


class FindingPublic(BaseModel):
    """One finding of a multi-label prediction: an independent score and its own decision."""

    name: str = Field(examples=["Effusion"])
    score: float = Field(description="Independent sigmoid score in [0, 1]", examples=[0.71])
    threshold: float = Field(
        description="The threshold this finding was decided at (chosen on validation: its "
        "trained threshold, or its threshold at the operating point in operating_point)",
        examples=[0.42],
    )
    positive: bool = Field(description="score >= threshold", examples=[True])
    operating_point: str | None = Field(
        default=None,
        description="Which of this finding's operating points decided it "
        "(RADLENS_OPERATING_POINT, e.g. 'sens95'; 'chosen' = its trained threshold: the "
        "variable unset, or the finding has no such point); null when unknown (a model "
        "version other than the loaded one)",
        examples=["sens95"],
    )


class FrameResult(BaseModel):
    """A multi-frame instance predicted frame by frame (RADLENS_MAX_FRAMES): the frames used,
    their scores for the aggregated class, and the key frame (the highest score)."""

    aggregation: str = Field(examples=["max"])
    top_k: int
    class_name: str = Field(description="The class whose frame scores were aggregated")
    frames: list[int] = Field(
        description="0-based indices of the frames predicted and aggregated (blank_frames: "
        "those left out)"
    )
    scores: list[float] = Field(description="Each frame's score for class_name")
    key_frame: int = Field(
        description="0-based index of the frame with the highest score (a viewer, which "
        "numbers frames from 1, shows it as frame key_frame + 1)"
    )
    ood_scores: list[float] | None = Field(
        default=None,
        description="Each frame's out-of-distribution score (None: the model has no detector)",
    )
    ood_frames: int | None = Field(
        default=None, description="How many of the frames score above the OOD threshold"
    )
    in_distribution: bool | None = Field(
        default=None,
        description="The instance's verdict: false when the key frame or more than a quarter "
        "of the frames are out of distribution",
    )
    blank_frames: list[int] | None = Field(
        default=None,
        description="0-based indices of frames left out of frames and the aggregate because "
        "every stored pixel of each has one value (padding, a frame before the exposure); "
        "null: none",
    )
    frame_voi: list[str] | None = Field(
        default=None,
        description="Each frame's VOI (as the prediction's voi; aligned with frames) when "
        "the frames' VOI was not chosen alike (a per-frame window, a frame whose window was "
        "passed over for min-max); null: every frame's is the prediction's voi",
    )


class PredictionPublic(BaseModel):
    """A stored prediction with its provenance; never any patient identifier."""

    model_config = ConfigDict(
        json_schema_extra={
            "example": {
                "id": "6f1c2e1a-8d0b-4f7e-9a51-3c2d8f0b9e11",
                "created_at": "2026-11-26T21:04:05.123456Z",
                "model": {"name": "chest", "version": 3},
                "preprocessing_version": "1",
                "label": "pneumonia",
                "scores": {"normal": 0.12, "pneumonia": 0.88},
                "threshold": 0.5,
                "operating_point": "chosen",
                "study_instance_uid": "1.2.826.0.1.3680043.8.498.1",
                "series_instance_uid": "1.2.826.0.1.3680043.8.498.2",
                "sop_instance_uid": "1.2.826.0.1.3680043.8.498.3",
                "instance_number": 1,
                "modality": "CR",
                "rows": 1024,
                "columns": 1024,
                "input_sha256": "9f86d081884c7d659a2feaa0c55ad015a3bf4f1b2b0b822cd15d6c15b0f00a08",
                "input_format": "dicom",
                "inference_ms": 41.7,
                "voi": "file:2047/4095",
                "notice": NOT_FOR_CLINICAL_USE,
            }
        }
    )

    id: uuid.UUID
    created_at: datetime = Field(
        description="When the prediction was stored, in UTC (ISO 8601 ending in Z)"
    )
    model: ModelRef
    preprocessing_version: str
    label: str
    scores: dict[str, float] = Field(description=SCORES_DESCRIPTION)
    threshold: float | None = Field(
        description="Decision threshold on the positive class's score (binary single-label "
        "models: the second class of GET /v1/models' class_names, e.g. 'abnormal'): label is "
        "that class when its score is >= threshold, else the first class; the threshold, not "
        "the higher score, decides. The operating point's sensitivity and specificity are in "
        "GET /v1/models under metrics.operating_points. null: the highest score decides"
    )
    operating_point: str | None = Field(
        default=None,
        description="Which of the model's operating points decided the label "
        "(RADLENS_OPERATING_POINT; 'chosen' = the model's own threshold; a multi-label "
        "model: the point named, each finding's own in findings); null for multi-class "
        "models, multi-label models served at their trained thresholds (the variable unset) "
        "and predictions stored before it was recorded",
        examples=["sens95"],
    )
    label_mode: Literal["single-label", "multi-label"] = Field(
        default="single-label",
        description="single-label: scores sum to one (softmax); multi-label: independent "
        "scores, one per finding, listed in findings",
    )
    findings: list[FindingPublic] | None = Field(
        default=None,
        description="multi-label models: every finding with its score, threshold and "
        "decision; null for single-label models",
    )
    study_instance_uid: str | None
    series_instance_uid: str | None
    sop_instance_uid: str | None
    instance_number: int | None = Field(
        default=None,
        description="the DICOM Instance Number of the source (how a viewer numbers the image "
        "in its series); null when absent or not DICOM, or for predictions stored before "
        "migration 0015",
    )
    modality: str | None
    rows: int
    columns: int
    frames: int = 1
    photometric_interpretation: str | None = None
    transfer_syntax_uid: str | None = None
    input_sha256: str
    input_format: str
    inference_ms: float
    batch_size: int = 1
    device: str = ""
    runtime: str | None = Field(default=None, examples=["openvino"])
    precision: str | None = Field(default=None, examples=["bf16"])
    frame_result: FrameResult | None = Field(
        default=None,
        description="Multi-frame instances: scores is the frames' aggregate; null otherwise",
    )
    notice: str | None = Field(
        default=None, description="Present unless the model is validated for clinical use"
    )
    ood_score: float | None = Field(
        default=None,
        description="The model's out-of-distribution score of this image (higher: further "
        "from its training images); null when the model has no detector or RADLENS_OOD=off",
    )
    in_distribution: bool | None = Field(
        default=None,
        description="false: the image scored above the model's OOD threshold (flagged, "
        "RADLENS_OOD=flag): the image is unlike the training images and its label and scores "
        "are not a valid result, a normal label included; null: not scored",
    )
    intended_use_violations: list[dict[str, Any]] | None = Field(
        default=None,
        description="DICOM attributes contradicting the model's intended use, let through "
        "with RADLENS_GATE=flag: attribute, value, what the model accepts. When present, the "
        "label and scores are not a valid result, a normal label included. The answer to an "
        "upload (201 or 200) gives the verdict on the header that upload was sent with, even "
        "when it is answered with a prediction stored before (see "
        "stored_intended_use_violations)",
    )
    stored_intended_use_violations: list[dict[str, Any]] | None = Field(
        default=None,
        description="Only in the answer to a re-post (200) whose header the intended-use gate "
        "judged otherwise than the stored prediction's (e.g. its BodyPartExamined or Modality "
        "changed since): the stored prediction's intended_use_violations ([]: it was not "
        "flagged), which GET /v1/predictions/{id}, the web UI and the SR show. "
        "intended_use_violations is then this upload's, and the label and scores are the "
        "stored prediction's. null: the verdicts agree (or the prediction is new)",
    )
    voi: str | None = Field(
        default=None,
        description="How the intensity window (VOI) of the image the model saw was chosen: "
        "preset:<name>(<center>/<width>) the model's window preset (CT in HU); "
        "file:<center>/<width> [LINEAR_EXACT|SIGMOID] the file's own window; voi-lut the "
        "file's VOI LUT; minmax the image's own range (the file has no window); "
        "minmax(not <file's VOI>) the same because the file's window could not be applied "
        "or would have blanked the image; full-range the bit depth's range (colour, "
        "PNG/JPEG); unrecognised a label of an unknown form. A multi-frame instance: the key "
        "frame's (frame_result.frame_voi when frames differ). GET /v1/models' window is the "
        "model's preset, which applies only to CT. Null: stored before migration 0018",
        examples=["preset:lung(-600/1500)", "file:40/400", "minmax(not file:40/1)"],
    )
    burned_in_annotation: Literal["YES", "NO"] | None = Field(
        default=None,
        description="The source's DICOM Burned In Annotation: YES means its pixels carry "
        "text that may identify the patient (a name, an ID, a date), so the images derived "
        "from it (the Grad-CAM overlay, the Secondary Capture) may too; null: unknown (the "
        "attribute was absent, the upload was PNG/JPEG, or the prediction predates it)",
        examples=["NO"],
    )


class PredictionPage(BaseModel):
    """One page of predictions, newest first; pass next_cursor to get the next page."""

    items: list[PredictionPublic]
    next_cursor: str | None = Field(description="Opaque; null on the last page")


class ModelPublic(BaseModel):
    """The loaded model and its manifest."""

    name: str
    version: int
    architecture: str
    created_at: str
    input_shape: list[int]
    class_names: list[str]
    threshold: float | None
    window: str | None = Field(
        description="The model's window preset (WINDOW_PRESETS name), applied to CT images "
        "in HU only; other images get the file's window or min-max: each prediction's voi "
        "says which"
    )
    preprocessing_version: str
    filters: list[str]
    metrics: dict[str, dict[str, Any]]
    validated_for_clinical_use: bool = Field(
        description="Whether the model store's manifest of this model, as sealed, says "
        "validated_for_clinical_use (read at each request, as for every result's notice): "
        "false when it is unsealed, edited since it was sealed, or no longer in the store"
    )
    description: str
    device: str
    ready: bool
    notice: str | None = Field(
        description="The not-for-clinical-use notice the model's results carry; null only "
        "when validated_for_clinical_use"
    )
    operating_point: str | None = Field(
        default=None,
        description="The operating point deciding labels (RADLENS_OPERATING_POINT; "
        "'chosen' = the model's own threshold; multi-label models: null when unset, and "
        "each finding's point is in finding_operating_points)",
    )
    decision_threshold: float | None = Field(
        default=None, description="The threshold of that operating point"
    )
    data_split: dict[str, Any] | None = Field(
        default=None, description="How the training data was split (counts only, no ids)"
    )
    leakage_check: dict[str, Any] | None = Field(
        default=None, description="The patient-leakage check's result at training"
    )
    calibration: dict[str, Any] | None = Field(
        default=None,
        description="Score calibration: temperature (multi-label: one per finding, "
        "'temperatures'), ECE before and after; null when the model is not calibrated",
    )
    label_mode: Literal["single-label", "multi-label"] = Field(
        default="single-label",
        description="multi-label: class_names are findings scored independently (sigmoid), "
        "each with its threshold in finding_thresholds; single-label: a softmax over classes",
    )
    finding_thresholds: dict[str, float] | None = Field(
        default=None,
        description="multi-label models: the trained threshold of each finding (the "
        "manifest's findings.thresholds)",
    )
    finding_operating_points: dict[str, str] | None = Field(
        default=None,
        description="multi-label models: the operating point each finding is decided at "
        "(RADLENS_OPERATING_POINT; 'chosen' = its trained threshold: the variable unset, or "
        "the finding has no such point); the figures of each point are under "
        "metrics.operating_points_per_finding",
        examples=[{"Effusion": "sens95", "Hernia": "chosen"}],
    )
    finding_decision_thresholds: dict[str, float] | None = Field(
        default=None,
        description="multi-label models: the threshold each finding is decided at (its "
        "operating point's)",
    )
    intended_use: dict[str, Any] | str = Field(
        default="not stated",
        description="What the model is for: stated modalities and body parts, what training "
        "saw (counts of modalities, body parts, view positions, photometric interpretations, "
        "image-size ranges) and what the metadata gate accepts; 'not stated' for a model "
        "saved before radlens recorded it",
    )
    ood: dict[str, Any] | None = Field(
        default=None,
        description="The out-of-distribution detector (method, threshold, how it was fitted), "
        "or null when the model has none",
    )


class ModelsPublic(BaseModel):
    models: list[ModelPublic]


class Health(BaseModel):
    status: str = Field(examples=["ok"])


class Readiness(BaseModel):
    status: str = Field(examples=["ready"])
    model: ModelRef
    device: str = Field(examples=["/CPU:0"])
    database: str = Field(
        description='"ok", or "ok, retrying after database-full" (or database-read-only, '
        "database-io-error): the last write failed, its retry time passed and a write probe "
        "passed since; the next upload shows whether the database stores again",
        examples=["ok"],
    )
    schema_revision: str | None = Field(examples=["0001"])
    batch_limit: int | None = Field(
        default=None,
        description="The largest batch the model is run with (RADLENS_MAX_BATCH_SIZE, or the "
        "most efficient size measured at warm-up with RADLENS_BATCH_TUNING=auto)",
        examples=[8],
    )
    runtime: str = Field(
        default="tensorflow",
        description="What runs the model: tensorflow or openvino (RADLENS_RUNTIME)",
        examples=["openvino"],
    )
    precision: str = Field(default="fp32", examples=["bf16"])
    runtime_reason: str = Field(
        default="", description="Why this runtime and precision (settings, CPU, parity)"
    )
    parity: dict[str, Any] | None = Field(
        default=None,
        description="The recorded parity of the serving OpenVINO precision against the Keras "
        "model on validation images: AUC difference, largest score difference, flipped labels",
    )

"""Grad-CAM explanations in the service: compute off the event loop, store, read back.

Threading. The Predictor's worker thread calls the model through its own ``tf.function``;
Grad-CAM calls the same Keras model (same layers and weights) through the gradient model
that :mod:`models.gradcam` builds and caches per model and layer (the cache is guarded by a
lock there). Keras/TensorFlow inference only *reads* the variables, so both may run at the
same time from different threads; ``tests/app/test_explain.py`` checks that concurrent
predictions and explanations give the same scores as sequential ones. Explanations are
serialised among themselves by :class:`Explainer` (one at a time): each is a forward and a
backward pass, and running several at once on a 2-core machine only slows all of them and
the predictions down.

Which class: for a binary model the positive class (index 1), whatever the decision, so
maps of different images are comparable; for a multi-class model the predicted class; for a
multi-label model the findings asked for (``?finding=``), else its top positive findings.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from radlens.app.errors import NotFoundError
from radlens.app.tables import Explanation

if TYPE_CHECKING:
    from radlens.app.predictor import Predictor


EXPLAINED_NAME_LENGTH = 128  # explanations.class_name


class ExplanationNotFoundError(NotFoundError):
    code = "explanation-not-found"
    title = "This prediction has no stored explanation; re-post the image with ?explain=true"


@dataclass(frozen=True)
class ExplanationOutput:
    png: bytes
    layer: str
    class_index: int
    class_name: str
    score: float
    scores: np.ndarray  # (classes,) from Grad-CAM's own forward pass
    seconds: float


class Explainer:
    """Runs Grad-CAM for a predictor's model, one explanation at a time (blocking: call it
    from a worker thread, e.g. ``run_in_threadpool``)."""

    def __init__(self, predictor: Predictor) -> None:
        self.predictor = predictor
        self._lock = threading.Lock()
        self.warmed = False

    def class_index(self) -> int | None:
        return 1 if len(self.predictor.manifest.class_names) == 2 else None

    def explain(
        self,
        model_input: np.ndarray,
        display: np.ndarray | None = None,
        findings: Sequence[str] | None = None,
        *,
        label: str | None = None,
        threshold: float | None = None,
        positive_score: float | None = None,
        validated: bool | None = None,
    ) -> ExplanationOutput:
        """Grad-CAM map and the rendered overlay PNG for one (H, W, 1) model input; with
        ``display`` (the image preprocessed at display size, app/ingest.py) the map is drawn
        upsampled onto it, beside the model input.

        A multi-label model explains the named ``findings``, else its top positive ones (one
        map each, drawn the same way, stacked in the PNG; models.gradcam.explain_findings);
        ``class_name`` is then the explained findings joined by ``|``.

        ``label``, ``threshold`` and ``positive_score``: the prediction's, for the overlay's
        title to say the label and its decision (models.gradcam.overlay_title).

        ``validated``: the model store's sealed manifest says the model is validated for
        clinical use (app/clinical.py, as the caller decides for every output): only then
        does the caption leave out "Not for clinical use."; None = the loaded manifest's
        flag (a warm-up, a stand-in predictor)."""
        import tensorflow as tf

        from radlens.models.gradcam import explain_findings, explain_image

        manifest = self.predictor.manifest
        names = list(manifest.class_names)
        if validated is None:
            validated = bool(getattr(manifest, "validated_for_clinical_use", False))
        with self._lock, tf.device(self.predictor.device.name):
            start = time.perf_counter()
            if getattr(manifest, "multi_label", False):  # stand-in manifests lack it
                result, png = explain_findings(
                    self.predictor.model,
                    model_input,
                    finding_names=names,
                    thresholds=manifest.decision_thresholds,  # a named point's (serve_at)
                    requested=findings,
                    display=display,
                    validated=validated,
                )
            else:
                result, png = explain_image(
                    self.predictor.model,
                    model_input,
                    class_names=names,
                    class_index=self.class_index(),
                    display=display,
                    label=label,
                    threshold=threshold,
                    positive_score=positive_score,
                    validated=validated,
                )
            seconds = time.perf_counter() - start
            self.warmed = True
        chosen = int(result.class_indices[0])
        explained = "|".join(names[int(i)] for i in result.class_indices)
        return ExplanationOutput(
            png=png,
            layer=result.layer,
            class_index=chosen,
            class_name=explained[:EXPLAINED_NAME_LENGTH],
            score=float(result.scores[0, chosen]),
            scores=np.asarray(result.scores[0], dtype=np.float32),
            seconds=seconds,
        )

    def warmup(self) -> float:
        """Build and trace the gradient model once (start-up); returns the seconds it took."""
        h, w = self.predictor.input_size
        start = time.perf_counter()
        self.explain(np.zeros((h, w, 1), dtype=np.float32))
        return time.perf_counter() - start


def explainer_for(predictor: Any) -> Explainer:
    """The one Explainer of a predictor (created on first use, kept on the predictor)."""
    existing = getattr(predictor, "_radlens_explainer", None)
    if isinstance(existing, Explainer):
        return existing
    explainer = Explainer(predictor)
    predictor._radlens_explainer = explainer
    return explainer


def get_explanation(session: Session, prediction_id: uuid.UUID) -> Explanation | None:
    stmt = select(Explanation).where(Explanation.prediction_id == prediction_id)
    return session.scalars(stmt).one_or_none()


def require_explanation(session: Session, prediction_id: uuid.UUID) -> Explanation:
    explanation = get_explanation(session, prediction_id)
    if explanation is None:
        raise ExplanationNotFoundError(
            f"prediction {prediction_id} was stored without an explanation"
        )
    return explanation


def record_explanation(
    session: Session,
    prediction_id: uuid.UUID,
    output: ExplanationOutput,
    *,
    new_prediction: bool = False,
) -> tuple[Explanation, bool]:
    """Store the explanation unless the prediction has one already (first writer wins).

    ``new_prediction``: the prediction was inserted by this same transaction, so no
    explanation of it can exist (nor be written by another transaction before this one
    commits): the row is inserted at once, one INSERT, without the lookup and the SAVEPOINT
    a stored prediction's explanation needs (3 statements, each a round trip on PostgreSQL,
    that every new upload with ?explain=true paid)."""
    from radlens.app.services import record_once

    row = Explanation(
        id=uuid.uuid4(),
        prediction_id=prediction_id,
        layer=output.layer,
        class_index=output.class_index,
        class_name=output.class_name,
        score=output.score,
        png=output.png,
    )
    if new_prediction:
        session.add(row)
        session.flush()  # now, so a later upload of the group finds it
        return row, True
    return record_once(session, row, lambda: get_explanation(session, prediction_id))

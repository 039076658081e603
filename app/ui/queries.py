"""The /ui list's filters: parsed from the query string into messages (never a 500), and
the page of predictions they select; which predictions have an overlay (the series page)."""

from __future__ import annotations

import uuid
from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from radlens.app.services import PredictionFilters, prediction_conditions
from radlens.app.tables import Explanation, Prediction

PAGE_SIZE = 50
MAX_TEXT = 128
YES_NO = ("", "yes", "no")


@dataclass(frozen=True)
class ListFilters:
    """What the list shows: the API's :class:`PredictionFilters` (so the /ui list and
    ``GET /v1/predictions`` select through the same conditions,
    :func:`radlens.app.services.prediction_conditions`) plus what only the page has: ``flagged``
    (relative to the loaded model's negative class), the page number and the messages about
    refused values. The form's ``model`` is ``name`` or ``name:version``; its dates are whole
    days (UTC), ``query.created_from`` to ``query.created_before`` (exclusive)."""

    query: PredictionFilters = field(default_factory=PredictionFilters)
    flagged: bool | None = None
    page: int = 1
    errors: list[str] = field(default_factory=list)

    def form_values(self) -> dict[str, str]:
        """The values to show back in the filter form."""
        q = self.query
        model = q.model_name or ""
        if q.model_name and q.model_version is not None:
            model = f"{q.model_name}:{q.model_version}"
        last_day = q.created_before - timedelta(days=1) if q.created_before else None
        return {
            "label": q.label or "",
            "model": model,
            "date_from": q.created_from.date().isoformat() if q.created_from else "",
            "date_to": last_day.date().isoformat() if last_day else "",
            "flagged": _yes_no(self.flagged),
            "finding": q.finding or "",
            "positive": _yes_no(q.positive),
            "ood": _yes_no(None if q.in_distribution is None else not q.in_distribution),
        }


def _yes_no(value: bool | None) -> str:
    return "" if value is None else ("yes" if value else "no")


def _choice(params: Mapping[str, str], name: str, errors: list[str]) -> bool | None:
    """A yes/no/empty select: True, False or None (any other value is described in
    ``errors``)."""
    text = params.get(name, "").strip().lower()
    if text not in YES_NO:
        errors.append(f"{name}: expected yes, no or empty, received {text[:20]!r}")
        return None
    return None if not text else text == "yes"


def _text(params: Mapping[str, str], name: str, errors: list[str]) -> str | None:
    value = params.get(name, "").strip()
    if not value:
        return None
    if len(value) > MAX_TEXT or not value.isprintable():
        errors.append(
            f"{name}: at most {MAX_TEXT} printable characters (received {len(value)} characters)"
        )
        return None
    return value


def _date(params: Mapping[str, str], name: str, errors: list[str]) -> date | None:
    value = params.get(name, "").strip()
    if not value:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        errors.append(f"{name}: expected a date as YYYY-MM-DD, received {value[:40]!r}")
        return None


def _number(text: str, digits: int) -> int | None:
    """``text`` as a number of at most ``digits`` ASCII digits, else None: ``str.isdigit``
    also takes "²" and other digits ``int()`` refuses, and ``int()`` refuses more than 4300
    digits; each was a 500 for a query anyone can send (QA round 49)."""
    if not (text.isascii() and text.isdigit() and len(text) <= digits):
        return None
    return int(text)


def _model(text: str | None, errors: list[str]) -> tuple[str | None, int | None]:
    if text is None:
        return None, None
    name, colon, version_text = text.rpartition(":")
    if not colon:
        return text, None
    version = _number(version_text, 10)
    if version is None or not name or not 1 <= version < 2**31:
        errors.append(f"model: expected NAME or NAME:VERSION (e.g. chest:3), received {text!r}")
        return None, None
    return name, version


def parse_filters(params: Mapping[str, str]) -> ListFilters:
    """The filters in ``params``; each bad value is left out and described in ``errors``."""
    errors: list[str] = []
    label = _text(params, "label", errors)
    model_name, model_version = _model(_text(params, "model", errors), errors)
    date_from = _date(params, "date_from", errors)
    date_to = _date(params, "date_to", errors)
    if date_to == date.max:  # the whole day ends at the next day's start: not representable
        errors.append(f"date_to: expected a date before {date.max}, received {date_to}")
        date_to = None
    if date_from and date_to and date_from > date_to:
        errors.append(f"date_from {date_from} is after date_to {date_to}")
        date_from = date_to = None
    flagged = _choice(params, "flagged", errors)
    finding = _text(params, "finding", errors)
    positive = _choice(params, "positive", errors)
    ood = _choice(params, "ood", errors)
    page_text = params.get("page", "1").strip() or "1"
    page = _number(page_text, 6)
    if page is None or not 1 <= page <= 100_000:
        errors.append(f"page: expected a number from 1, received {page_text[:20]!r}")
        page = 1
    query = PredictionFilters(
        label=label,
        model_name=model_name,
        model_version=model_version,
        created_from=_day_start(date_from) if date_from else None,
        created_before=_day_start(date_to + timedelta(days=1)) if date_to else None,
        finding=finding,
        positive=positive,
        in_distribution=None if ood is None else not ood,
    )
    return ListFilters(query=query, flagged=flagged, page=page, errors=errors)


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def find_predictions(
    session: Session, filters: ListFilters, *, negative_label: str | None
) -> tuple[list[Prediction], int]:
    """One page of predictions, newest first, and how many match in all.

    ``flagged`` = the label is not ``negative_label`` (the loaded model's first class, e.g.
    "normal"): what a reader looks at first. Everything else selects exactly as the API's
    list does (:func:`radlens.app.services.prediction_conditions`); ``ood`` (the query's
    ``in_distribution``) selects on the OOD gate's verdict, so predictions the gate did not
    score show only when it is not set.
    """
    conditions = prediction_conditions(filters.query)
    if filters.flagged is not None and negative_label is not None:
        flagged = Prediction.label != negative_label
        conditions.append(flagged if filters.flagged else Prediction.label == negative_label)
    total = int(
        session.scalar(select(func.count()).select_from(Prediction).where(*conditions)) or 0
    )
    stmt = (
        select(Prediction)
        .where(*conditions)
        .order_by(Prediction.created_at.desc(), Prediction.id.desc())
        .offset((filters.page - 1) * PAGE_SIZE)
        .limit(PAGE_SIZE)
    )
    return list(session.scalars(stmt)), total


def explained_ids(session: Session, ids: Collection[uuid.UUID]) -> set[uuid.UUID]:
    """Which of the predictions ``ids`` have a stored Grad-CAM overlay (one query, reading
    the ids only, not the overlays)."""
    if not ids:
        return set()
    stmt = select(Explanation.prediction_id).where(Explanation.prediction_id.in_(list(ids)))
    return set(session.scalars(stmt))

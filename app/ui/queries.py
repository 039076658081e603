"""The /ui list's filters: parsed from the query string into messages (never a 500), and
the page of predictions they select."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, time, timedelta

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from radlens.app.services import finding_conditions
from radlens.app.tables import Prediction

PAGE_SIZE = 50
MAX_TEXT = 128
YES_NO = ("", "yes", "no")


@dataclass(frozen=True)
class ListFilters:
    """What the list shows; ``model`` is ``name`` or ``name:version``."""

    label: str | None = None
    model_name: str | None = None
    model_version: int | None = None
    date_from: date | None = None
    date_to: date | None = None
    flagged: bool | None = None
    finding: str | None = None  # multi-label: predictions with this finding ...
    positive: bool | None = None  # ... decided positive (yes) or negative (no)
    ood: bool | None = None  # the OOD gate's verdict: out of distribution (yes) or in (no)
    page: int = 1
    errors: list[str] = field(default_factory=list)

    def form_values(self) -> dict[str, str]:
        """The values to show back in the filter form."""
        model = self.model_name or ""
        if self.model_name and self.model_version is not None:
            model = f"{self.model_name}:{self.model_version}"
        return {
            "label": self.label or "",
            "model": model,
            "date_from": self.date_from.isoformat() if self.date_from else "",
            "date_to": self.date_to.isoformat() if self.date_to else "",
            "flagged": _yes_no(self.flagged),
            "finding": self.finding or "",
            "positive": _yes_no(self.positive),
            "ood": _yes_no(self.ood),
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


def _model(text: str | None, errors: list[str]) -> tuple[str | None, int | None]:
    if text is None:
        return None, None
    name, colon, version = text.rpartition(":")
    if not colon:
        return text, None
    if not version.isdigit() or not name or not 1 <= int(version) < 2**31:
        errors.append(f"model: expected NAME or NAME:VERSION (e.g. chest:3), received {text!r}")
        return None, None
    return name, int(version)


def parse_filters(params: Mapping[str, str]) -> ListFilters:
    """The filters in ``params``; each bad value is left out and described in ``errors``."""
    errors: list[str] = []
    label = _text(params, "label", errors)
    model_name, model_version = _model(_text(params, "model", errors), errors)
    date_from = _date(params, "date_from", errors)
    date_to = _date(params, "date_to", errors)
    if date_from and date_to and date_from > date_to:
        errors.append(f"date_from {date_from} is after date_to {date_to}")
        date_from = date_to = None
    flagged = _choice(params, "flagged", errors)
    finding = _text(params, "finding", errors)
    positive = _choice(params, "positive", errors)
    ood = _choice(params, "ood", errors)
    page_text = params.get("page", "1").strip() or "1"
    page = 1
    if not page_text.isdigit() or not 1 <= int(page_text) <= 100_000:
        errors.append(f"page: expected a number from 1, received {page_text[:20]!r}")
    else:
        page = int(page_text)
    return ListFilters(
        label=label,
        model_name=model_name,
        model_version=model_version,
        date_from=date_from,
        date_to=date_to,
        flagged=flagged,
        finding=finding,
        positive=positive,
        ood=ood,
        page=page,
        errors=errors,
    )


def _day_start(day: date) -> datetime:
    return datetime.combine(day, time.min, tzinfo=UTC)


def find_predictions(
    session: Session, filters: ListFilters, *, negative_label: str | None
) -> tuple[list[Prediction], int]:
    """One page of predictions, newest first, and how many match in all.

    ``flagged`` = the label is not ``negative_label`` (the loaded model's first class, e.g.
    "normal"): what a reader looks at first. ``finding``/``positive`` select as the API's
    list does (:func:`radlens.app.services.finding_conditions`); ``ood`` selects on the OOD
    gate's verdict, so predictions the gate did not score show only when it is not set.
    """
    conditions = []
    if filters.label is not None:
        conditions.append(Prediction.label == filters.label)
    if filters.model_name is not None:
        conditions.append(Prediction.model_name == filters.model_name)
    if filters.model_version is not None:
        conditions.append(Prediction.model_version == filters.model_version)
    if filters.date_from is not None:
        conditions.append(Prediction.created_at >= _day_start(filters.date_from))
    if filters.date_to is not None:  # the whole day
        conditions.append(Prediction.created_at < _day_start(filters.date_to + timedelta(days=1)))
    if filters.flagged is not None and negative_label is not None:
        flagged = Prediction.label != negative_label
        conditions.append(flagged if filters.flagged else Prediction.label == negative_label)
    conditions.extend(finding_conditions(filters.finding, filters.positive))
    if filters.ood is not None:
        conditions.append(Prediction.in_distribution.is_(not filters.ood))
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

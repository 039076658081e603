"""API v1: the DICOM send-back outbox (app/outbox.py): results waiting for a destination."""

from __future__ import annotations

from datetime import UTC, datetime

from fastapi import APIRouter
from fastapi.concurrency import run_in_threadpool
from pydantic import BaseModel, Field

from radlens.app.deps import ResourcesDep
from radlens.app.outbox import Entry
from radlens.app.schemas import problem_responses

router = APIRouter(prefix="/v1/dicom/outbox", tags=["DICOM send-back"])


class OutboxEntryPublic(BaseModel):
    id: str
    prediction_id: str
    kind: str = Field(description="sr (Structured Report) or sc (Secondary Capture)")
    destination: str = Field(description="AE@host:port")
    created_at: datetime
    attempts: int
    next_attempt_at: datetime
    last_error: str | None
    encrypted: bool = Field(description="stored encrypted in the spool directory")


class OutboxPublic(BaseModel):
    destinations: list[str] = Field(description="RADLENS_DICOM_DESTINATIONS, parsed")
    pending: list[OutboxEntryPublic] = Field(description="oldest first")


def _time(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


def _public(entry: Entry) -> OutboxEntryPublic:
    return OutboxEntryPublic(
        id=entry.id,
        prediction_id=entry.prediction_id,
        kind=entry.kind,
        destination=entry.destination,
        created_at=_time(entry.created_at),
        attempts=entry.attempts,
        next_attempt_at=_time(max(entry.next_attempt_at, entry.created_at)),
        last_error=entry.last_error,
        encrypted=entry.encrypted,
    )


@router.get(
    "",
    response_model=OutboxPublic,
    summary="Results (SR/SC) waiting to be C-STOREd to the DICOM destinations",
    responses=problem_responses(500, 503),
)
async def list_outbox(resources: ResourcesDep) -> OutboxPublic:
    """The outbox's pending objects, oldest first; empty when no destination is configured."""
    outbox = resources.ingestor.outbox
    if outbox is None:
        return OutboxPublic(destinations=[], pending=[])
    entries = await run_in_threadpool(outbox.entries)
    return OutboxPublic(
        destinations=list(outbox.destinations), pending=[_public(e) for e in entries]
    )

"""audit_events.target indexed: the DICOM outbox asks, for a re-posted instance, whether its
prediction's results were queued, delivered or dropped (a ``dicom.send.queue``, ``deliver`` or
``drop`` row whose target is the prediction id; app/outbox.py ``handled_or_wait``), every
100 ms while another request is queueing them. The table is append-only and only grows: on
1.5 million rows PostgreSQL answered with a parallel sequential scan in 112 ms (QA round 50).

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 06:40:00
"""

from __future__ import annotations

from collections.abc import Sequence

from alembic import op

revision: str = "0016"
down_revision: str | None = "0015"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_index("ix_audit_events_target", "audit_events", ["target"])


def downgrade() -> None:
    op.drop_index("ix_audit_events_target", table_name="audit_events")

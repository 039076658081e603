"""predictions.burned_in_annotation: the source's DICOM Burned In Annotation ("YES"/"NO"), so
every page that shows a prediction can warn that its pixels may carry text (issue #21); null
when unknown (absent or another value, PNG/JPEG uploads, predictions made before this
revision)

Revision ID: 0013
Revises: 0014
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0013"
down_revision: str | None = "0014"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("burned_in_annotation", sa.String(length=3), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("burned_in_annotation")

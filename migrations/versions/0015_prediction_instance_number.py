"""predictions.instance_number: the source's DICOM Instance Number, so the SR and Secondary
Capture of each prediction of a series, which now share one output series per source series
and model version (app/dicom_outputs.output_series_uid), are numbered as their sources and a
viewer shows them in the series' order; null when unknown (absent or out of range, PNG/JPEG
uploads, predictions made before this revision).

Revision ID: 0015
Revises: 0013
Create Date: 2026-12-07 02:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0015"
down_revision: str | None = "0013"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("instance_number", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("instance_number")

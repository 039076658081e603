"""Series and frames (issue 20): prediction_series, the modality, size and study every
instance of a series shares (a later instance that disagrees is refused); an index on
predictions.series_instance_uid for GET /v1/series/{uid} and /v1/studies/{uid}; and
predictions.frame_result (a multi-frame instance predicted frame by frame: the frames used,
their scores, the key frame). Existing predictions are backfilled into prediction_series: one
row per stored series, from its earliest prediction.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prediction_series",
        sa.Column("series_instance_uid", sa.String(length=64), nullable=False),
        sa.Column("study_instance_uid", sa.String(length=64), nullable=True),
        sa.Column("modality", sa.String(length=16), nullable=True),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("columns", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("series_instance_uid", name=op.f("pk_prediction_series")),
    )
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("frame_result", sa.JSON(), nullable=True))
    op.create_index(
        op.f("ix_predictions_series_instance_uid"),
        "predictions",
        ["series_instance_uid"],
        unique=False,
    )
    # Backfill: each stored series takes the attributes of its earliest prediction (static SQL,
    # valid on SQLite and PostgreSQL).
    op.execute(
        """
        INSERT INTO prediction_series
            (series_instance_uid, study_instance_uid, modality, "rows", "columns", created_at)
        SELECT p.series_instance_uid, p.study_instance_uid, p.modality, p."rows", p."columns",
               p.created_at
        FROM predictions p
        WHERE p.series_instance_uid IS NOT NULL
          AND p.id = (
              SELECT q.id FROM predictions q
              WHERE q.series_instance_uid = p.series_instance_uid
              ORDER BY q.created_at, q.id
              LIMIT 1
          )
        """
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_predictions_series_instance_uid"), table_name="predictions")
    op.drop_table("prediction_series")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("frame_result")

"""explanations table (Grad-CAM overlays) and predictions.sop_class_uid (DICOM outputs)

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-26 22:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("sop_class_uid", sa.String(length=64), nullable=True))
    op.create_table(
        "explanations",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("prediction_id", sa.Uuid(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("layer", sa.String(length=128), nullable=False),
        sa.Column("class_index", sa.Integer(), nullable=False),
        sa.Column("class_name", sa.String(length=128), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("png", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name="fk_explanations_prediction_id_predictions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_explanations"),
        sa.UniqueConstraint("prediction_id", name="uq_explanations_prediction_id"),
    )


def downgrade() -> None:
    op.drop_table("explanations")
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("sop_class_uid")

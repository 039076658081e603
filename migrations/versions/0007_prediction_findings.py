"""prediction_findings: one row per finding of a multi-label prediction (score, threshold,
positive), queryable per finding

Revision ID: 0007
Revises: 0011
Create Date: 2026-12-04 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0011"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "prediction_findings",
        sa.Column("id", sa.Uuid(), nullable=False),
        sa.Column("prediction_id", sa.Uuid(), nullable=False),
        sa.Column("finding", sa.String(length=128), nullable=False),
        sa.Column("score", sa.Float(), nullable=False),
        sa.Column("threshold", sa.Float(), nullable=False),
        sa.Column("positive", sa.Boolean(), nullable=False),
        sa.ForeignKeyConstraint(
            ["prediction_id"],
            ["predictions.id"],
            name="fk_prediction_findings_prediction_id_predictions",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_prediction_findings"),
        sa.UniqueConstraint(
            "prediction_id", "finding", name="uq_prediction_findings_prediction_id_finding"
        ),
    )
    op.create_index(
        "ix_prediction_findings_finding_positive",
        "prediction_findings",
        ["finding", "positive"],
    )


def downgrade() -> None:
    op.drop_index("ix_prediction_findings_finding_positive", table_name="prediction_findings")
    op.drop_table("prediction_findings")

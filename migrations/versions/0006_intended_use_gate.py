"""predictions.ood_score, predictions.in_distribution and predictions.intended_use_violations:
the out-of-distribution score and verdict, and the intended-use violations of a flagged upload
(issue #17); null for predictions made before this revision

Revision ID: 0006
Revises: 0008
Create Date: 2026-12-04 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("ood_score", sa.Float(), nullable=True))
        batch.add_column(sa.Column("in_distribution", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("intended_use_violations", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("intended_use_violations")
        batch.drop_column("in_distribution")
        batch.drop_column("ood_score")

"""predictions.operating_point: which of the model's operating points (RADLENS_OPERATING_POINT;
"chosen" = the model's own threshold) decided the label; null for predictions made before
this revision and for multi-class models

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-04 14:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("operating_point", sa.String(length=32), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("operating_point")

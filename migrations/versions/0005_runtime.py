"""predictions.runtime and predictions.precision: what ran the model (TensorFlow or OpenVINO,
fp32 or bf16); null for predictions made before this revision

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-04 11:30:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("runtime", sa.String(length=16), nullable=True))
        batch.add_column(sa.Column("precision", sa.String(length=8), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("precision")
        batch.drop_column("runtime")

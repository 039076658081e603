"""predictions.input_mean_intensity and predictions.input_std_intensity: the model input's
intensity statistics (models/drift.input_features), so every replica's drift window and
`radlens drift` read the same inputs from the database (issue #21); null for predictions made
before this revision. An index on (model_name, model_version, created_at) serves the window's
"last N predictions of this model" query.

Revision ID: 0014
Revises: 0012
Create Date: 2026-12-04 17:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014"
down_revision: str | None = "0012"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("input_mean_intensity", sa.Float(), nullable=True))
        batch.add_column(sa.Column("input_std_intensity", sa.Float(), nullable=True))
    op.create_index(
        op.f("ix_predictions_model_name_model_version_created_at"),
        "predictions",
        ["model_name", "model_version", "created_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(
        op.f("ix_predictions_model_name_model_version_created_at"), table_name="predictions"
    )
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("input_std_intensity")
        batch.drop_column("input_mean_intensity")

"""predictions.dedupe_identity: the identity that de-duplicates re-posts whatever the
pseudonymisation (a keyed hash of the SOP Instance UID as received, else the input's sha256;
app/dedupe.py), unique per model name and version

Revision ID: 0010
Revises: 0005
Create Date: 2026-12-04 14:00:00

No backfill: rows stored before this revision keep NULL (the raw UID of a pseudonymised row is
gone, and the dedupe key is a setting, not known here). NULLs never conflict, so those rows
keep the old rule, the unique (model name, model version, dedupe_key) with the UID as stored.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0010"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

CONSTRAINT = "uq_predictions_model_name_model_version_dedupe_identity"


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("dedupe_identity", sa.String(length=80), nullable=True))
        batch.create_unique_constraint(
            CONSTRAINT, ["model_name", "model_version", "dedupe_identity"]
        )


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_constraint(CONSTRAINT, type_="unique")
        batch.drop_column("dedupe_identity")

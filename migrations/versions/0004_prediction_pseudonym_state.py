"""predictions.uids_pseudonymised and predictions.pseudonym_key_id: each row records whether
its UIDs are pseudonyms (RADLENS_UID_PSEUDONYM_KEY) and under which key

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-04 11:30:00

Rows stored before this revision keep NULL in both (not recorded): the service then falls
back to the current setting for them, as it did for every row before.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("uids_pseudonymised", sa.Boolean(), nullable=True))
        batch.add_column(sa.Column("pseudonym_key_id", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("pseudonym_key_id")
        batch.drop_column("uids_pseudonymised")

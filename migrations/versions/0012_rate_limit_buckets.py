"""rate_limit_buckets: one token bucket per API key, shared by every replica on the database
(issue #22; app/ratelimit.py); UNLOGGED on PostgreSQL

Revision ID: 0012
Revises: 0006
Create Date: 2026-12-04 17:10:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "rate_limit_buckets",
        sa.Column("key", sa.String(length=64), nullable=False),
        sa.Column("tokens", sa.Float(), nullable=False),
        sa.Column("updated_at", sa.Float(), nullable=False),  # epoch seconds, database clock
        sa.Column("admitted", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_rate_limit_buckets")),
    )
    if op.get_bind().dialect.name == "postgresql":
        # Not WAL-logged: a charge's commit then waits for no WAL flush (about 10 ms to 1.5 ms
        # per request on the development machine, docs/benchmarks/ratelimit.md). The price: a
        # crash or a failover to a standby empties the table, i.e. every bucket starts full
        # again, which gives a key at most one extra burst.
        op.execute("ALTER TABLE rate_limit_buckets SET UNLOGGED")


def downgrade() -> None:
    op.drop_table("rate_limit_buckets")

"""predictions.voi: how the VOI (the intensity window) of the image the model saw was chosen,
as models/preprocessing.py labels it in ImageMetadata.window: the model's preset
(``preset:lung(-600/1500)``), the file's own window or VOI LUT (``file:40/400``,
``file:600/1600 SIGMOID``, ``voi-lut``), a min-max fallback (``minmax``, ``minmax(not
file:40/1)``, ``minmax(not file:unusable)``) or the bit depth's range (``full-range``). Numbers
and fixed words only (app/ingest.recorded_voi). A multi-frame instance predicted frame by frame
records its key frame's (the frames' own in frame_result.frame_voi when they differ). Null:
stored before this revision (QA round 59).

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 10:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0018"
down_revision: str | None = "0017"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.add_column(sa.Column("voi", sa.String(length=64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("predictions") as batch:
        batch.drop_column("voi")

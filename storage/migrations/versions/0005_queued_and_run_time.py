"""Split a trial's duration into the time it waited and the time it ran.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-05

``duration_s`` (submitted to finished, as the driver saw it) mixed the time a trial waited for
a worker or a latency target with its own work: a sweep stored 292 s for 161 s of work.
``run_s`` is the time it ran on workers, ``queued_s`` the rest. Both are NULL for trials stored
before this revision (their split was not recorded).
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
    op.add_column("trials", sa.Column("queued_s", sa.Float(), nullable=True))
    op.add_column("trials", sa.Column("run_s", sa.Float(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("run_s")
        batch.drop_column("queued_s")

"""Which driver runs a sweep: its run id, host and process.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-05

Two drivers on one sweep lost trials: a `launch --replace` or a `resume` beside a live driver
was allowed, and the old driver went on writing by name into the sweep that replaced it. A sweep
row now records the driver that owns it (``driver_id``, a random run id, with ``driver_host`` and
``driver_pid`` for the message that names it); every write of a driver checks, in its own
transaction, that it still owns the sweep. ``updated_at`` stays the heartbeat. NULL for sweeps
stored before this revision.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("sweeps", sa.Column("driver_id", sa.String(length=36), nullable=True))
    op.add_column("sweeps", sa.Column("driver_host", sa.String(length=255), nullable=True))
    op.add_column("sweeps", sa.Column("driver_pid", sa.Integer(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweeps") as batch:
        batch.drop_column("driver_pid")
        batch.drop_column("driver_host")
        batch.drop_column("driver_id")

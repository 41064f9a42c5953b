"""Record where each trial's latency was measured.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-29

``measured_on`` names the hardware class (architecture, CPU model, torch version, int8 backend,
threads): latencies are comparable only within one class. ``latency_node`` is the Ray node that
timed the model. Both are NULL for trials stored before this revision and for trials without a
latency (FAIL, PRUNED, analytic tasks).
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("trials", sa.Column("measured_on", sa.String(255), nullable=True))
    op.add_column("trials", sa.Column("latency_node", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("latency_node")
        batch.drop_column("measured_on")

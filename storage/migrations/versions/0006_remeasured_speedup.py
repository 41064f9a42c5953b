"""The speedup's 95% interval, and the model files of the front to time again.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-12

A trial timed once gives a speedup without an error bar: on a busy machine the same kind of
recipe measured 1.4x to 6.9x within one sweep. The front's trials are now timed again in
rounds against the fp32 reference: ``speedup_low`` and ``speedup_high`` hold the 95% interval
and ``latency_rounds`` the rounds it took (NULL for trials timed once, all trials stored before
this revision among them). ``trial_artifacts`` keeps the front's model files, so that `sweep
remeasure` can time them again later without training.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column("trials", sa.Column("speedup_low", sa.Float(), nullable=True))
    op.add_column("trials", sa.Column("speedup_high", sa.Float(), nullable=True))
    op.add_column("trials", sa.Column("latency_rounds", sa.Integer(), nullable=True))
    op.create_table(
        "trial_artifacts",
        sa.Column("trial_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("runtime", sa.String(length=64), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.id"],
            name=op.f("fk_trial_artifacts_trial_id_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trial_id", name=op.f("pk_trial_artifacts")),
    )


def downgrade() -> None:
    op.drop_table("trial_artifacts")
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("latency_rounds")
        batch.drop_column("speedup_high")
        batch.drop_column("speedup_low")

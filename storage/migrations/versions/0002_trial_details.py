"""Move the JSON documents of trials (recipe, metrics, timings) into trial_details.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-23

A Pareto query scans the metric columns of every trial of a sweep. With the recipe (kilobytes
for a model with tens of layers) inline, each ``trials`` row filled most of a page and a scan
of 100,000 trials read hundreds of megabytes; narrow rows make it a few megabytes.

On SQLite, dropping columns rebuilds ``trials`` (Alembic batch mode); ``copy_from`` gives the
0001 table as it was created, so its CHECK constraint survives the rebuild. The store runs
migrations with foreign keys off (a rebuild drops the old table) and checks them afterwards.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DOCUMENTS = ("recipe", "metrics", "timings")
NAMING = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}
_METRICS = (
    ("accuracy", sa.Float),
    ("fp32_accuracy", sa.Float),
    ("accuracy_drop", sa.Float),
    ("size_bytes", sa.BigInteger),
    ("compressed_bytes", sa.BigInteger),
    ("fp32_size_bytes", sa.BigInteger),
    ("fp32_compressed_bytes", sa.BigInteger),
    ("latency_ms", sa.Float),
    ("fp32_latency_ms", sa.Float),
    ("speedup", sa.Float),
    ("sparsity", sa.Float),
    ("params", sa.BigInteger),
    ("nonzero_params", sa.BigInteger),
    ("fp32_params", sa.BigInteger),
    ("macs", sa.BigInteger),
)


def _trials_0001() -> sa.Table:
    """``trials`` exactly as revision 0001 created it."""
    metadata = sa.MetaData(naming_convention=NAMING)
    sa.Table("sweeps", metadata, sa.Column("id", sa.Integer(), primary_key=True))
    state = sa.Enum(
        "RUNNING",
        "COMPLETE",
        "PRUNED",
        "FAIL",
        name="trial_state",
        native_enum=False,
        create_constraint=True,
        length=16,
    )
    return sa.Table(
        "trials",
        metadata,
        sa.Column("id", sa.Integer(), primary_key=True),
        sa.Column(
            "sweep_id",
            sa.Integer(),
            sa.ForeignKey("sweeps.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column("state", state, nullable=False),
        sa.Column("recipe", sa.Text(), nullable=False),
        sa.Column("order", sa.String(length=64), nullable=True),
        sa.Column("granularity", sa.String(length=64), nullable=True),
        *(sa.Column(name, type_(), nullable=True) for name, type_ in _METRICS),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("timings", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.UniqueConstraint("sweep_id", "number"),
        sa.Index("ix_trials_sweep_id_state", "sweep_id", "state"),
    )


def upgrade() -> None:
    op.create_table(
        "trial_details",
        sa.Column("trial_id", sa.Integer(), autoincrement=False, nullable=False),
        sa.Column("recipe", sa.Text(), nullable=False),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("timings", sa.Text(), nullable=False),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.id"],
            name=op.f("fk_trial_details_trial_id_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("trial_id", name=op.f("pk_trial_details")),
    )
    op.execute(
        "INSERT INTO trial_details (trial_id, recipe, metrics, timings) "
        "SELECT id, recipe, metrics, timings FROM trials"
    )
    with op.batch_alter_table("trials", copy_from=_trials_0001()) as batch:
        for name in DOCUMENTS:
            batch.drop_column(name)


def downgrade() -> None:
    with op.batch_alter_table("trials") as batch:
        for name in DOCUMENTS:
            batch.add_column(sa.Column(name, sa.Text(), nullable=True))
    for name in DOCUMENTS:
        op.execute(
            f"UPDATE trials SET {name} = (SELECT d.{name} FROM trial_details d "
            f"WHERE d.trial_id = trials.id)"
        )
        op.execute(f"UPDATE trials SET {name} = '{{}}' WHERE {name} IS NULL")
    with op.batch_alter_table("trials", copy_from=_trials_0001()) as batch:
        for name in DOCUMENTS:
            batch.alter_column(name, existing_type=sa.Text(), nullable=False)
    op.drop_table("trial_details")

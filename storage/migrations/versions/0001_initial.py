"""Initial schema: sweeps, trials, trial_layers, trial_values.

Revision ID: 0001
Revises:
Create Date: 2026-11-23

Migrations are frozen snapshots: they spell out their columns instead of importing the models,
so that later model changes cannot rewrite history.
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def _state_enum(name: str, *values: str) -> sa.Enum:
    return sa.Enum(*values, name=name, native_enum=False, create_constraint=True, length=16)


def upgrade() -> None:
    op.create_table(
        "sweeps",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("config", sa.Text(), nullable=False),
        sa.Column("objectives", sa.Text(), nullable=False),
        sa.Column(
            "status",
            _state_enum("sweep_status", "RUNNING", "FINISHED", "INTERRUPTED", "FAILED"),
            nullable=False,
        ),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("updated_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_sweeps")),
        sa.UniqueConstraint("name", name=op.f("uq_sweeps_name")),
    )
    op.create_table(
        "trials",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("sweep_id", sa.Integer(), nullable=False),
        sa.Column("number", sa.Integer(), nullable=False),
        sa.Column(
            "state",
            _state_enum("trial_state", "RUNNING", "COMPLETE", "PRUNED", "FAIL"),
            nullable=False,
        ),
        sa.Column("recipe", sa.Text(), nullable=False),
        sa.Column("order", sa.String(length=64), nullable=True),
        sa.Column("granularity", sa.String(length=64), nullable=True),
        sa.Column("accuracy", sa.Float(), nullable=True),
        sa.Column("fp32_accuracy", sa.Float(), nullable=True),
        sa.Column("accuracy_drop", sa.Float(), nullable=True),
        sa.Column("size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("compressed_bytes", sa.BigInteger(), nullable=True),
        sa.Column("fp32_size_bytes", sa.BigInteger(), nullable=True),
        sa.Column("fp32_compressed_bytes", sa.BigInteger(), nullable=True),
        sa.Column("latency_ms", sa.Float(), nullable=True),
        sa.Column("fp32_latency_ms", sa.Float(), nullable=True),
        sa.Column("speedup", sa.Float(), nullable=True),
        sa.Column("sparsity", sa.Float(), nullable=True),
        sa.Column("params", sa.BigInteger(), nullable=True),
        sa.Column("nonzero_params", sa.BigInteger(), nullable=True),
        sa.Column("fp32_params", sa.BigInteger(), nullable=True),
        sa.Column("macs", sa.BigInteger(), nullable=True),
        sa.Column("metrics", sa.Text(), nullable=False),
        sa.Column("timings", sa.Text(), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("finished_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("duration_s", sa.Float(), nullable=True),
        sa.Column("worker", sa.String(length=255), nullable=True),
        sa.Column("attempt", sa.Integer(), server_default="1", nullable=False),
        sa.Column("error", sa.Text(), nullable=True),
        sa.ForeignKeyConstraint(
            ["sweep_id"],
            ["sweeps.id"],
            name=op.f("fk_trials_sweep_id_sweeps"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trials")),
        sa.UniqueConstraint("sweep_id", "number", name=op.f("uq_trials_sweep_id_number")),
    )
    op.create_index(op.f("ix_trials_sweep_id_state"), "trials", ["sweep_id", "state"])
    op.create_table(
        "trial_layers",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("layer", sa.String(length=500), nullable=False),
        sa.Column("amount", sa.Float(), nullable=False),
        sa.Column("method", sa.String(length=64), nullable=False),
        sa.Column("granularity", sa.String(length=64), nullable=True),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.id"],
            name=op.f("fk_trial_layers_trial_id_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trial_layers")),
        sa.UniqueConstraint("trial_id", "layer", name=op.f("uq_trial_layers_trial_id_layer")),
    )
    op.create_index(op.f("ix_trial_layers_layer"), "trial_layers", ["layer"])
    op.create_table(
        "trial_values",
        sa.Column("id", sa.Integer(), nullable=False),
        sa.Column("trial_id", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.ForeignKeyConstraint(
            ["trial_id"],
            ["trials.id"],
            name=op.f("fk_trial_values_trial_id_trials"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_trial_values")),
        sa.UniqueConstraint("trial_id", "step", name=op.f("uq_trial_values_trial_id_step")),
    )


def downgrade() -> None:
    op.drop_table("trial_values")
    op.drop_index(op.f("ix_trial_layers_layer"), table_name="trial_layers")
    op.drop_table("trial_layers")
    op.drop_index(op.f("ix_trials_sweep_id_state"), table_name="trials")
    op.drop_table("trials")
    op.drop_table("sweeps")

"""Sparsity counts removed weights too: ``zero_fraction`` and ``removed_fraction`` beside it.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-05

Up to 0003, a trial's ``sparsity`` was the fraction of zeros among the prunable weights that
remained, so a trial whose structured pruning removed 92% of the weights showed 4%. From 0004,
``sparsity`` is the fraction of the original model's prunable weights that are gone, removed
(``removed_fraction``) or zeroed (``zero_fraction``). Stored trials are rewritten where the old
value tells the new one: a trial that removed no channel had nothing removed, so its sparsity
stands and is all zeros. Where channels were removed, how many weights went with them is not
stored: sparsity becomes unknown (NULL), and the old figure is kept in the trial's metrics
document as ``zero_fraction_of_remaining``. Sweeps of the analytic ``synthetic`` task always
counted removed weights, and keep their sparsity.
"""

from __future__ import annotations

import json
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

_BATCH = 1000
_OLD = "zero_fraction_of_remaining"
_TRIALS = sa.table(
    "trials",
    sa.column("id", sa.Integer),
    sa.column("sweep_id", sa.Integer),
    sa.column("sparsity", sa.Float),
    sa.column("zero_fraction", sa.Float),
    sa.column("removed_fraction", sa.Float),
)
_DETAILS = sa.table("trial_details", sa.column("trial_id", sa.Integer), sa.column("metrics"))
_SWEEPS = sa.table("sweeps", sa.column("id", sa.Integer), sa.column("config"))


def _analytic_sweeps(connection: sa.Connection) -> set[int]:
    found = set()
    for sweep_id, config in connection.execute(sa.select(_SWEEPS.c.id, _SWEEPS.c.config)):
        try:
            task = json.loads(config or "{}").get("task")
        except (ValueError, AttributeError):
            continue
        if task == "synthetic":
            found.add(sweep_id)
    return found


def upgrade() -> None:
    op.add_column("trials", sa.Column("zero_fraction", sa.Float(), nullable=True))
    op.add_column("trials", sa.Column("removed_fraction", sa.Float(), nullable=True))
    connection = op.get_bind()
    analytic = _analytic_sweeps(connection)
    query = (
        sa.select(_TRIALS.c.id, _TRIALS.c.sweep_id, _TRIALS.c.sparsity, _DETAILS.c.metrics)
        .join(_DETAILS, _DETAILS.c.trial_id == _TRIALS.c.id)
        .where(_TRIALS.c.sparsity.is_not(None))
        .order_by(_TRIALS.c.id)
    )
    rows = connection.execute(query).all()
    for start in range(0, len(rows), _BATCH):
        columns, documents = [], []
        for trial_id, sweep_id, sparsity, text in rows[start : start + _BATCH]:
            metrics = json.loads(text or "{}")
            if sweep_id in analytic:
                continue
            if not metrics.get("channels_removed"):
                metrics.update(zero_fraction=sparsity, removed_fraction=0.0)
                columns.append({"i": trial_id, "s": sparsity, "z": sparsity, "r": 0.0})
            else:
                metrics[_OLD], metrics["sparsity"] = sparsity, None
                columns.append({"i": trial_id, "s": None, "z": None, "r": None})
            documents.append({"i": trial_id, "m": json.dumps(metrics)})
        if columns:
            connection.execute(
                _TRIALS.update()
                .where(_TRIALS.c.id == sa.bindparam("i"))
                .values(
                    sparsity=sa.bindparam("s"),
                    zero_fraction=sa.bindparam("z"),
                    removed_fraction=sa.bindparam("r"),
                ),
                columns,
            )
            connection.execute(
                _DETAILS.update()
                .where(_DETAILS.c.trial_id == sa.bindparam("i"))
                .values(metrics=sa.bindparam("m")),
                documents,
            )


def downgrade() -> None:
    connection = op.get_bind()
    rows = connection.execute(sa.select(_DETAILS.c.trial_id, _DETAILS.c.metrics)).all()
    for trial_id, text in rows:
        metrics = json.loads(text or "{}")
        if _OLD not in metrics:
            continue
        old = metrics.pop(_OLD)
        metrics["sparsity"] = old
        connection.execute(_TRIALS.update().where(_TRIALS.c.id == trial_id).values(sparsity=old))
        connection.execute(
            _DETAILS.update()
            .where(_DETAILS.c.trial_id == trial_id)
            .values(metrics=json.dumps(metrics))
        )
    with op.batch_alter_table("trials") as batch:
        batch.drop_column("removed_fraction")
        batch.drop_column("zero_fraction")

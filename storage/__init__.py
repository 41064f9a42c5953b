"""Queryable store of sweeps, trials, per-layer recipes and Pareto fronts.

SQLite (default) or PostgreSQL through SQLAlchemy, with the schema managed by Alembic::

    store = Store("sqlite:///sweeps.db")
    store.create_sweep("resnet18", config, {"accuracy": "max", "size_bytes": "min"})
    store.record_trials("resnet18", [TrialRecord(number=0, state="RUNNING", recipe=recipe)])
    front = store.pareto_front("resnet18", where=["accuracy >= 0.98", "latency_ms < 5"])
    tolerance = store.layer_summary("resnet18")  # per layer: pruning amounts over the front

Several drivers may write one database at once, each its own sweep: a sweep has one driver
(``Store.claim_sweep``; a driver whose sweep was taken over cannot write to it). Transient
errors (a locked SQLite file, a dropped connection) are retried with backoff.
"""

from storage._errors import (
    DriverAliveError,
    DuplicateSweepError,
    FencedError,
    StorageError,
    StorageFullError,
    SweepNotFoundError,
    WhereError,
)
from storage._models import METRIC_COLUMNS, TRIAL_STATES
from storage._ownership import Driver, driver_alive
from storage._records import FEASIBLE_KEY, SweepInfo, TrialRecord
from storage._store import Store

__all__ = [
    "FEASIBLE_KEY",
    "METRIC_COLUMNS",
    "TRIAL_STATES",
    "Driver",
    "DriverAliveError",
    "DuplicateSweepError",
    "FencedError",
    "StorageError",
    "StorageFullError",
    "Store",
    "SweepInfo",
    "SweepNotFoundError",
    "TrialRecord",
    "WhereError",
    "driver_alive",
]

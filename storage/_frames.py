"""Conversion of query results into pandas DataFrames with stable columns and dtypes."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

import pandas as pd
from sqlalchemy import ColumnElement, Row, Select, select

from storage import _json
from storage._models import (
    INTEGER_METRICS,
    METRIC_COLUMNS,
    TrialDetailModel,
    TrialModel,
    TrialState,
)

TRIAL_COLUMNS: Final[tuple[str, ...]] = (
    "number",
    "state",
    *METRIC_COLUMNS,
    "order",
    "granularity",
    "queued_s",
    "run_s",
    "duration_s",
    "worker",
    "attempt",
    "measured_on",
    "latency_node",
    "error",
    "started_at",
    "finished_at",
    "recipe",
    "metrics",
    "timings",
)
"""Columns of ``Store.trials()`` and ``Store.pareto_front()``, in order."""

LAYER_COLUMNS: Final[tuple[str, ...]] = ("number", "layer", "amount", "method", "granularity")
VALUE_COLUMNS: Final[tuple[str, ...]] = ("number", "step", "value")

_JSON_COLUMNS: Final = frozenset({"recipe", "metrics", "timings"})
_TIMESTAMP_DTYPE: Final = pd.DatetimeTZDtype(unit="us", tz="UTC")


def _dtype(name: str) -> str | pd.DatetimeTZDtype:
    if name in ("number", "attempt", "step"):
        return "int64"
    if name in INTEGER_METRICS:
        return "Int64"  # nullable integer: byte sizes and counts stay exact
    if name in METRIC_COLUMNS or name in ("queued_s", "run_s", "duration_s", "amount", "value"):
        return "float64"
    if name in ("started_at", "finished_at"):
        return _TIMESTAMP_DTYPE
    return "object"


def trial_select() -> Select[Any]:
    """SELECT of the columns of a trial frame, in :data:`TRIAL_COLUMNS` order, from ``trials``
    joined with ``trial_details``; callers add WHERE and ORDER BY."""
    trials, details = TrialModel.__table__, TrialDetailModel.__table__
    columns: list[ColumnElement[Any]] = [
        details.c[name] if name in _JSON_COLUMNS else trials.c[name] for name in TRIAL_COLUMNS
    ]
    return select(*columns).select_from(trials.join(details, details.c.trial_id == trials.c.id))


def _series(name: str, values: list[Any]) -> pd.Series:
    dtype = _dtype(name)
    if isinstance(dtype, pd.DatetimeTZDtype):
        return pd.to_datetime(pd.Series(values, dtype=object), utc=True).astype(dtype)
    if dtype == "float64":
        values = [float("nan") if value is None else value for value in values]
    return pd.Series(values, dtype=dtype)


def trial_frame(rows: Sequence[Row[Any]]) -> pd.DataFrame:
    """Build the trial frame from rows selected with :func:`trial_select`."""
    columns: dict[str, list[Any]] = {name: [] for name in TRIAL_COLUMNS}
    for row in rows:
        for name, value in zip(TRIAL_COLUMNS, row, strict=True):
            if name in _JSON_COLUMNS:
                value = _json.loads(value)
            elif isinstance(value, TrialState):
                value = value.name
            columns[name].append(value)
    return pd.DataFrame({name: _series(name, values) for name, values in columns.items()})


def plain_frame(names: tuple[str, ...], rows: Sequence[Row[Any]]) -> pd.DataFrame:
    """A frame whose columns are ``names``, one per field of each row, values as stored."""
    columns: dict[str, list[Any]] = {name: [] for name in names}
    for row in rows:
        for name, value in zip(names, row, strict=True):
            columns[name].append(value)
    return pd.DataFrame({name: _series(name, values) for name, values in columns.items()})


def layer_frame(rows: Sequence[Row[Any]]) -> pd.DataFrame:
    """Build the layer frame from ``(number, layer, amount, method, granularity)`` rows."""
    return plain_frame(LAYER_COLUMNS, rows)


def value_frame(rows: Sequence[Row[Any]]) -> pd.DataFrame:
    """Build the intermediate-value frame from ``(number, step, value)`` rows."""
    return plain_frame(VALUE_COLUMNS, rows)

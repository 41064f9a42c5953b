"""Public record types and their validation/conversion into table rows."""

from __future__ import annotations

import math
import numbers
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeGuard

from sqlalchemy import ColumnElement

from storage import _json
from storage._errors import StorageError
from storage._models import (
    INTEGER_METRICS,
    METRIC_COLUMNS,
    TRIAL_STATES,
    TrialLayerModel,
    TrialModel,
    TrialState,
)
from storage._types import as_utc

# Key of a sweep's config holding ``--where`` terms its trials must meet to be feasible (its
# constraints); fronts and layer summaries keep only those trials unless asked for all.
FEASIBLE_KEY = "feasible"


@dataclass(frozen=True)
class TrialRecord:
    """The complete current state of one trial, as the driver hands it to the store.

    ``recipe`` is the trial's compression recipe: ``{"schema_version": 1, "order": ...,
    "granularity": ..., "layers": {layer: {"amount": float, "method": str, "granularity": str}}}``.
    ``metrics`` may hold names outside :data:`METRIC_COLUMNS`; those are kept in the JSON
    ``metrics`` column only. NaN metric values are stored as NULL in the metric columns.
    Naive datetimes are taken to be UTC. ``intermediate`` maps step to intermediate value.
    """

    number: int
    state: str
    recipe: dict[str, Any]
    metrics: dict[str, float] = field(default_factory=dict)
    timings: dict[str, float] = field(default_factory=dict)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    worker: str | None = None
    attempt: int = 1
    measured_on: str | None = None
    latency_node: str | None = None
    error: str | None = None
    intermediate: dict[int, float] = field(default_factory=dict)
    # Seconds the trial ran on workers; the rest of started_at..finished_at it waited (queued_s).
    run_s: float | None = None


@dataclass(frozen=True)
class SweepInfo:
    """A sweep's metadata and its number of trials per state (all four states present)."""

    name: str
    status: str
    objectives: dict[str, str]
    config: dict[str, Any]
    created_at: datetime
    updated_at: datetime
    counts: dict[str, int]
    # The sweep's driver ran on this host and its process is gone: not alive, whatever its
    # last write's age (see :func:`storage.driver_alive`).
    driver_gone: bool = False


@dataclass(frozen=True)
class TrialRows:
    """Column values for one ``trials`` row plus its ``trial_details``, ``trial_layers`` and
    ``trial_values`` rows.

    ``details``, ``layers`` and ``values`` lack ``trial_id``, which is only known after the trial
    row exists.
    """

    number: int
    trial: dict[str, Any]
    details: dict[str, str]
    layers: list[dict[str, Any]]
    values: list[dict[str, Any]]


def _short(value: object) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _is_real(value: object) -> TypeGuard[numbers.Real]:
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _number(value: object, what: str) -> float | int:
    """A plain Python int/float for a JSON document (numpy scalars converted)."""
    kind = type(value)
    if kind is float or kind is int:  # the common case, without the slow ABC checks
        return value  # type: ignore[return-value]
    if not _is_real(value):
        raise StorageError(f"{what} must be a number, got {_short(value)}")
    return int(value) if isinstance(value, numbers.Integral) else float(value)


def _column_value(name: str, value: float | int, what: str) -> float | int | None:
    """The value for metric column ``name``: NaN becomes NULL, integer columns need integers."""
    if isinstance(value, float) and math.isnan(value):
        return None
    if name not in INTEGER_METRICS:
        return float(value)
    if isinstance(value, float):
        if not value.is_integer():
            raise StorageError(f"{what} must be a whole number, got {value!r}")
        return int(value)
    return value


def _text(value: object, what: str, limit: int | None = None, *, required: bool = False) -> Any:
    """``value`` as a string of at most ``limit`` characters (None allowed unless required)."""
    if value is None:
        if required:
            raise StorageError(f"{what} is missing")
        return None
    if not isinstance(value, str):
        raise StorageError(f"{what} must be a string, got {_short(value)}")
    if limit is not None and len(value) > limit:
        raise StorageError(f"{what} is longer than {limit} characters: {_short(value)}")
    return value


def _limit(column: ColumnElement[Any]) -> int:
    """The declared length of a String column."""
    length = getattr(column.type, "length", None)
    if not isinstance(length, int):
        raise TypeError(f"column {column} has no declared length")
    return length


_TRIALS = TrialModel.__table__.c
_LAYERS = TrialLayerModel.__table__.c
_LAYER_LIMIT = _limit(_LAYERS.layer)
_METHOD_LIMIT = _limit(_LAYERS.method)
_GRANULARITY_LIMIT = _limit(_LAYERS.granularity)


def _datetime(value: object, what: str) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, datetime):
        raise StorageError(f"{what} must be a datetime, got {_short(value)}")
    return as_utc(value)


def _metrics(
    metrics: object, what: str
) -> tuple[dict[str, float | int], dict[str, float | int | None]]:
    """Return the JSON document of all metrics and the values of the metric columns."""
    if not isinstance(metrics, Mapping):
        raise StorageError(f"{what}: metrics must be a dict, got {_short(metrics)}")
    document: dict[str, float | int] = {}
    for name, raw in metrics.items():
        if not isinstance(name, str):
            raise StorageError(f"{what}: metric names must be strings, got {_short(name)}")
        document[name] = _number(raw, f"{what}: metric {name!r}")
    columns: dict[str, float | int | None] = {}
    for name in METRIC_COLUMNS:
        value = document.get(name)
        columns[name] = None if value is None else _column_value(name, value, f"{what}: {name}")
    return document, columns


def _layers(recipe: Mapping[str, Any], what: str) -> list[dict[str, Any]]:
    layers = recipe.get("layers", {})
    if not isinstance(layers, Mapping):
        raise StorageError(f"{what}: recipe['layers'] must be a dict, got {_short(layers)}")
    rows: list[dict[str, Any]] = []
    default_granularity = recipe.get("granularity")
    for layer, spec in layers.items():
        name = _text(layer, f"{what}: layer name", _LAYER_LIMIT, required=True)
        if not isinstance(spec, Mapping):
            raise StorageError(
                f"{what}: layer {_short(layer)} must map to a dict, got {_short(spec)}"
            )
        amount, method = spec.get("amount"), spec.get("method")
        granularity = spec.get("granularity", default_granularity)
        if type(amount) is not float or amount != amount or type(method) is not str:
            # The slow path names the problem (a float NaN is the only value != itself).
            where = f"{what}: layer {_short(layer)}"
            amount = float(_number(amount, f"{where}: 'amount'"))
            if math.isnan(amount):
                raise StorageError(f"{where}: 'amount' must be a number, got nan")
            method = _text(method, f"{where}: 'method'", _METHOD_LIMIT, required=True)
        if len(method) > _METHOD_LIMIT or not (
            granularity is None
            or (type(granularity) is str and len(granularity) <= _GRANULARITY_LIMIT)
        ):
            where = f"{what}: layer {_short(layer)}"
            _text(method, f"{where}: 'method'", _METHOD_LIMIT, required=True)
            _text(granularity, f"{where}: 'granularity'", _GRANULARITY_LIMIT)
        rows.append({"layer": name, "amount": amount, "method": method, "granularity": granularity})
    return rows


def _intermediate(values: object, what: str) -> list[dict[str, Any]]:
    if not isinstance(values, Mapping):
        raise StorageError(f"{what}: intermediate must be a dict, got {_short(values)}")
    rows: list[dict[str, Any]] = []
    for step, raw in values.items():
        if not isinstance(step, numbers.Integral) or isinstance(step, bool):
            raise StorageError(f"{what}: intermediate steps must be integers, got {_short(step)}")
        value = float(_number(raw, f"{what}: intermediate value at step {step}"))
        rows.append({"step": int(step), "value": None if math.isnan(value) else value})
    return rows


def trial_rows(sweep: str, record: TrialRecord) -> TrialRows:
    """Validate ``record`` and convert it to table rows; raises StorageError naming the problem."""
    if not isinstance(record, TrialRecord):
        raise StorageError(f"expected TrialRecord objects, got {_short(record)}")
    number = record.number
    if not isinstance(number, numbers.Integral) or isinstance(number, bool) or number < 0:
        raise StorageError(f"trial numbers must be integers >= 0, got {_short(number)}")
    what = f"trial {number} of sweep {sweep!r}"
    if record.state not in TRIAL_STATES:
        raise StorageError(
            f"{what}: unknown state {_short(record.state)}; use one of {', '.join(TRIAL_STATES)}"
        )
    if not isinstance(record.recipe, Mapping):
        raise StorageError(f"{what}: recipe must be a dict, got {_short(record.recipe)}")
    attempt = record.attempt
    if not isinstance(attempt, numbers.Integral) or isinstance(attempt, bool) or attempt < 1:
        raise StorageError(f"{what}: attempt must be an integer >= 1, got {_short(attempt)}")
    if not isinstance(record.timings, Mapping):
        raise StorageError(f"{what}: timings must be a dict, got {_short(record.timings)}")
    timings: dict[str, float | int] = {}
    for phase, seconds in record.timings.items():
        if not isinstance(phase, str):
            raise StorageError(f"{what}: timing phases must be strings, got {_short(phase)}")
        timings[phase] = _number(seconds, f"{what}: timing {phase!r}")
    metrics, metric_columns = _metrics(record.metrics, what)
    started_at = _datetime(record.started_at, f"{what}: started_at")
    finished_at = _datetime(record.finished_at, f"{what}: finished_at")
    run_s = None if record.run_s is None else _number(record.run_s, f"{what}: run_s")
    if run_s is not None and not (math.isfinite(run_s) and run_s >= 0):
        raise StorageError(f"{what}: run_s must be a number of seconds >= 0, got {run_s!r}")
    duration = None
    if started_at is not None and finished_at is not None:
        duration = (finished_at - started_at).total_seconds()
    trial: dict[str, Any] = {
        "number": int(number),
        "state": TrialState[record.state],
        "order": _text(
            record.recipe.get("order"), f"{what}: recipe['order']", _limit(_TRIALS.order)
        ),
        "granularity": _text(
            record.recipe.get("granularity"),
            f"{what}: recipe['granularity']",
            _limit(_TRIALS.granularity),
        ),
        **metric_columns,
        "started_at": started_at,
        "finished_at": finished_at,
        "duration_s": duration,
        "run_s": run_s,
        "queued_s": None if duration is None or run_s is None else max(0.0, duration - run_s),
        "worker": _text(record.worker, f"{what}: worker", _limit(_TRIALS.worker)),
        "attempt": int(attempt),
        "measured_on": _text(
            record.measured_on, f"{what}: measured_on", _limit(_TRIALS.measured_on)
        ),
        "latency_node": _text(
            record.latency_node, f"{what}: latency_node", _limit(_TRIALS.latency_node)
        ),
        "error": _text(record.error, f"{what}: error"),
    }
    details = {
        "recipe": _json.dumps(record.recipe, f"{what}: recipe"),
        "metrics": _json.dumps(metrics, f"{what}: metrics"),
        "timings": _json.dumps(timings, f"{what}: timings"),
    }
    return TrialRows(
        number=int(number),
        trial=trial,
        details=details,
        layers=_layers(record.recipe, what),
        values=_intermediate(record.intermediate, what),
    )

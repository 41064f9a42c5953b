"""Pareto-front queries: one narrow SELECT of the objective columns, the front in numpy, and
full rows for the front only; the per-layer summary over a front."""

from __future__ import annotations

import gc
import itertools
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any, Final

import numpy as np
import numpy.typing as npt
import pandas as pd
from sqlalchemy import ColumnElement, Row, select
from sqlalchemy.orm import Session

from storage import _json
from storage._frames import trial_select
from storage._models import TrialDetailModel, TrialLayerModel, TrialModel, TrialState
from storage._pareto import non_dominated, to_minimization
from storage._queries import chunks

LAYER_SUMMARY_COLUMNS: Final[tuple[str, ...]] = (
    "layer",
    "trials",
    "amount_min",
    "amount_median",
    "amount_max",
    "amount_at_best",
)
"""Columns of ``Store.layer_summary()``, in order."""

_TRIALS = TrialModel.__table__
_DETAILS = TrialDetailModel.__table__
_LAYERS = TrialLayerModel.__table__
_MAX_LAYERS = 1_000_000  # recipe positions per trial in the layer order key


@contextmanager
def collection_paused() -> Iterator[None]:
    """Pause Python's cyclic garbage collector while a large result is fetched: allocating
    100,000 rows would otherwise trigger collections over every live object, which cost more
    than the fetch itself. Rows hold no reference cycles; the collector resumes afterwards."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _complete(sweep_id: int, clauses: Sequence[ColumnElement[bool]]) -> list[ColumnElement[bool]]:
    return [_TRIALS.c.sweep_id == sweep_id, _TRIALS.c.state == TrialState.COMPLETE, *clauses]


def front_ids(
    session: Session,
    sweep_id: int,
    objectives: Mapping[str, str],
    clauses: Sequence[ColumnElement[bool]],
) -> npt.NDArray[np.int64]:
    """Ids of the non-dominated COMPLETE trials that satisfy ``clauses``.

    Only the id and the objective columns are read (``trials`` rows are narrow; the recipes live
    in ``trial_details``); trials missing an objective value are left out.
    """
    ids, points = _objective_points(session, sweep_id, objectives, clauses)
    return ids[non_dominated(points)] if len(ids) else ids


def near_front_numbers(
    session: Session,
    sweep_id: int,
    objectives: Mapping[str, str],
    clauses: Sequence[ColumnElement[bool]],
    slack: Mapping[str, float],
) -> list[int]:
    """Numbers of the COMPLETE trials (satisfying ``clauses``) that no front trial dominates
    once the front's values of the ``slack`` objectives are made worse by that fraction: the
    trials that may join the front if those figures move by as much. A trial dominated that way
    by anyone is dominated that way by a front trial (dominance survives the same worsening), so
    the front is all it is compared with."""
    ids, points = _objective_points(session, sweep_id, objectives, clauses)
    if not len(ids):
        return []
    front = points[non_dominated(points)]
    # Minimized form: worse means larger; a value v made worse by s is v + s * |v|.
    margin = np.array([slack.get(name, 0.0) for name in objectives])
    worse = front + margin * np.abs(front)
    kept = np.ones(len(points), dtype=bool)
    for start in range(0, len(points), 4096):  # rows x front x objectives at a time
        block = points[start : start + 4096, None, :]
        dominated = np.all(worse[None] <= block, axis=2) & np.any(worse[None] < block, axis=2)
        kept[start : start + 4096] = ~dominated.any(axis=1)
    numbers: list[int] = []
    for chunk in chunks(ids[kept].tolist()):
        stmt = select(_TRIALS.c.number).where(_TRIALS.c.id.in_(chunk))
        numbers.extend(int(number) for number in session.scalars(stmt))
    return sorted(numbers)


def _objective_points(
    session: Session,
    sweep_id: int,
    objectives: Mapping[str, str],
    clauses: Sequence[ColumnElement[bool]],
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """(ids, points in minimized form) of the COMPLETE trials with every objective value."""
    columns = [_TRIALS.c[name] for name in objectives]
    stmt = select(_TRIALS.c.id, *columns).where(
        *_complete(sweep_id, clauses), *(column.is_not(None) for column in columns)
    )
    rows = session.execute(stmt).all()
    if not rows:
        return np.zeros(0, dtype=np.int64), np.zeros((0, len(columns)))
    width = 1 + len(columns)
    flat = np.fromiter(
        itertools.chain.from_iterable(rows), dtype=np.float64, count=len(rows) * width
    ).reshape(len(rows), width)
    ids = flat[:, 0].astype(np.int64)  # ids are far below 2**53, exact as floats
    points = to_minimization(flat[:, 1:], list(objectives.values()))
    usable = ~np.isnan(points).any(axis=1)  # NaN stored by other writers: not comparable
    return ids[usable], points[usable]


def frame_rows(session: Session, ids: npt.NDArray[np.int64]) -> list[Row[Any]]:
    """Full trial-frame rows for ``ids``, fetched in chunks short enough for ``IN (...)``."""
    rows: list[Row[Any]] = []
    for chunk in chunks(ids.tolist()):
        rows.extend(session.execute(trial_select().where(_TRIALS.c.id.in_(chunk))).all())
    return rows


def _best_first(trials: pd.DataFrame, objectives: Mapping[str, str]) -> pd.DataFrame:
    """``trials`` sorted most accurate first; ties by the objectives in order, then number."""
    keys = ["accuracy", *(name for name in objectives if name != "accuracy"), "number"]
    ascending = [False, *(objectives[name] == "min" for name in keys[1:-1]), True]
    return trials.sort_values(keys, ascending=ascending, na_position="last", kind="mergesort")


def _front_layers(
    session: Session,
    sweep_id: int,
    objectives: Mapping[str, str],
    clauses: Sequence[ColumnElement[bool]],
    trial_columns: Sequence[ColumnElement[Any]],
) -> tuple[list[tuple[Any, ...]], list[tuple[int, int, str, float]]]:
    """The front's trial rows and ``(order, trial_id, layer, amount)`` per layer, read from
    the front's recipes: primary-key lookups, which stay fast on a database whose planner has
    no statistics yet (``trial_layers`` by ``trial_id IN (...)`` can then become a full scan).
    ``order`` sorts layers in recipe order, like the ids of ``trial_layers`` rows."""
    trial_list: list[tuple[Any, ...]] = []
    layer_list: list[tuple[int, int, str, float]] = []
    joined = _TRIALS.join(_DETAILS, _DETAILS.c.trial_id == _TRIALS.c.id)
    for chunk in chunks(front_ids(session, sweep_id, objectives, clauses).tolist()):
        stmt = select(*trial_columns, _DETAILS.c.recipe).select_from(joined)
        for row in session.execute(stmt.where(_TRIALS.c.id.in_(chunk))):
            trial_list.append(tuple(row)[:-1])
            layers = _json.loads(row.recipe).get("layers", {})
            for position, (layer, spec) in enumerate(layers.items()):
                order = row.id * _MAX_LAYERS + position
                layer_list.append((order, row.id, layer, float(spec["amount"])))
    return trial_list, layer_list


def layer_summary(
    session: Session,
    sweep_id: int,
    objectives: Mapping[str, str],
    clauses: Sequence[ColumnElement[bool]],
    *,
    front_only: bool,
) -> pd.DataFrame:
    """Per layer, the pruning amounts over the front (or over every COMPLETE trial that
    satisfies ``clauses``); see ``Store.layer_summary``."""
    metric_columns = [_TRIALS.c[name] for name in dict.fromkeys(["accuracy", *objectives])]
    trial_columns = [_TRIALS.c.id, _TRIALS.c.number, *metric_columns]
    if front_only:
        trial_list, layer_list = _front_layers(
            session, sweep_id, objectives, clauses, trial_columns
        )
    else:
        trial_list = [
            tuple(row)
            for row in session.execute(select(*trial_columns).where(*_complete(sweep_id, clauses)))
        ]
        layer_list = [
            tuple(row)
            for row in session.execute(
                select(_LAYERS.c.id, _LAYERS.c.trial_id, _LAYERS.c.layer, _LAYERS.c.amount)
                .join(_TRIALS, _TRIALS.c.id == _LAYERS.c.trial_id)
                .where(*_complete(sweep_id, clauses))
            )
        ]
    trials = pd.DataFrame(
        trial_list,
        columns=["trial_id", "number", *(column.name for column in metric_columns)],
    ).astype({column.name: "float64" for column in metric_columns})
    layers = pd.DataFrame(layer_list, columns=["row_id", "trial_id", "layer", "amount"]).astype(
        {"amount": "float64"}
    )
    best = None if trials.empty else _best_first(trials, objectives).iloc[0]
    grouped = layers.groupby("layer", sort=False)["amount"]
    summary = pd.DataFrame(
        {
            "trials": grouped.size(),
            "amount_min": grouped.min(),
            "amount_median": grouped.median(),
            "amount_max": grouped.max(),
            "first_row": layers.groupby("layer", sort=False)["row_id"].min(),
        }
    )
    at_best = pd.Series(dtype="float64")
    if best is not None:
        chosen = layers[layers["trial_id"] == best["trial_id"]]
        at_best = chosen.set_index("layer")["amount"]
    summary["amount_at_best"] = at_best.reindex(summary.index).astype("float64")
    summary = summary.sort_values("first_row", kind="mergesort").reset_index(names="layer")
    frame = summary[list(LAYER_SUMMARY_COLUMNS)].astype({"trials": "int64", "layer": "object"})
    frame.attrs.update(
        {
            "trials": len(trials),
            "front_only": front_only,
            "objectives": dict(objectives),
            "best_number": None if best is None else int(best["number"]),
            "best_accuracy": None
            if best is None or pd.isna(best["accuracy"])
            else float(best["accuracy"]),
        }
    )
    return frame

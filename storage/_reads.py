"""The store's reads of trials: listings, pages, narrow metric reads, fronts, per-layer
summaries (mixed into :class:`~storage.Store`, which runs them in its transactions)."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import ColumnElement, Select, func, select
from sqlalchemy.orm import Session

from storage import _json
from storage._errors import StorageError
from storage._frames import layer_frame, plain_frame, trial_frame, trial_select, value_frame
from storage._front import (
    collection_paused,
    frame_rows,
    front_ids,
    layer_summary,
    near_front_numbers,
)
from storage._models import (
    METRIC_COLUMNS,
    TRIAL_STATES,
    SweepModel,
    TrialLayerModel,
    TrialModel,
    TrialState,
    TrialValueModel,
)
from storage._pareto import validate_objectives
from storage._records import FEASIBLE_KEY
from storage._where import parse_where

T = TypeVar("T")


def _feasible(sweep_row: SweepModel, wanted: bool) -> list[ColumnElement[bool]]:
    """The sweep's own feasibility terms (its config's :data:`FEASIBLE_KEY`), if wanted."""
    terms = _json.loads(sweep_row.config).get(FEASIBLE_KEY) if wanted else None
    return parse_where(terms) if terms else []


def _check_states(states: Sequence[str] | None) -> list[TrialState] | None:
    if states is None:
        return None
    if isinstance(states, str):
        states = [states]
    unknown = [state for state in states if state not in TRIAL_STATES]
    if unknown:
        raise StorageError(
            f"unknown trial state(s) {', '.join(map(repr, unknown))}; use {', '.join(TRIAL_STATES)}"
        )
    return [TrialState[state] for state in states]


@dataclass(frozen=True)
class _TrialFilter:
    """Which trials of a sweep a listing keeps: states, ``--where`` terms, trial numbers."""

    states: list[TrialState] | None
    where: list[ColumnElement[bool]]
    numbers: list[int] | None

    @classmethod
    def of(
        cls,
        states: Sequence[str] | None,
        where: Sequence[str] | str | None,
        numbers: Sequence[int] | None,
    ) -> _TrialFilter:
        wanted = None if numbers is None else sorted({int(number) for number in numbers})
        return cls(_check_states(states), parse_where(where), wanted)

    def clauses(self, sweep_id: int) -> list[ColumnElement[bool]]:
        trials = TrialModel.__table__
        found: list[ColumnElement[bool]] = [trials.c.sweep_id == sweep_id, *self.where]
        if self.states is not None:
            found.append(trials.c.state.in_(self.states))
        if self.numbers is not None:
            found.append(trials.c.number.in_(self.numbers))
        return found


def _whole_rows(chosen: Select[Any], *order: ColumnElement[Any]) -> Select[Any]:
    """The trial-frame SELECT of the trials whose ids ``chosen`` picks, in ``order``. The pick
    runs on the narrow ``trials`` rows; only the rows picked join their details (recipes of
    hundreds of layers), not every row a page skips or a ranking passes over."""
    trials = TrialModel.__table__
    return trial_select().where(trials.c.id.in_(chosen)).order_by(*order)


class TrialReads(ABC):
    """Every read of a sweep's trials; :class:`~storage.Store` supplies the transactions."""

    url_display: str

    @abstractmethod
    def _run(self, work: Callable[[Session], T], *, write: bool = False) -> T:
        """Run ``work`` in one transaction (see :class:`~storage.Store`)."""

    def trials(
        self,
        sweep: str,
        *,
        states: Sequence[str] | None = None,
        where: Sequence[str] | str | None = None,
        numbers: Sequence[int] | None = None,
        limit: int | None = None,
        offset: int = 0,
        descending: bool = False,
    ) -> pd.DataFrame:
        """One row per trial of ``sweep`` ordered by number, optionally filtered.

        Columns: number, state, every metric column, order, granularity, duration_s, worker,
        attempt, error, started_at, finished_at, and the parsed recipe, metrics and timings
        dicts. ``where`` takes ``--where`` expressions (see :class:`WhereError`); ``numbers``
        keeps those trials only. ``limit`` and ``offset`` take one page of the ordered rows
        (newest first with ``descending``); :meth:`count_trials` counts all of them.
        """
        filters = _TrialFilter.of(states, where, numbers)
        if (limit is not None and limit < 0) or offset < 0:
            raise StorageError(f"limit {limit} and offset {offset} must not be negative")

        def work(session: Session) -> list[Any]:
            sweep_row = SweepModel.find_or_raise_by_name(session, sweep, self.url_display)
            trials = TrialModel.__table__
            number = trials.c.number.desc() if descending else trials.c.number
            mine = filters.clauses(sweep_row.id)
            if limit is None and not offset:
                stmt = trial_select().where(*mine).order_by(number)
            else:
                page = select(trials.c.id).where(*mine).order_by(number)
                stmt = _whole_rows(page.limit(limit).offset(offset), number)
            return list(session.execute(stmt).all())

        with collection_paused():
            return trial_frame(self._run(work))

    def count_trials(
        self,
        sweep: str,
        *,
        states: Sequence[str] | None = None,
        where: Sequence[str] | str | None = None,
    ) -> int:
        """How many trials :meth:`trials` returns with the same filters, without a page."""
        filters = _TrialFilter.of(states, where, None)

        def work(session: Session) -> int:
            sweep_row = SweepModel.find_or_raise_by_name(session, sweep, self.url_display)
            stmt = select(func.count()).select_from(TrialModel.__table__)
            return int(session.scalar(stmt.where(*filters.clauses(sweep_row.id))) or 0)

        return self._run(work)

    def metric_values(
        self,
        sweep: str,
        columns: Sequence[str],
        *,
        states: Sequence[str] | None = ("COMPLETE",),
        where: Sequence[str] | str | None = None,
        feasible_only: bool = False,
    ) -> pd.DataFrame:
        """Trial number and the metric ``columns`` of each trial, ordered by number: the narrow
        read behind rankings and curves over many trials (no recipe, no JSON). ``where`` as in
        :meth:`trials`; with ``feasible_only``, only trials that meet the sweep's own
        constraints."""
        unknown = [name for name in columns if name not in METRIC_COLUMNS]
        if unknown:
            raise StorageError(
                f"unknown metric column(s) {', '.join(map(repr, unknown))}; use one of "
                f"{', '.join(METRIC_COLUMNS)}"
            )
        filters = _TrialFilter.of(states, where, None)

        def work(session: Session) -> list[Any]:
            sweep_row = SweepModel.find_or_raise_by_name(session, sweep, self.url_display)
            trials = TrialModel.__table__
            stmt = (
                select(trials.c.number, *(trials.c[name] for name in columns))
                .where(*filters.clauses(sweep_row.id), *_feasible(sweep_row, feasible_only))
                .order_by(trials.c.number)
            )
            return list(session.execute(stmt).all())

        return plain_frame(("number", *columns), self._run(work))

    def ranked(
        self,
        sweep: str,
        order: Sequence[tuple[str, str]],
        *,
        where: Sequence[str] | str | None = None,
        states: Sequence[str] | None = ("COMPLETE",),
        limit: int = 1,
    ) -> pd.DataFrame:
        """The first ``limit`` trials (columns as :meth:`trials`) by ``order``: metric columns
        with ``"max"`` or ``"min"``, then the lower trial number. Trials without a value of the
        first metric are left out; the database sorts, so only those rows are read whole."""
        if not order or limit < 1:
            raise StorageError("ranked: give at least one (metric, direction) and a limit >= 1")
        for metric, direction in order:
            if metric not in METRIC_COLUMNS or direction not in ("max", "min"):
                raise StorageError(
                    f"ranked: ({metric!r}, {direction!r}) must be a metric column and max or min"
                )
        filters = _TrialFilter.of(states, where, None)

        def work(session: Session) -> list[Any]:
            sweep_row = SweepModel.find_or_raise_by_name(session, sweep, self.url_display)
            trials = TrialModel.__table__
            keys = [
                (
                    trials.c[metric].desc() if direction == "max" else trials.c[metric].asc()
                ).nulls_last()
                for metric, direction in order
            ]
            top = (
                select(trials.c.id)
                .where(*filters.clauses(sweep_row.id), trials.c[order[0][0]].is_not(None))
                .order_by(*keys, trials.c.number)
                .limit(limit)
            )
            return list(session.execute(_whole_rows(top, *keys, trials.c.number)).all())

        with collection_paused():
            return trial_frame(self._run(work))

    def pareto_front(
        self,
        sweep: str,
        objectives: Mapping[str, str] | None = None,
        *,
        where: Sequence[str] | str | None = None,
        feasible_only: bool = True,
    ) -> pd.DataFrame:
        """The non-dominated COMPLETE trials of ``sweep`` (same columns as :meth:`trials`).

        ``objectives`` (1-4 metric columns, each ``"max"`` or ``"min"``) default to the sweep's
        own. Trials missing any objective value are left out; equal points are all kept. Rows
        are sorted by the first objective, best first. With ``feasible_only`` (the default),
        only trials that meet the sweep's own constraints count (:data:`FEASIBLE_KEY`).
        """
        clauses = parse_where(where)
        requested = None if objectives is None else validate_objectives(objectives)

        def work(session: Session) -> tuple[dict[str, str], list[Any]]:
            sweep_row = SweepModel.find_or_raise_by_name(session, sweep, self.url_display)
            chosen = requested or validate_objectives(_json.loads(sweep_row.objectives))
            mine = [*clauses, *_feasible(sweep_row, feasible_only)]
            return chosen, frame_rows(session, front_ids(session, sweep_row.id, chosen, mine))

        with collection_paused():
            chosen, rows = self._run(work)
            frame = trial_frame(rows)
        first, direction = next(iter(chosen.items()))
        frame = frame.sort_values(
            [first, "number"], ascending=[direction == "min", True], kind="mergesort"
        )
        return frame.reset_index(drop=True)

    def near_front(self, sweep: str, slack: Mapping[str, float]) -> list[int]:
        """Numbers of the sweep's feasible COMPLETE trials that could join its front (its own
        objectives) if the ``slack`` metrics moved by that fraction (``{"latency_ms": 0.5}``):
        what a driver keeps the model files of, to time them again."""

        def work(session: Session) -> list[int]:
            sweep_row = SweepModel.find_or_raise_by_name(session, sweep, self.url_display)
            chosen = validate_objectives(_json.loads(sweep_row.objectives))
            clauses = _feasible(sweep_row, True)
            return near_front_numbers(session, sweep_row.id, chosen, clauses, slack)

        with collection_paused():
            return self._run(work)

    def layers(self, sweep: str) -> pd.DataFrame:
        """Per-layer recipe of every trial: number, layer, amount, method, granularity.

        Ordered by trial number, then by the layer order of the recipe.
        """

        def work(session: Session) -> list[Any]:
            sweep_row = SweepModel.find_or_raise_by_name(session, sweep, self.url_display)
            stmt = (
                select(
                    TrialModel.number,
                    TrialLayerModel.layer,
                    TrialLayerModel.amount,
                    TrialLayerModel.method,
                    TrialLayerModel.granularity,
                )
                .join(TrialModel, TrialLayerModel.trial_id == TrialModel.id)
                .where(TrialModel.sweep_id == sweep_row.id)
                .order_by(TrialModel.number, TrialLayerModel.id)
            )
            return list(session.execute(stmt).all())

        return layer_frame(self._run(work))

    def layer_summary(
        self,
        sweep: str,
        objectives: Mapping[str, str] | None = None,
        *,
        where: Sequence[str] | str | None = None,
        front_only: bool = True,
        feasible_only: bool = True,
    ) -> pd.DataFrame:
        """How much each layer tolerates: the pruning amounts of the layer over the Pareto
        front of ``sweep`` (or, with ``front_only=False``, over every COMPLETE trial).

        ``objectives``, ``where`` and ``feasible_only`` are as in :meth:`pareto_front`. One
        row per layer, in
        recipe order, with columns ``layer``, ``trials`` (trials that set the layer),
        ``amount_min``, ``amount_median``, ``amount_max`` and ``amount_at_best``: the amount in
        the most accurate of those trials (ties: the objectives in order, then the lowest
        number). ``frame.attrs`` holds ``trials``, ``best_number``, ``best_accuracy``,
        ``objectives`` and ``front_only``.
        """
        clauses = parse_where(where)
        requested = None if objectives is None else validate_objectives(objectives)

        def work(session: Session) -> pd.DataFrame:
            sweep_row = SweepModel.find_or_raise_by_name(session, sweep, self.url_display)
            chosen = requested or validate_objectives(_json.loads(sweep_row.objectives))
            mine = [*clauses, *_feasible(sweep_row, feasible_only)]
            return layer_summary(session, sweep_row.id, chosen, mine, front_only=front_only)

        with collection_paused():
            frame = self._run(work)
        frame.attrs["sweep"] = sweep
        return frame

    def intermediate_values(self, sweep: str) -> pd.DataFrame:
        """The intermediate values trials of ``sweep`` reported: columns number, step, value
        (NaN where the trial reported NaN), ordered by number and step."""

        def work(session: Session) -> list[Any]:
            sweep_row = SweepModel.find_or_raise_by_name(session, sweep, self.url_display)
            stmt = (
                select(TrialModel.number, TrialValueModel.step, TrialValueModel.value)
                .join(TrialModel, TrialValueModel.trial_id == TrialModel.id)
                .where(TrialModel.sweep_id == sweep_row.id)
                .order_by(TrialModel.number, TrialValueModel.step)
            )
            return list(session.execute(stmt).all())

        return value_frame(self._run(work))

    # -- the front's model files, timed again ------------------------------------------------

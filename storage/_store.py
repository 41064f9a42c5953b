"""The :class:`Store`: the single entry point to the sweep database."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, TypeVar

import pandas as pd
from sqlalchemy import ColumnElement, delete, func, select
from sqlalchemy.exc import DBAPIError, IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from storage import _artifacts, _json
from storage._engine import (
    WRITE_OPTIONS,
    build_engine,
    is_disk_full,
    mask_url,
    migrate,
    open_error,
    parse_url,
    scrub,
    with_retry,
)
from storage._errors import (
    DuplicateSweepError,
    StorageError,
    StorageFullError,
    SweepNotFoundError,
)
from storage._foreign import check_server, check_sqlite
from storage._frames import layer_frame, plain_frame, trial_frame, trial_select, value_frame
from storage._front import (
    collection_paused,
    frame_rows,
    front_ids,
    layer_summary,
    near_front_numbers,
)
from storage._models import (
    MAX_SWEEP_NAME_LENGTH,
    METRIC_COLUMNS,
    SWEEP_STATUSES,
    TRIAL_STATES,
    SweepModel,
    SweepStatus,
    TrialLayerModel,
    TrialModel,
    TrialState,
    TrialValueModel,
)
from storage._ownership import Driver, check_owner, refuse_if_alive, take
from storage._pareto import validate_objectives
from storage._queries import sweep_info, trial_counts, write_trials
from storage._records import FEASIBLE_KEY, SweepInfo, TrialRecord, trial_rows
from storage._where import parse_where

T = TypeVar("T")


def _feasible(sweep_row: SweepModel, wanted: bool) -> list[ColumnElement[bool]]:
    """The sweep's own feasibility terms (its config's :data:`FEASIBLE_KEY`), if wanted."""
    terms = _json.loads(sweep_row.config).get(FEASIBLE_KEY) if wanted else None
    return parse_where(terms) if terms else []


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise StorageError(f"sweep names must be non-empty strings, got {name!r}")
    if len(name) > MAX_SWEEP_NAME_LENGTH:
        raise StorageError(f"sweep name is longer than {MAX_SWEEP_NAME_LENGTH} characters")
    return name


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


class Store:
    """Sweep database on SQLite (``sqlite:///sweeps.db``) or PostgreSQL
    (``postgresql+psycopg://user:password@host/db``).

    Opening a store migrates the database to the newest schema. Transient errors (a locked
    SQLite file, a dropped connection) are retried a few times; everything else surfaces as
    :class:`StorageError` with a one-line message. Only the sweep driver should write.
    """

    url_display: str
    """The database URL with any password masked; safe to print."""

    def __init__(self, url: str, *, create: bool = True) -> None:
        """``create=False``: refuse a path or database that holds no store yet (read-only
        commands). Either way, a database that holds something else is refused untouched."""
        self._url = parse_url(url)
        self.url_display = mask_url(self._url)
        self._drivers: dict[str, Driver] = {}  # sweeps this store writes for their driver
        if self._url.get_backend_name() == "sqlite":
            check_sqlite(self._url.database, create=create)
        self._engine = build_engine(self._url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            self._engine.execution_options(**WRITE_OPTIONS), expire_on_commit=False
        )
        try:
            if self._url.get_backend_name() != "sqlite":
                check_server(self._engine, self.url_display, create=create)
            with_retry(lambda: migrate(self._engine, self.url_display))
        except DBAPIError as exc:
            self._engine.dispose()
            raise open_error(self._url, exc) from exc
        except BaseException:
            self._engine.dispose()
            raise

    def __repr__(self) -> str:
        return f"Store({self.url_display!r})"

    def __enter__(self) -> Store:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close every pooled connection; the store must not be used afterwards."""
        self._engine.dispose()

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """One transaction: commit when the block succeeds, roll back when it raises.

        ``write`` transactions take SQLite's write lock when they begin (``BEGIN IMMEDIATE``):
        concurrent writers then wait their turn (busy timeout) instead of failing to upgrade
        a read snapshot.
        """
        session = (self._write_sessions if write else self._sessions)()
        try:
            yield session
            session.commit()
        except BaseException:
            session.rollback()
            raise
        finally:
            session.close()

    def _run(self, work: Callable[[Session], T], *, write: bool = False) -> T:
        """Run ``work`` in one transaction, retrying transient errors (a locked SQLite file, a
        dropped connection) with backoff; wrap database errors in one-line StorageErrors."""

        def attempt() -> T:
            with self._session(write=write) as session:
                return work(session)

        try:
            return with_retry(attempt)
        except SQLAlchemyError as exc:
            reason = exc.orig if isinstance(exc, DBAPIError) and exc.orig is not None else exc
            if is_disk_full(reason):
                raise StorageFullError(
                    f"cannot write to {self.url_display}: the disk is full or the file reached "
                    f"its size limit ({scrub(str(reason), self._url)}); free disk space, then "
                    "run the command again (what was stored before is intact)"
                ) from exc
            raise StorageError(
                f"database error on {self.url_display}: {scrub(str(reason), self._url)}"
            ) from exc

    # -- sweeps -------------------------------------------------------------------------------

    def create_sweep(
        self,
        name: str,
        config: dict[str, Any],
        objectives: dict[str, str],
        *,
        replace: bool = False,
        driver: Driver | None = None,
        stale_after_s: float = 0.0,
    ) -> None:
        """Create sweep ``name`` with status RUNNING.

        Raises :class:`DuplicateSweepError` when it exists, unless ``replace`` is true: then the
        old sweep and all its trials are deleted first, in the same transaction, unless its
        driver is alive (written within ``stale_after_s``: :class:`DriverAliveError`). With a
        ``driver``, the sweep is that driver's, and this store's writes to it are fenced (see
        :mod:`storage._ownership`).
        """
        name = _check_name(name)
        if not isinstance(config, Mapping):
            raise StorageError(f"sweep config must be a dict, got {type(config).__name__}")
        config_json = _json.dumps(dict(config), f"config of sweep {name!r}")
        objectives_json = _json.dumps(validate_objectives(objectives), "objectives")

        def work(session: Session) -> None:
            existing = SweepModel.find_by_name(session, name, for_update=True)
            now = _now()
            if existing is not None:
                if not replace:
                    raise DuplicateSweepError(name, self.url_display)
                refuse_if_alive(existing, stale_after_s, now, "replace")
                session.execute(delete(SweepModel).where(SweepModel.id == existing.id))
            row = SweepModel(
                name=name,
                config=config_json,
                objectives=objectives_json,
                status=SweepStatus.RUNNING,
                created_at=now,
                updated_at=now,
            )
            if driver is not None:
                take(row, driver)
            session.add(row)
            try:
                session.flush()
            except IntegrityError as exc:
                raise DuplicateSweepError(name, self.url_display) from exc

        self._run(work, write=True)
        if driver is not None:
            self._drivers[name] = driver

    def claim_sweep(self, name: str, driver: Driver, *, stale_after_s: float) -> None:
        """Make ``driver`` the owner of sweep ``name`` and set it RUNNING, unless its driver is
        alive (:class:`DriverAliveError`); the previous owner is fenced from then on."""

        def work(session: Session) -> None:
            row = SweepModel.find_by_name(session, name, for_update=True)
            if row is None:
                raise SweepNotFoundError(name, self.url_display)
            now = _now()
            refuse_if_alive(row, stale_after_s, now, "resume")
            take(row, driver)
            row.status = SweepStatus.RUNNING
            row.updated_at = now

        self._run(work, write=True)
        self._drivers[name] = driver

    def check_driver(self, name: str, *, stale_after_s: float, action: str) -> None:
        """Raise :class:`DriverAliveError` when sweep ``name`` exists and its driver is alive: a
        cheap early check before starting anything (``claim_sweep`` checks again, atomically)."""

        def work(session: Session) -> None:
            row = SweepModel.find_by_name(session, name)
            if row is not None:
                refuse_if_alive(row, stale_after_s, _now(), action)

        self._run(work)

    def _writable(self, session: Session, name: str) -> SweepModel:
        """Sweep ``name``'s row for a write: locked, and still this store's driver's if it has
        one (:class:`FencedError` otherwise, and nothing is written)."""
        driver = self._drivers.get(name)
        if driver is None:
            return SweepModel.find_or_raise_by_name(session, name, self.url_display)
        return check_owner(SweepModel.find_by_name(session, name, for_update=True), name, driver)

    def get_sweep(self, name: str) -> SweepInfo:
        """Return sweep ``name``; raises :class:`SweepNotFoundError` when it does not exist."""

        def work(session: Session) -> SweepInfo:
            sweep = SweepModel.find_or_raise_by_name(session, name, self.url_display)
            return sweep_info(sweep, trial_counts(session, sweep.id).get(sweep.id, {}))

        return self._run(work)

    def list_sweeps(self) -> list[SweepInfo]:
        """Every sweep in the database, oldest first."""

        def work(session: Session) -> list[SweepInfo]:
            sweeps = session.scalars(
                select(SweepModel).order_by(SweepModel.created_at, SweepModel.id)
            ).all()
            counts = trial_counts(session, None)
            return [sweep_info(sweep, counts.get(sweep.id, {})) for sweep in sweeps]

        return self._run(work)

    def update_sweep_config(self, name: str, updates: Mapping[str, Any]) -> None:
        """Set top-level keys of sweep ``name``'s stored config (others are kept), e.g. what a
        running sweep learns about its cluster; read-modify-write in one transaction."""
        if not isinstance(updates, Mapping):
            raise StorageError(f"config updates must be a dict, got {type(updates).__name__}")

        def work(session: Session) -> None:
            sweep = self._writable(session, name)
            merged = {**_json.loads(sweep.config), **updates}
            sweep.config = _json.dumps(merged, f"config of sweep {name!r}")
            sweep.updated_at = _now()

        self._run(work, write=True)

    def set_sweep_status(self, name: str, status: str) -> None:
        """Set the status of sweep ``name`` (RUNNING, FINISHED, INTERRUPTED or FAILED)."""
        if status not in SWEEP_STATUSES:
            raise StorageError(
                f"unknown sweep status {status!r}; use one of {', '.join(SWEEP_STATUSES)}"
            )

        def work(session: Session) -> None:
            sweep = self._writable(session, name)
            sweep.status = SweepStatus[status]
            sweep.updated_at = _now()

        self._run(work, write=True)

    # -- trials -------------------------------------------------------------------------------

    def record_trials(self, sweep: str, records: Sequence[TrialRecord]) -> None:
        """Insert or update trials of ``sweep`` by number, all in one transaction.

        A record is the trial's complete current state: new numbers are inserted, existing
        RUNNING trials are overwritten (metrics, timings, layers and intermediate values are
        replaced). Recording a trial that already finished raises :class:`StorageError`.
        """
        converted = [trial_rows(sweep, record) for record in records]
        numbers = [rows.number for rows in converted]
        if len(set(numbers)) != len(numbers):
            repeated = sorted({number for number in numbers if numbers.count(number) > 1})
            raise StorageError(
                f"trial number(s) {', '.join(map(str, repeated))} appear more than once in one "
                f"record_trials call for sweep {sweep!r}"
            )

        def work(session: Session) -> None:
            sweep_row = self._writable(session, sweep)
            if converted:
                write_trials(session, sweep_row, converted)
                sweep_row.updated_at = _now()

        self._run(work, write=True)

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
            stmt = trial_select().where(*filters.clauses(sweep_row.id)).order_by(number)
            if limit is not None or offset:
                stmt = stmt.limit(limit).offset(offset)
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

    def save_artifacts(self, sweep: str, runtime: str, files: Mapping[int, bytes]) -> None:
        """Keep the model files (trial number -> ``runtime``'s file) of COMPLETE trials."""

        def work(session: Session) -> None:
            sweep_row = self._writable(session, sweep)
            _artifacts.save_artifacts(session, sweep_row, runtime, files)

        self._run(work, write=True)

    def artifacts(
        self, sweep: str, numbers: Sequence[int] | None = None
    ) -> dict[int, tuple[str, bytes]]:
        """Trial number -> (runtime, model file) kept for ``sweep`` (of ``numbers``, else all)."""

        def work(session: Session) -> dict[int, tuple[str, bytes]]:
            sweep_row = SweepModel.find_or_raise_by_name(session, sweep, self.url_display)
            return _artifacts.load_artifacts(session, sweep_row, numbers)

        return self._run(work)

    def record_remeasured(
        self,
        sweep: str,
        metrics: Mapping[int, Mapping[str, float]],
        *,
        measured_on: str | None = None,
        latency_node: str | None = None,
    ) -> None:
        """Overwrite the latency figures of COMPLETE trials (number -> metrics) with those of
        timing them again, and where that ran, in one transaction."""

        def work(session: Session) -> None:
            sweep_row = self._writable(session, sweep)
            _artifacts.record_remeasured(session, sweep_row, metrics, measured_on, latency_node)
            sweep_row.updated_at = _now()

        self._run(work, write=True)

"""The :class:`Store`: the single entry point to the sweep database."""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from datetime import datetime, timezone
from types import TracebackType
from typing import Any, TypeVar

from sqlalchemy import delete, select
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
from storage._models import (
    MAX_SWEEP_NAME_LENGTH,
    SWEEP_STATUSES,
    SweepModel,
    SweepStatus,
)
from storage._ownership import Driver, check_owner, refuse_if_alive, take
from storage._pareto import validate_objectives
from storage._queries import sweep_info, trial_counts, write_trials
from storage._reads import TrialReads
from storage._records import SweepInfo, TrialRecord, trial_rows

T = TypeVar("T")


def _now() -> datetime:
    return datetime.now(timezone.utc)


def _check_name(name: object) -> str:
    if not isinstance(name, str) or not name.strip():
        raise StorageError(f"sweep names must be non-empty strings, got {name!r}")
    if len(name) > MAX_SWEEP_NAME_LENGTH:
        raise StorageError(f"sweep name is longer than {MAX_SWEEP_NAME_LENGTH} characters")
    return name


class Store(TrialReads):
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

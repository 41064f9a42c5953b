"""Statements the :class:`~storage.Store` runs inside its transactions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from operator import itemgetter
from typing import Any, Final

from sqlalchemy import Table, delete, func, insert, select, update
from sqlalchemy.exc import DBAPIError
from sqlalchemy.orm import Session

from storage import _json
from storage._errors import StorageError
from storage._models import (
    BaseModel,
    SweepModel,
    TrialDetailModel,
    TrialLayerModel,
    TrialModel,
    TrialState,
    TrialValueModel,
)
from storage._ownership import gone_here
from storage._records import SweepInfo, TrialRows

CHUNK: Final = 500  # ids per IN (...) list, well below every backend's parameter limit


def _table(model: type[BaseModel]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)
    return table


_TRIALS: Final = _table(TrialModel)
_DETAILS: Final = _table(TrialDetailModel)
_LAYERS: Final = _table(TrialLayerModel)
_VALUES: Final = _table(TrialValueModel)


def chunks(values: Sequence[int]) -> Iterator[list[int]]:
    """Split ids into lists short enough for one ``IN (...)``."""
    for start in range(0, len(values), CHUNK):
        yield list(values[start : start + CHUNK])


def trial_counts(session: Session, sweep_id: int | None) -> dict[int, dict[TrialState, int]]:
    """Number of trials per sweep id and state (of one sweep, or of all when ``None``)."""
    stmt = select(TrialModel.sweep_id, TrialModel.state, func.count()).group_by(
        TrialModel.sweep_id, TrialModel.state
    )
    if sweep_id is not None:
        stmt = stmt.where(TrialModel.sweep_id == sweep_id)
    counts: dict[int, dict[TrialState, int]] = {}
    for row_sweep_id, state, count in session.execute(stmt):
        counts.setdefault(row_sweep_id, {})[state] = count
    return counts


def sweep_info(sweep: SweepModel, counts: Mapping[TrialState, int]) -> SweepInfo:
    """The public view of a sweep row; every state appears in ``counts``."""
    return SweepInfo(
        name=sweep.name,
        status=sweep.status.name,
        objectives=_json.loads(sweep.objectives),
        config=_json.loads(sweep.config),
        created_at=sweep.created_at,
        updated_at=sweep.updated_at,
        counts={state.name: counts.get(state, 0) for state in TrialState},
        driver_gone=gone_here(sweep),
    )


def bulk_insert(session: Session, table: Table, rows: list[dict[str, Any]]) -> None:
    """Insert ``rows`` into ``table`` in the session's transaction, as fast as the backend can:
    ``COPY ... FROM STDIN`` on PostgreSQL (psycopg), one executemany elsewhere."""
    if not rows:
        return
    connection = session.connection()
    if connection.dialect.name != "postgresql":
        connection.execute(insert(table), rows)
        return
    columns = list(rows[0])
    names = ", ".join(connection.dialect.identifier_preparer.quote(name) for name in columns)
    driver = connection.connection.driver_connection
    assert driver is not None
    values = itemgetter(*columns) if len(columns) > 1 else lambda row: (row[columns[0]],)
    statement = f"COPY {table.name} ({names}) FROM STDIN"
    dbapi = connection.dialect.loaded_dbapi
    try:
        with driver.cursor() as cursor, cursor.copy(statement) as copy:
            for row in rows:
                copy.write_row(values(row))
    except dbapi.Error as exc:
        # Wrapped as SQLAlchemy wraps its own statements, so that transient errors (a lock
        # timeout, a lost connection) are retried and the rest become StorageErrors.
        lost = connection.dialect.is_disconnect(exc, driver, None)
        if lost:
            connection.invalidate(exc)
        raise DBAPIError.instance(
            statement,
            None,
            exc,
            dbapi.Error,
            connection_invalidated=lost,
            dialect=connection.dialect,
        ) from exc


def _insert_trials(session: Session, rows: list[dict[str, Any]]) -> list[int]:
    """Insert ``trials`` rows; return their ids in order. On PostgreSQL the ids are taken from
    the table's sequence first, so that the rows can go in through COPY like the others."""
    trials = _TRIALS
    if session.connection().dialect.name != "postgresql":
        result = session.execute(
            insert(trials).returning(trials.c.id, sort_by_parameter_order=True), rows
        )
        return list(result.scalars())
    sequence = func.pg_get_serial_sequence(trials.name, trials.c.id.name)
    ids = list(
        session.scalars(
            select(func.nextval(sequence)).select_from(func.generate_series(1, len(rows)))
        )
    )
    for row, trial_id in zip(rows, ids, strict=True):
        row["id"] = trial_id
        row["state"] = row["state"].name  # COPY bypasses SQLAlchemy's Enum conversion
    bulk_insert(session, trials, rows)
    return ids


def write_trials(session: Session, sweep: SweepModel, converted: list[TrialRows]) -> None:
    """Upsert trials by number with bulk statements: one UPDATE executemany each for existing
    RUNNING trials and their details (their layers and intermediate values are deleted and
    rewritten), one bulk insert of new trials (INSERT ... RETURNING, or COPY with ids from the
    sequence on PostgreSQL), then one bulk insert each for new details, layers and values.
    """
    existing = TrialModel.find_by_numbers(session, sweep.id, [r.number for r in converted])
    finished = sorted(n for n, (_, state) in existing.items() if state != TrialState.RUNNING)
    if finished:
        raise StorageError(
            f"trial(s) {', '.join(map(str, finished))} of sweep {sweep.name!r} already "
            "finished; only RUNNING trials can be updated"
        )
    ids = {number: trial_id for number, (trial_id, _) in existing.items()}
    updated = [r for r in converted if r.number in ids]
    created = [r for r in converted if r.number not in ids]
    if updated:
        session.execute(update(TrialModel), [{"id": ids[r.number], **r.trial} for r in updated])
        session.execute(
            update(TrialDetailModel),
            [{"trial_id": ids[r.number], **r.details} for r in updated],
        )
        for chunk in chunks([ids[r.number] for r in updated]):
            session.execute(delete(TrialLayerModel).where(TrialLayerModel.trial_id.in_(chunk)))
            session.execute(delete(TrialValueModel).where(TrialValueModel.trial_id.in_(chunk)))
    if created:
        new_ids = _insert_trials(session, [{"sweep_id": sweep.id, **r.trial} for r in created])
        ids.update({r.number: trial_id for r, trial_id in zip(created, new_ids, strict=True)})
        details = [{"trial_id": ids[r.number], **r.details} for r in created]
        bulk_insert(session, _DETAILS, details)
    layers = [{"trial_id": ids[r.number], **layer} for r in converted for layer in r.layers]
    bulk_insert(session, _LAYERS, layers)
    values = [{"trial_id": ids[r.number], **value} for r in converted for value in r.values]
    bulk_insert(session, _VALUES, values)

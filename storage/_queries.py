"""Statements the :class:`~storage.Store` runs inside its transactions."""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from typing import Final

from sqlalchemy import delete, func, insert, select, update
from sqlalchemy.orm import Session

from storage import _json
from storage._errors import StorageError
from storage._models import SweepModel, TrialLayerModel, TrialModel, TrialState, TrialValueModel
from storage._records import SweepInfo, TrialRows

CHUNK: Final = 500  # ids per IN (...) list, well below every backend's parameter limit


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
    )


def write_trials(session: Session, sweep: SweepModel, converted: list[TrialRows]) -> None:
    """Upsert trials by number with bulk statements: one UPDATE executemany for existing
    RUNNING trials (whose layers and intermediate values are deleted and rewritten), one
    INSERT ... RETURNING for new ones, then one bulk INSERT each for layers and values.
    """
    existing = TrialModel.find_by_numbers(session, sweep.id, [r.number for r in converted])
    finished = sorted(n for n, (_, state) in existing.items() if state != TrialState.RUNNING)
    if finished:
        raise StorageError(
            f"trial(s) {', '.join(map(str, finished))} of sweep {sweep.name!r} already "
            "finished; only RUNNING trials can be updated"
        )
    ids = {number: trial_id for number, (trial_id, _) in existing.items()}
    updates = [{"id": ids[r.number], **r.trial} for r in converted if r.number in ids]
    inserts = [{"sweep_id": sweep.id, **r.trial} for r in converted if r.number not in ids]
    if updates:
        session.execute(update(TrialModel), updates)
        for chunk in chunks([row["id"] for row in updates]):
            session.execute(delete(TrialLayerModel).where(TrialLayerModel.trial_id.in_(chunk)))
            session.execute(delete(TrialValueModel).where(TrialValueModel.trial_id.in_(chunk)))
    if inserts:
        result = session.execute(
            insert(TrialModel).returning(TrialModel.number, TrialModel.id), inserts
        )
        ids.update({number: trial_id for number, trial_id in result})
    layers = [{"trial_id": ids[r.number], **layer} for r in converted for layer in r.layers]
    if layers:
        session.execute(insert(TrialLayerModel), layers)
    values = [{"trial_id": ids[r.number], **value} for r in converted for value in r.values]
    if values:
        session.execute(insert(TrialValueModel), values)

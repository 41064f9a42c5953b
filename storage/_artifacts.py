"""The front's model files, and the figures of timing them again (revision 0006).

Functions of a session, called by :class:`storage.Store` inside its retried transactions.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from sqlalchemy import delete, insert, select, update
from sqlalchemy.orm import Session

from storage import _json
from storage._errors import StorageError
from storage._models import (
    METRIC_COLUMNS,
    SweepModel,
    TrialArtifactModel,
    TrialDetailModel,
    TrialModel,
    TrialState,
)
from storage._records import _column_value, _number


def _trial_ids(
    session: Session, sweep: SweepModel, numbers: Sequence[int], what: str
) -> dict[int, int]:
    """Trial number -> id of the COMPLETE trials ``numbers`` of ``sweep``; any other is an error."""
    found = TrialModel.find_by_numbers(session, sweep.id, list(numbers))
    wrong = sorted(n for n in numbers if n not in found or found[n][1] is not TrialState.COMPLETE)
    if wrong:
        raise StorageError(
            f"{what}: sweep {sweep.name!r} has no COMPLETE trial(s) {', '.join(map(str, wrong))}"
        )
    return {number: found[number][0] for number in numbers}


def save_artifacts(
    session: Session, sweep: SweepModel, runtime: str, files: Mapping[int, bytes]
) -> None:
    """Keep the model files of trials (by number), replacing any kept before."""
    for number, data in files.items():
        if not isinstance(data, bytes) or not data:
            raise StorageError(f"trial {number}: a model file must be non-empty bytes")
    ids = _trial_ids(session, sweep, list(files), "model files")
    if not ids:
        return
    kept = TrialArtifactModel.trial_id.in_(list(ids.values()))
    session.execute(delete(TrialArtifactModel).where(kept))
    session.execute(
        insert(TrialArtifactModel),
        [{"trial_id": ids[n], "runtime": runtime, "data": data} for n, data in files.items()],
    )


def load_artifacts(
    session: Session, sweep: SweepModel, numbers: Sequence[int] | None
) -> dict[int, tuple[str, bytes]]:
    """Trial number -> (runtime, model file) of the kept files (of ``numbers``, else all)."""
    stmt = (
        select(TrialModel.number, TrialArtifactModel.runtime, TrialArtifactModel.data)
        .join(TrialModel, TrialArtifactModel.trial_id == TrialModel.id)
        .where(TrialModel.sweep_id == sweep.id)
    )
    if numbers is not None:
        stmt = stmt.where(TrialModel.number.in_(list(numbers)))
    return {number: (runtime, data) for number, runtime, data in session.execute(stmt)}


def record_remeasured(
    session: Session,
    sweep: SweepModel,
    metrics: Mapping[int, Mapping[str, float]],
    measured_on: str | None,
    latency_node: str | None,
) -> None:
    """Overwrite the latency figures of COMPLETE trials with those of timing them again: the
    metric columns named in ``metrics``, the same keys of the trial's metrics document, and
    where the timing ran."""
    ids = _trial_ids(session, sweep, list(metrics), "remeasured trials")
    for number, values in metrics.items():
        what = f"trial {number} of sweep {sweep.name!r}"
        checked = {name: _number(value, f"{what}: {name}") for name, value in values.items()}
        columns = {
            name: _column_value(name, value, f"{what}: {name}")
            for name, value in checked.items()
            if name in METRIC_COLUMNS
        }
        where = {"measured_on": measured_on, "latency_node": latency_node}
        session.execute(
            update(TrialModel)
            .where(TrialModel.id == ids[number])
            .values(**columns, **{k: v for k, v in where.items() if v is not None})
        )
        document = session.execute(
            select(TrialDetailModel.metrics).where(TrialDetailModel.trial_id == ids[number])
        ).scalar_one()
        merged = {**_json.loads(document), **checked}
        session.execute(
            update(TrialDetailModel)
            .where(TrialDetailModel.trial_id == ids[number])
            .values(metrics=_json.dumps(merged, f"{what}: metrics"))
        )

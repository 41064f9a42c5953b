"""SQLAlchemy models of the sweep store: one class per table.

The metric columns of ``trials`` are declared once, here, with ``info={"metric": True}``;
:data:`METRIC_COLUMNS` is derived from that declaration and everything else (``--where``
parsing, Pareto objectives, trial recording, data frames) derives from :data:`METRIC_COLUMNS`.
Changing the schema requires a new Alembic revision in ``storage/migrations/versions``.
"""

from __future__ import annotations

import enum
from collections.abc import Sequence
from datetime import datetime
from typing import Any, Final

from sqlalchemy import (
    BigInteger,
    Enum,
    Float,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Text,
    UniqueConstraint,
    select,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, MappedColumn, Session, mapped_column
from sqlalchemy.types import TypeEngine

from storage._errors import SweepNotFoundError
from storage._types import UTCDateTime

MAX_SWEEP_NAME_LENGTH: Final = 200
MAX_LAYER_NAME_LENGTH: Final = 500

NAMING_CONVENTION: Final = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class SweepStatus(enum.Enum):
    """Lifecycle of a sweep."""

    RUNNING = "RUNNING"
    FINISHED = "FINISHED"
    INTERRUPTED = "INTERRUPTED"
    FAILED = "FAILED"


class TrialState(enum.Enum):
    """Lifecycle of a trial (mirrors the Optuna states the driver uses)."""

    RUNNING = "RUNNING"
    COMPLETE = "COMPLETE"
    PRUNED = "PRUNED"
    FAIL = "FAIL"


def _enum_type(enum_class: type[enum.Enum], name: str) -> Enum:
    # VARCHAR + CHECK constraint rather than a native PostgreSQL ENUM type: portable, and adding
    # a state later does not need ALTER TYPE outside a transaction.
    return Enum(
        enum_class,
        name=name,
        native_enum=False,
        create_constraint=True,
        length=16,
        validate_strings=True,
    )


def _metric(type_: TypeEngine[Any]) -> MappedColumn[Any]:
    return mapped_column(type_, nullable=True, info={"metric": True})


class BaseModel(DeclarativeBase):
    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class SweepModel(BaseModel):
    __tablename__ = "sweeps"

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    name: Mapped[str] = mapped_column(String(MAX_SWEEP_NAME_LENGTH), nullable=False, unique=True)
    config: Mapped[str] = mapped_column(Text, nullable=False)
    objectives: Mapped[str] = mapped_column(Text, nullable=False)
    status: Mapped[SweepStatus] = mapped_column(
        _enum_type(SweepStatus, "sweep_status"), nullable=False
    )
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # The driver's heartbeat: every driver write sets it.
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), nullable=False)
    # The driver that owns the sweep (a random run id) and where it runs; see Store.claim_sweep.
    driver_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    driver_host: Mapped[str | None] = mapped_column(String(255), nullable=True)
    driver_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)

    @classmethod
    def find_by_name(
        cls, session: Session, name: str, *, for_update: bool = False
    ) -> SweepModel | None:
        """``for_update``: lock the row until the transaction ends (PostgreSQL; SQLite's write
        transactions hold the whole database already)."""
        stmt = select(cls).where(cls.name == name)
        return session.scalars(stmt.with_for_update() if for_update else stmt).one_or_none()

    @classmethod
    def find_or_raise_by_name(cls, session: Session, name: str, url: str) -> SweepModel:
        sweep = cls.find_by_name(session, name)
        if sweep is None:
            raise SweepNotFoundError(name, url)
        return sweep


class TrialModel(BaseModel):
    __tablename__ = "trials"
    __table_args__ = (
        UniqueConstraint("sweep_id", "number"),
        Index(None, "sweep_id", "state"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sweep_id: Mapped[int] = mapped_column(
        ForeignKey("sweeps.id", ondelete="CASCADE"), nullable=False
    )
    number: Mapped[int] = mapped_column(Integer, nullable=False)
    state: Mapped[TrialState] = mapped_column(_enum_type(TrialState, "trial_state"), nullable=False)
    order: Mapped[str | None] = mapped_column(String(64), nullable=True)
    granularity: Mapped[str | None] = mapped_column(String(64), nullable=True)

    # Metric columns: declaration order is the order of METRIC_COLUMNS.
    accuracy: Mapped[float | None] = _metric(Float())
    fp32_accuracy: Mapped[float | None] = _metric(Float())
    accuracy_drop: Mapped[float | None] = _metric(Float())
    size_bytes: Mapped[int | None] = _metric(BigInteger())
    compressed_bytes: Mapped[int | None] = _metric(BigInteger())
    fp32_size_bytes: Mapped[int | None] = _metric(BigInteger())
    fp32_compressed_bytes: Mapped[int | None] = _metric(BigInteger())
    latency_ms: Mapped[float | None] = _metric(Float())
    fp32_latency_ms: Mapped[float | None] = _metric(Float())
    speedup: Mapped[float | None] = _metric(Float())
    sparsity: Mapped[float | None] = _metric(Float())
    params: Mapped[int | None] = _metric(BigInteger())
    nonzero_params: Mapped[int | None] = _metric(BigInteger())
    fp32_params: Mapped[int | None] = _metric(BigInteger())
    macs: Mapped[int | None] = _metric(BigInteger())

    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    duration_s: Mapped[float | None] = mapped_column(Float(), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    attempt: Mapped[int] = mapped_column(Integer, nullable=False, default=1, server_default="1")
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Added by revision 0003, so last in the table. Where latency was measured: the hardware
    # class (latencies compare only within one) and the node.
    measured_on: Mapped[str | None] = mapped_column(String(255), nullable=True)
    latency_node: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Added by revision 0004: the two parts of ``sparsity`` (weights removed by structured
    # pruning, weights zeroed), as fractions of the original model's prunable weights.
    zero_fraction: Mapped[float | None] = _metric(Float())
    removed_fraction: Mapped[float | None] = _metric(Float())
    # Added by revision 0005: duration_s split into the time a trial waited (for a worker, a
    # latency target) and the time it ran on workers.
    queued_s: Mapped[float | None] = mapped_column(Float(), nullable=True)
    run_s: Mapped[float | None] = mapped_column(Float(), nullable=True)
    # Added by revision 0006: the speedup's 95% interval and the rounds it took, once the trial
    # was timed again against the fp32 reference (the front at the end of a sweep, `sweep
    # remeasure`); NULL for a trial timed only once.
    speedup_low: Mapped[float | None] = _metric(Float())
    speedup_high: Mapped[float | None] = _metric(Float())
    latency_rounds: Mapped[int | None] = _metric(Integer())

    @classmethod
    def find_by_numbers(
        cls, session: Session, sweep_id: int, numbers: Sequence[int]
    ) -> dict[int, tuple[int, TrialState]]:
        """Map trial number to ``(id, state)`` for the given numbers that already exist."""
        found: dict[int, tuple[int, TrialState]] = {}
        for start in range(0, len(numbers), 500):
            chunk = list(numbers[start : start + 500])
            rows = session.execute(
                select(cls.number, cls.id, cls.state).where(
                    cls.sweep_id == sweep_id, cls.number.in_(chunk)
                )
            )
            for number, trial_id, state in rows:
                found[number] = (trial_id, state)
        return found


class TrialDetailModel(BaseModel):
    """The JSON documents of a trial (recipe, all metrics, timings), one row per trial.

    Kept apart from ``trials`` so that ``trials`` rows stay narrow: a Pareto query scans the
    metric columns of every trial but needs the documents of the front only.
    """

    __tablename__ = "trial_details"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    recipe: Mapped[str] = mapped_column(Text, nullable=False)
    metrics: Mapped[str] = mapped_column(Text, nullable=False)
    timings: Mapped[str] = mapped_column(Text, nullable=False)


class TrialLayerModel(BaseModel):
    __tablename__ = "trial_layers"
    __table_args__ = (UniqueConstraint("trial_id", "layer"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), nullable=False
    )
    layer: Mapped[str] = mapped_column(String(MAX_LAYER_NAME_LENGTH), nullable=False, index=True)
    amount: Mapped[float] = mapped_column(Float(), nullable=False)
    method: Mapped[str] = mapped_column(String(64), nullable=False)
    granularity: Mapped[str | None] = mapped_column(String(64), nullable=True)


class TrialValueModel(BaseModel):
    """Intermediate values a trial reported (step -> value); NaN is stored as NULL."""

    __tablename__ = "trial_values"
    __table_args__ = (UniqueConstraint("trial_id", "step"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), nullable=False
    )
    step: Mapped[int] = mapped_column(Integer, nullable=False)
    value: Mapped[float | None] = mapped_column(Float(), nullable=True)


class TrialArtifactModel(BaseModel):
    """The deployable model file of a trial (an ``.onnx`` for onnxruntime), kept for the trials
    on a sweep's front so that they can be timed again (`sweep remeasure`) without training
    them again. One row per trial; added by revision 0006."""

    __tablename__ = "trial_artifacts"

    trial_id: Mapped[int] = mapped_column(
        ForeignKey("trials.id", ondelete="CASCADE"), primary_key=True, autoincrement=False
    )
    runtime: Mapped[str] = mapped_column(String(64), nullable=False)
    data: Mapped[bytes] = mapped_column(LargeBinary(), nullable=False)


METRIC_COLUMNS: Final[tuple[str, ...]] = tuple(
    column.name for column in TrialModel.__table__.columns if column.info.get("metric")
)
"""Names of the metric columns of ``trials``, in table order."""

INTEGER_METRICS: Final[frozenset[str]] = frozenset(
    name for name in METRIC_COLUMNS if isinstance(TrialModel.__table__.c[name].type, Integer)
)
"""The metric columns that hold integers (byte sizes, parameter and MAC counts)."""

TRIAL_STATES: Final[tuple[str, ...]] = tuple(state.name for state in TrialState)
SWEEP_STATUSES: Final[tuple[str, ...]] = tuple(status.name for status in SweepStatus)

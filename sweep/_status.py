"""A sweep's progress in one record: what `sweep launch` shows in its bar and `sweep status`
lists, whether the counts come from the running driver or from the store."""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

import pandas as pd

from storage import Store, SweepInfo, driver_alive
from sweep._config import ConfigError

# A running driver writes its sweep's row at least this often (results, else a heartbeat);
# SWEEP_HEARTBEAT_S overrides it (every driver and reader of one store must agree).
HEARTBEAT_S = 10.0
# A RUNNING sweep not written for this many heartbeats has lost its driver (killed, stopped, or
# its machine gone): shown as STALE, and `sweep resume` or `launch --replace` may take it over.
STALE_HEARTBEATS = 6
STALE_AFTER_S = STALE_HEARTBEATS * HEARTBEAT_S
STALE = "STALE"


def heartbeat_s() -> float:
    """The heartbeat: ``SWEEP_HEARTBEAT_S`` if set, else :data:`HEARTBEAT_S`."""
    raw = os.environ.get("SWEEP_HEARTBEAT_S")
    if raw is None:
        return HEARTBEAT_S
    try:
        value = float(raw)
    except ValueError:
        value = math.nan
    if not math.isfinite(value) or value <= 0:
        raise ConfigError(f"SWEEP_HEARTBEAT_S: {raw!r} is not a number of seconds above 0")
    return value


def stale_after_s() -> float:
    """How long a RUNNING sweep's row may go unwritten before it is STALE."""
    return STALE_HEARTBEATS * heartbeat_s()


# Columns of `sweep status --format table`; csv and json hold every field.
TABLE_COLUMNS = (
    "name",
    "status",
    "done",
    "running",
    "failed",
    "pruned",
    "front",
    "best",
    "elapsed",
    "remaining",
)


@dataclass(frozen=True)
class SweepProgress:
    """Where a sweep stands. ``remaining_s`` is an estimate: the trials left at the average rate
    so far (``None`` until a trial has finished, and once none are left)."""

    name: str
    status: str
    total: int
    done: int
    running: int
    failed: int
    pruned: int
    front_size: int
    best: dict[str, float] = field(default_factory=dict)
    elapsed_s: float = 0.0
    remaining_s: float | None = None


def progress(
    name: str,
    status: str,
    *,
    total: int,
    done: int,
    running: int,
    failed: int,
    pruned: int,
    front_size: int,
    best: Mapping[str, float],
    elapsed_s: float,
    done_before: int = 0,
) -> SweepProgress:
    """The record, with its remaining-time estimate.

    ``done_before``: trials already finished when ``elapsed_s`` started counting (a resumed
    sweep), left out of the rate.
    """
    total = max(total, done)
    running = min(running, total - done)  # the driver's count lags a trial that just finished
    finished_here = done - done_before
    remaining: float | None = None
    if status == "RUNNING" and finished_here > 0 and elapsed_s > 0 and done < total:
        remaining = (total - done) * elapsed_s / finished_here
    return SweepProgress(
        name=name,
        status=status,
        total=total,
        done=done,
        running=running,
        failed=failed,
        pruned=pruned,
        front_size=front_size,
        best=dict(best),
        elapsed_s=max(0.0, elapsed_s),
        remaining_s=remaining,
    )


def best_of(front: pd.DataFrame, objectives: Mapping[str, str]) -> dict[str, float]:
    """The best value of each objective: always on the Pareto front, so the front suffices."""
    best: dict[str, float] = {}
    for name, direction in objectives.items():
        if name in front and front[name].notna().any():
            column = front[name].dropna()
            best[name] = float(column.max() if direction == "max" else column.min())
    return best


def from_store(
    store: Store,
    info: SweepInfo,
    now: datetime | None = None,
    *,
    front: pd.DataFrame | None = None,
) -> SweepProgress:
    """A stored sweep's progress. Elapsed runs from its creation to its last update (to now
    while it is RUNNING). A RUNNING sweep whose driver is not alive (it has not written for
    STALE_AFTER_S, or it ran on this host and its process is gone: ``storage.driver_alive``) is
    STALE, and `sweep resume` finishes it. ``front``: the sweep's Pareto
    front as of ``info``, if the caller has it (it is queried otherwise)."""
    if front is None:
        front = store.pareto_front(info.name)
    counts = info.counts
    now = now or datetime.now(timezone.utc)
    status = info.status
    alive = driver_alive(status, info.updated_at, info.driver_gone, stale_after_s(), now)
    if status == "RUNNING" and not alive:
        status = STALE
    end = now if status == "RUNNING" else info.updated_at
    budget = info.config.get("budget", {}).get("n_trials", 0)
    return progress(
        info.name,
        status,
        total=int(budget or 0),
        done=counts["COMPLETE"] + counts["FAIL"] + counts["PRUNED"],
        running=counts["RUNNING"],
        failed=counts["FAIL"],
        pruned=counts["PRUNED"],
        front_size=len(front),
        best=best_of(front, info.objectives),
        elapsed_s=(_utc(end) - _utc(info.created_at)).total_seconds(),
    )


def _utc(moment: datetime) -> datetime:
    return moment if moment.tzinfo is not None else moment.replace(tzinfo=timezone.utc)


def clock(seconds: float | None) -> str:
    """``h:mm:ss``, or ``-`` for no estimate."""
    if seconds is None or not math.isfinite(seconds):
        return "-"
    whole = round(seconds)
    return f"{whole // 3600}:{whole % 3600 // 60:02d}:{whole % 60:02d}"


def best_text(best: Mapping[str, float], cell: Any) -> str:
    """``accuracy 98.89%, latency_ms 1.018`` with ``cell(name, value)`` formatting each value."""
    return ", ".join(f"{name} {cell(name, value)}" for name, value in best.items())


def bar_detail(state: SweepProgress, cell: Any) -> str:
    """The text beside `sweep launch`'s progress bar."""
    text = (
        f"running {state.running} failed {state.failed} pruned {state.pruned} "
        f"front {state.front_size}"
    )
    if state.best:
        text += f" | best {best_text(state.best, cell)}"
    return text + f" | elapsed {clock(state.elapsed_s)} remaining {clock(state.remaining_s)}"


def frame(states: Sequence[SweepProgress]) -> pd.DataFrame:
    """One row per sweep, for csv and json: every field, ``best_<objective>`` columns, seconds
    as numbers."""
    rows: list[dict[str, Any]] = []
    for state in states:
        rows.append(
            {
                "name": state.name,
                "status": state.status,
                "done": state.done,
                "total": state.total,
                "running": state.running,
                "failed": state.failed,
                "pruned": state.pruned,
                "front": state.front_size,
                **{f"best_{name}": value for name, value in state.best.items()},
                "elapsed_s": round(state.elapsed_s, 1),
                "remaining_s": None if state.remaining_s is None else round(state.remaining_s, 1),
            }
        )
    listing = pd.DataFrame(rows)
    if not rows:
        listing = pd.DataFrame(columns=["name", "status", "done", "total"])
    return listing


def table_frame(states: Sequence[SweepProgress], cell: Any) -> pd.DataFrame:
    """The rows of the table: counts as ``done/total``, times as ``h:mm:ss``."""
    return pd.DataFrame(
        [
            {
                "name": s.name,
                "status": s.status,
                "done": f"{s.done}/{s.total}",
                "running": s.running,
                "failed": s.failed,
                "pruned": s.pruned,
                "front": s.front_size,
                "best": best_text(s.best, cell) or "-",
                "elapsed": clock(s.elapsed_s),
                "remaining": clock(s.remaining_s),
            }
            for s in states
        ],
        columns=list(TABLE_COLUMNS),
    )

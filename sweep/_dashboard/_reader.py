"""The dashboard's access to the store: one reader per app, answers cached per sweep version.

A sweep's version is its row's last write and its trial counts: every trial written changes
one or the other (a result, a heartbeat), so a cached answer is reused exactly while nothing
was written. The expensive reads (a Pareto front over 100,000 trials, a hypervolume curve, a
scan's curves) then run once per change, not once per browser poll.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from datetime import datetime
from typing import Any, TypeVar

import pandas as pd

from storage import Store, SweepInfo

T = TypeVar("T")

# Answers kept at once (each a front, a curve, a heatmap...), the least recently used dropped.
CACHE_ENTRIES = 256
# Metrics a larger value of is better (more accuracy, more speed, more weights gone); every
# other metric column is minimized.
MAXIMIZED = frozenset(
    {
        "accuracy",
        "fp32_accuracy",
        "speedup",
        "speedup_low",
        "speedup_high",
        "sparsity",
        "zero_fraction",
        "removed_fraction",
    }
)


class DashboardError(ValueError):
    """A request asked for something that does not exist or cannot be shown: one line that
    names the parameter and the fix (HTTP 400)."""


def version(info: SweepInfo) -> str:
    """Changes whenever the sweep is written: its row's last write and its trial counts."""
    counts = ",".join(f"{state}={count}" for state, count in sorted(info.counts.items()))
    return f"{info.updated_at.isoformat()}|{counts}"


def direction(metric: str, objectives: Mapping[str, str]) -> str:
    """The sweep's own direction for an objective, else the metric's natural one."""
    return objectives.get(metric) or ("max" if metric in MAXIMIZED else "min")


def plain(value: Any) -> Any:
    """A JSON-ready value: numpy and pandas scalars as Python ones, NaN and NaT as None."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    if isinstance(value, pd.Timestamp | datetime):
        return None if pd.isna(value) else value.isoformat()
    if hasattr(value, "item") and not isinstance(value, str):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NA or value is pd.NaT:
        return None
    return value


def row_dict(row: pd.Series, columns: tuple[str, ...] | None = None) -> dict[str, Any]:
    names = columns if columns is not None else tuple(str(c) for c in row.index)
    return {name: plain(row[name]) for name in names if name in row.index}


class Reader:
    """The store and an LRU cache of answers keyed by (view, sweep, arguments, version)."""

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._cache: OrderedDict[Hashable, Any] = OrderedDict()

    def cached(self, key: Hashable, compute: Callable[[], T]) -> T:
        with self._lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                found: T = self._cache[key]
                return found
        value = compute()  # outside the lock: two polls of different sweeps run side by side
        with self._lock:
            self._cache[key] = value
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return value

    def front(
        self,
        info: SweepInfo,
        objectives: Mapping[str, str] | None = None,
        where: tuple[str, ...] = (),
    ) -> pd.DataFrame:
        """The sweep's Pareto front (its own objectives unless given), feasible trials only."""
        chosen = dict(objectives or info.objectives)
        key = ("front", info.name, tuple(chosen.items()), where, version(info))
        return self.cached(
            key, lambda: self.store.pareto_front(info.name, chosen, where=list(where) or None)
        )

"""The dashboard's access to the store: one reader per app, answers cached per sweep version.

A sweep's version is its row's last write and its trial counts: every trial written changes
one or the other (a result, a heartbeat), so a cached answer is reused exactly while nothing
was written. The expensive reads (a Pareto front over 100,000 trials, a hypervolume curve, a
scan's curves) then run once per change, not once per browser poll.
"""

from __future__ import annotations

import logging
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import pandas as pd

from storage import StorageError, Store, SweepInfo
from sweep import _output

T = TypeVar("T")
log = logging.getLogger("sweep.dashboard")

# Answers kept at once (each a front, a curve, a heatmap...; a front of hundreds of trials of
# hundreds of layers holds megabytes of recipes), the least recently used dropped.
CACHE_ENTRIES = 64
# Threads that compute answers for new versions while pages get the previous ones.
REFRESH_WORKERS = 2
# The version of an answer that stands in for one being computed for the first time.
PENDING = "pending"
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
    """A JSON-ready value, nested in dicts and lists as well: the CLI's JSON rule for each
    value (numpy and pandas scalars as Python ones, NaN and NaT as None, times in ISO 8601)."""
    if isinstance(value, dict):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [plain(v) for v in value]
    return _output._plain(value)


def row_dict(row: pd.Series, columns: tuple[str, ...] | None = None) -> dict[str, Any]:
    names = columns if columns is not None else tuple(str(c) for c in row.index)
    return {name: plain(row[name]) for name in names if name in row.index}


def _report(done: Future[Any]) -> None:
    """A worker's failure goes to the log (the page keeps the previous answer, and its next
    poll asks again): a store that went away is one line, anything else its traceback."""
    error = done.exception()
    if isinstance(error, StorageError | DashboardError):
        log.warning("dashboard: %s", error)
    elif error is not None:
        log.error("dashboard: a background read failed", exc_info=error)


@dataclass(frozen=True)
class Answer(Generic[T]):
    """A cached answer and the sweep version it was computed at."""

    value: T
    version: str


class Reader:
    """The store, and an LRU cache of answers keyed by (view, sweep, arguments).

    An answer for the sweep's current version is returned as is. One for an older version is
    returned too (stale by one change), while a worker thread computes the current one: a page
    that polls a sweep of 100,000 trials gets its answer at once, and the next poll the new
    one. A view never computed before answers ``pending`` (version :data:`PENDING`) the same
    way, where its caller gives a pending answer; otherwise its request computes it.
    """

    def __init__(self, store: Store) -> None:
        self.store = store
        self._lock = threading.Lock()
        self._cache: OrderedDict[Hashable, Answer[Any]] = OrderedDict()
        self._refreshing: set[Hashable] = set()
        self._workers = ThreadPoolExecutor(REFRESH_WORKERS, thread_name_prefix="dashboard")

    def submit(self, work: Callable[..., None], *args: Any) -> None:
        """Run ``work`` on the reader's worker threads (warming the cache up)."""
        self._workers.submit(work, *args).add_done_callback(_report)

    def latest(
        self,
        key: Hashable,
        current: str,
        compute: Callable[[], T],
        pending: T | None = None,
    ) -> Answer[T]:
        """The answer for ``key`` at version ``current``, or the last one while it refreshes;
        with none yet, ``pending`` while it is computed (else it is computed now)."""
        with self._lock:
            found = self._cache.get(key)
            if found is not None:
                self._cache.move_to_end(key)
                if found.version != current:
                    self._schedule(key, current, compute)
                return found
            if pending is not None:
                self._schedule(key, current, compute)
                return Answer(pending, PENDING)
        return self._store_answer(key, Answer(compute(), current))

    def _schedule(self, key: Hashable, current: str, compute: Callable[[], T]) -> None:
        """Compute ``key`` on a worker thread, unless one already does (the lock is held)."""
        if key not in self._refreshing:
            self._refreshing.add(key)
            refresh = self._workers.submit(self._refresh, key, current, compute)
            refresh.add_done_callback(_report)

    def exact(self, key: Hashable, current: str, compute: Callable[[], T]) -> T:
        """The answer for ``key`` at version ``current``, computed now if it is not cached."""
        with self._lock:
            found = self._cache.get(key)
            if found is not None and found.version == current:
                self._cache.move_to_end(key)
                return found.value
        return self._store_answer(key, Answer(compute(), current)).value

    def _store_answer(self, key: Hashable, answer: Answer[T]) -> Answer[T]:
        with self._lock:
            self._cache[key] = answer
            self._cache.move_to_end(key)
            while len(self._cache) > CACHE_ENTRIES:
                self._cache.popitem(last=False)
        return answer

    def _refresh(self, key: Hashable, current: str, compute: Callable[[], T]) -> None:
        try:
            self._store_answer(key, Answer(compute(), current))
        finally:
            with self._lock:
                self._refreshing.discard(key)

    def front(
        self,
        info: SweepInfo,
        objectives: Mapping[str, str] | None = None,
        where: tuple[str, ...] = (),
        *,
        exact: bool = False,
        wait: bool = True,
    ) -> Answer[pd.DataFrame]:
        """The sweep's Pareto front (its own objectives unless given), feasible trials only:
        the latest computed, or (``exact``, for answers built on it) the current one. Without
        ``wait``, a front never computed yet is an empty frame of version :data:`PENDING`."""
        chosen = dict(objectives or info.objectives)
        key = ("front", info.name, tuple(chosen.items()), where)
        current = version(info)

        def compute() -> pd.DataFrame:
            return self.store.pareto_front(info.name, chosen, where=list(where) or None)

        if exact:
            return Answer(self.exact(key, current, compute), current)
        return self.latest(key, current, compute, None if wait else pd.DataFrame())

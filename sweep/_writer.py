"""The driver's writes to the store, on a thread of their own.

The loop hands over records (a trial asked, a trial finished) and config updates, and goes on
asking, submitting and collecting: this thread commits whatever has accumulated, in one
transaction each time. A commit to PostgreSQL across a cluster or an fsync on a busy disk then
costs the loop nothing. Commits start at most every ``COMMIT_INTERVAL_S``: the busier the sweep,
the more records each carries, and a driver at hundreds of completions a second does not spend
its CPU on a commit (a sweep lookup, the fencing check, a transaction) per trial. Between
writes the thread touches the sweep's row every ``SWEEP_HEARTBEAT_S`` (a sign of life for
``sweep status`` and for other drivers), also while the loop is busy elsewhere.

A failed write keeps its records and is tried again after a growing pause (0.5 s doubling to
30 s): a store that is unreachable for a while loses nothing. A write still failing after
``WRITE_RETRIES`` pauses (about 90 s) is the sweep's error, raised in the loop by
:meth:`StoreWriter.check`. A full disk, or the sweep taken over by another driver, is raised at
the first failure: waiting frees no disk space, and a driver that lost its sweep must not write
again.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from typing import Any

from storage import FencedError, StorageError, StorageFullError, Store, TrialRecord
from sweep._status import heartbeat_s

log = logging.getLogger("sweep")
WRITE_RETRIES = 8
FIRST_PAUSE_S = 0.5
LONGEST_PAUSE_S = 30.0
# A record waits at most this long for its commit; a driver SIGKILLed in that window leaves the
# trial RUNNING (or unasked) in the store, and `sweep resume` runs it again. A commit has a fixed
# cost beside its records' (a sweep lookup, the fencing check, a transaction: about 2 ms of CPU
# on a local SQLite file, more round trips to a remote PostgreSQL): at two commits a second that
# is under 1% of a core whatever the rate, and a driver at 150 completions a second spent a third
# less CPU per trial than at ten (scripts/bench_scaling.py --capacity). Half a second is also
# long enough for most trials of a fast sweep to finish before their RUNNING record is written,
# and their result is then written once.
COMMIT_INTERVAL_S = 0.5
# Written is a callback on the writer's thread: the numbers whose records are now stored.
WrittenFn = Callable[[Collection[int]], None]


class StoreWriter:
    """See the module docstring. One per running sweep; :meth:`close` ends it."""

    def __init__(self, store: Store, name: str, on_written: WrittenFn | None = None) -> None:
        self._store, self._name, self._on_written = store, name, on_written
        self._lock = threading.Condition()
        # A trial's later record supersedes its earlier one (its result, its RUNNING record).
        self._records: dict[int, TrialRecord] = {}
        self._config: dict[str, Any] = {}
        self._writing: set[int] = set()  # numbers of the records in the write under way
        self._status: str | None = None  # set by close(): the sweep's status to write last
        self._closing = False
        self._error: BaseException | None = None
        self._failures = 0
        self._retry_at = 0.0
        self._written_at = -COMMIT_INTERVAL_S  # when the last write started
        self._beat_at = time.monotonic()
        self._thread = threading.Thread(target=self._run, name=f"sweep-writer:{name}", daemon=True)
        self._thread.start()

    # -- the loop's side ---------------------------------------------------------------------
    def record(self, record: TrialRecord) -> None:
        with self._lock:
            waiting = self._pending()  # then the thread already knows when to write
            self._records[record.number] = record
            if not waiting:
                self._lock.notify()

    def update_config(self, updates: Mapping[str, Any]) -> None:
        """Top-level keys of the sweep's stored config, written with the next commit."""
        with self._lock:
            waiting = self._pending()
            self._config.update(updates)
            if not waiting:
                self._lock.notify()

    def check(self) -> None:
        """Raise, in the caller's thread, the error that stopped the writer (if one did)."""
        if self._error is not None:
            raise self._error

    def unwritten(self) -> int:
        """Trials whose latest record is not stored yet."""
        with self._lock:
            return len(self._records.keys() | self._writing)

    def close(self, status: str | None) -> None:
        """Write everything handed over, waiting out an outage (up to the retries), then the
        sweep's ``status`` (FAILED if the writes failed). ``None``: stop without another write
        (the sweep was taken over)."""
        with self._lock:
            self._closing, self._status = True, status
            if status is None:
                self._records.clear()
                self._config.clear()
            self._lock.notify()
        self._thread.join()
        error = self._error
        if error is None or status is None or isinstance(error, FencedError):
            self.check()
            return
        # The records could not be written (they stay RUNNING in the store: `sweep resume`
        # re-runs them): the sweep FAILED, whatever the loop meant to end it with (a loop that
        # finished its budget before the writer caught up is not FINISHED), if the store takes it.
        try:
            self._store.set_sweep_status(self._name, "FAILED")
        finally:
            self.check()

    # -- the writer's thread -----------------------------------------------------------------
    def _run(self) -> None:
        while True:
            with self._lock:
                while not self._due():
                    self._lock.wait(self._wait_s())
                if self._error is not None:
                    return
                records, config = list(self._records.values()), self._config
                self._records, self._config = {}, {}
                self._writing = {record.number for record in records}
                closing = self._closing
            if records or config:
                written = self._write(records, config)
            elif closing:
                if self._status is not None:
                    self._write_status(self._status, final=True)
                return
            else:
                self._beat()
                continue
            with self._lock:
                self._writing = set()
                if not written:  # back in line, behind any later record of the same trial
                    for record in records:
                        self._records.setdefault(record.number, record)
                    self._config = {**config, **self._config}
            if written and self._on_written is not None and records:
                self._on_written([record.number for record in records])

    def _pending(self) -> bool:
        return bool(self._records or self._config)

    def _write_at(self) -> float:
        """When the pending records are written: after a failure's pause, else the interval
        since the last write (at once when closing)."""
        if self._closing:
            return self._retry_at
        return max(self._retry_at, self._written_at + COMMIT_INTERVAL_S)

    def _due(self) -> bool:
        """Something to do now: a write (unless pausing after a failure, or the last write was
        less than the interval ago), a heartbeat, the end."""
        if self._error is not None:
            return True
        now = time.monotonic()
        if self._pending():
            return now >= self._write_at()
        return self._closing or now - self._beat_at >= heartbeat_s()

    def _wait_s(self) -> float:
        now = time.monotonic()
        if self._pending():
            return max(0.0, self._write_at() - now)
        return max(0.0, heartbeat_s() - (now - self._beat_at))

    def _write(self, records: list[TrialRecord], config: dict[str, Any]) -> bool:
        self._written_at = time.monotonic()
        try:
            if config:
                self._store.update_sweep_config(self._name, config)
                config.clear()  # written: a retry of the records must not write it again
            if records:
                self._store.record_trials(self._name, records)
        except (StorageFullError, FencedError) as exc:
            self._stop(exc)
            return False
        except StorageError as exc:
            self._failures += 1
            if self._failures > WRITE_RETRIES:
                self._stop(exc)
                return False
            pause = min(LONGEST_PAUSE_S, FIRST_PAUSE_S * 2 ** (self._failures - 1))
            self._retry_at = time.monotonic() + pause
            log.warning("store write failed (%s); retrying in %.1f s", exc, pause)
            return False
        self._failures = 0
        self._beat_at = time.monotonic()
        return True

    def _beat(self) -> None:
        """Touch the sweep's row: nothing else wrote it for a heartbeat."""
        self._beat_at = time.monotonic()
        self._write_status("RUNNING", final=False)

    def _write_status(self, status: str, *, final: bool) -> None:
        try:
            self._store.set_sweep_status(self._name, status)
        except FencedError as exc:
            self._stop(exc)
        except StorageError as exc:
            if final:
                self._stop(exc)
            else:
                log.warning("store heartbeat failed (%s); the next write tries again", exc)

    def _stop(self, error: BaseException) -> None:
        with self._lock:
            self._error = error
            self._lock.notify_all()

"""The driver's store writer on every backend: handing records over never waits for the store,
a trial's later record wins, heartbeats touch the sweep while nothing else is written, and a
driver that was taken over writes nothing more."""

from __future__ import annotations

import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import timedelta

import pytest
import sqlalchemy as sa

from storage import Driver, FencedError, Store, TrialRecord
from storage._models import SweepModel
from sweep._writer import COMMIT_INTERVAL_S, StoreWriter
from tests.storage.storage_helpers import make_record

STALE_S = 60.0


@contextmanager
def _sweep_row_locked(url: str) -> Iterator[None]:
    """Another connection holds the write lock every driver write needs (the sweep's row on
    PostgreSQL, the database's on SQLite) until the block ends."""
    engine = sa.create_engine(url)
    with engine.connect() as connection:
        if engine.dialect.name == "sqlite":
            connection.exec_driver_sql("BEGIN IMMEDIATE")
        else:
            connection.execute(sa.text("SELECT id FROM sweeps WHERE name = 's' FOR UPDATE"))
        try:
            yield
        finally:
            connection.rollback()
    engine.dispose()


def test_records_are_handed_over_while_the_store_is_locked(store_url: str) -> None:
    store = Store(store_url)
    store.create_sweep("s", {}, {"accuracy": "max"}, driver=Driver(), stale_after_s=STALE_S)
    written: list[int] = []
    writer = StoreWriter(store, "s", on_written=written.extend)
    try:
        with _sweep_row_locked(store_url):
            writer.record(make_record(0, "RUNNING"))
            time.sleep(0.3)  # the writer takes record 0 and waits for the lock
            for number in range(1, 200):
                writer.record(make_record(number, "RUNNING"))
            for number in range(0, 200, 2):  # half finish while their RUNNING records wait
                writer.record(make_record(number, metrics={"accuracy": number / 200}))
            # Every hand-over returned while no write could commit.
            assert writer.unwritten() == 200
            assert len(store.trials("s")) == 0
        writer.close("FINISHED")
    finally:
        writer.close(None)
    trials = store.trials("s")
    assert trials["number"].tolist() == list(range(200))
    states = dict(zip(trials["number"], trials["state"], strict=True))
    assert all(states[n] == ("COMPLETE" if n % 2 == 0 else "RUNNING") for n in range(200))
    assert store.get_sweep("s").status == "FINISHED"
    # A trial's RUNNING record and its result, both waiting, were written once: as the result.
    assert sorted(set(written)) == list(range(200)) and len(written) <= 201


def test_records_arriving_steadily_share_commits(store_url: str) -> None:
    """A record every 10 ms for half a second: a commit each would be 50 (each a sweep lookup,
    the fencing check, a transaction: at hundreds of completions a second, most of the driver's
    CPU); commits start at most every COMMIT_INTERVAL_S, so they carry several each."""
    store = Store(store_url)
    store.create_sweep("s", {}, {"accuracy": "max"}, driver=Driver(), stale_after_s=STALE_S)
    commits: list[int] = []
    record_trials = store.record_trials

    def counted(name: str, records: list[TrialRecord]) -> None:
        record_trials(name, records)
        commits.append(len(records))

    store.record_trials = counted  # type: ignore[method-assign]
    writer = StoreWriter(store, "s")
    try:
        for number in range(50):
            writer.record(make_record(number, metrics={"accuracy": number / 50}))
            time.sleep(0.01)
        writer.close("FINISHED")
    finally:
        writer.close(None)
    assert sum(commits) == 50
    assert len(store.trials("s")) == 50
    # About 0.5 s of records (a loaded machine sleeps longer) at most one commit per interval.
    assert len(commits) <= 2 + math.ceil(1.0 / COMMIT_INTERVAL_S), commits


def test_an_idle_writer_beats_and_a_busy_one_does_not_need_to(
    store_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("SWEEP_HEARTBEAT_S", "0.2")
    store = Store(store_url)
    store.create_sweep("s", {}, {"accuracy": "max"}, driver=Driver(), stale_after_s=STALE_S)
    writer = StoreWriter(store, "s")
    seen = {store.get_sweep("s").updated_at}
    deadline = time.monotonic() + 3.0
    while len(seen) < 4 and time.monotonic() < deadline:
        time.sleep(0.05)
        seen.add(store.get_sweep("s").updated_at)
    writer.close("FINISHED")
    assert len(seen) >= 4, seen  # the row was touched again and again with nothing to write
    assert store.get_sweep("s").status == "FINISHED"


def test_a_writer_taken_over_stops_and_writes_nothing_more(store_url: str) -> None:
    old, new = Store(store_url), Store(store_url)
    old.create_sweep("s", {}, {"accuracy": "max"}, driver=Driver(), stale_after_s=STALE_S)
    writer = StoreWriter(old, "s")
    writer.record(make_record(0, "RUNNING"))
    deadline = time.monotonic() + 10
    while writer.unwritten() and time.monotonic() < deadline:
        time.sleep(0.02)
    with old._session(write=True) as session:  # the old driver went silent: STALE
        row = SweepModel.find_by_name(session, "s")
        assert row is not None
        row.updated_at = row.updated_at - timedelta(seconds=2 * STALE_S)
    new.claim_sweep("s", Driver(), stale_after_s=STALE_S)
    before = new.trials("s")
    writer.record(make_record(0, metrics={"accuracy": 0.9}))
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            writer.check()
        except FencedError:
            break
        time.sleep(0.02)
    else:
        pytest.fail("the writer did not stop on a sweep another driver owns")
    with pytest.raises(FencedError):
        writer.close(None)
    assert new.trials("s").equals(before)
    assert new.get_sweep("s").status == "RUNNING"


def test_close_from_another_thread_while_writes_wait(store_url: str) -> None:
    """close() waits for what was handed over, even when the store is locked at that moment."""
    store = Store(store_url)
    store.create_sweep("s", {}, {"accuracy": "max"}, driver=Driver(), stale_after_s=STALE_S)
    writer = StoreWriter(store, "s")
    release = threading.Event()

    def hold() -> None:
        with _sweep_row_locked(store_url):
            release.wait(5)

    holder = threading.Thread(target=hold)
    holder.start()
    time.sleep(0.2)
    writer.record(make_record(7, metrics={"accuracy": 0.5}))
    threading.Timer(0.5, release.set).start()
    writer.close("INTERRUPTED")
    holder.join()
    assert store.trials("s")["number"].tolist() == [7]
    assert store.get_sweep("s").status == "INTERRUPTED"

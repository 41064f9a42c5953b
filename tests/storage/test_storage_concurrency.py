"""Several drivers writing one database at once, and transient errors retried with backoff.

Every test runs on SQLite and PostgreSQL. Writers open a database no Store has touched yet, so
their schema migrations race too.
"""

from __future__ import annotations

import logging
import multiprocessing
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

import pytest
import sqlalchemy as sa
from storage_helpers import CONCURRENT_LAYERS, make_record, write_sweep

from storage import Store

WRITERS = 4
TRIALS = 200
BATCH = 20


def _check(url: str, names: list[str]) -> None:
    """Every writer's rows are all there, and each sweep holds only its own trials."""
    with Store(url) as store:
        assert sorted(sweep.name for sweep in store.list_sweeps()) == sorted(names)
        for index, name in enumerate(names):
            frame = store.trials(name)
            assert frame["number"].tolist() == list(range(TRIALS))
            assert set(frame["state"]) == {"COMPLETE"}
            assert set(frame["size_bytes"]) == {1000 + index}  # written by this sweep's writer
            layers = store.layers(name)
            assert len(layers) == TRIALS * len(CONCURRENT_LAYERS)
            assert store.get_sweep(name).counts["COMPLETE"] == TRIALS


@pytest.mark.parametrize("shared", [False, True], ids=["store-per-thread", "shared-store"])
def test_four_threads_write_one_database(fresh_url: str, shared: bool) -> None:
    names = [f"thread-{index}" for index in range(WRITERS)]
    barrier = threading.Barrier(WRITERS)
    errors: list[BaseException] = []
    store = Store(fresh_url) if shared else None

    def writer(index: int) -> None:
        try:
            write_sweep(fresh_url, names[index], index, TRIALS, BATCH, barrier, store)
        except BaseException as exc:  # noqa: BLE001 - collected and re-raised below
            errors.append(exc)

    threads = [threading.Thread(target=writer, args=(index,)) for index in range(WRITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    if store is not None:
        store.close()
    assert not any(thread.is_alive() for thread in threads)
    assert not errors, errors
    _check(fresh_url, names)


def _process_writer(url: str, name: str, index: int, barrier: object, results: object) -> None:
    try:
        write_sweep(url, name, index, TRIALS, BATCH, barrier)
        results.put((name, "ok"))  # type: ignore[attr-defined]
    except BaseException as exc:  # noqa: BLE001 - reported to the parent
        results.put((name, f"{type(exc).__name__}: {exc}"))  # type: ignore[attr-defined]


def test_four_processes_write_one_database(fresh_url: str) -> None:
    context = multiprocessing.get_context("spawn")
    barrier = context.Barrier(WRITERS)
    results = context.Queue()
    names = [f"process-{index}" for index in range(WRITERS)]
    processes = [
        context.Process(target=_process_writer, args=(fresh_url, name, index, barrier, results))
        for index, name in enumerate(names)
    ]
    for process in processes:
        process.start()
    outcomes = dict(results.get(timeout=180) for _ in processes)
    for process in processes:
        process.join(timeout=30)
    assert outcomes == {name: "ok" for name in names}
    assert [process.exitcode for process in processes] == [0] * WRITERS
    _check(fresh_url, names)


def _fail_fast(url: str) -> str:
    """``url`` with lock waits cut to ~10-50 ms, so a held lock surfaces as an error that the
    store must retry instead of waiting for it inside the database."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        return parsed.update_query_dict({"timeout": "0.01"}).render_as_string(False)
    options = f"{parsed.query.get('options', '')} -clock_timeout=50".strip()
    return parsed.update_query_dict({"options": options}).render_as_string(False)


@contextmanager
def _write_lock(url: str, seconds: float) -> Iterator[None]:
    """Another connection holds a write transaction on ``trials`` for ``seconds``."""
    parsed = sa.make_url(url)
    if parsed.get_backend_name() == "sqlite":
        assert parsed.database is not None
        raw = sqlite3.connect(parsed.database, isolation_level=None, check_same_thread=False)
        raw.execute("BEGIN IMMEDIATE")
        raw.execute("UPDATE sweeps SET status = status")
        release = threading.Timer(seconds, lambda: raw.execute("COMMIT"))
        release.start()
        try:
            yield
        finally:
            release.join()
            raw.close()
        return
    engine = sa.create_engine(url)
    connection = engine.connect()
    transaction = connection.begin()
    connection.execute(sa.text("LOCK TABLE trials IN EXCLUSIVE MODE"))
    release = threading.Timer(seconds, transaction.commit)
    release.start()
    try:
        yield
    finally:
        release.join()
        connection.close()
        engine.dispose()


def test_a_held_write_lock_is_retried_until_released(
    store_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG, logger="storage._engine")
    with Store(_fail_fast(store_url)) as store:
        store.create_sweep("s", {}, {"accuracy": "max"})
        with _write_lock(store_url, seconds=1.0):
            started = time.monotonic()
            store.record_trials("s", [make_record(n, metrics={"accuracy": 0.5}) for n in range(5)])
            waited = time.monotonic() - started
        retries = [r for r in caplog.records if "transient database error" in r.getMessage()]
        assert retries, "the lock error was not retried"
        assert "lock" in retries[0].getMessage()
        assert 0.8 < waited < 10
        assert store.trials("s")["number"].tolist() == [0, 1, 2, 3, 4]

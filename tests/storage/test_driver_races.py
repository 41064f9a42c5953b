"""Two real drivers on one sweep, through the command line, on SQLite and PostgreSQL: a live
driver is never replaced or resumed under it; a stopped one (SIGSTOP past the stale limit) is
taken over, and when it wakes it cannot write a row, exits non-zero and never reports success."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest
import sqlalchemy

from storage import Store, SweepNotFoundError
from tests.sweep.cli_runner import interruptible

ROOT = Path(__file__).resolve().parents[2]
HEARTBEAT_S = "0.5"  # stale after 3 s, so that a stopped driver goes stale within the test
pytestmark = pytest.mark.slow


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT), "SWEEP_HEARTBEAT_S": HEARTBEAT_S}


def _config(folder: Path, n_trials: int, seconds: float) -> Path:
    path = folder / "race.yaml"
    path.write_text(
        f"name: race\ntask: synthetic\ntask_settings: {{n_layers: 2, trial_seconds: {seconds}}}\n"
        f"budget: {{n_trials: {n_trials}}}\nresources: {{cpus_per_trial: 1, max_concurrent: 2}}\n"
    )
    return path


def _sweep(folder: Path, *args: str, background: bool = False) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-m", "sweep", *args],
        cwd=folder,
        env=_env(),
        text=True,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        preexec_fn=interruptible,
    )


def _finish(process: subprocess.Popen[str], timeout: float = 240) -> tuple[int, str]:
    _, err = process.communicate(timeout=timeout)
    return process.returncode, err


def _wait_complete(url: str, count: int, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with Store(url) as store:
                if store.get_sweep("race").counts["COMPLETE"] >= count:
                    return
        except SweepNotFoundError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"fewer than {count} trials completed in {timeout} s")


def _holds_a_transaction(url: str) -> bool:
    """Whether some other connection is inside a transaction on the store: SQLite's write lock
    is taken (WAL: readers never block), or a PostgreSQL backend has a transaction open."""
    if url.startswith("sqlite:///"):
        connection = sqlite3.connect(url.removeprefix("sqlite:///"), timeout=0.5)
        connection.isolation_level = None
        try:
            connection.execute("BEGIN IMMEDIATE")
            connection.execute("ROLLBACK")
            return False
        except sqlite3.OperationalError:
            return True
        finally:
            connection.close()
    engine = sqlalchemy.create_engine(url)
    try:
        with engine.connect() as connection:
            busy = connection.exec_driver_sql(
                "SELECT count(*) FROM pg_stat_activity WHERE datname = current_database() "
                "AND pid <> pg_backend_pid() AND xact_start IS NOT NULL "
                "AND backend_type = 'client backend'"
            ).scalar_one()
        return bool(busy)
    finally:
        engine.dispose()


def _stop_between_transactions(pid: int, url: str) -> None:
    """SIGSTOP the driver at a moment it is inside no transaction. One stopped inside a write
    holds SQLite's write lock (or PostgreSQL's row locks) until it runs again, and no process can
    write to the store meanwhile: that is the database's locking, not a takeover's concern."""
    for _ in range(100):
        os.kill(pid, signal.SIGSTOP)
        if not _holds_a_transaction(url):
            return
        os.kill(pid, signal.SIGCONT)
        time.sleep(0.05)
    raise AssertionError("the driver was inside a transaction at 100 tries to stop it")


def _one_error(err: str, expected: str) -> None:
    assert "Traceback" not in err, err[-3000:]
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and expected in errors[0], err[-3000:]


def test_a_live_driver_is_neither_replaced_nor_resumed(fresh_url: str, tmp_path: Path) -> None:
    config = _config(tmp_path, n_trials=20, seconds=2.0)  # outlasts two commands' start-up
    first = _sweep(tmp_path, "launch", str(config), "--storage", fresh_url)
    _wait_complete(fresh_url, 2)
    for argv in (
        ("launch", str(config), "--replace", "--storage", fresh_url),
        ("resume", "race", "--storage", fresh_url),
    ):
        code, err = _finish(_sweep(tmp_path, *argv), timeout=120)
        assert code == 2, err[-3000:]
        _one_error(err, "cannot ")
        assert "sweep 'race': its driver is alive (pid" in err
        assert f"pid {first.pid} on " in err
    code, err = _finish(first)
    assert code == 0, err[-3000:]
    with Store(fresh_url) as store:
        info = store.get_sweep("race")
        numbers = store.trials("race")["number"].tolist()
    assert (info.status, info.counts["COMPLETE"]) == ("FINISHED", 20)
    assert sorted(numbers) == list(range(20))


@pytest.mark.parametrize("takeover", ["resume", "replace"])
def test_a_stopped_driver_taken_over_cannot_write(
    fresh_url: str, tmp_path: Path, takeover: str
) -> None:
    config = _config(tmp_path, n_trials=8, seconds=1.0)
    first = _sweep(tmp_path, "launch", str(config), "--storage", fresh_url)
    _wait_complete(fresh_url, 2)
    _stop_between_transactions(first.pid, fresh_url)
    try:
        time.sleep(6 * float(HEARTBEAT_S) + 1.0)  # past the stale limit
        argv = (
            ("resume", "race", "--storage", fresh_url)
            if takeover == "resume"
            else ("launch", str(_config(tmp_path, 5, 0.3)), "--replace", "--storage", fresh_url)
        )
        code, err = _finish(_sweep(tmp_path, *argv))
        assert code == 0, err[-3000:]
        with Store(fresh_url) as store:
            before = store.trials("race")[["number", "state", "accuracy", "finished_at"]]
            info_before = store.get_sweep("race")
    finally:
        os.kill(first.pid, signal.SIGCONT)
    code, err = _finish(first)
    assert code == 1, err[-3000:]
    _one_error(err, "sweep 'race' was taken over by another driver (pid")
    assert " trials in " not in err  # never reports success
    with Store(fresh_url) as store:
        after = store.trials("race")[["number", "state", "accuracy", "finished_at"]]
        info = store.get_sweep("race")
    assert after.equals(before) and info.updated_at == info_before.updated_at
    expected = 8 if takeover == "resume" else 5
    assert info.status == "FINISHED"
    assert sorted(after["number"]) == list(range(expected))
    assert (after["state"] == "COMPLETE").all()

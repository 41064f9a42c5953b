"""`sweep status`: the progress fields (shared with launch's bar), read from a real SQLite store;
--format; --watch stops by itself when the sweep stops, and on Ctrl-C with exit 0."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
import sqlalchemy as sa

from storage import Driver, Store, TrialRecord
from sweep import _output, _status
from tests.sweep.cli_runner import interruptible, run_cli

ROOT = Path(__file__).resolve().parents[2]
SWEEP = (sys.executable, "-m", "sweep")
RECIPE = {"schema_version": 1, "order": "prune_ptq", "granularity": "per_tensor", "layers": {}}


def _record(number: int, state: str, accuracy: float, size: int) -> TrialRecord:
    metrics = {"accuracy": accuracy, "compressed_bytes": size} if state == "COMPLETE" else {}
    return TrialRecord(number=number, state=state, recipe=RECIPE, metrics=metrics)


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store(url) as store:
        store.create_sweep(
            "run", {"budget": {"n_trials": 10}}, {"accuracy": "max", "compressed_bytes": "min"}
        )
        store.record_trials(
            "run",
            [
                _record(0, "COMPLETE", 0.90, 500),  # front
                _record(1, "COMPLETE", 0.95, 900),  # front
                _record(2, "COMPLETE", 0.85, 950),  # dominated by 0 and 1
                _record(3, "FAIL", 0, 0),
                _record(4, "PRUNED", 0, 0),
                _record(5, "RUNNING", 0, 0),
            ],
        )
    return url


def test_remaining_is_the_trials_left_at_the_rate_so_far() -> None:
    state = _status.progress(
        "s", "RUNNING", total=10, done=4, running=2, failed=1, pruned=0, front_size=2,
        best={"accuracy": 0.9}, elapsed_s=20.0,
    )  # fmt: skip
    assert state.remaining_s == pytest.approx(30.0)  # 6 left at 5 s each
    resumed = _status.progress(
        "s", "RUNNING", total=10, done=6, running=1, failed=0, pruned=0, front_size=2,
        best={}, elapsed_s=8.0, done_before=4,
    )  # fmt: skip
    assert resumed.remaining_s == pytest.approx(16.0)  # this run: 2 trials in 8 s, 4 left
    finished = _status.progress(
        "s", "FINISHED", total=10, done=10, running=3, failed=0, pruned=0, front_size=2,
        best={}, elapsed_s=8.0,
    )  # fmt: skip
    assert finished.remaining_s is None and finished.running == 0
    assert _status.clock(3725.2) == "1:02:05" and _status.clock(None) == "-"


def test_status_fields_from_the_store(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        monkeypatch, capsys, "status", "run", "--storage", db, "--format", "json"
    )
    assert code == 0, err
    (row,) = json.loads(out)
    assert {k: row[k] for k in ("name", "status", "done", "total", "running")} == {
        "name": "run",
        "status": "RUNNING",
        "done": 5,
        "total": 10,
        "running": 1,
    }
    assert (row["failed"], row["pruned"], row["front"]) == (1, 1, 2)
    assert (row["best_accuracy"], row["best_compressed_bytes"]) == (0.95, 500)
    assert row["elapsed_s"] >= 0 and row["remaining_s"] is not None

    code, out, _ = run_cli(monkeypatch, capsys, "status", "--storage", db, "--format", "csv")
    assert code == 0
    header, line = out.strip().splitlines()
    assert header.startswith("name,status,done,total,running,failed,pruned,front,best_accuracy")
    assert line.startswith("run,RUNNING,5,10,1,1,1,2,0.95,500")

    code, out, _ = run_cli(monkeypatch, capsys, "status", "--storage", db)
    assert code == 0
    assert "5/10" in out and "accuracy 95.00%, compressed_bytes 500" in out


def test_watch_returns_at_once_for_a_stopped_sweep(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(db) as store:
        store.set_sweep_status("run", "INTERRUPTED")
    code, out, _ = run_cli(monkeypatch, capsys, "status", "run", "--storage", db, "--watch")
    assert code == 0 and "INTERRUPTED" in out


def test_a_running_sweep_whose_driver_went_silent_is_stale(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(db) as store:
        info = store.get_sweep("run")
        soon = info.updated_at + timedelta(seconds=_status.STALE_AFTER_S - 1)
        late = info.updated_at + timedelta(seconds=_status.STALE_AFTER_S + 1)
        assert _status.from_store(store, info, now=soon).status == "RUNNING"
        stale = _status.from_store(store, info, now=late)
        assert stale.status == "STALE" and stale.remaining_s is None
    # As `sweep status` sees it: the driver was killed a while ago; --watch does not wait.
    engine = sa.create_engine(db)
    with engine.begin() as connection:
        connection.execute(sa.text("UPDATE sweeps SET updated_at = '2026-01-01 00:00:00'"))
    engine.dispose()
    code, out, _ = run_cli(monkeypatch, capsys, "status", "run", "--storage", db, "--watch")
    assert code == 0 and "STALE" in out


def _watch(db: str, cwd: Path, fmt: str = "csv") -> subprocess.Popen[str]:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    argv = [*SWEEP, "status", "run", "--storage", db, "--format", fmt]
    return subprocess.Popen(
        [*argv, "--watch", "--interval", "0.2"],
        cwd=cwd,
        env=env,
        preexec_fn=interruptible,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _first_line(process: subprocess.Popen[str]) -> str:
    assert process.stdout is not None
    return process.stdout.readline()  # the first listing: the watcher is running


@pytest.mark.slow  # a subprocess: seconds of imports on a loaded machine
def test_watch_stops_when_the_sweep_finishes(db: str, tmp_path: Path) -> None:
    watcher = _watch(db, tmp_path)
    assert _first_line(watcher).startswith("name,status")
    with Store(db) as store:
        store.record_trials("run", [_record(5, "COMPLETE", 0.99, 990)])
        store.set_sweep_status("run", "FINISHED")
    out, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, err
    assert "run,FINISHED,6,10,0" in out
    assert "name,status" not in out  # one header: the stream reads as one CSV file


def test_watch_as_json_is_json_lines(db: str, tmp_path: Path) -> None:
    watcher = _watch(db, tmp_path, "json")
    first = json.loads(_first_line(watcher))  # each line a whole object, as it arrives
    assert (first["name"], first["status"], first["done"]) == ("run", "RUNNING", 5)
    with Store(db) as store:
        store.record_trials("run", [_record(5, "COMPLETE", 0.99, 990)])
        store.set_sweep_status("run", "FINISHED")
    out, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, err
    rows = [json.loads(line) for line in out.strip().splitlines()]
    assert rows[-1]["status"] == "FINISHED" and rows[-1]["done"] == 6


@pytest.mark.slow
def test_watch_ctrl_c_exits_0(db: str, tmp_path: Path) -> None:
    watcher = _watch(db, tmp_path)
    assert _first_line(watcher).startswith("name,status")
    time.sleep(0.5)  # inside the refresh loop (not a timing assertion: any moment is fine)
    watcher.send_signal(signal.SIGINT)
    _, err = watcher.communicate(timeout=120)
    assert watcher.returncode == 0, err
    assert "Traceback" not in err


def test_the_launch_bar_names_every_field() -> None:
    state = _status.progress(
        "s", "RUNNING", total=10, done=4, running=2, failed=1, pruned=1, front_size=3,
        best={"accuracy": 0.9876, "compressed_bytes": 21592.0}, elapsed_s=20.0,
    )  # fmt: skip
    assert _status.bar_detail(state, _output._cell) == (
        "running 2 failed 1 pruned 1 front 3 | best accuracy 98.76%, compressed_bytes 21,592 "
        "| elapsed 0:00:20 remaining 0:00:30"
    )


def test_a_running_sweep_whose_driver_died_here_is_stale_at_once(db: str) -> None:
    """The rule `sweep resume` takes over by (a driver process on this host that is gone) is
    the rule `sweep status` shows STALE by: no minute to wait for the heartbeat."""
    finished = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                              capture_output=True, text=True, check=True)  # fmt: skip
    dead = Driver(pid=int(finished.stdout))
    with Store(db) as store:
        store.set_sweep_status("run", "INTERRUPTED")  # the fixture's sweep has no driver yet
        store.claim_sweep("run", dead, stale_after_s=_status.STALE_AFTER_S)
        info = store.get_sweep("run")
        assert info.driver_gone
        assert _status.from_store(store, info).status == "STALE"
        store.claim_sweep("run", Driver(), stale_after_s=_status.STALE_AFTER_S)  # taken over
        alive = store.get_sweep("run")
        assert not alive.driver_gone
        assert _status.from_store(store, alive).status == "RUNNING"

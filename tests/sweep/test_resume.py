"""Failures a sweep must survive: a killed driver, trials over their time limit, early stopping."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from storage import Store
from sweep import _ray_session, parse_config, run_sweep
from sweep._driver import resume_sweep
from tests.sweep.cli_runner import interruptible, run_cli

ROOT = Path(__file__).resolve().parents[2]


def _wait_for(store_path: Path, name: str, complete: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if store_path.exists():
            try:
                info = Store(f"sqlite:///{store_path}").get_sweep(name)
            except Exception:  # noqa: BLE001 - the sweep may not be created yet
                info = None
            if info is not None and info.counts["COMPLETE"] >= complete:
                return
        time.sleep(0.2)
    raise AssertionError(f"fewer than {complete} trials completed within {timeout} s")


def _launch(tmp_path: Path, name: str, n_trials: int, **popen: Any) -> subprocess.Popen[str]:
    """``sweep launch`` of 0.6-s synthetic trials, two at a time, storing in tmp_path/s.db."""
    config = tmp_path / f"{name}.yaml"
    config.write_text(
        f"name: {name}\ntask: synthetic\ntask_settings: {{trial_seconds: 0.6}}\n"
        f"budget: {{n_trials: {n_trials}}}\nresources: {{cpus_per_trial: 1, max_concurrent: 2}}\n"
    )
    store = f"sqlite:///{tmp_path / 's.db'}"
    return subprocess.Popen(
        [sys.executable, "-m", "sweep", "launch", str(config), "--storage", store],
        cwd=tmp_path,
        env=_env(),
        text=True,
        preexec_fn=interruptible,
        **popen,
    )


def _resume(tmp_path: Path, name: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [
            sys.executable,
            "-m",
            "sweep",
            "resume",
            name,
            "--storage",
            f"sqlite:///{tmp_path / 's.db'}",
        ],
        cwd=tmp_path,
        env=_env(),
        capture_output=True,
        text=True,
        timeout=300,
    )


def _env() -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(ROOT)}


@pytest.mark.slow
def test_resume_after_the_driver_is_killed(local_ray: None, tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    driver = _launch(tmp_path, "killed", 14, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(db, "killed", complete=4, timeout=120)
    finally:
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    store = Store(f"sqlite:///{db}")
    before = store.trials("killed")
    running = before[before["state"] == "RUNNING"]
    assert len(running) >= 1, "the kill should leave trials in flight"
    assert len(before) < 14

    resumed = _resume(tmp_path, "killed")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert "Pareto front of killed" in resumed.stdout

    after = store.trials("killed")
    assert list(after["number"]) == list(range(14))  # none lost, none recorded twice
    assert set(after["state"]) == {"COMPLETE"}
    for _, row in running.iterrows():  # the interrupted trials re-ran with their own recipes
        rerun = after[after["number"] == row["number"]].iloc[0]
        assert rerun["recipe"] == row["recipe"]
    for _, row in before[before["state"] == "COMPLETE"].iterrows():  # finished ones untouched
        kept = after[after["number"] == row["number"]].iloc[0]
        assert kept["accuracy"] == row["accuracy"] and kept["finished_at"] == row["finished_at"]
    assert store.get_sweep("killed").status == "FINISHED"


@pytest.mark.slow
def test_ctrl_c_stops_records_what_finished_and_resumes(local_ray: None, tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    driver = _launch(tmp_path, "stopped", 12, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _wait_for(db, "stopped", complete=3, timeout=120)
        driver.send_signal(signal.SIGINT)  # what Ctrl-C sends
        _, stderr = driver.communicate(timeout=120)
    finally:
        driver.kill()
    assert driver.returncode == 130, stderr[-3000:]
    assert "Traceback" not in stderr
    assert "continue with `sweep resume stopped`" in stderr
    store = Store(f"sqlite:///{db}")
    assert store.get_sweep("stopped").status == "INTERRUPTED"
    before = store.trials("stopped")
    assert 3 <= (before["state"] == "COMPLETE").sum() < 12  # what finished is recorded
    assert set(before["state"]) <= {"COMPLETE", "RUNNING"}  # in flight: left to resume

    resumed = _resume(tmp_path, "stopped")
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    after = store.trials("stopped")
    assert list(after["number"]) == list(range(12))
    # Another Store on the same file in this process (it checks the file is a sweep store
    # first) leaves the open one's view intact.
    assert len(Store(f"sqlite:///{db}").trials("stopped")) == 12 == len(store.trials("stopped"))
    assert set(after["state"]) == {"COMPLETE"}
    assert store.get_sweep("stopped").status == "FINISHED"


def test_trials_over_their_time_limit_fail_and_the_sweep_goes_on(
    local_ray: None, tmp_path: Path
) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    config = parse_config(
        {
            "name": "slow",
            "task": "synthetic",
            "task_settings": {"trial_seconds": 30},
            "budget": {"n_trials": 3},
            "trial": {"timeout_s": 1.0},
        }
    )
    started = time.monotonic()
    progress = run_sweep(config, store)
    assert time.monotonic() - started < 25
    trials = store.trials("slow")
    assert progress.failed == 3 and set(trials["state"]) == {"FAIL"}
    assert trials["error"].str.contains("exceeded trial.timeout_s").all()


@pytest.mark.slow
def test_early_stopping_prunes_hopeless_trials(local_ray: None, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    config = parse_config(
        {
            "name": "pruned",
            "task": "digits",
            "seed": 3,
            "sampler": "random",
            "budget": {"n_trials": 10},
            "search_space": {
                "amount": {"min": 0.0, "max": 0.95, "step": 0.05},
                "methods": ["unstructured"],
                "orders": ["prune_ptq"],
            },
            "trial": {
                "finetune_epochs": 3,
                "calibration_batches": 2,
                "latency_repeats": 3,
                "learning_rate": 0.0003,
            },
            "early_stopping": {"pruner": "median", "startup_trials": 2},
            "resources": {"max_concurrent": 1},
        }
    )
    progress = run_sweep(config, store)
    trials = store.trials("pruned")
    assert set(trials["state"]) <= {"COMPLETE", "PRUNED"}
    assert progress.pruned == (trials["state"] == "PRUNED").sum() >= 1
    pruned = trials[trials["state"] == "PRUNED"]
    assert pruned["error"].str.contains("stopped early").all()


def test_resume_with_a_new_budget_stores_it(local_ray: None, tmp_path: Path) -> None:
    """`sweep status` from elsewhere reads the budget from the store: it must see the new one."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    config = parse_config(
        {
            "name": "grow",
            "task": "synthetic",
            "task_settings": {"n_layers": 2, "trial_seconds": 0.0},
            "budget": {"n_trials": 2},
        }
    )
    run_sweep(config, store)
    resume_sweep("grow", store, n_trials=4)
    assert store.get_sweep("grow").config["budget"]["n_trials"] == 4
    assert list(store.trials("grow")["number"]) == [0, 1, 2, 3]


def test_resuming_a_finished_sweep_runs_and_writes_nothing(
    local_ray: None,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    db = tmp_path / "s.db"
    store = Store(f"sqlite:///{db}")
    settings = {"n_layers": 2, "trial_seconds": 0.0}
    config = {"name": "done", "task": "synthetic", "task_settings": settings}
    run_sweep(parse_config({**config, "budget": {"n_trials": 3}}), store)
    store.close()
    before = db.read_bytes()

    def no_ray(*_: object, **__: object) -> None:
        raise AssertionError("Ray was started for a sweep with nothing to run")

    monkeypatch.setattr(_ray_session, "connect_ray", no_ray)
    url = f"sqlite:///{db}"
    for extra in ([], ["--n-trials", "3"]):
        code, out, err = run_cli(monkeypatch, capsys, "resume", "done", "--storage", url, *extra)
        assert (code, out, err.strip()) == (0, "", "nothing to resume: 3/3 trials done")
    code, _, err = run_cli(
        monkeypatch, capsys, "resume", "done", "--storage", url, "--n-trials", "2"
    )
    assert code == 2 and err.strip().splitlines()[-1] == (
        "error: --n-trials: 2 is below the 3 trials sweep done has done; give at least 3"
    )
    assert db.read_bytes() == before  # timestamps, budget and status as they were
    monkeypatch.undo()
    code, _, err = run_cli(
        monkeypatch, capsys, "resume", "done", "--storage", url, "--n-trials", "5"
    )
    assert code == 0, err
    with Store(url) as grown:
        info = grown.get_sweep("done")
    assert (info.status, info.counts["COMPLETE"], info.config["budget"]["n_trials"]) == (
        "FINISHED",
        5,
        5,
    )

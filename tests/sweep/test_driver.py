import threading
import time
from pathlib import Path

import pandas as pd
import pytest
import ray

from storage import Store, SweepNotFoundError
from sweep import ConfigError, _remote, parse_config, run_sweep, validate_before_ray
from sweep._hardware import REFERENCE_TIMINGS
from trials import ORDERS, TaskError, TrialPruned

FAST_TRIAL = {"finetune_epochs": 1, "qat_epochs": 1, "calibration_batches": 2, "latency_repeats": 3}


def _config(name: str, task: str = "digits", n_trials: int = 6, **extra: object):
    return parse_config(
        {"name": name, "task": task, "budget": {"n_trials": n_trials}, "trial": FAST_TRIAL, **extra}
    )


def test_sweep_records_every_trial_and_a_front(local_ray: None, tmp_path: Path) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    progress = run_sweep(_config("drv"), store)
    assert progress.done == 6 and progress.failed == 0
    trials = store.trials("drv")
    assert list(trials["number"]) == list(range(6))
    assert set(trials["state"]) == {"COMPLETE"}
    assert trials["accuracy"].between(0, 1).all() and (trials["latency_ms"] > 0).all()
    # The time on a worker and the time waiting, apart: they add up to the duration.
    assert (trials["run_s"] > 0).all() and (trials["queued_s"] >= 0).all()
    assert ((trials["run_s"] + trials["queued_s"] - trials["duration_s"]).abs() < 1e-6).all()
    layers = store.layers("drv")
    assert len(layers) == 6 * 4  # one row per trial and layer
    for _, row in trials.iterrows():
        assert row["recipe"]["order"] in ORDERS
        assert set(row["recipe"]["layers"]) == {"conv1.0", "conv2.0", "conv3.0", "fc"}
    front = store.pareto_front("drv")
    assert 1 <= len(front) <= 6
    assert store.get_sweep("drv").status == "FINISHED"
    # The fp32 baseline was measured once: its metrics and file sizes when the task was
    # described; its latency is the middle of the first trials' timings on this machine, which
    # later trials reuse.
    stored = store.get_sweep("drv").config
    assert set(trials["fp32_accuracy"]) == {stored["fp32_metrics"]["accuracy"]}
    assert set(trials["fp32_size_bytes"]) == {stored["fp32_sizes"][0]}
    [(measured_on, (median, _, _))] = stored["fp32_latency"].items()
    assert set(trials["measured_on"]) == {measured_on}
    # The figures of that single timing: the front was timed again when the sweep ended.
    timed_once = trials.sort_values("finished_at")["metrics"].map(
        lambda m: m.get("fp32_latency_ms_once", m["fp32_latency_ms"])
    )
    assert median == sorted(timed_once.head(REFERENCE_TIMINGS))[REFERENCE_TIMINGS // 2]
    assert (timed_once == median).sum() >= 2  # that trial's, and the trials asked after it


def test_a_raising_trial_is_stored_as_fail_and_the_sweep_goes_on(
    local_ray: None, tmp_path: Path
) -> None:
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    config = _config(
        "failing",
        task="tests.sweep.failing_task:make",
        n_trials=8,
        search_space={"amount": {"min": 0.0, "max": 0.8, "step": 0.2}},
    )
    run_sweep(config, store)
    trials: pd.DataFrame = store.trials("failing")
    assert len(trials) == 8
    fc = trials["recipe"].map(lambda r: r["layers"]["fc"]["amount"])
    failed = trials[trials["state"] == "FAIL"]
    assert 1 <= len(failed) < len(trials)  # the seeded sampler draws both kinds
    assert set(failed["number"]) == set(trials[fc > 0.7]["number"])
    assert failed["error"].str.contains("boom: classifier pruned past 70%").all()
    assert (trials[fc <= 0.7]["state"] == "COMPLETE").all()


def test_validation_before_ray() -> None:
    with pytest.raises(TaskError, match="cannot import 'no_such_module'"):
        validate_before_ray(_config("x", task="no_such_module:make"))
    with pytest.raises(ConfigError, match="objectives: 'f1' is not a trial metric"):
        validate_before_ray(_config("x", objectives={"f1": "max"}))
    # Settings the task's factory does not take: before Ray starts, naming what it takes.
    with pytest.raises(
        ConfigError, match=r"task_settings: .*'bogus' \(the task 'digits' takes: seed"
    ):
        validate_before_ray(_config("x", task_settings={"bogus": 1}))
    validate_before_ray(_config("x", task_settings={"seed": 3}))


def test_a_users_own_task_runs_through_a_sweep(local_ray: None, tmp_path: Path) -> None:
    """examples/user_task.py: a Linear-only model loaded by import path, on Ray workers."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    config = _config("user", task="examples.user_task:make_task", n_trials=4)
    progress = run_sweep(config, store)
    trials = store.trials("user")
    assert progress.failed == 0 and set(trials["state"]) == {"COMPLETE"}, trials["error"].tolist()
    layers = set(trials.iloc[0]["recipe"]["layers"])
    assert layers == {"body.0", "body.2", "body.4", "classifier"}
    assert (trials["fp32_accuracy"] > 0.5).all()


def test_a_stop_verdict_reaches_the_trial_at_the_step_it_judged(local_ray: None) -> None:
    """The worker waits for the driver's verdict on each report, so a stopped trial does not
    train another epoch first."""
    monitor = ray.remote(_remote.TrialMonitor).remote()
    judged: list[tuple[int, int]] = []
    stop_driver = threading.Event()

    def driver() -> None:  # what EarlyStopping.judge does: judge step 1 hopeless
        while not stop_driver.is_set():
            for number, step, _ in ray.get(monitor.drain.remote("s")):
                judged.append((number, step))
                monitor.decide.remote("s", number, step, step >= 1)
            time.sleep(0.02)

    thread = threading.Thread(target=driver)
    thread.start()
    try:
        report = _remote.reporter(monitor, "s", 7)
        report(0, {"accuracy": 0.9})  # judged: go on
        with pytest.raises(TrialPruned, match="stopped early at step 1"):
            report(1, {"accuracy": 0.1})
    finally:
        stop_driver.set()
        thread.join()
    assert judged == [(7, 0), (7, 1)]


def test_a_driver_with_long_trials_keeps_writing_its_sweep(
    local_ray: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A heartbeat: `sweep status` tells a live sweep with long trials from a dead driver."""
    monkeypatch.setenv("SWEEP_HEARTBEAT_S", "0.3")
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    config = parse_config(
        {
            "name": "beat",
            "task": "synthetic",
            "task_settings": {"n_layers": 2, "trial_seconds": 3.0},
            "budget": {"n_trials": 1},
        }
    )
    runner = threading.Thread(target=run_sweep, args=(config, store))
    runner.start()
    seen = set()
    while runner.is_alive():
        try:
            info = store.get_sweep("beat")
        except SweepNotFoundError:  # not created yet
            time.sleep(0.05)
            continue
        if info.counts["COMPLETE"] == 0:
            seen.add(info.updated_at)
        time.sleep(0.1)
    runner.join()
    # Created, RUNNING trial recorded, then heartbeats while the 3-s trial ran.
    assert len(seen) >= 4, seen
    assert store.get_sweep("beat").status == "FINISHED"


def test_the_progress_says_what_happens_before_the_first_trial(
    local_ray: None, tmp_path: Path
) -> None:
    """A task that takes a while to build: its own report reaches the progress callback from
    the worker, and the phase is cleared before the trials run."""
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    seen: list[tuple[str | None, int]] = []
    config = _config("phases", task="tests.sweep.phase_task:make", n_trials=2)
    run_sweep(config, store, on_progress=lambda p: seen.append((p.phase, p.done)))
    phases = [phase for phase, _ in seen]
    assert "warming up the user's model" in phases
    first_trial = phases.index(None)
    assert all(phase is not None for phase in phases[:first_trial])
    assert all(phase is None and done >= 0 for phase, done in seen[first_trial:])
    assert seen[-1] == (None, 2)

"""The front timed again: at the end of a sweep, and with `sweep remeasure NAME`."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import ray

from storage import Store, TrialRecord
from sweep import parse_config, run_sweep
from sweep._remeasure import FrontModels
from tests.sweep.cli_runner import run_cli

NAME = "again"
# A small digits sweep: no fine-tuning, few timing runs, and a short bound on timing again.
CONFIG = {
    "name": NAME,
    "task": "digits",
    "budget": {"n_trials": 4},
    "trial": {"finetune_epochs": 0, "calibration_batches": 1},
    "latency": {"warmup": 1, "repeats": 3, "remeasure_s": 2.0},
}


@pytest.fixture(scope="module")
def swept(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """The URL of a store holding the sweep, run once for the module."""
    url = f"sqlite:///{tmp_path_factory.mktemp('remeasure') / 's.db'}"
    with Store(url) as store:
        run_sweep(parse_config(CONFIG), store)
    yield url


def _timed_again(trials: pd.DataFrame) -> pd.DataFrame:
    return trials[trials["latency_rounds"].notna()]


def test_the_end_of_a_sweep_times_its_front_again_and_keeps_its_files(swept: str) -> None:
    with Store(swept) as store:
        trials = store.trials(NAME)
        kept = store.artifacts(NAME)
        front = set(store.pareto_front(NAME)["number"])
    again = _timed_again(trials)
    # The files of the front and of the trials near it (within the timing slack: they may join
    # it when timed again) were kept; the front's trials were timed again (and any that joined
    # it as the figures moved), all from their kept files.
    assert len(again) >= 1
    assert front <= set(again["number"]) <= set(kept)
    assert {runtime for runtime, _ in kept.values()} == {"onnxruntime"}
    assert (again["speedup_low"] <= again["speedup"]).all()
    assert (again["speedup"] <= again["speedup_high"]).all()
    assert (again["latency_rounds"] >= 2).all()
    for metrics in again["metrics"]:
        assert metrics["speedup_low"] <= metrics["speedup"] <= metrics["speedup_high"]
        assert metrics["remeasure_s"] > 0
        assert metrics["speedup_once"] > 0  # the single timing's figure, kept beside
    # The others keep the figures of their single timing, without an interval.
    rest = trials[~trials["number"].isin(again["number"])]
    assert rest["speedup_low"].isna().all() and (rest["speedup"] > 0).all()


def test_sweep_remeasure_times_the_stored_front_again(
    swept: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    with Store(swept) as store:
        before = _timed_again(store.trials(NAME)).set_index("number")
    args = ("remeasure", NAME, "--storage", swept, "--time-s", "1", "--precision", "0.05")
    code, out, err = run_cli(monkeypatch, capsys, *args)
    assert code == 0, err
    assert f"Pareto front of {NAME}" in out
    assert "x (" in out  # a speedup shown with its interval: "3.30x (3.10-3.50)"
    with Store(swept) as store:
        after = _timed_again(store.trials(NAME)).set_index("number")
        front = store.pareto_front(NAME)
    assert set(after.index) == set(before.index)
    # New figures, stored: the metrics documents say the same as the columns.
    assert not after["speedup"].equals(before["speedup"])
    for number, row in after.iterrows():
        assert row["metrics"]["speedup"] == row["speedup"], number
        # Still the first timing's, not the previous remeasure's.
        assert row["metrics"]["speedup_once"] == before.loc[number, "metrics"]["speedup_once"]
    code, out, err = run_cli(monkeypatch, capsys, *args, "--format", "json")
    assert code == 0, err
    assert '"speedup_low"' in out and len(front) >= 1


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("nope",), "nope"),
        ((NAME, "--time-s", "0"), "--time-s: must be > 0"),
        ((NAME, "--precision", "2"), "--precision: must be between 0 and 1"),
    ],
)
def test_bad_input_is_one_error_line(
    swept: str,
    args: tuple[str, ...],
    message: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, err = run_cli(monkeypatch, capsys, "remeasure", *args, "--storage", swept)
    assert code == 2
    assert err.startswith("error:") and message in err and "Traceback" not in err
    assert out == ""


def _stored_sweep(url: str) -> None:
    """A sweep with five COMPLETE trials and no model files: 0 and 1 on the front, 2 dominated,
    3 behind 1 by less than the timing slack (30% slower), 4 by more (60%)."""
    config = parse_config({"name": "bare", "task": "digits"})
    with Store(url) as store:
        store.create_sweep("bare", config.model_dump(mode="json"), dict(config.objectives))
        points = [(0.9, 100, 2.0), (0.8, 50, 1.0), (0.7, 200, 3.0), (0.8, 50, 1.3), (0.8, 50, 1.6)]
        store.record_trials(
            "bare",
            [
                TrialRecord(
                    number=n,
                    state="COMPLETE",
                    recipe={"order": "prune_ptq", "layers": {}},
                    metrics={"accuracy": a, "compressed_bytes": b, "latency_ms": ms},
                )
                for n, (a, b, ms) in enumerate(points)
            ],
        )


def test_a_sweep_without_stored_models_is_one_error_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _stored_sweep(url)
    code, out, err = run_cli(monkeypatch, capsys, "remeasure", "bare", "--storage", url)
    assert code == 2
    assert err.startswith("error: bare: no model file of its front is stored")
    assert "Traceback" not in err and out == ""


def test_the_driver_keeps_the_files_of_the_front_only(local_ray: None, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 's.db'}"
    _stored_sweep(url)
    with Store(url) as store:
        front = FrontModels(store, "bare", {"accuracy": "max", "compressed_bytes": "min",
                                            "latency_ms": "min"})  # fmt: skip
        for number in range(5):
            front.add(number, ray.put(f"model {number}".encode()))
        front.add(5, None)  # an analytic task's trial: no file
        front.stored()  # the first check reads the front at once
        # 3 may join the front once the timings move: its file is kept too.
        assert sorted(front.refs) == [0, 1, 3]
        assert front.files() == {0: b"model 0", 1: b"model 1", 3: b"model 3"}
        assert store.pareto_front("bare")["number"].tolist() == [0, 1]

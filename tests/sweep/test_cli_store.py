"""The query commands (trials, pareto, layers, export) on stores built directly with
``storage.Store``: no sweep runs, so these are fast. Commands run in-process through
``sweep.cli.main()`` (exit codes and stderr as a user sees them); one runs as a subprocess."""

from __future__ import annotations

import dataclasses
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import optuna
import pandas as pd
import pytest

from storage import Store, TrialRecord
from tests.sweep.cli_runner import run_cli

ROOT = Path(__file__).resolve().parents[2]
OBJECTIVES = {"accuracy": "max", "compressed_bytes": "min"}
CONFIG = {
    "search_space": {
        "amount": {"min": 0.0, "max": 0.9, "step": 0.05},
        "orders": ["prune_ptq", "prune_qat"],
        "granularities": ["per_tensor", "per_channel"],
    }
}


def _record(
    number: int, state: str, layers: dict[str, float], rng: np.random.Generator
) -> TrialRecord:
    pruned = float(np.mean(list(layers.values())))
    metrics = {
        "accuracy": round(0.99 - 0.25 * pruned**2 + float(rng.normal(0, 0.005)), 4),
        "compressed_bytes": int(50_000 * (1 - pruned)) + int(rng.integers(0, 2_000)),
        "latency_ms": round(1.0 + 2 * float(rng.random()), 3),
        "my_metric": float(number),
    }
    recipe = {
        "schema_version": 1,
        "order": "prune_qat" if number % 2 else "prune_ptq",
        "granularity": "per_channel" if number % 3 else "per_tensor",
        "layers": {
            name: {"amount": amount, "method": "unstructured"} for name, amount in layers.items()
        },
    }
    return TrialRecord(
        number=number,
        state=state,
        recipe=recipe,
        metrics=metrics if state != "RUNNING" else {},
        intermediate={0: 0.5, 1: metrics["accuracy"]} if state == "PRUNED" else {},
        error="boom" if state == "FAIL" else None,
    )


def _sweep(store: Store, name: str, layers: tuple[str, ...], seed: int) -> None:
    rng = np.random.default_rng(seed)
    store.create_sweep(name, CONFIG, OBJECTIVES)
    states = ["COMPLETE"] * 6 + ["PRUNED", "FAIL"]
    records = [
        _record(
            n,
            states[n % len(states)],
            {k: round(float(rng.uniform(0, 0.9)), 2) for k in layers},
            rng,
        )
        for n in range(40)
    ]
    records.append(_record(40, "RUNNING", dict.fromkeys(layers, 0.5), rng))
    store.record_trials(name, records)


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    with Store(url) as store:
        _sweep(store, "a", ("conv1", "conv2", "fc"), seed=1)
        _sweep(store, "b", ("conv1", "conv2", "head"), seed=2)
        _sweep(store, "c", ("encoder", "decoder"), seed=3)
    return url


@pytest.fixture
def run(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], db: str):  # type: ignore[no-untyped-def]
    def invoke(*args: str) -> tuple[int, str, str]:
        return run_cli(monkeypatch, capsys, *args, "--storage", db)

    return invoke


def test_trials_filters_and_formats(run, db: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run(
        "trials", "a", "--where", "accuracy >= 0.95", "--state", "COMPLETE", "--format", "json"
    )
    assert code == 0, err
    listed = json.loads(out)
    expected = Store(db).trials("a", states=["COMPLETE"], where="accuracy >= 0.95")
    assert [t["number"] for t in listed] == expected["number"].tolist() != []
    assert all(t["accuracy"] >= 0.95 and t["state"] == "COMPLETE" for t in listed)
    assert listed[0]["recipe"]["layers"]["conv1"]["method"] == "unstructured"

    code, out, _ = run("trials", "a", "--state", "PRUNED", "--state", "FAIL", "--format", "csv")
    frame = pd.read_csv(pd.io.common.StringIO(out))
    assert set(frame["state"]) == {"PRUNED", "FAIL"}
    assert json.loads(frame["recipe"][0])["order"] in ("prune_ptq", "prune_qat")

    code, out, _ = run("trials", "a")
    assert code == 0 and "Trials of a" in out and "RUNNING" in out

    target = tmp_path / "trials.csv"
    code, out, err = run("trials", "a", "-o", str(target))  # format from the extension
    assert code == 0 and out == "" and f"wrote 41 rows to {target}" in err
    assert len(pd.read_csv(target)) == 41


def test_pareto_json_parquet_and_which_configurations_beat_x(run, db: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    store = Store(db)
    code, out, err = run("pareto", "a", "--format", "json")
    assert code == 0, err
    assert [t["number"] for t in json.loads(out)] == store.pareto_front("a")["number"].tolist()

    parquet = tmp_path / "front.parquet"
    code, _, err = run("pareto", "a", "--format", "parquet", "-o", str(parquet))
    assert code == 0, err
    frame = pd.read_parquet(parquet)
    front = store.pareto_front("a")
    assert frame["number"].tolist() == front["number"].tolist()
    assert frame["compressed_bytes"].tolist() == front["compressed_bytes"].tolist()
    assert json.loads(frame["recipe"][0]) == front["recipe"][0]
    assert str(frame["started_at"].dtype).startswith("datetime64")

    # Which configurations beat X: the CLI and pandas agree, and every row satisfies X.
    where = ["accuracy >= 0.95", "latency_ms < 2.5"]
    code, out, _ = run("pareto", "a", "--where", where[0], "--where", where[1], "--format", "json")
    beating = json.loads(out)
    expected = store.pareto_front("a", where=where)
    assert [t["number"] for t in beating] == expected["number"].tolist() != []
    assert all(t["accuracy"] >= 0.95 and t["latency_ms"] < 2.5 for t in beating)


def test_latencies_from_several_hardware_classes_are_said_to_be(run, db: str) -> None:  # type: ignore[no-untyped-def]
    rng = np.random.default_rng(5)
    layers = {"conv1": 0.2, "fc": 0.1}
    records = [
        dataclasses.replace(
            _record(n, "COMPLETE", layers, rng),
            measured_on=f"x86_64 cpu {n % 2}, torch 2.13.0 torchscript, onednn, 1 thread",
            latency_node=f"node{n % 2}",
        )
        for n in range(4)
    ]
    with Store(db) as store:
        store.create_sweep("mixed", CONFIG, OBJECTIVES)
        store.record_trials("mixed", records)
    for command in ("trials", "pareto"):
        code, out, err = run(command, "mixed")
        assert code == 0, err
        assert "measured on 2 hardware classes" in err and '--where "measured_on ==' in err
        assert "measured_on" in out  # the table shows the column when classes differ
    code, out, err = run("pareto", "mixed", "--where", "latency_node == 'node1'")
    assert code == 0 and "hardware classes" not in err and "measured_on" not in out
    code, _, err = run("trials", "a")  # one class (none recorded): nothing to say
    assert code == 0 and "hardware classes" not in err


def test_layers_over_the_front_and_compared(run, db: str) -> None:  # type: ignore[no-untyped-def]
    store = Store(db)
    code, out, err = run("layers", "a", "--format", "json")
    assert code == 0, err
    rows = json.loads(out)
    summary = store.layer_summary("a")
    assert [r["layer"] for r in rows] == ["conv1", "conv2", "fc"]
    front = store.pareto_front("a")
    layers = store.layers("a")
    conv1 = layers[(layers["layer"] == "conv1") & layers["number"].isin(front["number"])]
    assert rows[0]["amount_min"] == conv1["amount"].min()
    assert rows[0]["amount_median"] == pytest.approx(conv1["amount"].median())
    assert rows[0]["amount_max"] == conv1["amount"].max()
    best = int(front.sort_values("accuracy", ascending=False)["number"].iloc[0])
    assert rows[0]["amount_at_best"] == conv1[conv1["number"] == best]["amount"].iloc[0]
    assert rows == json.loads(summary.to_json(orient="records"))

    code, out, _ = run("layers", "a", "--all", "--format", "json")
    assert json.loads(out)[0]["trials"] == len(store.trials("a", states=["COMPLETE"]))

    code, out, _ = run("layers", "a")
    words = " ".join(out.split())  # the title wraps at the table's width
    assert code == 0 and "over its Pareto front" in words and f"trial {best}" in words

    code, out, err = run("layers", "a", "--compare", "b", "--format", "json")
    assert code == 0, err
    compared = json.loads(out)
    assert [r["layer"] for r in compared] == ["conv1", "conv2"]  # only layers in both
    other = store.layer_summary("b").set_index("layer")
    assert compared[1]["amount_median[b]"] == other.loc["conv2", "amount_median"]
    assert (
        compared[1]["amount_median[a]"] == summary.set_index("layer").loc["conv2", "amount_median"]
    )
    assert list(compared[0]) == [
        "layer",
        *(f"{column}[{sweep}]" for column in summary.columns[1:] for sweep in ("a", "b")),
    ]
    code, out, _ = run("layers", "a", "--compare", "b")
    assert code == 0 and "amount_at_best[b]" in out


def test_export_to_optuna(run, db: str, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    target = f"sqlite:///{tmp_path / 'optuna.db'}"
    code, _, err = run("export", "a", "--optuna-storage", target)
    assert code == 0, err
    assert "exported 40 trials" in err and "1 RUNNING trials left out" in err

    study = optuna.load_study(study_name="a", storage=target)
    assert [d.name for d in study.directions] == ["MAXIMIZE", "MINIMIZE"]
    assert study.metric_names == ["accuracy", "compressed_bytes"]
    code, out, _ = run("pareto", "a", "--format", "json")
    front = {t["number"] for t in json.loads(out)}
    assert {t.user_attrs["sweep_number"] for t in study.best_trials} == front

    trials = {t.user_attrs["sweep_number"]: t for t in study.trials}
    stored = Store(db).trials("a").set_index("number")
    assert len(trials) == 40
    for number, trial in trials.items():
        row = stored.loc[number]
        assert trial.state.name == row["state"]
        assert trial.params["order"] == row["recipe"]["order"]
        assert trial.params["amount:fc"] == row["recipe"]["layers"]["fc"]["amount"]
        assert trial.user_attrs["my_metric"] == number
        assert trial.user_attrs["recipe"] == row["recipe"]
        if row["state"] == "COMPLETE":
            assert trial.values == [row["accuracy"], row["compressed_bytes"]]
        else:
            assert trial.values is None
        if row["state"] == "PRUNED":
            assert trial.intermediate_values == {0: 0.5, 1: row["accuracy"]}
        if row["state"] == "FAIL":
            assert trial.user_attrs["error"] == "boom"
    distribution = study.trials[0].distributions["amount:conv1"]
    assert isinstance(distribution, optuna.distributions.FloatDistribution)
    assert (distribution.low, distribution.high) == (0.0, 0.9)
    assert study.trials[0].distributions[
        "granularity"
    ] == optuna.distributions.CategoricalDistribution(["per_tensor", "per_channel"])

    code, _, err = run("export", "a", "--optuna-storage", target)
    assert code == 2 and "already exists" in err and "--replace" in err
    assert len(err.strip().splitlines()) == 1
    code, _, err = run("export", "a", "--optuna-storage", target, "--replace")
    assert code == 0, err
    assert len(optuna.load_study(study_name="a", storage=target).trials) == 40
    code, _, err = run("export", "b", "--optuna-storage", target)  # a second study, same file
    assert code == 0, err
    assert set(optuna.study.get_all_study_names(target)) == {"a", "b"}


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["trials", "ghost"], "sweep 'ghost' not found"),
        (["pareto", "ghost"], "sweep 'ghost' not found"),
        (["layers", "ghost"], "sweep 'ghost' not found"),
        (["layers", "a", "--compare", "ghost"], "sweep 'ghost' not found"),
        (["export", "ghost", "--optuna-storage", "sqlite://"], "sweep 'ghost' not found"),
        (["trials", "a", "--where", "accuracy >>= 0.9"], "invalid --where expression"),
        (["pareto", "a", "--where", "speed > 1"], "unknown name 'speed'"),
        (["layers", "a", "--where", "order > 'x'"], "only == and != apply"),
        (["trials", "a", "--state", "DONE"], "unknown trial state"),
        (["pareto", "a", "--format", "parquet"], "--format parquet writes a binary file"),
        (["trials", "a", "--format", "xml"], "--format: 'xml' is not one of"),
        (["layers", "a", "--compare", "c"], "have no layer in common"),
        (["layers", "a", "--compare", "a"], "is the sweep itself"),
        (["pareto", "a", "--objective", "accuracy:up"], "--objective"),
        (["export", "a", "--optuna-storage", "mysql+nope://x"], "--optuna-storage: cannot open"),
        (["pareto", "a", "-o", "/nonexistent-dir/front.json"], "-o: cannot write"),
    ],
)
def test_user_errors_exit_2_with_one_line(run, args: list[str], expected: str) -> None:  # type: ignore[no-untyped-def]
    code, out, err = run(*args)
    assert code == 2, (out, err)
    lines = err.strip().splitlines()
    assert len(lines) == 1 and expected in lines[0], err
    assert lines[0].startswith("error: ") and "Traceback" not in err


def test_as_a_subprocess(db: str, tmp_path: Path) -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}

    def sweep(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "sweep", *args, "--storage", db],
            cwd=tmp_path,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )

    failed = sweep("pareto", "a", "--format", "parquet")
    assert failed.returncode == 2 and "Traceback" not in failed.stderr
    assert failed.stderr.strip().splitlines() == [
        "error: --format parquet writes a binary file: add -o FILE.parquet"
    ]
    shown = sweep("layers", "a", "--format", "csv")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.splitlines()[0] == (
        "layer,trials,amount_min,amount_median,amount_max,amount_at_best"
    )

"""Contract of :class:`storage.Store`, run against every backend."""

from __future__ import annotations

import math
from datetime import datetime, timedelta, timezone

import pandas as pd
import pytest
import sqlalchemy as sa
from storage_helpers import T0, make_recipe, make_record

from storage import (
    METRIC_COLUMNS,
    TRIAL_STATES,
    DuplicateSweepError,
    StorageError,
    Store,
    SweepNotFoundError,
    TrialRecord,
)

OBJECTIVES = {"accuracy": "max", "size_bytes": "min"}
TRIAL_COLUMNS = [
    "number",
    "state",
    *METRIC_COLUMNS,
    "order",
    "granularity",
    "queued_s",
    "run_s",
    "duration_s",
    "worker",
    "attempt",
    "measured_on",
    "latency_node",
    "error",
    "started_at",
    "finished_at",
    "recipe",
    "metrics",
    "timings",
]


def test_public_constants() -> None:
    assert TRIAL_STATES == ("RUNNING", "COMPLETE", "PRUNED", "FAIL")
    assert METRIC_COLUMNS[:3] == ("accuracy", "fp32_accuracy", "accuracy_drop")
    assert len(METRIC_COLUMNS) == len(set(METRIC_COLUMNS)) == 20
    assert METRIC_COLUMNS[-5:-3] == ("zero_fraction", "removed_fraction")
    assert METRIC_COLUMNS[-3:] == ("speedup_low", "speedup_high", "latency_rounds")


def test_create_and_get_sweep(store: Store) -> None:
    before = datetime.now(timezone.utc)
    store.create_sweep("resnet", {"model": "resnet18", "trials": 10}, OBJECTIVES)
    info = store.get_sweep("resnet")
    assert info.name == "resnet"
    assert info.status == "RUNNING"
    assert info.config == {"model": "resnet18", "trials": 10}
    assert info.objectives == OBJECTIVES
    assert list(info.objectives) == ["accuracy", "size_bytes"]  # order kept
    assert info.counts == {state: 0 for state in TRIAL_STATES}
    assert info.created_at.tzinfo is not None
    assert before - timedelta(seconds=5) <= info.created_at <= datetime.now(timezone.utc)


def test_list_sweeps(store: Store) -> None:
    assert store.list_sweeps() == []
    for name in ("b", "a", "c"):
        store.create_sweep(name, {}, OBJECTIVES)
    store.record_trials("a", [make_record(0), make_record(1, "PRUNED")])
    sweeps = store.list_sweeps()
    assert [sweep.name for sweep in sweeps] == ["b", "a", "c"]
    assert sweeps[1].counts == {"RUNNING": 0, "COMPLETE": 1, "PRUNED": 1, "FAIL": 0}
    assert sweeps[0].counts == {state: 0 for state in TRIAL_STATES}


def test_duplicate_sweep(store: Store) -> None:
    store.create_sweep("dup", {}, OBJECTIVES)
    with pytest.raises(DuplicateSweepError) as excinfo:
        store.create_sweep("dup", {"other": 1}, OBJECTIVES)
    message = str(excinfo.value)
    assert "'dup'" in message and "--name" in message and "resume" in message
    assert "\n" not in message
    assert store.get_sweep("dup").config == {}


def test_replace_sweep_deletes_trials(store: Store) -> None:
    store.create_sweep("s", {"v": 1}, OBJECTIVES)
    store.record_trials("s", [make_record(i) for i in range(3)])
    store.create_sweep("s", {"v": 2}, {"accuracy": "max"}, replace=True)
    info = store.get_sweep("s")
    assert info.config == {"v": 2}
    assert info.objectives == {"accuracy": "max"}
    assert info.counts["COMPLETE"] == 0
    assert store.trials("s").empty
    assert store.layers("s").empty
    store.create_sweep("new", {}, OBJECTIVES, replace=True)  # replace of a missing sweep creates
    assert [s.name for s in store.list_sweeps()] == ["s", "new"]


def test_missing_sweep(store: Store) -> None:
    calls = [
        lambda: store.get_sweep("nope"),
        lambda: store.set_sweep_status("nope", "FINISHED"),
        lambda: store.update_sweep_config("nope", {"a": 1}),
        lambda: store.record_trials("nope", [make_record(0)]),
        lambda: store.record_trials("nope", []),
        lambda: store.trials("nope"),
        lambda: store.pareto_front("nope"),
        lambda: store.layers("nope"),
    ]
    for call in calls:
        with pytest.raises(SweepNotFoundError) as excinfo:
            call()
        assert "'nope'" in str(excinfo.value) and "sweep status" in str(excinfo.value)
        assert excinfo.value.sweep == "nope"


def test_sweep_status(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    created = store.get_sweep("s")
    store.set_sweep_status("s", "INTERRUPTED")
    updated = store.get_sweep("s")
    assert updated.status == "INTERRUPTED"
    assert updated.updated_at >= created.updated_at
    with pytest.raises(StorageError, match="FINISHED"):
        store.set_sweep_status("s", "DONE")


def test_update_sweep_config_sets_keys_and_keeps_the_rest(store: Store) -> None:
    store.create_sweep("s", {"task": "digits", "baseline": {"old": 1}}, OBJECTIVES)
    store.update_sweep_config("s", {"baseline": {"a": 1.5, "b": [1, 2]}, "extra": "x"})
    assert store.get_sweep("s").config == {
        "task": "digits",
        "baseline": {"a": 1.5, "b": [1, 2]},
        "extra": "x",
    }
    with pytest.raises(StorageError, match="config"):
        store.update_sweep_config("s", {"bad": object()})
    assert store.get_sweep("s").config["extra"] == "x"  # a refused update changes nothing


@pytest.mark.parametrize(
    ("name", "config", "objectives", "match"),
    [
        ("", {}, OBJECTIVES, "non-empty"),
        ("x" * 201, {}, OBJECTIVES, "200"),
        ("s", {"f": object()}, OBJECTIVES, "JSON"),
        ("s", {}, {}, "non-empty"),
        ("s", {}, {"accuracy": "up"}, "'max' or 'min'"),
        ("s", {}, {"nonsense": "max"}, "accuracy"),
    ],
)
def test_create_sweep_validation(
    store: Store, name: str, config: dict[str, object], objectives: dict[str, str], match: str
) -> None:
    with pytest.raises(StorageError, match=match):
        store.create_sweep(name, config, objectives)
    assert store.list_sweeps() == []


def _values(store_url: str) -> list[tuple[int, int, float | None]]:
    engine = sa.create_engine(store_url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                sa.text(
                    "SELECT t.number, v.step, v.value FROM trial_values v "
                    "JOIN trials t ON t.id = v.trial_id ORDER BY t.number, v.step"
                )
            )
            return [(row[0], row[1], row[2]) for row in rows]
    finally:
        engine.dispose()


def test_record_insert_then_update(store: Store, store_url: str) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    running = [
        make_record(n, "RUNNING", recipe=make_recipe(["a", "b", "c"]), intermediate={0: 0.1})
        for n in range(3)
    ]
    store.record_trials("s", running)
    assert store.get_sweep("s").counts == {"RUNNING": 3, "COMPLETE": 0, "PRUNED": 0, "FAIL": 0}
    layers = store.layers("s")
    assert list(layers.columns) == ["number", "layer", "amount", "method", "granularity"]
    assert layers["layer"].tolist() == ["a", "b", "c"] * 3

    finished = [
        make_record(
            0,
            "COMPLETE",
            {"accuracy": 0.91, "size_bytes": 1234, "my_metric": 7.5},
            recipe=make_recipe(["x", "y"], order="prune_qat", amount=0.25),
            timings={"prune": 1.5, "eval": 0.25},
            worker="node-1",
            attempt=2,
            intermediate={0: 0.5, 1: 0.75, 2: float("nan")},
            run_s=12.5,
        ),
        make_record(1, "PRUNED", {"accuracy": 0.2}, intermediate={0: 0.2}),
        make_record(2, "FAIL", error="CUDA out of memory"),
        make_record(3, "COMPLETE", {"accuracy": 0.5}),  # new trial in the same batch
    ]
    store.record_trials("s", finished)
    assert store.get_sweep("s").counts == {"RUNNING": 0, "COMPLETE": 2, "PRUNED": 1, "FAIL": 1}

    frame = store.trials("s")
    assert frame["number"].tolist() == [0, 1, 2, 3]
    first = frame.iloc[0]
    assert first["state"] == "COMPLETE"
    assert first["accuracy"] == pytest.approx(0.91)
    assert first["size_bytes"] == 1234
    assert first["order"] == "prune_qat"
    assert first["worker"] == "node-1" and first["attempt"] == 2
    assert first["metrics"] == {"accuracy": 0.91, "size_bytes": 1234, "my_metric": 7.5}
    assert first["timings"] == {"prune": 1.5, "eval": 0.25}
    assert first["duration_s"] == pytest.approx(30.0)
    # 12.5 s of work on a worker; the rest it waited.
    assert (first["run_s"], first["queued_s"]) == pytest.approx((12.5, 17.5))
    assert math.isnan(frame.iloc[1]["run_s"]) and math.isnan(frame.iloc[1]["queued_s"])
    assert first["started_at"] == pd.Timestamp(T0)
    assert frame.iloc[2]["error"] == "CUDA out of memory"
    assert math.isnan(frame.iloc[2]["accuracy"])

    layers = store.layers("s")
    by_trial = layers.groupby("number")["layer"].apply(list).to_dict()
    assert by_trial == {
        0: ["x", "y"],
        1: ["conv1", "layer1.0.conv1", "fc"],
        2: ["conv1", "layer1.0.conv1", "fc"],
        3: ["conv1", "layer1.0.conv1", "fc"],
    }
    assert layers[layers["number"] == 0]["amount"].tolist() == [0.25, 0.25]
    assert _values(store_url) == [(0, 0, 0.5), (0, 1, 0.75), (0, 2, None), (1, 0, 0.2)]


def test_finished_trials_are_immutable_and_batches_atomic(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    store.record_trials("s", [make_record(0, "COMPLETE", {"accuracy": 0.9})])
    with pytest.raises(StorageError, match="already finished"):
        store.record_trials("s", [make_record(1), make_record(0, "COMPLETE", {"accuracy": 0.1})])
    frame = store.trials("s")
    assert frame["number"].tolist() == [0]  # trial 1 was rolled back with the batch
    assert frame["accuracy"].tolist() == [0.9]


@pytest.mark.parametrize(
    ("record", "match"),
    [
        (TrialRecord(number=0, state="DONE", recipe=make_recipe()), "unknown state"),
        (TrialRecord(number=-1, state="RUNNING", recipe=make_recipe()), ">= 0"),
        (make_record(0, metrics={"accuracy": "high"}), "must be a number"),  # type: ignore[dict-item]
        (make_record(0, metrics={"size_bytes": 10.5}), "whole number"),
        (make_record(0, recipe={"layers": {"a": {"method": "l1"}}}), "'amount'"),
        (make_record(0, recipe={"layers": {"a": {"amount": 0.1}}}), "'method'"),
        (make_record(0, recipe={"layers": ["a"]}), "must be a dict"),
        (make_record(0, recipe={"order": 3}), "must be a string"),
        (make_record(0, recipe={"layers": {"x" * 501: {"amount": 0.1, "method": "l1"}}}), "500"),
        (make_record(0, attempt=0), ">= 1"),
        (make_record(0, started_at="yesterday"), "datetime"),
        (make_record(0, intermediate={"a": 1.0}), "integers"),
    ],
)
def test_record_validation(store: Store, record: TrialRecord, match: str) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    with pytest.raises(StorageError, match=match) as excinfo:
        store.record_trials("s", [make_record(5), record])
    assert "\n" not in str(excinfo.value)
    assert store.trials("s").empty


def test_duplicate_numbers_in_one_batch(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    with pytest.raises(StorageError, match="more than once"):
        store.record_trials("s", [make_record(1), make_record(1)])


def test_sweeps_are_isolated(store: Store) -> None:
    store.create_sweep("a", {}, OBJECTIVES)
    store.create_sweep("b", {}, OBJECTIVES)
    store.record_trials("a", [make_record(n, metrics={"accuracy": 0.5}) for n in range(3)])
    store.record_trials("b", [make_record(0, metrics={"accuracy": 0.9})])
    assert store.trials("a")["number"].tolist() == [0, 1, 2]
    assert store.trials("b")["accuracy"].tolist() == [0.9]
    assert store.layers("b")["number"].unique().tolist() == [0]
    assert store.get_sweep("b").counts["COMPLETE"] == 1
    assert store.pareto_front("b", {"accuracy": "max"})["number"].tolist() == [0]


def test_trials_frame_columns_and_dtypes(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    empty = store.trials("s")
    assert list(empty.columns) == TRIAL_COLUMNS
    assert empty.empty
    recipe = make_recipe(["conv1"], granularity="per_tensor")
    store.record_trials("s", [make_record(0, metrics={"accuracy": 0.8}, recipe=recipe)])
    frame = store.trials("s")
    assert list(frame.columns) == TRIAL_COLUMNS
    assert frame.iloc[0]["recipe"] == recipe
    assert frame.iloc[0]["granularity"] == "per_tensor"
    assert frame.dtypes.to_dict() == empty.dtypes.to_dict()
    assert frame["size_bytes"].dtype == "Int64"
    assert frame["accuracy"].dtype == "float64"
    assert str(frame["started_at"].dtype) == "datetime64[us, UTC]"


def test_trials_states_filter(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    states = ["RUNNING", "COMPLETE", "PRUNED", "FAIL", "COMPLETE"]
    store.record_trials("s", [make_record(n, state) for n, state in enumerate(states)])
    assert store.trials("s", states=["COMPLETE"])["number"].tolist() == [1, 4]
    assert store.trials("s", states=["PRUNED", "FAIL"])["number"].tolist() == [2, 3]
    with pytest.raises(StorageError, match="unknown trial state"):
        store.trials("s", states=["DONE"])


def test_trials_pages_numbers_and_counts(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    states = ["COMPLETE", "FAIL"] * 10
    records = [
        make_record(n, state, metrics={"accuracy": n / 20} if state == "COMPLETE" else None)
        for n, state in enumerate(states)
    ]
    store.record_trials("s", records)
    page = store.trials("s", states=["COMPLETE"], where="accuracy >= 0.2", limit=3, offset=2)
    assert page["number"].tolist() == [8, 10, 12]
    newest = store.trials("s", limit=2, descending=True)
    assert newest["number"].tolist() == [19, 18]
    assert store.trials("s", numbers=[5, 3, 99])["number"].tolist() == [3, 5]
    assert store.trials("s", limit=0).empty
    assert store.count_trials("s") == 20
    assert store.count_trials("s", states=["COMPLETE"], where="accuracy >= 0.2") == 8
    with pytest.raises(StorageError, match="must not be negative"):
        store.trials("s", offset=-1)


def test_metric_values_reads_only_the_columns_asked(store: Store) -> None:
    store.create_sweep("s", {"feasible": ["accuracy >= 0.5"]}, OBJECTIVES)
    store.record_trials(
        "s",
        [
            make_record(0, metrics={"accuracy": 0.9, "size_bytes": 10}),
            make_record(1, "FAIL"),
            make_record(2, metrics={"accuracy": 0.4, "size_bytes": 5}),
        ],
    )
    values = store.metric_values("s", ["accuracy", "size_bytes"])
    assert list(values.columns) == ["number", "accuracy", "size_bytes"]
    assert values["number"].tolist() == [0, 2]
    assert values["size_bytes"].dtype == "Int64"
    assert store.metric_values("s", ["accuracy"], feasible_only=True)["number"].tolist() == [0]
    with pytest.raises(StorageError, match="unknown metric column"):
        store.metric_values("s", ["recipe"])


def test_ranked_sorts_in_the_database_and_leaves_out_trials_without_the_metric(
    store: Store,
) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    metrics = [
        {"accuracy": 0.9, "size_bytes": 30},
        {"accuracy": 0.95, "size_bytes": 10},
        {"accuracy": 0.97, "size_bytes": 10},  # ties on size: the more accurate first
        {"accuracy": 0.97, "size_bytes": 10},  # a full tie: the lower number first
        {"accuracy": 0.99},  # no size: never ranked by it
    ]
    store.record_trials("s", [make_record(n, metrics=m) for n, m in enumerate(metrics)])
    store.record_trials("s", [make_record(5, "FAIL")])
    order = [("size_bytes", "min"), ("accuracy", "max")]
    assert store.ranked("s", order, limit=10)["number"].tolist() == [2, 3, 1, 0]
    assert store.ranked("s", order, where="accuracy < 0.96")["number"].tolist() == [1]
    assert store.ranked("s", [("accuracy", "max")], limit=2)["number"].tolist() == [4, 2]
    assert list(store.ranked("s", order).columns) == TRIAL_COLUMNS
    with pytest.raises(StorageError, match="must be a metric column and max or min"):
        store.ranked("s", [("recipe", "max")])


def test_naive_datetimes_are_utc(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    naive = datetime(2026, 5, 6, 7, 8, 9)
    store.record_trials("s", [make_record(0, started_at=naive, finished_at=naive)])
    value = store.trials("s").iloc[0]["started_at"]
    assert value == pd.Timestamp(naive.replace(tzinfo=timezone.utc))


def test_batch_of_100_trials(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    layers = [f"block{i}.conv" for i in range(40)]
    running = [
        make_record(n, "RUNNING", recipe=make_recipe(layers), intermediate={0: 0.0})
        for n in range(100)
    ]
    store.record_trials("s", running)
    done = [
        make_record(
            n,
            "COMPLETE",
            {"accuracy": n / 100, "size_bytes": 1000 + n, "latency_ms": 1.0},
            recipe=make_recipe(layers, amount=n / 200),
            intermediate={step: step / 10 for step in range(5)},
        )
        for n in range(100)
    ]
    store.record_trials("s", done)
    assert store.get_sweep("s").counts["COMPLETE"] == 100
    layer_frame = store.layers("s")
    assert len(layer_frame) == 4000
    assert layer_frame[layer_frame["number"] == 99]["amount"].unique().tolist() == [99 / 200]
    assert len(store.pareto_front("s")) == 100  # accuracy and size both grow

"""``Store.layer_summary`` (how much each layer tolerates) and ``Store.intermediate_values``."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from storage_helpers import make_record

from storage import StorageError, Store, SweepNotFoundError, WhereError

OBJECTIVES = {"accuracy": "max", "size_bytes": "min"}
LAYERS = ("stem", "block.conv", "head")
SUMMARY_COLUMNS = [
    "layer",
    "trials",
    "amount_min",
    "amount_median",
    "amount_max",
    "amount_at_best",
]


def _recipe(amounts: dict[str, float]) -> dict[str, object]:
    return {
        "order": "prune_ptq",
        "granularity": "per_tensor",
        "layers": {
            name: {"amount": value, "method": "unstructured"} for name, value in amounts.items()
        },
    }


def _records() -> list:
    rng = np.random.default_rng(3)
    records = []
    for number in range(60):
        amounts = {name: round(float(rng.uniform(0, 0.9)), 2) for name in LAYERS}
        if number % 7 == 0:
            del amounts["head"]  # some trials leave a layer out
        pruned = sum(amounts.values()) / len(LAYERS)
        metrics = {
            "accuracy": round(0.99 - 0.3 * pruned**2 + float(rng.normal(0, 0.01)), 3),
            "size_bytes": int(10_000 * (1 - pruned)) + int(rng.integers(0, 500)),
            "latency_ms": 1.0 + float(rng.random()),
        }
        state = "FAIL" if number % 11 == 5 else "COMPLETE"
        records.append(make_record(number, state, metrics, recipe=_recipe(amounts)))
    return records


def _expected(store: Store, numbers: set[int]) -> pd.DataFrame:
    layers = store.layers("s")
    chosen = layers[layers["number"].isin(numbers)]
    trials = store.trials("s")
    trials = trials[trials["number"].isin(numbers)]
    best = trials.sort_values(["accuracy", "size_bytes", "number"], ascending=[False, True, True])
    best_number = int(best["number"].iloc[0])
    rows = []
    for name in LAYERS:
        amounts = chosen[chosen["layer"] == name]["amount"]
        at_best = chosen[(chosen["layer"] == name) & (chosen["number"] == best_number)]["amount"]
        rows.append(
            {
                "layer": name,
                "trials": len(amounts),
                "amount_min": amounts.min(),
                "amount_median": amounts.median(),
                "amount_max": amounts.max(),
                "amount_at_best": at_best.iloc[0] if len(at_best) else np.nan,
            }
        )
    return pd.DataFrame(rows)


def test_layer_summary_over_the_front(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    store.record_trials("s", _records())
    front = store.pareto_front("s")
    summary = store.layer_summary("s")
    assert list(summary.columns) == SUMMARY_COLUMNS
    assert summary["layer"].tolist() == list(LAYERS)  # recipe order
    expected = _expected(store, set(front["number"]))
    pd.testing.assert_frame_equal(summary, expected, check_dtype=False)
    assert summary["trials"].dtype == "int64" and summary["amount_min"].dtype == "float64"
    assert summary.attrs["trials"] == len(front)
    assert summary.attrs["best_number"] == int(front.iloc[0]["number"])  # most accurate first
    assert summary.attrs["best_accuracy"] == pytest.approx(front["accuracy"].max())
    assert summary.attrs["front_only"] is True
    assert summary.attrs["objectives"] == OBJECTIVES


def test_layer_summary_over_all_complete_trials_and_filtered(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    store.record_trials("s", _records())
    trials = store.trials("s", states=["COMPLETE"])
    every = store.layer_summary("s", front_only=False)
    pd.testing.assert_frame_equal(every, _expected(store, set(trials["number"])), check_dtype=False)
    assert every.attrs["trials"] == len(trials) and every.attrs["front_only"] is False

    where = ["size_bytes < 6000", "accuracy >= 0.9"]
    objectives = {"accuracy": "max", "latency_ms": "min"}
    front = store.pareto_front("s", objectives, where=where)
    summary = store.layer_summary("s", objectives, where=where)
    assert summary.attrs["trials"] == len(front) > 0
    layers = store.layers("s")
    chosen = layers[layers["number"].isin(front["number"])]
    assert summary.set_index("layer")["amount_max"].to_dict() == (
        chosen.groupby("layer")["amount"].max().to_dict()
    )


def test_layer_summary_empty_and_errors(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    empty = store.layer_summary("s")
    assert list(empty.columns) == SUMMARY_COLUMNS and empty.empty
    assert empty.attrs["best_number"] is None
    with pytest.raises(SweepNotFoundError):
        store.layer_summary("nope")
    with pytest.raises(WhereError):
        store.layer_summary("s", where="accuracy >>= 1")
    with pytest.raises(StorageError, match="unknown objective"):
        store.layer_summary("s", {"speed": "max"})


def test_intermediate_values(store: Store) -> None:
    store.create_sweep("s", {}, OBJECTIVES)
    store.record_trials(
        "s",
        [
            make_record(1, "PRUNED", intermediate={0: 0.5, 1: float("nan")}),
            make_record(0, "COMPLETE", intermediate={2: 0.25, 0: 0.125}),
        ],
    )
    values = store.intermediate_values("s")
    assert list(values.columns) == ["number", "step", "value"]
    assert values[["number", "step"]].values.tolist() == [[0, 0], [0, 2], [1, 0], [1, 1]]
    assert values["value"].tolist()[:3] == [0.125, 0.25, 0.5]
    assert np.isnan(values["value"].iloc[3])
    with pytest.raises(SweepNotFoundError):
        store.intermediate_values("nope")

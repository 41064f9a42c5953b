"""Pareto fronts: the numpy filter against a brute-force reference, and ``Store.pareto_front``."""

from __future__ import annotations

import numpy as np
import pytest
from storage_helpers import brute_force_front, make_recipe, make_record

from storage import FEASIBLE_KEY, METRIC_COLUMNS, StorageError, Store, TrialRecord
from storage._pareto import non_dominated, to_minimization


def _random_points(rng: np.random.Generator, n: int, k: int, kind: str) -> np.ndarray:
    if kind == "ties":  # few distinct values: many equal coordinates and duplicate points
        return rng.integers(0, 4, size=(n, k)).astype(float)
    if kind == "duplicates":
        base = rng.random((max(n // 3, 1), k))
        return base[rng.integers(0, len(base), size=n)]
    if kind == "front":  # every point on a simplex: most are non-dominated
        points = rng.random((n, k))
        return points / points.sum(axis=1, keepdims=True)
    return rng.random((n, k))


@pytest.mark.parametrize("k", [1, 2, 3, 4])
@pytest.mark.parametrize("kind", ["uniform", "ties", "duplicates", "front"])
def test_non_dominated_matches_brute_force(k: int, kind: str) -> None:
    rng = np.random.default_rng(1000 * k + len(kind))
    for n in (0, 1, 2, 3, 7, 40, 250):
        points = _random_points(rng, n, k, kind)
        expected = brute_force_front(points)
        actual = non_dominated(points)
        assert actual.dtype == bool and actual.shape == (n,)
        np.testing.assert_array_equal(actual, expected, err_msg=f"n={n} k={k} kind={kind}")


def test_non_dominated_edge_cases() -> None:
    same = np.ones((5, 3))
    assert non_dominated(same).all()  # identical points are all kept
    points = np.array([[0.0, 1.0], [0.0, 1.0], [1.0, 0.0], [0.0, 2.0], [1.0, 1.0]])
    assert non_dominated(points).tolist() == [True, True, True, False, False]
    with_inf = np.array([[-np.inf, 5.0], [0.0, 0.0], [np.inf, -1.0]])
    assert non_dominated(with_inf).tolist() == [True, True, True]
    with pytest.raises(ValueError, match="NaN"):
        non_dominated(np.array([[np.nan, 1.0]]))


def test_to_minimization() -> None:
    points = to_minimization([(1.0, 2.0), (3.0, 4.0)], ["max", "min"])
    assert points.tolist() == [[-1.0, 2.0], [-3.0, 4.0]]


OBJECTIVE_SETS = [
    {"accuracy": "max", "size_bytes": "min"},
    {"size_bytes": "min", "accuracy": "max"},
    {"latency_ms": "min", "speedup": "max"},
    {"accuracy": "max", "latency_ms": "min", "sparsity": "max"},
    {"accuracy": "min", "latency_ms": "max", "size_bytes": "min"},
    {"accuracy": "max", "size_bytes": "min", "latency_ms": "min", "sparsity": "max"},
]
WHERES: list[tuple[str | None, object]] = [
    (None, lambda r: True),
    ("latency_ms < 5", lambda r: r.metrics.get("latency_ms", np.nan) < 5),
    ("order == 'prune_qat'", lambda r: r.recipe["order"] == "prune_qat"),
]


def _random_records(rng: np.random.Generator, n: int) -> list[TrialRecord]:
    records = []
    states = ["COMPLETE"] * 6 + ["RUNNING", "PRUNED", "FAIL"]
    for number in range(n):
        metrics: dict[str, float] = {
            "accuracy": float(rng.integers(80, 90)) / 100,  # coarse values: many ties
            "size_bytes": int(rng.integers(1, 8)) * 1000,
            "latency_ms": float(rng.integers(1, 10)),
            "speedup": float(rng.random()),
            "sparsity": round(float(rng.random()), 1),
        }
        for name in list(metrics):
            if rng.random() < 0.08:  # missing metric: NULL column
                del metrics[name]
        if rng.random() < 0.03:
            metrics["accuracy"] = float("nan")  # NaN is stored as NULL
        order = "prune_qat" if rng.random() < 0.5 else "prune_ptq"
        state = states[int(rng.integers(0, len(states)))]
        records.append(make_record(number, state, metrics, recipe=make_recipe(order=order)))
    # exact duplicates of a complete trial's point
    first = next(r for r in records if r.state == "COMPLETE")
    records.append(make_record(n, "COMPLETE", first.metrics, recipe=first.recipe))
    return records


def _expected(records: list[TrialRecord], objectives: dict[str, str], keep: object) -> set[int]:
    eligible = [
        r
        for r in records
        if r.state == "COMPLETE"
        and keep(r)  # type: ignore[operator]
        and all(not np.isnan(r.metrics.get(name, np.nan)) for name in objectives)
    ]
    if not eligible:
        return set()
    points = to_minimization(
        [[r.metrics[name] for name in objectives] for r in eligible], list(objectives.values())
    )
    mask = brute_force_front(points)
    return {r.number for r, on_front in zip(eligible, mask, strict=True) if on_front}


def test_pareto_front_matches_brute_force(store: Store) -> None:
    rng = np.random.default_rng(7)
    records = _random_records(rng, 150)
    store.create_sweep("s", {}, {"accuracy": "max", "size_bytes": "min"})
    store.record_trials("s", records)
    for objectives in OBJECTIVE_SETS:
        for where, keep in WHERES:
            front = store.pareto_front("s", objectives, where=where)
            expected = _expected(records, objectives, keep)
            assert set(front["number"]) == expected, (objectives, where)
            assert len(front) == len(expected)
            assert (front["state"] == "COMPLETE").all()
            first, direction = next(iter(objectives.items()))
            values = front[first].to_numpy(dtype=float)
            ordered = np.sort(values) if direction == "min" else np.sort(values)[::-1]
            np.testing.assert_array_equal(values, ordered)
    assert len(expected) > 1
    # Default objectives are the sweep's.
    default = store.pareto_front("s")
    explicit = store.pareto_front("s", {"accuracy": "max", "size_bytes": "min"})
    assert default["number"].tolist() == explicit["number"].tolist()


def test_pareto_front_keeps_ties_and_skips_nulls(store: Store) -> None:
    store.create_sweep("s", {}, {"accuracy": "max", "latency_ms": "min"})
    records = [
        make_record(0, metrics={"accuracy": 0.9, "latency_ms": 2.0}),
        make_record(1, metrics={"accuracy": 0.9, "latency_ms": 2.0}),  # tie with 0
        make_record(2, metrics={"accuracy": 0.8, "latency_ms": 1.0}),
        make_record(3, metrics={"accuracy": 0.8, "latency_ms": 3.0}),  # dominated
        make_record(4, metrics={"accuracy": 0.99}),  # no latency: excluded
        make_record(5, "RUNNING", metrics={"accuracy": 1.0, "latency_ms": 0.1}),
        make_record(6, "PRUNED", metrics={"accuracy": 1.0, "latency_ms": 0.1}),
    ]
    store.record_trials("s", records)
    front = store.pareto_front("s")
    assert front["number"].tolist() == [0, 1, 2]
    assert list(front.columns) == list(store.trials("s").columns)
    assert store.pareto_front("s", {"latency_ms": "min"})["number"].tolist() == [2]
    assert store.pareto_front("s", where="accuracy > 0.95").empty


def test_pareto_front_empty_sweep(store: Store) -> None:
    store.create_sweep("s", {}, {"accuracy": "max"})
    front = store.pareto_front("s")
    assert front.empty
    assert list(front.columns) == list(store.trials("s").columns)


@pytest.mark.parametrize(
    ("objectives", "match"),
    [
        ({"speed": "max"}, "unknown objective 'speed'"),
        ({"order": "max"}, "unknown objective 'order'"),
        ({"accuracy": "maximize"}, "'max' or 'min'"),
        ({}, "non-empty"),
        ({name: "max" for name in METRIC_COLUMNS[:5]}, "at most 4"),
    ],
)
def test_pareto_front_bad_objectives(store: Store, objectives: dict[str, str], match: str) -> None:
    store.create_sweep("s", {}, {"accuracy": "max"})
    with pytest.raises(StorageError, match=match) as excinfo:
        store.pareto_front("s", objectives)
    if "unknown objective" in match:
        assert "size_bytes" in str(excinfo.value)  # lists the valid names


def test_a_sweeps_own_constraints_keep_infeasible_trials_off_its_front(store: Store) -> None:
    store.create_sweep(
        "c", {FEASIBLE_KEY: ["sparsity >= 0.5"]}, {"accuracy": "max", "size_bytes": "min"}
    )
    store.record_trials(
        "c",
        [
            make_record(0, metrics={"accuracy": 0.9, "size_bytes": 100, "sparsity": 0.2}),
            make_record(1, metrics={"accuracy": 0.8, "size_bytes": 50, "sparsity": 0.6}),
            make_record(2, metrics={"accuracy": 0.7, "size_bytes": 60, "sparsity": 0.7}),
        ],
    )
    assert store.pareto_front("c")["number"].tolist() == [1]  # 0 is infeasible, 2 dominated
    assert store.pareto_front("c", feasible_only=False)["number"].tolist() == [0, 1]
    assert store.layer_summary("c").attrs["trials"] == 1
    assert store.layer_summary("c", feasible_only=False).attrs["trials"] == 2
    assert store.trials("c")["number"].tolist() == [0, 1, 2]  # listings show every trial


def test_near_front_keeps_what_no_trial_beats_by_more_than_the_slack(store: Store) -> None:
    rng = np.random.default_rng(11)
    objectives = {"accuracy": "max", "latency_ms": "min"}
    store.create_sweep("n", {}, objectives)
    records = [
        make_record(n, metrics={"accuracy": float(a), "latency_ms": float(ms)})
        for n, (a, ms) in enumerate(zip(rng.random(300), 1 + rng.random(300), strict=True))
    ]
    store.record_trials("n", records)
    slack = 0.2
    points = np.array([[-r.metrics["accuracy"], r.metrics["latency_ms"]] for r in records])
    worse = points * np.array([1.0, 1.0 + slack])  # every trial's latency 20% worse
    expected = {
        i
        for i in range(len(points))
        if not any(
            np.all(worse[j] <= points[i]) and np.any(worse[j] < points[i])
            for j in range(len(points))
        )
    }
    near = store.near_front("n", {"latency_ms": slack})
    assert set(near) == expected
    front = set(store.pareto_front("n")["number"])
    assert front < set(near)  # the front, and some that may join it
    assert set(store.near_front("n", {})) == front

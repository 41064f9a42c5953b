"""``--where`` expressions: parsing, filtering on every backend, and rejection of bad input."""

from __future__ import annotations

import pytest
from storage_helpers import make_recipe, make_record

from storage import METRIC_COLUMNS, Store, WhereError
from storage._where import WHERE_FIELDS, parse_where

TRIALS = [
    # number, state, metrics, order, granularity, worker
    (0, "COMPLETE", {"accuracy": 0.99, "latency_ms": 4.0}, "prune_ptq", "per_channel", "w1"),
    (1, "COMPLETE", {"accuracy": 0.97, "latency_ms": 6.0}, "prune_qat", "per_tensor", "w2"),
    (2, "PRUNED", {"accuracy": 0.50}, "prune_qat", "per_channel", None),
    (3, "COMPLETE", {"latency_ms": 2.0}, "prune_ptq", "per_tensor", "w1"),
    (10, "FAIL", {}, "prune_qat", "per_channel", "w2"),
    (11, "COMPLETE", {"accuracy": 0.98, "latency_ms": 4.5}, "prune_qat", "per_channel", "w1"),
]


@pytest.fixture
def filled(store: Store) -> Store:
    store.create_sweep("s", {}, {"accuracy": "max", "latency_ms": "min"})
    records = [
        make_record(
            number,
            state,
            metrics,
            recipe=make_recipe(order=order, granularity=granularity),
            worker=worker,
        )
        for number, state, metrics, order, granularity, worker in TRIALS
    ]
    store.record_trials("s", records)
    return store


@pytest.mark.parametrize(
    ("where", "expected"),
    [
        ("accuracy >= 0.97", [0, 1, 11]),
        ("accuracy>0.97", [0, 11]),
        ("latency_ms < 5", [0, 3, 11]),
        ("order == 'prune_qat'", [1, 2, 10, 11]),
        ('granularity != "per_channel"', [1, 3]),
        ("state == 'COMPLETE'", [0, 1, 3, 11]),
        ("state != 'COMPLETE'", [2, 10]),
        ("number >= 10", [10, 11]),
        ("number == 3", [3]),
        ("accuracy >= 0.97 and order == 'prune_qat'", [1, 11]),
        ("accuracy >= 0.97 AND latency_ms <= 4.5 and number < 11", [0]),
        (["accuracy >= 0.97", "latency_ms < 5"], [0, 11]),
        ([], [0, 1, 2, 3, 10, 11]),
        ("worker == 'w1'", [0, 3, 11]),
        ("worker != 'w1'", [1, 2, 10]),  # != keeps missing values
        ("accuracy != 0.5", [0, 1, 3, 10, 11]),
        ("duration_s == 30", [0, 1, 2, 3, 10, 11]),
        ("attempt > 1", []),
        ("latency_ms <= 4e0", [0, 3]),
        ("accuracy > -1 and accuracy < +.985", [1, 2, 11]),
    ],
)
def test_where_filters(filled: Store, where: str | list[str], expected: list[int]) -> None:
    assert filled.trials("s", where=where)["number"].tolist() == expected


def test_where_with_states_and_pareto(filled: Store) -> None:
    frame = filled.trials("s", states=["COMPLETE"], where="order == 'prune_qat'")
    assert frame["number"].tolist() == [1, 11]
    front = filled.pareto_front("s", where="order == 'prune_ptq'")
    assert front["number"].tolist() == [0]  # 3 lacks accuracy, so it is not eligible
    front = filled.pareto_front("s", {"latency_ms": "min"}, where="order == 'prune_ptq'")
    assert front["number"].tolist() == [3]


BAD_WHERE = [
    ("accuracy >= 0.9; DROP TABLE trials", "';"),
    ("accuracy >= 0.9 -- comment", "'--"),
    ("accuracy >= 0.9 OR 1=1", "'OR'"),
    ("accuracy >= 0.9 or number > 0", "'or'"),
    ("1=1", "'1=1'"),
    ("accuracy = 0.9", "unexpected '='"),
    ("lower(order) == 'x'", "unknown name 'lower'"),
    ("accuracy >= 0.9 and order == upper('x')", "got 'upper'"),
    ("order == 'x'(", "unexpected '('"),
    ("accuracy >= abs(0.9)", "got 'abs'"),
    ("password == 'x'", "unknown name 'password'"),
    ("recipe == 'x'", "unknown name 'recipe'"),
    ("sweep_id == 1", "unknown name 'sweep_id'"),
    ("accuracy >= 'high'", "numeric"),
    ("number == '1 OR 1=1'", "numeric"),
    ("order == 5", "quote"),
    ("order > 'prune'", "only == and !="),
    ("state == 'DONE'", "unknown state 'DONE'"),
    ("order == 'prune_qat", "unbalanced quote"),
    ('order == "prune_qat', "unbalanced quote"),
    ("order == 'a' 'b'", "expected 'and'"),
    ("accuracy >= 0.9 and", "nothing after"),
    ("and accuracy >= 0.9", "unknown name 'and'"),
    ("accuracy >=", "incomplete"),
    ("accuracy", "incomplete"),
    ("", "empty"),
    ("   ", "empty"),
    ("accuracy >= 0.9 and and latency_ms < 1", "unknown name 'and'"),
    ("accuracy >= 1e", "'1e'"),
    ("accuracy >= 0.9.1", "'0.9.1'"),
    ("accuracy >= 0x10", "'0x10'"),
    ("accuracy >= 0.9\nlatency_ms < 1", "expected 'and'"),
    ("'accuracy' >= 0.9", "expected a column name"),
    ("accuracy latency_ms 0.9", "expected an operator"),
    ("accuracy >= latency_ms", "expected a number or quoted string"),
    ("accuracy >= 0.9 and state == 'COMPLETE'); DELETE FROM trials; --", "')"),
    ("order == 'x' /* comment */", "'/*"),
    ("accuracy !== 0.9", "unexpected '=' at position 11"),
    ("accuracy => 0.9", "unexpected '=>'"),
    ("accuracy >= 0.9 && number > 1", "'&&"),
]


@pytest.mark.parametrize(("where", "fragment"), BAD_WHERE)
def test_bad_where_without_database(where: str, fragment: str) -> None:
    with pytest.raises(WhereError) as excinfo:
        parse_where(where)
    message = str(excinfo.value)
    assert fragment in message
    assert "\n" not in message
    # A wrong name gets the valid names; any other mistake the grammar.
    wrong_name = "unknown name" in message or "expected a column name" in message
    assert ("names: accuracy," in message) == wrong_name, message
    assert ("OP one of == != >= <= > <" in message) != wrong_name, message
    assert len(message) < 600, message


def test_bad_where_on_database(filled: Store) -> None:
    for where, _ in BAD_WHERE:
        with pytest.raises(WhereError, match="invalid --where expression"):
            filled.trials("s", where=where)
        with pytest.raises(WhereError, match="invalid --where expression"):
            filled.pareto_front("s", where=[where])
    # Nothing ran: the table and every trial are still there.
    assert filled.trials("s")["number"].tolist() == [0, 1, 2, 3, 10, 11]
    assert filled.get_sweep("s").counts["COMPLETE"] == 4


def test_list_with_one_bad_expression(filled: Store) -> None:
    with pytest.raises(WhereError, match="unknown name 'speed'"):
        filled.trials("s", where=["accuracy > 0.5", "speed > 1"])


def test_non_string_expression() -> None:
    with pytest.raises(WhereError, match="must be strings"):
        parse_where([3])  # type: ignore[list-item]


def test_where_fields_cover_metrics() -> None:
    assert set(METRIC_COLUMNS) <= set(WHERE_FIELDS)
    assert {"order", "granularity", "state", "number", "duration_s", "attempt", "worker"} <= set(
        WHERE_FIELDS
    )
    for name in METRIC_COLUMNS:
        assert len(parse_where(f"{name} >= 1")) == 1


def test_values_are_bound_parameters() -> None:
    (clause,) = parse_where("order == 'x OR 1=1; DROP TABLE trials'")
    compiled = clause.compile()
    assert "1=1" not in str(compiled) and "DROP" not in str(compiled)
    assert list(compiled.params.values()) == ["x OR 1=1; DROP TABLE trials"]

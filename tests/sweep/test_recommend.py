"""``sweep best`` and ``sweep recommend`` on a store built directly (no sweep runs): the choice
under constraints, the recipe file it writes, and the no-match path that writes nothing."""

from __future__ import annotations

import errno
import json
import os
from pathlib import Path

import pytest

from storage import FEASIBLE_KEY, Store, TrialRecord
from sweep._output import DiskFullError, OutputError
from sweep._recommend import Goal, NoMatchError, best_per_objective, recommend, write_recipe
from tests.sweep.cli_runner import run_cli
from trials import Recipe

LAYERS = ("conv1", "conv2", "fc")
# number: (accuracy, compressed_bytes, latency_ms); fp32 accuracy is 0.99.
POINTS = {
    0: (0.985, 40_000, 2.0),  # drop 0.005
    1: (0.982, 30_000, 1.5),  # drop 0.008: fastest within 1 point
    2: (0.975, 20_000, 1.0),  # drop 0.015
    3: (0.90, 10_000, 0.8),  # drop 0.09: smallest and fastest overall
    4: (0.9895, 60_000, 3.0),  # drop 0.0005: most accurate
}


def _record(number: int, accuracy: float, size: int, latency: float) -> TrialRecord:
    recipe = Recipe.from_dict(
        {
            "order": "prune_ptq",
            "granularity": "per_tensor",
            "layers": {
                name: {"amount": round(0.1 * number, 2), "method": "unstructured"}
                for name in LAYERS
            },
        }
    )
    metrics = {
        "accuracy": accuracy,
        "fp32_accuracy": 0.99,
        "accuracy_drop": 0.99 - accuracy,
        "compressed_bytes": size,
        "size_bytes": size * 2,
        "latency_ms": latency,
    }
    return TrialRecord(number=number, state="COMPLETE", recipe=recipe.to_dict(), metrics=metrics)


@pytest.fixture
def db(tmp_path: Path) -> str:
    url = f"sqlite:///{tmp_path / 'rec.db'}"
    with Store(url) as store:
        config = {"name": "rec", "task": "digits", "task_settings": {"seed": 1}}
        objectives = {"accuracy": "max", "compressed_bytes": "min", "latency_ms": "min"}
        store.create_sweep("rec", config, objectives)
        records = [_record(n, *point) for n, point in POINTS.items()]
        records.append(TrialRecord(number=5, state="FAIL", recipe={}, error="boom"))
        store.record_trials("rec", records)
    return url


def test_recommend_picks_the_best_trial_that_meets_the_constraints(db: str) -> None:
    with Store(db) as store:
        assert int(recommend(store, "rec", Goal("latency_ms", "min", 0.01))["number"]) == 1
        assert int(recommend(store, "rec", Goal("latency_ms", "min"))["number"]) == 3
        assert int(recommend(store, "rec", Goal("compressed_bytes", "min", 0.02))["number"]) == 2
        where = Goal("latency_ms", "min", 0.01, ("compressed_bytes >= 35000",))
        assert int(recommend(store, "rec", where)["number"]) == 0
        assert int(recommend(store, "rec", Goal("accuracy", "max"))["number"]) == 4


def test_no_match_lists_the_closest_trials_by_accuracy_drop(db: str) -> None:
    with Store(db) as store, pytest.raises(NoMatchError) as caught:
        recommend(store, "rec", Goal("latency_ms", "min", 0.0001))
    assert list(caught.value.closest["number"])[:3] == [4, 0, 1]
    assert "accuracy_drop <= 0.0001" in str(caught.value)


def test_best_per_objective(db: str) -> None:
    with Store(db) as store:
        best = best_per_objective(store, "rec")
    assert list(best["best_for"]) == ["accuracy:max", "compressed_bytes:min", "latency_ms:min"]
    assert list(best["number"]) == [4, 3, 3]


def test_cli_recommend_writes_a_recipe_that_loads_and_names_its_trial(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "recipe.json"
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *("recommend", "rec", "--max-drop", "0.01", "--minimize", "latency_ms"),
        *("-o", str(target), "--storage", db),
    )
    assert code == 0, err
    assert "Recommended: trial 1 of rec" in out
    document = json.loads(target.read_text())
    assert document["source"]["sweep"] == "rec" and document["source"]["trial"] == 1
    assert document["source"]["task"] == "digits"
    assert document["source"]["task_settings"] == {"seed": 1}
    assert document["source"]["metrics"]["latency_ms"] == 1.5
    recipe = Recipe.from_json(target.read_text())
    assert recipe.layer("conv2").amount == pytest.approx(0.1)


def test_cli_recommend_and_best_as_json_for_scripts(
    db: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    code, out, err = run_cli(
        monkeypatch,
        capsys,
        *("recommend", "rec", "--max-drop", "0.01", "--minimize", "latency_ms"),
        *("--format", "json", "--storage", db),
    )
    assert code == 0, err
    (trial,) = json.loads(out)
    assert trial["number"] == 1 and trial["latency_ms"] == 1.5 and "layers" in trial["recipe"]
    code, _, err = run_cli(
        monkeypatch, capsys, "recommend", "rec", "--minimize", "latency_ms", "--format", "xml",
        "--storage", db,
    )  # fmt: skip
    assert code == 2 and err.strip().splitlines()[-1].startswith("error: --format: 'xml'")


def test_cli_recommend_without_a_match_exits_1_and_writes_nothing(
    db: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    target = tmp_path / "recipe.json"
    code, _, err = run_cli(
        monkeypatch,
        capsys,
        *("recommend", "rec", "--max-drop", "0.0001", "--minimize", "latency_ms"),
        *("-o", str(target), "--storage", db),
    )
    assert code == 1
    assert "no match: no trial of rec meets the constraints" in err
    assert "Closest trials of rec" in err
    assert not target.exists()
    assert not [p for p in tmp_path.iterdir() if "recipe" in p.name]  # no temporary left either


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("--minimize", "latency_ms", "--maximize", "accuracy"), "exactly one of --minimize"),
        (("--minimize", "latncy_ms"), "--minimize/--maximize: 'latncy_ms' is not a trial metric"),
        (("--minimize", "latency_ms", "--max-drop", "5"), "--max-drop: 5.0 must be a fraction"),
    ],
)
def test_cli_recommend_user_mistakes_exit_2(
    db: str,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    args: tuple[str, ...],
    message: str,
) -> None:
    code, _, err = run_cli(monkeypatch, capsys, "recommend", "rec", *args, "--storage", db)
    assert code == 2
    assert message in err and "Traceback" not in err


def test_write_recipe_on_a_full_disk_leaves_no_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A write that fails for lack of space: DiskFullError (exit 1), nothing at -o, no
    temporary file; a recipe already there is kept as it was."""
    target = tmp_path / "recipe.json"
    target.write_text("old")

    def full(self: Path, *args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(DiskFullError, match=r"-o: cannot write .*recipe\.json: the disk is full"):
        write_recipe({"schema_version": 1}, target)
    monkeypatch.undo()
    assert target.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["recipe.json"]


@pytest.mark.parametrize(
    ("where", "message"),
    [
        ("missing/recipe.json", r"the folder .*missing does not exist; create it or write"),
        (".", "it is a folder; give a file in it"),
    ],
)
def test_write_recipe_to_a_bad_path_is_one_line(tmp_path: Path, where: str, message: str) -> None:
    with pytest.raises(OutputError, match=message):
        write_recipe({"schema_version": 1}, tmp_path / where)
    assert list(tmp_path.iterdir()) == []


def test_a_sweeps_constraints_decide_what_recommend_and_pareto_offer(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    url = f"sqlite:///{tmp_path / 'feasible.db'}"
    with Store(url) as store:
        # Trial n prunes 0.1 * n of every layer: only 3 and 4 meet min_sparsity 0.3.
        config = {"name": "cons", "task": "digits", FEASIBLE_KEY: ["sparsity >= 0.3"]}
        store.create_sweep("cons", config, {"accuracy": "max", "compressed_bytes": "min"})
        records = [_record(n, *point) for n, point in POINTS.items()]
        for record in records:
            record.metrics["sparsity"] = round(0.1 * record.number, 2)
        store.record_trials("cons", records)
        fastest = Goal("latency_ms", "min", max_drop=0.01)
        assert recommend(store, "cons", fastest)["number"] == 4
        assert recommend(store, "cons", fastest, feasible_only=False)["number"] == 1
        with pytest.raises(NoMatchError, match=r"latency_ms < 2\.0 and sparsity >= 0\.3"):
            recommend(store, "cons", Goal("latency_ms", "min", 0.01, ("latency_ms < 2.0",)))
        assert set(best_per_objective(store, "cons")["number"]) == {3, 4}
    code, shown, _ = run_cli(
        monkeypatch, capsys, "pareto", "cons", "--storage", url, "--format", "json"
    )
    assert code == 0
    assert sorted(row["number"] for row in json.loads(shown)) == [3, 4]
    args = ("pareto", "cons", "--storage", url, "--format", "json", "--infeasible")
    code, every, _ = run_cli(monkeypatch, capsys, *args)
    assert sorted(row["number"] for row in json.loads(every)) == [0, 1, 2, 3, 4]

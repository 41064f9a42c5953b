"""Sensitivity scans on the analytic ``synthetic`` task (real Ray, real SQLite), where the drop
from pruning one layer alone is known in closed form, and the sweep bounds taken from a scan."""

from __future__ import annotations

import math
import sys
from pathlib import Path

import optuna
import pytest

from storage import StorageError, Store
from sweep import _bounds, _sensitivity, cli
from sweep._config import ConfigError
from sweep._config_read import parse_config
from sweep._driver import run_sweep
from sweep._space import AMOUNT_PREFIX, Space
from trials import LayerSpec, Recipe
from trials.tasks.synthetic import SyntheticTask

N_LAYERS = 4
AMOUNTS = (0.3, 0.6, 0.8)
MAX_DROP = 0.01


def _config(name: str, **search: object) -> object:
    return parse_config(
        {
            "name": name,
            "task": "synthetic",
            "task_settings": {"n_layers": N_LAYERS, "seed": 3},
            "objectives": {"accuracy": "max", "compressed_bytes": "min"},
            "budget": {"n_trials": 6},
            "search_space": {
                "amount": {"min": 0.0, "max": 0.9, "step": 0.1},
                "methods": ["unstructured"],
                "orders": ["prune_ptq"],
                "granularities": ["per_tensor"],
                **search,
            },
        }
    )


def _expected_safe(task: SyntheticTask) -> dict[str, float]:
    """Pruning layer i alone by a costs 0.02 * (a / tau_i)**4 of accuracy (module docstring)."""
    safe = {}
    for name, tau in zip(task.layer_names, task.tolerances, strict=True):
        ok = [a for a in AMOUNTS if 0.02 * (a / tau) ** 4 <= MAX_DROP + 1e-12]
        safe[name] = max(ok, default=0.0)
    return safe


pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def scanned(local_ray: None, tmp_path_factory: pytest.TempPathFactory) -> str:
    url = f"sqlite:///{tmp_path_factory.mktemp('scan') / 'scan.db'}"
    with Store(url) as store:
        progress = _sensitivity.run_scan(
            _config("syn"),  # type: ignore[arg-type]
            store,
            name="syn-sensitivity",
            amounts=AMOUNTS,
            granularities=("per_tensor", "per_channel"),
            finetune_epochs=0,
        )
    assert progress.done == 2 * (1 + N_LAYERS * len(AMOUNTS))
    return url


def test_scan_is_stored_as_a_sweep_with_its_settings(scanned: str) -> None:
    with Store(scanned) as store:
        info = store.get_sweep("syn-sensitivity")
        trials = store.trials("syn-sensitivity")
    assert info.config["kind"] == "sensitivity"
    assert info.config["sensitivity"]["amounts"] == list(AMOUNTS)
    assert info.config["sensitivity"]["granularities"] == ["per_tensor", "per_channel"]
    assert set(trials["state"]) == {"COMPLETE"}
    for recipe in trials["recipe"]:
        assert sum(spec["amount"] > 0 for spec in recipe["layers"].values()) <= 1


def test_safe_amounts_and_order_match_the_closed_form(scanned: str) -> None:
    task = SyntheticTask(n_layers=N_LAYERS, seed=3)
    expected = _expected_safe(task)
    with Store(scanned) as store:
        assert _bounds.safe_amounts(store, "syn-sensitivity", MAX_DROP) == pytest.approx(expected)
        results = _bounds.scan_results(store, "syn-sensitivity")
    table = _sensitivity.sensitivity_table(results, MAX_DROP)
    per_tensor = table[table["granularity"] == "per_tensor"]
    # Most sensitive first: the layer with the smallest tolerance leads.
    by_tolerance = [n for _, n in sorted(zip(task.tolerances, task.layer_names, strict=True))]
    assert per_tensor["layer"].iloc[0] == by_tolerance[0]
    first = task.layer_names.index(by_tolerance[0])
    assert per_tensor["accuracy_drop[0.80]"].iloc[0] == pytest.approx(
        0.02 * (0.8 / task.tolerances[first]) ** 4
    )
    # The unpruned int8 model's own drop: quantization and order terms only, not pruning.
    assert per_tensor["accuracy_drop[int8]"].iloc[0] > 0


def test_cli_shows_a_stored_scan_and_writes_the_plot(
    scanned: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    config = tmp_path / "syn.yaml"
    config.write_text("name: syn\ntask: synthetic\n")
    plot = tmp_path / "scan.png"
    args = ["sensitivity", str(config), "--show", "--storage", scanned, "--plot", str(plot)]
    monkeypatch.setattr(sys, "argv", ["sweep", *args, "--format", "json"])
    with pytest.raises(SystemExit) as exited:
        cli.main()
    assert exited.value.code == 0
    out = capsys.readouterr().out
    assert '"amount_safe"' in out and '"accuracy_drop[0.60]"' in out
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_space_bounds_cap_each_layer_and_fix_layers_with_no_safe_amount() -> None:
    config = _config("b", amount_mode="independent")
    layers = ("a", "b", "c")
    space = Space(layers, config.search_space, config.trial, upper={"a": 0.55, "b": 0.0})  # type: ignore[attr-defined]
    distributions = space.distributions()
    assert distributions[AMOUNT_PREFIX + "a"].high == pytest.approx(0.5)  # type: ignore[attr-defined]
    assert AMOUNT_PREFIX + "b" not in distributions  # fixed at the grid's minimum
    assert distributions[AMOUNT_PREFIX + "c"].high == pytest.approx(0.9)  # type: ignore[attr-defined]
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=0))
    for params in _bounds.uniform_params(space, 3):
        study.enqueue_trial(params)
    uniform = [space.suggest(study.ask()) for _ in range(3)]
    assert [r.layer("c").amount for r in uniform] == [0.9, 0.6, 0.3]
    assert [r.layer("a").amount for r in uniform] == [0.5, 0.5, 0.3]
    for _ in range(20):
        recipe = space.suggest(study.ask())
        assert recipe.layer("a").amount <= 0.5 + 1e-9 and recipe.layer("b").amount == 0.0
    # Stored trials rebuild: the params of a bounded recipe fit the bounded distributions.
    params = space.params_of(uniform[0])
    for key, value in params.items():
        if key in distributions:
            assert distributions[key]._contains(distributions[key].to_internal_repr(value))


def test_sweep_takes_bounds_and_first_trials_from_the_scan(scanned: str) -> None:
    config = _config(
        "bounded",
        bounds_from={"sensitivity": "syn-sensitivity", "max_drop": MAX_DROP, "enqueue_uniform": 2},
    )
    with Store(scanned) as store:
        safe = _bounds.safe_amounts(store, "syn-sensitivity", MAX_DROP)
        run_sweep(config, store)  # type: ignore[arg-type]
        trials = store.trials("bounded")
        stored = store.get_sweep("bounded").config
    assert stored["amount_bounds"] == pytest.approx(safe)
    top = max(safe.values())
    first = trials.iloc[0]["recipe"]["layers"]
    assert {name: spec["amount"] for name, spec in first.items()} == pytest.approx(
        {name: min(top, safe[name]) for name in safe}
    )
    for recipe in trials["recipe"]:
        for name, spec in recipe["layers"].items():
            assert spec["amount"] <= safe[name] + 1e-9, (name, spec)
    assert not math.isnan(trials["accuracy"].iloc[0])


def test_bounds_from_a_missing_or_non_scan_sweep_is_a_one_line_error(scanned: str) -> None:
    with Store(scanned) as store:
        store.create_sweep("plain", {"name": "plain"}, {"accuracy": "max"})
        with pytest.raises(StorageError, match="nope"):
            run_sweep(_config("x1", bounds_from={"sensitivity": "nope"}), store)  # type: ignore[arg-type]
        with pytest.raises(ConfigError, match="plain: not a sensitivity scan"):
            run_sweep(_config("x2", bounds_from={"sensitivity": "plain"}), store)  # type: ignore[arg-type]
        names = {s.name for s in store.list_sweeps()}
    assert not names & {"x1", "x2"}  # nothing stored for a sweep that could not start


def test_a_sweep_at_a_sparsity_constraint_starts_from_the_one_shot_allocation(
    scanned: str, caplog: pytest.LogCaptureFixture
) -> None:
    limits = {"min_sparsity": 0.5}
    config = _config("seeded", constraints=limits, seed_from={"sensitivity": "syn-sensitivity"})
    with Store(scanned) as store:
        run_sweep(config, store)  # type: ignore[arg-type]
        trials = store.trials("seeded")
        results = _bounds.scan_results(store, "syn-sensitivity")
        stored = store.get_sweep("seeded").config
        # Without seed_from and without a scan under the default name: one line says so.
        with caplog.at_level("WARNING"):
            run_sweep(_config("unseeded", constraints=limits), store)  # type: ignore[arg-type]
    assert "no sensitivity scan 'unseeded-sensitivity' to seed the search" in caplog.text
    assert stored["feasible"] == ["sparsity >= 0.5"]
    task = SyntheticTask(n_layers=N_LAYERS, seed=3)
    sizes = {name: int(w) for name, w in zip(task.layer_names, task.weights, strict=True)}
    space = Space(
        tuple(task.layer_names), config.search_space, config.trial, {},  # type: ignore[attr-defined]
        layer_params=sizes, model_params=sum(sizes.values()),
    )  # fmt: skip
    one_shot = _bounds.one_shot_amounts(results, space, 0.5)
    least = _bounds.marginal_amounts(results, space, 0.5)
    first = trials.iloc[0]["recipe"]["layers"]
    assert {name: spec["amount"] for name, spec in first.items()} == pytest.approx(least)
    # One threshold for every layer: the more tolerant a layer, the more it is pruned.
    ranked = sorted(zip(task.tolerances, task.layer_names, strict=True))
    amounts = [one_shot[name] for _, name in ranked]
    assert amounts == sorted(amounts) and amounts[0] < amounts[-1]
    # The least-drop allocation loses no more than the one-shot one, in the task's closed form.
    for allocation in (least, one_shot):
        assert space.estimated_sparsity(_uniform_recipe(allocation)) >= 0.5 - 1e-9

    def drop(allocation: dict[str, float]) -> float:
        return float(task.analytic_metrics(_uniform_recipe(allocation))["accuracy_drop"])

    assert drop(least) <= drop(one_shot) + 1e-9
    for recipe in trials["recipe"]:
        pruned = sum(spec["amount"] * sizes[name] for name, spec in recipe["layers"].items())
        assert pruned / sum(sizes.values()) >= 0.5 - 1e-3
    assert (trials["sparsity"] >= 0.5 - 1e-3).all()


def _uniform_recipe(amounts: dict[str, float]) -> Recipe:
    return Recipe(layers={name: LayerSpec(a) for name, a in amounts.items()})

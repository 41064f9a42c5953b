"""``sampler: layerwise`` on the analytic task (in-process ask/tell, no Ray)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import optuna
import pytest

from storage import Store
from sweep import ConfigError, parse_config, run_sweep
from sweep._config import DEFAULT_OBJECTIVES as DEFAULTS
from sweep._layerwise import LayerwiseSampler
from sweep._quality import fp32_reference, hypervolume_curve, losses, reference_point
from sweep._samplers import ask_recipe, make_sampler, startup_trials
from sweep._space import Space
from tests.sweep.synthetic_study import synthetic_study
from trials import Recipe
from trials.tasks.synthetic import SyntheticTask

TASK = SyntheticTask(n_layers=8, seed=2)
LAYERS = tuple(TASK.layer_names)
SIZES = {name: int(w) for name, w in zip(LAYERS, TASK.weights, strict=True)}
OBJECTIVES = {"accuracy": "max", "compressed_bytes": "min"}


def _setup(sampler: str = "layerwise", **data: object) -> tuple[optuna.Study, Space]:
    return synthetic_study(TASK, sampler=sampler, **data)


def _run(study: optuna.Study, space: Space, n: int, in_flight: int = 1) -> list[Recipe]:
    """``n`` trials, ``in_flight`` asked before each tell (as parallel workers do)."""
    recipes: list[Recipe] = []
    flight: list[tuple[optuna.trial.Trial, Recipe]] = []
    while len(recipes) < n:
        while len(flight) < in_flight and len(recipes) + len(flight) < n:
            flight.append(ask_recipe(study, space))
        trial, recipe = flight.pop(0)
        metrics = TASK.analytic_metrics(recipe)
        study.tell(trial, [metrics[name] for name in OBJECTIVES])
        recipes.append(recipe)
    return recipes


def _hypervolume(recipes: list[Recipe]) -> float:
    rows = [TASK.analytic_metrics(recipe) for recipe in recipes]
    fp32 = fp32_reference(rows, OBJECTIVES)
    return hypervolume_curve(losses(rows, OBJECTIVES, fp32), reference_point(OBJECTIVES))[-1]


def test_layerwise_searches_each_layer_amount_and_rejects_relative_mode() -> None:
    assert parse_config({"name": "x", "task": "t"}).search_space.amount_mode == "independent"
    tpe = parse_config({"name": "x", "task": "t", "sampler": "tpe"})
    assert tpe.search_space.amount_mode == "relative"
    config = parse_config({"name": "x", "task": "t", "sampler": "layerwise"})
    assert config.search_space.amount_mode == "independent"
    with pytest.raises(ConfigError, match=r"^config: search_space\.amount_mode: sampler layerwise"):
        parse_config(
            {
                "name": "x",
                "task": "t",
                "sampler": "layerwise",
                "search_space": {"amount_mode": "relative"},
            }
        )


def test_startup_is_uniform_levels_then_the_same_levels_moved_per_layer() -> None:
    study, space = _setup()
    config = parse_config({"name": "x", "task": "t", "sampler": "layerwise"})
    uniform, startup = startup_trials(config, space)
    # 8 layers: the floor of 10 uniform + 10 moved, cut to a third of the 40-trial budget.
    assert (uniform, startup) == (10, 13)
    recipes = _run(study, space, startup)
    levels = []
    for recipe in recipes[:uniform]:
        amounts = {spec.amount for spec in recipe.layers.values()}
        assert len(amounts) == 1
        levels.append(amounts.pop())
    assert len(set(levels)) == uniform
    # The whole range from the first trials: the top and the bottom level first, not ascending.
    assert levels[:2] == [max(levels), min(levels)] and levels[2] == sorted(levels)[5]
    moved = [len({spec.amount for spec in r.layers.values()}) > 1 for r in recipes[uniform:]]
    assert sum(moved) >= startup - uniform - 1


def test_layerwise_beats_random_search_given_twice_the_budget() -> None:
    layerwise = _hypervolume(_run(*_setup(), 60, in_flight=3))
    random = _hypervolume(_run(*_setup("random"), 120, in_flight=3))
    assert layerwise > random


def test_it_prunes_tolerant_layers_more_than_sensitive_ones() -> None:
    # The int8 orders only: what is tested is the per-layer allocation, which a float order
    # (larger, slower models that the front also keeps) would dilute at this budget.
    study, space = _setup(
        search_space={"orders": ["prune_ptq", "prune_qat"]}, budget={"n_trials": 60}
    )
    recipes = _run(study, space, 60)[30:]  # after the startup
    order = np.argsort(TASK.sensitivities)
    tolerant, sensitive = LAYERS[order[0]], LAYERS[order[-1]]
    assert (
        np.mean([r.layer(tolerant).amount for r in recipes])
        > np.mean([r.layer(sensitive).amount for r in recipes]) + 0.2
    )


def test_a_deep_model_whose_first_trials_mostly_lose_all_accuracy_is_still_modeled() -> None:
    # 60 layers: uniform amounts from about 0.35 up take the accuracy to 0 (clipped), so more
    # than half the startup trials tie there. Fitted on them, the model proposed nothing else.
    task = SyntheticTask(n_layers=60, seed=2)
    settings = {"objectives": OBJECTIVES, "budget": {"n_trials": 150}}
    study, space = synthetic_study(task, sampler="layerwise", **settings)
    startup = startup_trials(parse_config({"name": "x", "task": "t", **settings}), space)[1]
    accuracy = []
    for _ in range(startup + 30):
        trial, recipe = ask_recipe(study, space)
        metrics = task.analytic_metrics(recipe)
        study.tell(trial, [metrics[name] for name in OBJECTIVES])
        accuracy.append(metrics["accuracy"])
    assert np.mean(np.array(accuracy[:startup]) == 0.0) > 0.5
    assert np.mean(np.array(accuracy[startup:]) > 0.0) >= 0.8


def test_parallel_asks_differ_and_ties_bounds_and_constraints_hold() -> None:
    tie = [[LAYERS[0], LAYERS[1]]]
    study, space = _setup(
        search_space={
            "tie": tie,
            "amount": {"max": 0.6, "step": 0.1},
            "constraints": {"max_sparsity": 0.4},
        },
        sampler_settings={"n_startup_trials": 10, "uniform_startup": 5},
    )
    recipes = _run(study, space, 40, in_flight=4)
    asked = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(asked[10:])) == len(asked[10:])  # no recipe asked twice after the startup
    for recipe in recipes:
        assert recipe.layer(LAYERS[0]).amount == recipe.layer(LAYERS[1]).amount
        assert all(spec.amount <= 0.6 for spec in recipe.layers.values())
    sparsity = [TASK.analytic_metrics(r)["sparsity"] for r in recipes[10:]]
    assert sum(s <= 0.4 + 1e-9 for s in sparsity) >= 0.9 * len(sparsity)


def test_a_seeded_sweep_asks_the_same_recipes_again() -> None:
    first = _run(*_setup(), 30)
    again = _run(*_setup(), 30)
    assert first == again
    assert isinstance(_setup()[0].sampler, LayerwiseSampler)


def test_a_layerwise_sweep_runs_through_the_driver(local_ray: None, tmp_path: Path) -> None:
    config = parse_config(
        {
            "name": "lw",
            "task": "synthetic",
            "task_settings": {"n_layers": 6, "trial_seconds": 0.0},
            "sampler": "layerwise",
            "objectives": OBJECTIVES,
            "budget": {"n_trials": 30},
            "resources": {"max_concurrent": 2},
        }
    )
    store = Store(f"sqlite:///{tmp_path / 's.db'}")
    assert run_sweep(config, store).done == 30
    trials = store.trials("lw")
    assert set(trials["state"]) == {"COMPLETE"}
    stored = store.get_sweep("lw").config
    assert stored["sampler"] == "layerwise"
    assert stored["search_space"]["amount_mode"] == "independent"
    # After the startup (20 trials for 6 layers), the sampler's own recipes: no two alike.
    modeled = [json.dumps(recipe, sort_keys=True) for recipe in trials["recipe"][20:]]
    assert len(set(modeled)) == len(modeled)


@pytest.mark.parametrize(
    "objectives",
    [{"accuracy": "max"}, {"compressed_bytes": "min", "latency_ms": "min"}, dict(DEFAULTS)],
)
def test_any_objectives_get_recipes_within_the_space(objectives: dict[str, str]) -> None:
    config = parse_config(
        {"name": "x", "task": "synthetic", "objectives": objectives, "search_space": {"tie": []}}
    )
    space = Space(LAYERS, config.search_space, config.trial, {}, layer_params=SIZES)
    directions = ["maximize" if d == "max" else "minimize" for d in objectives.values()]
    study = optuna.create_study(directions=directions, sampler=make_sampler(config, space))
    for _ in range(30):
        trial, recipe = ask_recipe(study, space)
        assert all(0.0 <= spec.amount <= 0.9 for spec in recipe.layers.values())
        metrics = TASK.analytic_metrics(recipe)
        study.tell(trial, [metrics[name] for name in objectives])
    assert len(study.trials) == 30

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
from sweep._feasible import FeasibleSampler
from sweep._layerwise import LayerwiseSampler
from sweep._layerwise_history import recipe_key
from sweep._layerwise_startup import bisection_order, uniform_candidates, uniform_options
from sweep._quality import fp32_reference, hypervolume_curve, losses, reference_point
from sweep._samplers import ask_recipe, make_sampler, startup_trials
from sweep._space import Space
from tests.sweep.synthetic_study import objective_values, run_in_flight, synthetic_study
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
    return run_in_flight(study, space, n, in_flight, objective_values(TASK, OBJECTIVES))


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
    # 8 layers: the floor of 10 uniform + 10 moved, which a third of 60 trials covers (a budget
    # that does not gets thin mode, below).
    study, space = _setup(budget={"n_trials": 60})
    config = parse_config({"name": "x", "task": "t", "budget": {"n_trials": 60}})
    uniform, startup = startup_trials(config, space)
    assert (uniform, startup) == (10, 20)
    assert isinstance(study.sampler, LayerwiseSampler) and study.sampler._thin is None
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


def test_each_modeled_trial_keeps_its_own_row_and_values_whatever_order_they_finish_in() -> None:
    study, space = _setup(sampler_settings={"n_startup_trials": 4, "uniform_startup": 2})
    _run(study, space, 6)
    flight = [ask_recipe(study, space) for _ in range(3)]
    values = objective_values(TASK, OBJECTIVES)
    for trial, recipe in [flight[2], flight[0], flight[1]]:
        study.tell(trial, values(recipe))
    ask_recipe(study, space)  # reads the three new results
    sampler = study.sampler
    assert isinstance(sampler, LayerwiseSampler)
    history = sampler._history
    finished = study.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert sorted(t.number for t in history.modeled) == [t.number for t in finished]
    assert [t.number for t in history.modeled][-3:] == [6, 7, 8]  # read as one change
    assert history.values.tolist() == [t.values for t in history.modeled]
    for i, trial in enumerate(history.modeled):
        amounts, structured, combo = sampler._codec.row(trial.params)
        assert history.encoded.amounts[i].tolist() == amounts.tolist()
        assert history.encoded.structured[i].tolist() == structured.tolist()
        assert int(history.encoded.combo[i]) == combo
    running = study.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    asked = history.refresh(study.get_trials(deepcopy=False))
    assert all(recipe_key(t.params) in asked for t in [*finished, *running])
    assert history.count == len(finished)


def test_only_complete_trials_are_modeled_and_each_is_read_once() -> None:
    """A resumed study's trials (added at once), failed and pruned ones, an enqueued one that
    waits: the sampler reads the COMPLETE ones, once, and looks again only at trials it saw
    unfinished."""
    study, space = _setup(sampler_settings={"n_startup_trials": 4, "uniform_startup": 2})
    _run(study, space, 6)
    resumed, _ = _setup(sampler_settings={"n_startup_trials": 4, "uniform_startup": 2})
    for trial in study.trials:  # as `sweep resume` rebuilds its study
        resumed.add_trial(trial)
    failed, _ = ask_recipe(resumed, space)
    resumed.tell(failed, state=optuna.trial.TrialState.FAIL)
    pruned, _ = ask_recipe(resumed, space)
    resumed.tell(pruned, state=optuna.trial.TrialState.PRUNED)
    resumed.enqueue_trial(study.trials[0].params)
    _run(resumed, space, 3)  # the enqueued trial first
    ask_recipe(resumed, space)
    sampler = resumed.sampler
    assert isinstance(sampler, LayerwiseSampler)
    history = sampler._history
    complete = resumed.get_trials(states=(optuna.trial.TrialState.COMPLETE,))
    assert history.count == len(complete) == 9
    assert sorted(t.number for t in history.modeled) == [t.number for t in complete]
    assert len({t._trial_id for t in history.modeled}) == 9
    # Left to look at again: nothing finished. The trial asked last was added whole after the
    # sampler looked (ask_recipe), so the next look finds it as a new one, running.
    assert not history._open
    history.refresh(resumed.get_trials(deepcopy=False))
    running = resumed.get_trials(states=(optuna.trial.TrialState.RUNNING,))
    assert sorted(history._open) == [t.number for t in running] == [len(resumed.trials) - 1]


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


# -- thin budgets: uniform recipes first (sweep/_layerwise_startup.py) ----------------------------
DEEP = SyntheticTask(n_layers=60, seed=2)


def _deep(n_trials: int, **space: object) -> tuple[optuna.Study, Space, list[Recipe]]:
    settings: dict[str, object] = {"objectives": OBJECTIVES, "budget": {"n_trials": n_trials}}
    if space:
        settings["search_space"] = space
    study, space_ = synthetic_study(DEEP, sampler="layerwise", **settings)
    if isinstance(study.sampler, FeasibleSampler):  # the sampler's own recipes, not moved in
        study.sampler = study.sampler._inner
    return (
        study,
        space_,
        run_in_flight(study, space_, n_trials, 3, objective_values(DEEP, OBJECTIVES)),
    )


def _option(recipe: Recipe) -> tuple[str, str, str]:
    methods = {spec.method for spec in recipe.layers.values()}
    granularity = "-" if recipe.order == "prune_float" else recipe.granularity
    return recipe.order, granularity, methods.pop() if len(methods) == 1 else "mixed"


def test_a_thin_budget_asks_every_option_uniform_first_at_spread_levels_then_the_model() -> None:
    # 60 layer groups want a 40-trial warm-up; 16 trials leave it 5: thin mode.
    study, _, recipes = _deep(16)
    sampler = study.sampler
    assert isinstance(sampler, LayerwiseSampler) and sampler._thin is not None
    options = sampler._thin.options
    assert len(options) == 10  # (ptq, qat) x (per_tensor, per_channel) + float, x 2 methods
    uniform = recipes[: sampler._thin.n_uniform]
    assert len(uniform) == 10
    levels = []
    for recipe in uniform:
        amounts = {spec.amount for spec in recipe.layers.values()}
        assert len(amounts) == 1
        levels.append(amounts.pop())
    # Every order, granularity and method once: the first ten asks are ten options.
    assert len({_option(r) for r in uniform}) == 10
    assert "mixed" not in {_option(r)[2] for r in uniform}
    # The levels spread over the range, the bottom first (quantization only), ...
    assert levels[0] == 0.0 and len(set(levels)) >= 4
    assert max(levels) >= 0.4
    # ... and the structured ones never at 0 (the unstructured recipe, asked already).
    assert all(
        lv > 0 for r, lv in zip(uniform, levels, strict=True) if _option(r)[2] == "structured"
    )
    # Then the model (per-layer amounts) and uniform neighbours of the front by turns.
    assert sum(len({s.amount for s in r.layers.values()}) > 1 for r in recipes[10:]) >= 2
    asked = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(asked)) == len(asked)


def test_levels_above_a_collapsed_one_are_not_asked() -> None:
    # 60 layers: uniform amounts from about 0.35 up take the accuracy to 0.
    _, _, recipes = _deep(30)
    uniform = [r for r in recipes[:15] if len({s.amount for s in r.layers.values()}) == 1]
    collapsed = [
        r.layer(LAYERS[0]).amount for r in uniform if DEEP.analytic_metrics(r)["accuracy"] == 0
    ]
    assert len(collapsed) <= 4  # the in-flight asks before the first collapse was seen


def test_a_thin_budget_keeps_the_constraints_and_the_bounds() -> None:
    study, _, recipes = _deep(
        20, amount={"max": 0.6, "step": 0.1}, constraints={"max_sparsity": 0.3}
    )
    assert isinstance(study.sampler, LayerwiseSampler) and study.sampler._thin is not None
    for recipe in recipes:
        assert DEEP.analytic_metrics(recipe)["sparsity"] <= 0.3 + 1e-9
        assert all(spec.amount <= 0.6 for spec in recipe.layers.values())
    asked = [tuple(sorted(t.params.items())) for t in study.trials]
    assert len(set(asked)) == len(asked)


def test_thin_mode_is_for_budgets_that_cut_the_warm_up_short() -> None:
    for n_trials, thin in ((40, True), (59, True), (60, False)):  # 8 layers want 20
        study, _ = _setup(budget={"n_trials": n_trials})
        assert isinstance(study.sampler, LayerwiseSampler)
        assert (study.sampler._thin is not None) == thin
    # A warm-up as configured is the one the model gets, whatever the budget.
    study, _ = _setup(sampler_settings={"n_startup_trials": 5}, budget={"n_trials": 12})
    assert isinstance(study.sampler, LayerwiseSampler) and study.sampler._thin is None


def test_bisection_order_and_uniform_candidates() -> None:
    assert bisection_order(9) == [0, 4, 2, 6, 1, 3, 5, 7, 8]
    assert sorted(bisection_order(19)) == list(range(19)) and bisection_order(19)[:2] == [0, 9]
    options = uniform_options(["prune_ptq", "prune_qat", "prune_float"], ["a", "b"], 2)
    assert len(options) == len(set(options)) == 10
    assert {c for c, _ in options[:5]} == {0, 1, 2, 3, 4} and options[4] == (4, False)
    assert [s for _, s in options[:4]] == [False, True, False, True]
    levels = np.round(np.arange(0, 1.0, 0.1), 6)
    # Unstructured collapsed at 0.5: nothing at or above it, structured included.
    pairs = uniform_candidates(levels, options, [(0, 0), (5, 1)], {False: 5}, {0})
    assert pairs and all(level < 5 for level, _ in pairs)
    assert (0, 0) not in pairs and all(level > 0 for level, k in pairs if options[k][1])
    # Option 1 (asked once) comes after every option not asked yet.
    firsts = [k for _, k in pairs]
    assert firsts.index(1) > max(firsts.index(k) for k in range(2, 10))


def test_after_the_uniform_recipes_some_asks_are_uniform_neighbours_of_the_front() -> None:
    study, _, recipes = _deep(40)
    assert isinstance(study.sampler, LayerwiseSampler) and study.sampler._thin is not None
    first = study.sampler._thin.n_uniform
    assert first == 20  # half the budget
    later = [r for r in recipes[first:] if len({s.amount for s in r.layers.values()}) == 1]
    assert 3 <= len(later) <= 17  # about half of the 20 asks after them (the model: the rest)
    # A neighbour is a level some uniform recipe of its method on the front has, or next to it.
    earlier = {(r.layer(LAYERS[0]).amount, _option(r)[2]) for r in recipes[:first]}
    for recipe in later:
        level, method = recipe.layer(LAYERS[0]).amount, _option(recipe)[2]
        assert any(m == method and abs(a - level) <= 0.1 + 1e-9 for a, m in earlier)


def test_neighbours_rank_the_front_levels_of_their_method_first() -> None:
    options = uniform_options(["prune_ptq", "prune_qat"], ["a", "b"], 2)
    levels = np.round(np.arange(0, 1.0, 0.1), 6)
    asked = [(0, 0), (4, 1), (2, 2), (6, 3), (1, 4), (3, 5), (5, 6), (7, 7)]
    pairs = uniform_candidates(levels, options, asked, {}, set(range(8)), {True: [4], False: []})
    # The structured options (1, 3, 4, 6) not yet at level 0.4 come first, at 0.4; then the
    # levels a step from it.
    assert [options[k][1] for k in (1, 3, 4, 6)] == [True] * 4
    assert pairs[:3] == [(4, 3), (4, 4), (4, 6)]
    assert {level for level, _ in pairs[3:7]} <= {3, 5}

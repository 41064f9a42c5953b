"""Samplers built from the config, and constraints reaching them (in-process, no Ray)."""

from __future__ import annotations

import optuna
import pytest

from sweep import parse_config
from sweep._samplers import (
    ask_by_suggestion,
    ask_recipe,
    budget_note,
    enqueue_uniform,
    grid_size,
    startup_trials,
)
from sweep._space import Space
from tests.sweep.synthetic_study import objective_values, synthetic_study
from trials.tasks.synthetic import SyntheticTask

TASK = SyntheticTask(n_layers=6, seed=1)
LAYERS = tuple(TASK.layer_names)


def _setup(**data: object) -> tuple[optuna.Study, Space]:
    return synthetic_study(TASK, **data)


def _run(study: optuna.Study, space: Space, n: int) -> list[optuna.trial.FrozenTrial]:
    for _ in range(n):
        trial, recipe = ask_recipe(study, space)
        metrics = TASK.analytic_metrics(recipe)
        study.tell(trial, [metrics["accuracy"], metrics["compressed_bytes"]])
    return study.trials


def test_uniform_startup_queues_uniform_recipes_first() -> None:
    study, space = _setup(sampler="tpe", sampler_settings={"uniform_startup": 3})
    enqueue_uniform(study, space, 3)
    trials = _run(study, space, 4)
    levels = []
    for trial in trials[:3]:
        recipe = space.suggest(optuna.trial.FixedTrial(trial.params))
        assert len({spec.amount for spec in recipe.layers.values()}) == 1
        levels.append(recipe.layer(LAYERS[0]).amount)
    assert levels == [0.9, 0.3, 0.6]  # the whole range from the first trials


def test_grid_sampler_walks_a_tied_space() -> None:
    space_config = {
        "tie": [["*"]],
        "method_scope": "global",
        "amount_mode": "independent",
        "amount": {"step": 0.3},
    }
    study, space = _setup(sampler="grid", search_space=space_config)
    size = grid_size(space)
    # levels 0..0.9 x orders (ptq, qat, float) x granularities x methods
    assert size == 4 * 3 * 2 * 2
    trials = _run(study, space, size)
    assert len({tuple(sorted(t.params.items())) for t in trials}) == size


def test_the_default_tpe_asks_what_optunas_own_tpe_asks() -> None:
    """The cached internal representation is only a speed-up: same seed, same trials."""
    study, space = _setup(sampler="tpe", sampler_settings={"n_startup_trials": 5})
    assert type(study.sampler) is not optuna.samplers.TPESampler
    plain = optuna.create_study(
        directions=["maximize", "minimize"],
        sampler=optuna.samplers.TPESampler(
            seed=0, multivariate=True, constant_liar=True, n_startup_trials=5
        ),
    )
    for _ in range(30):
        # Two asks before each tell: running trials (constant liar) are not cached.
        pairs = [(ask_recipe(study, space), ask_recipe(plain, space)) for _ in range(2)]
        for (trial, recipe), (plain_trial, plain_recipe) in pairs:
            assert recipe == plain_recipe
            metrics = TASK.analytic_metrics(recipe)
            values = [metrics["accuracy"], metrics["compressed_bytes"]]
            study.tell(trial, values)
            plain.tell(plain_trial, values)
    assert [t.params for t in study.trials] == [t.params for t in plain.trials]


def test_the_warm_up_takes_at_most_a_third_of_the_budget_and_says_so() -> None:
    """26 layer groups want 18 uniform + 10 moved warm-up trials: a 12-trial sweep gets 4 and
    is told the budget that would do; a large budget gets the full warm-up and no note."""
    task = SyntheticTask(n_layers=26, seed=1)
    small_budget = {"n_trials": 12}
    small = parse_config({"name": "x", "task": "synthetic", "budget": small_budget})
    _, space = synthetic_study(task, budget={"n_trials": 12})
    assert startup_trials(small, space) == (4, 4)
    assert budget_note(small, space) == (
        "budget.n_trials: 12 trials leave the warm-up 4 (a third), where layerwise wants 28 for "
        "26 layer groups; it asks uniform recipes over the whole grid for half the budget, then "
        "its model. For the full warm-up give budget.n_trials 84, or tie layers "
        "(search_space.tie)"
    )
    tpe = parse_config({"name": "x", "task": "synthetic", "sampler": "tpe", "budget": small_budget})
    note = budget_note(tpe, synthetic_study(task, sampler="tpe", budget=small_budget)[1])
    assert note is not None and "wants 20 for 26 layer groups; its model starts thin." in note
    large = parse_config({"name": "x", "task": "synthetic", "budget": {"n_trials": 84}})
    assert startup_trials(large, space) == (18, 28)
    assert budget_note(large, space) is None
    fixed = {"n_trials": 12}, {"n_startup_trials": 8, "uniform_startup": 6}  # as configured
    config = parse_config(
        {"name": "x", "task": "synthetic", "budget": fixed[0], "sampler_settings": fixed[1]}
    )
    assert startup_trials(config, space) == (6, 8) and budget_note(config, space) is None


@pytest.mark.parametrize("constraints", [{}, {"min_sparsity": 0.4}], ids=["free", "constrained"])
def test_layerwise_trials_are_added_whole_as_optuna_would_have_asked_them(
    constraints: dict[str, float], monkeypatch: pytest.MonkeyPatch
) -> None:
    """The default sampler draws a trial's parameters at once, so the driver adds its trials
    whole, without a suggestion per parameter: the same recipes, parameters, distributions and
    constraint values as asked through Optuna, trial by trial, enqueued warm-up first."""
    data = {"sampler": "layerwise", "search_space": {"constraints": constraints}, "seed": 5}
    studies = [_setup(**data) for _ in range(2)]
    for study, space in studies:
        enqueue_uniform(study, space, 3)
    (whole, space), (optuna_asked, _) = studies
    values = objective_values(TASK, {"accuracy": "max", "compressed_bytes": "min"})
    for asks in range(30):
        with monkeypatch.context() as patch:
            if asks >= 3:  # past the enqueued warm-up, which only study.ask takes
                patch.setattr(whole, "ask", lambda *args, **kwargs: pytest.fail("asked"))
            number, recipe = ask_recipe(whole, space)
        assert (number, recipe) == ask_by_suggestion(optuna_asked, space)
        added, asked = whole.trials[number], optuna_asked.trials[number]
        assert added.state == asked.state == optuna.trial.TrialState.RUNNING
        assert added.params == asked.params
        assert added.distributions == asked.distributions
        assert added.system_attrs == asked.system_attrs
        whole.tell(number, values(recipe))
        optuna_asked.tell(number, values(recipe))

"""Samplers built from the config, and constraints reaching them (in-process, no Ray)."""

from __future__ import annotations

import optuna
import pytest

from sweep._samplers import ask_recipe, enqueue_uniform, grid_size
from sweep._space import Space
from tests.sweep.synthetic_study import synthetic_study
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


@pytest.mark.parametrize("sampler", ["tpe", "nsga2"])
def test_constraints_reach_the_sampler(sampler: str) -> None:
    limits = {"constraints": {"max_sparsity": 0.3}}
    study, space = _setup(sampler=sampler, search_space=limits)
    trials = _run(study, space, 60)
    for trial in trials:
        assert set(trial.constraints) == {"max_sparsity"}
    feasible = [all(v <= 0 for v in t.constraints.values()) for t in trials]
    assert not all(feasible[:10])  # random startup draws infeasible trials, flagged as such
    # Constrained samplers prefer feasible trials; the same seed without the limit does not.
    baseline = _run(*_setup(sampler=sampler), 60)
    sparsities = [TASK.analytic_metrics(space.suggest(optuna.trial.FixedTrial(t.params)))
                  ["sparsity"] for t in baseline]  # fmt: skip
    assert sum(feasible[30:]) > sum(s <= 0.3 for s in sparsities[30:])


def test_uniform_startup_queues_uniform_recipes_first() -> None:
    study, space = _setup(sampler="tpe", sampler_settings={"uniform_startup": 3})
    enqueue_uniform(study, space, 3)
    trials = _run(study, space, 4)
    levels = []
    for trial in trials[:3]:
        recipe = space.suggest(optuna.trial.FixedTrial(trial.params))
        assert len({spec.amount for spec in recipe.layers.values()}) == 1
        levels.append(recipe.layer(LAYERS[0]).amount)
    assert levels == [0.3, 0.6, 0.9]


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

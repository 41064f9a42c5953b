"""search_space.constraints kept by every sampler, warm-up and seeds included (in-process)."""

from __future__ import annotations

import optuna
import pytest

from sweep._config import ConfigError
from sweep._config_read import parse_config
from sweep._feasible import check_feasible, feasible_levels, feasible_where
from sweep._samplers import ask_recipe, enqueue_uniform, grid_size, startup_trials
from sweep._space import Space
from tests.sweep.synthetic_study import synthetic_study
from trials import LayerSpec, Recipe
from trials.tasks.synthetic import SyntheticTask

TASK = SyntheticTask(n_layers=8, seed=4)
LAYERS = tuple(TASK.layer_names)


def _sweep(n: int, **data: object) -> tuple[list[Recipe], optuna.Study, Space]:
    """``n`` trials asked as the driver asks them (uniform warm-up enqueued first)."""
    study, space = synthetic_study(TASK, **data)
    config = parse_config({"name": "x", "task": "synthetic", **data, "budget": {"n_trials": n}})
    enqueue_uniform(study, space, startup_trials(config, space)[0])
    recipes = []
    for _ in range(n):
        trial, recipe = ask_recipe(study, space)
        metrics = TASK.analytic_metrics(recipe)
        study.tell(trial, [metrics["accuracy"], metrics["compressed_bytes"]])
        recipes.append(recipe)
    return recipes, study, space


SAMPLERS = [
    ("tpe", {}),
    ("random", {}),
    ("nsga2", {}),
    ("layerwise", {}),
    ("gp", {}),
    ("grid", {"tie": [["*"]], "method_scope": "global", "amount_mode": "independent"}),
]


@pytest.mark.parametrize(("sampler", "extra"), SAMPLERS, ids=[s for s, _ in SAMPLERS])
@pytest.mark.parametrize(
    "limits",
    [{"min_sparsity": 0.85}, {"max_sparsity": 0.3}, {"min_sparsity": 0.4, "max_sparsity": 0.5}],
    ids=["min", "max", "band"],
)
def test_every_sampler_asks_only_recipes_within_the_constraints(
    sampler: str, extra: dict[str, object], limits: dict[str, float]
) -> None:
    n = 12 if sampler == "gp" else 30
    search = {"constraints": limits, **extra}
    recipes, study, space = _sweep(n, sampler=sampler, search_space=search)
    for recipe, trial in zip(recipes, study.trials, strict=True):
        sparsity = space.estimated_sparsity(recipe)
        assert limits.get("min_sparsity", 0) - 1e-9 <= sparsity, (trial.number, sparsity)
        assert sparsity <= limits.get("max_sparsity", 1) + 1e-9, (trial.number, sparsity)
        assert all(value <= 1e-9 for value in trial.constraints.values())
        # The estimate is what the trial measures (unstructured pruning, as the pruner rounds).
        assert TASK.analytic_metrics(recipe)["sparsity"] == pytest.approx(sparsity, abs=1e-3)
    # Not one recipe asked over and over: the search still searches.
    distinct = len({tuple(sorted(t.params.items())) for t in study.trials})
    assert distinct >= min(0.5 * n, grid_size(space) if sampler == "grid" else n)


def test_the_warm_up_spans_the_feasible_levels_from_the_first_trials() -> None:
    recipes, _, space = _sweep(
        6, sampler="tpe", search_space={"constraints": {"min_sparsity": 0.6}},
        sampler_settings={"uniform_startup": 4},
    )  # fmt: skip
    levels = [r.layer(LAYERS[0]).amount for r in recipes[:4]]
    assert all(len({s.amount for s in r.layers.values()}) == 1 for r in recipes[:4])
    assert min(levels) >= 0.6 and max(levels) == max(feasible_levels(space))
    assert levels[:2] == [max(levels), min(levels)]  # top and bottom first


def test_layerwise_allocates_the_sparsity_to_the_layers_that_tolerate_it() -> None:
    """At 85% sparsity, the model's allocation beats every layer at one amount: the layers'
    tolerances differ (SyntheticTask.tolerances)."""
    limits = {"constraints": {"min_sparsity": 0.85}, "amount": {"max": 0.98, "step": 0.02}}
    recipes, _, space = _sweep(60, sampler="layerwise", search_space=limits)
    best = max(TASK.analytic_metrics(r)["accuracy"] for r in recipes)
    uniform_best = max(
        TASK.analytic_metrics(
            Recipe(layers={n: LayerSpec(level) for n in LAYERS}, granularity="per_channel")
        )["accuracy"]
        for level in feasible_levels(space)
    )
    assert best > uniform_best + 0.01


def test_constraints_no_recipe_can_meet_are_refused_at_launch() -> None:
    _, space = synthetic_study(
        TASK, search_space={"amount": {"max": 0.8}, "constraints": {"min_sparsity": 0.9}}
    )
    with pytest.raises(ConfigError, match=r"constraints.min_sparsity: no recipe meets it.*80\.0%"):
        check_feasible(space)
    _, space = synthetic_study(
        TASK, search_space={"amount": {"min": 0.3}, "constraints": {"max_sparsity": 0.2}}
    )
    with pytest.raises(ConfigError, match=r"constraints\.max_sparsity: no recipe meets it"):
        check_feasible(space)


def test_the_front_keeps_feasible_trials_by_their_measured_sparsity() -> None:
    _, space = synthetic_study(
        TASK, search_space={"constraints": {"min_sparsity": 0.5, "max_params": 900}}
    )
    assert feasible_where(space) == ["sparsity >= 0.5", "nonzero_params <= 900"]

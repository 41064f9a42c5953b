"""An (order, granularity) that loses the accuracy with nothing pruned (``prune_ptq`` on the
full-size ResNet-18: 41%, fp32 89%, after an epoch of fine-tuning at the default learning rate)
tells the layerwise sampler nothing of how far pruning may go: it is left out, and the search
prunes."""

from __future__ import annotations

import numpy as np
import pytest

from sweep._feasible import FeasibleSampler
from sweep._layerwise import LayerwiseSampler
from sweep._layerwise_startup import uniform_candidates, uniform_options, unpruned_collapses
from tests.sweep.synthetic_study import run_in_flight, synthetic_study
from trials import Recipe
from trials.tasks.synthetic import SyntheticTask

TASK = SyntheticTask(n_layers=24, seed=1)
OBJECTIVES = {"accuracy": "max", "compressed_bytes": "min"}
FAILING = ("prune_ptq", "per_tensor")


def _accuracy(recipe: Recipe) -> float:
    """The task's accuracy, but the failing combo keeps under half of it at any amount."""
    accuracy = TASK.analytic_metrics(recipe)["accuracy"]
    return 0.45 * accuracy if (recipe.order, recipe.granularity) == FAILING else accuracy


def _sweep(n_trials: int, seed: int) -> tuple[LayerwiseSampler, list[Recipe]]:
    study, space = synthetic_study(
        TASK,
        sampler="layerwise",
        seed=seed,
        objectives=OBJECTIVES,
        budget={"n_trials": n_trials},
        search_space={"orders": ["prune_ptq", "prune_qat"]},
    )
    sampler = study.sampler
    if isinstance(sampler, FeasibleSampler):
        sampler = sampler._inner
    assert isinstance(sampler, LayerwiseSampler)

    def values(recipe: Recipe) -> list[float]:
        return [_accuracy(recipe), TASK.analytic_metrics(recipe)["compressed_bytes"]]

    recipes = run_in_flight(study, space, n_trials, 2, values)
    return sampler, recipes


def test_the_trials_of_a_combo_that_collapsed_unpruned_are_left_out() -> None:
    combo = np.array([0, 0, 1, 1, 2, 2])
    pruned = np.array([False, True, True, True, False, True])
    fell = np.array([True, True, False, True, False, False])
    # Combo 0 fell with nothing pruned: all its trials; combo 1 fell only when pruned (pruning's
    # doing); combo 2 held unpruned.
    assert unpruned_collapses(combo, pruned, fell).tolist() == [True, True] + [False] * 4


def test_uniform_candidates_leave_out_a_failed_combo_and_it_bounds_no_level() -> None:
    options = uniform_options(["prune_ptq", "prune_qat"], ["a", "b"], 2)
    levels = np.round(np.arange(0, 1.0, 0.1), 6)
    pairs = uniform_candidates(levels, options, [(0, 0)], {}, set(), failed={options[0][0]})
    assert pairs and all(options[k][0] != options[0][0] for _, k in pairs)
    assert max(level for level, _ in pairs) == len(levels) - 1


@pytest.mark.parametrize("seed", [0, 1])
def test_a_combo_lost_to_quantization_does_not_stop_the_search_from_pruning(seed: int) -> None:
    # 24 layer groups want a 27-trial warm-up: 40 trials leave it 13, thin mode. Its first
    # uniform recipe is the failing combo with nothing pruned.
    sampler, recipes = _sweep(40, seed)
    assert sampler._thin is not None
    first = recipes[0]
    assert (first.order, first.granularity) == FAILING
    assert all(spec.amount == 0.0 for spec in first.layers.values())
    # The uniform recipes go on over the range in the other combos (the failing one's collapse
    # bounded every level before: after 5 uniform recipes the model took over), ...
    uniform = [{s.amount for s in r.layers.values()} for r in recipes[: sampler._thin.n_uniform]]
    assert sampler._thin.n_uniform == 20 and all(len(amounts) == 1 for amounts in uniform)
    assert max(max(amounts) for amounts in uniform) >= 0.5
    assert sum((r.order, r.granularity) == FAILING for r in recipes[1:]) <= 2
    # ... and the model's recipes prune as much as without a failing combo (median mean amount
    # 0.12-0.17 over 4 seeds), not held to what the failing recipe removed, nothing (0.04-0.08).
    mean_amounts = [np.mean([s.amount for s in r.layers.values()]) for r in recipes[20:]]
    assert float(np.median(mean_amounts)) >= 0.1

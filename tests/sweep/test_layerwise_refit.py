"""When ``sampler: layerwise`` fits its models again: their fits are most of a busy driver's
CPU per trial (scripts/bench_scaling.py --capacity), so asks share a fit where a new one would
learn little."""

from __future__ import annotations

import itertools
import math
from typing import Any

import numpy as np
import optuna
import pytest

from sweep._layerwise import REFIT_GROWTH, REFIT_RUNNING
from sweep._layerwise_fit import Models
from sweep._layerwise_model import Encoded
from sweep._samplers import ask_recipe
from sweep._space import Space
from tests.sweep.synthetic_study import objective_values, run_in_flight, synthetic_study
from trials.tasks.synthetic import SyntheticTask

TASK = SyntheticTask(n_layers=8, seed=2)
OBJECTIVES = {"accuracy": "max", "compressed_bytes": "min"}


def _setup() -> tuple[optuna.Study, Space]:
    settings = {"n_startup_trials": 10, "uniform_startup": 5}
    return synthetic_study(
        TASK, sampler="layerwise", objectives=OBJECTIVES, sampler_settings=settings
    )


_values = objective_values(TASK, OBJECTIVES)


def _fitted_on(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The modeled trials of each fit from now on."""
    fitted_on: list[int] = []
    fit = Models.fit

    def counted(self: Models, history: Encoded, values: np.ndarray, *rest: Any) -> object:
        fitted_on.append(len(values))
        return fit(self, history, values, *rest)

    monkeypatch.setattr(Models, "fit", counted)
    return fitted_on


def test_a_burst_of_asks_shares_one_fit_and_a_new_result_refits(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Many slots free at once: the asks between the same finished trials fit the model once
    (its cost is the driver's, per trial), each still asking a recipe of its own."""
    study, space = _setup()
    run_in_flight(study, space, 30, 1, _values)
    fits = _fitted_on(monkeypatch)
    burst = [ask_recipe(study, space) for _ in range(8)]
    assert len({recipe.to_json() for _, recipe in burst}) == 8
    assert len(fits) == 1
    trial, recipe = burst[0]
    study.tell(trial, _values(recipe))
    for _ in range(4):
        ask_recipe(study, space)
    assert len(fits) == 2


def test_a_large_sweep_refits_once_its_trials_grew_by_a_percent(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """At 300 trials one more result changes the model little, and fitting at every completion
    cost a busy driver most of its time: the model is fitted again once the modeled trials grew
    by REFIT_GROWTH (3 or 4 trials here), each fit a fresh bootstrap."""
    study, space = _setup()
    run_in_flight(study, space, 300, 1, _values)
    fitted_on = _fitted_on(monkeypatch)
    run_in_flight(study, space, 12, 1, _values)  # one at a time: a new result before every ask
    assert len(fitted_on) >= 3
    gaps = [later - earlier for earlier, later in itertools.pairwise(fitted_on)]
    assert gaps == [math.ceil(REFIT_GROWTH * n) for n in fitted_on[:-1]], fitted_on
    assert min(gaps) == 3


@pytest.mark.parametrize("in_flight", [3, 33])
def test_with_many_trials_running_the_model_is_fitted_every_few_results(
    monkeypatch: pytest.MonkeyPatch, in_flight: int
) -> None:
    """32 trials running (a cluster of 32 slots): each ask already misses 32 results, and the
    model is fitted again every 32 / REFIT_RUNNING = 4 results, not at each. With the few slots
    of one machine, at each result, as before."""
    study, space = _setup()
    run_in_flight(study, space, 40, 1, _values)
    fitted_on = _fitted_on(monkeypatch)
    run_in_flight(study, space, 60, in_flight, _values)
    gaps = {later - earlier for earlier, later in itertools.pairwise(fitted_on)}
    running = in_flight - 1  # the trial being asked has no parameters yet
    assert gaps == {max(1, running // REFIT_RUNNING)}, fitted_on

"""``sampler_settings.max_drop``: ``layerwise`` keeps its proposals within an accuracy window
below the best trial (in-process ask/tell on the analytic task, no Ray)."""

from __future__ import annotations

import numpy as np
import optuna
import pytest

from sweep import ConfigError, parse_config
from sweep._layerwise import LayerwiseSampler
from sweep._samplers import ask_recipe
from tests.sweep.synthetic_study import (
    add_finished,
    layerwise_sampler,
    synthetic_study,
    unstructured_params,
)
from trials.tasks.synthetic import SyntheticTask

OBJECTIVES = ("accuracy", "compressed_bytes")
TASK = SyntheticTask(n_layers=5, seed=1)
FIVE = tuple(TASK.layer_names)


def _sweep(task: SyntheticTask, n_trials: int, **settings: object) -> tuple[np.ndarray, object]:
    """The accuracy of each of ``n_trials`` trials, and the sampler."""
    study, space = synthetic_study(
        task, sampler="layerwise", seed=0, budget={"n_trials": n_trials}, sampler_settings=settings
    )
    found = []
    for _ in range(n_trials):
        trial, recipe = ask_recipe(study, space)
        metrics = task.analytic_metrics(recipe)
        study.tell(trial, [metrics[name] for name in OBJECTIVES])
        found.append(metrics["accuracy"])
    return np.array(found), study.sampler


def _asks_keep_the_big_layer_in(window: float | None, seed: int) -> tuple[float, float]:
    """60 trials of five layers at random levels: the largest layer (57% of the weights) past
    0.35 costs 15 points, another past 0.6 collapses the accuracy to chance. Returns the share
    of 20 asks that keep the largest layer at 0.35 or less, and the others' median amount."""
    sampler = layerwise_sampler(TASK)
    if window is not None:
        sampler._models.max_drop = {0: window}
    big, fragile = FIVE.index("layer02"), FIVE.index("layer01")
    rng = np.random.default_rng(seed)
    study = optuna.create_study(directions=["maximize", "minimize"], sampler=sampler)
    for _ in range(60):
        levels = rng.choice([0.0, 0.1, 0.3, 0.5, 0.7], size=5)
        accuracy = 0.1 if levels[fragile] > 0.6 else 0.9 - 0.15 * (levels[big] > 0.35)
        params = unstructured_params(dict(zip(FIVE, levels, strict=True)))
        add_finished(
            study,
            sampler._space,
            params,
            [accuracy + rng.normal(0, 1e-3), 1000.0 * (1 - sampler._shares @ levels)],
        )
    asked = []
    for _ in range(20):
        number, _ = ask_recipe(study, sampler._space)
        params = study.get_trials(deepcopy=False)[number].params
        asked.append([params[f"amount:{name}"] for name in FIVE])
        study.tell(number, state=optuna.trial.TrialState.FAIL)
    amounts = np.array(asked)
    others = np.delete(amounts, big, axis=1)
    return float(np.mean(amounts[:, big] <= 0.35)), float(np.median(others.mean(axis=1)))


def test_asks_keep_out_of_what_costs_more_than_the_window_though_it_is_no_collapse() -> None:
    # 15 points down is above the collapse line (the lower half of the range seen): without a
    # window the sampler asked the largest layer past 0.35 in 10% to 85% of its asks, by seed.
    kept = {window: [_asks_keep_the_big_layer_in(window, seed) for seed in (3, 4, 5)]
            for window in (None, 0.1)}  # fmt: skip
    assert all(share >= 0.9 for share, _ in kept[0.1]), kept
    assert np.mean([share for share, _ in kept[None]]) < 0.8, kept
    # ... and the others are still pruned.
    assert all(others >= 0.3 for _, others in kept[0.1]), kept


def test_the_window_bounds_the_predicted_drop_and_marks_trials_below_it_out_of_use() -> None:
    _, sampler = _sweep(SyntheticTask(n_layers=8, seed=1), 40, max_drop=0.02)
    assert isinstance(sampler, LayerwiseSampler) and sampler._fitted is not None
    limit = sampler._fitted[1][5]
    assert limit[0] <= 0.02
    # Minimized values: the negated accuracy. Chance level (0.1) collapsed; 0.9 is out of a
    # window of 0.02 below the best, 0.94 in it.
    values = -np.array([[0.95], [0.94], [0.9], [0.1]])
    assert sampler._models.fell(values, [0]).tolist() == [False, False, True, True]
    assert sampler._models.fell(values, []).tolist() == [False] * 4


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"sampler": "tpe"}, "sampler_settings.max_drop: only sampler layerwise reads it"),
        (
            {"objectives": {"compressed_bytes": "min"}},
            "sampler_settings.max_drop: it bounds the accuracy objective",
        ),
    ],
)
def test_max_drop_that_nothing_reads_is_an_error(fields: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        parse_config(
            {"name": "x", "task": "synthetic", "sampler_settings": {"max_drop": 0.1}, **fields}
        )

"""An Optuna study over the search space of a ``synthetic`` task, built from config fields as the
driver builds it (in-process ask/tell, no Ray); and a layerwise sampler over a task's layers, for
studies whose trials a test writes itself."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import optuna

from sweep import SweepConfig, parse_config
from sweep._layerwise import LayerwiseSampler
from sweep._samplers import ask_recipe, make_sampler
from sweep._space import METHOD_PREFIX, Space
from trials import Recipe
from trials.tasks.synthetic import SyntheticTask


def _space(task: SyntheticTask, config: SweepConfig) -> Space:
    """``task``'s layers, with their weights, in ``config``'s search space."""
    sizes = {name: int(w) for name, w in zip(task.layer_names, task.weights, strict=True)}
    return Space(
        tuple(task.layer_names),
        config.search_space,
        config.trial,
        layer_params=sizes,
        model_params=sum(sizes.values()),
    )


def synthetic_study(task: SyntheticTask, **data: object) -> tuple[optuna.Study, Space]:
    """The study (accuracy max, compressed_bytes min) and space of ``task`` for the config
    fields ``data`` (``sampler``, ``search_space``, ``sampler_settings``, ...)."""
    config = parse_config({"name": "x", "task": "synthetic", **data})
    space = _space(task, config)
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=make_sampler(config, space)
    )
    return study, space


def layerwise_sampler(
    task: SyntheticTask, search_space: dict[str, Any] | None = None, **options: Any
) -> LayerwiseSampler:
    """A layerwise sampler over ``task``'s layers in ``search_space`` (default: the default
    one), seed 0; ``options``: the sampler's keyword arguments."""
    config = parse_config(
        {
            "name": "x",
            "task": "synthetic",
            "sampler": "layerwise",
            "search_space": search_space or {},
        }
    )
    return LayerwiseSampler(_space(task, config), seed=0, **options)


def unstructured_params(
    amounts: dict[str, float], order: str = "prune_ptq", granularity: str = "per_channel"
) -> dict[str, object]:
    """The Optuna parameters of a recipe that prunes each layer of ``amounts`` unstructured."""
    params: dict[str, object] = {"order": order, "granularity": granularity}
    for name, amount in amounts.items():
        params[f"amount:{name}"] = amount
        params[METHOD_PREFIX + name] = "unstructured"
    return params


def add_finished(
    study: optuna.Study, space: Space, params: dict[str, object], values: list[float]
) -> None:
    """Add a finished trial of ``params`` (Optuna parameters of ``space``) with ``values``."""
    distributions = space.distributions()
    study.add_trial(
        optuna.trial.create_trial(
            params=params,
            distributions={name: distributions[name] for name in params},
            values=values,
        )
    )


def objective_values(
    task: SyntheticTask, objectives: Mapping[str, str]
) -> Callable[[Recipe], list[float]]:
    """``recipe -> [its value of each objective]`` on ``task``, as a study is told them."""

    def values(recipe: Recipe) -> list[float]:
        metrics = task.analytic_metrics(recipe)
        return [metrics[name] for name in objectives]

    return values


def run_in_flight(
    study: optuna.Study,
    space: Space,
    n_trials: int,
    in_flight: int,
    values: Callable[[Recipe], list[float]],
) -> list[Recipe]:
    """``n_trials`` recipes asked with ``in_flight`` trials outstanding (as parallel workers
    keep them), each told ``values(recipe)`` in the order asked."""
    recipes: list[Recipe] = []
    flight: list[tuple[int, Recipe]] = []
    while len(recipes) < n_trials:
        while len(flight) < in_flight and len(recipes) + len(flight) < n_trials:
            flight.append(ask_recipe(study, space))
        trial, recipe = flight.pop(0)
        study.tell(trial, values(recipe))
        recipes.append(recipe)
    return recipes

"""The search space: config + the model's prunable layers <-> Optuna parameters <-> Recipe."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from sweep._config import ConfigError, SearchSpace, TrialSettings
from trials import LayerSpec, Recipe

AMOUNT_PREFIX = "amount:"
METHOD_PREFIX = "method:"
METHOD_PARAM = "method"  # the one method parameter of ``method_scope: global``
UNSTRUCTURED = "unstructured"


def select_layers(prunable: Sequence[str], space: SearchSpace) -> list[str]:
    """The prunable layers the config searches, in model order; an unmatched pattern is an error."""
    if not prunable:
        raise ConfigError(
            "task: the model has no prunable layer (no Conv or Linear module); give a model "
            "with Conv1d/2d/3d or Linear layers"
        )
    for pattern in [*space.layers, *space.exclude]:
        if not any(fnmatch.fnmatchcase(name, pattern) for name in prunable):
            shown = ", ".join(prunable[:8]) + (" ..." if len(prunable) > 8 else "")
            raise ConfigError(
                f"search_space: layer pattern {pattern!r} matches no prunable layer "
                f"(prunable layers: {shown})"
            )
    chosen = [
        name
        for name in prunable
        if any(fnmatch.fnmatchcase(name, p) for p in space.layers)
        and not any(fnmatch.fnmatchcase(name, p) for p in space.exclude)
    ]
    if not chosen:
        raise ConfigError(
            "search_space.exclude: every prunable layer is excluded; nothing to search"
        )
    return chosen


@dataclass(frozen=True)
class Space:
    """``structured_prunable`` is :func:`trials.structured_prunable` of the task's model: a layer
    mapped to a reason cannot lose output channels and is only ever searched with method
    ``unstructured``, whatever ``search.methods`` says; a layer absent from it may take any method.

    Methods are searched per layer (one ``method:<layer>`` parameter each) or, with
    ``search.method_scope: global``, by one ``method`` parameter for every layer that can take it.
    """

    layers: tuple[str, ...]
    search: SearchSpace
    trial: TrialSettings
    structured_prunable: Mapping[str, str | None] = field(default_factory=dict)
    backend: str = "onednn"  # the latency target's int8 backend: trials quantize for it
    # Per-layer upper bounds on the amount (from a sensitivity scan); snapped down to the grid,
    # and a bound below the grid's minimum fixes the layer at that minimum.
    upper: Mapping[str, float] = field(default_factory=dict)

    def methods_of(self, name: str) -> list[str]:
        """The methods searched for layer ``name``."""
        if self.structured_prunable.get(name) is not None:
            return [UNSTRUCTURED]
        return list(self.search.methods)

    def _global_method(self) -> bool:
        """Whether a single ``method`` parameter is searched (global scope, a real choice)."""
        return self.search.method_scope == "global" and any(
            len(self.methods_of(name)) > 1 for name in self.layers
        )

    def _method(self, trial: optuna.trial.BaseTrial, name: str, chosen: str | None) -> str:
        methods = self.methods_of(name)
        if len(methods) == 1:
            return methods[0]
        if chosen is not None:  # global scope
            return chosen if chosen in methods else UNSTRUCTURED
        return str(trial.suggest_categorical(METHOD_PREFIX + name, methods))

    def amount_grid(self, name: str) -> tuple[float, float, float]:
        """(low, high, step) of layer ``name``'s amount: the config's grid, capped by ``upper``."""
        amount = self.search.amount
        top = min(amount.max, self.upper.get(name, amount.max))
        # Optuna needs (high - low) to be a multiple of step: snap the top of the range down.
        steps = max(0, int(round((top - amount.min) / amount.step, 9)))
        return amount.min, round(amount.min + steps * amount.step, 9), amount.step

    def suggest(self, trial: optuna.trial.BaseTrial) -> Recipe:
        order = trial.suggest_categorical("order", list(self.search.orders))
        granularity = trial.suggest_categorical("granularity", list(self.search.granularities))
        chosen = (
            str(trial.suggest_categorical(METHOD_PARAM, list(self.search.methods)))
            if self._global_method()
            else None
        )
        layers: dict[str, LayerSpec] = {}
        for name in self.layers:
            low, high, step = self.amount_grid(name)
            amount = (
                trial.suggest_float(AMOUNT_PREFIX + name, low, high, step=step)
                if high > low
                else low
            )
            method = self._method(trial, name, chosen)
            layers[name] = LayerSpec(amount=round(float(amount), 6), method=method)
        return Recipe(
            layers=layers,
            order=str(order),
            granularity=str(granularity),
            backend=self.backend,
            finetune_epochs=self.trial.finetune_epochs,
            qat_epochs=self.trial.qat_epochs,
            calibration_batches=self.trial.calibration_batches,
            learning_rate=self.trial.learning_rate,
            round_to=self.trial.round_to,
        )

    def distributions(self) -> dict[str, BaseDistribution]:
        """Every parameter :meth:`suggest` may draw, with its distribution (to rebuild trials)."""
        found: dict[str, BaseDistribution] = {
            "order": CategoricalDistribution(list(self.search.orders)),
            "granularity": CategoricalDistribution(list(self.search.granularities)),
        }
        global_method = self._global_method()
        if global_method:
            found[METHOD_PARAM] = CategoricalDistribution(list(self.search.methods))
        for name in self.layers:
            low, high, step = self.amount_grid(name)
            if high > low:
                found[AMOUNT_PREFIX + name] = FloatDistribution(low, high, step=step)
            if len(self.methods_of(name)) > 1 and not global_method:
                found[METHOD_PREFIX + name] = CategoricalDistribution(self.methods_of(name))
        return found

    def params_of(self, recipe: Recipe) -> dict[str, Any]:
        """The Optuna parameters that reproduce ``recipe`` (to enqueue or rebuild trials)."""
        params: dict[str, Any] = {"order": recipe.order, "granularity": recipe.granularity}
        global_method = self._global_method()
        for name in self.layers:
            spec = recipe.layer(name)
            params[AMOUNT_PREFIX + name] = spec.amount
            if len(self.methods_of(name)) > 1:
                if global_method:
                    params.setdefault(METHOD_PARAM, spec.method)
                else:
                    params[METHOD_PREFIX + name] = spec.method
        return params


def objective_values(metrics: Mapping[str, float], objectives: Mapping[str, str]) -> list[float]:
    return [float(metrics[name]) for name in objectives]

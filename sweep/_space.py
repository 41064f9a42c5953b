"""The search space: config + the model's prunable layers <-> Optuna parameters <-> Recipe."""

from __future__ import annotations

import fnmatch
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from functools import cached_property
from typing import Any

import optuna
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution

from sweep._config import ConfigError, SearchSpace, TrialSettings
from trials import CHANNEL_MULTIPLE, LayerSpec, Recipe, Removable

AMOUNT_PREFIX = "amount:"
OFFSET_PREFIX = "offset:"
LEVEL_PARAM = "level"  # amount_mode relative: the global amount each layer's offset adds to
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


def tie_owners(layers: Sequence[str], space: SearchSpace) -> dict[str, str]:
    """Each searched layer -> the layer whose ``amount:`` parameter it takes: the first layer of
    its ``search_space.tie`` group, else itself. Bad groups are config errors."""
    owners = {name: name for name in layers}
    for index, group in enumerate(space.tie):
        members: list[str] = []
        for pattern in group:
            matched = [name for name in layers if fnmatch.fnmatchcase(name, pattern)]
            if not matched:
                raise ConfigError(
                    f"search_space.tie.{index}: pattern {pattern!r} matches no searched layer "
                    "(excluded layers cannot be tied)"
                )
            members += [name for name in matched if name not in members]
        for name in members:
            if owners[name] != name:
                raise ConfigError(
                    f"search_space.tie.{index}: layer {name!r} is already in another tie group; "
                    "merge the two groups"
                )
        for name in members:
            owners[name] = members[0]
    return owners


@dataclass(frozen=True)
class Space:
    """``structured_prunable`` is :func:`trials.structured_prunable` of the task's model: a layer
    mapped to a reason cannot lose output channels and is only ever searched with method
    ``unstructured``, whatever ``search.methods`` says; a layer absent from it may take any method.

    Methods are searched per layer (one ``method:<layer>`` parameter each) or, with
    ``search.method_scope: global``, by one ``method`` parameter for every layer that can take it.
    Tied layers (``search.tie``) share the ``amount:`` parameter of their group's first layer.

    ``layer_params`` (weights per layer) and ``model_params`` (the fp32 model's parameters)
    estimate a recipe's sparsity and parameter count for ``search.constraints``.

    ``coupled``: groups of layers whose output channels structured pruning removes together
    (:func:`trials.structured_groups`, those of two or more): a group loses the largest amount
    its structured members ask for, in every member. The layerwise sampler models a group so.
    """

    layers: tuple[str, ...]
    search: SearchSpace
    trial: TrialSettings
    structured_prunable: Mapping[str, str | None] = field(default_factory=dict)
    backend: str = "onednn"  # the latency target's int8 backend: trials quantize for it
    runtime: str = "onnxruntime"  # the runtime that runs and times the models
    # Whether the model has layers that prune_dynamic quantizes (Linear, LSTM).
    dynamic_layers: bool = False
    # Per-layer upper bounds on the amount (from a sensitivity scan); snapped down to the grid,
    # and a bound below the grid's minimum fixes the layer at that minimum.
    upper: Mapping[str, float] = field(default_factory=dict)
    layer_params: Mapping[str, int] = field(default_factory=dict)
    model_params: int = 0
    coupled: tuple[tuple[str, ...], ...] = ()
    # What structured pruning removes from each layer that can lose channels
    # (trials.structured_layout); a layer absent from it is modeled by its amount.
    removable: Mapping[str, Removable] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.owners  # noqa: B018 - validates the tie groups now, as a config error
        if "prune_dynamic" in (self.search.orders or ()) and not self.dynamic_layers:
            raise ConfigError(
                "search_space.orders: prune_dynamic quantizes Linear and LSTM layers, and "
                "this model has none; remove prune_dynamic"
            )
        limits = self.search.constraints
        if limits.max_params is not None and not self.model_params:
            raise ConfigError(
                "search_space.constraints.max_params: the task's parameter count is unknown"
            )
        if (limits.max_sparsity, limits.min_sparsity) != (None, None) and not self.layer_params:
            raise ConfigError(
                "search_space.constraints: the task's layer sizes are unknown; "
                "remove max_sparsity/min_sparsity"
            )

    def removed_share(self, name: str, amount: float) -> float:
        """The share of ``name``'s output channels (heads) that structured pruning by
        ``amount`` removes, as the engine rounds them; ``amount`` where that is unknown."""
        removable = self.removable.get(name)
        return amount if removable is None else removable.removed_share(amount, self.round_to)

    @property
    def round_to(self) -> int:
        """Structured pruning keeps multiples of this many channels: ``trial.round_to``, else the
        counts the runtime runs fast (:data:`trials.CHANNEL_MULTIPLE`: off multiples of 4, ONNX
        Runtime's convolutions run up to 4x slower; scripts/bench_round_to.py)."""
        given = self.trial.round_to
        return CHANNEL_MULTIPLE[self.runtime] if given is None else given

    @cached_property
    def orders(self) -> list[str]:
        """The searched orders: ``search.orders``, else prune_ptq, prune_qat, prune_dynamic where
        the model has layers it quantizes, and prune_float (no quantization: the answer where
        int8 does not pay)."""
        if self.search.orders:
            return list(self.search.orders)
        dynamic = ["prune_dynamic"] if self.dynamic_layers else []
        return ["prune_ptq", "prune_qat", *dynamic, "prune_float"]

    @cached_property
    def owners(self) -> dict[str, str]:
        """Layer -> the layer whose amount parameter it takes (itself unless tied)."""
        return tie_owners(self.layers, self.search)

    def methods_of(self, name: str) -> list[str]:
        """The methods searched for layer ``name``."""
        if self.structured_prunable.get(name) is not None:
            return [UNSTRUCTURED]
        return list(self.search.methods)

    def global_method(self) -> bool:
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

    @cached_property
    def _caps(self) -> dict[str, float]:
        # Built once: asks call cap() for every group, and scanning every layer for each one
        # cost 8.6 ms of a 300-layer ask.
        caps: dict[str, float] = {}
        for name in self.layers:
            owner, high = self.owners[name], self.amount_grid(name)[1]
            caps[owner] = min(high, caps.get(owner, high))
        return caps

    def cap(self, owner: str) -> float:
        """The highest amount of ``owner``'s tie group: the lowest bound of its layers."""
        return self._caps[owner]

    def base_grid(self) -> tuple[float, float, float]:
        """(low, high, step) of the config's amount grid, before any layer's bound."""
        amount = self.search.amount
        # Optuna needs (high - low) to be a multiple of step: snap the top of the range down.
        steps = int(round((amount.max - amount.min) / amount.step, 9))
        return amount.min, round(amount.min + steps * amount.step, 9), amount.step

    def amount_grid(self, name: str) -> tuple[float, float, float]:
        """(low, high, step) of layer ``name``'s amount: the config's grid, capped by ``upper``."""
        amount = self.search.amount
        top = min(amount.max, self.upper.get(name, amount.max))
        # Optuna needs (high - low) to be a multiple of step: snap the top of the range down.
        steps = max(0, int(round((top - amount.min) / amount.step, 9)))
        return amount.min, round(amount.min + steps * amount.step, 9), amount.step

    def _relative(self) -> bool:
        low, high, _ = self.base_grid()
        return self.search.amount_mode == "relative" and high > low

    def _spread(self) -> float:
        _, high, step = self.base_grid()
        low = self.search.amount.min
        steps = int(round(min(self.search.amount.spread, high - low) / step, 9))
        return round(steps * step, 9)

    def _amounts(self, trial: optuna.trial.BaseTrial) -> dict[str, float]:
        """Each searched layer's amount, drawn from ``trial`` (tied layers drawn once)."""
        low, high, step = self.base_grid()
        drawn: dict[str, float] = {}
        level = 0.0
        if self._relative():
            level = trial.suggest_float(LEVEL_PARAM, low, high, step=step)
            spread = self._spread()
        for name in self.layers:
            owner = self.owners[name]
            if owner in drawn:
                drawn[name] = drawn[owner]
            elif high <= low:
                drawn[name] = low
            elif self._relative():
                offset = (
                    trial.suggest_float(OFFSET_PREFIX + owner, -spread, spread, step=step)
                    if spread > 0
                    else 0.0
                )
                drawn[name] = min(self.cap(owner), max(low, level + offset))
            elif self.cap(owner) > low:
                drawn[name] = trial.suggest_float(
                    AMOUNT_PREFIX + owner, low, self.cap(owner), step=step
                )
            else:  # its bound from a scan is the grid's minimum
                drawn[name] = low
        return {name: round(float(value), 6) for name, value in drawn.items()}

    def _offset_for(self, level: float, amount: float, cap: float) -> float | None:
        """The offset that turns ``level`` into ``amount`` for a layer capped at ``cap`` (as
        :meth:`_amounts` computes it), or None if no offset within the spread does."""
        low, _, step = self.base_grid()
        spread = self._spread()
        offset = min(spread, max(-spread, amount - level))
        offset = round(round(offset / step) * step, 6)
        if abs(min(cap, max(low, level + offset)) - amount) < 1e-6:
            return offset
        return None

    def _level_of(self, recipe: Recipe) -> float:
        """A global level from which offsets within the spread reproduce every amount of
        ``recipe`` (amounts clipped at the range and at a layer's bound count as reached): the
        grid value nearest to their mean among those that do."""
        low, high, step = self.base_grid()
        owned = {owner: recipe.layer(owner).amount for owner in dict.fromkeys(self.owners.values())}
        grid = [round(low + k * step, 9) for k in range(round((high - low) / step) + 1)]
        fits = [
            g
            for g in grid
            if all(self._offset_for(g, a, self.cap(o)) is not None for o, a in owned.items())
        ]
        if not fits:
            raise ValueError(
                f"amounts {list(owned.values())} are not within search_space.amount.spread of "
                "one level"
            )
        mean = sum(owned.values()) / len(owned)
        return min(fits, key=lambda g: abs(g - mean))

    def holds(self, recipe: Recipe) -> bool:
        """Whether ``recipe``'s order and granularity are among the searched ones."""
        return recipe.order in self.orders and recipe.granularity in self.search.granularities

    def suggest(self, trial: optuna.trial.BaseTrial) -> Recipe:
        order = trial.suggest_categorical("order", list(self.orders))
        granularity = trial.suggest_categorical("granularity", list(self.search.granularities))
        chosen = (
            str(trial.suggest_categorical(METHOD_PARAM, list(self.search.methods)))
            if self.global_method()
            else None
        )
        amounts = self._amounts(trial)
        layers: dict[str, LayerSpec] = {}
        for name in self.layers:
            method = self._method(trial, name, chosen)
            layers[name] = LayerSpec(amount=amounts[name], method=method)
        return Recipe(
            layers=layers,
            order=str(order),
            granularity=str(granularity),
            backend=self.backend,
            runtime=self.runtime,
            finetune_epochs=self.trial.finetune_epochs,
            qat_epochs=self.trial.qat_epochs,
            calibration_batches=self.trial.calibration_batches,
            learning_rate=self.trial.learning_rate,
            round_to=self.round_to,
        )

    def distributions(self) -> dict[str, BaseDistribution]:
        """Every parameter :meth:`suggest` may draw, with its distribution (to rebuild trials)."""
        low, high, step = self.base_grid()
        found: dict[str, BaseDistribution] = {
            "order": CategoricalDistribution(list(self.orders)),
            "granularity": CategoricalDistribution(list(self.search.granularities)),
        }
        global_method = self.global_method()
        if global_method:
            found[METHOD_PARAM] = CategoricalDistribution(list(self.search.methods))
        relative, spread = self._relative(), self._spread()
        if relative:
            found[LEVEL_PARAM] = FloatDistribution(low, high, step=step)
        for name in self.layers:
            if high > low and self.owners[name] == name:
                if not relative:
                    top = self.cap(name)
                    if top > low:
                        found[AMOUNT_PREFIX + name] = FloatDistribution(low, top, step=step)
                elif spread > 0:
                    found[OFFSET_PREFIX + name] = FloatDistribution(-spread, spread, step=step)
            if len(self.methods_of(name)) > 1 and not global_method:
                found[METHOD_PREFIX + name] = CategoricalDistribution(self.methods_of(name))
        return found

    def params_of(self, recipe: Recipe) -> dict[str, Any]:
        """The Optuna parameters that reproduce ``recipe`` (to enqueue or rebuild trials)."""
        params: dict[str, Any] = {"order": recipe.order, "granularity": recipe.granularity}
        global_method = self.global_method()
        relative = self._relative()
        if relative:
            params[LEVEL_PARAM] = level = self._level_of(recipe)
        for name in self.layers:
            spec = recipe.layer(name)
            owner = self.owners[name] == name  # a tied layer's amount is its owner's
            if owner and not relative:
                params[AMOUNT_PREFIX + name] = spec.amount
            elif owner and self._spread() > 0:
                params[OFFSET_PREFIX + name] = self._offset_for(level, spec.amount, self.cap(name))
            if len(self.methods_of(name)) > 1:
                if global_method:
                    params.setdefault(METHOD_PARAM, spec.method)
                else:
                    params[METHOD_PREFIX + name] = spec.method
        return params

    def estimated_pruned(self, recipe: Recipe) -> int:
        """The weights ``recipe``'s amounts prune, layer by layer as the pruner rounds them."""
        return sum(
            round(recipe.layer(name).amount * self.layer_params.get(name, 0))
            for name in self.layers
        )

    def estimated_sparsity(self, recipe: Recipe) -> float:
        """What a trial's ``sparsity`` will be, known before it runs: the share of every prunable
        layer's weights (searched or not) that ``recipe``'s amounts prune. Exact for
        unstructured pruning; structured pruning also removes the next layers' inputs, and
        rounds channels (``round_to``)."""
        return self.estimated_pruned(recipe) / max(1, sum(self.layer_params.values()))

    def constraint_values(self, recipe: Recipe) -> dict[str, float]:
        """Optuna constraint values of ``recipe`` (feasible when <= 0), one per configured limit:
        from its estimated sparsity, and its parameter count as the model's less the pruned
        weights (structured pruning also removes biases, BatchNorm channels, next inputs)."""
        limits = self.search.constraints
        if limits == type(limits)():
            return {}
        sparsity = self.estimated_sparsity(recipe)
        values: dict[str, float] = {}
        if limits.max_sparsity is not None:
            values["max_sparsity"] = sparsity - limits.max_sparsity
        if limits.min_sparsity is not None:
            values["min_sparsity"] = limits.min_sparsity - sparsity
        if limits.max_params is not None:
            pruned = self.estimated_pruned(recipe)
            values["max_params"] = (self.model_params - pruned - limits.max_params) / max(
                1, self.model_params
            )
        return values


def objective_values(metrics: Mapping[str, float], objectives: Mapping[str, str]) -> list[float]:
    return [float(metrics[name]) for name in objectives]

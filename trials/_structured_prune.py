"""Structured pruning of a recipe's ``structured`` layers: the least important output channels
(attention heads) of each coupled group removed, in place, as :mod:`trials._structured` analysed
the model (its docstring defines the terms)."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trials._heads import head_channels, set_head_count
from trials._pruning import PRUNABLE_TYPES, prunable_layers
from trials._recipe import Recipe, RecipeError
from trials._structured import (
    STRUCTURED,
    _analyse,
    _channels,
    _example,
    _full_group,
    _output_shapes,
    _removable,
    _traceable,
    _weight,
)


def _importance(graph: Any, group: Any, channels: int) -> torch.Tensor:
    """Per channel of the group's root: L2 norm of the output weights over the coupled layers."""
    squares = torch.zeros(channels, dtype=torch.float64)
    for item in group:
        dep, idxs = item.dep, item.idxs
        module = dep.target.module
        if not isinstance(module, PRUNABLE_TYPES) or not graph.is_out_channel_pruning_fn(
            dep.handler
        ):
            continue
        weight = _weight(module).detach().flatten(1).to(torch.float64).cpu()
        norms = weight.pow(2).sum(dim=1)
        squares.index_add_(0, torch.tensor(item.root_idxs), norms[torch.tensor(idxs)])
    return squares.sqrt()


def group_amounts(recipe: Recipe, groups: list[tuple[str, ...]]) -> dict[tuple[str, ...], float]:
    """Each coupled group's structured amount: the maximum its members ask for."""
    amounts: dict[tuple[str, ...], float] = {}
    for group in groups:
        asked = [
            recipe.layers[name].amount
            for name in group
            if name in recipe.layers and recipe.layers[name].method == STRUCTURED
        ]
        if asked and max(asked) > 0.0:
            amounts[group] = max(asked)
    return amounts


def prune_structured(
    model: nn.Module, recipe: Recipe, example_input: torch.Tensor
) -> dict[str, int]:
    """Remove the output channels that the recipe's ``structured`` layers ask for, in place.

    Returns the output channels removed per layer (every member of a pruned group, including
    members that were pulled along). Raises :class:`RecipeError` naming the layer and the reason
    when the recipe asks to structure-prune a layer that cannot be. A recipe without structured
    layers returns ``{}`` without tracing the model.
    """
    asked = [n for n, spec in recipe.layers.items() if spec.method == STRUCTURED]
    if not asked:
        return {}
    analysis = _analyse(model, example_input)
    for name in prunable_layers(model):
        reason = analysis.reasons.get(name)
        if name in asked and reason is not None:
            raise RecipeError(
                f"layers.{name}: cannot be pruned with method 'structured': {reason} "
                "(use method 'unstructured' for this layer)"
            )
    groups = list(dict.fromkeys(analysis.groups[name] for name in asked))
    before = {name: _channels(analysis, name) for group in groups for name in group}
    graph, example = analysis.graph, _example(model, example_input)
    expected = analysis.output_shapes
    with _traceable(model):
        for group, amount in group_amounts(recipe, groups).items():
            root = analysis.modules[group[0]]
            channels = before[group[0]]
            removable = _removable(analysis, group)
            remove = removable.count - removable.kept(amount, recipe.round_to)
            heads = analysis.heads.get(group)
            if remove <= 0:
                continue
            importance = _importance(graph, _full_group(graph, root), channels)
            if heads:
                idxs = head_channels(heads, importance, remove)
            else:
                idxs = sorted(torch.argsort(importance, stable=True)[:remove].tolist())
            pruner = graph.get_pruner_of_module(root)
            pruning = graph.get_pruning_group(root, pruner.prune_out_channels, idxs)
            if not graph.check_pruning_group(pruning):
                raise RecipeError(
                    f"layers.{group[0]}: structured pruning would remove a whole layer"
                )
            pruning.prune()
            if heads:
                set_head_count(analysis.modules, heads, heads.count - remove)
    shapes = _output_shapes(model, example)
    if shapes != expected:  # the dry run in _analyse should have reported this layer
        raise RuntimeError(f"structured pruning changed the output shape ({expected} -> {shapes})")
    return {
        name: before[name] - _channels(analysis, name)
        for name in before
        if before[name] != _channels(analysis, name)
    }

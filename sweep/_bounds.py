"""Reading a stored sensitivity scan: per-layer drop curves, safe amounts, and the bounds and
first trials a sweep takes from them (``search_space.bounds_from``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import numpy as np
import optuna
import pandas as pd

from storage import Store, SweepNotFoundError
from sweep._config import ConfigError, SweepConfig
from sweep._feasible import (
    amount_levels,
    constrained_choice,
    is_feasible,
    make_feasible,
    sparsity_interval,
)
from sweep._space import Space
from trials import LayerSpec, Recipe

KIND = "sensitivity"
# Key of the stored config holding the per-layer bounds a sweep was launched with.
BOUNDS_KEY = "amount_bounds"


def scan_results(store: Store, name: str) -> pd.DataFrame:
    """One row per scan trial: ``layer`` (``None`` for the reference), ``granularity``,
    ``amount``, ``state``, ``accuracy``, ``accuracy_drop`` (NaN unless COMPLETE)."""
    info = store.get_sweep(name)
    if info.config.get("kind") != KIND:
        raise ConfigError(f"{name}: not a sensitivity scan; run `sweep sensitivity CONFIG` first")
    rows = []
    for trial in store.trials(name).to_dict(orient="records"):
        pruned = {k: v["amount"] for k, v in trial["recipe"]["layers"].items() if v["amount"] > 0}
        layer, amount = next(iter(pruned.items()), (None, 0.0))
        complete = trial["state"] == "COMPLETE"
        rows.append(
            {
                "layer": layer,
                "granularity": trial["recipe"]["granularity"],
                "amount": float(amount),
                "state": trial["state"],
                "accuracy": trial["accuracy"] if complete else math.nan,
                "accuracy_drop": trial["accuracy_drop"] if complete else math.nan,
            }
        )
    frame = pd.DataFrame(rows)
    frame.attrs["layers"] = list(info.config.get("layers", []))
    frame.attrs["fp32_accuracy"] = info.config.get("fp32_metrics", {}).get("accuracy")
    return frame


def curves(results: pd.DataFrame) -> dict[tuple[str, str], list[tuple[float, float]]]:
    """(layer, granularity) -> [(amount, drop)] by amount, where drop is the accuracy lost to
    pruning the layer: the trial's drop minus the unpruned int8 reference's (so quantization's
    own loss, common to every layer, does not count; 0 at amount 0). A trial that did not
    complete counts as an infinite drop: never safe."""
    curves: dict[tuple[str, str], list[tuple[float, float]]] = {}
    plain = pd.DataFrame(results, copy=False)
    plain.attrs = {}  # pandas copies attrs into every filtered frame: hundreds of layer names
    reference = plain[plain["layer"].isna()]
    grouped = plain.dropna(subset=["layer"]).groupby(["layer", "granularity"], sort=False)
    scanned: dict[Any, pd.DataFrame] = dict(iter(grouped))
    empty = plain.iloc[:0]
    for granularity in plain["granularity"].unique():
        zero = reference[reference["granularity"] == granularity]["accuracy_drop"]
        start = float(zero.iloc[0]) if len(zero) else math.nan
        for layer in results.attrs["layers"]:
            mine = scanned.get((layer, granularity), empty)
            points = [(0.0, 0.0 if math.isfinite(start) else math.nan)] + [
                (float(a), float(d) - start)
                for a, d in zip(mine["amount"], mine["accuracy_drop"], strict=True)
            ]
            curves[(layer, granularity)] = [
                (a, math.inf if math.isnan(d) else d) for a, d in sorted(points)
            ]
    return curves


def safe_amount(points: Sequence[tuple[float, float]], max_drop: float) -> float:
    """The largest amount up to which every scanned amount keeps the drop within ``max_drop``."""
    safe = 0.0
    for amount, drop in points:
        if drop > max_drop:
            break
        safe = amount
    return safe


def safe_amounts(store: Store, name: str, max_drop: float) -> dict[str, float]:
    """Per layer, its largest safe amount over the scanned granularities."""
    safe: dict[str, float] = {}
    for (layer, _), points in curves(scan_results(store, name)).items():
        safe[layer] = max(safe.get(layer, 0.0), safe_amount(points, max_drop))
    return safe


def bounded_space(store: Store, config: SweepConfig, space: Space) -> Space:
    """``space`` with each searched layer's amount capped at its safe amount in the scan that
    ``search_space.bounds_from`` names (unchanged without it)."""
    source = config.search_space.bounds_from
    if source is None:
        return space
    safe = safe_amounts(store, source.sensitivity, source.max_drop)
    missing = [name for name in space.layers if name not in safe]
    if missing:
        raise ConfigError(
            f"search_space.bounds_from.sensitivity: scan {source.sensitivity!r} did not scan "
            f"layer(s) {', '.join(missing[:5])}; scan this config's layers first"
        )
    return replace(space, upper={name: safe[name] for name in space.layers})


def uniform_params(space: Space, count: int) -> list[dict[str, Any]]:
    """Optuna params of ``count`` uniform recipes to enqueue first: every layer at one level
    (capped by its bound), levels spread evenly up to the largest bound, highest first."""
    highs = {name: space.amount_grid(name)[1] for name in space.layers}
    low, _, step = space.amount_grid(space.layers[0])
    top = max(highs.values())
    levels: list[float] = []
    for k in range(count, 0, -1):
        level = round(low + int(round((top - low) * k / count / step, 9)) * step, 9)
        if level not in levels:
            levels.append(level)
    params = []
    for level in levels:
        layers = {
            name: LayerSpec(min(level, highs[name]), space.methods_of(name)[0])
            for name in space.layers
        }
        recipe = Recipe(
            layers=layers,
            order=space.orders[0],
            granularity=space.search.granularities[0],
            qat_epochs=max(1, space.trial.qat_epochs),
        )
        params.append(space.params_of(recipe))
    return params


def enqueue_uniform(study: optuna.Study, space: Space, config: SweepConfig) -> None:
    """Enqueue ``bounds_from.enqueue_uniform`` uniform recipes as the study's first trials,
    those that meet the constraints."""
    if config.search_space.bounds_from is not None:
        for params in uniform_params(space, config.search_space.bounds_from.enqueue_uniform):
            if is_feasible(space, space.suggest(optuna.trial.FixedTrial(params))):
                study.enqueue_trial(params)


def one_shot_amounts(results: pd.DataFrame, space: Space, target: float) -> dict[str, float]:
    """The one-shot sensitivity allocation at sparsity ``target`` (Distiller's sensitivity
    pruning with one threshold): every layer at its largest scanned amount whose accuracy drop
    stays within a threshold shared by all layers, for the smallest threshold whose recipe
    reaches ``target``; amounts snapped down to the grid and each layer's bound, tied layers at
    the lowest of their group."""
    points = _scanned(results, space)
    low, _, step = space.base_grid()

    def allocation(threshold: float) -> dict[str, float]:
        safe = {}
        for name in space.layers:
            top = min(safe_amount(points[name], threshold), space.cap(space.owners[name]))
            safe[name] = max(low, round(low + math.floor((top - low) / step + 1e-9) * step, 6))
        return {
            name: min(safe[n] for n in space.layers if space.owners[n] == space.owners[name])
            for name in space.layers
        }

    drops = sorted({d for curve in points.values() for _, d in curve if math.isfinite(d)} | {0.0})
    chosen = allocation(math.inf)
    for threshold in drops:
        candidate = allocation(threshold)
        if space.estimated_sparsity(_recipe(space, candidate)) >= target - 1e-9:
            chosen = candidate
            break
    return chosen


def _scanned(results: pd.DataFrame, space: Space) -> dict[str, list[tuple[float, float]]]:
    """Each searched layer's scanned (amount, drop) points, at the first searched granularity
    the scan has (else its first)."""
    scanned = curves(results)
    granularity = next(
        (g for g in space.search.granularities if (space.layers[0], g) in scanned),
        next(iter(scanned))[1] if scanned else None,
    )
    return {name: scanned.get((name, str(granularity)), [(0.0, 0.0)]) for name in space.layers}


def marginal_amounts(results: pd.DataFrame, space: Space, target: float) -> dict[str, float]:
    """The allocation at sparsity ``target`` that loses the least summed scanned drop: each
    layer at one of its scanned amounts (snapped down to the grid and its bound), chosen with one
    Lagrange multiplier on the layers' weight shares, as ``layerwise`` allocates; unlike one
    threshold for every layer, it prunes a layer with many weights further at the same drop.
    Where the multiplier overshoots the target (the drops are measured at a few amounts only),
    the one-shot allocation is kept if it loses less."""
    points = _scanned(results, space)
    grid = np.array(amount_levels(space))
    groups = list(dict.fromkeys(space.owners.values()))
    costs = np.full((len(groups), len(grid)), np.inf)
    shares = np.zeros(len(groups))
    total = max(1, sum(space.layer_params.values()))
    for row, group in enumerate(groups):
        members = [n for n in space.layers if space.owners[n] == group]
        shares[row] = sum(space.layer_params.get(n, 0) for n in members) / total
        for column, amount in enumerate(grid):
            if amount > space.cap(group) + 1e-9:
                continue
            # A grid amount costs what the scan measured at it; amounts it did not scan stay out
            # (interpolating a convex curve between scanned amounts would flatter them).
            drops = [_drop_at(points[n], float(amount)) for n in members]
            if all(d is not None for d in drops):
                costs[row, column] = sum(d for d in drops if d is not None)
    chosen = constrained_choice(costs, np.tile(grid, (len(groups), 1)), shares, (target, 1.0))
    picked = {group: float(grid[chosen[row]]) for row, group in enumerate(groups)}
    least = {name: picked[space.owners[name]] for name in space.layers}
    one_shot = one_shot_amounts(results, space, target)

    def summed(amounts: dict[str, float]) -> float:
        return sum(_drop_at(points[n], amounts[n]) or 0.0 for n in space.layers)

    reaches = space.estimated_sparsity(_recipe(space, least)) >= target - 1e-9
    return least if reaches and summed(least) <= summed(one_shot) else one_shot


def _drop_at(points: Sequence[tuple[float, float]], amount: float) -> float | None:
    """The scanned drop at ``amount`` (capped at 1: a layer that broke the model), if scanned."""
    for scanned, drop in points:
        if abs(scanned - amount) < 1e-6:
            return min(drop, 1.0)
    return None


def _recipe(
    space: Space, amounts: dict[str, float], combo: tuple[str, str] | None = None
) -> Recipe:
    order, granularity = combo or (space.orders[0], space.search.granularities[0])
    return Recipe(
        layers={n: LayerSpec(amounts[n], space.methods_of(n)[0]) for n in space.layers},
        order=order,
        granularity=granularity,
        qat_epochs=max(1, space.trial.qat_epochs),
    )


def seed_params(
    store: Store, config: SweepConfig, space: Space
) -> tuple[list[dict[str, Any]], str | None]:
    """(Optuna params of the trials seeded from a sensitivity scan, a line to log): the one-shot
    allocation at the constraints' lowest sparsity, in each searched (order, granularity)."""
    interval = sparsity_interval(space)
    source = config.search_space.seed_from
    if interval is None or interval[0] <= 0:
        if source is not None:
            raise ConfigError(
                "search_space.seed_from: seeds trials at a sparsity the constraints ask for; "
                "add search_space.constraints.min_sparsity (or max_params)"
            )
        return [], None
    name = source.sensitivity if source is not None else f"{config.name}-{KIND}"
    try:
        results = scan_results(store, name)
    except (ConfigError, SweepNotFoundError):
        if source is not None:
            raise
        return [], (
            f"search_space.constraints: no sensitivity scan {name!r} to seed the search at "
            f"{interval[0]:.0%} sparsity; `sweep sensitivity CONFIG` stores one, and the "
            "next launch starts from its one-shot allocation"
        )
    combos = len(space.orders) * len(space.search.granularities)
    wanted = source.trials if source is not None and source.trials else combos
    seeded = scan_seeds(
        results, space, interval[0], min(wanted, max(1, config.budget.n_trials // 6))
    )
    return seeded, f"seeding {len(seeded)} trials from sensitivity scan {name!r}"


def scan_seeds(
    results: pd.DataFrame, space: Space, target: float, count: int
) -> list[dict[str, Any]]:
    """Optuna params of ``count`` trials at sparsity ``target`` from a scan: the allocation of
    least summed drop (:func:`marginal_amounts`) and the one-shot threshold allocation
    (:func:`one_shot_amounts`), in each searched (order, granularity) in turn, orders first."""
    allocations = [
        marginal_amounts(results, space, target),
        one_shot_amounts(results, space, target),
    ]
    # Every order before a second granularity, and every (order, granularity) with the
    # least-drop allocation before the one-shot one: a few seeds already span the orders, and
    # which order recovers best at a high sparsity differs between models.
    combos = [(o, g) for g in space.search.granularities for o in space.orders]
    pairs = [(amounts, combo) for amounts in allocations for combo in combos]
    seeded = []
    for amounts, combo in (pairs * count)[:count]:
        params = seed_params_of(space, _recipe(space, amounts, combo))
        if params is not None:
            seeded.append(params)
    return seeded


def seed_params_of(space: Space, recipe: Recipe) -> dict[str, Any] | None:
    """The Optuna params of ``recipe`` to enqueue, within the constraints (None if no shift of
    its amounts meets them); in amount_mode relative, amounts farther from their mean than the
    spread allows are moved to its edge first."""
    return make_feasible(space, _params(space, recipe))


def _params(space: Space, recipe: Recipe) -> dict[str, Any]:
    try:
        return space.params_of(recipe)
    except ValueError:
        low, high, step = space.base_grid()
        mean = sum(recipe.layer(n).amount for n in space.layers) / len(space.layers)
        level = min(high, max(low, round(low + round((mean - low) / step) * step, 6)))
        spread = space.search.amount.spread
        layers = {
            n: LayerSpec(
                round(min(max(spec.amount, level - spread), level + spread), 6), spec.method
            )
            for n, spec in recipe.layers.items()
        }
        return space.params_of(recipe.with_layers(layers))

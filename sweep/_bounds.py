"""Reading a stored sensitivity scan: per-layer drop curves, safe amounts, and the bounds and
first trials a sweep takes from them (``search_space.bounds_from``)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import replace
from typing import Any

import optuna
import pandas as pd

from storage import Store
from sweep._config import ConfigError, SweepConfig
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
    reference = results[results["layer"].isna()]
    for granularity in results["granularity"].unique():
        zero = reference[reference["granularity"] == granularity]["accuracy_drop"]
        start = float(zero.iloc[0]) if len(zero) else math.nan
        for layer in results.attrs["layers"]:
            mine = results[(results["layer"] == layer) & (results["granularity"] == granularity)]
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
    """Enqueue ``bounds_from.enqueue_uniform`` uniform recipes as the study's first trials."""
    if config.search_space.bounds_from is not None:
        for params in uniform_params(space, config.search_space.bounds_from.enqueue_uniform):
            study.enqueue_trial(params)

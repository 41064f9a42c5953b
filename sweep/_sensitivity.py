"""Sensitivity scans: each layer pruned alone at increasing amounts, stored as a sweep.

A scan is a fixed list of recipes, run by the sweep driver as trials that are already decided
(the path ``sweep resume`` uses for trials that were in flight), so it gets the driver's Ray
scheduling, time limits, store writes and resume for free. Per granularity, one reference trial
prunes nothing (amount 0 of every layer: the int8 model's own drop); every other trial prunes one
layer alone. Trials run with order ``prune_ptq`` and each layer's first searched method.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import pandas as pd

from storage import Driver, Store, TrialRecord
from storage._engine import mask_url
from sweep import _driver, _loop, _ray_session
from sweep._bounds import KIND, curves, safe_amount
from sweep._config import ConfigError, SweepConfig
from sweep._feasible import sparsity_interval
from sweep._space import Space
from sweep._status import stale_after_s
from trials import LayerSpec, Recipe


def scan_name(config: SweepConfig) -> str:
    return f"{config.name}-{KIND}"


def default_amounts(config: SweepConfig) -> tuple[float, ...]:
    """The search space's amount grid above 0 (0 is the shared reference trial)."""
    amount = config.search_space.amount
    steps = int(round((amount.max - amount.min) / amount.step, 9))
    grid = (round(amount.min + i * amount.step, 6) for i in range(steps + 1))
    return tuple(a for a in grid if a > 0)


def parse_amounts(text: str) -> tuple[float, ...]:
    """``--amounts 0.3,0.5,0.7``: distinct amounts in (0, 1), sorted."""
    try:
        values = sorted({round(float(part), 6) for part in text.split(",") if part.strip()})
    except ValueError:
        raise ConfigError(f"--amounts: {text!r} must be numbers like 0.3,0.5,0.7") from None
    if not values or not all(0 < v < 1 for v in values):
        raise ConfigError(f"--amounts: {text!r} must be amounts in (0, 1), e.g. 0.3,0.5,0.7")
    return tuple(values)


def scan_recipes(
    space: Space, amounts: Sequence[float], granularities: Sequence[str], finetune_epochs: int
) -> list[Recipe]:
    """Per granularity: the reference (nothing pruned), then each layer alone at each amount."""
    settings = space.trial
    recipes = []
    for granularity in granularities:
        base = Recipe(
            layers={name: LayerSpec(0.0, space.methods_of(name)[0]) for name in space.layers},
            order="prune_ptq",
            granularity=granularity,
            backend=space.backend,
            finetune_epochs=finetune_epochs,
            calibration_batches=settings.calibration_batches,
            learning_rate=settings.learning_rate,
            round_to=space.round_to,
        )
        recipes.append(base)
        for name in space.layers:
            for amount in amounts:
                layers = dict(base.layers)
                layers[name] = LayerSpec(float(amount), space.methods_of(name)[0])
                recipes.append(base.with_layers(layers))
    return recipes


def run_scan(
    config: SweepConfig,
    store: Store,
    *,
    name: str,
    amounts: Sequence[float],
    granularities: Sequence[str],
    finetune_epochs: int,
    replace: bool = False,
    on_progress: _loop.ProgressFn | None = None,
) -> _loop.Progress:
    """Run the scan of ``config``'s searched layers as sweep ``name``; Ray is connected."""
    config = type(config).model_validate(
        {
            **config.model_dump(),
            "name": name,
            "budget": {"n_trials": 1},  # replaced below, once the layers are known
            "trial": {**config.trial.model_dump(), "finetune_epochs": finetune_epochs},
            "early_stopping": {"pruner": "none"},  # every amount is a data point, keep them all
            # One layer at a time: each layer's amount is its own, whatever the sweep ties.
            "search_space": {
                **config.search_space.model_dump(),
                "amount_mode": "independent",
                "tie": [],
                "constraints": {},
                "bounds_from": None,
            },
            "sampler_settings": {**config.sampler_settings.model_dump(), "uniform_startup": 0},
        }
    )
    _ray_session.connect_ray(config.ray_address, config.task)
    _ray_session.monitor()
    space, info = _driver._describe(config, start_workers=True)
    recipes = scan_recipes(space, amounts, granularities, finetune_epochs)
    config = config.model_copy(
        update={"budget": config.budget.model_copy(update={"n_trials": len(recipes)})}
    )
    stored = {
        **config.model_dump(mode="json"),
        # The store is readable by everyone who queries it: never keep a password there.
        "storage": None if config.storage is None else mask_url(config.storage),
        "layers": list(space.layers),
        "fp32_metrics": info.fp32_metrics,
        "kind": KIND,
        KIND: {
            "amounts": list(amounts),
            "granularities": list(granularities),
            "finetune_epochs": finetune_epochs,
        },
    }
    store.create_sweep(
        name,
        stored,
        dict(config.objectives),
        replace=replace,
        driver=Driver(),
        stale_after_s=stale_after_s(),
    )
    now = datetime.now(timezone.utc)
    documents = [recipe.to_dict() for recipe in recipes]
    store.record_trials(
        name,
        [
            TrialRecord(number=i, state="RUNNING", recipe=doc, started_at=now)
            for i, doc in enumerate(documents)
        ],
    )
    # Decided trials, run as a resumed sweep re-runs those in flight: nothing is asked.
    driver = _loop.TrialLoop(
        config,
        store,
        space,
        _driver._new_study(config, space),
        next_number=len(documents),
        reruns=list(enumerate(documents)),
        progress=_loop.Progress(total=len(documents)),
    )
    return driver.run(on_progress)


def sensitivity_table(results: pd.DataFrame, max_drop: float) -> pd.DataFrame:
    """One row per layer (and granularity): ``amount_safe`` at ``max_drop``, the mean drop over
    the scanned amounts, and the drop at each amount (accuracy lost to pruning, over the
    unpruned int8 model, whose own drop from fp32 is ``accuracy_drop[int8]``); most sensitive
    first (smallest safe amount, then largest mean drop)."""
    reference = results[results["layer"].isna()].set_index("granularity")["accuracy_drop"]
    rows = []
    for (layer, granularity), points in curves(results).items():
        drops = [d for a, d in points if a > 0]
        row: dict[str, Any] = {"layer": layer, "granularity": granularity}
        row["accuracy_drop[int8]"] = reference.get(granularity, math.nan)
        row["amount_safe"] = safe_amount(points, max_drop)
        finite = [d for d in drops if math.isfinite(d)]
        row["accuracy_drop[mean]"] = (
            sum(finite) / len(finite) if len(finite) == len(drops) and drops else math.nan
        )
        for amount, drop in points[1:]:
            row[f"accuracy_drop[{amount:.2f}]"] = drop if math.isfinite(drop) else math.nan
        rows.append(row)
    table = pd.DataFrame(rows)
    mean = table["accuracy_drop[mean]"].fillna(math.inf)
    order = table.assign(_mean=mean).sort_values(
        ["amount_safe", "_mean"], ascending=[True, False], kind="mergesort"
    )
    return order.drop(columns="_mean").reset_index(drop=True)


def plot(results: pd.DataFrame, table: pd.DataFrame, max_drop: float, path: Path) -> None:
    """Accuracy against amount, one line per layer (most sensitive first in the legend), one
    panel per granularity; the dashed line is fp32 accuracy minus ``max_drop``."""
    import matplotlib

    matplotlib.use("Agg")  # files only: no display on workers or CI
    import matplotlib.pyplot as plt

    granularities = list(dict.fromkeys(table["granularity"]))
    figure, axes = plt.subplots(
        1, len(granularities), figsize=(6 * len(granularities), 4.5), squeeze=False
    )
    fp32 = results.attrs.get("fp32_accuracy")
    for axis, granularity in zip(axes[0], granularities, strict=True):
        reference = results[results["layer"].isna() & (results["granularity"] == granularity)]
        start = float(reference["accuracy"].iloc[0]) if len(reference) else math.nan
        for layer in table[table["granularity"] == granularity]["layer"]:
            mine = results[(results["layer"] == layer) & (results["granularity"] == granularity)]
            mine = mine.sort_values("amount")
            xs = [0.0, *mine["amount"]]
            axis.plot(xs, [start, *mine["accuracy"]], marker="o", markersize=3, label=layer)
        if fp32 is not None:
            axis.axhline(fp32 - max_drop, color="black", linestyle="--", linewidth=1)
        axis.set_title(f"{granularity}: each layer pruned alone")
        axis.set_xlabel("pruning amount")
        axis.set_ylabel("int8 accuracy")
        axis.legend(fontsize="small", ncol=2 if len(table) > 10 else 1)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plt.close(figure)


def check_granularities(config: SweepConfig, chosen: Sequence[str]) -> tuple[str, ...]:
    """``--granularities`` (default: the config's first)."""
    from trials import GRANULARITIES

    for value in chosen:
        if value not in GRANULARITIES:
            raise ConfigError(
                f"--granularities: {value!r} is not one of {', '.join(GRANULARITIES)}"
            )
    return tuple(dict.fromkeys(chosen)) or (config.search_space.granularities[0],)


@dataclass(frozen=True)
class ScanPlan:
    """The scan a launch runs first, within its budget, to seed a sweep at a sparsity."""

    name: str
    amounts: tuple[float, ...]
    layers: int
    target: float

    @property
    def trials(self) -> int:
        return 1 + self.layers * len(self.amounts)


def planned_scan(config: SweepConfig, store: Store) -> ScanPlan | None:
    """The scan ``sweep launch`` runs before a sweep whose constraints ask for a sparsity and
    that has no scan to seed from (``search_space.seed_from``, or one stored under the default
    name): each searched layer alone, without fine-tuning, at five amounts around the target
    (three if five would take more than half the budget; none if three would). Ray is
    connected."""
    limits = config.search_space.constraints
    name = scan_name(config)
    asks = limits.min_sparsity is not None or limits.max_params is not None
    if config.search_space.seed_from is not None or not asks:
        return None
    if any(info.name == name for info in store.list_sweeps()):
        return None
    space, _ = _driver._describe(config)
    interval = sparsity_interval(space)
    if interval is None or interval[0] <= 0:
        return None
    target = interval[0]
    low, top, step = space.base_grid()
    for wanted in ((target - 0.3, target - 0.15, target, (target + top) / 2, top),
                   (target - 0.2, target, top)):  # fmt: skip
        snapped = {round(low + round((a - low) / step) * step, 6) for a in wanted}
        amounts = tuple(sorted(a for a in snapped if max(0.0, low) < a <= top + 1e-9))
        plan = ScanPlan(name, amounts, len(space.layers), target)
        if plan.trials <= config.budget.n_trials // 2:
            return plan
    return None

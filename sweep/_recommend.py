"""Picking trials from a stored sweep: the best per objective, and the recommendation under
constraints that ``sweep recommend`` writes as a recipe file."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from storage import FEASIBLE_KEY, METRIC_COLUMNS, Store
from sweep import _output
from trials import SOURCE_FIELD, Recipe

# Rows shown when nothing meets the constraints.
CLOSEST = 5
# Metrics copied into a written recipe's "source", for `sweep apply` to compare against.
SOURCE_METRICS = (
    "accuracy",
    "fp32_accuracy",
    "accuracy_drop",
    "size_bytes",
    "fp32_size_bytes",
    "compressed_bytes",
    "fp32_compressed_bytes",
    "latency_ms",
    "fp32_latency_ms",
    "speedup",
    "speedup_low",
    "speedup_high",
    "sparsity",
    "zero_fraction",
    "removed_fraction",
)


class RecommendError(ValueError):
    """A selection asked for the wrong way; one line that names the option and the fix."""


class NoMatchError(Exception):
    """No COMPLETE trial meets the constraints; ``closest`` holds the nearest ones."""

    def __init__(self, message: str, closest: pd.DataFrame) -> None:
        super().__init__(message)
        self.closest = closest


def _check_metric(option: str, metric: str) -> None:
    if metric not in METRIC_COLUMNS:
        choices = ", ".join(METRIC_COLUMNS)
        raise RecommendError(f"{option}: {metric!r} is not a trial metric (choose from {choices})")


def _ranking(metric: str, direction: str) -> list[tuple[str, str]]:
    """Best first on ``metric``; ties go to the more accurate, then the lower trial number."""
    return [(metric, direction)] + ([] if metric == "accuracy" else [("accuracy", "max")])


def best_per_objective(
    store: Store, sweep: str, objectives: Mapping[str, str] | None = None
) -> pd.DataFrame:
    """For each objective (default: the sweep's), its best COMPLETE trial that meets the
    sweep's constraints, in a column
    ``best_for`` (``"latency_ms:min"``); one row per objective, in order."""
    chosen = dict(objectives or store.get_sweep(sweep).objectives)
    for metric, direction in chosen.items():
        _check_metric("--objective", metric)
        if direction not in ("max", "min"):
            raise RecommendError(f"--objective: {metric}:{direction} must end in :max or :min")
    own = feasible_terms(store, sweep) or None
    rows = []
    for metric, direction in chosen.items():
        best = store.ranked(sweep, _ranking(metric, direction), where=own)
        if len(best):
            rows.append(best.assign(best_for=f"{metric}:{direction}"))
    if not rows:
        return store.trials(sweep, limit=0).assign(best_for=pd.Series(dtype=str))
    return pd.concat(rows, ignore_index=True)


@dataclass(frozen=True)
class Goal:
    """Best on ``metric`` (``direction`` max or min) among COMPLETE trials with
    ``accuracy_drop <= max_drop`` (when given) that pass every ``where`` expression."""

    metric: str
    direction: str
    max_drop: float | None = None
    where: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        _check_metric("--minimize/--maximize", self.metric)
        if self.direction not in ("max", "min"):
            raise RecommendError(f"direction: {self.direction!r} must be max or min")
        if self.max_drop is not None and not 0 <= self.max_drop < 1:
            raise RecommendError(
                f"--max-drop: {self.max_drop} must be a fraction in [0, 1), e.g. 0.01"
            )

    def constraints(self) -> list[str]:
        drop = [] if self.max_drop is None else [f"accuracy_drop <= {self.max_drop!r}"]
        return [*drop, *self.where]

    def describe(self, also: Sequence[str] = ()) -> str:
        wanted = f"{'smallest' if self.direction == 'min' else 'largest'} {self.metric}"
        return f"{wanted} with {' and '.join([*self.constraints(), *also]) or 'no constraint'}"


def feasible_terms(store: Store, sweep: str, wanted: bool = True) -> list[str]:
    """The sweep's own constraints (``search_space.constraints``) as ``--where`` terms."""
    return list(store.get_sweep(sweep).config.get(FEASIBLE_KEY) or []) if wanted else []


def recommend(store: Store, sweep: str, goal: Goal, *, feasible_only: bool = True) -> pd.Series:
    """The trial that meets ``goal``'s constraints (and, with ``feasible_only``, the sweep's
    own ``search_space.constraints``) and is best on its metric.

    Raises :class:`NoMatchError` when none does, with the :data:`CLOSEST` trials of smallest
    accuracy drop among those that pass the ``where`` expressions (or among every COMPLETE
    trial when none passes them): the accuracy-drop limit is the constraint they miss.
    """
    own = feasible_terms(store, sweep, feasible_only)
    wanted = [*goal.constraints(), *own]
    # The database ranks: only the chosen trials are read whole (a sweep of 100,000 trials of
    # hundreds of layers each holds gigabytes of recipes).
    best = store.ranked(sweep, _ranking(goal.metric, goal.direction), where=wanted or None)
    if len(best):
        return best.iloc[0]
    closest_first = [("accuracy_drop", "min")]
    closest = store.ranked(sweep, closest_first, where=[*goal.where, *own] or None, limit=CLOSEST)
    scope = "meeting --where" if goal.where else "by accuracy drop"
    if closest.empty:
        closest, scope = store.ranked(sweep, closest_first, limit=CLOSEST), "of any kind"
    total = store.get_sweep(sweep).counts.get("COMPLETE", 0)
    raise NoMatchError(
        f"no trial of {sweep} meets the constraints ({goal.describe(own)}) among its {total} "
        f"COMPLETE trials; the closest trials {scope} are listed; relax --max-drop or --where",
        closest,
    )


def recipe_document(store: Store, sweep: str, trial: pd.Series) -> dict[str, Any]:
    """The recipe file's content: the trial's recipe, checked, plus where it came from."""
    config = store.get_sweep(sweep).config
    recipe = Recipe.from_dict(trial["recipe"])
    metrics = {
        name: float(trial[name])
        for name in SOURCE_METRICS
        if name in trial and trial[name] is not None and pd.notna(trial[name])
    }
    source = {
        "sweep": sweep,
        "trial": int(trial["number"]),
        "task": config.get("task"),
        "task_settings": config.get("task_settings", {}),
        "metrics": metrics,
    }
    return {**recipe.to_dict(), SOURCE_FIELD: source}


def write_recipe(document: Mapping[str, Any], path: Path) -> None:
    """Write atomically: a failure leaves no partial or empty file at ``path``; a bad ``-o``
    (a folder, a missing folder) or a full disk is one line (see ``_output.write_atomically``)."""
    text = json.dumps(document, indent=2) + "\n"
    _output.write_atomically(path, lambda temporary: temporary.write_text(text, encoding="utf-8"))

"""``sweep export``: a stored sweep as an Optuna study, for optuna-dashboard and Optuna's tools.

The study has the sweep's name and directions. Each finished trial becomes one Optuna trial
(``optuna.trial.create_trial`` + ``study.add_trials``) with params ``order``, ``granularity``
and ``amount:<layer>``, values for COMPLETE trials, state FAIL or PRUNED for the others,
intermediate values, and user attrs: every metric, ``sweep_number``, ``recipe``, ``worker``
and ``error``. RUNNING trials are left out: a snapshot would show them running forever.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Final

import optuna
import pandas as pd
from optuna.distributions import BaseDistribution, CategoricalDistribution, FloatDistribution
from optuna.study import StudyDirection
from optuna.trial import FrozenTrial, TrialState
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, SQLAlchemyError

from storage import Store, SweepInfo
from storage._engine import mask_url, scrub

STATES: Final = {
    "COMPLETE": TrialState.COMPLETE,
    "PRUNED": TrialState.PRUNED,
    "FAIL": TrialState.FAIL,
}
DIRECTIONS: Final = {"max": StudyDirection.MAXIMIZE, "min": StudyDirection.MINIMIZE}


class ExportError(Exception):
    """An export the user can fix (the target exists, an unusable storage URL); one line."""


@dataclass(frozen=True)
class Exported:
    study: str
    url: str
    trials: int
    running_left_out: int


def _first_line(exc: BaseException, url: str) -> str:
    """The error's first line, without the storage URL's passwords (drivers echo them)."""
    reason = getattr(exc, "orig", None) or exc
    try:
        parsed: URL | None = make_url(url)
    except ArgumentError:
        parsed = None
    return scrub(str(reason), parsed) or type(exc).__name__


def _plain(value: object) -> Any:
    """A JSON value for a user attr: finite numbers, strings, None; nested dicts kept."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if hasattr(value, "item"):
        return _plain(value.item())
    return value


def _local(value: object) -> datetime | None:
    """Optuna's convention: naive local datetimes."""
    if value is None or value is pd.NaT or not isinstance(value, pd.Timestamp | datetime):
        return None
    return pd.Timestamp(value).to_pydatetime().astimezone().replace(tzinfo=None)


def _choices(configured: object, observed: Iterable[object]) -> list[str]:
    listed = [c for c in configured if isinstance(c, str)] if isinstance(configured, list) else []
    seen = sorted({value for value in observed if isinstance(value, str)})
    return list(dict.fromkeys([*listed, *seen]))


def distributions(info: SweepInfo, frame: pd.DataFrame) -> dict[str, BaseDistribution]:
    """One distribution per param, shared by every trial: categorical ``order`` and
    ``granularity`` (the configured choices plus any seen), ``FloatDistribution`` for each
    layer's amount over the configured ``search_space.amount`` range (default [0, 1]), widened
    to every stored amount."""
    space: Any = info.config.get("search_space") if isinstance(info.config, Mapping) else None
    space = space if isinstance(space, Mapping) else {}
    amount: Any = space.get("amount")
    amount = amount if isinstance(amount, Mapping) else {}
    recipes = [recipe for recipe in frame["recipe"] if isinstance(recipe, Mapping)]
    result: dict[str, BaseDistribution] = {}
    for param, key in (("order", "orders"), ("granularity", "granularities")):
        choices = _choices(space.get(key), (recipe.get(param) for recipe in recipes))
        if choices:
            result[param] = CategoricalDistribution(choices)
    low, high = amount.get("min", 0.0), amount.get("max", 1.0)
    low = float(low) if isinstance(low, int | float) else 0.0
    high = float(high) if isinstance(high, int | float) else 1.0
    amounts: dict[str, list[float]] = {}
    for recipe in recipes:
        layers = recipe.get("layers")
        for layer, spec in layers.items() if isinstance(layers, Mapping) else ():
            if isinstance(spec, Mapping) and isinstance(spec.get("amount"), int | float):
                amounts.setdefault(layer, []).append(float(spec["amount"]))
    for layer, values in amounts.items():
        result[f"amount:{layer}"] = FloatDistribution(min(low, *values), max(high, *values))
    return result


def _params(recipe: object, space: Mapping[str, BaseDistribution]) -> dict[str, Any]:
    if not isinstance(recipe, Mapping):
        return {}
    params: dict[str, Any] = {}
    for name in ("order", "granularity"):
        if name in space and recipe.get(name) is not None:
            params[name] = recipe[name]
    layers = recipe.get("layers")
    for layer, spec in layers.items() if isinstance(layers, Mapping) else ():
        if f"amount:{layer}" in space and isinstance(spec, Mapping):
            params[f"amount:{layer}"] = float(spec["amount"])
    return params


def frozen_trials(info: SweepInfo, frame: pd.DataFrame, values: pd.DataFrame) -> list[FrozenTrial]:
    """The Optuna trials of every finished trial of ``frame`` (a ``Store.trials`` frame)."""
    space = distributions(info, frame)
    steps: dict[int, dict[int, float]] = {}
    for number, step, value in values[["number", "step", "value"]].itertuples(index=False):
        if not math.isnan(value):
            steps.setdefault(int(number), {})[int(step)] = float(value)
    trials = []
    for row in frame.to_dict(orient="records"):
        if row["state"] not in STATES:
            continue
        state = STATES[row["state"]]
        objective_values = [row[name] for name in info.objectives]
        complete = state == TrialState.COMPLETE and all(
            not pd.isna(value) and math.isfinite(value) for value in objective_values
        )
        attrs = {name: _plain(value) for name, value in row["metrics"].items()}
        attrs.update(sweep_number=int(row["number"]), recipe=row["recipe"], worker=row["worker"])
        if row["error"]:
            attrs["error"] = row["error"]
        if state == TrialState.COMPLETE and not complete:
            state, attrs["error"] = TrialState.FAIL, "an objective value is missing"
        params = _params(row["recipe"], space)
        trial = optuna.trial.create_trial(
            state=state,
            values=[float(value) for value in objective_values] if complete else None,
            params=params,
            distributions={name: space[name] for name in params},
            user_attrs=attrs,
            intermediate_values=steps.get(int(row["number"]), {}),
        )
        started, finished = _local(row["started_at"]), _local(row["finished_at"])
        if started is not None and finished is not None and started <= finished:
            trial.datetime_start, trial.datetime_complete = started, finished
        trials.append(trial)
    return trials


def _storage(url: str) -> optuna.storages.RDBStorage:
    try:
        return optuna.storages.RDBStorage(url)
    except (SQLAlchemyError, ImportError, ValueError) as exc:
        raise ExportError(
            f"--optuna-storage: cannot open {mask_url(url)}: {_first_line(exc, url)}; use e.g. "
            "sqlite:///optuna.db or postgresql+psycopg://user@host/db"
        ) from None


def export_study(store: Store, name: str, url: str, *, replace: bool = False) -> Exported:
    """Write sweep ``name`` of ``store`` as the Optuna study ``name`` in storage ``url``.

    Raises :class:`ExportError` when the study exists (unless ``replace``: then it is deleted
    first) or the storage cannot be opened, and StorageError for an unknown sweep.
    """
    info = store.get_sweep(name)
    frame = store.trials(name)
    trials = frozen_trials(info, frame, store.intermediate_values(name))
    storage = _storage(url)
    try:
        if name in optuna.study.get_all_study_names(storage):
            if not replace:
                raise ExportError(
                    f"--optuna-storage: a study {name!r} already exists in {mask_url(url)}; "
                    "pass --replace to overwrite it"
                )
            optuna.delete_study(study_name=name, storage=storage)
        study = optuna.create_study(
            study_name=name,
            storage=storage,
            directions=[DIRECTIONS[direction] for direction in info.objectives.values()],
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
            study.set_metric_names(list(info.objectives))
        study.set_user_attr("sweep_objectives", info.objectives)
        study.set_user_attr("sweep_store", store.url_display)
        study.add_trials(trials)
    except SQLAlchemyError as exc:
        raise ExportError(
            f"--optuna-storage: cannot write to {mask_url(url)}: {_first_line(exc, url)}"
        ) from None
    finally:
        storage.remove_session()
        storage.engine.dispose()
    return Exported(name, mask_url(url), len(trials), int((frame["state"] == "RUNNING").sum()))

"""The dashboard's charts as data: the front for two objectives, the hypervolume over trials,
the layer x front-trial heatmap and a scan's sensitivity curves."""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import Any

import numpy as np

from storage import METRIC_COLUMNS, StorageError, SweepInfo, SweepNotFoundError
from sweep import _bounds, _quality
from sweep._dashboard._reader import (
    PENDING,
    Answer,
    DashboardError,
    Reader,
    direction,
    log,
    plain,
    version,
)

# Trials drawn behind the front, at most (every k-th COMPLETE trial beyond that).
MAX_CLOUD = 2_000
# Points of the hypervolume curve, at most (the curve is exact at each of them).
MAX_CURVE_POINTS = 200
# Front trials in the heatmap, at most (the front's best on its first objective first).
MAX_HEATMAP_TRIALS = 200
# Shown on hover over a front point.
POINT_METRICS = (
    "accuracy",
    "accuracy_drop",
    "compressed_bytes",
    "size_bytes",
    "latency_ms",
    "speedup",
    "sparsity",
)


def _metric(field: str, value: str) -> str:
    if value not in METRIC_COLUMNS:
        raise DashboardError(f"{field}: {value!r} is not a trial metric; use one of the list")
    return value


def _recipe_summary(recipe: Mapping[str, Any]) -> dict[str, Any]:
    layers = list((recipe.get("layers") or {}).values())
    amounts = [float(spec.get("amount", 0.0)) for spec in layers]
    methods = sorted({str(spec.get("method")) for spec in layers if spec.get("amount", 0) > 0})
    return {
        "layers": len(layers),
        "pruned_layers": sum(amount > 0 for amount in amounts),
        "mean_amount": round(float(np.mean(amounts)), 4) if amounts else 0.0,
        "max_amount": round(max(amounts), 4) if amounts else 0.0,
        "methods": methods,
    }


def _with_version(answer: Answer[dict[str, Any]]) -> dict[str, Any]:
    """An answer as sent: its sweep version, and whether it stands in for one being computed
    (the page asks again at its next poll)."""
    return {**answer.value, "version": answer.version, "pending": answer.version == PENDING}


def default_axes(info: SweepInfo) -> tuple[str, str]:
    """The front a sweep's page opens on: accuracy (else the first objective) against the
    first other objective (else the size the sweep would minimize)."""
    objectives = list(info.objectives)
    y = "accuracy" if "accuracy" in objectives or not objectives else objectives[0]
    x = next((name for name in objectives if name != y), "compressed_bytes")
    return x, y


def warm(reader: Reader) -> None:
    """Compute what each sweep's page opens on, so that the first visit does not wait."""
    try:
        infos = reader.store.list_sweeps()
    except StorageError as exc:
        log.warning("dashboard: cannot read the sweeps to prepare them: %s", exc)
        return
    for info in reversed(infos):  # the newest first
        x, y = default_axes(info)
        try:
            front(reader, info.name, x, y, None)
            heatmap(reader, info.name)
            hypervolume(reader, info.name)
            sensitivity(reader, info)
        except (StorageError, DashboardError) as exc:  # the page says so when it is opened
            log.warning("dashboard: cannot prepare sweep %s: %s", info.name, exc)


def front(reader: Reader, name: str, x: str, y: str, where: str | None) -> dict[str, Any]:
    """The Pareto front of two metrics (directions: the sweep's, else the metric's own), its
    points with their recipe in short, and a sample of every COMPLETE trial behind it."""
    x, y = _metric("x", x), _metric("y", y)
    if x == y:
        raise DashboardError(f"x and y: both are {x!r}; pick two different metrics")
    info = reader.store.get_sweep(name)
    terms = (where,) if where and where.strip() else ()
    key = ("front-chart", name, x, y, terms)
    directions = {x: direction(x, info.objectives), y: direction(y, info.objectives)}
    empty: dict[str, Any] = {
        "x": x,
        "y": y,
        "directions": directions,
        "points": [],
        "cloud": {"number": [], "x": [], "y": []},
        "cloud_of": 0,
    }
    return _with_version(
        reader.latest(key, version(info), lambda: _front(reader, info, x, y, terms), empty)
    )


def _front(
    reader: Reader, info: SweepInfo, x: str, y: str, terms: tuple[str, ...]
) -> dict[str, Any]:
    objectives = {x: direction(x, info.objectives), y: direction(y, info.objectives)}
    frame = reader.front(info, objectives, terms, exact=True).value
    points = [
        {
            "number": int(row["number"]),
            "x": plain(row[x]),
            "y": plain(row[y]),
            "order": row["order"],
            "granularity": row["granularity"],
            "metrics": {metric: plain(row[metric]) for metric in POINT_METRICS},
            "recipe": _recipe_summary(row["recipe"] or {}),
        }
        for _, row in frame.iterrows()
    ]
    return {
        "x": x,
        "y": y,
        "directions": objectives,
        "points": points,
        **_cloud(reader, info.name, x, y, terms),
    }


def _cloud(reader: Reader, name: str, x: str, y: str, terms: tuple[str, ...]) -> dict[str, Any]:
    values = reader.store.metric_values(name, [x, y], where=list(terms) or None).dropna()
    step = max(1, math.ceil(len(values) / MAX_CLOUD))
    shown = values.iloc[::step]
    return {
        "cloud": {
            "number": [int(n) for n in shown["number"]],
            "x": [plain(v) for v in shown[x]],
            "y": [plain(v) for v in shown[y]],
        },
        "cloud_of": len(values),
    }


def hypervolume(reader: Reader, name: str) -> dict[str, Any]:
    """The normalized hypervolume (as in ``scripts/bench_search.py``) of the sweep's feasible
    COMPLETE trials up to each trial number, on the sweep's own objectives."""
    info = reader.store.get_sweep(name)
    empty: dict[str, Any] = {"objectives": info.objectives, "numbers": [], "hypervolume": []}
    return _with_version(
        reader.latest(("hypervolume", name), version(info), lambda: _curve(reader, info), empty)
    )


def _curve(reader: Reader, info: SweepInfo) -> dict[str, Any]:
    objectives = info.objectives
    pairs = {
        f"fp32_{metric}" if metric not in ("accuracy", "accuracy_drop") else "fp32_accuracy"
        for metric in objectives
    }
    wanted = [*objectives, *sorted(pairs & set(METRIC_COLUMNS))]
    values = reader.store.metric_values(info.name, wanted, feasible_only=True)
    values = values.dropna(subset=list(objectives))
    empty = {"objectives": objectives, "numbers": [], "hypervolume": []}
    if values.empty:
        return {**empty, "note": "no COMPLETE trial yet"}
    try:
        reference = _quality.fp32_reference(values, objectives)
    except _quality.QualityError as exc:
        return {**empty, "note": f"no hypervolume: {exc}"}
    table = _quality.losses(values, objectives, reference)
    step = max(1, math.ceil(len(table) / MAX_CURVE_POINTS))
    curve = _quality.hypervolume_curve(table, _quality.reference_point(objectives), step=step)
    ends = [min(start + step, len(table)) - 1 for start in range(0, len(table), step)]
    numbers = values["number"].to_numpy()[ends]
    return {**empty, "numbers": [int(n) for n in numbers], "hypervolume": curve}


def heatmap(reader: Reader, name: str) -> dict[str, Any]:
    """Layers x front trials: each layer's amount, method and granularity in each trial of the
    sweep's own front, the front's best on its first objective first."""
    info = reader.store.get_sweep(name)
    empty: dict[str, Any] = {
        "layers": [],
        "trials": [],
        "first_objective": None,
        "first_values": [],
        "amount": [],
        "method": {"names": [], "cells": []},
        "granularity": {"names": [], "cells": []},
        "front_size": 0,
    }
    return _with_version(
        reader.latest(("heatmap", name), version(info), lambda: _heatmap(reader, info), empty)
    )


def _heatmap(reader: Reader, info: SweepInfo) -> dict[str, Any]:
    whole = reader.front(info, exact=True).value
    frame = whole.head(MAX_HEATMAP_TRIALS)
    recipes = [row or {} for row in frame["recipe"]]
    layers = dict.fromkeys(info.config.get("layers") or [])
    for recipe in recipes:  # layers only some recipes name (a stored sweep without a list)
        layers.update(dict.fromkeys(recipe.get("layers", {})))
    specs = [recipe.get("layers", {}) for recipe in recipes]

    def grid(key: str) -> list[list[Any]]:
        return [[(spec.get(layer) or {}).get(key) for spec in specs] for layer in layers]

    def coded(key: str) -> tuple[list[str], list[list[int | None]]]:
        """Names once, cells as their index: 300 layers x 200 trials stay small."""
        values = grid(key)
        names = sorted({str(v) for row in values for v in row if v is not None})
        index = {name: i for i, name in enumerate(names)}
        return names, [[None if v is None else index[str(v)] for v in row] for row in values]

    methods, method = coded("method")
    granularities, granularity = coded("granularity")
    first = next(iter(info.objectives), None)
    return {
        "layers": list(layers),
        "trials": [int(n) for n in frame["number"]],
        "first_objective": first,
        "first_values": [] if first is None else [plain(v) for v in frame[first]],
        "amount": [[plain(v) for v in row] for row in grid("amount")],
        "method": {"names": methods, "cells": method},
        "granularity": {"names": granularities, "cells": granularity},
        "front_size": len(whole),
    }


def scan_of(reader: Reader, info: SweepInfo) -> str | None:
    """The sensitivity scan stored for a sweep: itself (a scan), the one it was bounded or
    seeded from, else one under the default name."""
    if info.config.get("kind") == _bounds.KIND:
        return info.name
    space = info.config.get("search_space") or {}
    named = [(space.get(key) or {}).get("sensitivity") for key in ("seed_from", "bounds_from")]
    named.append(f"{info.name}-{_bounds.KIND}")
    for name in named:
        if not name:
            continue
        try:
            reader.store.get_sweep(name)
        except SweepNotFoundError:
            continue
        return str(name)
    return None


def sensitivity(reader: Reader, info: SweepInfo) -> dict[str, Any]:
    """The curves of the sweep's scan (:func:`scan_of`): per layer and granularity, the
    accuracy lost to pruning it alone."""
    scan = scan_of(reader, info)
    if scan is None:
        return {"scan": None, "curves": [], "pending": False}
    info = reader.store.get_sweep(scan)
    empty: dict[str, Any] = {"scan": scan, "curves": []}
    return _with_version(
        reader.latest(("scan", scan), version(info), lambda: _scan(reader, scan), empty)
    )


def _scan(reader: Reader, scan: str) -> dict[str, Any]:
    results = _bounds.scan_results(reader.store, scan)
    if results.empty:
        return {"scan": scan, "curves": []}
    curves = [
        {
            "layer": layer,
            "granularity": granularity,
            "amounts": [amount for amount, _ in points],
            "drops": [None if not math.isfinite(drop) else drop for _, drop in points],
        }
        for (layer, granularity), points in _bounds.curves(results).items()
    ]
    return {"scan": scan, "curves": curves}

"""Objective validation and the non-dominated filter behind ``Store.pareto_front``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

import numpy as np
import numpy.typing as npt

from storage._errors import StorageError
from storage._models import METRIC_COLUMNS

DIRECTIONS: Final = ("max", "min")
MAX_OBJECTIVES: Final = 4


def validate_objectives(objectives: object) -> dict[str, str]:
    """Check 1-4 objectives, each a metric column mapped to ``"max"`` or ``"min"``."""
    if not isinstance(objectives, Mapping) or not objectives:
        raise StorageError(
            f"objectives must be a non-empty dict of metric -> 'max'|'min', got {objectives!r}"
        )
    if len(objectives) > MAX_OBJECTIVES:
        raise StorageError(
            f"at most {MAX_OBJECTIVES} objectives are supported, got {len(objectives)}: "
            f"{', '.join(map(str, objectives))}"
        )
    checked: dict[str, str] = {}
    for name, direction in objectives.items():
        if name not in METRIC_COLUMNS:
            raise StorageError(
                f"unknown objective {name!r}; objectives must be one of {', '.join(METRIC_COLUMNS)}"
            )
        if direction not in DIRECTIONS:
            raise StorageError(
                f"objective {name!r} has direction {direction!r}; use 'max' or 'min'"
            )
        checked[name] = direction
    return checked


def to_minimization(values: npt.ArrayLike, directions: list[str]) -> npt.NDArray[np.float64]:
    """Return an (n, k) float array where smaller is better in every column."""
    points = np.asarray(values, dtype=np.float64).reshape(-1, len(directions))
    signs = np.array([-1.0 if direction == "max" else 1.0 for direction in directions])
    return points * signs


def _front_1d(points: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    return np.asarray(points[:, 0] == points[:, 0].min())


def _front_2d(points: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Sort by (x, y) and sweep: O(n log n).

    A point survives when its y is the smallest among points with the same x and strictly
    smaller than every y seen at strictly smaller x (equal points all survive).
    """
    n = len(points)
    order = np.lexsort((points[:, 1], points[:, 0]))
    x, y = points[order, 0], points[order, 1]
    group_start = np.ones(n, dtype=bool)
    group_start[1:] = x[1:] != x[:-1]
    start_index = np.maximum.accumulate(np.where(group_start, np.arange(n), 0))
    group_min = y[start_index]
    prefix_min = np.minimum.accumulate(y)
    before = np.full(n, np.inf)
    has_before = start_index > 0
    before[has_before] = prefix_min[start_index[has_before] - 1]
    keep_sorted = (y == group_min) & (y < before)
    keep = np.empty(n, dtype=bool)
    keep[order] = keep_sorted
    return keep


def _front_nd(points: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Vectorised filter over unique, lexicographically sorted points: O(n * front size).

    The first remaining point is always non-dominated (anything dominating it would sort
    before it); every point it weakly dominates is dropped in one vectorised step.
    """
    unique, inverse = np.unique(points, axis=0, return_inverse=True)
    remaining = np.arange(len(unique))
    on_front: list[int] = []
    while remaining.size:
        best = remaining[0]
        on_front.append(int(best))
        dominated = np.all(unique[remaining] >= unique[best], axis=1)
        remaining = remaining[~dominated]
    unique_keep = np.zeros(len(unique), dtype=bool)
    unique_keep[on_front] = True
    return unique_keep[inverse.reshape(-1)]


def non_dominated(points: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Boolean mask of the non-dominated rows of ``points`` (minimise every column).

    A row is dominated when another row is <= in every column and < in at least one; equal rows
    never dominate each other, so ties on the front are all kept.
    """
    if points.ndim != 2:
        raise ValueError(f"expected a 2-D array, got shape {points.shape}")
    if len(points) == 0:
        return np.zeros(0, dtype=bool)
    if np.isnan(points).any():
        raise ValueError("points must not contain NaN")
    if points.shape[1] == 1:
        return _front_1d(points)
    if points.shape[1] == 2:
        return _front_2d(points)
    return _front_nd(points)

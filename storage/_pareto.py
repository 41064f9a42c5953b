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
_BLOCK: Final = 512  # points per block of the n-dimensional front (memory: block x front)
_RECENT: Final = 64  # front points every block is compared with first


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


def _strictly_dominated(
    points: npt.NDArray[np.float64], by: npt.NDArray[np.float64]
) -> npt.NDArray[np.bool_]:
    """For each row of ``points``: is some row of ``by`` <= in every column and < in one?"""
    at_most = np.ones((len(points), len(by)), dtype=bool)
    below = np.zeros((len(points), len(by)), dtype=bool)
    for column in range(points.shape[1]):
        mine, theirs = points[:, column, None], by[None, :, column]
        at_most &= theirs <= mine
        below |= theirs < mine
    return np.asarray((at_most & below).any(axis=1))


def _front_nd(points: npt.NDArray[np.float64]) -> npt.NDArray[np.bool_]:
    """Blocks in lexicographic order against the front found so far: O(n * front size).

    A point can only be dominated by a lexicographically smaller one, and whatever dominates it
    is itself dominated by (or is) a front point that is smaller still. So each block of sorted
    points is checked against the front of the earlier blocks, then its survivors against each
    other; the survivors that remain are on the front. Equal points never dominate each other.
    The most recently found front points, the nearest in the first objective, are tried first:
    they dominate most of a block, so few points need comparing with the whole front.
    """
    order = np.lexsort(points.T[::-1])
    ordered = points[order]
    keep_sorted = np.zeros(len(points), dtype=bool)
    front = ordered[:0]
    for start in range(0, len(points), _BLOCK):
        block = ordered[start : start + _BLOCK]
        alive = np.flatnonzero(~_strictly_dominated(block, front[-_RECENT:]))
        if len(front) > _RECENT:
            alive = alive[~_strictly_dominated(block[alive], front[:-_RECENT])]
        alive = alive[~_strictly_dominated(block[alive], block[alive])]
        keep_sorted[start + alive] = True
        front = np.concatenate([front, block[alive]])
    keep = np.empty(len(points), dtype=bool)
    keep[order] = keep_sorted
    return keep


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

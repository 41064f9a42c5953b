"""Search quality: normalized hypervolume of a set of trials, and its growth over trials.

Objectives are normalized so that sweeps of different tasks read alike, and every trial counts
against the same reference point:

- ``accuracy`` (and ``accuracy_drop``) as the drop from the fp32 model, in [0, 1]; the reference
  is a drop of :data:`ACCURACY_WINDOW` (10 points): trials that lose more add nothing.
- any other objective divided by its fp32 counterpart (``fp32_<name>``, the median over the
  trials, e.g. ``compressed_bytes / fp32_compressed_bytes``); the reference is 1.0 (no better
  than the fp32 model) for metrics minimized, and 1.0 too for maximized ratios like ``speedup``.

The hypervolume is then the volume that the trials dominate inside the box between the ideal
point (no drop, zero size, zero latency) and the reference point: 0.1 at most for
(accuracy, one cost), larger is better.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

# Optuna's exact hypervolume (WFG); private, but it is what Optuna's own indicators use.
from optuna._hypervolume import compute_hypervolume

ACCURACY_WINDOW = 0.10
_ACCURACY = ("accuracy", "accuracy_drop")


class QualityError(ValueError):
    """Objectives or trials that a hypervolume cannot be computed for."""


Rows = Sequence[Mapping[str, float]] | pd.DataFrame
"""Trials' metrics: one mapping per trial, or a frame with a column per metric."""


def _column(rows: Rows, key: str) -> np.ndarray:
    """The values of ``key`` over the trials, NaN where a trial has none."""
    if isinstance(rows, pd.DataFrame):
        if key not in rows:
            return np.full(len(rows), np.nan)
        return rows[key].to_numpy(dtype=float, na_value=np.nan)
    return np.array([np.nan if row.get(key) is None else float(row[key]) for row in rows])


def fp32_reference(rows: Rows, objectives: Mapping[str, str]) -> dict[str, float]:
    """Per objective, the fp32 value it is divided by: the median of the trials' ``fp32_<name>``."""
    found: dict[str, float] = {}
    for name in objectives:
        key = "fp32_accuracy" if name in _ACCURACY else f"fp32_{name}"
        values = _column(rows, key)
        values = values[np.isfinite(values)]
        if not len(values):
            raise QualityError(f"objective {name!r}: the trials carry no {key} to normalize by")
        found[name] = float(np.median(values))
    return found


def losses(rows: Rows, objectives: Mapping[str, str], fp32: Mapping[str, float]) -> np.ndarray:
    """One row per trial, one column per objective, every column minimized and normalized;
    the reference point is :func:`reference_point`. A missing value is NaN: it adds nothing."""
    table = np.zeros((len(rows), len(objectives)))
    for column, (name, direction) in enumerate(objectives.items()):
        values = _column(rows, name)
        if name == "accuracy":
            table[:, column] = fp32[name] - values
        elif name == "accuracy_drop":
            table[:, column] = values
        elif direction == "min":
            table[:, column] = values / fp32[name]
        else:  # a maximized ratio (speedup): its inverse, so 1.0 is the fp32 model again
            table[:, column] = fp32[name] / np.maximum(values, 1e-12)
    return table


def reference_point(objectives: Mapping[str, str]) -> np.ndarray:
    return np.array([ACCURACY_WINDOW if name in _ACCURACY else 1.0 for name in objectives])


def hypervolume(table: np.ndarray, reference: np.ndarray) -> float:
    """Volume dominated by the rows of ``table`` inside the reference box (0 if none is inside)."""
    inside = table[np.all(table < reference, axis=1)] if len(table) else table
    if len(inside) == 0:
        return 0.0
    return float(compute_hypervolume(inside, reference))


def hypervolume_curve(table: np.ndarray, reference: np.ndarray, *, step: int = 1) -> list[float]:
    """The hypervolume of the first k trials (trial order) for k = step, 2 step, ... and
    len(table): every k with ``step`` 1. The front grows a step of rows at a time, each row
    checked against the front so far, so a long sweep at a large step costs one front update
    and one hypervolume per point, not per trial."""
    curve: list[float] = []
    front = np.zeros((0, table.shape[1]))
    current = 0.0
    for start in range(0, len(table), max(1, step)):
        rows = table[start : start + max(1, step)]
        rows = rows[np.all(rows < reference, axis=1)]  # NaN rows are outside too
        if len(front) and len(rows):
            rows = rows[~_weakly_dominated(rows, front)]
        if len(rows):
            rows = rows[_first_nondominated(rows)]
            front = np.vstack([front[~_weakly_dominated(front, rows)], rows])
            current = hypervolume(front, reference)
        curve.append(current)
    return curve


def _weakly_dominated(rows: np.ndarray, by: np.ndarray) -> np.ndarray:
    """Mask of ``rows`` that some row of ``by`` is at least as good as in every objective."""
    return np.any(np.all(by[None, :, :] <= rows[:, None, :], axis=2), axis=1)


def _first_nondominated(rows: np.ndarray) -> np.ndarray:
    """Mask of the rows no other row dominates; of equal rows, the first only."""
    no_worse = np.all(rows[:, None, :] <= rows[None, :, :], axis=2)  # [j, i]: j <= i
    better = np.any(rows[:, None, :] < rows[None, :, :], axis=2)
    earlier = np.arange(len(rows))[:, None] < np.arange(len(rows))[None, :]
    return ~np.any(no_worse & (better | earlier), axis=0)


def trials_to_reach(curve: Sequence[float], target: float) -> int | None:
    """Trials needed until the curve reaches ``target`` (None if it never does)."""
    for index, value in enumerate(curve):
        if value >= target:
            return index + 1
    return None

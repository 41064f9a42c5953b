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

# Optuna's exact hypervolume (WFG); private, but it is what Optuna's own indicators use.
from optuna._hypervolume import compute_hypervolume

ACCURACY_WINDOW = 0.10
_ACCURACY = ("accuracy", "accuracy_drop")


class QualityError(ValueError):
    """Objectives or trials that a hypervolume cannot be computed for."""


def fp32_reference(
    rows: Sequence[Mapping[str, float]], objectives: Mapping[str, str]
) -> dict[str, float]:
    """Per objective, the fp32 value it is divided by: the median of the trials' ``fp32_<name>``."""
    found: dict[str, float] = {}
    for name in objectives:
        key = "fp32_accuracy" if name in _ACCURACY else f"fp32_{name}"
        values = [float(row[key]) for row in rows if row.get(key) is not None]
        values = [v for v in values if np.isfinite(v)]
        if not values:
            raise QualityError(f"objective {name!r}: the trials carry no {key} to normalize by")
        found[name] = float(np.median(values))
    return found


def losses(
    rows: Sequence[Mapping[str, float]],
    objectives: Mapping[str, str],
    fp32: Mapping[str, float],
) -> np.ndarray:
    """One row per trial, one column per objective, every column minimized and normalized;
    the reference point is :func:`reference_point`."""
    table = np.zeros((len(rows), len(objectives)))
    for column, (name, direction) in enumerate(objectives.items()):
        values = np.array([float(row[name]) for row in rows])
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


def hypervolume_curve(table: np.ndarray, reference: np.ndarray) -> list[float]:
    """The hypervolume of the first k trials, for k = 1 .. len(table) (trial order)."""
    curve: list[float] = []
    front = np.zeros((0, table.shape[1]))
    current = 0.0
    for row in table:
        if np.all(row < reference) and not np.any(np.all(front <= row, axis=1)):
            # Only a row that no earlier one dominates can raise the hypervolume.
            keep = ~np.all(row <= front, axis=1)
            front = np.vstack([front[keep], row])
            current = hypervolume(front, reference)
        curve.append(current)
    return curve


def trials_to_reach(curve: Sequence[float], target: float) -> int | None:
    """Trials needed until the curve reaches ``target`` (None if it never does)."""
    for index, value in enumerate(curve):
        if value >= target:
            return index + 1
    return None

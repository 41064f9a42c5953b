"""The hypervolume curve: exact at each point it reports, whatever its step, ties and NaN."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from sweep import _quality

REFERENCE = np.array([0.1, 1.0, 1.0])


def _brute(table: np.ndarray, k: int) -> float:
    return _quality.hypervolume(table[:k][np.all(table[:k] < REFERENCE, axis=1)], REFERENCE)


@pytest.mark.parametrize("step", [1, 3, 7, 100])
def test_the_curve_is_the_hypervolume_of_each_prefix(step: int) -> None:
    rng = np.random.default_rng(step)
    table = rng.uniform(0, 1.2, (60, 3)) * REFERENCE
    table[10] = table[5]  # a tie
    table[20, 1] = np.nan  # a trial missing a metric adds nothing
    curve = _quality.hypervolume_curve(table, REFERENCE, step=step)
    ends = [min(start + step, len(table)) for start in range(0, len(table), step)]
    assert len(curve) == len(ends)
    for value, k in zip(curve, ends, strict=True):
        assert value == pytest.approx(_brute(table, k), rel=1e-9, abs=1e-12)


def test_a_frame_and_rows_give_the_same_losses() -> None:
    objectives = {"accuracy": "max", "compressed_bytes": "min", "speedup": "max"}
    rows = [
        {"accuracy": 0.9, "fp32_accuracy": 0.95, "compressed_bytes": 50.0,
         "fp32_compressed_bytes": 100.0, "speedup": 2.0, "fp32_speedup": 1.0},
        {"accuracy": 0.8, "fp32_accuracy": None, "compressed_bytes": 20.0,
         "fp32_compressed_bytes": 100.0, "speedup": 4.0, "fp32_speedup": 1.0},
    ]  # fmt: skip
    fp32 = _quality.fp32_reference(rows, objectives)
    assert fp32 == _quality.fp32_reference(pd.DataFrame(rows), objectives)
    assert fp32["accuracy"] == 0.95
    expected = np.array([[0.05, 0.5, 0.5], [0.15, 0.2, 0.25]])
    np.testing.assert_allclose(_quality.losses(rows, objectives, fp32), expected)
    np.testing.assert_allclose(_quality.losses(pd.DataFrame(rows), objectives, fp32), expected)
    with pytest.raises(_quality.QualityError, match="carry no fp32_latency_ms"):
        _quality.fp32_reference(rows, {"latency_ms": "min"})

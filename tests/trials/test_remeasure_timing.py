"""The speedup with its 95% interval: real models timed in alternating rounds."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from trials import LatencySpec, from_portable, reference_model, remeasure, to_portable
from trials._remeasure import MIN_ROUNDS, interval

WIDTH = 256


def _stack(layers: int) -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(*(nn.Linear(WIDTH, WIDTH) for _ in range(layers))).eval()


def test_interval_is_the_t_interval_of_the_log_ratios() -> None:
    ratios = [2.0, 2.2, 1.8, 2.1, 1.9]
    estimate, low, high = interval(ratios)
    assert estimate == pytest.approx(math.exp(sum(map(math.log, ratios)) / 5))
    assert low < estimate < high
    # Symmetric in the log: the estimate is the interval's geometric centre.
    assert math.sqrt(low * high) == pytest.approx(estimate)
    assert interval([3.0, 3.0, 3.0]) == pytest.approx((3.0, 3.0, 3.0))
    with pytest.raises(ValueError, match="at least 2 rounds"):
        interval([2.0])


def test_a_model_doing_eight_times_less_work_stops_at_the_precision() -> None:
    example = torch.randn(64, WIDTH)
    spec = LatencySpec(threads=1, warmup=2)
    result = remeasure(_stack(8), _stack(1), example, spec, precision=0.1, time_s=30.0)
    assert result.low <= result.speedup <= result.high
    assert result.speedup > 2.0  # eight layers against one: much faster, whatever the load
    if result.precise:  # a very busy machine may hit the time bound instead: then it says so
        assert result.rounds >= MIN_ROUNDS
        assert result.half_width <= 0.1
    assert result.fp32_ms > result.int8_ms > 0
    metrics = result.metrics()
    assert metrics["speedup_low"] == result.low and metrics["latency_rounds"] == result.rounds


def test_the_time_bound_stops_an_interval_that_cannot_get_narrow_enough() -> None:
    example = torch.randn(8, WIDTH)
    spec = LatencySpec(threads=1, warmup=0)
    result = remeasure(_stack(2), _stack(1), example, spec, precision=1e-9, time_s=0.3)
    assert not result.precise
    assert result.rounds >= 2
    assert 0.3 <= result.seconds < 5.0
    assert result.low <= result.speedup <= result.high


def test_runtime_models_from_their_files() -> None:
    """What a sweep remeasures: the runtime's model files, loaded back."""
    example = torch.randn(16, WIDTH)
    big = from_portable(to_portable(reference_model(_stack(6), example)), "onnxruntime")
    small = from_portable(to_portable(reference_model(_stack(1), example)), "onnxruntime")
    result = remeasure(big, small, example, LatencySpec(warmup=1), precision=0.2, time_s=10.0)
    assert result.speedup > 1.5
    assert result.low <= result.speedup <= result.high


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({"precision": 0.0}, "precision"),
        ({"precision": 1.5}, "precision"),
        ({"time_s": 0.0}, "time_s"),
        ({"min_rounds": 1}, "min_rounds"),
    ],
)
def test_bad_settings_are_refused(settings: dict[str, Any], message: str) -> None:
    model = _stack(1)
    with pytest.raises(ValueError, match=message):
        remeasure(model, model, torch.randn(1, WIDTH), LatencySpec(), **settings)

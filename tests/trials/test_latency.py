"""Latency measurement pieces: batch sizing, the portable form models travel in (the runtime's
own model file), and the environment a latency was measured in."""

import pytest
import torch

from trials import (
    LatencySpec,
    Recipe,
    Task,
    environment,
    example_batch,
    from_portable,
    hardware_class,
    measure_latency,
    run_trial,
    runtime_version,
    to_portable,
)


def test_example_batch_cuts_and_tiles() -> None:
    example = torch.arange(6.0).reshape(3, 2)
    assert example_batch(example, None) is example
    assert example_batch(example, 2).tolist() == [[0, 1], [2, 3]]
    assert example_batch(example, 7)[:, 0].tolist() == [0, 2, 4, 0, 2, 4, 0]


@pytest.mark.parametrize("field", ["threads", "repeats"])
def test_latency_spec_rejects_zero(field: str) -> None:
    with pytest.raises(ValueError, match=f"latency.{field}"):
        LatencySpec(**{field: 0})


def test_an_int8_model_travels_as_its_model_file_and_times_the_same_outputs(digits: Task) -> None:
    recipe = Recipe(finetune_epochs=0, calibration_batches=2)
    result = run_trial(digits, recipe, latency=None, keep_model=True)
    assert result.state == "COMPLETE" and result.model is not None
    assert "latency_ms" not in result.metrics and result.environment == {}
    example = digits.example_input()
    data = to_portable(result.model)
    assert data[:2] != b"PK"  # an ONNX protobuf, not a zip of pickles
    moved = from_portable(data, "onnxruntime")
    with torch.no_grad():
        assert torch.equal(moved(example), result.model(example))
        # Any batch size runs (the graph's batch dimension is dynamic).
        assert moved(example[:5]).shape == (5, 10)
    stats = measure_latency(moved, example, LatencySpec(repeats=3, warmup=1))
    assert 0 < stats.min_ms <= stats.median_ms <= stats.max_ms


def test_trials_timed_here_record_their_environment(digits: Task) -> None:
    result = run_trial(digits, Recipe(finetune_epochs=0), latency=LatencySpec(repeats=3))
    assert result.environment == environment("onednn", 1, runtime_version("onnxruntime"))
    assert result.metrics["speedup"] == pytest.approx(
        result.metrics["fp32_latency_ms"] / result.metrics["latency_ms"]
    )
    assert "onnxruntime 1." in hardware_class(result.environment)
    assert hardware_class(result.environment).endswith("onednn, 1 thread")

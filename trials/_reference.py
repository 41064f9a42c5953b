"""What a trial's model is compared with: the fp32 baseline in the same runtime.

The baseline does not change within a sweep: its task metrics and file sizes are measured once
(when the sweep describes its task) and its latency per hardware class (by the first trials
that run on the class, each interleaved with its own model; the sweep keeps the middle of their
timings). A :class:`Reference` carries them to every trial, which then evaluates, exports and
times only its own model.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from trials import _measure, _runtime
from trials._measure import LatencySpec, LatencyStats


@dataclass(frozen=True)
class Reference:
    """The fp32 baseline as measured once: its task metrics (``accuracy``, ...), its model
    file's ``(size_bytes, compressed_bytes)``, and its latency per hardware class
    (:func:`trials.hardware_class`). Missing parts are measured by the trial itself."""

    metrics: Mapping[str, float] = field(default_factory=dict)
    sizes: tuple[int, int] | None = None
    latencies: Mapping[str, LatencyStats] = field(default_factory=dict)


def channels_removed(baseline: nn.Module, pruned: nn.Module, layers: list[str]) -> int:
    """Output channels that structured pruning removed, summed over the Conv/Linear layers."""
    before, after = dict(baseline.named_modules()), dict(pruned.named_modules())
    return sum(
        int(before[name].weight.shape[0]) - int(after[name].weight.shape[0]) for name in layers
    )


def measurements(
    baseline: nn.Module,
    pruned: nn.Module,
    int8: nn.Module,
    fp32_sizes: tuple[int, int],
    layers: list[str],
    example: torch.Tensor,
) -> dict[str, float]:
    """Sizes (of the files the runtime loads), parameter counts and MACs: the same wherever
    they are measured."""
    size, compressed = _measure.artifact_sizes(_runtime.to_portable(int8))
    fp32_size, fp32_compressed = fp32_sizes
    params, nonzero = _measure.count_params(pruned)
    fp32_params, _ = _measure.count_params(baseline)
    removed, zeroed = _measure.pruned_fractions(baseline, pruned, layers)
    metrics: dict[str, Any] = {
        "size_bytes": size,
        "compressed_bytes": compressed,
        "fp32_size_bytes": fp32_size,
        "fp32_compressed_bytes": fp32_compressed,
        "sparsity": removed + zeroed,
        "zero_fraction": zeroed,
        "removed_fraction": removed,
        "params": params,
        "nonzero_params": nonzero,
        "fp32_params": fp32_params,
        "macs": _measure.count_macs(pruned, example),
    }
    return {k: float(v) for k, v in metrics.items()}


def reference_model(
    baseline: nn.Module, example: torch.Tensor, runtime: str = "onnxruntime"
) -> nn.Module:
    """The fp32 model that int8 latency and size are compared with: ``baseline`` in the same
    runtime as the int8 model, with BatchNorm folded and the runtime's graph optimizations on
    (as a deployed fp32 model would run)."""
    return _runtime.reference(baseline, example, runtime)


def measure_latency(
    model: nn.Module, example: torch.Tensor, spec: LatencySpec
) -> _measure.LatencyStats:
    """Time one model as a latency target does: threads pinned, warm-up, then the median (and
    spread) of ``spec.repeats`` timed passes."""
    [stats] = measure_latencies([model], example, spec)
    return stats


def measure_latencies(
    models: Sequence[nn.Module], example: torch.Tensor, spec: LatencySpec
) -> list[_measure.LatencyStats]:
    """:func:`measure_latency` for several models, timed interleaved (so that each sees the
    same load): one :class:`LatencyStats` per model, in order."""
    batch = _measure.example_batch(example, spec.batch_size)
    return _measure.latencies(
        list(models), batch, num_threads=spec.threads, warmup=spec.warmup, repeats=spec.repeats
    )


def compare_latency(
    int8: nn.Module,
    fp32: Callable[[], nn.Module] | LatencyStats,
    example: torch.Tensor,
    spec: LatencySpec,
) -> tuple[dict[str, float], LatencyStats | None]:
    """The latency metrics of ``int8`` on this machine against the fp32 reference: its known
    timing on this hardware class, or (``fp32`` builds the reference model) both timed
    interleaved, in one runtime. Also the fp32 timing when it was taken here."""
    batch = _measure.example_batch(example, spec.batch_size)
    if isinstance(fp32, LatencyStats):
        [measured] = measure_latencies([int8], example, spec)
        timed = None
    else:
        timed, measured = measure_latencies([fp32(), int8], example, spec)
    baseline = fp32 if isinstance(fp32, LatencyStats) else timed
    if baseline is None:
        raise RuntimeError("no fp32 timing to compare with")
    metrics = {**latency_metrics(measured, baseline, spec, batch.shape[0]), "fp32_bn_folded": 1.0}
    return metrics, timed


def latency_metrics(
    int8: _measure.LatencyStats, fp32: _measure.LatencyStats, spec: LatencySpec, batch: int
) -> dict[str, float]:
    """The latency metrics of a trial, from its int8 and its fp32 reference's timings."""
    return {
        "latency_ms": int8.median_ms,
        "latency_min_ms": int8.min_ms,
        "latency_max_ms": int8.max_ms,
        "fp32_latency_ms": fp32.median_ms,
        "fp32_latency_min_ms": fp32.min_ms,
        "fp32_latency_max_ms": fp32.max_ms,
        "speedup": fp32.median_ms / int8.median_ms,
        "latency_threads": float(spec.threads),
        "latency_batch": float(batch),
    }

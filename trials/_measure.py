"""Measurements, each with one definition (see the README's "Measurements" section).

- size: bytes of ``torch.save(model.state_dict())``; compressed size: the same bytes after zlib at
  level 9, which is what unstructured zeros can lower (a dense int8 file does not shrink with them).
- latency: median wall time of one forward pass over the task's example batch, with
  ``torch.set_num_threads`` fixed, after warm-up, under ``torch.inference_mode``; min and max of
  the repeats are kept too. Models compared are timed interleaved, in one process.
- MACs: multiply-accumulates of one forward pass for a single example (dense count).
"""

from __future__ import annotations

import contextlib
import io
import statistics
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

ZLIB_LEVEL = 9


@dataclass(frozen=True)
class LatencyStats:
    median_ms: float
    min_ms: float
    max_ms: float


def serialized_sizes(model: nn.Module) -> tuple[int, int]:
    """(size_bytes, compressed_bytes) of the model's serialized state_dict."""
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    raw = buffer.getvalue()
    return len(raw), len(zlib.compress(raw, ZLIB_LEVEL))


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def latencies(
    models: list[nn.Module],
    example: torch.Tensor,
    *,
    num_threads: int = 1,
    warmup: int = 3,
    repeats: int = 15,
) -> list[LatencyStats]:
    """Latency of each model, measured interleaved (A, B, A, B, ...) in this process.

    Interleaving makes every model see the same machine load, so that their ratio stays honest on
    a shared, noisy worker even when the absolute figures drift.
    """
    example = example.cpu()
    for model in models:
        model.eval()
    times: list[list[float]] = [[] for _ in models]
    with threads(num_threads), torch.inference_mode():
        for model in models:
            for _ in range(warmup):
                model(example)
        for _ in range(repeats):
            for model, samples in zip(models, times, strict=True):
                start = time.perf_counter()
                model(example)
                samples.append((time.perf_counter() - start) * 1000.0)
    return [LatencyStats(statistics.median(t), min(t), max(t)) for t in times]


def count_macs(model: nn.Module, example: torch.Tensor) -> int:
    """Dense multiply-accumulates of one forward pass on a single example (fp32 model)."""
    counter = FlopCounterMode(display=False)
    with counter, torch.no_grad():
        model.eval()(example[:1])
    return int(counter.get_total_flops() // 2)


def count_params(model: nn.Module) -> tuple[int, int]:
    """(parameters, non-zero parameters), counting a shared parameter once."""
    total = nonzero = 0
    for param in model.parameters():
        total += param.numel()
        nonzero += int(torch.count_nonzero(param.detach()).item())
    return total, nonzero


def weight_sparsity(model: nn.Module, layers: list[str]) -> float:
    """Fraction of zeros over the weights of the prunable layers."""
    modules = dict(model.named_modules())
    zeros = total = 0
    for name in layers:
        weight = modules[name].weight.detach()
        zeros += int((weight == 0).sum().item())
        total += weight.numel()
    return zeros / max(total, 1)

"""Measurements, each with one definition (see the README's "Measurements" section).

- size: bytes of the file the runtime loads (the ``.onnx`` model for onnxruntime); compressed
  size: the same bytes after zlib at level 9, which is what unstructured zeros can lower (a dense
  int8 file does not shrink with them).
- latency: median wall time of one forward pass over the task's example batch, with the thread
  count fixed (``torch.set_num_threads``, which runtime models follow), after warm-up, under
  ``torch.inference_mode``; min and max of the repeats are kept too. Models compared are timed
  interleaved, in one process.
- MACs: multiply-accumulates of one forward pass for a single example (dense count).
"""

from __future__ import annotations

import contextlib
import math
import platform
import statistics
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize
from torch.utils.flop_counter import FlopCounterMode

ZLIB_LEVEL = 9


@dataclass(frozen=True)
class LatencyStats:
    """Latency of one model over the timed repeats, in milliseconds per forward pass."""

    median_ms: float
    min_ms: float
    max_ms: float


@dataclass(frozen=True)
class LatencySpec:
    """How latency is measured: threads pinned with ``torch.set_num_threads``, the batch size
    (None: the task's ``example_input`` as it is), warm-up passes, then timed repeats."""

    threads: int = 1
    batch_size: int | None = None
    warmup: int = 3
    repeats: int = 15

    def __post_init__(self) -> None:
        for name, minimum in (("threads", 1), ("warmup", 0), ("repeats", 1)):
            value = getattr(self, name)
            if not isinstance(value, int) or value < minimum:
                raise ValueError(f"latency.{name}: must be an integer >= {minimum}, got {value!r}")
        if self.batch_size is not None and (
            not isinstance(self.batch_size, int) or self.batch_size < 1
        ):
            raise ValueError(f"latency.batch_size: must be >= 1 or null, got {self.batch_size!r}")


def example_batch(example: torch.Tensor, batch_size: int | None) -> torch.Tensor:
    """``example`` cut or tiled along the batch dimension to ``batch_size`` rows."""
    if batch_size is None or batch_size == example.shape[0]:
        return example
    tiles = math.ceil(batch_size / example.shape[0])
    return example.repeat(tiles, *([1] * (example.dim() - 1)))[:batch_size].contiguous()


def _cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                key, _, value = line.partition(":")
                if key.strip() in ("model name", "Model", "Hardware", "cpu model"):
                    return " ".join(value.split())
    except OSError:
        pass  # not Linux: fall back to what platform knows
    return platform.processor() or "unknown CPU"


def environment(backend: str, threads: int, runtime: str) -> dict[str, str]:
    """Where and how a latency was measured: what makes two latencies comparable or not.
    ``runtime``: the runtime and its version (``onnxruntime 1.32.0``)."""
    return {
        "arch": platform.machine(),
        "cpu": _cpu_model(),
        "torch": torch.__version__.split("+")[0],
        "runtime": runtime,
        "backend": backend,
        "threads": str(threads),
    }


def hardware_class(env: dict[str, str]) -> str:
    """One line naming the hardware class of :func:`environment`: latencies are comparable only
    within one class."""
    return (
        f"{env['arch']} {env['cpu']}, {env.get('runtime', 'eager')} (torch {env['torch']}), "
        f"{env['backend']}, "
        f"{env['threads']} thread{'s' if env['threads'] != '1' else ''}"
    )


def artifact_sizes(data: bytes) -> tuple[int, int]:
    """(size_bytes, compressed_bytes) of a model file."""
    return len(data), len(zlib.compress(data, ZLIB_LEVEL))


@contextlib.contextmanager
def threads(count: int) -> Iterator[None]:
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def as_timed(model: nn.Module) -> nn.Module:
    """What timing runs for ``model``: a runtime model's own file (``as_filed``), not the exact
    twin it evaluates with on a CPU whose int8 kernels saturate; any other module itself."""
    as_filed = getattr(model, "as_filed", None)
    return as_filed() if callable(as_filed) else model


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
    models = [as_timed(model).eval() for model in models]
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


def pruned_fractions(
    baseline: nn.Module, pruned: nn.Module, layers: list[str]
) -> tuple[float, float]:
    """(removed, zeroed): the fractions of the original model's prunable weights (the Conv and
    Linear weights of ``layers``) that structured pruning removed, and that are zero in what
    remains. Their sum is the trial's ``sparsity``: the share of those weights that are gone."""
    before, after = dict(baseline.named_modules()), dict(pruned.named_modules())
    original = sum(_weight(before[name]).numel() for name in layers)
    kept = [_weight(after[name]).detach() for name in layers]
    remaining = sum(weight.numel() for weight in kept)
    zeros = sum(int((weight == 0).sum()) for weight in kept)
    total = max(original, 1)
    return (original - remaining) / total, zeros / total


def _weight(layer: nn.Module) -> torch.Tensor:
    """The trained float weight: under QAT, the one the simulated int8 rounding starts from
    (what is pruned is counted, not what rounds to zero)."""
    if parametrize.is_parametrized(layer, "weight"):
        return layer.get_submodule("parametrizations.weight").get_parameter("original")
    return layer.get_parameter("weight")

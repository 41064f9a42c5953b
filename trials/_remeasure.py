"""A speedup that can be trusted: an int8 model timed against its fp32 reference in alternating
rounds until the speedup's 95% confidence interval is narrow enough, or a time bound passes.

A trial's own timing (``latency.repeats`` passes of each model, interleaved) gives one ratio of
medians with no error bar: on a busy machine the same kind of recipe measured 1.4x to 6.9x
within one sweep. Here each round times a few passes of both models back to back (their order
alternating from round to round, so that a drift within a round favours neither), and the
per-round ratios ``fp32 / int8`` are treated as paired samples: load that slows both models
alike cancels in the ratio, and what remains is spread that the interval accounts for. The
interval is Student's t on the log ratios (a speedup is multiplicative, and its log is close to
symmetric), so the estimate is the geometric mean of the round ratios and the interval is
asymmetric around it.
"""

from __future__ import annotations

import math
import statistics
import time
from dataclasses import dataclass

import torch
from scipy import stats
from torch import nn

from trials import _measure
from trials._measure import LatencySpec

# Rounds before the interval may stop the timing: fewer ratios give an interval whose own
# width is too uncertain to trust.
MIN_ROUNDS = 5
# Timed passes of each model per round; the round's figure is their median.
PASSES_PER_ROUND = 5
CONFIDENCE = 0.95


@dataclass(frozen=True)
class Speedup:
    """The speedup of an int8 model over its fp32 reference, with its 95% interval.

    ``speedup``: geometric mean of the per-round ratios; ``low``/``high``: the interval's ends;
    ``int8_ms``/``fp32_ms``: medians of the rounds' medians; ``precise``: whether the interval
    reached the asked precision (else the time bound stopped the timing)."""

    speedup: float
    low: float
    high: float
    rounds: int
    int8_ms: float
    fp32_ms: float
    seconds: float
    precise: bool

    @property
    def half_width(self) -> float:
        """The interval's larger distance from the estimate, relative to it (0.1: within 10%)."""
        return max(self.high / self.speedup - 1.0, 1.0 - self.low / self.speedup)

    def metrics(self) -> dict[str, float]:
        """The trial metrics these figures replace or add."""
        return {
            "latency_ms": self.int8_ms,
            "fp32_latency_ms": self.fp32_ms,
            "speedup": self.speedup,
            "speedup_low": self.low,
            "speedup_high": self.high,
            "latency_rounds": float(self.rounds),
            "remeasure_s": self.seconds,
        }


def interval(ratios: list[float]) -> tuple[float, float, float]:
    """(estimate, low, high) of the speedup from per-round ratios: the geometric mean and the
    95% Student's t interval of the mean log ratio, mapped back."""
    if len(ratios) < 2:
        raise ValueError(f"an interval needs at least 2 rounds, got {len(ratios)}")
    logs = [math.log(r) for r in ratios]
    mean = statistics.fmean(logs)
    spread = statistics.stdev(logs) / math.sqrt(len(logs))
    half = float(stats.t.ppf(0.5 + CONFIDENCE / 2, len(logs) - 1)) * spread
    return math.exp(mean), math.exp(mean - half), math.exp(mean + half)


def _round(model: nn.Module, batch: torch.Tensor, passes: int) -> float:
    samples = []
    for _ in range(passes):
        start = time.perf_counter()
        model(batch)
        samples.append((time.perf_counter() - start) * 1000.0)
    return statistics.median(samples)


def remeasure(
    fp32: nn.Module,
    int8: nn.Module,
    example: torch.Tensor,
    spec: LatencySpec,
    *,
    precision: float = 0.1,
    time_s: float = 20.0,
    min_rounds: int = MIN_ROUNDS,
    passes: int = PASSES_PER_ROUND,
) -> Speedup:
    """Time ``int8`` against ``fp32`` (runtime models, as :func:`trials.from_portable` loads
    them) on the example batch, threads pinned as ``spec`` says, in rounds until the speedup's
    95% interval lies within ``±precision`` of the estimate (after at least ``min_rounds``), or
    ``time_s`` seconds have passed (after at least 2 rounds: an interval needs two)."""
    if not 0 < precision < 1:
        raise ValueError(f"precision: must be between 0 and 1, got {precision!r}")
    if not time_s > 0:
        raise ValueError(f"time_s: must be > 0, got {time_s!r}")
    if min_rounds < 2 or passes < 1:
        raise ValueError(f"min_rounds must be >= 2 and passes >= 1, got {min_rounds}, {passes}")
    batch = _measure.example_batch(example, spec.batch_size).cpu()
    fp32, int8 = _measure.as_timed(fp32), _measure.as_timed(int8)
    fp32_ms: list[float] = []
    int8_ms: list[float] = []
    started = time.monotonic()
    with _measure.threads(spec.threads), torch.inference_mode():
        for model in (fp32.eval(), int8.eval()):
            for _ in range(spec.warmup):
                model(batch)
        while True:
            first_fp32 = len(fp32_ms) % 2 == 0
            for model, samples in (
                ((fp32, fp32_ms), (int8, int8_ms))
                if first_fp32
                else ((int8, int8_ms), (fp32, fp32_ms))
            ):
                samples.append(_round(model, batch, passes))
            rounds = len(fp32_ms)
            if rounds < 2:
                continue
            estimate, low, high = interval([f / i for f, i in zip(fp32_ms, int8_ms, strict=True)])
            precise = max(high / estimate - 1.0, 1.0 - low / estimate) <= precision
            elapsed = time.monotonic() - started
            if (precise and rounds >= min_rounds) or elapsed >= time_s:
                return Speedup(
                    estimate,
                    low,
                    high,
                    rounds,
                    statistics.median(int8_ms),
                    statistics.median(fp32_ms),
                    elapsed,
                    precise,
                )

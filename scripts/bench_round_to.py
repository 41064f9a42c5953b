"""Which channel counts the runtime runs fast: the evidence for ``trial.round_to``'s default.

Structured pruning leaves a layer with whatever channel count its amount gives, unless the
recipe's ``round_to`` rounds it. This script times, through the engine's own path
(``trials.apply_recipe`` + ``trials.finalize``, one thread, all models of a group timed
interleaved so that they see the same load):

- **layers**: a block ``1x1 conv 32->c, BN, ReLU, conv c->c, BN, ReLU, 1x1 conv c->32`` whose
  middle conv is depthwise 3x3 (8x8 input), depthwise 5x5 (4x4) or dense 3x3 (8x8), and a
  ``Linear 128->c->128`` block as a control, at every ``c`` in ``[base, base + 8]`` for bases 64
  and 280, in fp32 (order ``prune_float``) and int8 (``prune_ptq``, per-channel). Each count's
  time is divided by that of the multiple of 4 at or below it, timed in the same run;
- **models**: the built-in ``shapes`` CNN (MobileNetV2-style) and MobileNetV3-Small (width 0.5,
  from ``examples/mobilenet/``), every layer that can lose channels at structured amount 0.3
  with ``round_to`` 1 and 4, both orders: speedup over the fp32 model in the same runtime
  (``trials.reference_model``). Weights are untrained: latency does not depend on their values.

Prints one JSON object and writes it to ``scripts/results/bench_round_to.json``.

    python scripts/bench_round_to.py [--repeats 40]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from machine import measured_on
from torch import nn

from trials import (
    LatencySpec,
    LayerSpec,
    Recipe,
    apply_recipe,
    finalize,
    measure_latencies,
    reference_model,
    structured_prunable,
)
from trials.tasks.shapes import ShapesTask

ROOT = Path(__file__).parent.parent
RESULTS = Path(__file__).parent / "results"
ORDERS = ("prune_float", "prune_ptq")
BASES = (64, 280)
MULTIPLE = 4


def conv_block(channels: int, kernel: int, depthwise: bool) -> nn.Module:
    groups = channels if depthwise else 1
    return nn.Sequential(
        nn.Conv2d(32, channels, 1),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, channels, kernel, padding=kernel // 2, groups=groups),
        nn.BatchNorm2d(channels),
        nn.ReLU(),
        nn.Conv2d(channels, 32, 1),
    )


def linear_block(channels: int) -> nn.Module:
    return nn.Sequential(nn.Linear(128, channels), nn.ReLU(), nn.Linear(channels, 128))


# name -> (block for a channel count, example input)
LAYERS: dict[str, tuple[Callable[[int], nn.Module], torch.Tensor]] = {
    "depthwise_3x3_8x8": (lambda c: conv_block(c, 3, True), torch.randn(1, 32, 8, 8)),
    "depthwise_5x5_4x4": (lambda c: conv_block(c, 5, True), torch.randn(1, 32, 4, 4)),
    "dense_3x3_8x8": (lambda c: conv_block(c, 3, False), torch.randn(1, 32, 8, 8)),
    "linear": (linear_block, torch.randn(1, 16, 128)),
}


def runtime_model(model: nn.Module, recipe: Recipe, example: torch.Tensor) -> nn.Module:
    """The model the runtime runs for ``recipe``, calibrated on the example itself."""
    trained = apply_recipe(model.eval(), recipe, example)
    return finalize(trained, recipe, [(example, example)], example_input=example)


def time_us(models: list[nn.Module], example: torch.Tensor, repeats: int) -> list[float]:
    spec = LatencySpec(threads=1, warmup=5, repeats=repeats)
    return [round(s.median_ms * 1000, 2) for s in measure_latencies(models, example, spec)]


def bench_layers(repeats: int) -> dict[str, Any]:
    torch.manual_seed(0)
    results: dict[str, Any] = {}
    for name, (build, example) in LAYERS.items():
        for order in ORDERS:
            recipe = Recipe(order=order, granularity="per_channel")
            counts = [c for base in BASES for c in range(base, base + 2 * MULTIPLE + 1)]
            models = [runtime_model(build(c), recipe, example) for c in counts]
            times = dict(zip(counts, time_us(models, example, repeats), strict=True))
            ratios = [times[c] / times[c - c % MULTIPLE] for c in counts if c % MULTIPLE]
            results[f"{name}/{order}"] = {
                "us_by_channels": times,
                "off_multiple_slowdown_median": round(statistics.median(ratios), 2),
                "off_multiple_slowdown_max": round(max(ratios), 2),
            }
            print(f"[bench] {name}/{order}: {results[f'{name}/{order}']}", file=sys.stderr)
    return results


def mobilenet_v3_small() -> nn.Module:
    sys.path.insert(0, str(ROOT / "examples" / "mobilenet"))
    from mobilenet_v3 import mobilenet_v3_small as build  # plain torch, torchvision's layout

    return build(num_classes=10, width_mult=0.5)


def bench_models(repeats: int, amount: float) -> dict[str, Any]:
    shapes = ShapesTask()
    models: dict[str, tuple[Callable[[], nn.Module], torch.Tensor]] = {
        "shapes": (shapes.create_model, shapes.example_input()),
        "mobilenet_v3_small_0.5": (mobilenet_v3_small, torch.randn(32, 3, 32, 32)),
    }
    results: dict[str, Any] = {}
    for name, (build, example) in models.items():
        torch.manual_seed(0)
        baseline = build().eval()
        prunable = [n for n, why in structured_prunable(baseline, example).items() if why is None]
        layers = {n: LayerSpec(amount, "structured") for n in prunable}
        timed = {"fp32": reference_model(baseline, example)}
        for order in ORDERS:
            for round_to in (1, MULTIPLE):
                recipe = Recipe(layers, order=order, granularity="per_channel", round_to=round_to)
                model = build()
                model.load_state_dict(baseline.state_dict())
                timed[f"{order}/round_to_{round_to}"] = runtime_model(model, recipe, example)
        times = dict(zip(timed, time_us(list(timed.values()), example, repeats), strict=True))
        results[name] = {
            "structured_layers": len(prunable),
            "amount": amount,
            "fp32_us": times["fp32"],
            "speedup": {k: round(times["fp32"] / t, 2) for k, t in times.items() if k != "fp32"},
        }
        print(f"[bench] {name}: {results[name]}", file=sys.stderr)
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=40)
    parser.add_argument("--amount", type=float, default=0.3)
    parser.add_argument("--output", type=Path, default=RESULTS / "bench_round_to.json")
    args = parser.parse_args()
    results = {
        "multiple": MULTIPLE,
        "torch_threads": 1,
        "layers": bench_layers(args.repeats),
        "models": bench_models(args.repeats, args.amount),
        "measured_on": measured_on(),
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(results, indent=1) + "\n")
    print(json.dumps(results))


if __name__ == "__main__":
    main()

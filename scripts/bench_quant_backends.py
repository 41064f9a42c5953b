"""Which int8 flow to use: torch.ao FX graph mode vs torchao pt2e, measured on the built-in tasks.

Prints one JSON object: per task, per flow, the int8 accuracy, the latency (median ms over the
task's example batch, one thread, interleaved with the fp32 reference), the time to prepare,
calibrate and convert, and the compile time where a flow needs ``torch.compile``. Ratios are
against the BatchNorm-folded fp32 model measured in the same run.

    python scripts/bench_quant_backends.py [--tasks digits shapes] [--repeats 20]
"""

from __future__ import annotations

import argparse
import copy
import functools
import json
import time
from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from trials import Recipe, Task, apply_recipe, finalize, load_task
from trials._measure import latencies
from trials._quant import fold_batchnorm, quiet

CPU = torch.device("cpu")


def _timed(build: Callable[[], nn.Module]) -> tuple[nn.Module, float]:
    start = time.perf_counter()
    model = build()
    return model, time.perf_counter() - start


def _fx(task: Task, backend: str, granularity: str) -> nn.Module:
    recipe = Recipe(backend=backend, granularity=granularity, finetune_epochs=0)
    return finalize(
        apply_recipe(task.build_model(), recipe, task.example_input()),
        recipe,
        task.calibration_batches(),
    )


def _pt2e(task: Task, dynamic_batch: bool, calibration_batches: int = 8) -> nn.Module:
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = task.example_input()
    # Dynamic batch so that evaluation batches of any size run; static for torch.compile.
    shapes = ({0: torch.export.Dim("batch", min=1, max=4096)},) if dynamic_batch else None
    exported = torch.export.export(
        task.build_model().eval(), (example,), dynamic_shapes=shapes
    ).module()
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported, quantizer)
    with torch.no_grad():
        for index, (inputs, _) in enumerate(task.calibration_batches()):
            if index >= calibration_batches:
                break
            if dynamic_batch or inputs.shape[0] == example.shape[0]:
                prepared(inputs)
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)
    return converted


def _compiled(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, float]:
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True  # int8 lowering of pt2e graphs needs frozen weights
    compiled = torch.compile(copy.deepcopy(model))
    start = time.perf_counter()
    with torch.no_grad():
        compiled(example)
    return compiled, time.perf_counter() - start  # type: ignore[return-value]


def bench_task(name: str, repeats: int) -> dict[str, Any]:
    task = load_task(name)
    example = task.example_input()
    fp32, _ = fold_batchnorm(task.build_model())
    fp32_accuracy = task.evaluate(fp32, CPU)["accuracy"]
    flows: dict[str, dict[str, Any]] = {}
    models: dict[str, nn.Module] = {}
    for backend in ("x86", "onednn", "qnnpack"):
        for granularity in ("per_tensor", "per_channel"):
            key = f"fx_{backend}_{granularity}"
            models[key], seconds = _timed(functools.partial(_fx, task, backend, granularity))
            flows[key] = {"convert_s": seconds}
    try:
        models["pt2e_x86_eager"], seconds = _timed(lambda: _pt2e(task, dynamic_batch=True))
        flows["pt2e_x86_eager"] = {"convert_s": seconds}
        static, seconds = _timed(lambda: _pt2e(task, dynamic_batch=False))
        compiled, compile_s = _compiled(static, example)
        models["pt2e_x86_compiled"] = compiled
        flows["pt2e_x86_compiled"] = {"convert_s": seconds, "compile_s": compile_s}
    except ImportError as exc:
        flows["pt2e_x86_eager"] = {"error": f"torchao not installed ({exc})"}
    except Exception as exc:  # noqa: BLE001 - a failing flow is a result to report, not a crash
        flows["pt2e_x86_compiled"] = {"error": f"{type(exc).__name__}: {str(exc)[:300]}"}
    models["fp32_compiled"], compile_s = _compiled(fp32, example)
    flows["fp32_compiled"] = {"convert_s": 0.0, "compile_s": compile_s}
    for key, model in models.items():
        engine = key.split("_")[1] if key.startswith("fx_") else "x86"
        torch.backends.quantized.engine = engine
        reference, measured = latencies([fp32, model], example, repeats=repeats)
        static_shape = key == "pt2e_x86_compiled"  # runs the example batch size only
        flows[key].update(
            accuracy=None if static_shape else task.evaluate(model, CPU)["accuracy"],
            latency_ms=measured.median_ms,
            fp32_latency_ms=reference.median_ms,
            speedup=reference.median_ms / measured.median_ms,
        )
    return {"fp32_accuracy": fp32_accuracy, "batch": int(example.shape[0]), "flows": flows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tasks", nargs="+", default=["digits"])
    parser.add_argument("--repeats", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    with quiet():
        report = {
            "torch": torch.__version__,
            "threads": 1,
            "tasks": {name: bench_task(name, args.repeats) for name in args.tasks},
        }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

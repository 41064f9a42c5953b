"""Which int8 flow to use: ONNX Runtime (the engine) against torch.ao FX and torchao pt2e.

Per task, one thread, all models of a task timed interleaved (median of ``--repeats``): fp32
baselines (torch eager, torch with BatchNorm folded, ONNX Runtime fp32, ``torch.compile`` of the
folded model) and int8 flows: ``onnxruntime`` prune_ptq (per-tensor, per-channel), prune_qat and
prune_dynamic via ``trials.apply_recipe`` + ``trials.finalize``; legacy ``torch_ao_fx`` PTQ
(engines onednn, x86); ``torchao_pt2e`` with X86InductorQuantizer, uncompiled and compiled.
Each flow: accuracy, its delta to the torch fake-quant simulation of the same weights, latency,
speedups vs folded torch fp32 and vs fp32 in its own runtime, and per-trial costs (``export_s``,
``quantize_s``, ``compile_s``), to compare with one fine-tuning epoch (``finetune_epoch_s``).
Compiles start from an empty inductor cache (a warm process). One JSON object goes to stdout;
progress and library warnings go to stderr.

    python scripts/bench_quant_backends.py [--tasks ...] [--repeats 20] [--skip-inductor]
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import functools
import importlib.metadata
import itertools
import json
import os
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator
from typing import Any, TypeVar
from unittest import mock

import torch
from machine import measured_on
from torch import nn

import trials
from trials import LayerSpec, Recipe, Task, _fakequant, _onnx, _runtime
from trials._fold import fold_batchnorm
from trials._measure import _cpu_model, artifact_sizes, latencies
from trials._onnx import export as onnx_export
from trials._train import train

CPU = torch.device("cpu")
ONNXRUNTIME_FLOWS = [("prune_ptq", "per_tensor"), ("prune_ptq", "per_channel")]
ONNXRUNTIME_FLOWS += [("prune_qat", "per_tensor"), ("prune_dynamic", "per_tensor")]
T = TypeVar("T")
Flow = tuple[nn.Module, dict[str, Any]]


def log(message: str) -> None:
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def timed(build: Callable[[], T]) -> tuple[T, float]:
    start = time.perf_counter()
    result = build()
    return result, time.perf_counter() - start


def accuracy(task: Task, model: nn.Module) -> float:
    with torch.inference_mode():
        return float(task.evaluate(model, CPU)["accuracy"])


def calibration(task: Task, batch: int | None = None) -> list[torch.Tensor]:
    """The batches ``trials.finalize`` calibrates on; with ``batch``, cut into that size."""
    count = Recipe().calibration_batches
    inputs = [x for x, _ in itertools.islice(task.calibration_batches(), count)]
    if batch is None:
        return inputs
    return [part for x in inputs for part in x.split(batch) if len(part) == batch]


class FixedBatch(nn.Module):
    """Runs a model compiled for one batch size on any batch (in slices, the last one padded)
    without recompiling it."""

    def __init__(self, model: nn.Module, batch: int) -> None:
        super().__init__()
        self.model, self.batch = model, batch

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if len(inputs) == self.batch:
            return self.model(inputs)
        outputs = []
        for part in inputs.split(self.batch):
            rows = len(part)
            with torch.inference_mode(False):  # a normal tensor, as the compile traced
                part = torch.cat([part, part[-1:].expand(self.batch - rows, *part.shape[1:])])
            outputs.append(self.model(part)[:rows])
        return torch.cat(outputs)


@contextlib.contextmanager
def export_clock() -> Iterator[dict[str, Any]]:
    """Seconds spent in ``trials._onnx.float_graph`` (export or cached graph with the weights
    swapped in, then optimization) during the block, and whether its export cache held them."""
    record: dict[str, Any] = {"export_s": 0.0, "export_cache_hit": True}
    original = _onnx.float_graph

    def clocked(model: nn.Module, example: torch.Tensor) -> Any:
        key = onnx_export._signature(model.cpu().eval(), example.cpu())
        record["export_cache_hit"] = record["export_cache_hit"] and key in onnx_export._EXPORTS
        graph, seconds = timed(lambda: original(model, example))
        record["export_s"] += seconds
        return graph

    with mock.patch.object(_onnx, "float_graph", clocked):
        yield record


def export_costs(model: nn.Module, example: torch.Tensor) -> dict[str, float]:
    """The first export of an architecture, the cached path (same shapes, other weights) and a
    structurally pruned copy (a new shape, so a new export)."""
    _, first = timed(lambda: _onnx.float_graph(model, example))
    other = copy.deepcopy(model)
    with torch.no_grad():
        for param in other.parameters():
            param.mul_(0.9)
    _, cached = timed(lambda: _onnx.float_graph(other, example))
    reasons = trials.structured_prunable(model, example)
    specs = {name: LayerSpec(0.5, "structured") for name, why in reasons.items() if why is None}
    pruned = trials.apply_recipe(copy.deepcopy(model), Recipe(layers=specs), example)
    _, structured = timed(lambda: _onnx.float_graph(pruned, example))
    return {"export_first_s": first, "export_cached_s": cached, "structured_export_s": structured}


def fake_quant_accuracy(task: Task, model: nn.Module, per_channel: bool) -> float:
    """The torch simulation of ``prune_ptq``: every prunable layer's weight and input rounded,
    input ranges observed on the calibration batches (eval mode), then frozen."""
    grid = _fakequant.weight_grid(per_channel, reduce_range=False)
    layers = trials.prunable_layers(model)
    simulated = _fakequant.prepare(copy.deepcopy(model), dict.fromkeys(layers, grid)).eval()
    with torch.no_grad():
        for inputs in calibration(task):
            simulated(inputs)
    _fakequant.freeze_observers(simulated)
    return accuracy(task, simulated)


def onnxruntime_flow(task: Task, model: nn.Module, order: str, granularity: str) -> Flow:
    recipe = Recipe(order=order, granularity=granularity, finetune_epochs=0)
    example = task.example_input()
    prepared = trials.apply_recipe(copy.deepcopy(model), recipe, example)
    info: dict[str, Any] = {"order": order, "granularity": granularity}
    if order == "prune_qat":  # the simulated model trains; its accuracy is the fake-quant one
        step = functools.partial(_runtime.on_qat_step, prepared)
        start = time.perf_counter()
        train(prepared, task, epochs=1, learning_rate=1e-4, device=CPU, phase="QAT", on_step=step)
        info["train_s"] = time.perf_counter() - start
        info["fake_quant_accuracy"] = accuracy(task, prepared)
    elif order == "prune_ptq":
        info["fake_quant_accuracy"] = fake_quant_accuracy(task, model, granularity == "per_channel")
    batches = None if order == "prune_dynamic" else task.calibration_batches()
    with export_clock() as clock:
        int8, seconds = timed(
            lambda: trials.finalize(prepared, recipe, batches, example_input=example)
        )
    info.update(clock, quantize_s=seconds - clock["export_s"], finalize_s=seconds)
    info["size_bytes"], info["compressed_bytes"] = artifact_sizes(trials.to_portable(int8))
    return int8, {**info, "same_runtime_fp32": "onnxruntime_fp32"}


def fx_flow(task: Task, model: nn.Module, engine: str) -> Flow:
    """Legacy torch.ao FX graph mode PTQ with per-tensor weights (the engine's default qconfig
    has per-channel weights; its activation observer is kept). The engine set at convert time
    picks the weight packing, which decides the kernels whatever engine is set later."""
    from torch.ao.quantization import QConfig, default_weight_observer, get_default_qconfig_mapping
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx

    start = time.perf_counter()
    torch.backends.quantized.engine = engine
    mapping = get_default_qconfig_mapping(engine)
    assert mapping.global_qconfig is not None
    activation = mapping.global_qconfig.activation
    mapping.set_global(QConfig(activation=activation, weight=default_weight_observer))
    prepared = prepare_fx(copy.deepcopy(model).eval(), mapping, (task.example_input(),))
    with torch.no_grad():
        for inputs in calibration(task):
            prepared(inputs)
    int8 = convert_fx(prepared)
    info = {"granularity": "per_tensor", "quantize_s": time.perf_counter() - start}
    return int8, {**info, "same_runtime_fp32": "torch_bn_folded"}


def pt2e(task: Task, model: nn.Module, static: bool) -> nn.Module:
    """torchao pt2e with X86InductorQuantizer (per-channel weights): quantize/dequantize nodes in
    an exported graph (batch dynamic unless ``static``); int8 kernels only once compiled."""
    import torchao.quantization.pt2e.quantizer.x86_inductor_quantizer as xiq
    from torchao.quantization.pt2e import allow_exported_model_train_eval
    from torchao.quantization.pt2e.quantize_pt2e import convert_pt2e, prepare_pt2e

    example = task.example_input()
    shapes = None if static else ({0: torch.export.Dim("batch", min=1, max=4096)},)
    exported = torch.export.export(copy.deepcopy(model).eval(), (example,), dynamic_shapes=shapes)
    quantizer = xiq.X86InductorQuantizer()
    quantizer.set_global(xiq.get_default_x86_inductor_quantization_config())
    prepared = prepare_pt2e(exported.module(), quantizer)
    with torch.no_grad():
        for inputs in calibration(task, len(example) if static else None):
            prepared(inputs)
    converted = convert_pt2e(prepared)
    allow_exported_model_train_eval(converted)
    return converted


def compile_model(model: nn.Module, example: torch.Tensor) -> tuple[nn.Module, float]:
    """``torch.compile`` with frozen weights (pt2e's int8 lowering needs them), timed to the end
    of the first call, under inference mode as latency is timed."""
    import torch._inductor.config as inductor_config

    inductor_config.freezing = True
    compiled: nn.Module = torch.compile(model)  # type: ignore[assignment]
    with torch.inference_mode():
        _, seconds = timed(lambda: compiled(example))
    return compiled, seconds


def pt2e_flow(task: Task, model: nn.Module, compiled: bool) -> Flow:
    """Uncompiled: exported with a dynamic batch. Compiled: exported for the latency batch (a
    static shape), evaluated in padded slices; its simulation is the same model uncompiled."""
    simulated, seconds = timed(lambda: pt2e(task, model, static=compiled))
    if not compiled:
        return simulated, {"quantize_s": seconds, "same_runtime_fp32": "torch_bn_folded"}
    batch = len(task.example_input())
    simulated_accuracy = accuracy(task, FixedBatch(simulated, batch))
    fast, compile_s = compile_model(simulated, task.example_input())
    return fast, {
        "quantize_s": seconds,
        "compile_s": compile_s,
        "accuracy": accuracy(task, FixedBatch(fast, batch)),
        "fake_quant_accuracy": simulated_accuracy,
        "fake_quant_reference": f"the same pt2e model uncompiled (batch {batch}, Q/DQ in fp32)",
        "same_runtime_fp32": "torch_compile_bn_folded",
    }


def fp32_models(task: Task, model: nn.Module, inductor: bool) -> dict[str, Flow]:
    example = task.example_input()
    models: dict[str, Flow] = {
        "torch_eager": (model, {}),
        "torch_bn_folded": (fold_batchnorm(copy.deepcopy(model))[0], {}),
        "onnxruntime_fp32": (trials.reference_model(model, example), {}),
    }
    fp32_file = trials.to_portable(models["onnxruntime_fp32"][0])
    sizes = dict(zip(("size_bytes", "compressed_bytes"), artifact_sizes(fp32_file), strict=True))
    models["onnxruntime_fp32"][1].update(sizes)
    if inductor:
        try:
            fast, compile_s = compile_model(copy.deepcopy(models["torch_bn_folded"][0]), example)
            compiled = FixedBatch(fast, len(example))
            models["torch_compile_bn_folded"] = (compiled, {"compile_s": compile_s})
        except Exception as exc:  # noqa: BLE001 - a failing flow is a result to report
            failure("torch.compile of the fp32 model", exc)
    for fp32, info in models.values():
        info["accuracy"] = accuracy(task, fp32)
    return models


def bench_task(name: str, repeats: int, inductor: bool) -> tuple[dict[str, Any], dict[str, Any]]:
    task = trials.load_task(name)
    example = task.example_input()
    model = task.build_model().eval()
    log(f"{name}: export costs, one fine-tuning epoch, fp32 models")
    costs = export_costs(model, example)
    tuned = copy.deepcopy(model)
    _, costs["finetune_epoch_s"] = timed(
        lambda: train(tuned, task, epochs=1, learning_rate=1e-3, device=CPU, phase="bench")
    )
    fp32 = fp32_models(task, model, inductor)
    builders: dict[str, Callable[[], Flow]] = {}
    for order, granularity in ONNXRUNTIME_FLOWS:
        if order != "prune_dynamic" or trials.has_dynamic_layers(model):
            key = f"onnxruntime_{order.removeprefix('prune_')}_{granularity}"
            builders[key] = functools.partial(onnxruntime_flow, task, model, order, granularity)
    for engine in ("onednn", "x86"):
        builders[f"torch_ao_fx_{engine}"] = functools.partial(fx_flow, task, model, engine)
    if inductor:
        builders["torchao_pt2e_uncompiled"] = functools.partial(pt2e_flow, task, model, False)
        builders["torchao_pt2e_compiled"] = functools.partial(pt2e_flow, task, model, True)
    int8: dict[str, Flow] = {}
    flows: dict[str, dict[str, Any]] = {}
    for key, build in builders.items():
        log(f"{name}: {key}")
        try:
            quantized, flows[key] = build()
            with torch.inference_mode():
                quantized(example)  # a failure here, not inside the timed group
            if "accuracy" not in flows[key]:
                flows[key]["accuracy"] = accuracy(task, quantized)
            int8[key] = (quantized, flows[key])
        except Exception as exc:  # noqa: BLE001 - a failing flow is a result to report
            flows[key] = failure(f"{name} {key}", exc)
    log(f"{name}: timing {len(fp32) + len(int8)} models interleaved, {repeats} repeats")
    models = {**fp32, **int8}
    stats = latencies([m for m, _ in models.values()], example, num_threads=1, repeats=repeats)
    ms = {key: s.median_ms for key, s in zip(models, stats, strict=True)}
    for key, (_, info) in models.items():
        info["latency_ms"] = ms[key]
    for key, (_, flow) in int8.items():
        simulated, same = flow.setdefault("fake_quant_accuracy", None), flow["same_runtime_fp32"]
        flow.setdefault("fake_quant_reference", None if simulated is None else "trials._fakequant")
        delta = None if simulated is None else flow["accuracy"] - simulated
        flow["accuracy_delta_vs_fake_quant"] = delta
        flow["speedup_vs_bn_folded_torch"] = ms["torch_bn_folded"] / ms[key]
        flow["speedup_vs_same_runtime_fp32"] = ms[same] / ms[key] if same in ms else None
    fp32_info = {key: info for key, (_, info) in fp32.items()}
    result = {"batch": len(example), "costs": costs, "fp32": fp32_info, "flows": flows}
    return result, summarize(fp32_info, flows, costs)


def failure(where: str, exc: BaseException) -> dict[str, Any]:
    text = traceback.format_exc()
    log(f"FAILED {where}:\n{text}")
    return {"error": f"{type(exc).__name__}: {str(exc)[:500]}", "traceback": text[-3000:]}


def summarize(
    fp32: dict[str, dict[str, Any]], flows: dict[str, dict[str, Any]], costs: dict[str, float]
) -> dict[str, Any]:
    ms = {key: info["latency_ms"] for key, info in fp32.items()}
    done = {key: flow for key, flow in flows.items() if "latency_ms" in flow}
    epoch, folded = costs["finetune_epoch_s"], ms["torch_bn_folded"]
    compile_s = done.get("torchao_pt2e_compiled", {}).get("compile_s")
    ptq_s = done.get("onnxruntime_ptq_per_tensor", {}).get("finalize_s")
    compiled_fp32 = ms.get("torch_compile_bn_folded")
    compiled_speedup = folded / compiled_fp32 if compiled_fp32 else None
    return {
        "bn_folded_speedup_vs_eager": ms["torch_eager"] / folded,
        "onnxruntime_fp32_speedup_vs_bn_folded_torch": folded / ms["onnxruntime_fp32"],
        "compiled_fp32_speedup_vs_bn_folded_torch": compiled_speedup,
        "fastest_int8_flow": min(done, key=lambda k: done[k]["latency_ms"], default=None),
        "speedup_vs_bn_folded_torch": {k: f["speedup_vs_bn_folded_torch"] for k, f in done.items()},
        "speedup_vs_same_runtime_fp32": {
            k: f["speedup_vs_same_runtime_fp32"] for k, f in done.items()
        },
        "accuracy_drop_vs_fp32": {
            k: fp32["torch_eager"]["accuracy"] - f["accuracy"] for k, f in done.items()
        },
        "failed_flows": sorted(set(flows) - set(done)),
        "export_first_over_finetune_epoch": costs["export_first_s"] / epoch,
        "onnxruntime_ptq_finalize_over_finetune_epoch": ptq_s / epoch if ptq_s else None,
        "pt2e_compile_over_finetune_epoch": compile_s / epoch if compile_s else None,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    default_tasks = [
        "digits",
        "shapes",
        "examples/user_task.py:make_task",
        "examples/transformer_task.py:make_task",
    ]
    parser.add_argument("--tasks", nargs="+", default=default_tasks)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--skip-inductor", action="store_true", help="no torch.compile flows")
    args = parser.parse_args()
    torch.set_num_threads(1)
    start = time.perf_counter()
    # What a library prints goes to stderr, so that stdout carries the JSON object only.
    with contextlib.redirect_stdout(sys.stderr), tempfile.TemporaryDirectory() as cache:
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = cache
        if not args.skip_inductor:  # inductor's one-time start-up, charged to no task
            compile_model(nn.Linear(4, 4).eval(), torch.ones(2, 4))
        inductor = not args.skip_inductor
        results = {name: bench_task(name, args.repeats, inductor) for name in args.tasks}
    report = {
        "torch": torch.__version__,
        **{name: importlib.metadata.version(name) for name in ("onnxruntime", "torchao", "onnx")},
        "threads": 1,
        "repeats": args.repeats,
        "cpu": _cpu_model(),
        "wall_s": time.perf_counter() - start,
        "tasks": {name: result for name, (result, _) in results.items()},
        "summary": {name: summary for name, (_, summary) in results.items()},
        "measured_on": measured_on(),
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

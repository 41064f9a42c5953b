"""The one module that knows how an int8 model is made, for the runtime that will run it.

Runtime ``onnxruntime`` (the default and, today, the only one): the float model is exported to
ONNX and quantized by ONNX Runtime's own quantizer into a QDQ model that its CPU kernels run in
int8; the fp32 reference is the same export left in float, run by the same runtime. Measured on
this project's tasks (README, "Choosing the int8 runtime"): real int8 kernels, 2-4x faster than
BatchNorm-folded fp32 in PyTorch, at a per-trial cost of a fraction of a second once a shape has
been exported. torch.ao.quantization, the previous engine, is deprecated in PyTorch; torchao's
pt2e flow only reaches int8 kernels through a ``torch.compile`` that costs more than a trial.

Everything outside this module calls :func:`prepare_qat`, :func:`on_qat_step`, :func:`convert`,
:func:`reference`, :func:`to_portable` and :func:`from_portable`, so that a runtime can be added
without touching the rest.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from importlib.metadata import version as package_version
from types import ModuleType

import torch
from torch import nn

from trials import _fakequant
from trials._recipe import RUNTIMES, Recipe, RecipeError

# The file each runtime's model is saved as, and how to run it without this project.
SUFFIXES = {"onnxruntime": ".onnx"}
STANDALONE_LOAD = {"onnxruntime": "onnxruntime.InferenceSession({path!r})"}
# The channel counts each runtime's CPU convolutions run fast: a sweep's structured pruning keeps
# multiples of this (``trial.round_to``'s default). ONNX Runtime's fp32 depthwise convolutions run
# 2-4x slower at counts off a multiple of 4, its int8 ones 10-25%, Linear layers the same at any
# count (scripts/bench_round_to.py); rounding to 1 made 30% structured pruning 3-4x slower than
# the unpruned fp32 model on two depthwise CNNs.
CHANNEL_MULTIPLE = {"onnxruntime": 4}
# Fractions of the QAT schedule after which activation ranges, then any BatchNorm that could
# not be folded, are frozen: the last steps train against the ranges the model will run with.
OBSERVER_FREEZE_AT = 0.5
BN_FREEZE_AT = 0.75


def _backend(runtime: str) -> ModuleType:
    """The module that implements ``runtime``, imported on first use: ONNX and its tools take
    about a second to import, which commands that only read the store should not pay."""
    _check(runtime)
    return importlib.import_module("trials._onnx")


def runtime_version(runtime: str) -> str:
    """The runtime and its version, as latencies record where they were measured."""
    _check(runtime)
    return f"{runtime} {package_version(runtime)}"


def _check(runtime: str) -> None:
    if runtime not in RUNTIMES:
        raise RecipeError(f"runtime: {runtime!r} is not one of {', '.join(RUNTIMES)}")


def _reduce_range(recipe: Recipe) -> bool:
    # The x86 backend keeps weights to 7 bits, so that the u8 x s8 products of CPUs without
    # VNNI cannot saturate (as PyTorch's fbgemm did); onednn and qnnpack use the full 8 bits,
    # which a worker without VNNI still evaluates exactly (trials._onnx.kernels).
    return recipe.backend == "x86"


def _granularities(recipe: Recipe, layers: Sequence[str]) -> dict[str, str]:
    return {name: recipe.layer(name).granularity or recipe.granularity for name in layers}


def prepare_qat(model: nn.Module, recipe: Recipe, layers: Sequence[str]) -> nn.Module:
    """The model to train with int8 rounding simulated as the runtime will apply it."""
    _check(recipe.runtime)
    grids = {
        name: _fakequant.weight_grid(granularity == "per_channel", _reduce_range(recipe))
        for name, granularity in _granularities(recipe, layers).items()
        if granularity != "none"
    }
    return _fakequant.prepare(model, grids)


def on_qat_step(prepared: nn.Module, step: int, total_steps: int) -> None:
    """Freeze activation ranges, then unfolded BatchNorm statistics, at fixed points."""
    if step == int(OBSERVER_FREEZE_AT * total_steps):
        _fakequant.freeze_observers(prepared)
    if step == int(BN_FREEZE_AT * total_steps):
        _fakequant.freeze_batchnorm(prepared)


def convert(
    model: nn.Module,
    recipe: Recipe,
    layers: Sequence[str],
    example: torch.Tensor,
    calibration: Sequence[torch.Tensor] | None,
) -> nn.Module:
    """The int8 model of a trained float ``model`` (or of a :func:`prepare_qat` model), run by
    the recipe's runtime on the CPU. Static orders observe ``calibration`` batches; a QAT model
    brings the input ranges it trained with; ``prune_dynamic`` needs no calibration, and
    ``prune_float`` leaves the model in float (the runtime's fp32 model of it)."""
    onnx = _backend(recipe.runtime)
    ranges: dict[str, tuple[float, float]] = {}
    if _fakequant.is_prepared(model):
        model, ranges = _fakequant.strip(model)
    granularities = _granularities(recipe, layers)
    settings = onnx.QuantSettings(
        per_channel=frozenset(n for n, g in granularities.items() if g == "per_channel"),
        excluded=frozenset(n for n, g in granularities.items() if g == "none"),
        ranges=ranges,
        reduce_range=_reduce_range(recipe),
    )
    graph = onnx.float_graph(model, example)
    if recipe.order == "prune_float":
        return onnx.OnnxModel(graph.SerializeToString())
    if recipe.order == "prune_dynamic":
        return onnx.OnnxModel(onnx.quantize(graph, layers, settings, None))
    if not calibration:
        raise RecipeError(f"calibration_data: {recipe.order} needs at least one calibration batch")
    return onnx.OnnxModel(onnx.quantize(graph, layers, settings, calibration))


def reference(model: nn.Module, example: torch.Tensor, runtime: str) -> nn.Module:
    """The fp32 ``model`` run by ``runtime`` (BatchNorm folded, the runtime's graph
    optimizations on): what int8 latency and size are compared with."""
    onnx = _backend(runtime)
    return onnx.OnnxModel(onnx.float_graph(model, example).SerializeToString())


def from_portable(data: bytes, runtime: str) -> nn.Module:
    """A model from the bytes :func:`to_portable` gave, ready to run (on another machine: the
    bytes are the model file, and loading it runs no pickled code)."""
    return _backend(runtime).OnnxModel(data)


def to_portable(model: nn.Module) -> bytes:
    """The file a runtime model deploys as (an ``.onnx`` for onnxruntime): what travels to a
    latency target and what ``sweep apply`` writes."""
    data = getattr(model, "data", None)
    if not isinstance(data, bytes):
        raise RecipeError(
            f"model: expected an int8 model made by trials.finalize, got {type(model).__name__}"
        )
    return data


def has_dynamic_layers(model: nn.Module) -> bool:
    """Whether ``prune_dynamic`` has anything to quantize: a Linear or LSTM layer."""
    return any(isinstance(m, nn.Linear | nn.LSTM) for m in model.modules())


def with_metadata(data: bytes, props: dict[str, str]) -> bytes:
    """The ONNX model file ``data`` with ``props`` (strings) in its metadata, which runtimes
    ignore."""
    return bytes(_backend("onnxruntime").with_metadata(data, props))


def read_metadata(data: bytes) -> dict[str, str]:
    """What :func:`with_metadata` put in an ONNX model file."""
    return dict(_backend("onnxruntime").metadata(data))

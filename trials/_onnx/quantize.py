"""int8 quantization of an fp32 ONNX graph by ONNX Runtime's quantizer: static QDQ with
calibration (``prune_ptq``, ``prune_qat``) or dynamic (``prune_dynamic``), per layer."""

from __future__ import annotations

import ast
import copy
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch
from onnxruntime.quantization import (
    CalibrationDataReader,
    QuantFormat,
    QuantType,
    quantize_dynamic,
    quantize_static,
)

from trials._onnx.model import batch_slices, fixed_batch, input_name, padded
from trials._recipe import RecipeError

# ONNX Runtime's quantizer logs advice to run its pre-processing (shape inference and graph
# optimization) unless the model carries this metadata. The onnxscript optimizer has done both.
_PRE_PROCESSED = ("onnx.quant.pre_process", "onnxruntime.quant")
# The layer types whose weights each quantization mode makes int8. Dynamic quantization of
# convolutions (ConvInteger) is slower than float on CPU, so dynamic mode leaves them alone.
STATIC_OPS = ("Conv", "Gemm", "MatMul")
DYNAMIC_OPS = ("MatMul", "LSTM")


@dataclass(frozen=True)
class LayerNode:
    """A quantizable node of the graph and the model layer (module name) it computes."""

    node: str
    op: str
    layer: str
    weight: str  # the weight initializer's name ("" when it is not an initializer)
    activation: str  # the node's activation input


def layer_nodes(graph: onnx.ModelProto, layers: Sequence[str]) -> list[LayerNode]:
    """The graph's Conv/Gemm/MatMul/LSTM nodes that belong to one of ``layers``.

    A node belongs to the layer whose weight it reads (initializers keep the ``state_dict``
    name, ``<layer>.weight``, also once BatchNorm is folded in), else to the innermost layer in
    the module scope the exporter records on it (a Linear applied to a 3-D input reads a
    transposed copy of its weight). Scopes alone would not do: a folded convolution carries
    its BatchNorm's scope.
    """
    known = set(layers)
    initializers = {init.name for init in graph.graph.initializer}
    found: list[LayerNode] = []
    for node in graph.graph.node:
        if node.op_type not in (*STATIC_OPS, *DYNAMIC_OPS):
            continue
        weight = node.input[1] if len(node.input) > 1 and node.input[1] in initializers else ""
        owner = weight.removesuffix(".weight")
        layer = owner if weight.endswith(".weight") and owner in known else None
        layer = layer or _scope_layer(node, known)
        if layer is not None:
            found.append(LayerNode(node.name, node.op_type, layer, weight, node.input[0]))
    return found


def _scope_layer(node: onnx.NodeProto, known: set[str]) -> str | None:
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            try:
                scopes = ast.literal_eval(prop.value)
            except (ValueError, SyntaxError):
                return None
            return next((scope for scope in reversed(scopes) if scope in known), None)
    return None


def _weight_axis(graph: onnx.ModelProto, node: LayerNode) -> int:
    """The output-channel axis of a node's weight, as ONNX Runtime's per-channel scales take it."""
    if node.op == "Gemm":
        onnx_node = next(n for n in graph.graph.node if n.name == node.node)
        trans_b = next((a.i for a in onnx_node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op == "MatMul":
        return 1  # MatMul(x, W) with W of shape (in, out)
    return 0  # Conv: (out, in, ...)


@dataclass(frozen=True)
class QuantSettings:
    """How a graph is quantized: per-channel layers, float layers, activation ranges (from QAT),
    and 7-bit weights (``reduce_range``, for x86 CPUs without VNNI)."""

    per_channel: frozenset[str]
    excluded: frozenset[str]
    ranges: Mapping[str, tuple[float, float]]  # layer -> (min, max) of its input activation
    reduce_range: bool


class _Batches(CalibrationDataReader):
    """The calibration batches, cut to the graph's batch size where it is fixed."""

    def __init__(self, name: str, batches: Sequence[torch.Tensor], batch: int | None) -> None:
        arrays = [b.detach().cpu().numpy() for b in batches]
        if batch is not None:
            arrays = [padded(part, batch) for a in arrays for part in batch_slices(a, batch)]
        self._items = iter([{name: a} for a in arrays])

    def get_next(self) -> dict[str, np.ndarray] | None:
        return next(self._items, None)


def _marked(graph: onnx.ModelProto) -> onnx.ModelProto:
    marked = copy.deepcopy(graph)
    if not any(p.key == _PRE_PROCESSED[0] for p in marked.metadata_props):
        marked.metadata_props.add(key=_PRE_PROCESSED[0], value=_PRE_PROCESSED[1])
    return marked


def quantize(
    graph: onnx.ModelProto,
    layers: Sequence[str],
    settings: QuantSettings,
    calibration: Sequence[torch.Tensor] | None,
) -> bytes:
    """The int8 QDQ model of an fp32 ``graph``: static with ``calibration`` batches, dynamic
    (weights only; activations at run time) without."""
    nodes = layer_nodes(graph, layers)
    excluded = [n.node for n in nodes if n.layer in settings.excluded]
    overrides: dict[str, list[dict[str, Any]]] = {}
    for node in nodes:
        if node.layer in settings.excluded:
            continue
        if node.layer in settings.per_channel and node.weight:
            overrides[node.weight] = [{"axis": _weight_axis(graph, node)}]
        low_high = settings.ranges.get(node.layer)
        if low_high is not None:
            overrides[node.activation] = [
                {"rmin": np.float32(low_high[0]), "rmax": np.float32(low_high[1])}
            ]
    options = {"WeightSymmetric": True, "ActivationSymmetric": False}
    if overrides:
        options["TensorQuantOverrides"] = overrides  # type: ignore[assignment]
    with tempfile.TemporaryDirectory(prefix="sweep-onnx-") as folder:
        output = Path(folder) / "int8.onnx"
        if calibration is None:
            # The dynamic quantizer turns each Gemm into MatMul + Add, the MatMul named after
            # the Gemm with a "_MatMul" suffix: exclusions name both.
            quantize_dynamic(
                _marked(graph),
                output,
                op_types_to_quantize=list(DYNAMIC_OPS),
                per_channel=_dynamic_per_channel(nodes, settings),
                reduce_range=settings.reduce_range,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=[f"{name}_MatMul" for name in excluded] + excluded,
                extra_options={"WeightSymmetric": True},
            )
        else:
            quantize_static(
                _marked(graph),
                output,
                _Batches(input_name(graph), calibration, fixed_batch(graph)),
                quant_format=QuantFormat.QDQ,
                per_channel=False,  # per layer, through the overrides
                reduce_range=settings.reduce_range,
                activation_type=QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=excluded,
                extra_options=options,
            )
        return output.read_bytes()


def _dynamic_per_channel(nodes: Sequence[LayerNode], settings: QuantSettings) -> bool:
    """Whether dynamic quantization uses per-channel scales: ONNX Runtime takes one choice for
    every layer it quantizes, so the layers must agree."""
    dynamic = (*DYNAMIC_OPS, "Gemm")
    quantized = sorted({n.layer for n in nodes if n.op in dynamic} - settings.excluded)
    per_channel = [layer for layer in quantized if layer in settings.per_channel]
    if per_channel and len(per_channel) < len(quantized):
        other = next(layer for layer in quantized if layer not in settings.per_channel)
        raise RecipeError(
            f"layers.{other}.granularity: prune_dynamic gives every Linear layer one granularity "
            f"in onnxruntime, and {per_channel[0]} is per_channel; make them all per_channel or "
            "all per_tensor (or none)"
        )
    return bool(per_channel)

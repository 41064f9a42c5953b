"""Reading an int8 model's ONNX graph in tests: which layers hold int8 weights, and their scales."""

from __future__ import annotations

import ast
from dataclasses import dataclass

import numpy as np
import onnx
from onnx import numpy_helper
from torch import nn

from trials import to_portable

LAYER_OPS = ("Conv", "Gemm", "MatMul")
# Dynamic quantization writes integer ops that take the int8 weight itself.
INTEGER_OPS = ("MatMulInteger", "ConvInteger")


@dataclass(frozen=True)
class Int8Weight:
    values: np.ndarray  # int8
    scale: np.ndarray
    zero_point: np.ndarray

    def dequantized(self) -> np.ndarray:
        shape = [1] * self.values.ndim
        if self.scale.size > 1:
            axis = next(i for i, n in enumerate(self.values.shape) if n == self.scale.size)
            shape[axis] = self.scale.size
        return (self.values.astype(np.float32) - self.zero_point.reshape(shape)) * (
            self.scale.reshape(shape)
        )


def graph(model: nn.Module) -> onnx.ModelProto:
    return onnx.load_model_from_string(to_portable(model))


def _layer(node: onnx.NodeProto, weight: str) -> str | None:
    """The layer a node computes: named by its weight (``<layer>.weight``, quantized as
    ``<layer>.weight_quantized``), else by the module scope the exporter recorded."""
    name = weight.removesuffix("_quantized").removesuffix("_Transposed")
    if name.endswith(".weight"):
        return name.removesuffix(".weight")
    for prop in node.metadata_props:
        if prop.key == "pkg.torch.onnx.name_scopes":
            scopes = ast.literal_eval(prop.value)
            return str(scopes[-2]) if len(scopes) >= 2 else None
    return None


def int8_weights(model: nn.Module) -> dict[str, Int8Weight]:
    """Layer name -> its int8 weight, for every Conv/Gemm/MatMul whose weight is int8."""
    proto = graph(model)
    initializers = {i.name: numpy_helper.to_array(i) for i in proto.graph.initializer}
    producers = {out: node for node in proto.graph.node for out in node.output}
    found: dict[str, Int8Weight] = {}
    for node in proto.graph.node:
        if node.op_type in INTEGER_OPS:
            weight = node.input[1]
            layer = _layer(node, weight)
            if layer is not None:
                scale = initializers[weight.removesuffix("_quantized") + "_scale"]
                found[layer] = Int8Weight(initializers[weight], scale, initializers[node.input[3]])
            continue
        if node.op_type not in LAYER_OPS or len(node.input) < 2:
            continue
        source = producers.get(node.input[1])
        if source is None or source.op_type != "DequantizeLinear":
            continue
        values = initializers.get(source.input[0])
        if values is None or values.dtype != np.int8:
            continue
        layer = _layer(node, source.input[0])
        if layer is not None:
            found[layer] = Int8Weight(
                values, initializers[source.input[1]], initializers[source.input[2]]
            )
    return found


def weights(model: nn.Module) -> dict[str, np.ndarray]:
    """Layer name -> its weight as stored, int8 or float."""
    proto = graph(model)
    stored = {layer: w.values for layer, w in int8_weights(model).items()}
    initializers = {i.name: i for i in proto.graph.initializer}
    for node in proto.graph.node:
        if node.op_type in LAYER_OPS and len(node.input) > 1 and node.input[1] in initializers:
            layer = _layer(node, node.input[1])
            if layer is not None and layer not in stored:
                stored[layer] = numpy_helper.to_array(initializers[node.input[1]])
    return stored


def float_layers(model: nn.Module) -> set[str]:
    """Layers whose Conv/Gemm/MatMul node takes a float initializer as its weight."""
    proto = graph(model)
    floats = {
        i.name
        for i in proto.graph.initializer
        if i.data_type == onnx.TensorProto.FLOAT and len(i.dims) >= 2
    }
    return {
        layer
        for node in proto.graph.node
        if node.op_type in LAYER_OPS and len(node.input) > 1 and node.input[1] in floats
        for layer in [_layer(node, node.input[1])]
        if layer is not None
    }


def op_types(model: nn.Module) -> set[str]:
    return {node.op_type for node in graph(model).graph.node}

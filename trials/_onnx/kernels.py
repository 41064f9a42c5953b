"""Whether this CPU runs a model's int8 arithmetic exactly, and an exact twin where it does not.

ONNX Runtime multiplies uint8 activations by int8 weights (U8S8). On x86 CPUs without VNNI
(AVX2 and AVX-512 CPUs before Intel's Cascade Lake, AMD's before Zen 4) its kernels use
VPMADDUBSW, which adds two adjacent u8 x s8 products in a signed 16-bit lane: 255 x 127 x 2 =
64,770 saturates at 32,767. ONNX Runtime documents the cures: weights kept to 7 bits (the ``x86``
backend's ``reduce_range``) or uint8 weights (U8U8), whose kernels widen to 16 bits first. Seen
on such a CPU: 28 accuracy points lost on ``shapes``, outputs off by 0.7 on a small MLP.

A model made for a VNNI CPU (``onednn``, full 8-bit weights) is a correct model: only this CPU
computes it wrongly. So a worker without VNNI evaluates its twin, the same integers with the
weights shifted into uint8 (w + 128, zero point + 128), which gives the target's outputs, while
the model file, its size and its timing stay the file's own.
"""

from __future__ import annotations

import functools
from collections.abc import Iterator

import numpy as np
import onnx
import onnxruntime as ort
from onnx import helper, numpy_helper

# Per op type, the (weight, weight zero point) input positions of its int8 weights.
_WEIGHT_INPUTS: dict[str, tuple[tuple[int, int], ...]] = {
    "DequantizeLinear": ((0, 2),),
    "MatMulInteger": ((1, 3),),
    "ConvInteger": ((1, 3),),
    "DynamicQuantizeLSTM": ((1, 9), (2, 11)),  # W, R (com.microsoft)
}
# The largest int8 weight magnitude whose pair of products with a uint8 activation fits in int16:
# 2 x 255 x 64 = 32,640 <= 32,767. 7-bit (reduce_range) weights stay within it.
_EXACT_MAGNITUDE = 64
_SHIFT = 128


@functools.cache
def int8_saturates() -> bool:
    """Whether this CPU's U8S8 kernels saturate: measured once per process by ONNX Runtime on
    a matrix product whose 16-bit pair sums overflow (255 x 127 in every place)."""
    depth, width = 64, 16
    graph = helper.make_graph(
        [helper.make_node("MatMulInteger", ["a", "b"], ["y"])],
        "int8_saturation_probe",
        [helper.make_tensor_value_info("a", onnx.TensorProto.UINT8, [4, depth])],
        [helper.make_tensor_value_info("y", onnx.TensorProto.INT32, [4, width])],
        [numpy_helper.from_array(np.full((depth, width), 127, np.int8), "b")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    [product] = session.run(None, {"a": np.full((4, depth), 255, np.uint8)})
    return bool((product != 255 * 127 * depth).any())


def exact_twin(data: bytes) -> bytes | None:
    """What evaluates the model file ``data`` exactly on this CPU: its :func:`unsigned_twin`
    where this CPU's int8 kernels saturate, None where they compute the file itself exactly (the
    file is parsed only on such CPUs)."""
    if not int8_saturates():
        return None
    twin = unsigned_twin(onnx.load_model_from_string(data))
    return None if twin is None else twin.SerializeToString()


def unsigned_twin(graph: onnx.ModelProto) -> onnx.ModelProto | None:
    """``graph`` with its int8 weights and their zero points shifted into uint8, which no CPU
    saturates on; None where no weight goes beyond 7 bits (none can saturate)."""
    initializers = {tensor.name: tensor for tensor in graph.graph.initializer}
    pairs = [
        (index, weight_at, zero_at)
        for index, node in enumerate(graph.graph.node)
        for weight_at, zero_at in _WEIGHT_INPUTS.get(node.op_type, ())
        if weight_at < len(node.input) and _is_int8(initializers.get(node.input[weight_at]))
    ]
    risky = any(
        np.abs(_array(initializers[graph.graph.node[index].input[at]]).astype(np.int16)).max()
        > _EXACT_MAGNITUDE
        for index, at, _ in pairs
    )
    if not risky:
        return None
    twin = onnx.ModelProto()
    twin.CopyFrom(graph)
    shifted: dict[tuple[str, str], tuple[str, str]] = {}
    for index, weight_at, zero_at in pairs:
        node = twin.graph.node[index]
        weight = node.input[weight_at]
        zero = node.input[zero_at] if zero_at < len(node.input) else ""
        if (weight, zero) not in shifted:
            names = (f"{weight}_as_uint8_{len(shifted)}", f"{weight}_zero_as_uint8_{len(shifted)}")
            arrays = (_array(initializers[weight]), _zero_points(node, zero, initializers))
            for name, array in zip(names, arrays, strict=True):
                unsigned = (array.astype(np.int16) + _SHIFT).astype(np.uint8)
                twin.graph.initializer.append(numpy_helper.from_array(unsigned, name))
            shifted[weight, zero] = names
        while len(node.input) <= zero_at:
            node.input.append("")  # optional inputs before the zero point stay absent
        node.input[weight_at], node.input[zero_at] = shifted[weight, zero]
    _drop_unread(twin, {weight for weight, _ in shifted} | {zero for _, zero in shifted})
    return twin


def _is_int8(tensor: onnx.TensorProto | None) -> bool:
    return tensor is not None and tensor.data_type == onnx.TensorProto.INT8


def _array(tensor: onnx.TensorProto) -> np.ndarray:
    return np.asarray(numpy_helper.to_array(tensor))


def _zero_points(
    node: onnx.NodeProto, zero: str, initializers: dict[str, onnx.TensorProto]
) -> np.ndarray:
    """The weight's int8 zero points; where it has none, zeros shaped like its scale (one per
    channel, or one) for a DequantizeLinear, a scalar zero elsewhere."""
    if zero:
        return _array(initializers[zero])
    scale = initializers.get(node.input[1]) if node.op_type == "DequantizeLinear" else None
    return np.zeros(_array(scale).shape if scale is not None else (), np.int8)


def _drop_unread(twin: onnx.ModelProto, replaced: set[str]) -> None:
    """Remove the replaced int8 initializers that nothing reads any more (ONNX Runtime warns of
    unused initializers)."""
    read = {name for node in _all_nodes(twin.graph) for name in node.input}
    read |= {output.name for output in twin.graph.output}
    kept = [t for t in twin.graph.initializer if t.name not in replaced or t.name in read]
    del twin.graph.initializer[:]
    twin.graph.initializer.extend(kept)


def _all_nodes(graph: onnx.GraphProto) -> Iterator[onnx.NodeProto]:
    for node in graph.node:
        yield node
        for attribute in node.attribute:
            for subgraph in (
                *([attribute.g] if attribute.HasField("g") else []),
                *attribute.graphs,
            ):
                yield from _all_nodes(subgraph)

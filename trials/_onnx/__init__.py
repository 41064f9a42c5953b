"""Models as ONNX graphs: export from PyTorch, int8 quantization and sessions in ONNX Runtime.

The ``onnxruntime`` runtime of :mod:`trials._runtime`. A trial's float model is exported with
``torch.onnx.export(dynamo=True)``; exporting costs one to a few seconds, so the unoptimized
graph is kept per architecture (parameter names and shapes) in this process and a later trial
with the same shapes only swaps its weights in (unstructured pruning and fine-tuning change
values, not shapes). The onnxscript optimizer then folds BatchNorm into the convolutions and
constant-folds, and ONNX Runtime's own quantizer writes a QDQ int8 model: static (calibrated
activations, for ``prune_ptq`` and ``prune_qat``) or dynamic (int8 weights, activations quantized
at run time, for ``prune_dynamic``). On a CPU whose int8 kernels saturate (x86 without VNNI), a
model evaluates through an exact twin of its file (:mod:`trials._onnx.kernels`).
"""

from trials._onnx.export import ExportError, float_graph
from trials._onnx.model import OnnxModel, metadata, with_metadata
from trials._onnx.quantize import QuantSettings, layer_nodes, quantize

__all__ = [
    "ExportError",
    "OnnxModel",
    "QuantSettings",
    "float_graph",
    "layer_nodes",
    "metadata",
    "quantize",
    "with_metadata",
]

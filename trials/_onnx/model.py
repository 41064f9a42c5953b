"""An ONNX model run by ONNX Runtime, called like a PyTorch module; its file's metadata."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from torch import nn

from trials._onnx import kernels


def input_name(graph: onnx.ModelProto) -> str:
    initializers = {init.name for init in graph.graph.initializer}
    return next(i.name for i in graph.graph.input if i.name not in initializers)


def fixed_batch(graph: onnx.ModelProto) -> int | None:
    """The batch size the graph was exported for, or None when its batch is dynamic."""
    dims = graph.graph.input[0].type.tensor_type.shape.dim
    if dims and dims[0].HasField("dim_value"):
        return int(dims[0].dim_value)
    return None


def batch_slices(array: np.ndarray, batch: int) -> list[np.ndarray]:
    """``array`` cut along its first dimension into slices of ``batch`` rows (the last shorter)."""
    return [array[start : start + batch] for start in range(0, len(array), batch)]


def padded(array: np.ndarray, rows: int) -> np.ndarray:
    """``array`` with copies of its last row appended up to ``rows`` rows (a graph exported for a
    fixed batch size runs any batch this way; copies change no observed minimum or maximum)."""
    if len(array) >= rows:
        return array
    return np.concatenate([array, np.repeat(array[-1:], rows - len(array), axis=0)])


class OnnxModel(nn.Module):
    """An ONNX model run by ONNX Runtime's CPU kernels, called like a PyTorch module: takes a
    tensor, returns a CPU tensor. Sessions run with ``torch.get_num_threads()`` threads at call
    time (one session per thread count), so timing code pins threads the same way for both.

    A graph exported for a fixed batch size runs any batch, in slices of that size (the last one
    padded). Pickles as its bytes.

    Its outputs are the model's exact int8 arithmetic on any CPU: where this CPU's int8 kernels
    would saturate on the file's weights, it runs the file's exact twin
    (:func:`~trials._onnx.kernels.exact_twin`). :meth:`as_filed` runs the file itself, as
    latency timing does.
    """

    def __init__(self, data: bytes, *, exact: bool = True) -> None:
        super().__init__()
        self.data = data
        self.exact = exact
        graph = onnx.load_model_from_string(data)
        self.input = input_name(graph)
        self.batch = fixed_batch(graph)
        self._run: bytes | None = None if exact else data
        self._filed: OnnxModel | None = None
        self._sessions: dict[int, ort.InferenceSession] = {}

    def as_filed(self) -> OnnxModel:
        """The model file as this CPU runs it, saturating kernels and all: what is timed. This
        model itself where it runs its file (most CPUs), so that its sessions are reused."""
        if self._run_data() is self.data:
            return self
        if self._filed is None:
            self._filed = OnnxModel(self.data, exact=False)
        return self._filed

    def _run_data(self) -> bytes:
        """The graph that runs: the file, or its exact twin (made on first use)."""
        if self._run is None:
            self._run = kernels.exact_twin(self.data) or self.data
        return self._run

    def session(self, threads: int) -> ort.InferenceSession:
        if threads not in self._sessions:
            options = ort.SessionOptions()
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
            options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
            self._sessions[threads] = ort.InferenceSession(
                self._run_data(), options, providers=["CPUExecutionProvider"]
            )
        return self._sessions[threads]

    def outputs(self, inputs: torch.Tensor) -> list[np.ndarray]:
        """Every output of the graph for ``inputs``, as arrays."""
        session = self.session(torch.get_num_threads())
        array = inputs.detach().cpu().numpy()
        if self.batch is None or len(array) == self.batch:
            return list(session.run(None, {self.input: array}))
        parts: list[list[np.ndarray]] = []
        for part in batch_slices(array, self.batch):
            rows = len(part)
            outputs = session.run(None, {self.input: padded(part, self.batch)})
            parts.append([out[:rows] for out in outputs])
        return [np.concatenate(outs) for outs in zip(*parts, strict=True)]

    def forward(self, inputs: torch.Tensor) -> torch.Tensor | tuple[torch.Tensor, ...]:
        """The model's output: a tensor, or a tuple of tensors for a model with several."""
        tensors = tuple(torch.from_numpy(out) for out in self.outputs(inputs))
        return tensors[0] if len(tensors) == 1 else tensors

    def __getstate__(self) -> dict[str, Any]:
        return {"data": self.data, "exact": self.exact}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["data"], exact=state.get("exact", True))  # type: ignore[misc]


def with_metadata(data: bytes, metadata: Mapping[str, str]) -> bytes:
    """The model ``data`` with ``metadata`` in its ``metadata_props`` (replacing equal keys)."""
    graph = onnx.load_model_from_string(data)
    kept = [p for p in graph.metadata_props if p.key not in metadata]
    del graph.metadata_props[:]
    graph.metadata_props.extend(kept)
    for key, value in metadata.items():
        graph.metadata_props.add(key=key, value=value)
    return graph.SerializeToString()


def metadata(data: bytes) -> dict[str, str]:
    graph = onnx.load_model_from_string(data)
    return {p.key: p.value for p in graph.metadata_props}

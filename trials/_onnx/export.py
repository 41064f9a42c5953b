"""The export: a PyTorch model as an optimized fp32 ONNX graph, cached per architecture.

``torch.onnx.export(dynamo=True)`` costs one to a few seconds, so the unoptimized graph is kept
per architecture in this process, and a later model with the same shapes (unstructured pruning
and fine-tuning change values, not shapes) gets a copy with its weights swapped in, checked
against the model's own outputs. The onnxscript optimizer then folds BatchNorm into the
convolutions and folds constants.
"""

from __future__ import annotations

import collections
import contextlib
import copy
import io
import logging
import math
import re
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
import onnxscript.optimizer
import torch
from onnx import numpy_helper
from torch import nn

from trials._onnx.model import OnnxModel
from trials._train import TrialError

# Per process: unoptimized exports by architecture. A sweep meets a few (the baseline, its
# BatchNorm-folded QAT form, and structurally pruned shapes, each new).
_EXPORT_CACHE_SIZE = 8
_EXPORTS: collections.OrderedDict[tuple[Any, ...], onnx.ModelProto] = collections.OrderedDict()
_MAX_BATCH = 1 << 16
# Constant folding up to this many elements: weights the exporter reorders at run time (an
# LSTM's gates, a transposed Linear weight) become plain initializers, which is what the
# quantizers can make int8 and what a deployed file should hold.
_FOLD_LIMIT = 1 << 26


class ExportError(TrialError):
    """A model that ``torch.onnx.export`` cannot turn into a graph (or not into one that computes
    what the model does); the message says why."""


def _signature(model: nn.Module, example: torch.Tensor) -> tuple[Any, ...]:
    """What decides the exported graph, as far as can be seen without exporting: the class, the
    module tree with its settings (``repr``), the traced code of an FX module, the parameter
    and buffer shapes, the input's shape and type. :func:`float_graph` checks the rest."""
    kind = type(model)
    state = tuple((k, tuple(v.shape), str(v.dtype)) for k, v in model.state_dict().items())
    code = model.code if isinstance(model, torch.fx.GraphModule) else ""
    return (
        f"{kind.__module__}.{kind.__qualname__}",
        repr(model),
        code,
        state,
        tuple(example.shape[1:]),
        str(example.dtype),
    )


@contextlib.contextmanager
def _exporter_quiet() -> Iterator[None]:
    """The exporter prints progress lines ("[torch.onnx] Obtain model graph ...") to stdout and
    logs that optional torchvision operators are skipped. Neither is a warning about this
    project's use of torch: both are routed away so that a CLI's output stays its own."""
    registration = logging.getLogger("torch.onnx._internal.exporter._registration")
    level = registration.level
    registration.setLevel(logging.ERROR)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            yield
    finally:
        registration.setLevel(level)


def _export(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """The unoptimized graph of ``model`` (initializers named as in its ``state_dict``), with a
    dynamic batch dimension where the model allows one."""
    # A batch of one would make torch.export specialize the dimension to 1.
    sample = example if example.shape[0] > 1 else torch.cat([example, example])
    batch = torch.export.Dim("batch", min=1, max=_MAX_BATCH)
    errors: list[str] = []
    with _exporter_quiet(), torch.no_grad():
        for dynamic in (({0: batch},), None):
            try:
                program = torch.onnx.export(
                    model,
                    (sample if dynamic else example,),
                    dynamo=True,
                    dynamic_shapes=dynamic,
                    optimize=False,
                    verbose=False,
                )
            except Exception as exc:  # noqa: BLE001 - export raises many types; all are reported
                errors.append(_first_line(exc))
                continue
            if program is None:
                errors.append("torch.onnx.export returned no program")
                continue
            return program.model_proto
    raise ExportError(
        f"the model could not be exported to ONNX ({errors[-1]}); its forward must be "
        "traceable by torch.export (no data-dependent Python control flow)"
    )


# Terminal colours in an exception's text (torch.export highlights its step names).
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def _first_line(exc: BaseException) -> str:
    """The innermost cause's first line: the exporter wraps what went wrong in its own error."""
    while exc.__cause__ is not None:
        exc = exc.__cause__
    lines = [line for line in _ANSI.sub("", str(exc)).strip().splitlines() if line.strip()]
    return f"{type(exc).__name__}: {lines[0][:300]}" if lines else type(exc).__name__


def float_graph(model: nn.Module, example: torch.Tensor) -> onnx.ModelProto:
    """``model`` (CPU, eval) as an optimized fp32 ONNX graph: BatchNorm folded, constants folded.

    The export of an architecture is cached; a model with the same parameter names and shapes
    gets a copy of it with its own weights in place.
    """
    model = model.cpu().eval()
    example = example.cpu()
    key = _signature(model, example)
    cached = _EXPORTS.get(key)
    if cached is not None:
        _EXPORTS.move_to_end(key)
        graph = _with_weights(cached, model)
        if _reproduces(graph, model, example) is None:
            return graph
        del _EXPORTS[key]  # something the key cannot see differs: export afresh
    base = _export(model, example)
    graph = _with_weights(base, model)
    difference = _reproduces(graph, model, example)
    if difference is not None:
        raise ExportError(
            f"the ONNX export does not compute what the model does (outputs differ by up to "
            f"{difference:.3g} on the example input)"
        )
    _EXPORTS[key] = base
    while len(_EXPORTS) > _EXPORT_CACHE_SIZE:
        _EXPORTS.popitem(last=False)
    return graph


def _with_weights(base: onnx.ModelProto, model: nn.Module) -> onnx.ModelProto:
    """An optimized copy of the unoptimized export ``base`` holding ``model``'s weights."""
    graph = copy.deepcopy(base)
    state = model.state_dict()
    for init in graph.graph.initializer:
        tensor = state.get(init.name)
        if tensor is not None:
            array = tensor.detach().cpu().numpy()
            init.CopyFrom(numpy_helper.from_array(array, init.name))
    optimized: onnx.ModelProto = onnxscript.optimizer.optimize(
        graph, input_size_limit=_FOLD_LIMIT, output_size_limit=_FOLD_LIMIT
    )
    return optimized


# Float32 differences between PyTorch and ONNX Runtime (folded BatchNorm, fused kernels) stay
# far below this, relative to the output's magnitude; a wrong graph does not.
_TOLERANCE = 1e-3


def _reproduces(graph: onnx.ModelProto, model: nn.Module, example: torch.Tensor) -> float | None:
    """None when ``graph`` computes ``model``'s outputs on ``example``; else the largest
    difference."""
    with torch.no_grad():
        expected = model(example)
    wanted = [t.detach().numpy() for t in _tensors(expected)]
    got = OnnxModel(graph.SerializeToString()).outputs(example)
    if len(got) != len(wanted) or any(g.shape != w.shape for g, w in zip(got, wanted, strict=True)):
        return math.inf
    worst = 0.0
    for g, w in zip(got, wanted, strict=True):
        scale = float(np.abs(w).max()) if w.size else 0.0
        difference = float(np.abs(g.astype(np.float64) - w).max()) if w.size else 0.0
        if not difference <= _TOLERANCE * max(scale, 1.0):
            worst = max(worst, difference if math.isfinite(difference) else math.inf)
    return worst or None


def _tensors(output: Any) -> list[torch.Tensor]:
    if isinstance(output, torch.Tensor):
        return [output]
    if isinstance(output, list | tuple):
        return [t for item in output for t in _tensors(item)]
    if isinstance(output, dict):
        return [t for item in output.values() for t in _tensors(item)]
    return []

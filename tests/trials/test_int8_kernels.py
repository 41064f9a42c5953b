"""int8 models evaluate exactly on every CPU: where ONNX Runtime's u8 x s8 kernels saturate (x86
without VNNI), a model runs its uint8-weight twin for its outputs and its own file for timing.

The last test runs the check on an emulated CPU without VNNI (``qemu-x86_64 -cpu Haswell``)
where qemu-user is installed."""

from __future__ import annotations

import json
import os
import pickle
import platform
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from torch import nn

from trials import Recipe, apply_recipe, finalize
from trials._measure import as_timed
from trials._onnx import OnnxModel
from trials._onnx.kernels import int8_saturates, unsigned_twin

ROOT = Path(__file__).resolve().parents[2]
VNNI_FLAGS = {"avx512_vnni", "avx_vnni", "amx_int8"}


class _ConvNet(nn.Module):
    """Dense and depthwise convolutions and a Linear layer, with inputs up to 4: activations
    reach the top of their uint8 range and weights that of int8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 16, 3)
        self.depthwise = nn.Conv2d(16, 16, 3, groups=16)
        self.fc = nn.Linear(16 * 4 * 4, 5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.relu(self.depthwise(torch.relu(self.conv(x))))
        return self.fc(x.flatten(1))


def _int8(order: str, granularity: str, backend: str = "onednn") -> tuple[OnnxModel, torch.Tensor]:
    torch.manual_seed(0)
    model = _ConvNet().eval()
    inputs = torch.rand(16, 3, 8, 8) * 4
    recipe = Recipe(order=order, granularity=granularity, backend=backend, finetune_epochs=0)
    prepared = apply_recipe(model, recipe, inputs)
    calibration = None if order == "prune_dynamic" else [(inputs, torch.zeros(16))]
    int8 = finalize(prepared, recipe, calibration, example_input=inputs)
    if not isinstance(int8, OnnxModel):
        raise TypeError(f"expected an ONNX Runtime model, got {type(int8).__name__}")
    return int8, inputs


def _run(data: bytes, inputs: np.ndarray) -> np.ndarray:
    session = ort.InferenceSession(data, providers=["CPUExecutionProvider"])
    return np.asarray(session.run(None, {session.get_inputs()[0].name: inputs})[0])


def _weights_read_as_int8(graph: onnx.ModelProto) -> list[str]:
    int8 = {t.name for t in graph.graph.initializer if t.data_type == onnx.TensorProto.INT8}
    return [name for node in graph.graph.node for name in node.input if name in int8]


def test_the_probe_agrees_with_the_cpu_flags() -> None:
    cpuinfo = Path("/proc/cpuinfo")
    if platform.machine() != "x86_64" or not cpuinfo.exists():
        pytest.skip("reads x86 CPU flags from /proc/cpuinfo")
    flags = set(
        next(line for line in cpuinfo.read_text().splitlines() if line.startswith("flags")).split()
    )
    assert int8_saturates() == ("avx2" in flags and not flags & VNNI_FLAGS)


@pytest.mark.parametrize(
    ("order", "granularity"),
    [("prune_ptq", "per_tensor"), ("prune_ptq", "per_channel"), ("prune_dynamic", "per_channel")],
)
def test_the_unsigned_twin_computes_the_same_integers(order: str, granularity: str) -> None:
    int8, inputs = _int8(order, granularity)
    graph = onnx.load_model_from_string(int8.data)
    twin = unsigned_twin(graph)
    assert twin is not None and _weights_read_as_int8(graph)
    assert _weights_read_as_int8(twin) == []
    array = inputs.numpy()
    exact = _run(twin.SerializeToString(), array)
    if not int8_saturates():
        np.testing.assert_array_equal(exact, _run(int8.data, array))
    np.testing.assert_array_equal(exact, int8(inputs).numpy())  # what evaluation sees


def test_weights_within_seven_bits_need_no_twin() -> None:
    int8, _ = _int8("prune_ptq", "per_channel", backend="x86")
    assert unsigned_twin(onnx.load_model_from_string(int8.data)) is None


def test_timing_runs_the_model_file_itself() -> None:
    int8, inputs = _int8("prune_ptq", "per_tensor")
    timed = as_timed(int8)
    assert isinstance(timed, OnnxModel) and timed.data == int8.data
    np.testing.assert_array_equal(timed(inputs).numpy(), _run(int8.data, inputs.numpy()))
    assert (timed is int8) == (not int8_saturates())  # sessions reused where the file is exact
    filed = OnnxModel(int8.data, exact=False)
    np.testing.assert_array_equal(filed(inputs).numpy(), _run(int8.data, inputs.numpy()))
    copy = pickle.loads(pickle.dumps(filed))
    assert (copy.exact, copy.data) == (False, int8.data)
    assert pickle.loads(pickle.dumps(int8)).exact


_EMULATED = """
import json, sys
import numpy as np
import torch
from trials._onnx import OnnxModel
from trials._onnx.kernels import int8_saturates

model = OnnxModel(open(sys.argv[1], "rb").read())
inputs = torch.from_numpy(np.load(sys.argv[2]))
print(json.dumps({
    "saturates": int8_saturates(),
    "filed": model.as_filed()(inputs).tolist(),  # as timing runs it
    "exact": model(inputs).tolist(),  # as evaluation runs it
}))
"""


@pytest.mark.slow
def test_on_an_emulated_cpu_without_vnni_the_twin_gives_the_exact_outputs(tmp_path: Path) -> None:
    qemu = shutil.which("qemu-x86_64")
    if qemu is None or platform.machine() != "x86_64":
        pytest.skip("needs qemu-user (qemu-x86_64) on x86_64 to emulate a CPU without VNNI")
    int8, inputs = _int8("prune_ptq", "per_tensor")
    array = inputs.numpy()
    (tmp_path / "int8.onnx").write_bytes(int8.data)
    np.save(tmp_path / "inputs.npy", array)
    script = tmp_path / "emulated.py"
    script.write_text(_EMULATED)
    done = subprocess.run(
        [
            qemu,
            "-cpu",
            "Haswell",
            sys.executable,
            str(script),
            str(tmp_path / "int8.onnx"),
            str(tmp_path / "inputs.npy"),
        ],
        capture_output=True,
        text=True,
        timeout=600,
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout.splitlines()[-1])
    exact = int8(inputs).numpy()  # this machine's exact evaluation
    assert result["saturates"] is True
    assert np.abs(np.asarray(result["filed"]) - exact).max() > 1e-3  # the file saturates there
    np.testing.assert_allclose(np.asarray(result["exact"]), exact, rtol=0, atol=1e-4)

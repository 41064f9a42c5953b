"""What a benchmark's figures were measured on, written into every result: figures compare only
between like machines (a CPU without VNNI once made every sampler's int8 accuracy wrong alike,
and no result said which runs it had measured)."""

from __future__ import annotations

import os
import platform

from trials import environment, runtime_version
from trials._onnx.kernels import int8_saturates


def measured_on() -> dict[str, str | bool | int | None]:
    """The CPU, its cores, the runtime and its version (``trials.environment``), and whether
    ONNX Runtime's int8 kernels saturate there (then int8 models evaluate through their exact
    twin: README, "int8 on x86 CPUs without VNNI")."""
    return {
        **environment("onednn", 1, runtime_version("onnxruntime")),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "int8_saturates": int8_saturates(),
    }

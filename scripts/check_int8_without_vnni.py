"""int8 accuracy on an x86 CPU without VNNI, emulated: the evidence for the engine's exact twin.

Runs a built-in task's default recipe here (``onednn``: full 8-bit weights), keeps its int8
model file and the validation split, then scores the model under ``qemu-x86_64 -cpu Haswell``
(AVX2, no VNNI) through ``OnnxModel``, as the engine does: the model file as that CPU runs it
(``as_filed``, what timing runs), and what the engine evaluates there (its exact twin,
``trials._onnx.kernels.exact_twin``). The same scoring runs on this machine too. Needs qemu-user
(Debian: ``apt-get install qemu-user``); the emulated part takes about a minute.

Prints one JSON object and writes it to ``scripts/results/check_int8_without_vnni.json``.

    python scripts/check_int8_without_vnni.py [--task shapes]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

from trials import LatencySpec, Recipe, load_task, run_trial, to_portable

ROOT = Path(__file__).resolve().parents[1]
RESULT = ROOT / "scripts" / "results" / "check_int8_without_vnni.json"

_SCORE = """
import json, sys
import numpy as np
import torch
from trials._onnx import OnnxModel
from trials._onnx.kernels import int8_saturates

model = OnnxModel(open(sys.argv[1], "rb").read())
inputs, labels = torch.from_numpy(np.load(sys.argv[2])), np.load(sys.argv[3])

def accuracy(run):
    with torch.no_grad():
        return float((run(inputs).argmax(1).numpy() == labels).mean())

print(json.dumps({
    "saturates": int8_saturates(),
    "model_file_accuracy": accuracy(model.as_filed()),  # as timing runs it
    "evaluated_accuracy": accuracy(model),  # as every reported accuracy is computed
}))
"""


def _score(command: list[str], folder: Path) -> dict[str, object]:
    files = [str(folder / name) for name in ("int8.onnx", "inputs.npy", "labels.npy")]
    done = subprocess.run(
        [*command, str(folder / "score.py"), *files],
        capture_output=True,
        text=True,
        timeout=1800,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    if done.returncode != 0:
        raise SystemExit(f"scoring failed ({' '.join(command[:3])}): {done.stderr[-2000:]}")
    result: dict[str, object] = json.loads(done.stdout.splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--task", default="shapes")
    args = parser.parse_args()
    qemu = shutil.which("qemu-x86_64")
    if qemu is None:
        raise SystemExit(
            "qemu-x86_64 not found: install qemu-user (Debian: apt-get install qemu-user)"
        )
    task = load_task(args.task)
    result = run_trial(task, Recipe(), latency=LatencySpec(repeats=3), keep_model=True)
    if result.state != "COMPLETE" or result.model is None:
        raise SystemExit(f"the default recipe failed on {args.task}: {result.error}")
    batches = list(task.validation_batches())
    with tempfile.TemporaryDirectory(prefix="sweep-vnni-") as name:
        folder = Path(name)
        (folder / "int8.onnx").write_bytes(to_portable(result.model))
        np.save(folder / "inputs.npy", np.concatenate([x.numpy() for x, _ in batches]))
        np.save(folder / "labels.npy", np.concatenate([y.numpy() for _, y in batches]))
        (folder / "score.py").write_text(_SCORE)
        report = {
            "task": args.task,
            "recipe": "default (onednn, prune_ptq, per_tensor)",
            "fp32_accuracy": result.metrics["fp32_accuracy"],
            "trial_accuracy_here": result.metrics["accuracy"],
            "here": _score([sys.executable], folder),
            "emulated_haswell": _score([qemu, "-cpu", "Haswell", sys.executable], folder),
        }
    RESULT.write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()

"""Saving an int8 model as the file its runtime loads, with the recipe and metrics inside.

For runtime ``onnxruntime`` the file is an ordinary ``.onnx`` model: ``onnxruntime.InferenceSession
(path)`` runs it with nothing of this project installed. The recipe, the metrics and a format
tag ride in the model's ``metadata_props`` (strings), which runtimes ignore.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, BinaryIO

from google.protobuf.message import DecodeError
from torch import nn

from trials import _runtime
from trials._recipe import Recipe, RecipeError

FORMAT = "sweep-int8"
FORMAT_VERSION = 2
_PREFIX = "sweep."


def save_int8(
    int8: nn.Module,
    recipe: Recipe,
    path: str | Path | BinaryIO,
    metrics: dict[str, float] | None = None,
) -> None:
    """Write ``int8`` (made from ``recipe`` by :func:`trials.finalize`) to ``path`` (a file name
    or a binary file): the runtime's own file, ``metrics`` and the recipe stored inside."""
    data = _runtime.with_metadata(
        _runtime.to_portable(int8),
        {
            f"{_PREFIX}format": FORMAT,
            f"{_PREFIX}format_version": str(FORMAT_VERSION),
            f"{_PREFIX}recipe": recipe.to_json(indent=None),
            f"{_PREFIX}metrics": json.dumps(dict(metrics or {})),
        },
    )
    if isinstance(path, str | Path):
        Path(path).write_bytes(data)
    else:
        path.write(data)


def _read_bytes(path: str | Path) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise RecipeError(f"{path}: cannot read the model file ({exc.strerror})") from None


def read_int8(path: str | Path) -> dict[str, Any]:
    """What :func:`save_int8` stored beside the model: ``recipe`` (an object) and ``metrics``;
    checked to be one of ours."""
    data = _read_bytes(path)
    try:
        props = _runtime.read_metadata(data)
    except DecodeError:  # not an ONNX model at all
        props = {}
    if props.get(f"{_PREFIX}format") != FORMAT:
        hint = (
            "; an earlier sweep wrote torch.ao state_dicts, which this version no longer runs: "
            "write the model again with sweep apply"
            if data[:2] == b"PK"
            else ""
        )
        raise RecipeError(
            f"{path}: not an int8 model saved by sweep apply / trials.save_int8{hint}"
        )
    version = props.get(f"{_PREFIX}format_version")
    if version != str(FORMAT_VERSION):
        raise RecipeError(
            f"{path}: format_version {version!r} is not supported (reads {FORMAT_VERSION})"
        )
    return {
        "recipe": json.loads(props[f"{_PREFIX}recipe"]),
        "metrics": json.loads(props.get(f"{_PREFIX}metrics", "{}")),
    }


def load_int8(path: str | Path) -> nn.Module:
    """The int8 model saved at ``path``, ready to run on the CPU (called like a module)."""
    saved = read_int8(path)
    recipe = Recipe.from_dict(saved["recipe"])
    return _runtime.from_portable(_read_bytes(path), recipe.runtime)

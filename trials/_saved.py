"""Saving an int8 model so that it reloads with plain ``torch.load(..., weights_only=True)``.

``torch.export`` cannot serialize torch.ao's quantized modules (their packed weights are
TorchScript objects), so the file holds the recipe and the int8 ``state_dict``: tensors and
plain values only. :func:`load_int8` rebuilds the int8 graph from the fp32 architecture and the
recipe, then loads the saved weights, scales and zero points into it.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any, BinaryIO

import torch
from torch import nn

from trials import _quant
from trials._recipe import Recipe, RecipeError
from trials._trial import apply_recipe, finalize

FORMAT = "sweep-int8"
FORMAT_VERSION = 1


def save_int8(
    int8: nn.Module,
    recipe: Recipe,
    path: str | Path | BinaryIO,
    metrics: dict[str, float] | None = None,
) -> None:
    """Write ``int8`` (made from ``recipe``) to ``path`` (a file name or a binary file);
    ``metrics`` are stored beside it."""
    torch.save(
        {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "recipe": recipe.to_dict(),
            "metrics": dict(metrics or {}),
            "state_dict": int8.state_dict(),
        },
        Path(path) if isinstance(path, str | Path) else path,
    )


def read_int8(path: str | Path) -> dict[str, Any]:
    """The saved file's contents (recipe, metrics, state_dict), checked to be one of ours."""
    file = Path(path)
    with _quant.quiet():  # quantized tensors rebuild through a deprecated storage path
        data = torch.load(file, weights_only=True)
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise RecipeError(f"{path}: not an int8 model saved by sweep apply / trials.save_int8")
    if data.get("format_version") != FORMAT_VERSION:
        raise RecipeError(
            f"{path}: format_version {data.get('format_version')!r} is not supported "
            f"(reads {FORMAT_VERSION})"
        )
    return data


def load_int8(path: str | Path, model: nn.Module, example_input: torch.Tensor) -> nn.Module:
    """The int8 model saved at ``path``, rebuilt on ``model``'s architecture (its fp32 weights
    do not matter: every weight is replaced by the saved one). CPU, eval mode.

    ``example_input`` is one batch of the model's input (its values do not matter either).
    """
    data = read_int8(path)
    recipe = Recipe.from_dict(data["recipe"])
    shaped = apply_recipe(copy.deepcopy(model).cpu(), recipe, example_input.cpu())
    # Calibrating on the example only gives the observers something to convert; the saved
    # scales and zero points replace what they saw.
    with _quant.quiet():
        int8 = finalize(shaped, recipe, [(example_input.cpu(), example_input.cpu())])
        int8.load_state_dict(data["state_dict"])
    return int8.eval()

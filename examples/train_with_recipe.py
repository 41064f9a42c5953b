"""Your own training loop, with a recipe from a sweep applied to it.

    python examples/train_with_recipe.py recipe.json [--epochs 3] [-o model_int8.onnx]

The only lines that come from sweep are ``trials.apply_recipe`` before training and
``trials.finalize`` after it; everything else is a plain PyTorch loop you already have. Here the
model and data are the built-in ``digits`` task's, standing in for yours.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

import trials


def train_one_epoch(
    model: nn.Module,
    batches: list[tuple[torch.Tensor, torch.Tensor]],
    optimizer: torch.optim.Optimizer,
) -> float:
    model.train()
    total = 0.0
    for inputs, targets in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = F.cross_entropy(model(inputs), targets)
        loss.backward()
        optimizer.step()
        total += float(loss)
    return total / max(len(batches), 1)


@torch.no_grad()
def accuracy(model: nn.Module, batches: list[tuple[torch.Tensor, torch.Tensor]]) -> float:
    model.eval()
    correct = total = 0
    for inputs, targets in batches:
        correct += int((model(inputs).argmax(dim=1) == targets).sum())
        total += len(targets)
    return correct / max(total, 1)


def train_with_recipe(recipe: trials.Recipe, epochs: int = 3, lr: float = 1e-3) -> nn.Module:
    """Train the digits model under ``recipe``; returns the int8 model."""
    task = trials.load_task("digits")
    model = task.build_model()  # your trained fp32 model
    example = task.example_input()
    calibration = list(task.calibration_batches())
    validation = list(task.validation_batches())

    model = trials.apply_recipe(model, recipe, example)  # prune (+ int8 simulated for prune_qat)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    for epoch in range(epochs):
        loss = train_one_epoch(model, list(task.train_batches()), optimizer)
        print(f"epoch {epoch + 1}: loss {loss:.4f}, accuracy {accuracy(model, validation):.4f}")
    int8_model = trials.finalize(model, recipe, calibration)  # the int8 model, in its runtime
    print(f"int8 accuracy {accuracy(int8_model, validation):.4f}")
    return int8_model


def main() -> None:
    parser = argparse.ArgumentParser(description="Train digits under a sweep recipe.")
    parser.add_argument("recipe", type=Path)
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("-o", "--output", type=Path, default=None)
    args = parser.parse_args()
    recipe = trials.Recipe.from_json(args.recipe.read_text())
    int8_model = train_with_recipe(recipe, epochs=args.epochs)
    if args.output is not None:
        trials.save_int8(int8_model, recipe, args.output)  # the runtime's file (.onnx)
        print(f"saved {args.output}")


if __name__ == "__main__":
    main()

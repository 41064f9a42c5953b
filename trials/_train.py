"""The fine-tuning / QAT loop: plain PyTorch, read top to bottom."""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import nn

from trials._pruning import enforce_masks
from trials._task import Task

# A loss this many times above the first batch's means the run has diverged.
DIVERGENCE_FACTOR = 1e3

StepHook = Callable[[int, int], None]
EpochHook = Callable[[int, nn.Module], None]


class TrialError(RuntimeError):
    """A trial that cannot finish (NaN loss, divergence, a bad recipe): recorded as FAIL."""


def train(
    model: nn.Module,
    task: Task,
    *,
    epochs: int,
    learning_rate: float,
    device: torch.device,
    phase: str,
    on_step: StepHook | None = None,
    on_epoch: EpochHook | None = None,
) -> None:
    """Train ``model`` in place for ``epochs`` over the task's train split, keeping pruned zeros."""
    if epochs <= 0:
        return
    # Only a step hook needs the schedule's length; counting costs a pass over the batches.
    total_steps = epochs * sum(1 for _ in task.train_batches()) if on_step is not None else 0
    optimizer = torch.optim.Adam(model.parameters(), lr=learning_rate)
    first_loss: float | None = None
    step = 0
    for epoch in range(epochs):
        model.train()
        for inputs, targets in task.train_batches():
            if on_step is not None:
                on_step(step, total_steps)
            inputs, targets = inputs.to(device), targets.to(device)
            optimizer.zero_grad(set_to_none=True)
            loss = task.loss(model(inputs), targets)
            value = float(loss.detach())
            if not math.isfinite(value):
                raise TrialError(
                    f"{phase}: loss became {value} at epoch {epoch + 1}, step {step + 1}; "
                    "lower learning_rate"
                )
            first_loss = value if first_loss is None else first_loss
            if value > DIVERGENCE_FACTOR * max(first_loss, 1e-3):
                raise TrialError(
                    f"{phase}: loss diverged ({first_loss:.3g} -> {value:.3g}) at epoch "
                    f"{epoch + 1}; lower learning_rate"
                )
            loss.backward()
            optimizer.step()
            enforce_masks(model)
            step += 1
        if on_epoch is not None:
            on_epoch(epoch, model)

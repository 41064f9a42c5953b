"""A user task that raises for some recipes: trials with the classifier pruned past 70% fail."""

from __future__ import annotations

import torch
from torch import nn

from trials.tasks.digits import DigitsTask


class FailingDigits(DigitsTask):
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        for name, module in model.named_modules():
            if name != "fc":
                continue
            weight = module.weight() if callable(module.weight) else module.weight  # int8 or float
            values = weight.int_repr() if weight.is_quantized else weight
            if float((values == 0).float().mean()) > 0.7:
                raise RuntimeError("boom: classifier pruned past 70%")
        return super().evaluate(model, device)


def make() -> FailingDigits:
    return FailingDigits()

"""A user task that raises for some recipes: trials with the classifier pruned past 70% fail."""

from __future__ import annotations

import torch
from torch import nn

from tests.trials.onnx_graph import weights
from trials.tasks.digits import DigitsTask


class FailingDigits(DigitsTask):
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        onnx_file = isinstance(getattr(model, "data", None), bytes)  # the trial's model
        if onnx_file and float((weights(model)["fc"] == 0).mean()) > 0.7:
            raise RuntimeError("boom: classifier pruned past 70%")
        return super().evaluate(model, device)


def make() -> FailingDigits:
    return FailingDigits()

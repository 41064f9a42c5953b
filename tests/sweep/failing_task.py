"""A user task that raises for some recipes: trials with the classifier pruned past 70% fail."""

from __future__ import annotations

import torch
from torch import nn

from tests.trials.onnx_graph import int8_weights
from trials.tasks.digits import DigitsTask


class FailingDigits(DigitsTask):
    def evaluate(self, model: nn.Module, device: torch.device) -> dict[str, float]:
        if isinstance(getattr(model, "data", None), bytes):  # the int8 model, an ONNX file
            classifier = int8_weights(model).get("fc")
            if classifier is not None and float((classifier.values == 0).mean()) > 0.7:
                raise RuntimeError("boom: classifier pruned past 70%")
        return super().evaluate(model, device)


def make() -> FailingDigits:
    return FailingDigits()

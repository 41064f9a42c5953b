"""An example of a user's own task: a Linear-only model on procedural data.

Run it through a sweep with ``task: examples.user_task:make_task`` (from the repo root), or copy
it as the starting point for your own. A task only has to implement ``trials.Task``; reusing
``trials.tasks.ClassificationTask`` gives loaders, evaluation and a cached trained baseline.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trials.tasks import ClassificationTask


def _spirals(
    n_per_class: int, classes: int, noise: float, seed: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interleaved 2-D spirals, lifted to 16 features by a fixed random projection."""
    generator = torch.Generator().manual_seed(seed)
    radius = torch.linspace(0.05, 1.0, n_per_class).repeat(classes)
    labels = torch.arange(classes).repeat_interleave(n_per_class)
    angle = (
        labels * (2 * torch.pi / classes)
        + radius * 3.5
        + noise * torch.randn(len(radius), generator=generator)
    )
    points = torch.stack([radius * torch.cos(angle), radius * torch.sin(angle)], dim=1)
    projection = torch.randn(2, 16, generator=generator)
    features = torch.cat([points, torch.tanh(points @ projection)], dim=1)
    return features[:, :16], labels


class SpiralMLP(nn.Module):
    def __init__(self, hidden: int = 128, classes: int = 4) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Linear(16, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden),
            nn.ReLU(),
            nn.Linear(hidden, hidden // 2),
            nn.ReLU(),
        )
        self.classifier = nn.Linear(hidden // 2, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.body(x))


class SpiralTask(ClassificationTask):
    name = "spirals"
    baseline_max_epochs = 80

    def __init__(self, seed: int = 0, hidden: int = 128) -> None:
        super().__init__(seed=seed)
        self.hidden = hidden
        x, y = _spirals(n_per_class=600, classes=4, noise=0.35, seed=seed)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed + 1))
        n_train, n_calib = int(0.65 * len(x)), int(0.10 * len(x))
        self.x_train, self.y_train = x[order[:n_train]], y[order[:n_train]]
        self.x_calib, self.y_calib = (
            x[order[n_train : n_train + n_calib]],
            y[order[n_train : n_train + n_calib]],
        )
        self.x_val, self.y_val = x[order[n_train + n_calib :]], y[order[n_train + n_calib :]]

    @property
    def settings(self) -> dict[str, Any]:
        return {"seed": self.seed, "hidden": self.hidden}

    def create_model(self) -> nn.Module:
        return SpiralMLP(self.hidden)


def make_task(seed: int = 0, hidden: int = 128) -> SpiralTask:
    return SpiralTask(seed=seed, hidden=hidden)

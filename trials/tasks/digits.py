"""Built-in ``digits``: scikit-learn's bundled 8x8 handwritten digits and a small CNN.

1,797 images, split once by a seeded permutation into train 65% / calibration 10% / validation 25%.
Trains in seconds on a CPU, so a whole sweep fits in minutes.
"""

from __future__ import annotations

from typing import Any

import torch
from sklearn.datasets import load_digits
from torch import nn

from trials.tasks._classification import ClassificationTask


def _conv_block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU()
    )


class DigitsNet(nn.Module):
    def __init__(self, width: int = 32, num_classes: int = 10) -> None:
        super().__init__()
        self.conv1 = _conv_block(1, width)
        self.conv2 = _conv_block(width, 2 * width)
        self.pool = nn.MaxPool2d(2)
        self.conv3 = _conv_block(2 * width, 4 * width)
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.fc = nn.Linear(4 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.pool(self.conv2(self.conv1(x)))
        return self.fc(self.head(self.conv3(x)))


class DigitsTask(ClassificationTask):
    name = "digits"

    def __init__(self, seed: int = 0, width: int = 32, latency_batch_size: int = 64) -> None:
        super().__init__(seed=seed)
        self.width = width
        self.latency_batch_size = latency_batch_size
        data = load_digits()
        x = torch.tensor(data.images, dtype=torch.float32).unsqueeze(1) / 16.0
        x = (x - 0.5) / 0.5
        y = torch.tensor(data.target, dtype=torch.long)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(seed))
        n_train, n_calib = int(0.65 * len(x)), int(0.10 * len(x))
        train, calib, val = (
            order[:n_train],
            order[n_train : n_train + n_calib],
            order[n_train + n_calib :],
        )
        self.x_train, self.y_train = x[train], y[train]
        self.x_calib, self.y_calib = x[calib], y[calib]
        self.x_val, self.y_val = x[val], y[val]

    @property
    def settings(self) -> dict[str, Any]:
        return {"seed": self.seed, "width": self.width}

    def create_model(self) -> nn.Module:
        return DigitsNet(self.width)

"""Built-in ``resnet``: torchvision's ResNet-18, on the procedural images of ``shapes``.

The model is torchvision's ``resnet18`` architecture written out in plain ``torch.nn``, with
torchvision's module names (``conv1``, ``bn1``, ``layer1.0.conv1``, ``layer2.0.downsample.0``,
``fc``...), so a state_dict loads into ``torchvision.models.resnet18(num_classes=10)`` and back:
torchvision's wheels on this project's registry are CUDA builds that do not import beside the
CPU torch, and its model definitions are plain PyTorch anyway. ``width`` scales the channels
(torchvision: 64) and ``blocks`` the BasicBlocks per stage (torchvision: 2, 2, 2, 2); the full
size runs the same code as the test size (``width: 8, blocks: [1, 1, 1, 1]``). ResNet-18 has 21
Conv/Linear layers: the stem, two convolutions per block, three downsample convolutions and the
classifier; structured pruning couples each stage's block outputs through the residual adds and
the downsample branches.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any

import torch
from torch import nn

from trials._task import Batch
from trials.tasks.shapes import CLASSES, ShapesTask


class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)  # one module applied twice, as torchvision does
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample: nn.Module | None = None
        if stride != 1 or inplanes != planes:
            self.downsample = nn.Sequential(
                nn.Conv2d(inplanes, planes, 1, stride, bias=False), nn.BatchNorm2d(planes)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class ResNet(nn.Module):
    """torchvision's ResNet with BasicBlocks (``resnet18`` at ``width=64, blocks=(2, 2, 2, 2)``)."""

    def __init__(
        self, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2), num_classes: int = 1000
    ) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(3, width, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(width)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages, inplanes = [], width
        for index, count in enumerate(blocks):
            planes = width * 2**index
            stride = 1 if index == 0 else 2
            layers = [BasicBlock(inplanes, planes, stride)]
            layers += [BasicBlock(planes, planes) for _ in range(count - 1)]
            stages.append(nn.Sequential(*layers))
            inplanes = planes
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(inplanes, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResnetTask(ShapesTask):
    """``task: resnet``; ``task_settings``: those of ``shapes`` plus ``width`` (64: ResNet-18)
    and ``blocks`` (``[2, 2, 2, 2]``). The images are ``shapes``' single channel repeated to
    three, as an RGB model takes them; the model's module names are torchvision's."""

    name = "resnet"
    baseline_lr = 3e-3

    def __init__(self, seed: int = 0, width: int = 64, blocks: Sequence[int] = (2, 2, 2, 2),
                 **settings: Any) -> None:  # fmt: skip
        if len(blocks) != 4 or min(blocks) < 1:
            raise ValueError(f"task_settings: blocks {list(blocks)} must be 4 counts >= 1")
        super().__init__(seed=seed, width=width, **settings)
        self.blocks = tuple(int(b) for b in blocks)

    @property
    def settings(self) -> dict[str, Any]:
        return {**super().settings, "blocks": list(self.blocks)}

    def create_model(self) -> nn.Module:
        return ResNet(self.width, self.blocks, num_classes=len(CLASSES))

    def train_batches(self) -> Iterator[Batch]:
        return ((_rgb(inputs), targets) for inputs, targets in super().train_batches())

    def calibration_batches(self) -> Iterator[Batch]:
        return ((_rgb(inputs), targets) for inputs, targets in super().calibration_batches())

    def validation_batches(self) -> Iterator[Batch]:
        return ((_rgb(inputs), targets) for inputs, targets in super().validation_batches())

    def example_input(self) -> torch.Tensor:
        return _rgb(super().example_input())


def _rgb(images: torch.Tensor) -> torch.Tensor:
    """Grey images as three equal channels, as an RGB model takes them."""
    return images.expand(-1, 3, -1, -1).contiguous()

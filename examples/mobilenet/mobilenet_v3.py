"""MobileNetV3-Small in plain ``torch.nn``, with torchvision's module names and shapes.

``mobilenet_v3_small(num_classes=10, width_mult=1.0)`` builds the same network as
``torchvision.models.mobilenet_v3_small(num_classes=10, width_mult=1.0)``: the same modules under
the same names (``features.0.0``, ``features.1.block.1.fc1``, ``classifier.3``...), the same
parameter and buffer shapes, the same forward pass and the same initialization (modules are
created in torchvision's order, so one seed gives the same weights), so a ``state_dict`` loads
from one into the other either way. It exists because torchvision does not import everywhere:
its wheels carry compiled operators (``torchvision._C``) built against one torch; beside another
torch build (a CPU-only torch next to a CUDA torchvision wheel) ``import torchvision`` raises.
Its model definitions need none of those operators.

The layout, as torchvision's ``_mobilenet_v3_conf("mobilenet_v3_small")``: a stride-2 3x3 stem
with Hardswish, eleven inverted residual blocks (1x1 expand where the expansion changes the
width, a depthwise 3x3 or 5x5, squeeze-and-excitation in eight of them, a linear 1x1 project, an
identity add where shapes match), a 1x1 head convolution to six times the last block's width,
global average pooling and a two-Linear classifier with Hardswish and dropout. BatchNorm uses
``eps=0.001, momentum=0.01`` as torchvision's does. The network downsamples five times, so a
32x32 image reaches 1x1 in the last stage.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["InvertedResidual", "MobileNetV3", "SqueezeExcitation", "mobilenet_v3_small"]


def _make_divisible(value: float, divisor: int = 8, min_value: int | None = None) -> int:
    """The nearest multiple of ``divisor`` (at least ``min_value``), never more than 10% below
    ``value``: torchvision's rounding of every width scaled by ``width_mult``."""
    floor = divisor if min_value is None else min_value
    rounded = max(floor, int(value + divisor / 2) // divisor * divisor)
    if rounded < 0.9 * value:
        rounded += divisor
    return rounded


class Conv2dNormActivation(nn.Sequential):
    """Conv2d (no bias), BatchNorm and an optional activation, as ``0``, ``1``, ``2``: the
    names torchvision's ``ops.Conv2dNormActivation`` gives them."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int = 3,
        stride: int = 1,
        groups: int = 1,
        activation: Callable[..., nn.Module] | None = nn.ReLU,
    ) -> None:
        layers: list[nn.Module] = [
            nn.Conv2d(
                in_channels,
                out_channels,
                kernel_size,
                stride,
                padding=(kernel_size - 1) // 2,
                groups=groups,
                bias=False,
            ),
            nn.BatchNorm2d(out_channels, eps=0.001, momentum=0.01),
        ]
        if activation is not None:
            layers.append(activation(inplace=True))
        super().__init__(*layers)
        self.out_channels = out_channels


class SqueezeExcitation(nn.Module):
    """torchvision's ``ops.SqueezeExcitation`` with MobileNetV3's Hardsigmoid gate: the input
    scaled per channel by a gate computed from its global average (1x1 convolutions ``fc1``,
    ``fc2``, with biases)."""

    def __init__(self, input_channels: int, squeeze_channels: int) -> None:
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(input_channels, squeeze_channels, 1)
        self.fc2 = nn.Conv2d(squeeze_channels, input_channels, 1)
        self.activation = nn.ReLU()
        self.scale_activation = nn.Hardsigmoid()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.activation(self.fc1(self.avgpool(x)))
        return self.scale_activation(self.fc2(scale)) * x


@dataclass(frozen=True)
class BlockConfig:
    """One inverted residual block, its widths already scaled by ``width_mult``."""

    input_channels: int
    kernel: int
    expanded_channels: int
    out_channels: int
    use_se: bool
    use_hardswish: bool
    stride: int


class InvertedResidual(nn.Module):
    """``block``: [1x1 expand,] depthwise, [squeeze-excitation,] 1x1 project; ``+ x`` where the
    block keeps the shape. Names as torchvision's (``block.0``, ``block.1.fc1``...)."""

    def __init__(self, config: BlockConfig) -> None:
        super().__init__()
        if config.stride not in (1, 2):
            raise ValueError(f"stride {config.stride}: must be 1 or 2")
        self.use_res_connect = config.stride == 1 and config.input_channels == config.out_channels
        activation = nn.Hardswish if config.use_hardswish else nn.ReLU
        layers: list[nn.Module] = []
        if config.expanded_channels != config.input_channels:
            layers.append(
                Conv2dNormActivation(
                    config.input_channels, config.expanded_channels, 1, activation=activation
                )
            )
        layers.append(
            Conv2dNormActivation(
                config.expanded_channels,
                config.expanded_channels,
                config.kernel,
                config.stride,
                groups=config.expanded_channels,
                activation=activation,
            )
        )
        if config.use_se:
            squeeze = _make_divisible(config.expanded_channels // 4, 8)
            layers.append(SqueezeExcitation(config.expanded_channels, squeeze))
        layers.append(
            Conv2dNormActivation(config.expanded_channels, config.out_channels, 1, activation=None)
        )
        self.block = nn.Sequential(*layers)
        self.out_channels = config.out_channels

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        if self.use_res_connect:  # fixed at build time: no branching on tensor values
            out = out + x
        return out


# torchvision's "mobilenet_v3_small" settings before width_mult: input channels, kernel,
# expanded channels, output channels, squeeze-excitation, Hardswish (else ReLU), stride.
SMALL: tuple[tuple[int, int, int, int, bool, bool, int], ...] = (
    (16, 3, 16, 16, True, False, 2),
    (16, 3, 72, 24, False, False, 2),
    (24, 3, 88, 24, False, False, 1),
    (24, 5, 96, 40, True, True, 2),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 240, 40, True, True, 1),
    (40, 5, 120, 48, True, True, 1),
    (48, 5, 144, 48, True, True, 1),
    (48, 5, 288, 96, True, True, 2),
    (96, 5, 576, 96, True, True, 1),
    (96, 5, 576, 96, True, True, 1),
)
SMALL_LAST_CHANNEL = 1024


class MobileNetV3(nn.Module):
    """``features`` (stem, blocks, head convolution), ``avgpool``, ``classifier``."""

    def __init__(
        self,
        blocks: list[BlockConfig],
        last_channel: int,
        num_classes: int = 1000,
        dropout: float = 0.2,
    ) -> None:
        super().__init__()
        if not blocks:
            raise ValueError("blocks: a MobileNetV3 needs at least one inverted residual block")
        layers: list[nn.Module] = [
            Conv2dNormActivation(3, blocks[0].input_channels, 3, 2, activation=nn.Hardswish)
        ]
        layers += [InvertedResidual(config) for config in blocks]
        head_channels = 6 * blocks[-1].out_channels
        layers.append(
            Conv2dNormActivation(blocks[-1].out_channels, head_channels, 1, activation=nn.Hardswish)
        )
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(
            nn.Linear(head_channels, last_channel),
            nn.Hardswish(inplace=True),
            nn.Dropout(p=dropout, inplace=True),
            nn.Linear(last_channel, num_classes),
        )
        # torchvision's initialization, after every module exists (so the random draws match).
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.kaiming_normal_(module.weight, mode="fan_out")
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.ones_(module.weight)
                nn.init.zeros_(module.bias)
            elif isinstance(module, nn.Linear):
                nn.init.normal_(module.weight, 0, 0.01)
                nn.init.zeros_(module.bias)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.avgpool(self.features(x))
        return self.classifier(torch.flatten(x, 1))


def mobilenet_v3_small(
    *, num_classes: int = 1000, width_mult: float = 1.0, dropout: float = 0.2
) -> MobileNetV3:
    """torchvision's ``mobilenet_v3_small(num_classes=..., width_mult=..., dropout=...)``,
    untrained (no ``weights``): every width is scaled by ``width_mult`` and rounded to a
    multiple of 8, the classifier's hidden width (1024) too."""
    if width_mult <= 0:
        raise ValueError(f"width_mult {width_mult}: must be positive")
    blocks = [
        BlockConfig(
            _make_divisible(cin * width_mult),
            kernel,
            _make_divisible(expanded * width_mult),
            _make_divisible(cout * width_mult),
            use_se,
            use_hardswish,
            stride,
        )
        for cin, kernel, expanded, cout, use_se, use_hardswish, stride in SMALL
    ]
    last_channel = _make_divisible(SMALL_LAST_CHANNEL * width_mult)
    return MobileNetV3(blocks, last_channel, num_classes=num_classes, dropout=dropout)

"""Built-in ``shapes``: procedural 32x32 images of textured shapes, and a MobileNetV2-style CNN.

Ten classes: five shape kinds (disk, square, triangle, cross, ring) times two textures (solid,
striped). Each image draws its shape at a random position, radius (6-11 px) and rotation; stripes
have a random period and direction; the background level, the contrast, two distractor strokes
and pixel noise are random too. Telling a striped disk from a striped square, or a thin striped
ring from a solid one, takes real features: the default model reaches about 90% validation
accuracy, not 100%. Images are generated with vectorized torch ops from the seed (no downloads, no
files); the same seed gives the same images.

Splits, from independent seeded draws (disjoint by construction): validation (every reported
accuracy; nothing trains on it), calibration (PTQ observers and the baseline's model selection),
and train, which is a fresh draw of ``n_train`` images at every call of ``train_batches`` (the
k-th call's draw is seeded by ``seed`` and k, as digits seeds its shuffles). Fresh draws keep the
62k-parameter model from memorizing 4,000 images (with one fixed train set it reached 99.8% on
train and 86% on validation).

The model mixes the layer kinds whose pruning sensitivities differ most: a strided stem
convolution, MobileNetV2 inverted residual blocks (1x1 expand, 3x3 depthwise, 1x1 linear
project, identity add where shapes match), one plain ResNet block (two 3x3 convolutions and an
identity add), a 1x1 head convolution, global average pooling and a Linear classifier: 20
Conv2d/Linear layers, 62k parameters at ``width=16``. It traces with ``torch.fx`` (no
data-dependent control flow; ``nn.ReLU`` modules and ``+`` for adds), as FX int8 needs.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import torch
from torch import nn

from trials._task import Batch
from trials.tasks._classification import ClassificationTask, _batches

SIZE = 32
SHAPES = ("disk", "square", "triangle", "cross", "ring")
TEXTURES = ("solid", "striped")
CLASSES = tuple(f"{texture} {shape}" for texture in TEXTURES for shape in SHAPES)
DATA_VERSION = 1  # bump when the generator changes: it is part of the baseline cache key

# Generator knobs (in pixels unless noted); they set how hard the task is.
RADIUS = (6.0, 11.0)  # shape radius
STRIPE_PERIOD = (3.5, 5.5)
EDGE_SOFTNESS = 0.6  # sigmoid width of shape and stripe edges
STRIPE_FLOOR = 0.35  # dark stripes keep this fraction of the contrast, so the outline stays
CONTRAST = (0.5, 1.0)  # shape intensity above the background
DISTRACTORS = 2  # strokes per image, each drawn with probability 0.75
NOISE = 0.10  # std of the pixel noise
MEAN, STD = 0.3, 0.26  # fixed normalization: roughly zero mean, unit variance


def _signed_distance(kind: int, u: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Inside > 0, in units of the shape's radius; ``u, v`` are shape-local coordinates."""
    if kind == 0:  # disk
        return 1.0 - torch.sqrt(u * u + v * v)
    if kind == 1:  # square (same area as the disk, roughly)
        return 0.85 - torch.maximum(u.abs(), v.abs())
    if kind == 2:  # equilateral triangle
        edges = [
            u * math.cos(a) + v * math.sin(a) for a in (math.pi / 2, 7 * math.pi / 6, -math.pi / 6)
        ]
        return 0.55 - torch.stack(edges).amax(dim=0)
    if kind == 3:  # cross (plus sign)
        arm = 0.32
        bar_u = torch.minimum(arm - u.abs(), 1.0 - v.abs())
        bar_v = torch.minimum(arm - v.abs(), 1.0 - u.abs())
        return torch.maximum(bar_u, bar_v)
    rho = torch.sqrt(u * u + v * v)  # ring
    return torch.minimum(rho - 0.55, 1.0 - rho)


def _uniform(n: int, bounds: tuple[float, float], generator: torch.Generator) -> torch.Tensor:
    low, high = bounds
    return low + (high - low) * torch.rand(n, 1, 1, generator=generator)


def generate(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` images ``(n, 1, 32, 32)`` (normalized) and labels ``(n,)``, deterministic in ``seed``.

    Label ``texture * 5 + shape``: see :data:`CLASSES`. About 0.1 s per 1,000 images on one thread.
    """
    g = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, len(CLASSES), (n,), generator=g)
    shape, striped = labels % len(SHAPES), labels // len(SHAPES)

    coords = torch.arange(SIZE, dtype=torch.float32) + 0.5
    ys, xs = torch.meshgrid(coords, coords, indexing="ij")
    ys, xs = ys.expand(n, SIZE, SIZE), xs.expand(n, SIZE, SIZE)

    radius = _uniform(n, RADIUS, g)
    margin = radius * 0.7
    cx = margin + (SIZE - 2 * margin) * torch.rand(n, 1, 1, generator=g)
    cy = margin + (SIZE - 2 * margin) * torch.rand(n, 1, 1, generator=g)
    angle = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    dx, dy = xs - cx, ys - cy
    u = (dx * torch.cos(angle) + dy * torch.sin(angle)) / radius
    v = (-dx * torch.sin(angle) + dy * torch.cos(angle)) / radius

    distance = torch.empty(n, SIZE, SIZE)
    for kind in range(len(SHAPES)):
        index = (shape == kind).nonzero().flatten()
        distance[index] = _signed_distance(kind, u[index], v[index])
    mask = torch.sigmoid(distance * radius / EDGE_SOFTNESS)

    period = _uniform(n, STRIPE_PERIOD, g)
    direction = math.pi * torch.rand(n, 1, 1, generator=g)
    phase = 2 * math.pi * torch.rand(n, 1, 1, generator=g)
    along = dx * torch.cos(direction) + dy * torch.sin(direction)
    wave = torch.sin(2 * math.pi * along / period + phase)
    stripes = torch.sigmoid(wave * period / (2 * math.pi * EDGE_SOFTNESS))
    striped_texture = STRIPE_FLOOR + (1 - STRIPE_FLOOR) * stripes
    texture = torch.where(striped.view(n, 1, 1).bool(), striped_texture, 1.0)

    background = _uniform(n, (0.0, 0.35), g)
    contrast = _uniform(n, CONTRAST, g)
    image = background + contrast * mask * texture

    # Distractor strokes: short thick segments, anywhere, of random intensity.
    k = DISTRACTORS
    p0 = SIZE * torch.rand(n, k, 2, generator=g)
    length = 4.0 + 8.0 * torch.rand(n, k, 1, generator=g)
    theta = 2 * math.pi * torch.rand(n, k, 1, generator=g)
    p1 = p0 + length * torch.cat([torch.cos(theta), torch.sin(theta)], dim=2)
    seg = (p1 - p0).view(n, k, 2, 1, 1)
    rel_x = xs.unsqueeze(1) - p0[..., 0].view(n, k, 1, 1)
    rel_y = ys.unsqueeze(1) - p0[..., 1].view(n, k, 1, 1)
    t = ((rel_x * seg[:, :, 0] + rel_y * seg[:, :, 1]) / (seg * seg).sum(dim=2)).clamp(0, 1)
    gap = torch.sqrt((rel_x - t * seg[:, :, 0]) ** 2 + (rel_y - t * seg[:, :, 1]) ** 2)
    width = 0.6 + 0.8 * torch.rand(n, k, 1, 1, generator=g)
    present = (torch.rand(n, k, 1, 1, generator=g) < 0.75).float()
    level = 0.3 + 0.5 * torch.rand(n, k, 1, 1, generator=g)
    strokes = present * level * torch.sigmoid((width - gap) / EDGE_SOFTNESS)
    image = torch.maximum(image, background + strokes.amax(dim=1))

    image = image + NOISE * torch.randn(n, SIZE, SIZE, generator=g)
    return ((image - MEAN) / STD).unsqueeze(1), labels


def _conv_bn(
    cin: int, cout: int, kernel: int = 1, stride: int = 1, groups: int = 1, relu: bool = True
) -> nn.Sequential:
    layers: list[nn.Module] = [
        nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(cout),
    ]
    if relu:
        layers.append(nn.ReLU())
    return nn.Sequential(*layers)


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand, 3x3 depthwise, 1x1 linear project; ``+ x`` if shapes match."""

    def __init__(self, cin: int, cout: int, expand: int, stride: int = 1) -> None:
        super().__init__()
        hidden = cin * expand
        self.expand = _conv_bn(cin, hidden)
        self.depthwise = _conv_bn(hidden, hidden, 3, stride, groups=hidden)
        self.project = _conv_bn(hidden, cout, relu=False)
        self.residual = stride == 1 and cin == cout  # fixed at build time: FX-traceable

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.project(self.depthwise(self.expand(x)))
        if self.residual:
            out = out + x
        return out


class BasicBlock(nn.Module):
    """ResNet block: two 3x3 convolutions and an identity add, then ReLU."""

    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv1 = _conv_bn(channels, channels, 3)
        self.conv2 = _conv_bn(channels, channels, 3, relu=False)
        self.relu = nn.ReLU()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.conv2(self.conv1(x)) + x)


class ShapesNet(nn.Module):
    """62k parameters at ``width=16``; 20 Conv2d/Linear layers (5 of them depthwise)."""

    def __init__(self, width: int = 16, num_classes: int = len(CLASSES)) -> None:
        super().__init__()
        w1, w2, w3, w4 = width, width * 3 // 2, width * 2, width * 3
        self.stem = _conv_bn(1, w1, 3, stride=2)  # 32 -> 16
        self.block1 = InvertedResidual(w1, w2, expand=2, stride=2)  # 16 -> 8
        self.block2 = InvertedResidual(w2, w2, expand=3)
        self.block3 = InvertedResidual(w2, w3, expand=3, stride=2)  # 8 -> 4
        self.block4 = BasicBlock(w3)
        self.block5 = InvertedResidual(w3, w4, expand=3)
        self.block6 = InvertedResidual(w4, w4, expand=3)
        self.head = _conv_bn(w4, 8 * width)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.flatten = nn.Flatten()
        self.classifier = nn.Linear(8 * width, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stem(x)
        x = self.block3(self.block2(self.block1(x)))
        x = self.block6(self.block5(self.block4(x)))
        return self.classifier(self.flatten(self.pool(self.head(x))))


def _split_seed(seed: int, stream: int) -> int:
    """Seed of one split's draw: validation 0, calibration 1, train epoch ``e`` is ``1 + e``."""
    return seed * 1_000_003 + stream


class ShapesTask(ClassificationTask):
    """Textured shapes (10 classes) with a MobileNetV2-style CNN; see the module docstring.

    Baseline: Adam with a one-cycle learning rate over ``baseline_max_epochs`` epochs (a fresh
    train draw each), keeping the epoch with the lowest calibration loss. About 35 s on one CPU
    thread; one fine-tuning epoch about 2.5 s.
    """

    name = "shapes"
    batch_size = 64
    baseline_max_epochs = 12
    # One-cycle schedule over every epoch: keep the best epoch, never stop early.
    baseline_patience = None
    baseline_min_delta = 0.0
    baseline_lr = 5e-3

    def __init__(
        self,
        seed: int = 0,
        width: int = 16,
        n_train: int = 4000,
        n_calibration: int = 1000,
        n_validation: int = 2000,
        latency_batch_size: int = 32,
    ) -> None:
        super().__init__(seed=seed)
        for name, value in (("n_train", n_train), ("n_calibration", n_calibration)):
            if value < self.batch_size:
                raise ValueError(f"{name}: {value} must be at least batch_size {self.batch_size}")
        self.width = width
        self.n_train, self.n_calibration, self.n_validation = n_train, n_calibration, n_validation
        self.latency_batch_size = latency_batch_size
        self.x_val, self.y_val = generate(n_validation, _split_seed(seed, 0))
        self.x_calib, self.y_calib = generate(n_calibration, _split_seed(seed, 1))
        self.x_train, self.y_train = generate(n_train, _split_seed(seed, 2))  # epoch 1's draw

    @property
    def settings(self) -> dict[str, Any]:
        return {
            "seed": self.seed,
            "width": self.width,
            "n_train": self.n_train,
            "n_calibration": self.n_calibration,
            "epochs": self.baseline_max_epochs,
            "lr": self.baseline_lr,
            "data_version": DATA_VERSION,
        }

    def create_model(self) -> nn.Module:
        return ShapesNet(self.width)

    def train_batches(self) -> Iterator[Batch]:
        """The k-th call: a fresh draw of ``n_train`` images, seeded by ``seed`` and k."""
        self._epoch += 1
        if self._epoch == 1:
            inputs, targets = self.x_train, self.y_train
        else:
            inputs, targets = generate(self.n_train, _split_seed(self.seed, 1 + self._epoch))
        return _batches(inputs, targets, self.batch_size, None)

    def _baseline_schedule(
        self, optimizer: torch.optim.Optimizer
    ) -> torch.optim.lr_scheduler.LRScheduler | None:
        steps_per_epoch = math.ceil(self.n_train / self.batch_size)
        return torch.optim.lr_scheduler.OneCycleLR(
            optimizer,
            max_lr=self.baseline_lr,
            total_steps=self.baseline_max_epochs * steps_per_epoch,
            pct_start=0.15,
        )

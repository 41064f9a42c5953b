"""A user's own Transformer task: a small encoder classifying procedural token sequences.

Each sequence of 24 tokens (vocabulary 32) hides one of 4 two-token motifs at a random place
among random filler, whose tokens include the motifs' own (only the adjacent pair tells the
class; a pair that filler forms by chance makes a little label noise). Finding it needs attention
across positions, so the model has real work for its q/k/v, output and MLP layers. Run it with
``task: examples/transformer_task.py:make_task``.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from trials.tasks import ClassificationTask

VOCAB, LENGTH, CLASSES = 32, 24, 4
# Motif k is the token pair (MOTIF_BASE + 2k, MOTIF_BASE + 2k + 1).
MOTIF_BASE = VOCAB - 2 * CLASSES


def _sequences(count: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (count, LENGTH), generator=generator)
    labels = torch.randint(0, CLASSES, (count,), generator=generator)
    where = torch.randint(0, LENGTH - 1, (count,), generator=generator)
    rows = torch.arange(count)
    tokens[rows, where] = MOTIF_BASE + 2 * labels
    tokens[rows, where + 1] = MOTIF_BASE + 2 * labels + 1
    return tokens, labels


class Encoder(nn.Module):
    def __init__(self, width: int = 64, depth: int = 2, heads: int = 4) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, width)
        self.positions = nn.Parameter(torch.zeros(1, LENGTH, width))
        layer = nn.TransformerEncoderLayer(
            width, heads, 2 * width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.encoder = nn.TransformerEncoder(layer, depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.encoder(self.tokens(tokens) + self.positions)
        return self.head(self.norm(hidden).mean(dim=1))


class MotifTask(ClassificationTask):
    name = "motifs"
    baseline_max_epochs = 40
    baseline_lr = 2e-3

    def __init__(self, seed: int = 0, width: int = 64, depth: int = 2) -> None:
        super().__init__(seed=seed)
        self.width, self.depth = width, depth
        self.x_train, self.y_train = _sequences(3000, seed)
        self.x_calib, self.y_calib = _sequences(500, seed + 1)
        self.x_val, self.y_val = _sequences(1000, seed + 2)

    @property
    def settings(self) -> dict[str, Any]:
        return {"seed": self.seed, "width": self.width, "depth": self.depth}

    def create_model(self) -> nn.Module:
        return Encoder(self.width, self.depth)


def make_task(seed: int = 0, width: int = 64, depth: int = 2) -> MotifTask:
    return MotifTask(seed=seed, width=width, depth=depth)

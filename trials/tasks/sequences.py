"""Built-in ``transformer`` and ``lstm``: procedural token sequences, a Transformer encoder and a
recurrent classifier.

Data (no downloads; the same seed gives the same sequences): sequences of ``LENGTH`` tokens from
a vocabulary of ``VOCAB``. Each hides, one in each third of the sequence, ``MOTIFS`` two-token
motifs (one per class), among filler drawn from the whole vocabulary, so motif tokens also
appear alone; the class is the motif that comes first (``transformer``) or last (``lstm``: an
LSTM of this size does not learn to carry the first one past two others in 40 epochs; 20%
accuracy, chance 17%). Telling it takes the pair (adjacent tokens) and the order of events
across the sequence: attention (or recurrence) has real work. ``LABEL_NOISE`` of the labels
are redrawn at random, so no model reaches 100% and what pruning costs shows.

``transformer``: token and position embeddings, ``depth`` pre-norm blocks of multi-head
self-attention with separate ``q``/``k``/``v``/``out`` Linear layers and an MLP (``fc1``,
``fc2``), LayerNorm and residual adds, mean pooling, a Linear head: 6 Linear layers per block, 25
prunable layers at the default ``depth=4``. Plain modules (no fused ``nn.MultiheadAttention``),
so each projection is its own layer to prune and quantize, as in most Transformer code.

``lstm``: token embedding, a Linear input projection, a ``layers``-layer LSTM, a Linear hidden
layer on its last state and a Linear head. Only the Linear layers are pruned (the LSTM is
quantized by ``prune_dynamic``).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.nn import functional as F

from trials.tasks._classification import ClassificationTask

VOCAB, LENGTH, CLASSES = 48, 32, 6
MOTIF_BASE = VOCAB - 2 * CLASSES  # motif k is the pair (MOTIF_BASE + 2k, MOTIF_BASE + 2k + 1)
MOTIFS = 3  # motifs per sequence; the first (or last) one is the label
LABEL_NOISE = 0.05
DATA_VERSION = 2  # bump when the generator changes: it is part of the baseline cache key


def generate(count: int, seed: int, label: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``count`` sequences (int64, ``(count, LENGTH)``) and their labels: the kind of motif
    number ``label`` (0: the first, -1: the last)."""
    generator = torch.Generator().manual_seed(seed)
    tokens = torch.randint(0, VOCAB, (count, LENGTH), generator=generator)
    kinds = torch.randint(0, CLASSES, (count, MOTIFS), generator=generator)
    # Non-overlapping places: one slot of LENGTH // MOTIFS positions per motif, in order.
    slot = LENGTH // MOTIFS
    rows = torch.arange(count)
    for m in range(MOTIFS):
        where = m * slot + torch.randint(0, slot - 1, (count,), generator=generator)
        tokens[rows, where] = MOTIF_BASE + 2 * kinds[:, m]
        tokens[rows, where + 1] = MOTIF_BASE + 2 * kinds[:, m] + 1
    labels = kinds[:, label].clone()
    noisy = torch.rand(count, generator=generator) < LABEL_NOISE
    labels[noisy] = torch.randint(0, CLASSES, (int(noisy.sum()),), generator=generator)
    return tokens, labels


class Attention(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.q = nn.Linear(width, width)
        self.k = nn.Linear(width, width)
        self.v = nn.Linear(width, width)
        self.out = nn.Linear(width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, _ = x.shape

        def split(t: torch.Tensor) -> torch.Tensor:  # (batch, heads, length, head width)
            return t.reshape(batch, length, self.heads, -1).transpose(1, 2)

        q, k, v = split(self.q(x)), split(self.k(x)), split(self.v(x))
        weights = torch.softmax(q @ k.transpose(-2, -1) / math.sqrt(q.shape[-1]), dim=-1)
        return self.out((weights @ v).transpose(1, 2).reshape(batch, length, -1))


class Block(nn.Module):
    def __init__(self, width: int, heads: int) -> None:
        super().__init__()
        self.norm1 = nn.LayerNorm(width)
        self.attention = Attention(width, heads)
        self.norm2 = nn.LayerNorm(width)
        self.fc1 = nn.Linear(width, 2 * width)
        self.act = nn.GELU()
        self.fc2 = nn.Linear(2 * width, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attention(self.norm1(x))
        return x + self.fc2(self.act(self.fc1(self.norm2(x))))


class Encoder(nn.Module):
    def __init__(self, width: int = 64, depth: int = 4, heads: int = 4) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, width)
        self.positions = nn.Parameter(0.02 * torch.randn(1, LENGTH, width))
        self.blocks = nn.Sequential(*(Block(width, heads) for _ in range(depth)))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        hidden = self.blocks(self.tokens(tokens) + self.positions)
        return self.head(self.norm(hidden).mean(dim=1))


class Recurrent(nn.Module):
    def __init__(self, width: int = 64, layers: int = 1) -> None:
        super().__init__()
        self.tokens = nn.Embedding(VOCAB, width)
        self.project = nn.Linear(width, width)
        self.lstm = nn.LSTM(width, width, num_layers=layers, batch_first=True)
        self.hidden = nn.Linear(width, width)
        self.head = nn.Linear(width, CLASSES)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        states, _ = self.lstm(F.relu(self.project(self.tokens(tokens))))
        return self.head(F.relu(self.hidden(states[:, -1])))


class _SequenceTask(ClassificationTask):
    baseline_max_epochs = 40
    baseline_lr = 2e-3
    label_motif = 0  # which motif gives the class

    def __init__(self, seed: int = 0, width: int = 64, n_train: int = 4000) -> None:
        super().__init__(seed=seed)
        self.width, self.n_train = width, n_train
        self.x_train, self.y_train = generate(n_train, 3 * seed, self.label_motif)
        self.x_calib, self.y_calib = generate(500, 3 * seed + 1, self.label_motif)
        self.x_val, self.y_val = generate(1000, 3 * seed + 2, self.label_motif)

    @property
    def settings(self) -> dict[str, Any]:
        return {"seed": self.seed, "width": self.width, "n_train": self.n_train,
                "data": DATA_VERSION, "label": self.label_motif}  # fmt: skip


class TransformerTask(_SequenceTask):
    """``task: transformer``; ``task_settings``: ``seed``, ``width`` (64), ``depth`` (4),
    ``heads`` (4), ``n_train`` (4000). A test-sized variant: ``{width: 32, depth: 1}``."""

    name = "transformer"

    def __init__(
        self, seed: int = 0, width: int = 64, depth: int = 4, heads: int = 4, n_train: int = 4000
    ) -> None:
        if width % heads:
            raise ValueError(f"task_settings: width {width} must be a multiple of heads {heads}")
        super().__init__(seed=seed, width=width, n_train=n_train)
        self.depth, self.heads = depth, heads

    @property
    def settings(self) -> dict[str, Any]:
        return {**super().settings, "depth": self.depth, "heads": self.heads}

    def create_model(self) -> nn.Module:
        return Encoder(self.width, self.depth, self.heads)


class LstmTask(_SequenceTask):
    """``task: lstm``; ``task_settings``: ``seed``, ``width`` (64), ``layers`` (1), ``n_train``
    (4000)."""

    name = "lstm"
    label_motif = -1

    def __init__(
        self, seed: int = 0, width: int = 64, layers: int = 1, n_train: int = 4000
    ) -> None:
        super().__init__(seed=seed, width=width, n_train=n_train)
        self.layers = layers

    @property
    def settings(self) -> dict[str, Any]:
        return {**super().settings, "layers": self.layers}

    def create_model(self) -> nn.Module:
        return Recurrent(self.width, self.layers)

"""Attention heads in structured pruning: q/k/v projections lose whole heads, never channels.

A multi-head attention module splits the output channels of each of its q, k and v projections
into ``heads`` contiguous blocks of ``head_width`` channels (the ``reshape(..., heads, -1)`` that
every implementation does). Removing single channels breaks that reshape, and ``q @ k^T`` needs q
and k to keep the same channels of the same heads; torch-pruning's graph already couples q, k, v
and the input channels of the output projection into one group. So such a group loses whole
heads: the same heads in q, k and v (the least important by the group's channel norms summed per
head), the matching input channels of the output projection, and the module's head count drops
with them. At least one head is kept.

The head count is found by convention, as torch-pruning's ``num_heads`` argument is given by hand
in its examples: the nearest module above the group's layers that holds an ``int`` attribute named
in :data:`HEAD_ATTRIBUTES`, with at least two of the group's layers whose output channels are a
multiple of it. A single fused projection (``qkv`` with three times the channels) interleaves q, k
and v within its channels, so removing contiguous blocks would mix them up: it is reported with a
reason instead. Hugging Face's ``all_head_size`` attribute, when it equals the channel count, is
updated with the heads.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn

HEAD_ATTRIBUTES = ("num_heads", "heads", "n_heads", "n_head", "num_attention_heads")
_WIDTH_ATTRIBUTES = ("all_head_size",)


@dataclass(frozen=True)
class Heads:
    """Where a coupled group's head count lives: ``module.<attribute> == count``, each head
    ``width`` output channels of every q/k/v layer."""

    module: str
    attribute: str
    count: int
    width: int


def _parent(name: str) -> str:
    return name.rpartition(".")[0]


def _common_parent(names: Sequence[str]) -> str:
    parts = [_parent(name).split(".") if _parent(name) else [] for name in names]
    common: list[str] = []
    for level in zip(*parts, strict=False):
        if len(set(level)) != 1:
            break
        common.append(level[0])
    return ".".join(common)


def _head_attribute(module: nn.Module) -> tuple[str, int] | None:
    for attribute in HEAD_ATTRIBUTES:
        value = getattr(module, attribute, None)
        if isinstance(value, int) and not isinstance(value, bool) and value > 1:
            return attribute, value
    return None


def find_heads(
    modules: Mapping[str, nn.Module], members: Sequence[str], channels: int
) -> Heads | str | None:
    """The heads of a coupled group with ``channels`` output channels: :class:`Heads` when its
    layers are attention projections, a one-line reason when they are but cannot lose heads, and
    ``None`` when the group is not attention."""
    parent = _common_parent(members)
    found = _head_attribute(modules[parent]) if parent in modules else None
    if found is None:
        return None
    attribute, count = found
    if channels % count:
        return None  # not split into heads (a layer beside the attention that shares the parent)
    if len(members) < 2:
        return (
            f"a fused projection of {parent or 'the model'!r} ({attribute}={count}): its "
            "q/k/v channels are interleaved per head, so torch-pruning cannot remove whole heads"
        )
    return Heads(parent, attribute, count, channels // count)


def kept_head_count(count: int, amount: float) -> int:
    """Of ``count`` heads, those left after structured pruning by ``amount`` (at least one)."""
    return min(count, max(1, count - round(amount * count)))


def head_channels(heads: Heads, importance: torch.Tensor, remove: int) -> list[int]:
    """The output channels of the ``remove`` least important heads (channel importance summed per
    head), in order."""
    per_head = importance.reshape(heads.count, heads.width).sum(dim=1)
    dropped = sorted(torch.argsort(per_head, stable=True)[:remove].tolist())
    return [head * heads.width + offset for head in dropped for offset in range(heads.width)]


def set_head_count(modules: Mapping[str, nn.Module], heads: Heads, kept: int) -> None:
    """Write the new head count (and Hugging Face's ``all_head_size``) into the module."""
    module = modules[heads.module]
    setattr(module, heads.attribute, kept)
    for attribute in _WIDTH_ATTRIBUTES:
        if getattr(module, attribute, None) == heads.count * heads.width:
            setattr(module, attribute, kept * heads.width)

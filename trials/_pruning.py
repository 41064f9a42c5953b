"""Unstructured L1 magnitude pruning whose zeros survive fine-tuning, QAT and conversion.

The mask lives on the weight ``Parameter`` itself (an attribute plus a gradient hook), not on the
module: FX quantization swaps Conv2d/Linear modules for fused QAT modules but keeps the very same
Parameter objects, so masks follow the weights wherever they go.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn.utils import prune

from trials._recipe import Recipe

PRUNABLE_TYPES: tuple[type[nn.Module], ...] = (nn.Conv1d, nn.Conv2d, nn.Conv3d, nn.Linear)
_MASK_ATTR = "_sweep_prune_mask"


def prunable_layers(model: nn.Module) -> list[str]:
    """Names of every Conv and Linear layer, in definition order; a shared module appears once."""
    seen: set[int] = set()
    names: list[str] = []
    for name, module in model.named_modules():
        if isinstance(module, PRUNABLE_TYPES) and id(module) not in seen:
            seen.add(id(module))
            names.append(name)
    return names


def _mask_gradient(mask: torch.Tensor) -> object:
    def hook(grad: torch.Tensor) -> torch.Tensor:
        return grad * mask.to(grad.device)

    return hook


def prune_model(model: nn.Module, recipe: Recipe) -> dict[str, float]:
    """Prune each ``unstructured`` layer by its recipe amount (L1 magnitude), permanently; return
    the amounts. Layers with method ``structured`` are left to :mod:`trials._structured`.

    Pruned weights are set to exactly zero; their gradient is masked, so any optimizer without
    weight noise (SGD, momentum, Adam, AdamW) keeps them at zero. :func:`enforce_masks` re-zeros
    them for optimizers that do not.
    """
    layers = prunable_layers(model)
    recipe.check_layers(layers)
    modules = dict(model.named_modules())
    applied: dict[str, float] = {}
    for name in layers:
        spec = recipe.layer(name)
        amount = spec.amount
        if amount <= 0.0 or spec.method != "unstructured":
            continue
        module = modules[name]
        prune.l1_unstructured(module, name="weight", amount=amount)
        prune.remove(module, "weight")  # permanent: weight is a plain Parameter again
        weight = module.weight
        _set_mask(weight, (weight.detach() != 0).to(weight.dtype))
        applied[name] = amount
    return applied


def _set_mask(weight: torch.Tensor, mask: torch.Tensor) -> None:
    setattr(weight, _MASK_ATTR, mask)
    weight.register_hook(_mask_gradient(mask))


def transfer_mask(old: torch.Tensor, new: torch.Tensor) -> None:
    """Give ``new`` (a weight that replaced ``old``, same shape) the pruning mask of ``old``."""
    mask = getattr(old, _MASK_ATTR, None)
    if mask is not None and new.requires_grad:
        _set_mask(new, mask)


@torch.no_grad()
def enforce_masks(model: nn.Module) -> None:
    """Re-zero every pruned weight of ``model`` (cheap; call after an optimizer step)."""
    for param in model.parameters():
        mask = getattr(param, _MASK_ATTR, None)
        if mask is not None:
            param.mul_(mask.to(param.device))


def layer_sparsity(weight: torch.Tensor) -> float:
    return float((weight == 0).sum().item()) / max(weight.numel(), 1)

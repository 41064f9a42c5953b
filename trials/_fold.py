"""BatchNorm folded into the convolution (or Linear) before it, as a deployed graph has it."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import fx, nn
from torch.nn.utils.fusion import fuse_conv_bn_eval, fuse_linear_bn_eval

from trials._pruning import transfer_mask

_CONVS = (nn.Conv1d, nn.Conv2d, nn.Conv3d)
_NORMS = (nn.BatchNorm1d, nn.BatchNorm2d, nn.BatchNorm3d)


def fold_batchnorm(model: nn.Module, *, keep_masks: bool = False) -> tuple[nn.Module, bool]:
    """``model`` with every BatchNorm that directly follows a Conv/Linear (whose output feeds
    nothing else) folded into it, and whether the model could be traced to do so.

    Works on ``model`` itself (its other modules are shared with the result): folded layers get
    new Parameters, keeping their names. With ``keep_masks`` the pruning masks of the old weights
    move to the new ones, so pruned weights stay zero through further training. A model that
    ``torch.fx`` cannot trace is returned as it is, with ``False``.
    """
    try:
        traced = fx.symbolic_trace(model)
    except Exception:  # noqa: BLE001 - tracing raises many types; the caller learns it failed
        return model, False
    modules = dict(traced.named_modules())
    for node in list(traced.graph.nodes):
        norm = _module(node, modules, _NORMS)
        if norm is None or len(node.args) != 1 or not isinstance(node.args[0], fx.Node):
            continue
        source = node.args[0]
        layer = _module(source, modules, (*_CONVS, nn.Linear))
        if layer is None or len(source.users) != 1 or not norm.track_running_stats:
            continue
        training = layer.training
        layer.eval()
        norm.eval()
        with torch.no_grad():
            fused = _fuse(layer, norm)
        fused.train(training)
        if keep_masks:
            transfer_mask(layer.get_parameter("weight"), fused.get_parameter("weight"))
        _replace(traced, str(source.target), fused)
        node.replace_all_uses_with(source)
        traced.graph.erase_node(node)
    traced.graph.lint()
    traced.delete_all_unused_submodules()
    traced.recompile()
    return traced, True


def _fuse(layer: nn.Module, norm: nn.Module) -> nn.Module:
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        raise TypeError(f"expected a BatchNorm, got {type(norm).__name__}")
    if isinstance(layer, nn.Linear):
        return fuse_linear_bn_eval(layer, norm)
    if isinstance(layer, nn.Conv1d | nn.Conv2d | nn.Conv3d):
        return fuse_conv_bn_eval(layer, norm)
    raise TypeError(f"expected a Conv or Linear layer, got {type(layer).__name__}")


def _module(
    node: fx.Node, modules: dict[str, nn.Module], types: tuple[type, ...]
) -> nn.Module | None:
    if node.op != "call_module":
        return None
    module = modules.get(str(node.target))
    return module if isinstance(module, types) else None


def _replace(root: nn.Module, name: str, module: nn.Module) -> None:
    parent_name, _, child = name.rpartition(".")
    parent = root.get_submodule(parent_name) if parent_name else root
    setattr(parent, child, module)


@torch.no_grad()
def recalibrate_batchnorm(model: nn.Module, inputs: Iterable[torch.Tensor]) -> None:
    """Re-estimate every BatchNorm's running statistics on ``inputs`` (their plain average),
    the rest of the model in eval mode. Pruning changes what each BatchNorm sees, and QAT folds
    BatchNorm into the layer before it, freezing those statistics for good: stale ones (a model
    that lost half its channels and was not fine-tuned) leave QAT a model it cannot recover in
    an epoch (digits, half the channels of every conv removed, no fine-tuning: 26% accuracy
    after one QAT epoch, 71% with the statistics re-estimated on 8 batches; 94% and 95% after
    one epoch of fine-tuning)."""
    norms = [m for m in model.modules() if isinstance(m, _NORMS) and m.track_running_stats]
    if not norms:
        return
    training, momenta = model.training, [norm.momentum for norm in norms]
    device = next(model.parameters()).device
    model.eval()
    for norm in norms:
        norm.reset_running_stats()
        norm.momentum = None  # a cumulative average over the batches
        norm.train()
    for batch in inputs:
        model(batch.to(device))
    for norm, momentum in zip(norms, momenta, strict=True):
        norm.momentum = momentum
    model.train(training)

"""Structured pruning: whole output channels removed, so the model really gets smaller and faster.

Built on torch-pruning's dependency graph (DepGraph), which follows every tensor from a layer's
output to whatever consumes it: removing output channel ``i`` of a conv also removes channel ``i``
of the BatchNorm after it, input channel ``i`` of the next conv or linear layer, channel ``i`` of a
depthwise conv (and, through that, of the pointwise conv that feeds it), and channel ``i`` of every
other layer whose output is added to the same residual stream.

Terms used below:

- a layer's **coupled group**: the Conv/Linear layers whose output channels must be removed
  together with its own (the two convs whose outputs are added in a residual; a pointwise conv
  and the depthwise conv after it). Within a group, channel ``i`` means the same channel in every
  member, and the group is pruned as one.
- **importance** of a group's channel: the L2 norm of that channel's output weights over every
  member of the group (the square root of the sum of the members' squared channel norms). The
  least important channels are removed.
- the **group's amount**: the *maximum* of the amounts its members ask for with method
  ``structured``. Members that ask for ``unstructured`` (or are absent from the recipe) lose the
  same channels, because the graph leaves no other choice, and then get their own unstructured
  amount on the weights that remain.
- an **attention group** (the q, k and v projections of a multi-head attention module) loses whole
  heads, never single channels, and the module's head count drops with them: see
  :mod:`trials._heads` for how heads are found and chosen.
- **kept channels** of a group with ``n`` channels, amount ``a`` and ``round_to`` ``r``:
  ``n - round(a * n)`` rounded to the nearest multiple of ``r`` (halves up), at least ``r`` and at
  most ``n``. A layer never loses all its channels.

Layers whose output channels cannot be removed are reported by :func:`structured_prunable` with a
one-line reason, never silently skipped: the model's output layers (found by tracing which nodes
produce the model's outputs, not by name), every layer coupled to the model's output (a conv whose
output is added to a residual that is itself the output), groups with grouped (non-depthwise)
convolutions, layers the example input does not reach, and anything that fails a trial removal
of one channel (a forward pass that breaks or whose output shape changes).

This module analyses a model (groups, reasons, what each group can lose);
:mod:`trials._structured_prune` removes the channels a recipe asks for.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import torch
import torch_pruning as tp
from torch import nn

from trials._channels import Removable
from trials._heads import Heads, find_heads, set_head_count
from trials._pruning import prunable_layers

STRUCTURED = "structured"


class StructuredLayout(NamedTuple):
    """What one analysis of a model says about structured pruning (:func:`structured_layout`)."""

    prunable: dict[str, str | None]  # :func:`structured_prunable`
    groups: list[tuple[str, ...]]  # :func:`structured_groups`
    removable: dict[str, Removable]  # each layer that can lose channels: what it can lose


@dataclass
class _Analysis:
    """The dependency graph of one model and what it says about each layer."""

    graph: Any  # tp.DependencyGraph (untyped library)
    modules: dict[str, nn.Module]
    reasons: dict[str, str | None] = field(default_factory=dict)
    groups: dict[str, tuple[str, ...]] = field(default_factory=dict)
    heads: dict[tuple[str, ...], Heads] = field(default_factory=dict)  # attention q/k/v groups
    output_shapes: list[tuple[int, ...]] = field(default_factory=list)


@contextlib.contextmanager
def _traceable(model: nn.Module) -> Iterator[None]:
    """Autograd on and every parameter requiring grad while the graph is traced (DepGraph reads
    ``grad_fn``); the training mode and ``requires_grad`` flags are restored by name afterwards,
    because pruning replaces the pruned Parameters."""
    training = model.training
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    for param in model.parameters():
        param.requires_grad_(True)
    try:
        with torch.enable_grad():
            yield
    finally:
        model.train(training)
        for name, param in model.named_parameters():
            if name in frozen:
                param.requires_grad_(False)


def _one_line(exc: BaseException, limit: int = 200) -> str:
    text = " ".join(f"{type(exc).__name__}: {exc}".split())
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _example(model: nn.Module, example_input: torch.Tensor) -> torch.Tensor:
    try:
        device = next(model.parameters()).device
    except StopIteration:
        device = example_input.device
    return example_input[:1].to(device)


def _build_graph(model: nn.Module, example: torch.Tensor) -> tuple[Any, list[torch.Tensor]]:
    """The dependency graph of ``model`` and the model's output tensors on ``example``."""
    outputs: list[torch.Tensor] = []

    def capture(out: Any) -> Any:
        outputs.extend(t for t in tp.utils.flatten_as_list(out) if isinstance(t, torch.Tensor))
        return out

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        graph = tp.DependencyGraph().build_dependency(
            model,
            (example,),
            forward_fn=lambda module, inputs: module(*inputs),
            output_transform=capture,
            verbose=False,
        )
    return graph, outputs


def _is_grouped_conv(module: nn.Module) -> bool:
    """A conv with 1 < groups that is not depthwise (one input and one output channel a group)."""
    if not isinstance(module, nn.modules.conv._ConvNd) or module.groups == 1:
        return False
    return not (module.groups == module.in_channels == module.out_channels)


def _full_group(graph: Any, module: nn.Module) -> Any:
    pruner = graph.get_pruner_of_module(module)
    channels = pruner.get_out_channels(module)
    return graph.get_pruning_group(module, pruner.prune_out_channels, list(range(channels)))


def _analyse(model: nn.Module, example_input: torch.Tensor) -> _Analysis:
    layers = prunable_layers(model)
    modules = dict(model.named_modules())
    names = {modules[name]: name for name in layers}
    example = _example(model, example_input)
    try:
        with _traceable(model):
            graph, outputs = _build_graph(model, example)
    except Exception as exc:  # noqa: BLE001 - any tracing failure is reported per layer
        reason = f"torch-pruning cannot trace the model ({_one_line(exc)})"
        return _Analysis(None, modules, dict.fromkeys(layers, reason), {})
    analysis = _Analysis(graph, modules, output_shapes=[tuple(t.shape) for t in outputs])
    # The nodes that produce the model's outputs: a layer, or an op such as a residual add.
    roots = {t.grad_fn for t in outputs if t.grad_fn is not None}
    output_nodes = {
        node
        for node in graph.module2node.values()
        if node.grad_fn in roots or node.type == tp.ops.OPTYPE.OUTPUT
    }
    output_layers = {names[n.module] for n in output_nodes if n.module in names}
    for name in layers:
        if name in analysis.reasons:
            continue  # settled with its group
        if modules[name] not in graph.module2node:
            analysis.reasons[name] = "the example input does not reach it (unused in forward)"
            continue
        group = _full_group(graph, modules[name])
        members = sorted(
            {name}
            | {
                names[dep.target.module]
                for dep, _ in group
                if dep.target.module in names and graph.is_out_channel_pruning_fn(dep.handler)
            },
            key=layers.index,
        )
        why_not = _group_reason(graph, group, members, output_nodes, output_layers, names)
        heads = find_heads(modules, members, _weight(modules[name]).shape[0])
        if isinstance(heads, str):
            why_not = why_not or heads
        elif heads is not None:
            analysis.heads[tuple(members)] = heads
        for member in members:
            analysis.reasons[member] = _member_reason(modules[member], member, output_layers)
            analysis.reasons[member] = analysis.reasons[member] or why_not
            analysis.groups[member] = tuple(members)
    _dry_run(model, example, analysis)
    return analysis


def _group_reason(
    graph: Any,
    group: Any,
    members: list[str],
    output_nodes: set[Any],
    output_layers: set[str],
    names: dict[nn.Module, str],
) -> str | None:
    """Why no member of ``group`` can lose output channels, or ``None``."""
    # Output nodes whose *output* channels the group would change (a layer that only loses input
    # channels, like the classifier after a pooled conv, keeps the model's output as it is).
    reached = [
        dep.target
        for dep, _ in group
        if dep.target in output_nodes and graph.is_out_channel_pruning_fn(dep.handler)
    ]
    if reached:
        coupled_out = [m for m in members if m in output_layers]
        via = (
            f"coupled with output layer {coupled_out[0]!r}"
            if coupled_out
            else f"its channels are part of the model's output (through {_op(reached[0])})"
        )
        return f"{via}: removing them would change the model's output"
    grouped = [dep.target.module for dep, _ in group if _is_grouped_conv(dep.target.module)]
    if grouped:
        label = names.get(grouped[0], type(grouped[0]).__name__)
        return (
            f"coupled with grouped convolution {label!r} (groups={grouped[0].groups}), "
            "whose groups torch-pruning cannot keep consistent"
        )
    return None


def _member_reason(module: nn.Module, name: str, output_layers: set[str]) -> str | None:
    if name in output_layers:
        return "its output channels are the model's output"
    if _is_grouped_conv(module):
        return (
            f"grouped convolution (groups={module.groups}), whose groups torch-pruning cannot "
            "keep consistent"
        )
    return None


def _op(node: Any) -> str:
    """A readable name for a graph node that is not a layer: ``AddBackward0`` -> ``add``."""
    name = node.grad_fn.name() if node.grad_fn is not None else type(node.module).__name__
    return str(name).split("::")[-1].removesuffix("Backward0").removesuffix("Backward1").lower()


def _output_shapes(model: nn.Module, example: torch.Tensor) -> list[tuple[int, ...]]:
    training = model.training
    try:
        with torch.no_grad():
            out = model.eval()(example)
    finally:
        model.train(training)
    return [tuple(t.shape) for t in tp.utils.flatten_as_list(out) if isinstance(t, torch.Tensor)]


def _try_remove_one(
    model: nn.Module,
    example: torch.Tensor,
    roots: list[tuple[str, Heads | None]],
    expected: list[tuple[int, ...]],
) -> str | None:
    """Remove one channel (an attention group: one head) of each group rooted at ``roots`` in a
    copy; ``None`` if that works."""
    trial = copy.deepcopy(model)
    try:
        with _traceable(trial):
            graph, _ = _build_graph(trial, example)
            modules = dict(trial.named_modules())
            for root, heads in roots:
                module = modules[root]
                pruner = graph.get_pruner_of_module(module)
                channels = pruner.get_out_channels(module)
                width = heads.width if heads else 1
                last = list(range(channels - width, channels))
                graph.get_pruning_group(module, pruner.prune_out_channels, last).prune()
                if heads:
                    set_head_count(modules, heads, heads.count - 1)
        shapes = _output_shapes(trial, example)
    except Exception as exc:  # noqa: BLE001 - a failed trial removal is the reason reported
        return f"torch-pruning cannot remove its channels ({_one_line(exc)})"
    if shapes != expected:
        return f"removing a channel changes the model's output shape ({expected} -> {shapes})"
    return None


def _dry_run(model: nn.Module, example: torch.Tensor, analysis: _Analysis) -> None:
    """Remove one channel from every prunable group in a copy and check the model still runs with
    the same output shape; on failure, find the groups at fault one by one and report them."""
    roots = [
        (group[0], analysis.heads.get(group))
        for name, group in analysis.groups.items()
        if group[0] == name
        and analysis.reasons[name] is None
        and _removable(analysis, group).count > 1
    ]
    if not roots:
        return
    expected = analysis.output_shapes
    if _try_remove_one(model, example, roots, expected) is None:
        return
    for root in roots:
        reason = _try_remove_one(model, example, [root], expected)
        if reason is not None:
            for member in analysis.groups[root[0]]:
                analysis.reasons[member] = reason


def _weight(module: nn.Module) -> torch.Tensor:
    weight = module.weight
    if not isinstance(weight, torch.Tensor):
        raise TypeError(f"{type(module).__name__} has no weight tensor")
    return weight


def _channels(analysis: _Analysis, name: str) -> int:
    return int(_weight(analysis.modules[name]).shape[0])


def _removable(analysis: _Analysis, group: tuple[str, ...]) -> Removable:
    """What the group has to lose: its output channels, or an attention group's heads."""
    heads = analysis.heads.get(group)
    return Removable(heads.count, heads=True) if heads else Removable(_channels(analysis, group[0]))


def structured_prunable(model: nn.Module, example_input: torch.Tensor) -> dict[str, str | None]:
    """Every Conv/Linear layer of ``model`` → ``None`` if its output channels can be removed, else
    a one-line reason why not (see the module docstring for what is reported). The model is not
    changed; ``example_input`` is a batch like the task's (only its first item is used)."""
    return structured_layout(model, example_input)[0]


def structured_groups(model: nn.Module, example_input: torch.Tensor) -> list[tuple[str, ...]]:
    """The coupled groups of layers (in model order) whose output channels are pruned together."""
    return structured_layout(model, example_input)[1]


def structured_layout(model: nn.Module, example_input: torch.Tensor) -> StructuredLayout:
    """:func:`structured_prunable`, :func:`structured_groups` and what each layer that can lose
    channels has to lose, from one analysis: the model's graph is traced and dry-run once."""
    analysis = _analyse(model, example_input)
    layers = prunable_layers(model)
    groups = analysis.groups
    return StructuredLayout(
        {name: analysis.reasons[name] for name in layers},
        list(dict.fromkeys(groups[name] for name in layers if name in groups)),
        {
            name: _removable(analysis, groups[name])
            for name in layers
            if analysis.reasons[name] is None and name in groups
        },
    )

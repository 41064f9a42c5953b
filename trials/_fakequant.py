"""Quantization-aware training: the int8 rounding of the deployed model, simulated in PyTorch.

What is simulated is exactly what the runtime will do (see :mod:`trials._onnx`): each quantized
Conv/Linear weight is rounded to int8 with a symmetric scale of ``max|w| / qmax`` (per tensor, or
per output channel), and each such layer's input is rounded to uint8 with an asymmetric range
that an observer tracks (moving average of min/max) until it is frozen. BatchNorm is folded into
the preceding convolutions first (:mod:`trials._fold`), since the deployed graph quantizes the
folded weights. Gradients pass through the rounding (straight-through estimator, as
``torch.fake_quantize_*`` define it).

Everything is plain ``torch.nn``: parametrizations on the weights, forward pre-hooks on the
inputs; the model keeps its module names, trains with any optimizer on CPU or GPU, and
:func:`strip` returns the float model with the trained weights and the observed ranges.
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn.utils import parametrize

from trials._fold import fold_batchnorm

# Moving-average constant of the activation observers (as PyTorch's QAT observers use).
AVERAGING_CONSTANT = 0.01
_OBSERVER = "input_observer"


@dataclass(frozen=True)
class WeightGrid:
    """Symmetric int8: ``[-qmax, qmax]`` with ``qmax`` 127, or 64 for 7-bit (``reduce_range``)."""

    per_channel: bool
    qmax: int


def weight_grid(per_channel: bool, reduce_range: bool) -> WeightGrid:
    return WeightGrid(per_channel, 64 if reduce_range else 127)


class FakeQuantWeight(nn.Module):
    """A parametrization: the weight as the runtime will store it (int8 times a scale)."""

    def __init__(self, grid: WeightGrid) -> None:
        super().__init__()
        self.per_channel = grid.per_channel
        self.qmax = grid.qmax

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if self.per_channel:
            dims = tuple(range(1, weight.dim()))
            absmax = weight.detach().abs().amax(dim=dims)
            scale = _safe_scale(absmax / self.qmax)
            zero = torch.zeros_like(scale, dtype=torch.int32)
            return torch.fake_quantize_per_channel_affine(
                weight, scale, zero, 0, -self.qmax, self.qmax
            )
        scale = _safe_scale(weight.detach().abs().max() / self.qmax)
        return torch.fake_quantize_per_tensor_affine(
            weight,
            scale.reshape(1),
            torch.zeros(1, dtype=torch.int32, device=weight.device),
            -self.qmax,
            self.qmax,
        )


def _safe_scale(scale: torch.Tensor) -> torch.Tensor:
    # An all-zero weight (a fully pruned channel) has no range: the runtime then uses scale 1.
    return torch.where(scale > torch.finfo(torch.float32).tiny, scale, torch.ones_like(scale))


class ActivationObserver(nn.Module):
    """Tracks the range of a layer's input and rounds the input to uint8 within it: asymmetric,
    the range widened to include 0, as the runtime quantizes activations."""

    low: torch.Tensor
    high: torch.Tensor
    seen: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("low", torch.zeros(()))
        self.register_buffer("high", torch.zeros(()))
        self.register_buffer("seen", torch.zeros((), dtype=torch.bool))
        self.observing = True

    def forward(self, inputs: torch.Tensor) -> torch.Tensor:
        if self.observing:
            with torch.no_grad():
                low, high = inputs.detach().amin().float(), inputs.detach().amax().float()
                if bool(self.seen):
                    low = self.low + AVERAGING_CONSTANT * (low - self.low)
                    high = self.high + AVERAGING_CONSTANT * (high - self.high)
                self.low.copy_(low)
                self.high.copy_(high)
                self.seen.fill_(True)
        if not bool(self.seen):
            return inputs
        low = torch.clamp(self.low, max=0.0)
        high = torch.clamp(self.high, min=0.0)
        scale = _safe_scale((high - low) / 255.0)
        zero = torch.clamp(torch.round(-low / scale), 0, 255).to(torch.int32)
        return torch.fake_quantize_per_tensor_affine(
            inputs, scale.reshape(1), zero.reshape(1), 0, 255
        )

    def range(self) -> tuple[float, float]:
        return float(self.low), float(self.high)


def _quantize_input(module: nn.Module, args: tuple[torch.Tensor, ...]) -> tuple[torch.Tensor, ...]:
    observer = getattr(module, _OBSERVER)
    return (observer(args[0]), *args[1:])


def prepare(model: nn.Module, grids: dict[str, WeightGrid], *, fold: bool = True) -> nn.Module:
    """The model to train with quantization simulated on the layers of ``grids`` (layer name ->
    its weight grid). BatchNorm is folded first where the model can be traced (``fold``); the
    returned model is then a new module with the same layer names. Train mode."""
    if fold:
        model, _ = fold_batchnorm(model, keep_masks=True)
    modules = dict(model.named_modules())
    for name, grid in grids.items():
        module = modules[name]
        parametrize.register_parametrization(module, "weight", FakeQuantWeight(grid))
        module.add_module(_OBSERVER, ActivationObserver())
        module.register_forward_pre_hook(_quantize_input)
    return model.train()


def freeze_observers(model: nn.Module) -> None:
    """Stop tracking activation ranges: the last steps train against fixed ranges."""
    for module in model.modules():
        if isinstance(module, ActivationObserver):
            module.observing = False


def freeze_batchnorm(model: nn.Module) -> None:
    """Use (and stop updating) BatchNorm running statistics, for BatchNorm that was not folded."""
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()


def is_prepared(model: nn.Module) -> bool:
    return any(isinstance(m, ActivationObserver) for m in model.modules())


def strip(model: nn.Module) -> tuple[nn.Module, dict[str, tuple[float, float]]]:
    """A float copy of a :func:`prepare` d model (trained weights, no simulation), and the
    observed input range of each simulated layer."""
    plain = copy.deepcopy(model).cpu().eval()
    ranges: dict[str, tuple[float, float]] = {}
    for name, module in list(plain.named_modules()):
        observer = getattr(module, _OBSERVER, None)
        if not isinstance(observer, ActivationObserver):
            continue
        if bool(observer.seen):
            ranges[name] = observer.range()
        hooks = module._forward_pre_hooks
        for key in [k for k, hook in hooks.items() if hook is _quantize_input]:
            del hooks[key]
        del module._modules[_OBSERVER]
        if parametrize.is_parametrized(module, "weight"):
            _unparametrize(module)
    return plain, ranges


def _unparametrize(module: nn.Module) -> None:
    """The module's plain weight back, on a copy: ``parametrize.remove_parametrizations`` deletes
    the weight property from the parametrized class, which a deep copy shares with the model
    it was copied from (whose weight would then be gone)."""
    parametrizations = module.get_submodule("parametrizations.weight")
    original = parametrizations.get_parameter("original")
    del module._modules["parametrizations"]
    module.__class__ = parametrize.type_before_parametrizations(module)
    module.register_parameter("weight", original)

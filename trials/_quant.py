"""The one module that knows how int8 quantization is done.

Backend: PyTorch's FX graph mode (``torch.ao.quantization.quantize_fx``). Measured on this
project's CNNs on CPU: it gives real int8 kernels and a 2-3x speedup over BatchNorm-folded fp32
in seconds, whereas torchao's pt2e flow with ``X86InductorQuantizer`` only runs int8 kernels after a
``torch.compile`` that costs more than a whole trial (see DESIGN "Measured facts"). Everything
outside this module calls :func:`prepare_ptq`, :func:`prepare_qat`, :func:`on_qat_step` and
:func:`convert`, so the flow can be swapped without touching the rest.
"""

from __future__ import annotations

import contextlib
import copy
import warnings
from collections.abc import Iterator

import torch
from torch import nn

from trials._recipe import Recipe

# torch.ao.quantization warns on import and use that it is deprecated; the warning is for us, not
# for our users, and the flow is pinned behind this module.
_QUIET_PATTERNS = (
    r".*torch\.ao\.quantization is deprecated.*",
    r".*Please use quant_min and quant_max.*",
    r".*must run observer before calling calculate_qparams.*",
    r".*TypedStorage is deprecated.*",
    r".*quantized tensor creation functions.*",
    r".*torch\.jit\.script_method. is deprecated.*",
)


@contextlib.contextmanager
def quiet() -> Iterator[None]:
    with warnings.catch_warnings():
        for pattern in _QUIET_PATTERNS:
            warnings.filterwarnings("ignore", message=pattern)
        yield


with quiet():
    from torch.ao.quantization import (
        QConfig,
        QConfigMapping,
        disable_observer,
        get_default_qat_qconfig,
        get_default_qat_qconfig_mapping,
        get_default_qconfig,
        get_default_qconfig_mapping,
    )
    from torch.ao.quantization.fake_quantize import (
        default_fused_per_channel_wt_fake_quant,
        default_fused_wt_fake_quant,
    )
    from torch.ao.quantization.observer import (
        default_per_channel_weight_observer,
        default_weight_observer,
    )
    from torch.ao.quantization.quantize_fx import convert_fx, prepare_fx, prepare_qat_fx

ExampleInputs = tuple[torch.Tensor, ...]

# Fractions of the QAT schedule after which observers, then BatchNorm statistics, are frozen:
# the last steps then train against fixed scales and folded BatchNorm, as the model will run.
OBSERVER_FREEZE_AT = 0.5
BN_FREEZE_AT = 0.75


def _qconfig(backend: str, granularity: str, qat: bool) -> QConfig | None:
    if granularity == "none":
        return None
    per_channel = granularity == "per_channel"
    if qat:
        base = get_default_qat_qconfig(backend)
        weight = (
            default_fused_per_channel_wt_fake_quant if per_channel else default_fused_wt_fake_quant
        )
    else:
        base = get_default_qconfig(backend)
        weight = default_per_channel_weight_observer if per_channel else default_weight_observer
    return QConfig(activation=base.activation, weight=weight)


def qconfig_mapping(recipe: Recipe, layers: list[str], qat: bool) -> QConfigMapping:
    """Global granularity from the recipe, overridden per layer where the recipe says so."""
    default_mapping = get_default_qat_qconfig_mapping if qat else get_default_qconfig_mapping
    mapping = default_mapping(recipe.backend)
    mapping.set_global(_qconfig(recipe.backend, recipe.granularity, qat))
    for name in layers:
        granularity = recipe.layer(name).granularity
        if granularity != recipe.granularity:
            mapping.set_module_name(name, _qconfig(recipe.backend, granularity or "none", qat))
    return mapping


def set_engine(backend: str) -> None:
    if backend not in torch.backends.quantized.supported_engines:
        raise RuntimeError(
            f"backend: quantization engine {backend!r} is not available in this PyTorch build "
            f"(available: {', '.join(torch.backends.quantized.supported_engines)})"
        )
    torch.backends.quantized.engine = backend


def prepare_ptq(
    model: nn.Module, recipe: Recipe, layers: list[str], example_inputs: ExampleInputs
) -> torch.fx.GraphModule:
    """Insert observers for post-training calibration; BatchNorm is folded into the convs."""
    set_engine(recipe.backend)
    with quiet():
        return prepare_fx(model.eval(), qconfig_mapping(recipe, layers, qat=False), example_inputs)


def prepare_qat(
    model: nn.Module, recipe: Recipe, layers: list[str], example_inputs: ExampleInputs
) -> torch.fx.GraphModule:
    """Insert fake quantization for quantization-aware training (model returned in train mode)."""
    set_engine(recipe.backend)
    with quiet():
        return prepare_qat_fx(
            model.train(), qconfig_mapping(recipe, layers, qat=True), example_inputs
        )


def on_qat_step(prepared: nn.Module, step: int, total_steps: int) -> None:
    """Freeze observers, then BatchNorm statistics, at fixed points of the QAT schedule."""
    with quiet():
        if step == int(OBSERVER_FREEZE_AT * total_steps):
            prepared.apply(disable_observer)
        if step == int(BN_FREEZE_AT * total_steps):
            prepared.apply(torch.ao.nn.intrinsic.qat.freeze_bn_stats)


def convert(prepared: torch.fx.GraphModule) -> nn.Module:
    """The int8 model, on the CPU (PyTorch's quantized kernels run there)."""
    model = copy.deepcopy(prepared).cpu().eval()
    with quiet():
        return convert_fx(model)


def fold_batchnorm(model: nn.Module) -> tuple[nn.Module, str]:
    """An fp32 copy with BatchNorm folded into the preceding convs: the fair latency baseline.

    Returns the model and how it was built: ``"bn_folded"``, or ``"eager"`` for a model that FX
    cannot trace (the int8 path needs tracing too, so such a model fails its trial anyway).
    """
    with quiet():  # the module defines TorchScript helpers at import, which warn
        from torch.fx.experimental.optimization import fuse

    model = copy.deepcopy(model).cpu().eval()
    try:
        return fuse(model), "bn_folded"
    except Exception:  # noqa: BLE001 - tracing raises many types; the fallback is recorded
        return model, "eager"

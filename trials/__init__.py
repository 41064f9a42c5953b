"""trials: the compression engine (PyTorch only).

Public API::

    from trials import Recipe, LayerSpec, load_task, run_trial, apply_recipe, finalize
    from trials import structured_prunable, structured_groups  # which layers can lose channels
    from trials import compress, save_int8, load_int8  # one recipe, its int8 model to a file
    from trials import to_portable, from_portable  # the runtime's model file, as bytes
    from trials import CHANNEL_MULTIPLE  # channel counts each runtime runs fast (round_to)
    from trials import remeasure, Speedup  # a speedup with its 95% interval
"""

from trials._channels import Removable, kept_channels
from trials._measure import (
    LatencySpec,
    LatencyStats,
    artifact_sizes,
    environment,
    example_batch,
    hardware_class,
)
from trials._pruning import enforce_masks, prunable_layers
from trials._recipe import (
    BACKENDS,
    GRANULARITIES,
    LAYER_GRANULARITIES,
    METHODS,
    ORDERS,
    RUNTIMES,
    SCHEMA_VERSION,
    SOURCE_FIELD,
    LayerSpec,
    Recipe,
    RecipeError,
    deployed_form,
)
from trials._reference import (
    Reference,
    latency_metrics,
    measure_latencies,
    measure_latency,
    reference_model,
)
from trials._remeasure import Speedup, remeasure
from trials._runtime import (
    CHANNEL_MULTIPLE,
    STANDALONE_LOAD,
    from_portable,
    has_dynamic_layers,
    runtime_version,
    to_portable,
)
from trials._runtime import (
    SUFFIXES as RUNTIME_SUFFIXES,
)
from trials._saved import load_int8, read_int8, save_int8
from trials._structured import (
    StructuredLayout,
    structured_groups,
    structured_layout,
    structured_prunable,
)
from trials._task import (
    BUILTIN_TASKS,
    AnalyticTask,
    Task,
    TaskError,
    load_task,
    report_phase,
    reporting_phases,
    resolve_task_factory,
    task_file,
)
from trials._train import TrialError
from trials._trial import (
    Compressed,
    TrialPruned,
    TrialResult,
    apply_recipe,
    compress,
    finalize,
    run_trial,
)

__all__ = [
    "BACKENDS",
    "BUILTIN_TASKS",
    "CHANNEL_MULTIPLE",
    "GRANULARITIES",
    "LAYER_GRANULARITIES",
    "METHODS",
    "ORDERS",
    "RUNTIMES",
    "RUNTIME_SUFFIXES",
    "SCHEMA_VERSION",
    "SOURCE_FIELD",
    "STANDALONE_LOAD",
    "AnalyticTask",
    "Compressed",
    "LatencySpec",
    "LatencyStats",
    "LayerSpec",
    "Recipe",
    "RecipeError",
    "Reference",
    "Removable",
    "Speedup",
    "StructuredLayout",
    "Task",
    "TaskError",
    "TrialError",
    "TrialPruned",
    "TrialResult",
    "apply_recipe",
    "artifact_sizes",
    "compress",
    "deployed_form",
    "enforce_masks",
    "environment",
    "example_batch",
    "finalize",
    "from_portable",
    "hardware_class",
    "has_dynamic_layers",
    "kept_channels",
    "latency_metrics",
    "load_int8",
    "load_task",
    "measure_latencies",
    "measure_latency",
    "prunable_layers",
    "read_int8",
    "reference_model",
    "remeasure",
    "report_phase",
    "reporting_phases",
    "resolve_task_factory",
    "run_trial",
    "runtime_version",
    "save_int8",
    "structured_groups",
    "structured_layout",
    "structured_prunable",
    "task_file",
    "to_portable",
]

"""trials: the compression engine (PyTorch only).

Public API::

    from trials import Recipe, LayerSpec, load_task, run_trial, apply_recipe, finalize
    from trials import structured_prunable, structured_groups  # which layers can lose channels
"""

from trials._measure import (
    LatencySpec,
    LatencyStats,
    environment,
    example_batch,
    from_portable,
    hardware_class,
    to_portable,
)
from trials._pruning import enforce_masks, prunable_layers
from trials._recipe import (
    BACKENDS,
    GRANULARITIES,
    LAYER_GRANULARITIES,
    METHODS,
    ORDERS,
    SCHEMA_VERSION,
    LayerSpec,
    Recipe,
    RecipeError,
)
from trials._structured import kept_channels, structured_groups, structured_prunable
from trials._task import (
    BUILTIN_TASKS,
    AnalyticTask,
    Task,
    TaskError,
    load_task,
    resolve_task_factory,
    task_file,
)
from trials._train import TrialError
from trials._trial import (
    TrialPruned,
    TrialResult,
    apply_recipe,
    finalize,
    latency_metrics,
    measure_latency,
    reference_model,
    run_trial,
)

__all__ = [
    "BACKENDS",
    "BUILTIN_TASKS",
    "GRANULARITIES",
    "LAYER_GRANULARITIES",
    "METHODS",
    "ORDERS",
    "SCHEMA_VERSION",
    "AnalyticTask",
    "LatencySpec",
    "LatencyStats",
    "LayerSpec",
    "Recipe",
    "RecipeError",
    "Task",
    "TaskError",
    "TrialError",
    "TrialPruned",
    "TrialResult",
    "apply_recipe",
    "enforce_masks",
    "environment",
    "example_batch",
    "finalize",
    "from_portable",
    "hardware_class",
    "kept_channels",
    "latency_metrics",
    "load_task",
    "measure_latency",
    "prunable_layers",
    "reference_model",
    "resolve_task_factory",
    "run_trial",
    "structured_groups",
    "structured_prunable",
    "task_file",
    "to_portable",
]

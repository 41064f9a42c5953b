"""An Optuna study over the search space of a ``synthetic`` task, built from config fields as the
driver builds it (in-process ask/tell, no Ray)."""

from __future__ import annotations

import optuna

from sweep import parse_config
from sweep._samplers import make_sampler
from sweep._space import Space
from trials.tasks.synthetic import SyntheticTask


def synthetic_study(task: SyntheticTask, **data: object) -> tuple[optuna.Study, Space]:
    """The study (accuracy max, compressed_bytes min) and space of ``task`` for the config
    fields ``data`` (``sampler``, ``search_space``, ``sampler_settings``, ...)."""
    config = parse_config({"name": "x", "task": "synthetic", **data})
    sizes = {name: int(w) for name, w in zip(task.layer_names, task.weights, strict=True)}
    space = Space(
        tuple(task.layer_names),
        config.search_space,
        config.trial,
        {},
        layer_params=sizes,
        model_params=int(sum(sizes.values())),
    )
    study = optuna.create_study(
        directions=["maximize", "minimize"], sampler=make_sampler(config, space)
    )
    return study, space

"""JSON (de)serialisation of the text columns (config, objectives, recipe, metrics, timings)."""

from __future__ import annotations

import json
from typing import Any

import numpy as np

from storage._errors import StorageError


def _default(value: object) -> Any:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def dumps(value: object, what: str) -> str:
    """Serialise ``value`` (numpy scalars and arrays allowed); StorageError names ``what``."""
    try:
        return json.dumps(value, default=_default, separators=(",", ":"))
    except (TypeError, ValueError) as exc:
        raise StorageError(f"{what} cannot be stored as JSON: {exc}") from exc


def loads(text: str | None) -> Any:
    """Parse a JSON text column; NULL reads as an empty dict."""
    if text is None:
        return {}
    return json.loads(text)

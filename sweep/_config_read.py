"""Reading a ``sweep.yaml``: YAML within limits (:mod:`sweep._yaml`), then the models of
:mod:`sweep._config`, with pydantic's errors turned into one line that names the field and the fix.
"""

from __future__ import annotations

import difflib
import re
import typing
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from sweep._config import NAME_MAX, NAME_PATTERN, NAME_RULE, ConfigError, SweepConfig
from sweep._yaml import YamlLimitError, read_yaml


def _field_path(loc: tuple[int | str, ...]) -> str:
    return ".".join(str(part) for part in loc if not str(part).startswith("function-"))


_NAME_ERRORS = ("string_too_short", "string_too_long", "string_pattern_mismatch")


def _bad_name(value: str) -> str:
    shown = repr(value) if len(value) <= 60 else f"{value[:40]!r}... ({len(value)} characters)"
    return f"{shown} is not a valid sweep name; use {NAME_RULE}"


def check_name(value: str, option: str = "--name") -> str:
    """A sweep name given on the command line, held to the rule of the config's ``name``."""
    if len(value) > NAME_MAX or not re.fullmatch(NAME_PATTERN, value):
        raise ConfigError(f"{option}: {_bad_name(value)}")
    return value


def _model_of(annotation: Any) -> type[BaseModel] | None:
    """The section model of a field's annotation (``Budget``, ``BoundsFrom | None``), if any."""
    for candidate in (annotation, *typing.get_args(annotation)):
        if isinstance(candidate, type) and issubclass(candidate, BaseModel):
            return candidate
    return None


def _section(loc: tuple[int | str, ...]) -> type[BaseModel] | None:
    """The model that validates the mapping at ``loc`` (``()``: the whole config)."""
    model: type[BaseModel] = SweepConfig
    for part in loc:
        field = model.model_fields.get(str(part))
        nested = _model_of(field.annotation) if field is not None else None
        if nested is None:
            return None
        model = nested
    return model


def _example(model: type[BaseModel]) -> str:
    """A one-field example of a section, in YAML flow style: ``{n_trials: 40}``."""
    for name, field in model.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, bool):
            return f"{{{name}: {str(default).lower()}}}"
        if isinstance(default, int | float | str):
            return f"{{{name}: {default}}}"
    return f"{{{next(iter(model.model_fields))}: ...}}"


def _unknown_field(loc: tuple[int | str, ...]) -> str:
    known = _section(loc[:-1])
    names = list(known.model_fields) if known is not None else []
    close = difflib.get_close_matches(str(loc[-1]), names, n=1)
    if close:
        return f"unknown field; did you mean {close[0]!r}?"
    return "unknown field; check its spelling against the configuration reference"


def parse_config(data: object, source: str = "config") -> SweepConfig:
    """Validate a parsed mapping; a bad field raises :class:`ConfigError` with one line that
    names it (``source`` prefixes the message, e.g. the file name)."""
    if not isinstance(data, dict):
        raise ConfigError(f"{source}: expected a YAML mapping of fields (name, task, ...)")
    try:
        return SweepConfig.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        loc = tuple(error["loc"])
        where = _field_path(loc) or "config"
        message = error["msg"]
        section = _section(loc) if error["type"] == "model_type" else None
        if error["type"] == "value_error":  # our own validators: the message without pydantic's
            message = str(error.get("ctx", {}).get("error", message))
            if not error["loc"] and re.match(r"^[a-z_.]+: ", message):  # it names its field
                where, message = message.split(": ", 1)
        if error["type"] == "extra_forbidden":
            message = _unknown_field(loc)
        elif error["type"] == "missing":
            message = "required field is missing"
        elif section is not None:  # a scalar or list where a section belongs
            message = f"expected a mapping (e.g. {loc[-1]}: {_example(section)})"
        elif loc == ("name",) and error["type"] in _NAME_ERRORS:
            message = _bad_name(str(error["input"]))
        raise ConfigError(f"{source}: {where}: {message}") from None


def load_config(path: str | Path) -> SweepConfig:
    """Read and validate a ``sweep.yaml``; unreadable files, YAML syntax and bad fields raise
    :class:`ConfigError` with one line."""
    path = Path(path)
    try:
        text = path.read_text()
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read the config file ({exc.strerror})") from None
    try:
        data = read_yaml(text)
    except YamlLimitError as exc:
        raise ConfigError(f"{path}: {exc}") from None
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None)
        what = f" ({problem})" if problem else ""
        raise ConfigError(
            f"{path}: not valid YAML{where}{what}; fix the syntax there (a value holding "
            "': ' or '#' needs quotes)"
        ) from None
    return parse_config(data, str(path))

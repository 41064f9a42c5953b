"""Listings as a rich table, CSV, JSON (one object per row, ``recipe`` as an object) or
Parquet, on the terminal or into a file (``-o``)."""

from __future__ import annotations

import errno
import json
import math
import os
import secrets
from collections.abc import Callable, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any

import pandas as pd
from rich.console import Console
from rich.table import Table
from rich.text import Text

FORMATS = ("table", "csv", "json", "parquet")
TABLE_COLUMNS = (
    "number",
    "state",
    "accuracy",
    "accuracy_drop",
    "compressed_bytes",
    "size_bytes",
    "latency_ms",
    "speedup",
    "sparsity",
    "order",
    "granularity",
)
# Columns that only make sense in a listing as nested objects (JSON) or not at all (table).
NESTED = ("recipe", "metrics", "timings")


def _plain(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if value is pd.NaT:
        return None
    if isinstance(value, datetime):  # pandas Timestamps among them
        return value.isoformat()
    if hasattr(value, "item") and not isinstance(value, dict | list | str):
        return _plain(value.item())
    if value is pd.NaT or (not isinstance(value, dict | list | str) and pd.isna(value)):
        return None
    return value


def records(frame: pd.DataFrame) -> list[dict[str, Any]]:
    return [{str(k): _plain(v) for k, v in row.items()} for row in frame.to_dict(orient="records")]


def _cell(name: str, value: Any) -> str:
    value = _plain(value)
    name = name.split("[")[0]  # "amount_min[other-sweep]" formats like "amount_min"
    if value is None:
        return "-"
    if name.startswith("amount"):
        return f"{value:.3f}"
    if name in ("accuracy", "accuracy_drop", "sparsity", "zero_fraction", "removed_fraction"):
        return f"{100 * value:.2f}%"
    if name.endswith("_bytes"):
        return f"{int(value):,}"
    if name == "latency_ms":
        return f"{value:.3f}"
    if name == "speedup":  # below 1 (as shown): slower than the fp32 model, said in words
        shown = f"{value:.2f}x"
        return shown if round(value, 2) >= 1.0 else f"{shown} slower"
    return str(value)


class OutputError(Exception):
    """A listing that cannot be written as asked; one line that says how to fix it."""


class DiskFullError(Exception):
    """An output file (listing, recipe, model, plot) not written for lack of disk space, or
    past the file size limit: not the user's mistake (exit 1)."""


DISK_FULL = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
# Writes one file at the path it is given (a temporary name beside the target).
Writer = Callable[[Path], object]


def write_error(exc: OSError, path: Path, option: str = "-o") -> Exception:
    """The one-line error for a failed write of ``path``: a full disk (or a reached file size
    limit) is :class:`DiskFullError`, anything else the user's :class:`OutputError`."""
    if exc.errno in DISK_FULL:
        return DiskFullError(
            f"{option}: cannot write {path}: the disk is full or the file reached its size "
            f"limit ({exc.strerror}); free disk space or write to another disk"
        )
    return OutputError(f"{option}: cannot write {path}: {exc.strerror or exc}")


def check_output_file(path: Path, option: str = "-o", example: str = "output") -> None:
    """Fail before any work when ``path`` cannot become a file: it is a folder, or its folder
    does not exist. ``example``: a file name to suggest in a folder."""
    if path.is_dir():
        raise OutputError(
            f"{option}: cannot write {path}: it is a folder; give a file in it, e.g. "
            f"{path / example}"
        )
    if not path.parent.is_dir():
        raise OutputError(
            f"{option}: cannot write {path}: the folder {path.parent} does not exist; create it "
            "or write elsewhere"
        )


def write_all(writes: Sequence[tuple[Path, Writer]], option: str = "-o") -> None:
    """Write every file, each through a temporary file in its own folder, then move them all
    into place: a failure (a full disk) leaves no partial file and replaces none. A target that
    exists and is no regular file (``/dev/stdout``, a named pipe) is written directly."""
    for path, _ in writes:
        check_output_file(path, option)
    temporaries: list[Path] = []
    current = writes[0][0] if writes else Path()
    try:
        moves: list[tuple[Path, Path, Path]] = []  # temporary, target, as given
        for path, write in writes:
            current = path
            if path.exists() and not path.is_file():
                write(path)
                continue
            target = path.resolve()
            temporary = target.with_name(f".{target.name}.{secrets.token_hex(4)}.tmp")
            # O_EXCL: a new file of our own; mode 0o666 so the umask applies as to any file.
            os.close(os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
            temporaries.append(temporary)
            write(temporary)
            moves.append((temporary, target, path))
        for temporary, target, path in moves:
            current = path
            os.replace(temporary, target)
    except OSError as exc:
        _remove(temporaries)
        raise write_error(exc, current, option) from None
    except BaseException:
        _remove(temporaries)
        raise


def write_atomically(path: Path, write: Writer, option: str = "-o") -> None:
    """``write`` one file through a temporary file in the same folder (see :func:`write_all`)."""
    write_all([(path, write)], option)


def _remove(paths: Sequence[Path]) -> None:
    for path in paths:
        path.unlink(missing_ok=True)  # already moved into place, or never created


def resolve_format(fmt: str | None, output: Path | None) -> str:
    """``--format``, or the ``-o`` file's extension (.csv, .json, .parquet), else table."""
    if fmt is None:
        suffix = output.suffix.lower().lstrip(".") if output is not None else ""
        fmt = suffix if suffix in FORMATS and suffix != "table" else "table"
    if fmt not in FORMATS:
        raise OutputError(f"--format: {fmt!r} is not one of {', '.join(FORMATS)}")
    if fmt == "parquet" and output is None:
        raise OutputError("--format parquet writes a binary file: add -o FILE.parquet")
    return fmt


def _flat(frame: pd.DataFrame) -> pd.DataFrame:
    """Nested columns (recipe, metrics, timings) as JSON text, for CSV and Parquet."""
    flat = frame.copy()
    for name in NESTED:
        if name in flat:
            flat[name] = flat[name].map(lambda v: json.dumps(v, sort_keys=True))
    return flat


def hardware_classes(frame: pd.DataFrame) -> list[str]:
    """The hardware classes (``measured_on``) that the latencies of ``frame`` were measured on."""
    if "measured_on" not in frame:
        return []
    return sorted(str(v) for v in frame["measured_on"].dropna().unique())


def mixed_hardware_note(frame: pd.DataFrame) -> str | None:
    """One line saying that ``frame``'s latencies come from several hardware classes, if so:
    they compare only within one, and ``--where`` keeps one."""
    classes = hardware_classes(frame)
    if len(classes) < 2:
        return None
    return (
        f"note: these latencies were measured on {len(classes)} hardware classes and compare "
        f'only within one (column measured_on); keep one with --where "measured_on == '
        f"'{classes[0]}'\""
    )


def table(frame: pd.DataFrame, title: str | None, columns: Sequence[str] | None) -> Table:
    """``frame`` as a rich table of ``columns`` (default: the trial columns, and
    ``measured_on`` when the latencies come from several hardware classes), cells formatted."""
    table = Table(title=title)
    names = list(columns) if columns is not None else [c for c in TABLE_COLUMNS if c in frame]
    if columns is None and len(hardware_classes(frame)) > 1:
        names.append("measured_on")
    for name in names:
        left = name in ("state", "order", "granularity", "layer", "name", "status", "best")
        table.add_column(Text(name), justify="left" if left else "right")
    for row in frame.to_dict(orient="records"):  # Text: "[...]" in names is not rich markup
        table.add_row(*(Text(_shown(name, row)) for name in names))
    return table


def _shown(name: str, row: Mapping[Any, Any]) -> str:
    """A table cell; a speedup timed again shows its 95% interval: ``3.30x (3.10-3.50)``."""
    cell = _cell(name, row[name])
    low, high = _plain(row.get("speedup_low")), _plain(row.get("speedup_high"))
    if name != "speedup" or low is None or high is None:
        return cell
    return f"{cell} ({low:.2f}-{high:.2f})"


def _parquet(frame: pd.DataFrame, output: Path) -> None:
    try:
        _flat(frame).to_parquet(output, index=False)
    except ImportError as exc:
        raise OutputError(
            f"--format parquet needs pyarrow ({exc}); install it: pip install pyarrow"
        ) from None


def _text(frame: pd.DataFrame, fmt: str) -> str:
    if fmt == "json":
        return json.dumps(records(frame), indent=2)
    return _flat(frame).to_csv(index=False).rstrip("\n")


def render(
    frame: pd.DataFrame,
    fmt: str,
    console: Console,
    title: str | None = None,
    *,
    output: Path | None = None,
    columns: Sequence[str] | None = None,
) -> None:
    """Print ``frame`` on ``console``, or write it to ``output``.

    The table shows ``columns`` (default: the trial columns in :data:`TABLE_COLUMNS`); CSV,
    JSON and Parquet hold every column, nested ones as objects (JSON) or JSON text.
    """
    if output is None:
        if fmt == "parquet":
            raise OutputError("--format parquet writes a binary file: add -o FILE.parquet")
        if fmt == "table":
            console.print(table(frame, title, columns))
        else:
            console.out(_text(frame, fmt), highlight=False)
        return

    def write(path: Path) -> None:
        if fmt == "parquet":
            _parquet(frame, path)
        elif fmt == "table":
            with path.open("w", encoding="utf-8") as file:
                Console(file=file, width=200, color_system=None).print(table(frame, title, columns))
        else:
            path.write_text(_text(frame, fmt) + "\n", encoding="utf-8")

    write_atomically(output, write)


def side_by_side(
    left: pd.DataFrame, left_name: str, right: pd.DataFrame, right_name: str
) -> pd.DataFrame:
    """Two layer summaries joined on ``layer`` (layers of both only, in ``left``'s order), each
    other column once per sweep: ``amount_min[left_name]``, ``amount_min[right_name]``, ..."""
    values = [column for column in left.columns if column != "layer"]
    merged = left.merge(right, on="layer", how="inner", suffixes=("[l]", "[r]"), sort=False)
    columns = {"layer": merged["layer"]}
    for column in values:
        columns[f"{column}[{left_name}]"] = merged[f"{column}[l]"]
        columns[f"{column}[{right_name}]"] = merged[f"{column}[r]"]
    return pd.DataFrame(columns)

"""Parser for ``--where`` filters, e.g. ``accuracy >= 0.97 and order == 'prune_qat'``.

Grammar (keywords case-insensitive)::

    expression := clause ("and" clause)*
    clause     := NAME OP VALUE
    OP         := "==" | "!=" | ">=" | "<=" | ">" | "<"
    VALUE      := number | 'single-quoted' | "double-quoted"

The result is a list of SQLAlchemy column expressions with bound parameters, never SQL text.
``!=`` also matches NULL (a missing value is "not equal" to anything).

Limits: at most :data:`MAX_WHERE_TERMS` comparisons and :data:`MAX_WHERE_CHARS` characters over
all expressions of one query. Databases refuse deep expression trees (SQLite's is 1,000 deep) with
errors that name no option; no useful filter of a sweep's trials comes near these bounds.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, Final

from sqlalchemy import ColumnElement, Float, Integer, or_

from storage._errors import WhereError
from storage._models import METRIC_COLUMNS, TRIAL_STATES, TrialModel, TrialState

WHERE_FIELDS: Final[tuple[str, ...]] = (
    *METRIC_COLUMNS,
    "order",
    "granularity",
    "state",
    "number",
    "queued_s",
    "run_s",
    "duration_s",
    "attempt",
    "worker",
    "measured_on",
    "latency_node",
)
"""Names a ``--where`` clause may use: ``trials`` columns, compared as their SQL type says."""

MAX_WHERE_TERMS: Final = 100
MAX_WHERE_CHARS: Final = 10_000

_OPERATORS: Final[dict[str, Callable[[Any, Any], Any]]] = {
    "==": operator.eq,
    "!=": operator.ne,
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}
_TOKEN: Final = re.compile(
    r"""
    (?P<space>\s+)
    | (?P<number>[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?(?![\w.]))
    | (?P<name>[A-Za-z_][A-Za-z0-9_]*)
    | (?P<op>==|!=|>=|<=|>|<)
    | (?P<string>'[^']*'|"[^"]*")
    """,
    re.VERBOSE,
)


@dataclass(frozen=True)
class _Token:
    kind: str  # "number" | "name" | "op" | "string"
    text: str
    position: int


def _short(text: str, limit: int = 40) -> str:
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _fail(expression: str, problem: str, *, names: bool = False) -> WhereError:
    """One line: the expression (shortened), the problem, and the names (when a name is wrong)
    or the grammar (otherwise)."""
    hint = (
        f"names: {', '.join(WHERE_FIELDS)}"
        if names
        else f"expected NAME OP VALUE joined with 'and', OP one of {' '.join(_OPERATORS)}"
    )
    return WhereError(f"invalid --where expression {_short(expression, 80)!r}: {problem}; {hint}")


def _tokenize(expression: str) -> Iterator[_Token]:
    """Yield tokens lazily, so errors are reported in reading order."""
    position = 0
    while position < len(expression):
        match = _TOKEN.match(expression, position)
        if match is None:
            rest = expression[position:]
            if rest[0] in "'\"":
                problem = f"unbalanced quote at position {position}: {rest[:20]!r}"
            else:
                problem = f"unexpected {rest.split()[0][:20]!r} at position {position}"
            raise _fail(expression, problem)
        kind = match.lastgroup
        if kind is not None and kind != "space":
            yield _Token(kind, match.group(), position)
        position = match.end()


def _next(expression: str, tokens: Iterator[_Token], wanted: str, *seen: _Token) -> _Token:
    token = next(tokens, None)
    if token is None:
        got = " ".join(token.text for token in seen)
        raise _fail(expression, f"incomplete comparison {_short(got)!r}, expected {wanted} next")
    return token


def _literal(token: _Token) -> int | float | str:
    if token.kind == "string":
        return token.text[1:-1]
    if token.text.lstrip("+-").isdigit():
        return int(token.text)  # exact, also for byte counts beyond 2**53
    return float(token.text)


def _clause(expression: str, name: _Token, tokens: Iterator[_Token]) -> ColumnElement[bool]:
    if name.kind != "name":
        raise _fail(expression, f"expected a column name, got {_short(name.text)!r}", names=True)
    if name.text not in WHERE_FIELDS:
        raise _fail(expression, f"unknown name {_short(name.text)!r}", names=True)
    op = _next(expression, tokens, "an operator", name)
    if op.kind != "op":
        raise _fail(
            expression,
            f"expected an operator after {name.text!r}, got {op.text!r}",
        )
    value = _next(expression, tokens, "a value", name, op)
    if value.kind not in ("number", "string"):
        raise _fail(expression, f"expected a number or quoted string, got {_short(value.text)!r}")
    literal = _literal(value)
    column = TrialModel.__table__.c[name.text]
    if isinstance(column.type, (Integer, Float)):
        if isinstance(literal, str):
            raise _fail(
                expression,
                f"{name.text!r} is numeric, cannot compare it with {value.text}",
            )
    else:
        if not isinstance(literal, str):
            raise _fail(
                expression,
                f"{name.text!r} holds text, quote the value: {_short(value.text)!r}",
            )
        if op.text not in ("==", "!="):
            raise _fail(expression, f"{name.text!r} holds text, only == and != apply")
        if name.text == "state":
            if literal not in TRIAL_STATES:
                states = ", ".join(TRIAL_STATES)
                raise _fail(
                    expression, f"unknown state {_short(str(literal))!r} (states: {states})"
                )
            return _OPERATORS[op.text](column, TrialState[literal])
    condition = _OPERATORS[op.text](column, literal)
    if op.text == "!=" and column.nullable:
        return or_(condition, column.is_(None))
    return condition


def _parse_one(expression: str) -> list[ColumnElement[bool]]:
    if not isinstance(expression, str):
        raise WhereError(f"--where expressions must be strings, got {type(expression).__name__}")
    tokens = _tokenize(expression)
    first = next(tokens, None)
    if first is None:
        raise _fail(expression, "it is empty")
    clauses: list[ColumnElement[bool]] = []
    while True:
        clauses.append(_clause(expression, first, tokens))
        joiner = next(tokens, None)
        if joiner is None:
            return clauses
        if joiner.kind != "name" or joiner.text.lower() != "and":
            raise _fail(
                expression, f"expected 'and' at position {joiner.position}, got {joiner.text!r}"
            )
        first = next(tokens, None)
        if first is None:
            raise _fail(expression, "nothing after the final 'and'")


def parse_where(where: Sequence[str] | str | None) -> list[ColumnElement[bool]]:
    """Parse one expression or a list of them (all AND-ed); raises WhereError."""
    if where is None:
        return []
    expressions = [where] if isinstance(where, str) else list(where)
    length = sum(len(e) for e in expressions if isinstance(e, str))
    if length > MAX_WHERE_CHARS:
        raise WhereError(
            f"--where: {length:,} characters, over the limit of {MAX_WHERE_CHARS:,}; "
            "filter with fewer, shorter comparisons"
        )
    clauses: list[ColumnElement[bool]] = []
    for expression in expressions:
        clauses.extend(_parse_one(expression))
        if len(clauses) > MAX_WHERE_TERMS:
            raise WhereError(
                f"--where: more than {MAX_WHERE_TERMS} comparisons, over the limit; "
                "filter with fewer (a range needs two: x >= a and x <= b)"
            )
    return clauses

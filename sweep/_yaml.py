"""YAML read with limits: a config cannot take the machine's memory, stack or the user's intent.

PyYAML's ``safe_load`` builds whatever the text describes. Aliases make that cheap to abuse: a
few hundred bytes of nested anchors ("billion laughs") describe 10^9 nodes; loading them shares
the objects, but the first ``json.dumps`` or ``yaml.dump`` of the config (every launch stores it)
expands them all and is killed for memory. Deep nesting ends in a ``RecursionError`` traceback,
and a duplicate key silently keeps the last value. So a document is read in three passes:

1. its events, iteratively: nesting deeper than :data:`MAX_DEPTH` is refused before PyYAML's
   recursive composer ever sees it;
2. its node graph: the size it *expands* to (each alias counted as the nodes it stands for,
   memoized, so the count itself is cheap) is refused past :data:`MAX_NODES`, and a mapping that
   repeats a key is refused, with the line of the repeat;
3. only then its Python objects, with PyYAML's safe constructor.

Every refusal is a :class:`YamlLimitError` with one line naming where and the limit.
"""

from __future__ import annotations

from typing import Any

import yaml

MAX_DEPTH = 64  # a sweep.yaml nests 4 deep; task settings rarely 5
MAX_NODES = 100_000  # a config with every layer of a 300-layer model named uses ~3,000


class YamlLimitError(ValueError):
    """A YAML document past a limit, or with a duplicate key; one line."""


def _line(node_or_event: Any) -> int:
    return int(node_or_event.start_mark.line) + 1


def _check_depth(text: str) -> None:
    depth = 0
    for event in yaml.parse(text, Loader=yaml.SafeLoader):
        if isinstance(event, yaml.CollectionStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise YamlLimitError(
                    f"line {_line(event)}: nested more than {MAX_DEPTH} levels deep; "
                    "a config needs a few"
                )
        elif isinstance(event, yaml.CollectionEndEvent):
            depth -= 1


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        _check_keys(node)
        return [part for pair in node.value for part in pair]
    return []


def _check_keys(node: yaml.MappingNode) -> None:
    seen: dict[str, int] = {}
    for key, _ in node.value:
        if not isinstance(key, yaml.ScalarNode) or key.tag == "tag:yaml.org,2002:merge":
            continue
        if key.value in seen:
            raise YamlLimitError(
                f"line {_line(key)}: duplicate key {key.value!r} (first on line "
                f"{seen[key.value]}); keep one"
            )
        seen[key.value] = _line(key)


def _measure(root: yaml.Node) -> tuple[int, int]:
    """How many nodes ``root`` stands for once every alias is expanded, and how deep it nests
    then. Iterative and memoized by node identity (an alias *is* the node its anchor names), so
    neither the count nor the stack grows with the expansion."""
    sizes: dict[int, tuple[int, int]] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        if id(node) in sizes:
            continue
        children = _children(node)
        if children_done or not children:
            size = 1 + sum(sizes[id(child)][0] for child in children)
            depth = 1 + max((sizes[id(child)][1] for child in children), default=0)
            if depth > MAX_DEPTH:
                raise YamlLimitError(
                    f"line {_line(node)}: nests more than {MAX_DEPTH} levels deep through its "
                    "aliases; a config needs a few"
                )
            sizes[id(node)] = (size, depth)
        else:
            stack.append((node, True))
            stack.extend((child, False) for child in children if id(child) not in sizes)
    return sizes[id(root)]


def read_yaml(text: str) -> Any:
    """``text`` as Python objects, like ``yaml.safe_load``, within the limits above. Raises
    :class:`YamlLimitError` past a limit and ``yaml.YAMLError`` for bad syntax."""
    _check_depth(text)
    node = yaml.compose(text, Loader=yaml.SafeLoader)
    if node is None:
        return None
    size, _ = _measure(node)
    if size > MAX_NODES:
        raise YamlLimitError(
            f"expands to {size:,} values through its aliases (&anchor / *alias), over the limit "
            f"of {MAX_NODES:,}; write the values out"
        )
    loader = yaml.SafeLoader(text)
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()

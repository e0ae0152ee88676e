"""YAML as users write it (grid files, overrides, filters), read safely and within bounds.

PyYAML's safe loader with YAML 1.2's float syntax (``1e-4`` is a number), refusing before anything is built
from it a document that expands past :data:`MAX_YAML_NODES` values (an alias counts at every use: nine nested
anchors of ten aliases each are 10^9 nodes in a 300-byte file) or :data:`MAX_YAML_DEPTH` levels, that is
recursive, or that repeats a key in one mapping.
"""

from __future__ import annotations

import re
from typing import Any

import yaml

from dfqbench.errors import DfqbenchError
from dfqbench.specs.validate import check_finite


class _Yaml12FloatLoader(yaml.SafeLoader):
    """PyYAML's safe loader (YAML 1.1) plus YAML 1.2's float syntax, so that 1e-4 and 1e30 are numbers."""


_Yaml12FloatLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?(\.[0-9]+|[0-9]+(\.[0-9]*)?)[eE][-+]?[0-9]+$"),
    list("-+0123456789."))


# Bounds of a YAML document as users write it (grid files, overrides, filters): the nodes it expands to, an
# alias counted again at every use (nine nested anchors of ten aliases each are 10^9 nodes in a 300-byte
# file), and its nesting depth.
MAX_YAML_NODES = 100_000
MAX_YAML_DEPTH = 64


class YamlRefused(yaml.YAMLError):
    """A YAML document that :func:`read_yaml` refuses: over :data:`MAX_YAML_NODES` expanded nodes or
    :data:`MAX_YAML_DEPTH` levels, recursive, with a key given twice in one mapping (YAML forbids it; PyYAML
    would silently keep the last value), or holding a value Python cannot read (an integer of > 4,300 digits)."""


def _check_yaml_size(root: yaml.Node) -> None:
    """Refuse a composed document whose expansion (every alias expanded) has more than :data:`MAX_YAML_NODES`
    values or is deeper than :data:`MAX_YAML_DEPTH`, or that is recursive or repeats a key, without constructing
    it: a depth-first walk that sizes each distinct node once, so its time is linear in the file."""
    sizes: dict[int, int] = {}
    heights: dict[int, int] = {}
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    open_nodes: set[int] = set()
    while stack:
        node, children_done = stack.pop()
        if isinstance(node, yaml.ScalarNode):
            sizes[id(node)], heights[id(node)] = 1, 1
            continue
        children = [n for pair in node.value for n in pair] if isinstance(node, yaml.MappingNode) else node.value
        if children_done:
            open_nodes.discard(id(node))
            sizes[id(node)] = 1 + sum(sizes[id(c)] for c in children)
            heights[id(node)] = 1 + max((heights[id(c)] for c in children), default=0)
            if sizes[id(node)] > MAX_YAML_NODES:
                raise YamlRefused(f"expands to more than {MAX_YAML_NODES:,} values (an alias counts at every use)")
            if heights[id(node)] > MAX_YAML_DEPTH:
                raise YamlRefused(f"nested deeper than {MAX_YAML_DEPTH} levels")
            continue
        if id(node) in sizes:
            continue
        if id(node) in open_nodes:
            raise YamlRefused("an alias refers to a node that contains it (a recursive structure)")
        if isinstance(node, yaml.MappingNode):
            _check_unique_keys(node)
        open_nodes.add(id(node))
        stack.append((node, True))
        stack.extend((child, False) for child in children if id(child) not in sizes)
        if len(open_nodes) > MAX_YAML_DEPTH:  # the path from the root: refuse before walking further down
            raise YamlRefused(f"nested deeper than {MAX_YAML_DEPTH} levels")


def _check_unique_keys(node: yaml.MappingNode) -> None:
    """Refuse a mapping that gives one plain key twice (``epochs: 3`` … ``epochs: 300``)."""
    seen: set[tuple[str, str]] = set()
    for key, _ in node.value:
        if isinstance(key, yaml.ScalarNode):
            if (key.tag, key.value) in seen:
                raise YamlRefused(f"the key {key.value[:60]!r} is given twice in one mapping "
                                  f"(line {key.start_mark.line + 1})")
            seen.add((key.tag, key.value))


def read_yaml(text: str) -> Any:
    """YAML as users write it in overrides, filters and grid files (safe; ``1e-4`` is a float), bounded: a
    document that would expand past :data:`MAX_YAML_NODES` values or :data:`MAX_YAML_DEPTH` levels, or that
    is recursive, raises :class:`YamlRefused` (a ``yaml.YAMLError``) before anything is built from it."""
    loader = _Yaml12FloatLoader(text)
    try:
        try:
            node = loader.get_single_node()
        except RecursionError:
            raise YamlRefused(f"nested deeper than {MAX_YAML_DEPTH} levels") from None
        if node is None:
            return None
        _check_yaml_size(node)
        try:
            return loader.construct_document(node)
        except ValueError as exc:  # an integer of more than 4,300 digits (Python's int-from-text limit)
            raise YamlRefused(f"a value cannot be read ({str(exc).split(';')[0]})") from None
    finally:
        loader.dispose()


def read_flag_value(flag: str, text: str) -> Any:
    """One value of a command-line filter (``--only``, ``--where``): YAML read by :func:`read_yaml` (a refused
    document is one line); text that is not YAML, or uses a tag, stays the plain string it is; NaN and
    infinity, which equal nothing, are refused."""
    try:
        value = read_yaml(text)
    except YamlRefused as exc:
        raise DfqbenchError(f"invalid {flag} value {text[:60]!r}: {exc}") from None
    except yaml.YAMLError:
        return text
    check_finite(flag, value)
    return value

"""YAML that users write (Markdown front matter, training and gate configs, `--set` values), read within bounds.

`yaml.safe_load` keeps an alias as one more reference to its anchor's node, so 165 bytes of nested aliases load
small and fast, then expand to gigabytes as soon as anything walks the result (`str()`, a repr in an error, JSON);
deep nesting exhausts Python's recursion limit. `load_yaml` measures the document with every alias expanded and
refuses it before any value is built.
"""

from __future__ import annotations

from typing import Any

import yaml

from engine.core.errors import first_line

MAX_CHARS = 100_000  # a front matter block or a training config is a few hundred characters
MAX_DEPTH = 50  # levels of nested mappings and lists, aliases expanded
MAX_EXPANDED = 1_000_000  # values plus scalar characters, aliases expanded: room for merge keys, none for a bomb


class YamlError(ValueError):
    """The text is not YAML that can be read within the bounds; the message says which problem."""


def load_yaml(text: str) -> Any:
    """`yaml.safe_load` for text from users; YamlError for invalid YAML, too long or too deep text, alias bombs and
    recursive aliases."""
    if len(text) > MAX_CHARS:
        raise YamlError(f"the YAML is {len(text):,} characters long, more than the {MAX_CHARS:,} allowed")
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    except yaml.YAMLError as error:
        raise YamlError(f"not valid YAML ({first_line(error)})") from None
    finally:
        loader.dispose()


class _BoundedLoader(yaml.SafeLoader):
    """SafeLoader that stops composing past MAX_DEPTH and measures each document before constructing it."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_DEPTH:
                raise YamlError(f"the YAML is nested more than {MAX_DEPTH} levels deep")
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _measure(node, {}, set())
        return node


def _measure(node: yaml.Node, measured: dict[int, tuple[int, int]], open_nodes: set[int]) -> tuple[int, int]:
    """(size, depth) of a node with its aliases expanded, each shared node measured once.

    An anchor is complete before any alias to it in document order, and so is its measure: the recursion never
    goes deeper than the composer did.
    """
    key = id(node)
    if key in measured:
        return measured[key]
    if key in open_nodes:
        raise YamlError("an alias refers to a mapping or list that contains it (a recursive alias)")
    if isinstance(node, yaml.ScalarNode):
        size, depth = 1 + len(node.value), 1
    else:
        open_nodes.add(key)
        children = [child for pair in node.value for child in pair] if isinstance(node, yaml.MappingNode) else node.value
        sizes, depths = zip(*(_measure(child, measured, open_nodes) for child in children)) if children else ((), ())
        open_nodes.discard(key)
        size, depth = 1 + sum(sizes), 1 + max(depths, default=0)
    if size > MAX_EXPANDED:
        raise YamlError(f"the YAML's aliases expand to more than {MAX_EXPANDED:,} values and characters (an alias bomb?); "
                        "write the values out instead")
    if depth > MAX_DEPTH:
        raise YamlError(f"the YAML's aliases nest it more than {MAX_DEPTH} levels deep")
    measured[key] = (size, depth)
    return size, depth

"""Reading routes.yaml: PyYAML's safe loader, with two changes a routes file needs.

- YAML 1.2 booleans: only true/false. YAML 1.1 reads ``on``, ``off``, ``yes`` and ``no``
  as booleans, which would turn the contract's ``retry: {on: [...]}`` key into ``True``.
- A key given twice in one mapping (two ``demo:`` routes) is an error with its place,
  where PyYAML would let the last one win without a word.
"""

from __future__ import annotations

import re
from typing import Any

import yaml
from yaml.nodes import MappingNode, Node, ScalarNode, SequenceNode


class RoutesLoader(yaml.SafeLoader):
    """``yaml.SafeLoader`` with YAML 1.2 booleans that also finds duplicate keys."""

    def document(self) -> tuple[Any, list[str]]:
        """The file's one document, and every key given twice in it (with path and lines)."""
        node = self.get_single_node()
        if node is None:
            return None, []
        duplicates: list[str] = []
        self._find_duplicates(node, [], duplicates, set())
        return self.construct_document(node), duplicates

    def _find_duplicates(
        self, node: Node, path: list[str | int], out: list[str], seen: set[int]
    ) -> None:
        # An alias is the node it names: walk each node once, so anchors cannot blow up.
        if id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, SequenceNode):
            for i, item in enumerate(node.value):
                self._find_duplicates(item, [*path, i], out, seen)
        elif isinstance(node, MappingNode):
            first: dict[tuple[str, str], int] = {}
            for key_node, value_node in node.value:
                if not isinstance(key_node, ScalarNode):
                    continue
                key = key_node.value
                line = key_node.start_mark.line + 1
                if key == "<<" and key_node.tag == "tag:yaml.org,2002:merge":
                    continue  # merged keys may be overridden: that is what merging is for
                where = (key_node.tag, key)
                if where in first:
                    loc = yaml_path([*path, key])
                    out.append(f"{loc}: duplicate key (line {line}; first at line {first[where]})")
                else:
                    first[where] = line
                self._find_duplicates(value_node, [*path, key], out, seen)


RoutesLoader.yaml_implicit_resolvers = {
    first: [(tag, rx) for tag, rx in resolvers if tag != "tag:yaml.org,2002:bool"]
    for first, resolvers in yaml.SafeLoader.yaml_implicit_resolvers.items()
}
RoutesLoader.add_implicit_resolver(
    "tag:yaml.org,2002:bool",
    re.compile(r"^(?:true|True|TRUE|false|False|FALSE)$"),
    list("tTfF"),
)


def read(data: bytes) -> tuple[Any, list[str]]:
    """The document in ``data`` and its duplicate keys; raises ``yaml.YAMLError``."""
    loader = RoutesLoader(data)
    try:
        return loader.document()
    finally:
        loader.dispose()


def yaml_path(parts: list[str | int] | tuple[str | int, ...]) -> str:
    """``routes.demo.endpoints[2].provider``: where a value sits in the file."""
    out = ""
    for part in parts:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out

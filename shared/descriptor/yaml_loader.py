"""A bounded, safe YAML loader for documents uploaded by users (task descriptors).

``yaml.safe_load`` constructs no arbitrary objects, but it happily loads a billion-laughs document:
PyYAML shares aliased nodes, so the load is cheap and the explosion happens later, when the result
is walked (validated, encoded as JSON). :func:`load_yaml` refuses, before construction:

* documents larger than :data:`MAX_BYTES` or not UTF-8;
* more than :data:`MAX_EXPANDED_NODES` nodes once every alias is expanded, and recursive aliases;
* nesting deeper than :data:`MAX_DEPTH` (PyYAML composes recursively);
* duplicate mapping keys (upstream's Jackson keeps the last one silently; a duplicated parameter
  is a mistake worth reporting).

Timestamps are not resolved: ``2024-02-23T18:00:00Z`` stays a string, as Jackson's YAML reader
(upstream) leaves it, so a date-time validates the same whether it is quoted or not.
"""

from __future__ import annotations

import re
from typing import Any, Final

import yaml

MAX_BYTES: Final = 1024 * 1024
MAX_EXPANDED_NODES: Final = 100_000
MAX_DEPTH: Final = 64


class YamlRejected(Exception):
    """The document cannot be loaded; ``reason`` says why, for the user."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _without_timestamps(
    resolvers: dict[Any, list[tuple[str, re.Pattern[str]]]],
) -> dict[Any, list[tuple[str, re.Pattern[str]]]]:
    return {
        first: [(tag, rx) for tag, rx in entries if tag != "tag:yaml.org,2002:timestamp"]
        for first, entries in resolvers.items()
    }


def _refusal(problem: str, mark: Any) -> yaml.composer.ComposerError:
    return yaml.composer.ComposerError(None, None, problem, mark)


class _BoundedLoader(yaml.SafeLoader):
    """Computes each node's expanded weight as it is composed and stops past the limits."""

    yaml_implicit_resolvers = _without_timestamps(yaml.SafeLoader.yaml_implicit_resolvers)

    def __init__(self, stream: str) -> None:
        super().__init__(stream)
        self._weights: dict[int, int] = {}
        self._depth = 0

    def compose_node(self, parent: yaml.Node | None, index: int) -> yaml.Node | None:
        if self.check_event(yaml.AliasEvent):
            event: yaml.AliasEvent = self.peek_event()  # type: ignore[no-untyped-call]
            target = self.anchors.get(event.anchor)
            # an anchor still being composed has no weight yet: the alias is inside it
            if target is not None and id(target) not in self._weights:
                raise _refusal(f"recursive alias *{event.anchor}", event.start_mark)
            return super().compose_node(parent, index)
        self._depth += 1
        if self._depth > MAX_DEPTH:
            start: yaml.Event = self.peek_event()  # type: ignore[no-untyped-call]
            raise _refusal(f"nesting deeper than {MAX_DEPTH} levels", start.start_mark)
        node = super().compose_node(parent, index)
        self._depth -= 1
        if node is None:
            return None
        weight = 1
        if isinstance(node, yaml.SequenceNode):
            weight += sum(self._weights[id(child)] for child in node.value)
        elif isinstance(node, yaml.MappingNode):
            weight += sum(self._weights[id(k)] + self._weights[id(v)] for k, v in node.value)
        if weight > MAX_EXPANDED_NODES:
            raise _refusal(f"more than {MAX_EXPANDED_NODES} nodes once aliases are expanded", node.start_mark)
        self._weights[id(node)] = weight
        return node

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        keys: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            if isinstance(key, str | int | float | bool) and key in keys:
                raise yaml.constructor.ConstructorError(None, None, f"duplicate key {key!r}", key_node.start_mark)
            keys.add(key)
        return super().construct_mapping(node, deep=deep)


def load_yaml(data: bytes) -> object:
    """The single YAML document in ``data``; raises :class:`YamlRejected`."""
    if len(data) > MAX_BYTES:
        raise YamlRejected(f"the document is larger than {MAX_BYTES} bytes")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as err:
        raise YamlRejected(f"the document is not UTF-8 text: {err}") from None
    loader = _BoundedLoader(text)
    try:
        return loader.get_single_data()
    # ValueError: e.g. an integer literal past Python's digit limit
    except (yaml.YAMLError, ValueError) as err:
        raise YamlRejected(f"invalid YAML: {err}") from None
    finally:
        loader.dispose()

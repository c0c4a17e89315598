"""Every YAML file cloudsd reads goes through here: bounded in size, in nodes (alias bombs), and in depth.

A 450-byte file whose anchors refer to anchors nine levels deep expands to a billion nodes; PyYAML composes
it in microseconds and then anything that walks the result runs out of memory. So the composed graph is
measured as if every alias were expanded (counting each node once, so the measurement itself stays cheap),
and a file above its bound, with a recursive alias, a duplicate key, or bytes that are not UTF-8 text is
refused with a ConfigError naming the file and line.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from cloudsd.errors import ConfigError

MAX_BYTES = 1 << 20  # a config or a manifest of a thousand models is a few hundred KB
MAX_NODES = 100_000  # after aliases are expanded


def compose_file(path: Path, *, max_bytes: int = MAX_BYTES, max_nodes: int = MAX_NODES,
                 missing_ok: bool = False) -> yaml.Node | None:
    """The file's YAML node graph, checked; None for an empty file (or a missing one with `missing_ok`)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(max_bytes + 1)
    except FileNotFoundError:
        if missing_ok:
            return None
        raise ConfigError(f"{path}: no such file.") from None
    except OSError as exc:
        raise ConfigError(f"{path}: cannot read ({exc.strerror or exc}).") from None
    if len(data) > max_bytes:
        raise ConfigError(f"{path}: larger than {max_bytes // 1024} KB; this is not a cloudsd YAML file.")
    if b"\x00" in data:
        raise ConfigError(f"{path}: a binary file, not YAML text.")
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        bad_line = data[:exc.start].count(b"\n") + 1
        raise ConfigError(f"{path}:{bad_line}: not UTF-8 text.") from None
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f":{mark.line + 1}" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise ConfigError(f"{path}{where}: not valid YAML: {problem}") from None
    except RecursionError:
        raise ConfigError(f"{path}: nested too deeply to be a cloudsd YAML file.") from None
    if root is not None:
        _check(path, root, max_nodes)
    return root


def construct(node: yaml.Node) -> Any:
    """Python values for a node from `compose_file` (safe types only)."""
    loader = yaml.SafeLoader("")
    try:
        return loader.construct_document(node)
    finally:
        loader.dispose()


def load_file(path: Path, **bounds: Any) -> Any:
    """The file's value (safe types only), checked as `compose_file` does; None for an empty file."""
    root = compose_file(path, **bounds)
    return None if root is None else construct(root)


def _check(path: Path, root: yaml.Node, max_nodes: int) -> None:
    """Expanded size, recursion and duplicate keys, in one walk that visits each distinct node once."""
    sizes: dict[int, int] = {}
    open_nodes: set[int] = set()
    # Iterative post-order walk: deep nesting must not hit Python's recursion limit here.
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, done = stack.pop()
        key = id(node)
        if done:
            children = _children(node)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            open_nodes.discard(key)
            if sizes[key] > max_nodes:
                raise ConfigError(f"{path}:{node.start_mark.line + 1}: expands to more than {max_nodes} values "
                                  "(anchors and aliases); refusing it.")
            continue
        if key in sizes:
            continue
        if key in open_nodes:
            raise ConfigError(f"{path}:{node.start_mark.line + 1}: an alias refers to itself; refusing it.")
        open_nodes.add(key)
        if isinstance(node, yaml.MappingNode):
            _no_duplicate_keys(path, node)
        stack.append((node, True))
        stack.extend((c, False) for c in _children(node) if id(c) not in sizes)


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.MappingNode):
        return [n for pair in node.value for n in pair]
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    return []


def _no_duplicate_keys(path: Path, node: yaml.MappingNode) -> None:
    seen: dict[str, int] = {}
    for key_node, _ in node.value:
        if not isinstance(key_node, yaml.ScalarNode):
            continue
        line = key_node.start_mark.line + 1
        if key_node.value in seen and key_node.tag != "tag:yaml.org,2002:merge":
            raise ConfigError(f"{path}:{line}: duplicate key {key_node.value!r} (first on line "
                              f"{seen[key_node.value]}); say it once.")
        seen[key_node.value] = line

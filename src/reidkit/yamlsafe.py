"""Read YAML that a user (or anyone who could hand them a spec) wrote, within fixed bounds.

``yaml.safe_load`` never runs code, but it trusts size: YAML aliases let a 1.2 KB file (the
"billion laughs") describe a tree of billions of nodes. PyYAML itself shares the aliased
objects, so loading is quick; what explodes is the first walk over the result (validation,
dumping ``experiment.yaml``), which took 3.9 GB and never finished. Here the composed node
graph is measured *as expanded* before any Python object is built, in time linear in the file,
and refused beyond ``max_nodes``. Undecodable bytes, over-deep nesting and syntax errors become
one-line :class:`~reidkit.errors.SpecError` messages naming the source.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml

from reidkit.errors import SpecError, first_line

MAX_FILE_BYTES = 4 * 2**20
# An experiment spec has a few hundred nodes; room for long lists (gpu ids, AutoML choices).
MAX_NODES = 100_000


def load_yaml_file(path: Path, *, what: str = "spec file", max_nodes: int = MAX_NODES) -> Any:
    """The YAML document in ``path`` (None if empty); ``what`` names it in error messages."""
    path = Path(path)
    source = f"{what} '{path}'"
    try:
        if path.stat().st_size > MAX_FILE_BYTES:
            raise SpecError(
                f"{source} is larger than {MAX_FILE_BYTES} bytes; a spec is a few KB, "
                "check that the right file is named"
            )
        data = path.read_bytes()
    except OSError as exc:
        raise SpecError(f"cannot read {source} ({exc.strerror or exc}); fix the path") from None
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        raise SpecError(
            f"{source} is not UTF-8 text (byte 0x{data[exc.start]:02x} at offset {exc.start}); "
            "save it as UTF-8"
        ) from None
    return load_yaml_text(text, source=source, max_nodes=max_nodes)


def load_yaml_text(text: str, *, source: str, max_nodes: int = MAX_NODES) -> Any:
    """Parse one YAML document from ``text``; ``source`` names it in error messages."""
    try:
        loader = yaml.SafeLoader(text)  # refuses control characters at once
    except yaml.YAMLError as exc:
        raise SpecError(f"{source} is not valid YAML ({first_line(exc)}); fix it") from None
    try:
        node = loader.get_single_node()
        if node is None:
            return None
        _check_expanded_size(node, source, max_nodes)
        _refuse_repeated_keys(node, source)
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark or exc.context_mark
        where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
        problem = exc.problem or exc.context or "invalid YAML"
        raise SpecError(f"{source} is not valid YAML{where} ({problem}); fix the syntax") from None
    except yaml.YAMLError as exc:
        raise SpecError(f"{source} is not valid YAML ({first_line(exc)}); fix it") from None
    except RecursionError:
        raise SpecError(f"{source} is nested too deeply to be a spec; fix it") from None
    finally:
        loader.dispose()


def _check_expanded_size(root: yaml.Node, source: str, max_nodes: int) -> None:
    """Refuse a node graph whose expansion (aliases copied out) exceeds ``max_nodes``.

    Sizes are memoised per node, so a shared subtree costs one visit however often it is
    aliased; an explicit stack avoids Python's recursion limit on deep documents.
    """
    sizes: dict[int, int] = {}
    on_path: set[int] = set()
    stack: list[tuple[yaml.Node, bool]] = [(root, False)]
    while stack:
        node, children_done = stack.pop()
        key = id(node)
        children = _children(node)
        if children_done:
            on_path.discard(key)
            sizes[key] = 1 + sum(sizes[id(c)] for c in children)
            if sizes[key] > max_nodes:
                raise SpecError(
                    f"{source} expands to more than {max_nodes} values through aliases "
                    "(&anchor / *alias); a spec this large is refused, remove the aliases"
                )
            continue
        if key in sizes:
            continue
        if key in on_path:
            raise SpecError(f"{source} holds an alias that contains itself; remove it")
        on_path.add(key)
        stack.append((node, True))
        stack.extend((c, False) for c in children if id(c) not in sizes)


def _refuse_repeated_keys(root: yaml.Node, source: str) -> None:
    """Refuse a key given twice in one mapping, naming it and its second line.

    YAML loaders keep the last of two equal keys without a word, so a ``train:`` section
    pasted twice dropped the first one's keys and ``validate`` said "valid" (OmegaConf, which
    TAO reads specs with, refuses them too). ``<<`` merge keys may repeat. Each node is
    visited once (aliases share nodes, :func:`_check_expanded_size` bounds the rest).
    """
    seen_nodes: set[int] = set()
    stack: list[tuple[yaml.Node, str]] = [(root, "")]
    while stack:
        node, path = stack.pop()
        if id(node) in seen_nodes:
            continue
        seen_nodes.add(id(node))
        if isinstance(node, yaml.SequenceNode):
            stack.extend((item, f"{path}[{k}]") for k, item in enumerate(node.value))
        elif isinstance(node, yaml.MappingNode):
            keys: set[str] = set()
            for key, value in node.value:
                name = str(key.value) if isinstance(key, yaml.ScalarNode) else None
                dotted = f"{path}.{name}" if path else str(name)
                if name is not None and name != "<<":
                    if name in keys:
                        raise SpecError(
                            f"{source} gives key '{dotted}' twice (again at line "
                            f"{key.start_mark.line + 1}); keep one (YAML would silently keep "
                            "the last)"
                        )
                    keys.add(name)
                stack.append((value, dotted))


def _children(node: yaml.Node) -> list[yaml.Node]:
    if isinstance(node, yaml.SequenceNode):
        return list(node.value)
    if isinstance(node, yaml.MappingNode):
        return [item for pair in node.value for item in pair]
    return []

"""The house's floors: every folder of ``src/reidkit`` imports only from the floors below it, and
no module imports one that (directly or through others) imports it back.

Imports are read with :mod:`ast`, all of them: at module level, inside functions (the lazy
imports that keep ``reidkit validate`` light) and under ``if TYPE_CHECKING:``. A circle that only
exists lazily still ties two modules together: neither can be understood, tested or moved alone.
"""

from __future__ import annotations

import ast
from collections import deque
from pathlib import Path

import pytest

from tests.conftest import REPO

SRC = REPO / "src"
PACKAGE = "reidkit"

#: Top-level modules every floor may import: they import nothing but each other.
GROUND = {
    "reidkit", "errors", "outputs", "registry", "interrupts", "oserrors", "redaction", "runlock",
    "yamlsafe",
}  # fmt: skip
#: Which floors each floor may import, besides itself and the ground (docs/architecture.md).
MAY_IMPORT: dict[str, set[str]] = {
    "config": set(),
    "data": {"config"},
    "models": {"config"},
    "losses": {"models"},
    "evaluation": {"config", "data", "models"},
    "engine": {"config", "data", "models", "losses", "evaluation"},
    "export": {"config", "data", "models"},
    "gallery": {"config", "data", "models", "evaluation"},
    "association": {"config", "data", "models", "evaluation", "export", "gallery"},
    "adaptation": {
        "config",
        "data",
        "models",
        "losses",
        "engine",
        "evaluation",
        "export",
        "gallery",
    },
    "automl": {"config"},
    "serve": {"config", "data", "models", "evaluation", "export", "gallery", "association"},
    "cli": {"config", "actions"},
    "__main__": {"cli"},
}
#: The verbs stand on every library floor; only the CLI stands on them.
MAY_IMPORT["actions"] = set(MAY_IMPORT) - {"cli", "__main__"}
Graph = dict[str, set[str]]


def module_name(path: Path, root: Path) -> str:
    """``root/pkg/a/b.py`` -> ``pkg.a.b``; a package's ``__init__.py`` is the package."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def import_graph(root: Path, package: str) -> Graph:
    """Each module of ``package`` (under ``root``) -> the modules of ``package`` it imports.

    ``from x import y`` counts as importing ``x.y`` when that is a module, else ``x``; an import
    of something inside a module counts as importing the module.
    """
    files = {module_name(p, root): p for p in (root / package).rglob("*.py")}

    def owner(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    graph: Graph = {}
    for name, path in files.items():
        here = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets: set[str | None] = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                targets.update(owner(alias.name) for alias in node.names)
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:  # relative: from .x import y / from .. import z
                    anchor = here.split(".")[: len(here.split(".")) - node.level + 1]
                    base = ".".join([*anchor, *filter(None, [node.module])])
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.add(full if full in files else owner(base))
        graph[name] = {t for t in targets if t is not None and t != name}
    return graph


def circles(graph: Graph) -> list[list[str]]:
    """One import circle per strongly connected group of modules, as ``[a, b, ..., a]``."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    groups: list[set[str]] = []

    def visit(node: str) -> None:  # Tarjan's algorithm
        index[node] = low[node] = len(index)
        stack.append(node)
        for target in graph.get(node, ()):
            if target not in index:
                visit(target)
                low[node] = min(low[node], low[target])
            elif target in stack:
                low[node] = min(low[node], index[target])
        if low[node] == index[node]:
            group = {stack.pop()}
            while node not in group:
                group.add(stack.pop())
            if len(group) > 1:
                groups.append(group)

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(_loop_through(graph, group) for group in groups)


def _loop_through(graph: Graph, group: set[str]) -> list[str]:
    """The shortest path from the group's first module back to itself, inside the group."""
    start = min(group)
    came_from: dict[str, str] = {}
    queue = deque([start])
    while queue:
        node = queue.popleft()
        for target in sorted(graph[node] & group):
            if target == start:
                path = [node]
                while path[-1] != start:
                    path.append(came_from[path[-1]])
                return [start, *reversed(path[:-1]), start] if node != start else [start, start]
            if target not in came_from:
                came_from[target] = node
                queue.append(target)
    raise AssertionError(f"{sorted(group)} is not a circle")


def floor_of(module: str) -> str:
    """``reidkit.gallery.store`` -> ``gallery``; ``reidkit.errors`` -> ``errors``."""
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else parts[0]


def upward_imports(graph: Graph, may_import: dict[str, set[str]], ground: set[str]) -> list[str]:
    """``module imports target`` for every import the floor table does not allow."""
    found = []
    for module, targets in sorted(graph.items()):
        floor = floor_of(module)
        allowed = ground if floor in ground else may_import.get(floor, set()) | {floor} | ground
        found += [f"{module} imports {t}" for t in sorted(targets) if floor_of(t) not in allowed]
    return found


def floors_without_a_row(
    root: Path, package: str, may_import: dict[str, set[str]], ground: set[str]
) -> list[str]:
    """Folders and top-level modules of the package that the floor table does not place."""
    entries = {
        p.stem for p in (root / package).iterdir()
        if (p.suffix == ".py" and p.stem != "__init__") or (p / "__init__.py").is_file()
    }  # fmt: skip
    return sorted(entries - set(may_import) - ground)


@pytest.fixture(scope="module")
def graph() -> Graph:
    return import_graph(SRC, PACKAGE)


def test_every_folder_has_a_floor() -> None:
    assert floors_without_a_row(SRC, PACKAGE, MAY_IMPORT, GROUND) == []


def test_floors_only_look_down(graph: Graph) -> None:
    assert upward_imports(graph, MAY_IMPORT, GROUND) == []


def test_the_floor_table_itself_has_no_circle() -> None:
    assert circles({f: set(targets) for f, targets in MAY_IMPORT.items()}) == []


def test_no_module_imports_itself_back(graph: Graph) -> None:
    assert circles(graph) == []


# The checks above must be able to fail: a small package with the faults they look for.


def _package(root: Path, files: dict[str, str]) -> Path:
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    return root


def test_a_circle_through_lazy_and_type_checking_imports_is_found(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "def f():\n    from pkg.b import g\n    return g\n",
            "pkg/b.py": (
                "from typing import TYPE_CHECKING\n"
                "if TYPE_CHECKING:\n    from pkg import a\n"
                "def g():\n    pass\n"
            ),
            "pkg/sub/__init__.py": "",
            "pkg/sub/c.py": "from . import d\n",
            "pkg/sub/d.py": "from .e import h\n",
            "pkg/sub/e.py": "from ..sub.c import x\nh = 1\n",
            "pkg/clean.py": "import pkg.a\nfrom pkg.sub import c\n",
        },
    )
    found = circles(import_graph(root, "pkg"))
    assert found == [
        ["pkg.a", "pkg.b", "pkg.a"],
        ["pkg.sub.c", "pkg.sub.d", "pkg.sub.e", "pkg.sub.c"],
    ]


def test_a_package_without_circles_passes(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/a.py": "from pkg import b\nfrom pkg.b import g\n",
            "pkg/b.py": "import os\ng = os.sep\n",
        },
    )
    graph = import_graph(root, "pkg")
    assert graph == {"pkg": set(), "pkg.a": {"pkg.b"}, "pkg.b": set()}
    assert circles(graph) == []


def test_an_upward_import_and_a_folder_without_a_row_are_found(tmp_path: Path) -> None:
    root = _package(
        tmp_path,
        {
            "pkg/__init__.py": "",
            "pkg/errors.py": "",
            "pkg/low/__init__.py": "",
            "pkg/low/x.py": "import pkg.errors\n\ndef f():\n    from pkg.high.y import z\n",
            "pkg/high/__init__.py": "",
            "pkg/high/y.py": "from pkg.low import x\nz = 1\n",
            "pkg/stray/__init__.py": "",
        },
    )
    table = {"low": set(), "high": {"low"}}
    graph = import_graph(root, "pkg")
    assert upward_imports(graph, table, {"pkg", "errors"}) == ["pkg.low.x imports pkg.high.y"]
    assert floors_without_a_row(root, "pkg", table, {"pkg", "errors"}) == ["stray"]
    assert circles({"low": {"high"}, "high": {"low"}}) == [["high", "low", "high"]]

"""Inside the gallery package the imports go one way: the contract imports no backend, a backend
imports only the contract, the factory sits above both (no circle such as the old
store <-> embedded/milvus one)."""

from __future__ import annotations

import ast
from pathlib import Path

import reidkit.gallery

PACKAGE = Path(reidkit.gallery.__file__).parent
BACKENDS = {"embedded", "milvus"}
# What each module of the package may import from the package (besides nothing at all).
MAY_IMPORT = {
    "store": set(),
    "validation": set(),  # plain rules for metadata, windows and ages: imports nothing
    "front": {"store", "validation"},
    "embedded": {"store"},
    "milvus": {"store"},
    "ingest": {"store", "front", "validation"},
    "rebuild": {"store", "front", "ingest"},
    "factory": {"store", "front", *BACKENDS},
    "__init__": set(),  # names are resolved lazily, by module path strings
}


def _gallery_imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        names = []
        if isinstance(node, ast.ImportFrom) and node.module == "reidkit.gallery":
            names = [f"reidkit.gallery.{alias.name}" for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module:
            names = [node.module]
        elif isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        found |= {n.split(".")[2] for n in names if n.startswith("reidkit.gallery.")}
    return found


def test_every_module_is_placed_and_imports_only_below_it():
    modules = {p.stem: _gallery_imports(p) for p in PACKAGE.glob("*.py")}
    assert set(modules) == set(MAY_IMPORT), "place the new module in MAY_IMPORT"
    for name, imported in modules.items():
        assert imported <= MAY_IMPORT[name], f"gallery/{name}.py imports {imported}"

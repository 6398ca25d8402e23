"""``reidkit schema``: write the JSON schemas, manifest and spec templates (no torch)."""

from __future__ import annotations

from pathlib import Path

from reidkit.config.schema import write_schemas
from reidkit.errors import SpecError


def schema(out: str | Path) -> list[Path]:
    """Write ``schemas/`` and ``references/`` under ``out``; returns the files written.

    An empty ``out`` (``--out "$DIR"`` with DIR unset) is refused: as a path it is the
    current folder.
    """
    if not str(out).strip():
        raise SpecError("schema --out is empty; name the folder to write the schemas to")
    return write_schemas(Path(out))

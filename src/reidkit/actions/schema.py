"""``reidkit schema``: write the JSON schemas, manifest and spec templates (no torch)."""

from __future__ import annotations

from pathlib import Path

from reidkit.config.schema import write_schemas


def schema(out: str | Path) -> list[Path]:
    """Write ``schemas/`` and ``references/`` under ``out``; returns the files written."""
    return write_schemas(Path(out))

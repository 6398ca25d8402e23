"""Result files every action leaves behind, written atomically: the one place that does so.

TAO's tooling reads ``status.json``; reidkit keeps its shape but reports KPIs in percent with
two decimals (TAO rounds mAP as a fraction to one decimal, which hides real differences).
Every file reidkit writes goes through :func:`staged_path` (directly, or via
:func:`atomic_open`): readers, and a rerun after a crash, see the old file or the complete new
one, never half a file.
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any


@contextmanager
def staged_path(path: Path) -> Iterator[Path]:
    """A new empty file beside ``path`` to write; renamed over ``path`` when the block succeeds.

    For writers that need a file name (ONNX, a file checked before it is kept). The file is
    created with mode 0666 so the process umask applies as for any other output, without
    reading (which means changing) the process-wide umask. On an exception the staged file is
    removed and ``path`` is untouched.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    staged = path.with_name(f".{path.name}.{os.getpid()}.{uuid.uuid4().hex[:12]}.tmp")
    os.close(os.open(staged, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o666))
    try:
        yield staged
        descriptor = os.open(staged, os.O_RDONLY)
        try:
            os.fsync(descriptor)
        finally:
            os.close(descriptor)
        os.replace(staged, path)
    except BaseException:
        staged.unlink(missing_ok=True)
        raise


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a staged file (see :func:`staged_path`) for writing; it replaces ``path`` on success."""
    with staged_path(path) as staged, open(staged, mode) as handle:
        yield handle


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, so readers never see half a file."""
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2)


def read_json(path: Path) -> Any:
    """A JSON file's content, or None when it is missing or unreadable (e.g. a foreign file)."""
    try:
        return json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None


def write_status(
    folder: Path,
    action: str,
    status: str,
    message: str,
    kpi: dict[str, float] | None = None,
    **extra: Any,
) -> None:
    """Record an action's state (``RUNNING``/``SUCCESS``/``FAILURE``) and its KPIs in percent."""
    write_json(
        Path(folder) / "status.json",
        {
            "date": time.strftime("%Y-%m-%d"),
            "time": time.strftime("%H:%M:%S"),
            "action": action,
            "status": status,
            "message": message,
            "kpi": kpi or {},
            **extra,
        },
    )

"""Result files every action leaves behind: ``status.json`` and JSON written atomically.

TAO's tooling reads ``status.json``; reidkit keeps its shape but reports KPIs in percent with
two decimals (TAO rounds mAP as a fraction to one decimal, which hides real differences).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO, Any

# Temporary files are created 0600; results get the usual mode the user's umask allows.
_UMASK = os.umask(0)
os.umask(_UMASK)
_FILE_MODE = 0o666 & ~_UMASK


@contextmanager
def atomic_open(path: Path, mode: str = "w") -> Iterator[IO[Any]]:
    """Open a temporary file beside ``path``; on success it replaces ``path`` in one rename.

    Readers (and a rerun after a crash) see either the old file or the complete new one, never
    half a file; on an exception the temporary file is removed and ``path`` is untouched.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    # Not a `with` block: the file must outlive it so it can be renamed over `path`.
    handle = tempfile.NamedTemporaryFile(  # noqa: SIM115
        mode, dir=path.parent, prefix=f".{path.name}.", delete=False
    )
    try:
        os.chmod(handle.name, _FILE_MODE)
        with handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(handle.name, path)
    except BaseException:
        Path(handle.name).unlink(missing_ok=True)
        raise


def write_json(path: Path, data: Any) -> None:
    """Write JSON atomically, so readers never see half a file."""
    with atomic_open(path) as handle:
        json.dump(data, handle, indent=2)


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
        folder / "status.json",
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

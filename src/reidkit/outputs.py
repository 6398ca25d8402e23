"""Result files every action leaves behind: ``status.json`` and JSON written atomically.

TAO's tooling reads ``status.json``; reidkit keeps its shape but reports KPIs in percent with
two decimals (TAO rounds mAP as a fraction to one decimal, which hides real differences).
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any


def write_json(path: Path, data: Any) -> None:
    """Write JSON via a temporary file and rename, so readers never see half a file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(
        "w", dir=path.parent, prefix=f".{path.name}.", suffix=".tmp", delete=False
    ) as handle:
        json.dump(data, handle, indent=2)
    os.replace(handle.name, path)


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

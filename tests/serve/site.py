"""A site's crops for the serve tests: Market-style files with camera, time and track."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path


@dataclass(frozen=True)
class Crop:
    path: Path
    camera: int
    timestamp: datetime
    track: str

    @property
    def key(self) -> str:
        """The key the tests store it under (the gallery's ``path``): its file name."""
        return self.path.name


def site_crops(folder: Path, start: datetime) -> list[Crop]:
    """Identity crops of a Market-style folder, one minute apart; a track is (person, camera)."""
    crops = []
    paths = sorted(p for p in folder.glob("*.jpg") if not p.name.startswith(("-1", "0000")))
    for minute, path in enumerate(paths):
        person, camera = path.name.split("_")[0], int(path.name.split("_")[1][1])
        crops.append(Crop(path, camera, start + timedelta(minutes=minute), f"{person}-c{camera}"))
    return crops


def upload_form(crops: list[Crop]) -> dict:
    """``files`` and ``data`` for ``POST /v1/gallery``."""
    metadata = [
        {
            "camera": c.camera,
            "timestamp": c.timestamp.isoformat(),
            "track_id": c.track,
            "path": c.key,
        }
        for c in crops
    ]
    return {
        "files": [("images", (c.path.name, c.path.read_bytes(), "image/jpeg")) for c in crops],
        "data": {"metadata": json.dumps(metadata)},
    }


def audit_lines(gallery: Path) -> list[str]:
    """Every line of the gallery's audit log(s)."""
    lines: list[str] = []
    for log in sorted(gallery.rglob("audit*")):
        if log.is_file():
            lines += log.read_text().splitlines()
    return lines

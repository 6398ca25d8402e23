"""Training checkpoints: TAO's file names and Lightning's checkpoint I/O plugin.

A checkpoint is Lightning's full training state (so a run resumes exactly) plus the model card
(:mod:`reidkit.models.card`), so evaluate/export can refuse one that does not fit the spec
before loading weights. The bytes go through :mod:`reidkit.models.checkpoint_file` (atomic,
optionally encrypted).
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Any

from lightning.pytorch.plugins.io import CheckpointIO

from reidkit.models.checkpoint_file import load_checkpoint, save_checkpoint

LATEST_NAME = "reid_model_latest.pth"
_PERIODIC = re.compile(r"model_(\d{3,})_(\d{5,})\.pth$")


def periodic_name(epoch: int, step: int) -> str:
    """TAO's periodic checkpoint name; ``epoch`` counts completed epochs (1-based)."""
    return f"model_{epoch:03d}_{step:05d}.pth"


def find_resume_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a rerun in ``folder`` continues from: the latest one, if any."""
    latest = folder / LATEST_NAME
    if latest.is_file():
        return latest
    periodic = periodic_checkpoints(folder)
    return periodic[0] if periodic else None


def periodic_checkpoints(folder: Path) -> list[Path]:
    """The periodic checkpoints in ``folder``, newest (by epoch, then step) first."""
    return sorted(folder.glob("model_*.pth"), key=_epoch_step, reverse=True)


def _epoch_step(path: Path) -> tuple[int, int]:
    match = _PERIODIC.search(path.name)
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


class ReidCheckpointIO(CheckpointIO):
    """Lightning's checkpoint I/O routed through reidkit's atomic, optionally encrypted format.

    Using Lightning's own save/restore (rather than a parallel format) keeps optimizer, scheduler,
    loop and callback state in the file, which is what makes a resumed run lose no epoch.
    """

    def __init__(self, encryption_key: str | None) -> None:
        self.encryption_key = encryption_key

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: str | os.PathLike[str], storage_options: Any = None
    ) -> None:
        save_checkpoint(checkpoint, Path(path), self.encryption_key)

    def load_checkpoint(
        self,
        path: str | os.PathLike[str],
        map_location: Any = None,
        weights_only: bool | None = None,
    ) -> dict[str, Any]:
        return load_checkpoint(path, self.encryption_key)

    def remove_checkpoint(self, path: str | os.PathLike[str]) -> None:
        Path(path).unlink(missing_ok=True)

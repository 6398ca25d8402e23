"""Checkpoint files: TAO's names, atomic writes, optional authenticated encryption.

A checkpoint is Lightning's full training state (so a run resumes exactly) plus a ``reidkit``
entry describing the model it holds, so evaluate/export can refuse one that does not fit the
spec before loading weights. Files are written to a temporary name and renamed, so a run killed
mid-write never leaves a truncated ``reid_model_latest.pth``. With an ``encryption_key`` the
bytes are sealed with AES-256-GCM: a wrong key fails the authentication tag instead of
producing garbage weights.
"""

from __future__ import annotations

import io
import os
import re
from pathlib import Path
from typing import Any

import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt
from lightning.pytorch.plugins.io import CheckpointIO

from reidkit.errors import CheckpointError
from reidkit.outputs import atomic_open

LATEST_NAME = "reid_model_latest.pth"
_PERIODIC = re.compile(r"model_(\d{3,})_(\d{5,})\.pth$")
_MAGIC = b"REIDKIT-AESGCM-1\n"
_SALT_BYTES = 16
_NONCE_BYTES = 12


def periodic_name(epoch: int, step: int) -> str:
    """TAO's periodic checkpoint name; ``epoch`` counts completed epochs (1-based)."""
    return f"model_{epoch:03d}_{step:05d}.pth"


def find_resume_checkpoint(folder: Path) -> Path | None:
    """The checkpoint a rerun in ``folder`` continues from: the latest one, if any."""
    latest = folder / LATEST_NAME
    if latest.is_file():
        return latest
    periodic = sorted(folder.glob("model_*.pth"), key=_epoch_step)
    return periodic[-1] if periodic else None


def _epoch_step(path: Path) -> tuple[int, int]:
    match = _PERIODIC.search(path.name)
    return (int(match.group(1)), int(match.group(2))) if match else (-1, -1)


def _derive_key(passphrase: str, salt: bytes) -> bytes:
    # scrypt makes a guessed passphrase expensive to test; n=2**14 costs ~50 ms per file.
    return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(passphrase.encode())


def _seal(payload: bytes, passphrase: str) -> bytes:
    salt, nonce = os.urandom(_SALT_BYTES), os.urandom(_NONCE_BYTES)
    sealed = AESGCM(_derive_key(passphrase, salt)).encrypt(nonce, payload, _MAGIC)
    return _MAGIC + salt + nonce + sealed


def _open_sealed(blob: bytes, passphrase: str, path: Path) -> bytes:
    start = len(_MAGIC)
    salt = blob[start : start + _SALT_BYTES]
    nonce = blob[start + _SALT_BYTES : start + _SALT_BYTES + _NONCE_BYTES]
    sealed = blob[start + _SALT_BYTES + _NONCE_BYTES :]
    try:
        return AESGCM(_derive_key(passphrase, salt)).decrypt(nonce, sealed, _MAGIC)
    except InvalidTag:
        raise CheckpointError(
            f"checkpoint '{path}' cannot be decrypted: encryption_key is wrong or the file is "
            "damaged; set the key it was written with"
        ) from None


def save_checkpoint(checkpoint: dict[str, Any], path: Path, encryption_key: str | None) -> None:
    """Serialise with torch.save, encrypt when a key is given, write atomically."""
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    payload = buffer.getvalue()
    with atomic_open(path, "wb") as handle:
        handle.write(_seal(payload, encryption_key) if encryption_key else payload)


def load_checkpoint(path: str | Path, encryption_key: str | None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (encrypted or not) onto the CPU."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; check the path in the spec")
    blob = path.read_bytes()
    if blob.startswith(_MAGIC):
        if not encryption_key:
            raise CheckpointError(
                f"checkpoint '{path}' is encrypted; "
                "set encryption_key to the key it was written with"
            )
        blob = _open_sealed(blob, encryption_key, path)
    try:
        checkpoint = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise CheckpointError(f"checkpoint '{path}' cannot be read ({reason})") from None
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint '{path}' does not hold a checkpoint dictionary")
    return checkpoint


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

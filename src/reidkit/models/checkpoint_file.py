"""The checkpoint file format: ``torch.save`` bytes, optionally sealed, written atomically.

With an ``encryption_key`` the bytes are sealed with AES-256-GCM under an scrypt-derived key:
a wrong key fails the authentication tag instead of producing garbage weights. Files are
written to a staged name and renamed, so a run killed mid-write never leaves a truncated file.
What lies inside a checkpoint (the model card, the weights' prefix) is
:mod:`reidkit.models.card`'s business; this module only reads and writes the bytes.
"""

from __future__ import annotations

import io
import os
import pickle
import warnings
import zipfile
from pathlib import Path
from typing import Any

import torch
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.scrypt import Scrypt

from reidkit.errors import CheckpointError, first_line
from reidkit.oserrors import special_file_kind
from reidkit.outputs import atomic_open
from reidkit.redaction import resolve_secret

_MAGIC = b"REIDKIT-AESGCM-1\n"
_SALT_BYTES = 16
_NONCE_BYTES = 12
_TAG_BYTES = 16
# torch.save writes a zip archive, whose directory is at its end: a file cut short lacks it.
_ZIP_MAGIC = b"PK\x03\x04"
# What to do about a checkpoint file that is damaged: the copy, or another file.
_REPLACE = "copy it again, or point at a checkpoint that reidkit train wrote (or its run folder)"


def _derive_key(passphrase: str, salt: bytes) -> bytes:
    # scrypt makes a guessed passphrase expensive to test; n=2**14 costs ~50 ms per file.
    return Scrypt(salt=salt, length=32, n=2**14, r=8, p=1).derive(passphrase.encode())


def _seal(payload: bytes, passphrase: str) -> bytes:
    salt, nonce = os.urandom(_SALT_BYTES), os.urandom(_NONCE_BYTES)
    sealed = AESGCM(_derive_key(passphrase, salt)).encrypt(nonce, payload, _MAGIC)
    return _MAGIC + salt + nonce + sealed


def _open_sealed(blob: bytes, passphrase: str, path: Path) -> bytes:
    start = len(_MAGIC)
    if len(blob) < start + _SALT_BYTES + _NONCE_BYTES + _TAG_BYTES:
        raise CheckpointError(
            f"checkpoint '{path}' is truncated ({len(blob)} bytes, not even a sealed header); "
            "re-copy it or use another checkpoint"
        )
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
    """Serialise with torch.save, encrypt when a key is given, write atomically.

    ``encryption_key`` may be an ``env:NAME`` / ``file:PATH`` reference
    (:func:`reidkit.redaction.resolve_secret`). Encrypted files are owner-only (0600): whoever
    asked for encryption does not want the weights readable by other users either.
    """
    key = resolve_secret(encryption_key, "encryption_key")
    buffer = io.BytesIO()
    torch.save(checkpoint, buffer)
    payload = buffer.getvalue()
    with atomic_open(path, "wb") as handle:
        if key:
            os.fchmod(handle.fileno(), 0o600)
        handle.write(_seal(payload, key) if key else payload)


def read_checkpoint_object(path: str | Path, encryption_key: str | None) -> Any:
    """Whatever a ``.pth`` file holds (encrypted by reidkit or not), loaded safely onto the CPU.

    ``weights_only`` unpickling: a file holding code objects is refused, never run.
    """
    path = Path(path)
    if kind := special_file_kind(path):
        raise CheckpointError(
            f"checkpoint '{path}' is {kind}, not a regular file; check the path in the spec"
        )
    if not path.is_file():
        raise CheckpointError(f"checkpoint '{path}' does not exist; check the path in the spec")
    key = resolve_secret(encryption_key, "encryption_key")
    blob = path.read_bytes()
    if not blob:
        raise CheckpointError(f"checkpoint '{path}' is empty (0 bytes); {_REPLACE}")
    if blob.startswith(_MAGIC):
        if not key:
            raise CheckpointError(
                f"checkpoint '{path}' is encrypted; "
                "set encryption_key to the key it was written with"
            )
        blob = _open_sealed(blob, key, path)
    if blob.startswith(_ZIP_MAGIC):
        _require_intact_archive(blob, path)
    try:
        with warnings.catch_warnings():  # torch warns of pickle protocols before it refuses
            warnings.simplefilter("ignore", UserWarning)
            checkpoint = torch.load(io.BytesIO(blob), map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        # torch's text (the same for a damaged file and for a refused object) goes on to advise
        # weights_only=False: never for a file like this
        raise CheckpointError(
            f"checkpoint '{path}' cannot be read: it is damaged, not a PyTorch file, or holds "
            "Python objects beyond tensors and plain values, refused because loading them could "
            "run code; use a checkpoint written by reidkit, or plain weights (a state_dict of "
            "tensors) from a source you trust"
        ) from None
    except Exception as exc:  # torch raises many types for a damaged or foreign file
        raise CheckpointError(
            f"checkpoint '{path}' is damaged or not a checkpoint ({first_line(exc)}); {_REPLACE}"
        ) from None
    return checkpoint


def _require_intact_archive(blob: bytes, path: Path) -> None:
    """Refuse a ``torch.save`` archive cut short or with damaged bytes.

    ``torch.load`` checks neither: a file missing its end fails deep in the reader, and one
    with flipped bytes (a bad disk, a broken copy) loads, weights and all, so a resume trained
    on from damaged weights with exit 0. Each archive member carries a CRC-32 written by
    ``torch.save``; checking them reads the bytes once more (gigabytes a second).
    """
    try:
        with zipfile.ZipFile(io.BytesIO(blob)) as archive:
            damaged = archive.testzip()
    except (zipfile.BadZipFile, EOFError, ValueError, NotImplementedError):
        raise CheckpointError(
            f"checkpoint '{path}' is truncated ({len(blob):,} bytes, its end is missing); "
            f"{_REPLACE}"
        ) from None
    if damaged is not None:
        raise CheckpointError(
            f"checkpoint '{path}' is damaged (its part '{damaged}' fails its checksum); {_REPLACE}"
        )


def load_checkpoint(path: str | Path, encryption_key: str | None) -> dict[str, Any]:
    """Read a checkpoint written by :func:`save_checkpoint` (encrypted or not) onto the CPU."""
    checkpoint = read_checkpoint_object(path, encryption_key)
    if not isinstance(checkpoint, dict):
        raise CheckpointError(f"checkpoint '{path}' does not hold a checkpoint dictionary")
    return checkpoint

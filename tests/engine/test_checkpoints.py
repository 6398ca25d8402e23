"""Checkpoint files: atomic, encrypted with authentication, clear errors, resume discovery."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

from reidkit.engine.checkpoints import (
    LATEST_NAME,
    find_resume_checkpoint,
    load_checkpoint,
    periodic_name,
    save_checkpoint,
)
from reidkit.errors import CheckpointError


def _payload() -> dict:
    return {"state_dict": {"w": torch.arange(6.0).reshape(2, 3)}, "epoch": 3}


def test_plain_round_trip(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    save_checkpoint(_payload(), path, None)
    loaded = load_checkpoint(path, None)
    assert torch.equal(loaded["state_dict"]["w"], _payload()["state_dict"]["w"])
    assert [p.name for p in tmp_path.iterdir()] == ["c.pth"]  # no temporary file left behind


def test_encrypted_round_trip_and_wrong_or_missing_key(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    save_checkpoint(_payload(), path, "nvidia_tao")
    assert b"state_dict" not in path.read_bytes()  # really encrypted
    assert load_checkpoint(path, "nvidia_tao")["epoch"] == 3
    with pytest.raises(CheckpointError, match="encryption_key is wrong"):
        load_checkpoint(path, "another key")
    with pytest.raises(CheckpointError, match="is encrypted; set encryption_key"):
        load_checkpoint(path, None)


def test_tampered_encrypted_file_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "c.pth"
    save_checkpoint(_payload(), path, "k")
    blob = bytearray(path.read_bytes())
    blob[-5] ^= 0xFF
    path.write_bytes(bytes(blob))
    with pytest.raises(CheckpointError, match="wrong or the file is damaged"):
        load_checkpoint(path, "k")


def test_missing_and_garbage_files(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "none.pth", None)
    garbage = tmp_path / "g.pth"
    garbage.write_bytes(b"not a checkpoint at all")
    with pytest.raises(CheckpointError, match="cannot be read"):
        load_checkpoint(garbage, None)


def test_resume_discovery_prefers_latest(tmp_path: Path) -> None:
    assert find_resume_checkpoint(tmp_path) is None
    for epoch, step in [(2, 20), (10, 100), (4, 40)]:
        save_checkpoint(_payload(), tmp_path / periodic_name(epoch, step), None)
    assert find_resume_checkpoint(tmp_path).name == "model_010_00100.pth"
    save_checkpoint(_payload(), tmp_path / LATEST_NAME, None)
    assert find_resume_checkpoint(tmp_path).name == LATEST_NAME

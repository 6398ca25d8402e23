"""The action lifecycle's reliability rules, without training: locks, staged rerun records,
secrets kept out of records, failures recorded even when the disk refuses."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import yaml

from reidkit.actions.lifecycle import PENDING, run_action
from reidkit.config.loading import apply_overrides, load_spec
from reidkit.errors import ReidkitError
from reidkit.runlock import FolderLockError


@pytest.fixture
def spec(tmp_path: Path):
    return load_spec(None, [f"results_dir={tmp_path / 'results'}", "encryption_key=s3cret-key"])


def _records(folder: Path) -> dict[str, str]:
    return {p.name: p.read_text() for p in sorted(folder.iterdir()) if not p.name.startswith(".")}


def test_failed_rerun_keeps_the_previous_records(spec) -> None:
    with run_action(spec, "evaluate") as run:
        run.succeed("first run", kpi={"mAP": 50.0})
    folder = spec.action_dir("evaluate")
    before = _records(folder)
    changed = apply_overrides(spec, {"evaluate.batch_size": 7})

    with pytest.raises(ReidkitError), run_action(changed, "evaluate"):
        raise ReidkitError("gallery folder 'x' is unreadable; fix it")

    after = _records(folder)
    pending_status = json.loads(after.pop(PENDING["status.json"]))
    pending_spec = yaml.safe_load(after.pop(PENDING["experiment.yaml"]))
    assert after == before
    assert pending_status["status"] == "FAILURE"
    assert "gallery folder 'x'" in pending_status["message"]
    assert pending_spec["evaluate"]["batch_size"] == 7

    with run_action(changed, "evaluate") as run:  # a rerun that succeeds publishes its records
        run.succeed("second run")
    records = _records(folder)
    assert json.loads(records["status.json"])["message"] == "second run"
    assert yaml.safe_load(records["experiment.yaml"])["evaluate"]["batch_size"] == 7
    assert set(PENDING.values()).isdisjoint(records)


def test_a_held_folder_refuses_a_second_action_run(spec) -> None:
    with (
        run_action(spec, "export"),
        pytest.raises(FolderLockError, match=f"pid {os.getpid()}"),
        run_action(spec, "export"),
    ):
        pass
    assert json.loads((spec.action_dir("export") / "status.json").read_text())["status"] == (
        "SUCCESS"
    )


def test_secrets_stay_out_of_records_and_messages(spec, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = "postgresql://reid:hunter2@db.example/optuna"
    spec = apply_overrides(spec, {"automl.storage": storage})
    with pytest.raises(ReidkitError), run_action(spec, "evaluate"):
        raise ReidkitError(f"cannot open {storage} with key s3cret-key")
    folder = spec.action_dir("evaluate")
    text = "".join(_records(folder).values())
    assert "s3cret-key" not in text and "hunter2" not in text
    written = yaml.safe_load((folder / "experiment.yaml").read_text())
    assert written["encryption_key"] == "***"
    assert written["automl"]["storage"] == "postgresql://***@db.example/optuna"
    status = json.loads((folder / "status.json").read_text())
    assert status["message"] == "cannot open postgresql://***@db.example/optuna with key ***"

    monkeypatch.setenv("REID_TEST_KEY", "s3cret-key")
    referenced = apply_overrides(spec, {"encryption_key": "env:REID_TEST_KEY"})
    with run_action(referenced, "export"):
        pass
    written = yaml.safe_load((referenced.action_dir("export") / "experiment.yaml").read_text())
    assert written["encryption_key"] == "env:REID_TEST_KEY"  # a reference is not a secret


def test_encrypted_checkpoints_are_owner_only_and_keys_may_be_referenced(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from reidkit.models.checkpoint_file import load_checkpoint, save_checkpoint

    monkeypatch.setenv("REID_TEST_KEY", "s3cret-key")
    key_file = tmp_path / "key"
    key_file.write_text("s3cret-key\n")
    path = tmp_path / "model.pth"
    save_checkpoint({"w": 1}, path, "env:REID_TEST_KEY")
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert b"s3cret-key" not in path.read_bytes()
    assert load_checkpoint(path, f"file:{key_file}") == {"w": 1}
    assert load_checkpoint(path, "s3cret-key") == {"w": 1}
    plain = tmp_path / "plain.pth"
    save_checkpoint({"w": 1}, plain, None)
    assert stat.S_IMODE(plain.stat().st_mode) == 0o666 & ~_umask()


def test_sealed_file_truncated_to_its_header_is_one_line(tmp_path: Path) -> None:
    from reidkit.errors import CheckpointError
    from reidkit.models.checkpoint_file import load_checkpoint, save_checkpoint

    path = tmp_path / "model.pth"
    save_checkpoint({"w": 1}, path, "k")
    path.write_bytes(path.read_bytes()[:20])
    with pytest.raises(CheckpointError, match=r"model\.pth' is truncated \(20 bytes"):
        load_checkpoint(path, "k")


def _umask() -> int:
    current = os.umask(0)
    os.umask(current)
    return current

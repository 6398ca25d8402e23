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
from reidkit.cli import main
from reidkit.config.loading import apply_overrides, load_spec
from reidkit.errors import ReidkitError
from reidkit.runlock import FolderLockError
from tests.conftest import empty_spec


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


def test_secrets_stay_out_of_records(spec, monkeypatch: pytest.MonkeyPatch) -> None:
    storage = "postgresql://reid:hunter2@db.example/optuna"
    spec = apply_overrides(spec, {"automl.storage": storage})
    with pytest.raises(ReidkitError), run_action(spec, "evaluate"):
        raise ReidkitError("gallery folder 'x' is unreadable; fix it")
    folder = spec.action_dir("evaluate")
    text = "".join(_records(folder).values())
    assert "s3cret-key" not in text and "hunter2" not in text
    written = yaml.safe_load((folder / "experiment.yaml").read_text())
    assert written["encryption_key"] == "***"
    assert written["automl"]["storage"] == "postgresql://***@db.example/optuna"

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


@pytest.mark.parametrize("key", ["model", "point", "runs"])
def test_a_common_word_key_leaves_words_and_paths_whole(
    tmp_path: Path, key: str, capsys: pytest.CaptureFixture[str]
) -> None:
    """Masked by field, not by text: a key that is a common word or part of a path leaves every
    message and record whole (a text search put '***' inside them, which showed the key)."""
    results = tmp_path / "runs" / "results"
    missing = tmp_path / "runs" / "model.pth"
    code = main([
        "export", "-e", str(empty_spec(tmp_path)), f"results_dir={results}",
        f"encryption_key={key}", f"export.checkpoint={missing}",
    ])  # fmt: skip
    line = f"export.checkpoint '{missing}' does not exist; point it at a model or a run folder"
    assert code == 2
    assert capsys.readouterr().err.strip() == f"reidkit export: error: {line}"
    folder = results / "export"
    assert json.loads((folder / "status.json").read_text())["message"] == line
    written = yaml.safe_load((folder / "experiment.yaml").read_text())
    assert written.pop("encryption_key") == "***"
    expected = load_spec(empty_spec(tmp_path), [f"results_dir={results}"])
    expected = apply_overrides(expected, {"export.checkpoint": str(missing)})
    reference = expected.model_dump(mode="json")
    reference.pop("encryption_key")
    assert written == reference  # every other value as given, not a star in it


def test_a_key_of_the_wrong_type_is_not_quoted(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """Validation quotes the value it refuses: for a secret field, '***'."""
    spec_file = empty_spec(tmp_path)
    code = main(["export", "-e", str(spec_file), "encryption_key=90210"])
    err = capsys.readouterr().err
    assert code == 2 and "90210" not in err
    assert err.strip() == (
        f"reidkit export: error: {spec_file}: key 'encryption_key': got '***'; "
        "Input should be a valid string"
    )

"""A results folder is accepted wherever a checkpoint is: it resolves to that run's best model
(or latest, or exported file), and the choice is printed."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reidkit.actions.evaluate import evaluate
from reidkit.actions.export import export
from reidkit.actions.models import resolve_checkpoint
from reidkit.config.loading import apply_overrides, save_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import CheckpointError
from reidkit.export import runtime
from tests.conftest import RunMain

Trained = tuple[ExperimentSpec, Path]


def test_training_records_its_best_checkpoint(trained: Trained) -> None:
    spec, _ = trained
    folder = spec.action_dir("train")
    status = json.loads((folder / "status.json").read_text())
    rows = (folder / "metrics.csv").read_text().splitlines()
    header, values = (
        rows[0].split(","),
        [dict(zip(rows[0].split(","), r.split(","), strict=True)) for r in rows[1:]],
    )
    assert "cmc_rank_1" in header
    best_row = max(values, key=lambda r: float(r["cmc_rank_1"]))  # first of equals wins
    assert (
        status["best_checkpoint"]
        == f"model_{int(best_row['epoch']):03d}_{int(best_row['step']):05d}.pth"
    )
    assert status["best_metric"] == f"cmc_rank_1 {float(best_row['cmc_rank_1']):.2f}"
    assert (folder / status["best_checkpoint"]).is_file()


def test_train_folder_and_results_root_resolve_to_the_best(
    trained: Trained, capsys: pytest.CaptureFixture[str]
) -> None:
    spec, _ = trained
    folder = spec.action_dir("train")
    best = folder / json.loads((folder / "status.json").read_text())["best_checkpoint"]
    assert resolve_checkpoint(folder, "evaluate.checkpoint") == best
    assert f"evaluate.checkpoint: using {best}" in capsys.readouterr().out
    assert resolve_checkpoint(Path(spec.results_dir), "export.checkpoint") == best


def test_without_a_validated_best_the_latest_is_used(trained: Trained, tmp_path: Path) -> None:
    spec, _ = trained
    copy = tmp_path / "train"
    shutil.copytree(spec.action_dir("train"), copy)
    status = json.loads((copy / "status.json").read_text())
    del status["best_checkpoint"]
    (copy / "status.json").write_text(json.dumps(status))
    assert resolve_checkpoint(copy, "evaluate.checkpoint") == copy / "reid_model_latest.pth"


def test_export_folder_resolves_to_its_onnx_file_and_evaluate_takes_folders(
    trained: Trained, tmp_path: Path
) -> None:
    spec, _ = trained
    spec = apply_overrides(
        spec,
        {
            "results_dir": str(tmp_path),
            "export.checkpoint": str(spec.action_dir("train")),
        },
    )
    onnx_file = export(spec).onnx_file
    assert resolve_checkpoint(spec.action_dir("export"), "evaluate.checkpoint") == onnx_file
    from_folder = evaluate(apply_overrides(spec, {"evaluate.checkpoint": str(tmp_path / "export")}))
    assert 0 <= from_folder.metrics["mAP"] <= 100


def test_folders_without_a_model_are_refused(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"is a folder without a model"):
        resolve_checkpoint(tmp_path, "evaluate.checkpoint")
    with pytest.raises(CheckpointError, match=r"evaluate\.checkpoint '.*nowhere' does not exist"):
        resolve_checkpoint(tmp_path / "nowhere", "evaluate.checkpoint")


def test_onnx_evaluation_runs_on_the_first_of_gpu_ids(
    trained: Trained, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """onnxruntime is asked for the device in evaluate.gpu_ids, not always device 0."""
    spec, _ = trained
    spec = apply_overrides(
        spec, {"results_dir": str(tmp_path), "export.checkpoint": str(spec.action_dir("train"))}
    )
    onnx_file = export(spec).onnx_file
    asked: list[int] = []
    real = runtime.default_providers

    def spy(gpu_id: int = 0) -> list:
        asked.append(gpu_id)
        return real(gpu_id)

    monkeypatch.setattr(runtime, "default_providers", spy)
    evaluate(
        apply_overrides(spec, {"evaluate.checkpoint": str(onnx_file), "evaluate.gpu_ids": [3]})
    )
    assert asked == [3]


def test_the_choice_is_printed_once_by_the_cli(
    trained: Trained, tmp_path: Path, run_main: RunMain
) -> None:
    """It was printed and logged, so a terminal showed it twice (``make demo``)."""
    spec, _ = trained
    spec_file = tmp_path / "spec.yaml"
    save_spec(spec, spec_file)
    folder = spec.action_dir("train")
    result = run_main(
        "evaluate", "-e", str(spec_file), f"results_dir={tmp_path}",
        f"evaluate.checkpoint={folder}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    lines = (result.stdout + result.stderr).splitlines()
    assert len([line for line in lines if line.startswith("evaluate.checkpoint: using")]) == 1

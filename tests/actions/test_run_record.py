"""The typed run record: what every action writes to ``status.json`` and what later runs read.

Files from before the record was typed, from other tools and from hostile hands are read
tolerantly; each action's own fields come back as written, from real runs.
"""

from __future__ import annotations

import json
import re
import shutil
import typing
from dataclasses import fields
from pathlib import Path
from typing import Any, get_args, get_origin, get_type_hints

import pytest

from reidkit.actions.evaluate import evaluate
from reidkit.actions.export import export
from reidkit.actions.infer import infer
from reidkit.actions.lifecycle import STATUS, run_action
from reidkit.actions.models import resolve_checkpoint
from reidkit.actions.run_record import (
    OUTCOMES,
    SUCCESS,
    EvaluateOutcome,
    ExportOutcome,
    InferenceOutcome,
    RunRecord,
    TrainOutcome,
    read_run_record,
)
from reidkit.config.loading import apply_overrides, load_spec
from reidkit.config.spec import ExperimentSpec

Trained = tuple[ExperimentSpec, Path]

# status.json files exactly as reidkit wrote them before the record was typed (export wrote
# null for a missing fp16 file; automl named the trial folder).
OLD_TRAIN = """{
  "date": "2025-11-02", "time": "14:03:11", "action": "train", "status": "SUCCESS",
  "message": "training finished",
  "kpi": {"cmc_rank_1": 41.67, "cmc_rank_5": 75.0, "mAP": 38.12, "num_valid_queries": 24.0},
  "epoch": 3, "max_epoch": 3, "best_checkpoint": "BEST", "best_metric": "cmc_rank_1 41.67"
}"""
OLD_EXPORT = """{
  "date": "2025-11-02", "time": "14:05:40", "action": "export", "status": "SUCCESS",
  "message": "exported ONNX", "kpi": {}, "onnx_file": "ONNX", "fp16_file": null,
  "checkpoint": "CKPT", "max_abs_diff": 1.9e-06, "min_cosine": 0.9999999,
  "fp16_max_abs_diff": null, "fp16_min_cosine": null, "providers": ["CPUExecutionProvider"],
  "check_inputs": "24 query/gallery images"
}"""
OLD_AUTOML = """{
  "date": "2025-11-02", "time": "15:00:00", "action": "automl", "status": "SUCCESS",
  "message": "best trial 0", "kpi": {"mAP": 12.5}, "best_trial": 0, "best_trial_dir": "TRIAL"
}"""


def _sample(hint: Any) -> Any:
    """A value of the type ``hint`` names (the non-None one of an optional)."""
    args = [a for a in get_args(hint) if a is not type(None)]
    origin = get_origin(hint)
    if origin is list:
        return [_sample(args[0])]
    if origin is dict:
        return {"key": _sample(args[1])}
    if args:
        return _sample(args[0])
    return {int: 3, float: 0.25, str: "text", typing.Any: "any"}[hint]


@pytest.mark.parametrize("action", OUTCOMES)
def test_each_actions_fields_round_trip_through_the_file(
    action: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    outcome_type = OUTCOMES[action]
    hints = get_type_hints(outcome_type)
    outcome = outcome_type(**{f.name: _sample(hints[f.name]) for f in fields(outcome_type)})
    spec = load_spec(None, [f"results_dir={tmp_path}"])
    with run_action(spec, action) as run:
        run.succeed("done", {"mAP": 12.5}, outcome)
    written = json.loads((tmp_path / action / STATUS).read_text())
    assert {"date", "time", "action", "status", "message", "kpi"} <= set(written)
    assert written["kpi"] == {"mAP": 12.5}  # TAO's flat layout: the action's fields beside
    assert written[fields(outcome_type)[0].name] == getattr(outcome, fields(outcome_type)[0].name)
    record = read_run_record(tmp_path / action / STATUS)
    assert record is not None
    assert (record.action, record.status, record.message) == (action, SUCCESS, "done")
    assert record.outcome == outcome


def test_an_action_cannot_record_another_actions_fields(tmp_path: Path) -> None:
    spec = load_spec(None, [f"results_dir={tmp_path}"])
    with (
        pytest.raises(TypeError, match="evaluate action cannot record a TrainOutcome"),
        run_action(spec, "evaluate") as run,
    ):
        run.succeed("done", outcome=TrainOutcome(epoch=1))
    assert read_run_record(tmp_path / "evaluate" / STATUS).status == "FAILURE"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("not json {", None),
        ("[1, 2]", None),
        ('{"status": "SUCCESS"}', RunRecord(None, "SUCCESS")),  # not reidkit's: no action
        (
            '{"action": "train", "status": 7, "message": null, "kpi": {"mAP": "high"},'
            ' "epoch": "three", "max_epoch": true, "best_checkpoint": 5, "extra": 1}',
            RunRecord("train", "", outcome=TrainOutcome()),
        ),
        (
            '{"action": "export", "status": "RUNNING", "kpi": {"mAP": 1}, "providers": [1],'
            ' "max_abs_diff": 2, "onnx_file": "m.onnx"}',
            RunRecord(
                "export",
                "RUNNING",
                kpi={"mAP": 1},
                outcome=ExportOutcome(onnx_file="m.onnx", max_abs_diff=2),
            ),
        ),
        ('{"action": "a-later-verb", "status": "SUCCESS"}', RunRecord("a-later-verb", "SUCCESS")),
    ],
    ids=["truncated", "not-an-object", "foreign", "wrong-types", "partly-wrong", "new-action"],
)
def test_foreign_and_broken_files_are_read_tolerantly(
    tmp_path: Path, text: str, expected: RunRecord | None
) -> None:
    (tmp_path / STATUS).write_text(text)
    assert read_run_record(tmp_path / STATUS) == expected


def _old_record(folder: Path, template: str, **values: str) -> None:
    for placeholder, value in values.items():
        template = template.replace(f'"{placeholder}"', json.dumps(value))
    (folder / STATUS).write_text(template)


def test_run_folders_from_before_the_typed_record_still_resolve(
    trained: Trained, tmp_path: Path
) -> None:
    spec, _ = trained
    train = tmp_path / "results" / "train"
    shutil.copytree(spec.action_dir("train"), train)
    best = read_run_record(train / STATUS).outcome.best_checkpoint
    _old_record(train, OLD_TRAIN, BEST=best)
    assert resolve_checkpoint(train, "evaluate.checkpoint") == train / best

    export_folder = tmp_path / "results" / "export"
    export_folder.mkdir()
    onnx_file = export_folder / "model.onnx"
    onnx_file.write_bytes(b"")  # resolution only looks for the file
    _old_record(export_folder, OLD_EXPORT, ONNX=str(onnx_file), CKPT=str(train / best))
    assert resolve_checkpoint(export_folder, "serve.model") == onnx_file

    automl = tmp_path / "automl"
    automl.mkdir()
    _old_record(automl, OLD_AUTOML, TRIAL=str(tmp_path / "results"))
    assert resolve_checkpoint(automl, "evaluate.checkpoint") == train / best


@pytest.mark.parametrize(
    "best", ["../elsewhere/model.pth", "/etc/passwd", "sub/model.pth", ""], ids=str
)
def test_a_best_checkpoint_outside_the_run_folder_is_not_trusted(
    trained: Trained, tmp_path: Path, best: str
) -> None:
    spec, _ = trained
    train = tmp_path / "train"
    shutil.copytree(spec.action_dir("train"), train)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "model.pth").write_bytes(b"not a checkpoint")
    (train / "sub").mkdir()
    (train / "sub" / "model.pth").write_bytes(b"not a checkpoint")
    _old_record(train, OLD_TRAIN, BEST=best)
    assert resolve_checkpoint(train, "evaluate.checkpoint") == train / "reid_model_latest.pth"


def test_the_actions_record_their_own_fields(trained: Trained, tmp_path: Path) -> None:
    """Real runs: train (the session's model), evaluate, inference and export."""
    spec, _ = trained
    train = read_run_record(spec.action_dir("train") / STATUS)
    assert train is not None and train.status == SUCCESS
    assert isinstance(train.outcome, TrainOutcome)
    assert train.outcome.epoch == train.outcome.max_epoch == 3
    assert re.fullmatch(r"cmc_rank_1 \d+\.\d\d", train.outcome.best_metric or "")
    assert re.fullmatch(r"model_\d{3}_\d{5}\.pth", train.outcome.best_checkpoint or "")
    assert (spec.action_dir("train") / train.outcome.best_checkpoint).is_file()

    folder = str(spec.action_dir("train"))
    spec = apply_overrides(
        spec,
        {
            "results_dir": str(tmp_path),
            "evaluate.checkpoint": folder,
            "inference.checkpoint": folder,
            "export.checkpoint": folder,
        },
    )
    evaluated = evaluate(spec)
    record = read_run_record(tmp_path / "evaluate" / STATUS)
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert record.kpi == evaluated.metrics
    assert isinstance(record.outcome, EvaluateOutcome)
    assert record.outcome.match_threshold == pytest.approx(
        metrics["verification"]["match_threshold"], abs=1e-6
    )

    inferred = infer(spec)
    record = read_run_record(tmp_path / "inference" / STATUS)
    assert record.outcome == InferenceOutcome(num_images=inferred.num_images)

    exported = export(spec)
    record = read_run_record(tmp_path / "export" / STATUS)
    assert isinstance(record.outcome, ExportOutcome)
    assert Path(record.outcome.onnx_file) == exported.onnx_file
    assert record.outcome.max_abs_diff == exported.max_abs_diff
    assert record.outcome.providers == exported.providers
    assert resolve_checkpoint(tmp_path / "export", "serve.model") == exported.onnx_file

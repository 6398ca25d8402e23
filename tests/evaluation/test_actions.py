"""The evaluate and inference actions on a really trained model: files, numbers, errors."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.actions.evaluate import evaluate
from reidkit.actions.infer import infer
from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import CheckpointError, DatasetError
from tests.conftest import RunMain, assert_one_line_error

Trained = tuple[ExperimentSpec, Path]


def _evaluate_spec(trained: Trained, tmp_path: Path, **extra: object) -> ExperimentSpec:
    spec, checkpoint = trained
    overrides = {"results_dir": str(tmp_path), "evaluate.checkpoint": str(checkpoint), **extra}
    return apply_overrides(spec, overrides)


def test_evaluate_writes_metrics_status_and_readable_plots(
    trained: Trained, tmp_path: Path
) -> None:
    spec = _evaluate_spec(
        trained, tmp_path, **{"re_ranking.max_rank": 5, "re_ranking.num_query": 4}
    )
    result = evaluate(spec)
    metrics = json.loads((tmp_path / "evaluate" / "metrics.json").read_text())
    assert set(metrics) >= {"cmc_rank_1", "cmc_rank_5", "mAP", "mINP", "num_valid_queries", "cmc"}
    assert len(metrics["cmc"]) == 5
    assert metrics["cmc"] == sorted(metrics["cmc"])  # CMC never decreases with rank
    assert metrics["cmc"][0] == metrics["cmc_rank_1"]
    status = json.loads((tmp_path / "evaluate" / "status.json").read_text())
    assert status["kpi"]["mAP"] == metrics["mAP"]
    for plot in result.plots:
        width, height = Image.open(plot).size
        assert width > 300 and height > 200


def test_re_ranking_keeps_the_protocol(trained: Trained, tmp_path: Path) -> None:
    plain = evaluate(_evaluate_spec(trained, tmp_path / "a")).metrics
    spec = _evaluate_spec(trained, tmp_path / "b", **{"re_ranking.re_ranking": True})
    ranked = evaluate(spec).metrics
    assert ranked["num_valid_queries"] == plain["num_valid_queries"]
    assert 0 <= ranked["mAP"] <= 100
    assert ranked != plain


def test_flip_feature_changes_the_embedding(trained: Trained, tmp_path: Path) -> None:
    plain = evaluate(_evaluate_spec(trained, tmp_path / "a")).metrics
    spec = _evaluate_spec(trained, tmp_path / "b", **{"model.with_flip_feature": True})
    assert evaluate(spec).metrics["mAP"] != plain["mAP"]


def test_inference_writes_every_image_and_matches(trained: Trained, tmp_path: Path) -> None:
    spec, checkpoint = trained
    overrides = {
        "results_dir": str(tmp_path),
        "inference.checkpoint": str(checkpoint),
        "inference.batch_size": 7,
    }
    spec = apply_overrides(spec, overrides)
    result = infer(spec)
    entries = json.loads(result.output_file.read_text())
    folders = [Path(spec.dataset.query_dataset_dir), Path(spec.dataset.test_dataset_dir)]
    expected = sum(1 for f in folders for p in f.iterdir() if not p.name.startswith("-1"))
    assert len(entries) == expected == result.num_images  # every batch, not just the last one
    assert len({e["img_path"] for e in entries}) == expected
    matrix = np.load(result.embeddings_file)
    assert matrix.shape == (expected, len(entries[0]["embedding"]))
    np.testing.assert_allclose(matrix[3], entries[3]["embedding"], rtol=1e-6)
    with open(result.index_file) as handle:
        index = list(csv.DictReader(handle))
    assert [row["img_path"] for row in index] == [e["img_path"] for e in entries]
    matches = json.loads(result.matches_file.read_text())
    assert len(matches) == sum(1 for row in index if row["split"] == "query")
    distances = [m["distance"] for m in matches[0]["matches"]]
    assert distances == sorted(distances)
    assert len(distances) == spec.re_ranking.max_rank


def test_missing_checkpoint_and_unset_key(trained: Trained, tmp_path: Path) -> None:
    spec, _ = trained
    with pytest.raises(CheckpointError, match=r"evaluate.checkpoint is not set"):
        evaluate(apply_overrides(spec, {"results_dir": str(tmp_path)}))
    missing = {"results_dir": str(tmp_path), "evaluate.checkpoint": "nope.pth"}
    with pytest.raises(CheckpointError, match="does not exist"):
        evaluate(apply_overrides(spec, missing))


def test_query_without_any_valid_match_is_refused(trained: Trained, tmp_path: Path) -> None:
    """A gallery holding each query id only in the query's own camera leaves nothing to score."""
    spec, checkpoint = trained
    source = Path(spec.dataset.query_dataset_dir)
    query, gallery = tmp_path / "query", tmp_path / "gallery"
    query.mkdir()
    gallery.mkdir()
    one_camera = [p for p in sorted(source.iterdir()) if "_c1s" in p.name][:4]
    assert len({p.name.split("_")[0] for p in one_camera}) > 1
    for image in one_camera:
        shutil.copy(image, query / image.name)
        shutil.copy(image, gallery / image.name.replace("_00.", "_01."))
    overrides = {
        "results_dir": str(tmp_path),
        "evaluate.checkpoint": str(checkpoint),
        "evaluate.query_dataset": str(query),
        "evaluate.test_dataset": str(gallery),
    }
    with pytest.raises(DatasetError, match="no query has a valid match"):
        evaluate(apply_overrides(spec, overrides))


def test_cli_evaluate_with_wrong_backbone_is_one_line(
    trained: Trained, tmp_path: Path, run_main: RunMain
) -> None:
    spec, checkpoint = trained
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    result = run_main(
        "evaluate", "-e", str(spec_file), f"evaluate.checkpoint={checkpoint}",
        "model.backbone=resnet_34", f"results_dir={tmp_path}",
    )  # fmt: skip
    assert_one_line_error(result, "model.backbone=resnet_18", "resnet_34")


def test_inference_with_non_utf8_file_names(trained: Trained, tmp_path: Path) -> None:
    """A name with a Latin-1 byte once crashed inference halfway; it is written escaped."""
    import os

    spec, checkpoint = trained
    query, gallery = tmp_path / "query", tmp_path / "gallery"
    shutil.copytree(spec.dataset.query_dataset_dir, query)
    shutil.copytree(spec.dataset.test_dataset_dir, gallery)
    original = sorted(query.iterdir())[0]
    odd = os.fsencode(original)[:-4] + b"_caf\xe9.jpg"
    os.rename(original, odd)
    spec = apply_overrides(
        spec,
        {
            "results_dir": str(tmp_path / "out"),
            "inference.checkpoint": str(checkpoint),
            "inference.query_dataset": str(query),
            "inference.test_dataset": str(gallery),
        },
    )
    result = infer(spec)
    escaped = odd.decode("utf-8", "backslashreplace")
    assert escaped.endswith("_caf\\xe9.jpg")
    for output in (result.output_file, result.matches_file, result.index_file):
        output.read_bytes().decode("utf-8")  # valid UTF-8 throughout
    assert escaped in {e["img_path"] for e in json.loads(result.output_file.read_text())}
    with open(result.index_file, encoding="utf-8") as handle:
        assert escaped in {row["img_path"] for row in csv.DictReader(handle)}


def test_re_ranking_neighbourhood_larger_than_the_data_is_one_line(
    trained: Trained, tmp_path: Path
) -> None:
    from reidkit.errors import SpecError

    ranking = {"re_ranking.re_ranking": True, "re_ranking.k1": 900}
    spec = _evaluate_spec(trained, tmp_path, **ranking)
    with pytest.raises(SpecError, match=r"re_ranking.k1 900 / re_ranking.k2 6 need at least 901"):
        evaluate(spec)

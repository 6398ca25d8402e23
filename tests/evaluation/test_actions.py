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


def test_inference_searches_for_people_the_gallery_does_not_hold(
    trained: Trained, tmp_path: Path
) -> None:
    """Inference ranks the gallery for each query and scores nothing, so a query of people
    the gallery may not hold (the usual search) is embedded and ranked; evaluate, which
    scores, still refuses it (it was refused for both as "not the same dataset")."""
    spec, checkpoint = trained
    source = Path(spec.dataset.query_dataset_dir)
    query = tmp_path / "unknown"
    query.mkdir()
    for image in sorted(source.iterdir())[:3]:
        shutil.copy(image, query / ("9999" + image.name[image.name.index("_") :]))
    overrides = {"results_dir": str(tmp_path), "inference.checkpoint": str(checkpoint)}
    result = infer(apply_overrides(spec, overrides | {"inference.query_dataset": str(query)}))
    matches = json.loads(result.matches_file.read_text())
    assert len(matches) == 3 and all(m["matches"] for m in matches)
    assert all(Path(m["img_path"]).parent == query and m["pid"] == 9999 for m in matches)
    scored = {"evaluate.checkpoint": str(checkpoint), "evaluate.query_dataset": str(query)}
    with pytest.raises(DatasetError, match="no image of their id in the gallery"):
        evaluate(apply_overrides(spec, {"results_dir": str(tmp_path)} | scored))


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


def test_crops_a_few_pixels_wide_are_evaluated(
    trained: Trained, tmp_path: Path, run_main: RunMain
) -> None:
    """Far-away people give crops a few pixels wide; the up-front check (JPEGs decoded at 1/8
    scale) stopped evaluate on them with a ZeroDivisionError traceback."""
    spec, checkpoint = trained
    folders = {}
    for split, source in (
        ("query", spec.dataset.query_dataset_dir),
        ("gallery", spec.dataset.test_dataset_dir),
    ):
        folders[split] = tmp_path / split
        folders[split].mkdir()
        for image in sorted(Path(source).iterdir()):
            Image.open(image).resize((5, 7)).save(folders[split] / image.name)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    result = run_main(
        "evaluate", "-e", str(spec_file), f"evaluate.checkpoint={checkpoint}",
        f"evaluate.query_dataset={folders['query']}", f"evaluate.test_dataset={folders['gallery']}",
        f"results_dir={tmp_path / 'out'}",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    assert json.loads((tmp_path / "out" / "evaluate" / "metrics.json").read_text())["mAP"] > 0


def test_a_checkpoint_with_nan_weights_is_one_line_not_nan_results(
    trained: Trained, tmp_path: Path, run_main: RunMain
) -> None:
    """A diverged or damaged checkpoint embeds every image as NaN: evaluate stopped with a
    traceback, inference wrote NaN (not JSON) for every image and exited 0."""
    from reidkit.models.checkpoint_file import load_checkpoint, save_checkpoint

    spec, checkpoint = trained
    broken = load_checkpoint(checkpoint, None)
    weights = broken["state_dict"]
    first = next(k for k, v in weights.items() if v.is_floating_point() and v.dim() > 1)
    weights[first].fill_(float("nan"))
    nan_model = tmp_path / "nan.pth"
    save_checkpoint(broken, nan_model, None)
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    for action in ("evaluate", "inference"):
        result = run_main(
            action, "-e", str(spec_file), f"{action}.checkpoint={nan_model}",
            f"results_dir={tmp_path / action}",
        )  # fmt: skip
        assert_one_line_error(result, f"{action}.checkpoint '{nan_model}'", "NaN or infinity")
    assert not (tmp_path / "inference" / "inference" / "inference.json").exists()
    assert not (tmp_path / "evaluate" / "evaluate" / "metrics.json").exists()


@pytest.mark.parametrize(
    ("action", "key", "target", "needle"),
    [
        (
            "inference",
            "inference.output_file",
            "inference/status.json",
            "the run's own status.json",
        ),
        ("evaluate", "evaluate.output_cmc_curve_plot", "evaluate/metrics.json", "metrics.json"),
        ("evaluate", "evaluate.output_roc_curve_plot", "CHECKPOINT", "the model"),
        ("inference", "inference.output_file", "CHECKPOINT", "the model"),
    ],
)
def test_an_output_named_like_a_record_another_output_or_the_model_is_refused(
    trained: Trained,
    tmp_path: Path,
    run_main: RunMain,
    action: str,
    key: str,
    target: str,
    needle: str,
) -> None:
    """Every output is written whole and renamed into place, so a collision was silent: the
    embeddings JSON replaced by the run's status record, the metrics by a PNG, exit 0."""
    spec, checkpoint = trained
    model = tmp_path / "model.pth"
    shutil.copy(checkpoint, model)
    before = model.read_bytes()
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    output = model if target == "CHECKPOINT" else tmp_path / "out" / target
    result = run_main(
        action, "-e", str(spec_file), f"{action}.checkpoint={model}",
        f"results_dir={tmp_path / 'out'}", f"{key}={output}",
    )  # fmt: skip
    assert_one_line_error(result, f"{key} '{output}'", needle)
    assert model.read_bytes() == before


def test_an_output_inside_the_query_or_gallery_dataset_is_refused_before_embedding(
    trained: Trained, synth_root: Path, tmp_path: Path, run_main: RunMain
) -> None:
    """``inference.output_file`` named like a query image replaced that image with JSON (exit
    0; the next run refused the dataset's "broken image"), and any output written into a
    dataset folder became part of it. The model here embeds every image as NaN, which is
    refused only after embedding: the refusal seen proves no image was embedded first."""
    from reidkit.models.checkpoint_file import load_checkpoint, save_checkpoint

    spec, checkpoint = trained
    broken = load_checkpoint(checkpoint, None)
    for weights in broken["state_dict"].values():
        if weights.is_floating_point():
            weights.fill_(float("nan"))
    nan_model = tmp_path / "nan.pth"
    save_checkpoint(broken, nan_model, None)
    query = shutil.copytree(synth_root / "query", tmp_path / "query")
    gallery = shutil.copytree(synth_root / "bounding_box_test", tmp_path / "gallery")
    image = sorted(query.iterdir())[0]
    before = {p: p.read_bytes() for folder in (query, gallery) for p in folder.iterdir()}
    spec_file = tmp_path / "spec.yaml"
    spec_file.write_text(json.dumps(spec.model_dump(mode="json")))
    own, fallback = f"inference.query_dataset={query}", f"dataset.test_dataset_dir={gallery}"
    cases = [
        (image, [own], f"is inside inference.query_dataset '{query}'"),
        (gallery / "out.json", [fallback], f"is inside dataset.test_dataset_dir '{gallery}'"),
        (query, [own], f"is inference.query_dataset '{query}'"),
    ]
    for output, datasets, needle in cases:
        result = run_main(
            "inference", "-e", str(spec_file), f"inference.checkpoint={nan_model}",
            f"results_dir={tmp_path / 'out'}", f"inference.output_file={output}", *datasets,
        )  # fmt: skip
        assert_one_line_error(result, f"inference.output_file '{output}'", needle)
    assert {p: p.read_bytes() for folder in (query, gallery) for p in folder.iterdir()} == before

"""``reidkit gallery add|search|forget|stats|rebuild`` and evaluate's threshold, through the CLI."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest

from reidkit.actions.evaluate import evaluate
from reidkit.actions.export import export
from reidkit.cli import main
from reidkit.config.loading import apply_overrides
from reidkit.data import synthesize
from reidkit.export.runtime import load_embedder
from reidkit.gallery.factory import open_gallery
from reidkit.models.checkpoint_file import read_checkpoint_object, save_checkpoint
from tests.conftest import empty_spec
from tests.export.conftest import make_checkpoint
from tests.gallery.conftest import folder_bytes


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("gallery-site")
    synthesize(root / "data", ids=8, cameras=3, images_per_id=4, height=64, width=32, seed=9)
    spec = make_checkpoint(root / "model", "model.backbone=resnet_18")
    other = make_checkpoint(root / "other", "model.backbone=resnet_18", "model.feat_dim=32")
    return {
        "root": root,
        "crops": root / "data" / "bounding_box_test",
        "query": root / "data" / "query",
        "checkpoint": Path(spec.export.checkpoint),
        "other": Path(other.export.checkpoint),
    }


def _run(site: dict[str, Path], tmp_path: Path, verb: str, *overrides: str) -> int:
    return main(
        [
            "gallery",
            verb,
            "-e",
            str(empty_spec(tmp_path)),
            f"results_dir={tmp_path / 'results'}",
            "model.backbone=resnet_18",
            "model.input_height=64",
            "model.input_width=32",
            "model.feat_dim=64",
            f"gallery.uri={tmp_path / 'gallery'}",
            f"gallery.checkpoint={site['checkpoint']}",
            "gallery.operator=ops-team",
            *overrides,
        ]
    )


def test_add_search_forget_stats(site, tmp_path, capsys):
    crops = f"gallery.crops={site['crops']}"
    origin = "gallery.time_origin=2026-03-01T06:00:00Z"
    assert _run(site, tmp_path, "add", crops, origin, "gallery.batch_size=16") == 0
    assert "already stored" in capsys.readouterr().out
    with open_gallery(tmp_path / "gallery") as gallery:
        size = gallery.stats().size
        cameras = gallery.stats().cameras
    assert size == len(list(site["crops"].glob("*.jpg")))
    # A rerun stores nothing twice.
    assert _run(site, tmp_path, "add", crops, origin) == 0
    assert f"added 0 crops ({size} already stored)" in capsys.readouterr().out

    probe = sorted(site["crops"].glob("*.jpg"))[3]
    assert (
        _run(
            site,
            tmp_path,
            "search",
            f"gallery.query=[{probe}]",
            "gallery.top_k=5",
            "gallery.match_threshold=0.05",
        )
        == 0
    )
    table = capsys.readouterr().out
    assert "rank  distance  decision" in table
    (result,) = json.loads((tmp_path / "results" / "gallery" / "search.json").read_text())
    hits = result["hits"]
    assert len(hits) == 5 and hits[0]["path"] == str(probe.resolve())
    assert hits[0]["distance"] < 1e-4 and hits[0]["decision"] == "match"
    assert [h["distance"] for h in hits] == sorted(h["distance"] for h in hits)

    # Filters and re-ranking of the small result set keep to the filter.
    camera = cameras[0]
    assert (
        _run(
            site,
            tmp_path,
            "search",
            f"gallery.query=[{site['query']}]",
            f"gallery.cameras=[{camera}]",
            "gallery.re_ranking=true",
            "gallery.rerank_pool=12",
            "gallery.top_k=3",
        )
        == 0
    )
    results = json.loads((tmp_path / "results" / "gallery" / "search.json").read_text())
    assert len(results) == len(list(site["query"].glob("*.jpg")))
    assert all(h["camera"] == camera for r in results for h in r["hits"])
    assert all(len(r["hits"]) == 3 for r in results)

    capsys.readouterr()
    track = probe.name.split("_")[0]
    assert _run(site, tmp_path, "forget", f"gallery.forget_tracks=['{track}']") == 0
    out = capsys.readouterr().out
    removed = int(out.split()[1])
    assert removed >= 1 and f"{size - removed} remain" in out
    assert _run(site, tmp_path, "stats") == 0
    assert f"{size - removed} crops" in capsys.readouterr().out
    audit = (tmp_path / "gallery" / "audit.jsonl").read_text().splitlines()
    assert {json.loads(line)["operator"] for line in audit} == {"ops-team"}
    status = json.loads((tmp_path / "results" / "gallery" / "status.json").read_text())
    assert status["status"] == "SUCCESS" and status["size"] == size - removed


def test_other_model_and_bad_input_refused(site, tmp_path, capsys):
    assert _run(site, tmp_path, "add", f"gallery.crops={site['crops']}") == 0
    capsys.readouterr()
    other = [
        f"gallery.checkpoint={site['other']}",
        "model.feat_dim=32",
        f"gallery.query=[{site['query']}]",
    ]
    assert _run(site, tmp_path, "search", *other) == 2
    err = capsys.readouterr().err
    assert "filled by another model" in err and len(err.strip().splitlines()) == 1
    bad = [
        ("search", f"gallery.query=[{site['query']}]", "gallery.cameras=[77]"),
        ("search", f"gallery.query=[{site['query']}]", "gallery.start=tomorrow"),
        ("forget",),
        ("add",),
    ]
    for verb, *overrides in bad:
        assert _run(site, tmp_path, verb, *overrides) == 2, overrides
        err = capsys.readouterr().err
        assert len(err.strip().splitlines()) == 1, err


def test_a_failed_first_add_leaves_no_gallery_and_an_existing_one_unchanged(site, tmp_path, capsys):
    crops = tmp_path / "crops"
    shutil.copytree(site["crops"], crops)
    damaged = sorted(crops.glob("*.jpg"))[5]
    damaged.write_bytes(damaged.read_bytes()[:300])  # a JPEG cut short, among good ones
    add = ("add", f"gallery.crops={crops}")

    # A gallery the add would create, two folders deep: neither folder remains.
    new = tmp_path / "site" / "gallery"
    assert _run(site, tmp_path, *add, f"gallery.uri={new}") == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(damaged) in err[0], err
    assert not (tmp_path / "site").exists()

    # An empty folder given as gallery.uri stays, and stays empty.
    empty = tmp_path / "empty"
    empty.mkdir()
    assert _run(site, tmp_path, *add, f"gallery.uri={empty}") == 2
    assert empty.is_dir() and list(empty.iterdir()) == []

    # A gallery that existed is left exactly as it was.
    assert _run(site, tmp_path, "add", f"gallery.crops={site['crops']}") == 0
    before = folder_bytes(tmp_path / "gallery")
    capsys.readouterr()
    assert _run(site, tmp_path, *add) == 2
    assert str(damaged) in capsys.readouterr().err
    assert folder_bytes(tmp_path / "gallery") == before


def test_evaluate_reports_roc_and_threshold(site, tmp_path):
    spec = make_checkpoint(tmp_path, "model.backbone=resnet_18")
    data = site["root"] / "data"
    spec = apply_overrides(
        spec,
        {
            "evaluate.checkpoint": spec.export.checkpoint,
            "evaluate.gpu_ids": [],
            "dataset.query_dataset_dir": str(data / "query"),
            "dataset.test_dataset_dir": str(data / "bounding_box_test"),
            "dataset.num_workers": 0,
            "evaluate.target_false_match_rate": 0.01,
        },
    )
    result = evaluate(spec)
    metrics = json.loads((result.results_dir / "metrics.json").read_text())
    verification = metrics["verification"]
    card = json.loads((result.results_dir / "model_card.json").read_text())
    assert card["match_threshold"] == pytest.approx(verification["match_threshold"], abs=1e-6)
    assert card["match_false_match_rate"] == 0.01
    assert 0 < verification["match_threshold"] < 4
    assert verification["impostor_pairs"] > verification["genuine_pairs"] > 0
    assert (result.results_dir / "roc_curve.png").is_file()


def test_the_calibrated_threshold_travels_into_export_and_gallery(site, tmp_path, capsys):
    """evaluate, then export and gallery add on the same results_dir: the ONNX card and the
    gallery carry the threshold; another checkpoint (other weights, same shape) does not."""
    spec = make_checkpoint(tmp_path / "model", "model.backbone=resnet_18")
    data = site["root"] / "data"
    spec = apply_overrides(
        spec,
        {
            "results_dir": str(tmp_path / "results"),
            "evaluate.checkpoint": spec.export.checkpoint,
            "evaluate.gpu_ids": [],
            "dataset.query_dataset_dir": str(data / "query"),
            "dataset.test_dataset_dir": str(data / "bounding_box_test"),
            "dataset.num_workers": 0,
        },
    )
    evaluate(spec)
    calibrated = json.loads((tmp_path / "results/evaluate/model_card.json").read_text())
    threshold = calibrated["match_threshold"]

    onnx_file = tmp_path / "model.onnx"
    export(apply_overrides(spec, {"export.onnx_file": str(onnx_file)}))
    _, onnx_card = load_embedder(onnx_file)
    assert onnx_card.match_threshold == pytest.approx(threshold)
    assert onnx_card.match_false_match_rate == calibrated["match_false_match_rate"]

    checkpoint = read_checkpoint_object(spec.export.checkpoint, None)
    weights = checkpoint["state_dict"]
    name = next(k for k, v in weights.items() if v.is_floating_point())
    weights[name] = weights[name] + 0.01
    other = tmp_path / "other.pth"
    save_checkpoint(checkpoint, other, None)
    other_onnx = tmp_path / "other.onnx"
    export(
        apply_overrides(
            spec, {"export.checkpoint": str(other), "export.onnx_file": str(other_onnx)}
        )
    )
    assert load_embedder(other_onnx)[1].match_threshold is None

    gallery = tmp_path / "gallery"
    args = [f"results_dir={tmp_path / 'results'}", f"gallery.uri={gallery}"]
    common = ["model.backbone=resnet_18", "model.input_height=64", "model.input_width=32"]
    common += ["model.feat_dim=64", f"gallery.checkpoint={spec.export.checkpoint}"]
    cli = ["-e", str(empty_spec(tmp_path)), *args, *common, f"gallery.crops={site['crops']}"]
    assert main(["gallery", "add", *cli]) == 0
    capsys.readouterr()
    with open_gallery(gallery) as opened:
        assert opened.card["match_threshold"] == pytest.approx(threshold)


def test_rebuild_moves_the_gallery_to_another_model(site, tmp_path, capsys):
    crops = tmp_path / "crops"
    shutil.copytree(site["crops"], crops)
    assert _run(site, tmp_path, "add", f"gallery.crops={crops}") == 0
    size = len(list(crops.glob("*.jpg")))
    vanished = sorted(crops.glob("*.jpg"))[0]
    vanished.unlink()
    other = [f"gallery.checkpoint={site['other']}", "model.feat_dim=32", "gallery.operator=dpo"]
    capsys.readouterr()
    assert _run(site, tmp_path, "rebuild", *other) == 2
    err = capsys.readouterr().err.strip()
    listed = tmp_path / "results" / "gallery" / "missing_crops.txt"
    assert len(err.splitlines()) == 1 and "rebuild_drop_missing: true" in err and str(listed) in err
    assert listed.read_text().splitlines() == [str(vanished.resolve())]
    # Nothing changed: the first model still searches the gallery.
    query = f"gallery.query=[{site['query']}]"
    assert _run(site, tmp_path, "search", query) == 0
    capsys.readouterr()
    assert _run(site, tmp_path, "rebuild", *other, "gallery.rebuild_drop_missing=true") == 0
    assert f"rebuilt the gallery with {size - 1} crops" in capsys.readouterr().out
    assert _run(site, tmp_path, "search", query) == 2
    err = capsys.readouterr().err
    assert "filled by another model" in err and "reidkit gallery rebuild" in err
    assert _run(site, tmp_path, "search", query, *other) == 0
    with open_gallery(tmp_path / "gallery") as gallery:
        assert gallery.stats().size == size - 1 and gallery.card["embedding_dim"] == 32
        assert gallery.audit_log()[-1]["action"] == "search"
        assert [r["operator"] for r in gallery.audit_log() if r["action"] == "rebuild"] == ["dpo"]

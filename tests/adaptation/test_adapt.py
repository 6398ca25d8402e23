"""The adapt action on real crops: rounds, resume after a kill, the guard, bad input, and a
result that evaluate and export take like any trained checkpoint."""

from __future__ import annotations

import contextlib
import csv
import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from reidkit.actions.adapt import adapt, target_crops
from reidkit.actions.evaluate import evaluate
from reidkit.actions.export import export
from reidkit.actions.gallery import gallery_add
from reidkit.adaptation import OUTLIER, AdaptationError, AdaptModule, loop
from reidkit.cli import main
from reidkit.config.loading import apply_overrides, save_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.interrupts import RunInterrupted
from reidkit.models.restore import read_checkpoint_card
from tests.adaptation.conftest import PKU_TRAIN, TARGET_IDS, noise_crops, target_folder

PKU_VAL = PKU_TRAIN.parent / "val"


def _status(spec: ExperimentSpec) -> dict:
    return json.loads((spec.action_dir("adapt") / "status.json").read_text())


def test_adapt_resumes_after_a_kill_and_writes_a_checkpoint_evaluate_and_export_take(
    adapt_spec: ExperimentSpec, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture
) -> None:
    # A kill during round 2: round 1 is on disk, the run says how to go on.
    real_step = AdaptModule.training_step

    def killed_in_round_two(self: AdaptModule, batch, batch_idx: int):
        if self.current_epoch == 1:
            raise RunInterrupted(15)
        return real_step(self, batch, batch_idx)

    # This test is about resuming: two rounds must beat round 0. With the site's BatchNorm
    # statistics, the ImageNet source's round 0 already groups these 256 crops better than two
    # rounds from it do (0.162 against 0.106, 0.153), so it starts from the statistics as saved.
    adapt_spec = apply_overrides(adapt_spec, {"adapt.site_batchnorm": False})
    monkeypatch.setattr(AdaptModule, "training_step", killed_in_round_two)
    with pytest.raises(RunInterrupted, match="in round 2; rerun the same command to resume"):
        adapt(adapt_spec)
    first = capsys.readouterr().out
    assert _status(adapt_spec)["status"] == "FAILURE"
    assert not (adapt_spec.action_dir("adapt") / "adapted_model.pth").exists()
    monkeypatch.setattr(AdaptModule, "training_step", real_step)

    result = adapt(adapt_spec)
    second = capsys.readouterr().out
    assert "resuming from" in second and "source model:" not in second
    # Rounds 0 and 1 come from the first run, unchanged; round 2 is new.
    assert [r.round for r in result.rounds] == [0, 1, 2]
    for line in ("source model:", "round 1:"):
        assert next(x for x in first.splitlines() if line in x) in first
    assert result.quality == max(r.quality for r in result.rounds[1:])
    assert result.quality > result.source_quality
    status = _status(adapt_spec)
    assert status["status"] == "SUCCESS" and status["chosen_round"] == result.chosen_round
    assert [r["round"] for r in status["rounds"]] == [0, 1, 2]

    card = read_checkpoint_card(result.checkpoint, None)
    record = card.adaptation
    assert record["chosen_round"] == result.chosen_round and record["rounds"] == 2
    assert record["target_crops"] == 16 * TARGET_IDS and record["target_cameras"] == 2
    assert len(record["source_weights_digest"]) == 64
    weights = torch.load(result.checkpoint, weights_only=True)["state_dict"]
    assert "optimizer_states" not in torch.load(result.checkpoint, weights_only=True)
    source = torch.load(adapt_spec.adapt.checkpoint, weights_only=True)["state_dict"]
    assert any(not torch.equal(weights[k], source[k]) for k in source)

    # The result is an ordinary checkpoint: scored on the other pku_views people, exported.
    checked = apply_overrides(
        adapt_spec,
        {
            "evaluate.checkpoint": str(result.checkpoint),
            "evaluate.query_dataset": str(PKU_VAL / "query"),
            "evaluate.test_dataset": str(PKU_VAL / "gallery"),
            "export.checkpoint": str(result.checkpoint),
        },
    )
    assert 0 < evaluate(checked).metrics["mAP"] <= 100
    assert export(checked).onnx_file.stat().st_size > 1_000_000


def _cli(spec: ExperimentSpec, capsys: pytest.CaptureFixture, **overrides: object) -> str:
    """Run ``reidkit adapt`` in-process on ``spec`` (one round) with ``section__key=value``
    overrides: exit code 2, and the one error line it printed; no adapted model."""
    path = Path(spec.results_dir).parent / "spec.yaml"
    save_spec(apply_overrides(spec, {"adapt.num_epochs": 1}), path)
    args = [f"{k.replace('__', '.')}={v}" for k, v in overrides.items()]
    code = main(["adapt", "-e", str(path), *args])
    err = capsys.readouterr().err
    assert code == 2, err
    assert "Traceback" not in err
    lines = [line for line in err.splitlines() if "error:" in line]
    assert len(lines) == 1, err
    assert not (spec.action_dir("adapt") / "adapted_model.pth").exists()
    return lines[0]


def test_random_noise_crops_stop_with_one_line(
    adapt_spec: ExperimentSpec, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    noise = noise_crops(tmp_path / "noise", 96)
    line = _cli(adapt_spec, capsys, adapt__target=noise)
    assert "show no identity structure" in line and "mirrored" in line
    assert _status(adapt_spec)["status"] == "FAILURE"


@pytest.mark.parametrize(
    ("overrides", "needles"),
    [
        ({"model__input_height": 128}, ("was trained with model.input_height=64", "has 128")),
        ({"adapt__camera_proxies": "on", "adapt__target": "ONE_CAMERA"}, ("all come from camera",)),
        ({"adapt__target": "TINY"}, ("holds 4 crops", "at least 8")),
        ({"adapt__target": "EMPTY"}, ("holds no",)),
        ({"adapt__checkpoint": "NOWHERE"}, ("does not exist",)),
        ({"adapt__source_dataset": "TARGET"}, ("has 16 identities", "trained on 10")),
        # sampler softmax lets the spec take any batch size; adapt's P x K batches cannot
        # (a ZeroDivisionError traceback in round 1 before).
        (
            {"dataset__sampler": "softmax", "dataset__batch_size": 2},
            ("dataset.batch_size 2 must be a multiple of dataset.num_instances 4",),
        ),
    ],
)
def test_bad_input_is_one_line_and_writes_nothing(
    adapt_spec: ExperimentSpec,
    tmp_path: Path,
    capsys: pytest.CaptureFixture,
    overrides: dict[str, object],
    needles: tuple[str, ...],
) -> None:
    person = sorted(PKU_TRAIN.iterdir())[0]
    folders = {
        "ONE_CAMERA": tmp_path / "one_camera",
        "TINY": tmp_path / "tiny",
        "EMPTY": tmp_path / "empty",
        "NOWHERE": tmp_path / "nowhere.pth",
    }
    for name, folder in (("ONE_CAMERA", "01_*"), ("TINY", "0[12]_[12]*")):
        target = folders[name] / person.name
        target.mkdir(parents=True)
        for image in sorted(person.glob(folder))[: 8 if name == "ONE_CAMERA" else 5]:
            (target / image.name).symlink_to(image)
    folders["EMPTY"].mkdir()
    folders["TARGET"] = Path(adapt_spec.adapt.target or "")
    values = {k: folders.get(str(v), v) for k, v in overrides.items()}
    line = _cli(adapt_spec, capsys, **values)
    for needle in needles:
        assert needle in line, line


def test_a_manifest_gives_camera_qualified_tracks_and_their_cannot_links(
    adapt_spec: ExperimentSpec, tmp_path: Path
) -> None:
    """Trackers number tracks per camera: track 7 of camera 1 is not track 7 of camera 2."""
    crops = sorted(next(PKU_TRAIN.iterdir()).iterdir())
    manifest = _manifest(tmp_path / "crops.csv", crops)
    spec = apply_overrides(adapt_spec, {"adapt.target": str(manifest)})
    records = target_crops(spec)
    assert [r.track for r in records[:8]] == ["1:7"] * 4 + ["1:8"] * 4
    assert {r.track for r in records[8:]} == {"2:7", "2:8"}
    assert records[1].timestamp - records[0].timestamp == 1.0


def _manifest(path: Path, crops: list[Path]) -> Path:
    """Crops 0-7 of camera 1 and 8-15 of camera 2, tracks 7 and 8 (4 crops each) per camera,
    one second apart."""
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["path", "camera", "timestamp", "track_id"])
        for i, crop in enumerate(crops):
            writer.writerow(
                [crop, 1 + i // 8, f"2026-01-01T08:00:0{i % 4}Z", 7 if i % 8 < 4 else 8]
            )
    return path


def test_a_manifest_row_without_a_track_says_how_to_list_untracked_crops(
    adapt_spec: ExperimentSpec, tmp_path: Path
) -> None:
    """A manifest row must name its track (the reader is ``gallery add``'s), but the refusal
    said only "give the tracker's id", which a site without a tracker cannot: it now says how
    to list such crops, and that way is read."""
    crops = sorted(next(PKU_TRAIN.iterdir()).iterdir())
    rows = _manifest(tmp_path / "crops.csv", crops).read_text().splitlines()
    path, camera, moment, _ = rows[3].split(",")
    untracked = tmp_path / "untracked.csv"
    untracked.write_text("\n".join([*rows[:3], f"{path},{camera},{moment},", *rows[4:]]) + "\n")
    spec = apply_overrides(adapt_spec, {"adapt.target": str(untracked)})

    with pytest.raises(AdaptationError) as refused:
        target_crops(spec)

    message = str(refused.value)
    assert f"{untracked}:4: track_id is empty" in message and "\n" not in message
    assert "write one id in every row (e.g. none) and set adapt.use_tracks=false" in message
    listed = tmp_path / "listed.csv"
    listed.write_text("\n".join([rows[0], *(r.rsplit(",", 1)[0] + ",none" for r in rows[1:])]))
    spec = apply_overrides(spec, {"adapt.target": str(listed), "adapt.use_tracks": False})
    assert [r.path for r in target_crops(spec)] == [Path(p).resolve() for p in crops]


def test_a_gallery_is_read_as_the_target_with_its_cameras_tracks_and_times(
    adapt_spec: ExperimentSpec, tmp_path: Path
) -> None:
    """A gallery filled by ``reidkit gallery add`` (the source model's embeddings) is a target:
    its crops' files, cameras, camera-qualified tracks and times, read without changing it."""
    people = sorted(PKU_TRAIN.iterdir())[:2]
    crops = [crop.resolve() for person in people for crop in sorted(person.iterdir())][:24]
    filled = apply_overrides(
        adapt_spec,
        {
            "results_dir": str(tmp_path / "gallery_run"),
            "gallery.uri": str(tmp_path / "site_gallery"),
            "gallery.checkpoint": adapt_spec.adapt.checkpoint,
            "gallery.manifest": str(_manifest(tmp_path / "crops.csv", crops)),
            "gallery.thumbnails": False,
        },
    )
    assert gallery_add(filled).added == len(crops)
    before = sorted(p.name for p in (tmp_path / "site_gallery").rglob("*"))
    spec = apply_overrides(adapt_spec, {"adapt.target": str(tmp_path / "site_gallery")})
    records = sorted(target_crops(spec), key=lambda r: str(r.path))
    by_path = {str(r.path): r for r in records}
    assert sorted(by_path) == sorted(str(c) for c in crops)
    first, ninth, seventeenth = (by_path[str(crops[i])] for i in (0, 8, 16))
    assert (first.camid, first.track) == (1, "1:7")
    assert (ninth.camid, ninth.track) == (2, "2:7")
    assert (seventeenth.camid, seventeenth.track) == (3, "3:7")
    assert by_path[str(crops[1])].timestamp - first.timestamp == 1.0
    assert all(r.pid == -1 for r in records)  # a gallery has no labels to leak
    assert sorted(p.name for p in (tmp_path / "site_gallery").rglob("*")) == before


def test_joint_training_takes_a_labelled_source_batch_with_every_target_batch(
    adapt_spec: ExperimentSpec, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ten labelled identities (the source model's ten classes) beside the target crops."""
    source = target_folder(tmp_path / "source", TARGET_IDS + 10)
    for person in sorted(source.iterdir())[:TARGET_IDS]:  # the target's people are not sources
        person.unlink()
    seen: list[torch.Tensor] = []
    real_step = AdaptModule.training_step

    def spy(self: AdaptModule, batch, batch_idx: int):
        assert isinstance(batch, dict) and set(batch) == {"target", "source"}
        seen.append(batch["source"][1])
        return real_step(self, batch, batch_idx)

    monkeypatch.setattr(AdaptModule, "training_step", spy)
    spec = apply_overrides(adapt_spec, {"adapt.source_dataset": str(source), "adapt.num_epochs": 1})
    try:
        adapt(spec)
    except AdaptationError as refused:  # the guard may keep the source model after one round
        assert "no adaptation round beat the source model" in str(refused)
    labels = torch.cat(seen)
    assert len(seen) >= 2 and labels.min() >= 0 and labels.max() < 10
    assert len(labels.unique()) > 5


def test_clusters_that_never_span_two_cameras_stop_with_one_line(
    adapt_spec: ExperimentSpec, capsys: pytest.CaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A site where nobody meets a second camera: every cluster the source model finds is split
    by camera here, so none spans two cameras and there is nothing to learn across them."""
    real_cluster = loop.cluster

    def by_camera(feats, settings, tracks=None, conflicts=None, cameras=None):
        found = real_cluster(feats, settings, tracks, conflicts, cameras)
        kept = found.labels != OUTLIER
        pairs = found.labels * 100 + cameras
        labels = np.full_like(found.labels, OUTLIER)
        labels[kept] = np.unique(pairs[kept], return_inverse=True)[1]
        return replace(found, labels=labels, num_clusters=int(labels.max()) + 1)

    monkeypatch.setattr(loop, "cluster", by_camera)
    line = _cli(adapt_spec, capsys)
    assert "was seen by two cameras" in line and "cross_camera_training=false" in line


@pytest.mark.parametrize("batch", [1, 255])
def test_a_batch_of_one_crop_in_the_site_batchnorm_pass_is_left_out(
    adapt_spec: ExperimentSpec, capsys: pytest.CaptureFixture, batch: int
) -> None:
    """The site's BatchNorm statistics are taken in training mode, which refuses a batch of one
    crop: ``dataset.val_batch_size`` 1, or 256 crops in batches of 255, stopped adapt with a
    ValueError traceback before round 0."""
    spec = apply_overrides(adapt_spec, {"dataset.val_batch_size": batch, "adapt.num_epochs": 1})
    # Statistics of batches of two may leave no structure: that is a one-line refusal.
    with contextlib.suppress(AdaptationError):
        adapt(spec)
    assert "source model:" in capsys.readouterr().out  # round 0 was embedded and clustered


def test_a_source_model_with_nan_weights_is_named_as_broken(
    adapt_spec: ExperimentSpec, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    """It embeds every crop as NaN; adapt called the crops "no identity structure" and sent
    the user to check that they are person crops."""
    from reidkit.models.checkpoint_file import load_checkpoint, save_checkpoint

    broken = load_checkpoint(adapt_spec.adapt.checkpoint or "", None)
    name = next(k for k, v in broken["state_dict"].items() if v.is_floating_point())
    broken["state_dict"][name].fill_(float("nan"))
    source = tmp_path / "nan.pth"
    save_checkpoint(broken, source, None)
    line = _cli(adapt_spec, capsys, adapt__checkpoint=source)
    assert f"adapt.checkpoint '{source}' holds NaN or infinite weights" in line, line

"""``reidkit adapt``: a trained model fitted to a site from the site's own unlabelled crops.

The source model (``adapt.checkpoint``: a checkpoint or a train run's folder) embeds the target
crops (``adapt.target``: a folder in any layout reidkit reads, a CSV manifest like the gallery's,
or a gallery: its folder or Milvus URI), which are clustered into pseudo-identities and trained on,
round after round (:mod:`reidkit.adaptation`). Every round reports its clusters, outliers and
label-free quality; the round of highest quality is kept and written as an ordinary checkpoint
whose model card records the adaptation, so ``evaluate``, ``export``, ``gallery`` and ``serve``
take it as they take a trained one. When no round beats the source model, or the crops show no
structure at all, nothing is written and the action says so (exit code 2).
"""

from __future__ import annotations

import logging
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Trainer

from reidkit.actions.lifecycle import ActionRun, run_action
from reidkit.actions.models import require_card_fit, resolve_checkpoint
from reidkit.actions.run_record import AdaptOutcome
from reidkit.adaptation import (
    AdaptationError,
    AdaptModule,
    AdaptSettings,
    ClusterSettings,
    LatestCheckpoint,
    PseudoLabeller,
    RoundReport,
    TargetDataModule,
    co_occurring_tracks,
)
from reidkit.config.spec import ExperimentSpec
from reidkit.data import (
    ImageRecord,
    Preprocessing,
    build_eval_transform,
    build_train_transform,
    load_split,
    resolve_dataset,
    resolve_preprocessing,
    spec_settings,
    verify_images,
)
from reidkit.data.sources import ExtractLimits
from reidkit.data.splits import extract_root
from reidkit.data.verified import default_verified_images
from reidkit.engine.checkpoints import LATEST_NAME, ReidCheckpointIO, find_resume_checkpoint
from reidkit.engine.distributed import trainer_devices
from reidkit.engine.health import NumericalHealth
from reidkit.engine.module import build_optimizer
from reidkit.engine.progress import training_progress_bar
from reidkit.errors import CheckpointError, SpecError
from reidkit.gallery.factory import is_milvus_uri, open_gallery
from reidkit.gallery.ingest import UntrackedRow, read_manifest
from reidkit.gallery.store import CropMeta
from reidkit.interrupts import RunInterrupted
from reidkit.models import ReidModel
from reidkit.models.card import ModelCard
from reidkit.models.digest import file_digest
from reidkit.models.restore import read_checkpoint_card, restore_model
from reidkit.outputs import make_folder

log = logging.getLogger("reidkit")

METHOD = (
    "cluster contrast on k-reciprocal Jaccard DBSCAN pseudo-labels (outliers left out)"
    " + camera-aware proxies; every other cluster a negative"
)


@dataclass
class AdaptResult:
    """The adapted checkpoint and how it was chosen."""

    checkpoint: Path
    results_dir: Path
    chosen_round: int
    quality: float
    source_quality: float
    rounds: list[RoundReport] = field(default_factory=list)


def adapt(spec: ExperimentSpec) -> AdaptResult:
    """Adapt ``adapt.checkpoint`` to the crops of ``adapt.target``; see the module docstring."""
    with run_action(spec, "adapt") as run:
        return _adapt(spec, run)


def _adapt(spec: ExperimentSpec, run: ActionRun) -> AdaptResult:
    settings = spec.adapt
    _require_pk_batches(spec)
    source, fed = _source_model(spec)
    crops = target_crops(spec)
    cameras = sorted({c.camid for c in crops})
    camera_proxies = _camera_proxies(spec, len(crops), cameras)
    tracks = [c.track for c in crops] if settings.use_tracks else None
    conflicts = (
        co_occurring_tracks(tracks, [c.camid for c in crops], [c.timestamp for c in crops])
        if tracks is not None
        else None
    )
    known_tracks = len({t for t in tracks or [] if t is not None})
    print(
        f"adapting to {len(crops)} crops from {len(cameras)} cameras"
        + (
            f", {known_tracks} tracks ({len(conflicts or ()) // 2} cannot-links)"
            if known_tracks
            else ""
        )
        + f"; camera proxies {'on' if camera_proxies else 'off'}"
    )
    model, source_card = restore_model(source, spec.encryption_key, spec.model.neck_feat)
    _require_finite_weights(model, source)
    labelled = _source_crops(spec, source_card)
    model.train()
    lightning.seed_everything(spec.train.seed, verbose=False)
    record: dict[str, Any] = {
        "method": METHOD,
        "source_model": str(source),
        "source_weights_digest": source_card.weights_digest or file_digest(source),
        "target": settings.target,
        "target_crops": len(crops),
        "target_cameras": len(cameras),
        "target_tracks": known_tracks,
        "camera_proxies": camera_proxies,
        "per_camera_standardise": settings.per_camera_standardise and len(cameras) >= 2,
        "site_batchnorm": settings.site_batchnorm,
        "cross_camera_training": settings.cross_camera_training and len(cameras) >= 2,
        "joint_source": spec.adapt.source_dataset,
    }
    data = spec.dataset

    def card(network: ReidModel) -> ModelCard:
        return network.card(fed.pixel_mean, fed.pixel_std, adaptation=dict(record))

    loop = AdaptSettings(
        clustering=ClusterSettings(
            settings.k1,
            settings.k2,
            settings.eps,
            settings.min_cluster_size,
            settings.per_camera_standardise,
        ),
        camera_proxies=camera_proxies,
        batch_size=data.batch_size,
        num_instances=data.num_instances,
        workers=min(data.num_workers, 8),
        seed=spec.train.seed,
        embed_batch_size=data.val_batch_size,
        site_batchnorm=settings.site_batchnorm,
        cross_camera_training=settings.cross_camera_training,
    )
    rounds: list[RoundReport] = []

    def report(found: RoundReport) -> None:
        rounds.append(found)
        print(found.line(), flush=True)
        run.update(
            found.line(), AdaptOutcome(round=found.round, rounds=[asdict(r) for r in rounds])
        )

    labeller = PseudoLabeller(
        crops,
        build_eval_transform(fed),
        loop,
        tracks=tracks,
        conflicts=conflicts,
        report=report,
    )
    optim = spec.train.optim.model_copy(update={"base_lr": settings.base_lr})
    module = AdaptModule(model, lambda network: build_optimizer(network, optim), card)
    devices = trainer_devices(accelerator=spec.train.accelerator, precision=spec.train.precision)
    trainer = Trainer(
        **devices,
        max_epochs=settings.num_epochs,
        callbacks=[
            NumericalHealth(spec.train.divergence_factor),
            labeller,
            LatestCheckpoint(run.folder / LATEST_NAME, run.publish),
            training_progress_bar(on_gpu=devices["accelerator"] == "gpu"),
        ],
        plugins=[ReidCheckpointIO(spec.encryption_key)],
        logger=False,
        enable_checkpointing=False,
        default_root_dir=run.folder,
        reload_dataloaders_every_n_epochs=1,
        limit_val_batches=0,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        log_every_n_steps=1,
        enable_model_summary=False,
    )
    start = find_resume_checkpoint(run.folder)
    if start is not None:
        print(f"resuming from {start}")
    try:
        trainer.fit(
            module,
            datamodule=TargetDataModule(
                crops, build_train_transform(fed, data), labeller, loop, labelled
            ),
            ckpt_path=start,
        )
    except RunInterrupted as stop:
        raise stop.with_message(
            f"interrupted by {stop.signal_name} in round {trainer.current_epoch + 1}; rerun the "
            "same command to resume from the last finished round"
        ) from None
    best = labeller.best
    source_quality = labeller.reports[0].quality
    if best["round"] == 0:
        source, later = labeller.reports[0], labeller.reports[1:]
        raise AdaptationError(
            "no adaptation round beat the source model: none both linked more crops across "
            f"cameras than chance would ({source.linked:.2f}; rounds: "
            f"{', '.join(f'{r.linked:.2f}' for r in later)})"
            f" and scored a higher label-free quality ({source.quality:.3f}; rounds: "
            f"{', '.join(f'{r.quality:.3f}' for r in later)}); nothing written: keep using the "
            "source model"
        )
    model.load_state_dict(best["weights"])
    record.update(
        rounds=len(labeller.reports) - 1,
        chosen_round=best["round"],
        quality=best["quality"],
        source_quality=source_quality,
        quality_signal=(
            "share of crops in clusters seen by two or more cameras x simplified silhouette"
            " (label-free)"
        ),
    )
    output = (
        Path(settings.output_file) if settings.output_file else run.folder / "adapted_model.pth"
    )
    make_folder(output.parent)
    trainer.save_checkpoint(output, weights_only=True)
    message = (
        f"kept round {best['round']} of {len(labeller.reports) - 1} (quality {best['quality']:.3f} "
        f"against the source model's {source_quality:.3f}) -> {output}"
    )
    print(message)
    outcome = AdaptOutcome(
        adapted_checkpoint=str(output),
        chosen_round=best["round"],
        quality=best["quality"],
        source_quality=source_quality,
        rounds=[asdict(r) for r in labeller.reports],
    )
    run.succeed(message, outcome=outcome)
    return AdaptResult(
        output, run.folder, best["round"], best["quality"], source_quality, list(labeller.reports)
    )


def _require_pk_batches(spec: ExperimentSpec) -> None:
    """Adaptation always trains P pseudo-identities x K crops, whatever ``dataset.sampler``
    says: the spec lets ``sampler: softmax`` take any batch size, and a batch smaller than
    ``dataset.num_instances`` stopped the first round with a ZeroDivisionError traceback."""
    data = spec.dataset
    if data.batch_size % data.num_instances:
        raise SpecError(
            f"dataset.batch_size {data.batch_size} must be a multiple of dataset.num_instances "
            f"{data.num_instances}: adapt trains batches of P pseudo-identities x K crops; set "
            f"dataset.batch_size={-(-data.batch_size // data.num_instances) * data.num_instances}"
            " or lower dataset.num_instances"
        )


def _require_finite_weights(model: ReidModel, source: Path) -> None:
    """Refuse a source model holding NaN or infinity (a diverged training, a damaged copy).

    Such a model embeds every crop as NaN, which clusters into nothing: adapt refused it as
    crops "with no identity structure" and advised checking that they are person crops.
    """
    broken = [
        name
        for name, value in model.state_dict().items()
        if value.is_floating_point() and not bool(torch.isfinite(value).all())
    ]
    if broken:
        raise CheckpointError(
            f"adapt.checkpoint '{source}' holds NaN or infinite weights ({len(broken)} tensors, "
            f"e.g. {broken[0]}): it is broken (a diverged training?); point adapt.checkpoint at "
            "an earlier checkpoint"
        )


def _source_model(spec: ExperimentSpec) -> tuple[Path, Preprocessing]:
    """The source checkpoint, checked against the spec before anything is loaded, and what it
    is fed (the one rule: the spec's explicit settings, else its card, else the defaults)."""
    key = "adapt.checkpoint"
    if not spec.adapt.checkpoint:
        raise CheckpointError(
            f"{key} is not set; point it at a checkpoint written by reidkit train or at its "
            "results folder"
        )
    source = resolve_checkpoint(spec.adapt.checkpoint, key)
    if source.suffix.lower() == ".onnx":
        raise CheckpointError(
            f"{key} '{source}' is an ONNX file, which cannot be trained; point it at the "
            "checkpoint (.pth) it was exported from"
        )
    card = read_checkpoint_card(source, spec.encryption_key)
    model = f"{key} '{source}'"
    require_card_fit(spec, card, model)
    return source, resolve_preprocessing(spec_settings(spec.model, spec.dataset), card, model=model)


def target_crops(spec: ExperimentSpec) -> list[ImageRecord]:
    """The target crops (their labels, if the layout has any, are dropped), checked readable.

    A ``.csv`` file is a manifest (the gallery's reader); a Milvus URI or a folder holding a
    gallery (its ``gallery.json``) is read through the gallery front, read-only, whatever
    model filled it (only the crops' files and metadata are used). A manifest's or gallery's
    ``track_id`` is qualified by the camera, since trackers number their tracks per camera.
    """
    key = "adapt.target"
    value = spec.adapt.target
    if not value:
        raise AdaptationError(
            f"{key} is not set; point it at a folder of the site's crops, a CSV manifest "
            "(path,camera,timestamp,track_id) or a gallery"
        )
    path = Path(value).expanduser()
    if is_milvus_uri(value) or (path / "gallery.json").is_file():
        with open_gallery(value if is_milvus_uri(value) else path) as gallery:
            crops = [_tracked_crop(crop.meta) for crop in gallery.crops()]
    elif path.suffix.lower() == ".csv":
        crops = [_tracked_crop(meta) for meta in _target_manifest(path)]
    else:
        folder = resolve_dataset(
            path, extract_root(spec), ExtractLimits(max_bytes=spec.dataset.max_extract_bytes)
        )
        loaded = load_split(folder, key, keep_distractors=True)
        crops = [ImageRecord(r.path, -1, r.camid, track=r.track) for r in loaded]
    verify_images(crops, max_workers=2, cache=default_verified_images())
    needed = 2 * spec.adapt.min_cluster_size
    if len(crops) < needed:
        raise AdaptationError(
            f"{key} '{value}' holds {len(crops)} crops; adaptation needs at least {needed} "
            f"(two clusters of adapt.min_cluster_size={spec.adapt.min_cluster_size}); add the "
            "site's crops or lower adapt.min_cluster_size"
        )
    return crops


def _target_manifest(path: Path) -> list[CropMeta]:
    """The crops of a target manifest, read by ``gallery add``'s reader and its rules.

    That reader refuses an empty ``track_id`` (in a gallery an empty cell is a failed join, and
    a crop stored without its track cannot be erased by it), while adaptation works on crops no
    tracker followed. The refusal then also says how to list such crops: one id in every row
    and ``adapt.use_tracks=false``, which adapts exactly as to untracked crops.
    """
    try:
        return read_manifest(path)
    except UntrackedRow as error:
        raise AdaptationError(
            f"adapt.target {error}; for crops no tracker followed, write one id in every row "
            "(e.g. none) and set adapt.use_tracks=false"
        ) from None


def _tracked_crop(meta: CropMeta) -> ImageRecord:
    """An unlabelled crop of a manifest or gallery, its track qualified by its camera."""
    return ImageRecord(
        Path(meta.path),
        -1,
        meta.camera,
        track=f"{meta.camera}:{meta.track_id}" if meta.track_id else None,
        timestamp=meta.timestamp,
    )


def _source_crops(spec: ExperimentSpec, card: ModelCard) -> list[ImageRecord]:
    """The labelled source set for joint training (``adapt.source_dataset``), or nothing.

    Its identities must be the ones the source model's classifier was trained on: the same
    count, numbered as training numbers them (sorted ids).
    """
    value = spec.adapt.source_dataset
    if not value:
        return []
    limits = ExtractLimits(max_bytes=spec.dataset.max_extract_bytes)
    folder = resolve_dataset(Path(value).expanduser(), extract_root(spec), limits)
    records = load_split(folder, "adapt.source_dataset", keep_distractors=True)
    identities = len({r.pid for r in records})
    if card.num_classes is not None and identities != card.num_classes:
        raise AdaptationError(
            f"adapt.source_dataset '{value}' has {identities} identities but the source model "
            f"was trained on {card.num_classes}; point it at the source model's own train split "
            "or unset it"
        )
    verify_images(records, max_workers=2, cache=default_verified_images())
    return records


def _camera_proxies(spec: ExperimentSpec, num_crops: int, cameras: list[int]) -> bool:
    """Whether the camera-aware losses run: they need two cameras."""
    wanted = spec.adapt.camera_proxies
    if wanted == "on" and len(cameras) < 2:
        raise AdaptationError(
            f"adapt.camera_proxies is 'on' but the {num_crops} crops of adapt.target "
            f"'{spec.adapt.target}' all come from camera {cameras[0]}; set "
            "adapt.camera_proxies=off (or auto), or add crops of another camera"
        )
    return wanted == "on" or (wanted == "auto" and len(cameras) >= 2)

"""``reidkit associate``: per-camera tracks in, one global identity per person out.

Reads the site file and every tracks file first (any problem is one line naming file:line,
and nothing is written), embeds each track from a few of its crops with the spec's model
(tracks that bring embeddings skip that), associates them offline
(:func:`reidkit.association.cluster.associate_site`), then writes ``global_ids.csv``,
``mot/<camera>.txt``, ``timeline.png``, ``transit.json`` (transit times seen between cameras),
``calibration.json`` (what a live assigner on this site reuses) and, with ground truth,
``metrics.json`` (multi-camera IDF1 / IDP / IDR, HOTA / AssA / DetA).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reidkit.actions.embedding import select_device
from reidkit.actions.lifecycle import ActionRun, run_action
from reidkit.actions.models import load_checked_embedder
from reidkit.actions.run_record import AssociateOutcome
from reidkit.association.cluster import Calibration, associate_site, learn_transit
from reidkit.association.constraints import TrackSet
from reidkit.association.features import crop_transform, plan_crops, track_embeddings
from reidkit.association.metrics import (
    detections,
    hota_scores,
    identity_scores,
    motmetrics_identity,
)
from reidkit.association.online import calibrate_live_threshold
from reidkit.association.readers import read_ground_truth, read_tracks
from reidkit.association.results import (
    camera_file_name,
    gallery_labels,
    plot_timeline,
    write_global_ids,
    write_mot,
)
from reidkit.association.site import Site, SiteError, load_site
from reidkit.association.tracks import Track, split_at_gaps
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import SpecError
from reidkit.evaluation.cameras import SITE
from reidkit.gallery.factory import open_gallery
from reidkit.outputs import write_json

log = logging.getLogger("reidkit")


@dataclass
class AssociationResult:
    """What ``associate`` wrote and found (metrics in percent; empty without ground truth)."""

    results_dir: Path
    tracks: int
    identities: int
    threshold: float | None
    threshold_source: str
    metrics: dict[str, float]


def associate(spec: ExperimentSpec) -> AssociationResult:
    """Global ids for every track of the site in ``associate.site`` (see the module docstring)."""
    with run_action(spec, "associate") as run:
        return _associate(spec, run)


def _associate(spec: ExperimentSpec, run: ActionRun) -> AssociationResult:
    settings = spec.associate
    if not settings.site:
        raise SpecError("associate.site is not set; point it at the site's site.yaml")
    site = load_site(settings.site)
    _check_camera_files(site)
    tracks = split_at_gaps(
        read_tracks(site, settings.tracks, settings.tracks_format), settings.max_gap_s
    )
    truth = _ground_truth(site, settings.ground_truth)
    embeddings, crops, card_threshold = _embed(spec, site, tracks)
    run.update(f"{len(tracks)} tracks embedded")
    track_set = TrackSet.from_tracks(tracks, embeddings, site.names)
    if settings.open_set == "card" and card_threshold is None:
        raise SpecError(
            "associate.open_set is 'card' but the model card has no match_threshold; run "
            "reidkit evaluate on this model first, or set associate.open_set: auto"
        )
    result, calibration, evidence = associate_site(
        track_set,
        site.min_transit_matrix(),
        open_set=settings.open_set,
        match_threshold=settings.match_threshold,
        card_threshold=card_threshold,
        strangers_per_track=settings.strangers_per_track,
        centre_cameras=settings.camera_centring,
        ground_gate=site.ground_gate,
    )
    calibration.live_threshold = calibrate_live_threshold(
        track_set,
        site.min_transit_matrix(),
        calibration,
        evidence,
        result.labels,
        settings.strangers_per_track,
    )
    global_ids = (result.labels + 1).tolist()
    metrics = _score(truth, tracks, global_ids, site) if truth else {}
    # the gallery is checked before anything is written: a missing one is a spec error
    labels = _gallery_labels(settings.gallery, site, tracks, global_ids)
    folder = run.folder
    _check_outputs(folder)
    write_global_ids(folder / "global_ids.csv", tracks, global_ids, crops)
    write_mot(folder / "mot", tracks, global_ids)
    plot_timeline(folder / "timeline.png", tracks, global_ids, site.names)
    write_json(
        folder / "transit.json", _transit(site, learn_transit(track_set, result.labels, site.names))
    )
    write_json(folder / "calibration.json", _calibration_record(calibration, site))
    if metrics:
        write_json(folder / "metrics.json", metrics)
    labelled = _label_gallery(settings.gallery, labels)
    summary = (
        f"{len(tracks)} tracks -> {result.identities} identities "
        f"({result.merges_by_place} joined by place, {result.merges_by_appearance} by "
        f"appearance; open set: {calibration.source}"
        + (f" {calibration.threshold:.4f}" if calibration.threshold is not None else "")
        + f"; {len(evidence.cannot_i)} cannot-links)"
    )
    if labelled is not None:
        summary += f"; global ids written onto {labelled} crops of gallery {settings.gallery}"
    print(summary)
    if metrics:
        print(", ".join(f"{k} {v}" for k, v in metrics.items() if not isinstance(v, dict)))
    run.succeed(
        summary,
        kpi={k: v for k, v in metrics.items() if isinstance(v, float)},
        outcome=AssociateOutcome(tracks=len(tracks), identities=result.identities),
    )
    return AssociationResult(
        folder, len(tracks), result.identities, calibration.threshold, calibration.source, metrics
    )


#: The files ``associate`` writes into its folder (``mot/`` beside them).
OUTPUT_FILES = (
    "global_ids.csv",
    "timeline.png",
    "transit.json",
    "calibration.json",
    "metrics.json",
)


def _check_camera_files(site: Site) -> None:
    """Refuse two cameras whose names make one file name (``a/b`` and ``a_b``): the second
    camera's ``mot/<camera>.txt`` would silently replace the first's."""
    files: dict[str, str] = {}
    for name in site.names:
        other = files.setdefault(camera_file_name(name), name)
        if other != name:
            raise SiteError(
                f"{site.source}: cameras {other!r} and {name!r} would both be written to "
                f"mot/{camera_file_name(name)}.txt; rename one of them"
            )


def _check_outputs(folder: Path) -> None:
    """Refuse, before the first output is written, a folder where one output cannot go (a
    folder named like a file, a file named ``mot``): found at its own turn it would leave the
    outputs before it replaced and the rest from the previous run."""
    blocked = [folder / name for name in OUTPUT_FILES if (folder / name).is_dir()]
    if (folder / "mot").exists() and not (folder / "mot").is_dir():
        blocked.append(folder / "mot")
    if blocked:
        raise SpecError(
            f"results folder '{folder}' holds '{blocked[0].name}' of the wrong kind (a folder "
            "for a file, or a file for the mot folder); remove it or set associate.results_dir "
            "to another folder"
        )


def _gallery_labels(
    uri: str | None, site: Site, tracks: list[Track], global_ids: list[int]
) -> dict[int, str] | None:
    """The global id of each of the gallery's crops at ``uri`` that belongs to these tracks
    (None without a gallery). Read before any output is written, so a gallery that is missing
    or holds none of the tracks stops the run with nothing written half-way."""
    if uri is None:
        return None
    with open_gallery(uri) as gallery:
        labels = gallery_labels(gallery.crops(), tracks, global_ids, site.gallery_cameras())
    if not labels:
        raise SpecError(
            f"associate.gallery: no crop of '{uri}' belongs to these tracks (matched by crop "
            "path, else camera number + track id); check the gallery's camera numbers and "
            "track ids"
        )
    return labels


def _label_gallery(uri: str | None, labels: dict[int, str] | None) -> int | None:
    """Write the global ids of :func:`_gallery_labels` onto the gallery's crops (audited);
    returns how many crops were labelled (None without a gallery)."""
    if uri is None or labels is None:
        return None
    with open_gallery(uri) as gallery:
        return gallery.assign_identities(labels)


def _ground_truth(site: Site, truth: str | None) -> list[Track]:
    """Ground truth from associate.ground_truth (AI City) or the cameras' files, if any."""
    if truth is None and not any(c.ground_truth for c in site.cameras.values()):
        return []
    return read_ground_truth(site, truth)


def _embed(
    spec: ExperimentSpec, site: Site, tracks: list[Track]
) -> tuple[np.ndarray, np.ndarray, float | None]:
    """(unit embedding per track, crops used per track, the card's match_threshold)."""
    settings = spec.associate
    # every crop is found before a model is loaded, weighed by model.input_height (a weight only)
    jobs = plan_crops(tracks, site, settings.crops_per_track, spec.model.input_height)
    if not jobs:
        embeddings, crops = track_embeddings(
            tracks, site, embedder=None, transform=None, full_height=spec.model.input_height,
            jobs=jobs,
        )  # fmt: skip
        return embeddings, crops, None
    if not settings.checkpoint:
        raise SpecError(
            "associate.checkpoint is not set and some tracks bring no embeddings; point it at "
            "a .pth checkpoint, an .onnx file or a train/export results folder"
        )
    gpu = settings.gpu_ids[0] if settings.gpu_ids else 0
    embedder, card = load_checked_embedder(spec, settings.checkpoint, "associate.checkpoint", gpu)
    device = select_device(settings.gpu_ids)
    if isinstance(embedder, torch.nn.Module):
        embedder = embedder.to(device)
    transform = crop_transform(card)
    embeddings, crops = track_embeddings(
        tracks, site, embedder=embedder, transform=transform, full_height=card.input_height,
        per_track=settings.crops_per_track, batch_size=settings.batch_size,
        flip=spec.model.with_flip_feature, device=device, jobs=jobs,
    )  # fmt: skip
    return embeddings, crops, card.match_threshold


def _score(
    truth: list[Track], tracks: list[Track], global_ids: list[int], site: Site
) -> dict[str, Any]:
    """Multi-camera identity scores (motmetrics, cross-checked by an independent count) + HOTA."""
    true = detections(truth, [t.track_id for t in truth], site)
    predicted = detections(tracks, global_ids, site)
    scores = motmetrics_identity(true, predicted)
    check = identity_scores(true, predicted)
    if abs(check["IDF1"] - scores["IDF1"]) > 0.05:
        log.warning("IDF1 disagrees: motmetrics %s, own count %s", scores["IDF1"], check["IDF1"])
    return {**scores, **hota_scores(true, predicted), "IDF1_own_count": check["IDF1"]}


def _transit(site: Site, seen: list[dict[str, Any]]) -> dict[str, Any]:
    """Transit times seen between cameras, beside the windows the site file gives."""
    given = [
        {"from": a, "to": b, "min_s": low, "max_s": high}
        for (a, b), (low, high) in sorted(site.transit.items())
    ]
    return {"given": given, "seen": seen}


def _calibration_record(calibration: Calibration, site: Site) -> dict[str, Any]:
    names = site.names
    return {
        "cameras": names,
        "min_transit_s": site.min_transit_matrix().tolist(),
        "threshold": calibration.threshold,
        "threshold_source": calibration.source,
        "live_threshold": calibration.live_threshold,
        "veto": calibration.veto,
        "ground_gate": calibration.ground_gate,
        "proven_different_pairs": calibration.proven_pairs,
        "camera_means": _by_camera(calibration.camera_means, names),
        "camera_scales": _by_camera(calibration.camera_scales, names),
        # what a camera without statistics of its own is standardised with
        "site_mean": _vector(calibration.camera_means.get(SITE)),
        "site_scale": _vector(calibration.camera_scales.get(SITE)),
    }


def _by_camera(statistics: dict[int, np.ndarray], names: list[str]) -> dict[str, list[float]]:
    return {names[key]: _vector(value) for key, value in statistics.items() if key != SITE}


def _vector(values: np.ndarray | None) -> list[float] | None:
    return None if values is None else [round(float(v), 6) for v in values]

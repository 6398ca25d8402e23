"""One embedding per track: a few good crops, embedded like ``evaluate`` does, pooled by quality.

A long track has hundreds of detections; most add nothing but cost a forward pass each. Each
track is cut into ``per_track`` equal time slices and the best crop of each slice is embedded
(so a track is seen over its whole life, not only where it was largest). Pooling weighs each
crop by how much of a person it can show: its height against the model's input height (a
30-pixel person is mostly upsampling blur), a box touching the frame edge (the person is cut
off), and the detector's confidence. The pooled vector is L2-normalised, so every distance is
the squared Euclidean distance of unit vectors the model's calibrated ``match_threshold`` uses.

Crops come from a camera's crops folder (``<track_id>/<frame>.<ext>``), or are cut from its
frame images (``<frame>.<ext>``, the number as the tracks file writes it); tracks that bring
their own embeddings (DeepStream) are pooled without any image.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from PIL import Image
from torch import Tensor

from reidkit.association.site import Camera, Site, SiteError
from reidkit.association.tracks import Track
from reidkit.data.images import decode_rgb
from reidkit.data.preprocessing import resolve_preprocessing
from reidkit.data.transforms import build_eval_transform
from reidkit.errors import ImageRefused
from reidkit.evaluation.features import Embedder, embed_batch
from reidkit.models.card import ModelCard

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
#: Weight kept by a crop whose box touches the frame edge (the person is cut off).
EDGE_WEIGHT = 0.25
#: Lowest weight of any crop, so a track of only poor crops still has an embedding.
MIN_WEIGHT = 0.05


def crop_transform(card: ModelCard) -> Callable[[Image.Image], Tensor]:
    """The preprocessing of a crop for ``card``'s model: the evaluation pipeline under the
    project's one rule (:func:`reidkit.data.preprocessing.resolve_preprocessing`; a card
    loaded by an action already carries the spec's explicit settings)."""
    return build_eval_transform(resolve_preprocessing(card=card))


def crop_weights(
    boxes: np.ndarray, confidence: np.ndarray, camera: Camera, full_height: int
) -> np.ndarray:
    """Quality weight in ``[MIN_WEIGHT, 1]`` of each ``x, y, w, h`` box (see the module doc)."""
    height = np.clip(boxes[:, 3] / float(full_height), 0.0, 1.0)
    weights = height * np.clip(confidence, 0.0, 1.0)
    if camera.width is not None and camera.height is not None:
        x, y, w, h = boxes.T
        cut = (x <= 1) | (y <= 1) | (x + w >= camera.width - 1) | (y + h >= camera.height - 1)
        weights = np.where(cut, weights * EDGE_WEIGHT, weights)
    return np.clip(weights, MIN_WEIGHT, 1.0).astype(np.float32)


def pick_rows(times: np.ndarray, weights: np.ndarray, usable: np.ndarray, count: int) -> np.ndarray:
    """Rows of the best usable detection in each of ``count`` equal time slices of a track."""
    candidates = np.flatnonzero(usable)
    if len(candidates) <= count:
        return candidates
    span = times[candidates[-1]] - times[candidates[0]]
    slot = np.minimum(
        ((times[candidates] - times[candidates[0]]) / max(span, 1e-9) * count).astype(int),
        count - 1,
    )
    chosen = []
    for s in np.unique(slot):
        members = candidates[slot == s]
        chosen.append(members[np.argmax(weights[members])])
    return np.asarray(chosen)


def pool(embeddings: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Quality-weighted mean of L2-normalised rows, normalised again."""
    unit = embeddings / np.linalg.norm(embeddings, axis=1, keepdims=True).clip(1e-12)
    mean = (unit * weights[:, None]).sum(0)
    return (mean / max(float(np.linalg.norm(mean)), 1e-12)).astype(np.float32)


class _FrameIndex:
    """Image files of a camera's frames or crops folder, listed once per folder."""

    def __init__(self) -> None:
        self._listed: dict[Path, dict[int, Path]] = {}

    def numbered(self, folder: Path) -> dict[int, Path]:
        if folder not in self._listed:
            files: dict[int, Path] = {}
            if folder.is_dir():
                for path in sorted(folder.iterdir()):
                    if path.suffix.lower() not in IMAGE_SUFFIXES or not path.stem.isdigit():
                        continue
                    other = files.setdefault(int(path.stem), path)
                    if other != path:  # which one did the tracker mean?
                        raise SiteError(
                            f"frames folder '{folder}' holds two images of frame "
                            f"{int(path.stem)} ({other.name}, {path.name}); keep one"
                        )
            self._listed[folder] = files
        return self._listed[folder]


@dataclass(frozen=True)
class CropJob:
    """One crop to embed: the image file, the box to cut (None: the file is the crop)."""

    track: int
    path: Path
    box: tuple[float, float, float, float] | None
    weight: float


def plan_crops(
    tracks: Sequence[Track], site: Site, per_track: int, full_height: int
) -> list[CropJob]:
    """Which crops to embed for the tracks that brought no embeddings.

    A track whose camera has a frames folder needs the image of each chosen frame; a missing
    one is a site/tracks contradiction (usually a 0- vs 1-based numbering) and is reported
    with the row's file:line.
    """
    index = _FrameIndex()
    jobs: list[CropJob] = []
    for number, track in enumerate(tracks):
        if track.embeddings is not None:
            continue
        camera = site.cameras[track.camera]
        weights = crop_weights(track.boxes, track.confidence, camera, full_height)
        if track.crops is not None:
            paths = list(track.crops)
            usable = np.array([path is not None for path in paths])
            boxed = False
        elif camera.crops is not None:
            if Path(track.track_id).name != track.track_id or track.track_id in ("", ".", ".."):
                raise SiteError(
                    f"{track.source}: track id {track.track_id!r} cannot name a folder of "
                    f"{camera.crops}; crops folders need plain track ids"
                )
            files = index.numbered(camera.crops / track.track_id)
            usable = np.array([int(f) in files for f in track.frames])
            paths = [files.get(int(f)) for f in track.frames]
            boxed = False
        elif camera.frames is not None:
            files = index.numbered(camera.frames)
            _check_frames(track, camera, files)
            usable = np.ones(len(track), dtype=bool)
            paths = [files.get(int(f)) for f in track.frames]
            boxed = True
        else:
            raise SiteError(
                f"{track.source}: camera {track.camera} has no frames: or crops: folder in "
                f"{site.source} and its tracks bring no embeddings; give one of them"
            )
        rows = pick_rows(track.times, weights, usable, per_track)
        if len(rows) == 0:
            raise SiteError(
                f"{track.source}: track {track.track_id} of camera {track.camera} has no crop "
                f"in '{camera.crops / track.track_id if camera.crops else 'its crop list'}' "
                "(files named <frame>.jpg); add its crops"
            )
        for row in rows:
            box = tuple(float(v) for v in track.boxes[row]) if boxed else None
            jobs.append(CropJob(number, paths[row], box, float(weights[row])))
    return jobs


def _check_frames(track: Track, camera: Camera, files: dict[int, Path]) -> None:
    missing = [int(f) for f in track.frames if int(f) not in files]
    if not missing:
        return
    first = min(files) if files else None
    hint = (
        f"its images start at {first}: the tracks and the frame images count from "
        "different numbers; renumber one of them"
        if first is not None
        else "it holds no images named by frame number"
    )
    raise SiteError(
        f"{track.source}: frame {missing[0]} of track {track.track_id} has no image in "
        f"'{camera.frames}' ({hint})"
    )


def _load_crop(job: CropJob, transform: Callable[[Image.Image], Tensor]) -> Tensor:
    try:
        rgb = decode_rgb(Path(job.path), f"image '{job.path}'")
    except ImageRefused as refused:
        raise SiteError(str(refused)) from None
    if job.box is not None:
        x, y, w, h = job.box
        left, top = max(0, round(x)), max(0, round(y))
        right, bottom = min(rgb.width, round(x + w)), min(rgb.height, round(y + h))
        if right - left < 2 or bottom - top < 2:
            raise SiteError(
                f"box {job.box} lies outside frame image '{job.path}' "
                f"({rgb.width}x{rgb.height}); fix the box or the camera's frames"
            )
        rgb = rgb.crop((left, top, right, bottom))
    return transform(rgb)


def _batches(jobs: Sequence[CropJob], size: int) -> Iterator[Sequence[CropJob]]:
    for start in range(0, len(jobs), size):
        yield jobs[start : start + size]


@torch.inference_mode()
def track_embeddings(
    tracks: Sequence[Track],
    site: Site,
    *,
    embedder: Embedder | None,
    transform: Callable[[Image.Image], Tensor] | None,
    full_height: int,
    per_track: int = 8,
    batch_size: int = 64,
    flip: bool = False,
    device: torch.device | None = None,
    jobs: list[CropJob] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """``(embeddings [T, D], crops used [T])`` for every track, L2-normalised.

    Tracks that brought embeddings are pooled as they are; the others are embedded from their
    crops with ``embedder`` (required then) after ``transform``. ``jobs`` is
    :func:`plan_crops`' plan when the caller checked the crops before loading a model.
    """
    jobs = plan_crops(tracks, site, per_track, full_height) if jobs is None else jobs
    pooled: list[np.ndarray | None] = [None] * len(tracks)
    counts = np.zeros(len(tracks), dtype=np.int64)
    for number, track in enumerate(tracks):
        if track.embeddings is None:
            continue
        camera = site.cameras[track.camera]
        have = np.flatnonzero(np.isfinite(track.embeddings).all(1))
        if len(have) == 0:  # a pipeline may embed only some frames; a short gap cuts them off
            raise SiteError(
                f"{track.source}: track {track.track_id} (part {track.part + 1}, after cuts at "
                "gaps over associate.max_gap_s) brings no finite embedding; send embeddings "
                "with its detections, or raise associate.max_gap_s if it cut this part off"
            )
        weights = crop_weights(track.boxes[have], track.confidence[have], camera, full_height)
        pooled[number] = pool(track.embeddings[have], weights)
        counts[number] = len(have)
    if jobs:
        if embedder is None or transform is None:
            raise SiteError("tracks without embeddings need a model: set associate.checkpoint")
        vectors, weights = [], []
        for batch in _batches(jobs, batch_size):
            images = torch.stack([_load_crop(job, transform) for job in batch])
            if device is not None:
                images = images.to(device)
            vectors.append(embed_batch(embedder, images, flip).float().cpu().numpy())
            weights.extend(job.weight for job in batch)
        matrix = np.concatenate(vectors)
        owners = np.array([job.track for job in jobs])
        weight = np.asarray(weights, dtype=np.float32)
        for number in np.unique(owners):
            rows = owners == number
            pooled[number] = pool(matrix[rows], weight[rows])
            counts[number] = int(rows.sum())
    widths = {len(v) for v in pooled if v is not None}
    if len(widths) > 1:
        raise SiteError(
            f"track embeddings differ in width ({sorted(widths)}): the tracks' own embeddings "
            "and the model's do not match; use one model for all cameras"
        )
    return np.stack(pooled).astype(np.float32), counts

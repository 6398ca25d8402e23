"""What a site takes away from association: a table of global ids, MOT files, a timeline.

* ``global_ids.csv``: one row per track (a track split at a gap: one row per part) with
  ``camera,track_id,global_id,first_seen,last_seen,n_crops`` (times ISO-8601 UTC; ``n_crops``
  the crops or embeddings its identity decision used);
* ``mot/<camera>.txt``: each camera's tracks in MOTChallenge text with the global id in the
  id column (``frame,id,x,y,w,h,conf,-1,-1,-1``, frames as the input wrote them);
* the gallery's crops labelled with their track's global id (:func:`gallery_labels`);
* ``timeline.png``: one row per identity, one coloured segment per camera sighting, over the
  site's time; drawn with Pillow (a 10,000-track day renders in about a second).

Every file is written atomically (:mod:`reidkit.outputs`).
"""

from __future__ import annotations

import csv
from collections.abc import Sequence
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from reidkit.association.tracks import Track
from reidkit.evaluation.plots import _font
from reidkit.gallery.store import StoredCrop
from reidkit.outputs import atomic_open, path_text

GLOBAL_IDS_COLUMNS = ("camera", "track_id", "global_id", "first_seen", "last_seen", "n_crops")
#: Identities drawn in the timeline (the earliest first); the rest are counted in its title.
TIMELINE_ROWS = 300
_PALETTE = (
    "#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f",
    "#bcbd22", "#17becf", "#393b79", "#637939", "#8c6d31", "#843c39", "#7b4173", "#3182bd",
)  # fmt: skip


def iso_time(seconds: float) -> str:
    """Unix seconds as ISO-8601 UTC with milliseconds (``2024-05-01T08:00:00.040Z``)."""
    moment = datetime.fromtimestamp(seconds, tz=timezone.utc)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def write_global_ids(
    path: Path, tracks: Sequence[Track], global_ids: Sequence[int], crops: Sequence[int]
) -> Path:
    """``global_ids.csv`` (see the module docstring), rows by global id then first sighting."""
    order = sorted(range(len(tracks)), key=lambda i: (global_ids[i], tracks[i].start))
    with atomic_open(Path(path), "w") as handle:
        writer = csv.writer(handle, lineterminator="\n")
        writer.writerow(GLOBAL_IDS_COLUMNS)
        for i in order:
            track = tracks[i]
            writer.writerow(
                [
                    path_text(track.camera),
                    path_text(track.track_id),
                    int(global_ids[i]),
                    iso_time(track.start),
                    iso_time(track.end),
                    int(crops[i]),
                ]
            )
    return Path(path)


def write_mot(folder: Path, tracks: Sequence[Track], global_ids: Sequence[int]) -> list[Path]:
    """One MOTChallenge file per camera with global ids (see the module docstring)."""
    by_camera: dict[str, list[int]] = {}
    for i, track in enumerate(tracks):
        by_camera.setdefault(track.camera, []).append(i)
    written = []
    for camera, rows in by_camera.items():
        frames = np.concatenate([tracks[i].frames for i in rows])
        ids = np.concatenate([np.full(len(tracks[i]), global_ids[i]) for i in rows])
        boxes = np.concatenate([tracks[i].boxes for i in rows])
        confidence = np.concatenate([tracks[i].confidence for i in rows])
        order = np.lexsort((ids, frames))
        path = Path(folder) / f"{camera_file_name(camera)}.txt"
        with atomic_open(path, "w") as handle:
            for k in order:
                x, y, w, h = boxes[k]
                handle.write(
                    f"{frames[k]},{ids[k]},{x:.2f},{y:.2f},{w:.2f},{h:.2f},"
                    f"{confidence[k]:.3f},-1,-1,-1\n"
                )
        written.append(path)
    return written


def camera_file_name(camera: str) -> str:
    """A camera name usable as a file name (no separators, no leading dot): ``mot/<this>.txt``.
    Two names can give one file name (``a/b``, ``a_b``); ``associate`` refuses such a site."""
    cleaned = "".join(c if c.isalnum() or c in "-_." else "_" for c in camera)
    return cleaned.lstrip(".") or "camera"


def plot_timeline(
    path: Path,
    tracks: Sequence[Track],
    global_ids: Sequence[int],
    camera_names: Sequence[str],
    title: str = "Identities over time",
) -> Path:
    """``timeline.png``: a row per identity (first seen at the top), a segment per track."""
    ids = np.asarray(global_ids)
    first = {}
    for i in np.argsort([t.start for t in tracks], kind="stable"):
        first.setdefault(int(ids[i]), len(first))
    shown = [g for g, rank in first.items() if rank < TIMELINE_ROWS]
    row_of = {g: r for r, g in enumerate(shown)}
    start = min(t.start for t in tracks)
    end = max(max(t.end for t in tracks), start + 1e-3)
    lanes = min(len(camera_names), 4)  # cameras seeing one person at once each get a lane
    row_height, left, right, top, bottom = 6 + 3 * lanes, 70, 20, 40, 60
    width = 1200
    height = top + bottom + row_height * max(len(shown), 1)
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    span = width - left - right

    def x_of(seconds: float) -> float:
        return left + (seconds - start) / (end - start) * span

    hidden = len(first) - len(shown)
    heading = f"{title}: {len(first)} identities, {len(tracks)} tracks"
    heading += f" ({hidden} later identities not drawn)" if hidden else ""
    draw.text((width / 2, 10), heading, fill="black", font=_font(14), anchor="mt")
    colour = {name: _PALETTE[k % len(_PALETTE)] for k, name in enumerate(camera_names)}
    lane_of = {name: k % lanes for k, name in enumerate(camera_names)}
    lane_height = (row_height - 2) / lanes
    for track, gid in zip(tracks, ids.tolist(), strict=True):
        row = row_of.get(gid)
        if row is None:
            continue
        y = top + row * row_height + 1 + lane_of[track.camera] * lane_height
        x0, x1 = x_of(track.start), max(x_of(track.end), x_of(track.start) + 2)
        draw.rectangle((x0, y, x1, y + lane_height - 1), fill=colour[track.camera])
    for gid in shown[:: max(1, len(shown) // 40)]:
        y = top + row_of[gid] * row_height + row_height / 2
        draw.text((left - 6, y), f"{gid}", fill="black", font=_font(9), anchor="rm")
    axis_y = top + row_height * max(len(shown), 1) + 4
    draw.line((left, axis_y, width - right, axis_y), fill="black")
    for k in range(6):
        seconds = start + (end - start) * k / 5
        x = x_of(seconds)
        draw.line((x, axis_y, x, axis_y + 4), fill="black")
        draw.text(
            (x, axis_y + 6), iso_time(seconds)[11:19], fill="black", font=_font(10), anchor="mt"
        )
    legend_x = left
    for name in camera_names:
        draw.rectangle((legend_x, height - 20, legend_x + 10, height - 10), fill=colour[name])
        draw.text((legend_x + 14, height - 15), name, fill="black", font=_font(10), anchor="lm")
        legend_x += 14 + int(draw.textlength(name, font=_font(10))) + 16
        if legend_x > width - 80:
            break
    with atomic_open(Path(path), "wb") as handle:
        canvas.save(handle, format="png", compress_level=3)
    return Path(path)


def gallery_labels(
    crops: Sequence[StoredCrop],
    tracks: Sequence[Track],
    global_ids: Sequence[int],
    cameras: dict[str, int],
) -> dict[int, str]:
    """The global id (as text) of each gallery crop that belongs to one of ``tracks``.

    A crop whose path is one of a track's crop files belongs to that track; else a crop of the
    track's camera (``cameras``: site name -> gallery number) and track id belongs to the part
    of that track whose time span holds its timestamp, or the part nearest in time (a track
    split at a gap has several parts, each with its own global id).
    """
    by_path: dict[str, int] = {}
    parts: dict[tuple[int, str], list[int]] = {}
    for number, track in enumerate(tracks):
        for crop in track.crops or ():
            if crop is not None:
                by_path[str(crop)] = number
        parts.setdefault((cameras[track.camera], str(track.track_id)), []).append(number)
    labels: dict[int, str] = {}
    for crop in crops:
        meta = crop.meta
        owner = by_path.get(meta.path)
        if owner is None and meta.track_id is not None:
            candidates = parts.get((meta.camera, meta.track_id), [])
            if candidates:
                owner = min(candidates, key=lambda n: _time_apart(tracks[n], meta.timestamp))
        if owner is not None:
            labels[crop.crop_id] = str(int(global_ids[owner]))
    return labels


def _time_apart(track: Track, moment: float) -> float:
    """Seconds from ``moment`` to the track's span (0 inside it)."""
    return max(track.start - moment, moment - track.end, 0.0)

"""Tracks from the files single-camera trackers write, checked row by row against the site.

Three formats, all turned into :class:`~reidkit.association.tracks.Track` lists:

* **MOTChallenge** text, one file per camera (``frame,id,x,y,w,h,conf,...``; commas or
  spaces). As ground truth, rows whose 7th column is 0 ("ignore") are skipped.
* **AI City** multi-camera text, one file for the site
  (``CameraId Id FrameId X Y W H Xworld Yworld``); world coordinates, when not -1, are the
  ground-plane positions.
* **A reidkit gallery** (a folder or a Milvus URI) whose crops carry camera, time and track
  id: each crop is a detection with its stored embedding (no model, no boxes; the gallery's
  camera numbers are the site's by :meth:`~reidkit.association.site.Site.gallery_cameras`).
* **DeepStream / Metropolis** JSON lines, one frame of one sensor per line, in the shape of
  Metropolis' ``nv.Frame`` message: ``{"sensorId", "timestamp" (or "@timestamp"), "id"
  (frame number), "objects": [{"id", "bbox": {"leftX", "topY", "rightX", "bottomY"},
  "confidence", "embedding": {"vector": [...]}}]}``; DeepStream's minimal schema, where an
  object is the string ``"id|left|top|right|bottom|label"``, is read too (no embeddings).

Every problem stops the read with one :class:`~reidkit.association.site.SiteError` naming
``file:line`` and the fix: wrong columns, a frame before the camera's ``frame_base`` (the
site contradicts the file), a track whose frames go backwards, a box outside the frame, an
unknown camera. Nothing is written before every input has been read.
"""

from __future__ import annotations

import json
import math
import struct
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from reidkit.association.site import Camera, Site, SiteError
from reidkit.association.tracks import Track
from reidkit.config.times import parse_time, within_clock
from reidkit.gallery import validation
from reidkit.gallery.factory import is_milvus_uri, open_gallery

#: Largest tracks file read (bytes): a day of a busy camera is a few hundred MB of text.
MAX_TRACKS_BYTES = 8 * 2**30
#: Longest line read (characters): a frame message of 200 objects with 2048-d embeddings is
#: about 4 MB; parsing a 100 MB line took 1.5 GB, so a line of gigabytes, well within a file
#: of MAX_TRACKS_BYTES, would exhaust memory instead of being refused.
MAX_LINE_CHARS = 64 * 2**20
#: Largest embedding accepted in a JSON line.
MAX_EMBEDDING_DIM = 8192
#: Shortest embedding accepted: pooling divides each row by its length (in float32, guarded
#: at 1e-12), so a row that overflows float32 there or nearly vanishes would silently drop out
#: of its track or outweigh it; no model's output is that short.
MIN_EMBEDDING_NORM = 1e-6
#: Largest world coordinate (AI City Xworld / Yworld) accepted: a 1,000 km site in
#: millimetres; past it, squared distances between positions overflow float64.
MAX_WORLD = 1e12
#: A box as a track keeps it (float32: x, y, w, h); packing rounds as numpy's cast does.
_FLOAT32_BOX = struct.Struct("<4f")
#: Largest frame number or numeric track id: beyond it float64 (times, the columns of MOT
#: and AI City files) no longer tells consecutive whole numbers apart.
MAX_WHOLE = 2**53


@dataclass
class _Rows:
    """The detections of one track, gathered row by row, with the line each came from."""

    frames: list[int] = field(default_factory=list)
    times: list[float] = field(default_factory=list)
    boxes: list[tuple[float, float, float, float]] = field(default_factory=list)
    confidence: list[float] = field(default_factory=list)
    ground: list[tuple[float, float]] = field(default_factory=list)
    embeddings: list[np.ndarray | None] = field(default_factory=list)
    first_line: str = ""
    last_line: str = ""


class _TrackBuilder:
    """Collects rows into tracks, refusing a track whose frames do not increase."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], _Rows] = defaultdict(_Rows)

    def add(
        self,
        where: str,
        camera: Camera,
        track_id: str,
        frame: int,
        box: tuple[float, float, float, float],
        confidence: float,
        *,
        ground: tuple[float, float] | None = None,
        embedding: np.ndarray | None = None,
        time: float | None = None,
    ) -> None:
        """One detection; its time is the camera clock's for ``frame`` unless given.

        A confidence above 1 counts as 1: some detectors score past 1 (DPM in MOTChallenge),
        and pooling weighs crops by confidence, so one such crop must not outweigh the rest.
        """
        confidence = min(confidence, 1.0)
        if time is None:
            time = float(camera.frame_time(np.array([frame]))[0])
            try:
                within_clock(time)
            except ValueError as exc:
                raise SiteError(
                    f"{where}: frame {frame} of camera {camera.name}: {exc}; fix the frame or "
                    f"cameras.{camera.name}.clock_origin in the site file"
                ) from None
        rows = self.rows[(camera.name, track_id)]
        if rows.frames and frame <= rows.frames[-1]:
            raise SiteError(
                f"{where}: frame {frame} of track {track_id} does not come after frame "
                f"{rows.frames[-1]} ({rows.last_line}); a track's frames must increase: sort "
                "the file by frame or fix the duplicated row"
            )
        if rows.times and time < rows.times[-1]:  # a message's own clock, against its frame id
            raise SiteError(
                f"{where}: track {track_id}'s time {time:.3f} is before its previous row's "
                f"{rows.times[-1]:.3f} ({rows.last_line}) although its frame number increases; "
                "fix the timestamp or the frame id"
            )
        rows.first_line = rows.first_line or where
        rows.last_line = where
        rows.frames.append(frame)
        rows.times.append(time)
        rows.boxes.append(box)
        rows.confidence.append(confidence)
        rows.ground.append(ground if ground is not None else (math.nan, math.nan))
        rows.embeddings.append(embedding)

    def tracks(self, site: Site) -> list[Track]:
        out = [self._track(site.cameras[name], track_id) for name, track_id in self.rows]
        _one_width(out)
        out.sort(key=lambda t: (site.names.index(t.camera), t.start, t.track_id))
        return out

    def tracks_of(self, camera: Camera) -> list[Track]:
        """The tracks of a builder that read one camera only."""
        out = [self._track(camera, track_id) for _, track_id in self.rows]
        _one_width(out)
        return sorted(out, key=lambda t: (t.start, t.track_id))

    def _track(self, camera: Camera, track_id: str) -> Track:
        rows = self.rows[(camera.name, track_id)]
        boxes = np.asarray(rows.boxes, dtype=np.float32)
        ground = np.asarray(rows.ground, dtype=np.float64)
        if np.isnan(ground).all():
            ground = camera.to_ground(boxes.astype(np.float64))
        return Track(
            camera=camera.name,
            track_id=track_id,
            frames=np.asarray(rows.frames, dtype=np.int64),
            times=np.asarray(rows.times, dtype=np.float64),
            boxes=boxes,
            confidence=np.asarray(rows.confidence, dtype=np.float32),
            ground=ground,
            embeddings=_embedding_rows(rows.embeddings, rows.first_line),
            source=rows.first_line,
        )


def _one_width(tracks: list[Track]) -> None:
    """Refuse embeddings of two widths across tracks, naming the first row of each: they come
    from two models (or a cut-off vector), and a distance between them means nothing. Checked
    here, where every track still knows its file and line."""
    first: dict[int, str] = {}
    for track in tracks:
        if track.embeddings is not None:
            first.setdefault(track.embeddings.shape[1], track.source)
    if len(first) > 1:
        (width, where), (other, other_where) = list(first.items())[:2]
        raise SiteError(
            f"{other_where}: embeddings of {other} values, but {where} has {width}; every "
            "embedding must come from one model"
        )


def _embedding_rows(rows: list[np.ndarray | None], where: str) -> np.ndarray | None:
    present = [r for r in rows if r is not None]
    if not present:
        return None
    width = len(present[0])
    if any(len(r) != width for r in present):
        raise SiteError(f"{where}: the track's embeddings differ in length; send one model's")
    out = np.full((len(rows), width), np.nan, dtype=np.float32)
    for i, row in enumerate(rows):
        if row is not None:
            out[i] = row
    return out


def _lines(path: Path) -> Iterator[tuple[int, str]]:
    """Numbered non-empty lines of a text file (1-based), refusing non-text and huge files."""
    try:
        size = path.stat().st_size
    except OSError as exc:
        raise SiteError(f"cannot read tracks file '{path}' ({exc.strerror or exc})") from None
    if size > MAX_TRACKS_BYTES:
        raise SiteError(f"tracks file '{path}' is larger than {MAX_TRACKS_BYTES} bytes; split it")
    with open(path, encoding="utf-8-sig", errors="strict") as handle:  # a BOM is not data
        number = 0  # lines read: number + 1 names an undecodable line
        try:
            while line := handle.readline(MAX_LINE_CHARS + 1):
                number += 1
                if len(line) > MAX_LINE_CHARS:
                    raise SiteError(
                        f"{path}:{number}: line longer than {MAX_LINE_CHARS} characters; one "
                        "row or frame message per line"
                    )
                text = line.strip()
                if text and not text.startswith("#"):
                    yield number, text
        except UnicodeDecodeError:
            raise SiteError(
                f"{path}:{number + 1}: not UTF-8 text; is this a tracks file?"
            ) from None


def _numbers(text: str, where: str, needed: int, layout: str) -> list[float]:
    fields = text.replace(",", " ").split()
    if len(fields) < needed:
        raise SiteError(
            f"{where}: {len(fields)} columns, expected {layout}; fix the row or choose "
            "the right associate.tracks_format"
        )
    try:
        if "_" in text:  # float() reads "1_0" as 10; no tracker writes that
            raise ValueError(text)
        values = [float(v) for v in fields]
    except ValueError:
        bad = next(v for v in fields if not _is_number(v))
        raise SiteError(f"{where}: '{bad}' is not a number (expected {layout})") from None
    if not all(math.isfinite(v) for v in values[:needed]):
        raise SiteError(f"{where}: a value is not finite (expected {layout})")
    return values


def _is_number(text: str) -> bool:
    if "_" in text:
        return False
    try:
        float(text)
    except ValueError:
        return False
    return True


def _frame(value: float, camera: Camera, where: str) -> int:
    if not math.isfinite(value) or value != int(value):
        raise SiteError(f"{where}: frame {value} is not a whole number")
    frame = int(value)
    if frame > MAX_WHOLE:
        raise SiteError(f"{where}: frame {value:g} is past 2**53, no camera's frame number")
    if frame < camera.frame_base:
        fix = (
            f"set cameras.{camera.name}.frame_base: 0 in the site file if this camera's files "
            "count frames from 0"
            if frame == 0 and camera.frame_base == 1
            else "frame numbers cannot be negative; fix the row"
        )
        raise SiteError(
            f"{where}: frame {frame} is before camera {camera.name}'s frame_base "
            f"{camera.frame_base}; {fix}"
        )
    return frame


def _track_id(value: float, where: str) -> str:
    if value != int(value) or value < 0:
        raise SiteError(
            f"{where}: track id {value:g} is not a tracker id (a whole number >= 0); pass "
            "tracks, not untracked detections"
        )
    if value > MAX_WHOLE:
        raise SiteError(f"{where}: track id {value:g} is past 2**53, no tracker's id")
    return str(int(value))


def _box(
    x: float, y: float, w: float, h: float, camera: Camera, where: str
) -> tuple[float, float, float, float]:
    try:  # the checks below hold for what a track keeps: float32
        x, y, w, h = _FLOAT32_BOX.unpack(_FLOAT32_BOX.pack(x, y, w, h))
    except OverflowError:
        raise SiteError(
            f"{where}: box ({x:g}, {y:g}, {w:g}, {h:g}) is past float32's range; fix the box"
        ) from None
    if not all(math.isfinite(v) for v in (x, y, w, h)):
        raise SiteError(f"{where}: box ({x:g}, {y:g}, {w:g}, {h:g}) is not finite; fix the box")
    if w <= 0 or h <= 0:
        raise SiteError(f"{where}: box width and height must be > 0, got {w:g} x {h:g}")
    known = camera.width is not None and camera.height is not None
    if known and (x >= camera.width or y >= camera.height or x + w <= 0 or y + h <= 0):
        raise SiteError(
            f"{where}: box ({x:g}, {y:g}, {w:g}, {h:g}) lies outside camera "
            f"{camera.name}'s {camera.width}x{camera.height} frame; fix the box or the "
            "camera's width/height in the site file"
        )
    return (x, y, w, h)


def read_mot(
    path: str | Path, camera: Camera, *, ground_truth: bool = False, builder: _TrackBuilder
) -> None:
    """Add the rows of one camera's MOTChallenge file to ``builder``."""
    path = Path(path)
    layout = "frame,id,x,y,w,h[,conf,...] (MOTChallenge)"
    for number, text in _lines(path):
        where = f"{path}:{number}"
        values = _numbers(text, where, 6, layout)
        if ground_truth and len(values) >= 7 and values[6] == 0:
            continue  # MOTChallenge ground truth: 0 in column 7 marks an entry to ignore
        frame = _frame(values[0], camera, where)
        confidence = values[6] if len(values) >= 7 and values[6] >= 0 else 1.0
        box = _box(*values[2:6], camera, where)
        builder.add(where, camera, _track_id(values[1], where), frame, box, confidence)


def read_aicity(path: str | Path, site: Site, *, builder: _TrackBuilder) -> None:
    """Add the rows of an AI City multi-camera file (camera ids are site camera names)."""
    path = Path(path)
    layout = "CameraId Id FrameId X Y W H Xworld Yworld (AI City)"
    for number, text in _lines(path):
        where = f"{path}:{number}"
        values = _numbers(text, where, 7, layout)
        name = str(int(values[0])) if values[0] == int(values[0]) else str(values[0])
        camera = site.camera(name, where)
        frame = _frame(values[2], camera, where)
        ground = None
        if len(values) >= 9 and not (values[7] == -1 and values[8] == -1):
            ground = (values[7], values[8])
            if not all(math.isfinite(v) for v in ground):
                raise SiteError(
                    f"{where}: world position ({ground[0]:g}, {ground[1]:g}) is not finite; "
                    "give -1 -1 where there is none"
                )
            if max(abs(v) for v in ground) > MAX_WORLD:
                raise SiteError(
                    f"{where}: world position ({ground[0]:g}, {ground[1]:g}) is past "
                    f"{MAX_WORLD:g}, on no site's ground plane; give -1 -1 where there is none"
                )
        box = _box(*values[3:7], camera, where)
        builder.add(where, camera, _track_id(values[1], where), frame, box, 1.0, ground=ground)


def read_deepstream(path: str | Path, site: Site, *, builder: _TrackBuilder) -> None:
    """Add the objects of a DeepStream / Metropolis JSON-lines file (see the module docstring)."""
    path = Path(path)
    for number, text in _lines(path):
        where = f"{path}:{number}"
        try:
            message = json.loads(text)
        except ValueError as exc:  # a JSONDecodeError, or an integer too long to convert
            problem = exc.msg if isinstance(exc, json.JSONDecodeError) else "a number too long"
            raise SiteError(f"{where}: not a JSON object ({problem}); one frame per line") from None
        except RecursionError:  # nesting deeper than any frame message
            raise SiteError(
                f"{where}: JSON nested too deep; one flat frame message per line"
            ) from None
        if not isinstance(message, dict):
            raise SiteError(f"{where}: not a JSON object; one frame message per line")
        sensor = message.get("sensorId")
        if sensor is None:
            raise SiteError(f"{where}: no 'sensorId'; each message names its camera")
        camera = site.camera(str(sensor), where)
        stamp = message.get("timestamp", message.get("@timestamp"))
        if stamp is None:
            raise SiteError(f"{where}: no 'timestamp'; each message says when its frame was taken")
        try:
            time = parse_time(stamp)
        except ValueError as exc:
            raise SiteError(f"{where}: {exc}") from None
        frame = _message_frame(message.get("id"), camera, where)
        if frame is None:  # no frame number: the camera's clock gives it
            frame = round((time - camera.origin) * camera.fps) + camera.frame_base
        objects = message.get("objects", [])
        if not isinstance(objects, list):
            raise SiteError(f"{where}: 'objects' must be a list")
        for item in objects:
            track_id, box, confidence, embedding = _deepstream_object(item, where)
            box = _box(*box, camera, where)
            builder.add(
                where, camera, track_id, frame, box, confidence, embedding=embedding, time=time
            )


def _message_frame(value: object, camera: Camera, where: str) -> int | None:
    """The frame number a message's ``id`` gives, or None where it gives none: brokers send
    the frame id as a number, as text, or not at all (then the timestamp places the frame)."""
    if isinstance(value, bool):
        return None
    try:
        number = float(value)  # type: ignore[arg-type]
    except OverflowError:  # an integer past float: no frame of any camera
        number = math.inf
    except (TypeError, ValueError):
        return None
    return _frame(number, camera, where)


def _deepstream_object(
    item: object, where: str
) -> tuple[str, tuple[float, float, float, float], float, np.ndarray | None]:
    """(track id, x y w h, confidence, embedding) of one object of a frame message."""
    if isinstance(item, str):  # minimal schema: "id|left|top|right|bottom|label"
        parts = item.split("|")
        try:
            left, top, right, bottom = (float(v) for v in parts[1:5])
        except (ValueError, IndexError):
            raise SiteError(
                f"{where}: object {item[:60]!r} is not id|left|top|right|bottom"
            ) from None
        box = (left, top, right - left, bottom - top)
        return _object_id(parts[0].strip(), where), box, 1.0, None
    if not isinstance(item, dict) or "id" not in item or not isinstance(item.get("bbox"), dict):
        raise SiteError(
            f"{where}: an object needs 'id' and 'bbox' {{leftX, topY, rightX, bottomY}}"
        )
    bbox = item["bbox"]
    try:
        if any(isinstance(bbox.get(k), bool) for k in ("leftX", "topY", "rightX", "bottomY")):
            raise TypeError("true/false is no coordinate")
        left, top, right, bottom = (float(bbox[k]) for k in ("leftX", "topY", "rightX", "bottomY"))
    except (KeyError, TypeError, ValueError):
        raise SiteError(f"{where}: object {item.get('id')!r} has a bbox without numeric leftX, "
                        "topY, rightX, bottomY") from None  # fmt: skip
    try:
        confidence = float(item.get("confidence", 1.0))
    except (TypeError, ValueError):
        confidence = math.nan
    if not math.isfinite(confidence):
        raise SiteError(
            f"{where}: object {item['id']!r}'s confidence {item.get('confidence')!r} is not a "
            "finite number"
        )
    if confidence < 0:  # DeepStream's -0.1: tracked, not detected; unknown, as in MOT files
        confidence = 1.0
    embedding = None
    vector = item.get("embedding")
    if isinstance(vector, dict):
        vector = vector.get("vector")
    if vector is not None:
        if not isinstance(vector, list) or not vector:
            raise SiteError(f"{where}: object {item['id']!r}'s embedding must be a list of numbers")
        if len(vector) > MAX_EMBEDDING_DIM:
            raise SiteError(
                f"{where}: object {item['id']!r}'s embedding has {len(vector)} values; at most "
                f"{MAX_EMBEDDING_DIM}"
            )
        embedding = _vector(vector)
        if embedding is None:
            raise SiteError(
                f"{where}: object {item['id']!r}'s embedding holds a non-number (text, "
                "true/false, null or a list); send the model's output as JSON numbers"
            )
        if not np.all(np.isfinite(embedding)) or not np.any(embedding):
            raise SiteError(
                f"{where}: object {item['id']!r}'s embedding is zero or not a finite float32"
            )
        with np.errstate(over="ignore", under="ignore"):  # computed as pooling computes it
            norm = float(np.linalg.norm(embedding))
        if not MIN_EMBEDDING_NORM <= norm < math.inf:
            raise SiteError(
                f"{where}: object {item['id']!r}'s embedding has length {norm:g}, outside "
                f"[{MIN_EMBEDDING_NORM:g}, float32's range); send the model's output unscaled"
            )
    box = (left, top, right - left, bottom - top)
    return _object_id(item["id"], where), box, confidence, embedding


def _vector(values: list[Any]) -> np.ndarray | None:
    """A JSON list of numbers as float32, or None when it holds anything else.

    A cast straight to float32 reads ``"0.5"`` as 0.5 and ``true`` as 1.0, so a broker that
    sends text or booleans would be embedded as if it had sent numbers. Numbers, and only
    numbers, give an integer or float array; booleans mixed with numbers are caught by a type
    check, run only where a value is exactly 0 or 1 (the only values they can become), so a
    usual vector costs no loop in Python.
    """
    try:
        array = np.asarray(values)
    except (TypeError, ValueError):  # ragged nesting
        return None
    if array.ndim != 1 or array.dtype.kind not in "fi":
        return None
    if ((array == 0) | (array == 1)).any() and any(type(value) is bool for value in values):
        return None
    with np.errstate(over="ignore"):  # beyond float32: inf, refused by the caller
        return array.astype(np.float32)


def _object_id(value: object, where: str) -> str:
    """A DeepStream object's tracker id as text: a string or a whole number, as trackers send."""
    if isinstance(value, bool) or not isinstance(value, str | int):
        raise SiteError(f"{where}: object id {value!r} is neither text nor a whole number")
    if isinstance(value, str) and not value.isprintable():  # a line break would split messages
        raise SiteError(f"{where}: object id {value!r} holds a control character; fix the id")
    try:
        return validation.track_id(str(value))
    except ValueError as exc:
        raise SiteError(f"{where}: {exc}") from None


def read_epfl(path: str | Path, camera: Camera) -> list[Track]:
    """One track per person of an EPFL multi-camera ground-truth file (``gt.txt``: ``id xmin
    ymin xmax ymax frame lost occluded generated "label"``), visible rows only (``lost`` 0).

    EPFL's terrace and laboratory sequences are real multi-camera trajectories with global ids;
    this is how tests and benchmarks turn them into tracks (split them at gaps to get what a
    tracker would hand over).
    """
    path = Path(path)
    builder = _TrackBuilder()
    layout = "id xmin ymin xmax ymax frame lost occluded generated label (EPFL)"
    rows = []
    for number, text in _lines(path):
        where = f"{path}:{number}"
        values = _numbers(text.rsplit(None, 1)[0], where, 9, layout)
        if values[6] == 0:
            rows.append((values[5], values[0], values[1:5], where))
    rows.sort(key=lambda row: (row[1], row[0]))
    for frame_value, person, (x1, y1, x2, y2), where in rows:
        box = _box(x1, y1, x2 - x1 + 1, y2 - y1 + 1, camera, where)
        frame = _frame(frame_value, camera, where)
        builder.add(where, camera, _track_id(person, where), frame, box, 1.0)
    return builder.tracks_of(camera)


def read_tracks(
    site: Site, tracks: str | Path | None = None, tracks_format: str = "auto"
) -> list[Track]:
    """Every track of the site: each camera's MOTChallenge file, plus ``tracks`` (a multi-camera
    AI City or DeepStream file; ``tracks_format`` ``auto`` tells them apart by content)."""
    builder = _TrackBuilder()
    for camera in site.cameras.values():
        if camera.tracks is not None:
            read_mot(camera.tracks, camera, builder=builder)
    if tracks is not None and (tracks_format == "gallery" or is_gallery(str(tracks))):
        return read_gallery(str(tracks), site)
    if tracks is not None:
        path = Path(tracks)
        if path.is_dir():
            raise SiteError(
                f"tracks '{path}' is a folder without gallery.json; give a tracks file or a "
                "gallery folder in associate.tracks"
            )
        if not path.is_file():
            raise SiteError(f"tracks file '{path}' does not exist; fix associate.tracks")
        kind = _sniff(path) if tracks_format == "auto" else tracks_format
        if kind == "deepstream":
            read_deepstream(path, site, builder=builder)
        elif kind == "aicity":
            read_aicity(path, site, builder=builder)
        else:
            raise SiteError(
                f"{path}: a MOTChallenge file holds one camera; name it under that camera's "
                "tracks: in the site file, or give an AI City or DeepStream file here"
            )
    if not builder.rows and tracks is not None:
        raise SiteError(
            f"tracks file '{tracks}' holds no detection (and the cameras' tracks: files none); "
            "it needs one row, or one object of a frame message, per detection"
        )
    if not builder.rows:
        raise SiteError(
            f"{site.source}: no tracks; give each camera a tracks: file or set associate.tracks"
        )
    return builder.tracks(site)


def is_gallery(uri: str) -> bool:
    """Whether ``associate.tracks`` names a gallery: a Milvus URI or a gallery folder."""
    return is_milvus_uri(uri) or (Path(uri) / "gallery.json").is_file()


def read_gallery(uri: str, site: Site) -> list[Track]:
    """The tracks of a gallery's crops: crops of one camera and track id are one track, in
    time order, each crop a detection with its stored embedding (see the module docstring).
    Crops of cameras the site does not name, or without a track id, are left out."""
    names = {number: name for name, number in site.gallery_cameras().items()}
    with open_gallery(uri) as gallery:
        crops = gallery.crops()
        vectors = gallery.vectors([c.crop_id for c in crops]) if crops else np.empty((0, 0))
    grouped: dict[tuple[str, str], list[int]] = defaultdict(list)
    for row, crop in enumerate(crops):
        if crop.meta.track_id and crop.meta.camera in names:
            grouped[(names[crop.meta.camera], crop.meta.track_id)].append(row)
    if not grouped:
        raise SiteError(
            f"gallery '{uri}' has no crop with a track id in a camera of {site.source} "
            f"(site cameras are gallery cameras {sorted(names)}); add crops with track ids, or "
            "name the cameras in site.yaml by their gallery numbers"
        )
    tracks = []
    for (name, track_id), rows in grouped.items():
        camera = site.cameras[name]
        rows.sort(key=lambda r: (crops[r].meta.timestamp, crops[r].crop_id))
        times = np.array([crops[r].meta.timestamp for r in rows])
        frames = np.round((times - camera.origin) * camera.fps).astype(np.int64) + camera.frame_base
        tracks.append(
            Track(
                camera=name,
                track_id=track_id,
                frames=frames,
                times=times,
                boxes=np.zeros((len(rows), 4), dtype=np.float32),
                confidence=np.ones(len(rows), dtype=np.float32),
                embeddings=vectors[rows],
                crops=[Path(crops[r].meta.path) for r in rows],
                source=f"{uri} (camera {crops[rows[0]].meta.camera}, track {track_id})",
            )
        )
    tracks.sort(key=lambda t: (site.names.index(t.camera), t.start, t.track_id))
    return tracks


def read_ground_truth(site: Site, truth: str | Path | None = None) -> list[Track]:
    """Ground-truth tracks (their ids are global ids): each camera's ``ground_truth`` MOT file,
    or one AI City file for the whole site."""
    builder = _TrackBuilder()
    if truth is not None:
        path = Path(truth)
        if not path.is_file():
            raise SiteError(f"ground truth '{path}' does not exist; fix associate.ground_truth")
        read_aicity(path, site, builder=builder)
    else:
        for camera in site.cameras.values():
            if camera.ground_truth is not None:
                read_mot(camera.ground_truth, camera, ground_truth=True, builder=builder)
    if not builder.rows:  # asked to score, and nothing to score against
        source = truth if truth is not None else f"{site.source}'s ground_truth: files"
        raise SiteError(
            f"ground truth {source} holds no rows; fix it, or leave it out to skip scoring"
        )
    return builder.tracks(site)


def _sniff(path: Path) -> str:
    """``deepstream`` for JSON (by name or by its first character), else ``aicity``."""
    if path.suffix.lower() in (".json", ".jsonl", ".ndjson"):
        return "deepstream"
    for _, text in _lines(path):
        return "deepstream" if text.startswith(("{", "[")) else "aicity"
    raise SiteError(f"tracks file '{path}' is empty")

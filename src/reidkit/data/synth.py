"""A small synthetic re-id dataset in the Market-1501 layout, for tests, demos and smoke runs.

Real re-id data cannot ship with the project, yet training must be shown to *learn*. Each
identity here has a fixed look (top and bottom colours, a top pattern, skin, hair, shoes, an
optional bag, a build) that is the only stable cue; cameras change everything else: colour cast,
brightness, background, blur, noise, person scale and position, and each image varies the pose
and the facing direction and may add an occluder. So a model must learn appearance that
survives camera changes (the re-id task) but cannot match by background or pixel identity.

The output follows Market-1501 exactly, including its warts: gallery junk (``-1``) and
distractor (``0000``) images, so loaders are exercised on them too. The frame numbers in the
names are a site's clock (:class:`_FrameClock`), so a gallery filled with the crops spans hours
of a day as a real one does. Rendering is numpy masks on
a small canvas plus Pillow for blur and JPEG; it is fully determined by ``seed``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml
from PIL import Image, ImageFilter

from reidkit.errors import DatasetError

SPLIT_FOLDERS = {"train": "bounding_box_train", "gallery": "bounding_box_test", "query": "query"}
PATTERNS = ("plain", "hstripes", "vstripes", "checks", "diagonal", "split")

_JPEG_QUALITY = 92
#: Frames per second of the frame numbers in the names (Market-1501's; ``gallery.fps``'s default).
FPS = 25
#: The largest frame number Market's six digits hold: 11 hours at :data:`FPS`.
_LAST_FRAME = 999_999


@dataclass(frozen=True)
class _Look:
    """What stays the same for one person across cameras."""

    top: np.ndarray
    top_accent: np.ndarray
    pattern: str
    bottom: np.ndarray
    shorts: bool
    short_sleeves: bool
    skin: np.ndarray
    hair: np.ndarray
    shoes: np.ndarray
    bag: np.ndarray | None
    build: float


@dataclass(frozen=True)
class _Camera:
    """What one camera does to every image it takes."""

    gain: np.ndarray
    wall: np.ndarray
    floor: np.ndarray
    horizon: float
    blur: float
    noise: float
    scale: float


class _FrameClock:
    """Frame numbers of a site's day: people arrive seconds to two minutes apart and walk
    between cameras in seconds to under a minute, one after another.

    Strictly increasing, so the names sort as before within an identity and camera; squeezed
    when a large dataset's day would not fit six digits. Its own random stream leaves every
    image as the seed renders it.
    """

    ARRIVAL_S = (5.0, 120.0)
    TRANSIT_S = (3.0, 40.0)

    def __init__(self, arrivals: int, transits: int, seed: int) -> None:
        longest = arrivals * self.ARRIVAL_S[1] + transits * self.TRANSIT_S[1]
        self.scale = min(1.0, _LAST_FRAME / FPS / longest)
        self.rng = np.random.default_rng([seed, 1])
        self.seconds = 0.0
        self.frame = 0

    def tick(self, arrival: bool) -> int:
        """The frame of the next image: a new person's first sighting, or their next camera."""
        low, high = self.ARRIVAL_S if arrival else self.TRANSIT_S
        self.seconds += float(self.rng.uniform(low, high)) * self.scale
        self.frame = max(self.frame + 1, round(self.seconds * FPS))
        return self.frame


def _colour(rng: np.random.Generator, lo: float = 0.0, hi: float = 255.0) -> np.ndarray:
    return rng.uniform(lo, hi, size=3)


def _random_look(rng: np.random.Generator) -> _Look:
    skin_tone = rng.uniform(0.35, 1.0)
    return _Look(
        top=_colour(rng),
        top_accent=_colour(rng),
        pattern=PATTERNS[rng.integers(len(PATTERNS))],
        bottom=_colour(rng, 0, 200),
        shorts=bool(rng.random() < 0.25),
        short_sleeves=bool(rng.random() < 0.4),
        skin=np.array([235.0, 190.0, 160.0]) * skin_tone,
        hair=_colour(rng, 0, 120),
        shoes=_colour(rng, 0, 255),
        bag=_colour(rng) if rng.random() < 0.35 else None,
        build=float(rng.uniform(0.85, 1.15)),
    )


def _random_camera(rng: np.random.Generator) -> _Camera:
    return _Camera(
        gain=rng.uniform(0.75, 1.2, size=3),
        wall=_colour(rng, 40, 220),
        floor=_colour(rng, 30, 180),
        horizon=float(rng.uniform(0.45, 0.8)),
        blur=float(rng.uniform(0.0, 1.2)),
        noise=float(rng.uniform(2.0, 8.0)),
        scale=float(rng.uniform(0.78, 0.95)),
    )


class _Canvas:
    """An RGB float image plus pixel coordinate grids for drawing with boolean masks."""

    def __init__(self, height: int, width: int) -> None:
        self.height, self.width = height, width
        self.yy, self.xx = np.mgrid[0:height, 0:width].astype(np.float32)
        self.pixels = np.zeros((height, width, 3), dtype=np.float32)

    def paint(self, mask: np.ndarray, colour: np.ndarray) -> None:
        self.pixels[mask] = colour

    def ellipse(self, cx: float, cy: float, rx: float, ry: float) -> np.ndarray:
        return ((self.xx - cx) / rx) ** 2 + ((self.yy - cy) / ry) ** 2 <= 1.0

    def limb(self, x0: float, y0: float, x1: float, y1: float, half_width: float) -> np.ndarray:
        """A vertical-ish strip from (x0, y0) to (x1, y1): a walking leg or a swinging arm."""
        t = (self.yy - y0) / max(y1 - y0, 1e-3)
        centre = x0 + t * (x1 - x0)
        return (t >= 0) & (t <= 1) & (np.abs(self.xx - centre) <= half_width)

    def box(self, x0: float, y0: float, x1: float, y1: float) -> np.ndarray:
        return (self.xx >= x0) & (self.xx < x1) & (self.yy >= y0) & (self.yy < y1)


def _pattern_mask(
    canvas: _Canvas, pattern: str, cx: float, top: float, height: float
) -> np.ndarray:
    """Where the accent colour shows on the torso, in coordinates that move with the person."""
    period = max(height / 5.0, 2.0)
    u = (canvas.xx - cx) / period
    v = (canvas.yy - top) / period
    if pattern == "hstripes":
        return np.floor(v * 2) % 2 == 0
    if pattern == "vstripes":
        return np.floor(u * 2) % 2 == 0
    if pattern == "checks":
        return (np.floor(u * 1.5) + np.floor(v * 1.5)) % 2 == 0
    if pattern == "diagonal":
        return np.floor((u + v) * 1.5) % 2 == 0
    if pattern == "split":
        return v > 2.5
    return np.zeros_like(u, dtype=bool)


def _background(canvas: _Canvas, camera: _Camera, rng: np.random.Generator) -> None:
    horizon = canvas.height * (camera.horizon + rng.uniform(-0.05, 0.05))
    shade = 1.0 + 0.25 * (canvas.yy / canvas.height - 0.5)[..., None]
    wall = camera.wall * rng.uniform(0.85, 1.15)
    canvas.pixels[:] = np.where((canvas.yy < horizon)[..., None], wall, camera.floor) * shade
    for _ in range(rng.integers(0, 3)):  # clutter: doors, signs, windows
        x0, y0 = rng.uniform(0, canvas.width), rng.uniform(0, horizon)
        w, h = rng.uniform(0.1, 0.4) * canvas.width, rng.uniform(0.1, 0.3) * canvas.height
        canvas.paint(canvas.box(x0, y0, x0 + w, y0 + h), _colour(rng, 30, 230))


def _person(canvas: _Canvas, look: _Look, camera: _Camera, rng: np.random.Generator) -> None:
    """Draw a standing or walking figure; pose, facing and placement vary per image."""
    h = canvas.height * camera.scale * rng.uniform(0.94, 1.06)
    top = (canvas.height - h) * rng.uniform(0.2, 0.8)
    cx = canvas.width * (0.5 + rng.uniform(-0.08, 0.08))
    half = 0.125 * h * look.build
    facing = 1.0 if rng.random() < 0.5 else -1.0
    stride = rng.uniform(-0.09, 0.09) * h
    swing = rng.uniform(-0.06, 0.06) * h
    hip, knee, foot = top + 0.52 * h, top + 0.74 * h, top + 0.96 * h
    shoulder, waist = top + 0.17 * h, top + 0.53 * h
    leg_w, arm_w = 0.055 * h * look.build, 0.04 * h * look.build

    for side in (-1.0, 1.0):
        x_hip, x_foot = cx + side * half * 0.45, cx + side * (half * 0.45 + stride * 0.5)
        leg = canvas.limb(x_hip, hip, x_foot, foot, leg_w)
        canvas.paint(leg, look.bottom)
        if look.shorts:
            canvas.paint(leg & (canvas.yy > knee), look.skin)
        canvas.paint(
            canvas.ellipse(x_foot + facing * 0.02 * h, foot, 0.06 * h, 0.025 * h), look.shoes
        )
        stride = -stride

    torso = canvas.box(cx - half, shoulder, cx + half, waist)
    canvas.paint(torso, look.top)
    canvas.paint(
        torso & _pattern_mask(canvas, look.pattern, cx, shoulder, waist - shoulder), look.top_accent
    )

    for side in (-1.0, 1.0):
        x0 = cx + side * (half + arm_w * 0.6)
        arm = canvas.limb(x0, shoulder + 0.01 * h, x0 + side * 0.02 * h + swing, waist, arm_w)
        canvas.paint(arm, look.top)
        if look.short_sleeves:
            canvas.paint(arm & (canvas.yy > shoulder + 0.12 * h), look.skin)
        swing = -swing

    head_y, head_rx, head_ry = top + 0.085 * h, 0.065 * h, 0.08 * h
    canvas.paint(canvas.ellipse(cx, head_y, head_rx, head_ry), look.skin)
    hair = canvas.ellipse(cx - facing * 0.01 * h, head_y - 0.01 * h, head_rx * 1.1, head_ry)
    canvas.paint(
        hair & ((canvas.yy < head_y - 0.02 * h) | (facing * (canvas.xx - cx) < -0.5 * head_rx)),
        look.hair,
    )

    if look.bag is not None:
        x_bag = cx + facing * (half + 0.02 * h)
        canvas.paint(
            canvas.box(x_bag - 0.07 * h, hip - 0.1 * h, x_bag + 0.07 * h, hip + 0.06 * h), look.bag
        )

    if rng.random() < 0.15:  # something in front of the legs: a bench, a car, a railing
        y0 = top + h * rng.uniform(0.6, 0.85)
        canvas.paint(canvas.box(0, y0, canvas.width, canvas.height), _colour(rng, 20, 200))


def _finish(canvas: _Canvas, camera: _Camera, rng: np.random.Generator) -> Image.Image:
    """Apply the camera's cast and noise, the per-shot exposure, and its blur."""
    exposure = rng.uniform(0.8, 1.2)
    pixels = canvas.pixels * camera.gain * exposure
    pixels += rng.normal(0.0, camera.noise, size=pixels.shape)
    image = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
    radius = camera.blur + rng.uniform(0.0, 0.4)
    return image.filter(ImageFilter.GaussianBlur(radius)) if radius > 0.3 else image


def _render(
    size: tuple[int, int], look: _Look | None, camera: _Camera, rng: np.random.Generator
) -> Image.Image:
    canvas = _Canvas(*size)
    _background(canvas, camera, rng)
    if look is not None:
        _person(canvas, look, camera, rng)
    return _finish(canvas, camera, rng)


def _prepare_folders(out: Path) -> dict[str, Path]:
    folders = {split: out / name for split, name in SPLIT_FOLDERS.items()}
    for folder in folders.values():
        if folder.is_dir() and any(folder.iterdir()):
            raise DatasetError(
                f"synthetic dataset folder '{folder}' is not empty; choose a new output folder"
            )
        folder.mkdir(parents=True, exist_ok=True)
    return folders


def synthesize(
    out: Path,
    *,
    ids: int = 60,
    cameras: int = 4,
    images_per_id: int = 12,
    height: int = 128,
    width: int = 64,
    seed: int = 0,
    query_fraction: float = 0.5,
) -> dict:
    """Write a Market-layout dataset under ``out`` and return its counts per split.

    The first half of the ids (rounded up) is the train set, the rest the test set. Images of
    an identity go round-robin over the cameras, so with ``images_per_id >= 2`` every identity
    is seen by at least two cameras. For each test identity, ``query_fraction`` of its cameras
    (at least one, never all) give one image to ``query``; everything else is gallery, so each
    query has a gallery match in another camera. The gallery also gets a few junk and
    distractor images, counted separately from its identity images.
    """
    if ids < 2 or cameras < 2 or images_per_id < 2:
        raise ValueError("synthesize needs ids >= 2, cameras >= 2 and images_per_id >= 2")
    if not 0.0 < query_fraction < 1.0:
        raise ValueError(f"query_fraction must be in (0, 1), got {query_fraction}")
    folders = _prepare_folders(Path(out))
    rng = np.random.default_rng(seed)
    rigs = [_random_camera(rng) for _ in range(cameras)]
    looks = [_random_look(rng) for _ in range(ids)]
    num_train = (ids + 1) // 2
    extras = max(2, ids // 10)
    clock = _FrameClock(ids + 2 * extras, ids * (images_per_id - 1), seed)
    counts = {split: {"ids": 0, "images": 0} for split in SPLIT_FOLDERS}

    def save(split: str, pid: int, cam: int, image: Image.Image, arrival: bool = True) -> None:
        frame = clock.tick(arrival)
        tag = f"{pid:04d}" if pid >= 0 else str(pid)
        image.save(folders[split] / f"{tag}_c{cam}s1_{frame:06d}_00.jpg", quality=_JPEG_QUALITY)

    for index, look in enumerate(looks):
        pid = index + 1
        offset = int(rng.integers(cameras))
        cams = [(offset + j) % cameras + 1 for j in range(images_per_id)]
        is_train = index < num_train
        seen = sorted(set(cams))
        n_query = min(max(1, round(query_fraction * len(seen))), len(seen) - 1)
        query_cams = (
            set() if is_train else set(rng.choice(seen, size=n_query, replace=False).tolist())
        )
        for sighting, cam in enumerate(cams):
            image = _render((height, width), look, rigs[cam - 1], rng)
            if is_train:
                split = "train"
            elif cam in query_cams:
                split = "query"
                query_cams.discard(cam)
            else:
                split = "gallery"
            save(split, pid, cam, image, arrival=sighting == 0)
            counts[split]["images"] += 1
        for split in ("train",) if is_train else ("query", "gallery"):
            counts[split]["ids"] += 1

    for _ in range(extras):  # distractors: people who are nobody's match
        cam = int(rng.integers(cameras)) + 1
        save("gallery", 0, cam, _render((height, width), _random_look(rng), rigs[cam - 1], rng))
    for _ in range(extras):  # junk: background crops a detector got wrong
        cam = int(rng.integers(cameras)) + 1
        save("gallery", -1, cam, _render((height, width), None, rigs[cam - 1], rng))
    counts["gallery"] |= {"distractors": extras, "junk": extras}
    return counts


@dataclass(frozen=True)
class _Visit:
    """One person's pass through one camera's view: one track."""

    person: int
    camera: int
    start: float
    end: float


def _camera_links(cameras: int, rng: np.random.Generator) -> dict[tuple[int, int], tuple]:
    """Each camera linked to 3 others; each link's transit window (min_s, max_s)."""
    windows = {}
    for a in range(cameras):
        for step in (1, 2, cameras // 2):
            b = (a + step) % cameras
            if b != a and (min(a, b), max(a, b)) not in windows:
                low = float(rng.uniform(10.0, 60.0))
                windows[(min(a, b), max(a, b))] = (round(low, 1), round(low * 3.0, 1))
    return windows


def _walks(
    cameras: int, tracks: int, day: float, windows: dict, rng: np.random.Generator
) -> list[_Visit]:
    """People arriving around a morning and an evening peak, each walking 1-7 linked views."""
    neighbours: dict[int, list[int]] = {c: [] for c in range(cameras)}
    for a, b in windows:
        neighbours[a].append(b)
        neighbours[b].append(a)
    visits: list[_Visit] = []
    person = 0
    while len(visits) < tracks:
        person += 1
        now = float(np.clip(rng.normal(rng.choice([0.35, 0.7]) * day, day / 12), 0.0, day * 0.95))
        camera = int(rng.integers(cameras))
        for _ in range(int(rng.integers(1, 8))):
            end = now + float(rng.uniform(3.0, 40.0))
            if end > day or len(visits) >= tracks:
                break
            visits.append(_Visit(person, camera, now, end))
            following = int(rng.choice(neighbours[camera]))
            low, high = windows[(min(camera, following), max(camera, following))]
            now, camera = end + float(rng.uniform(low, high)), following
    return visits


def synthesize_site(
    out: Path,
    *,
    cameras: int = 100,
    tracks: int = 10_000,
    hours: float = 24.0,
    dim: int = 128,
    fps: float = 5.0,
    seed: int = 0,
) -> dict:
    """Write a synthetic multi-camera site under ``out`` for scale and speed tests only.

    People walk a camera graph (each camera linked to 3 others, every link with a transit
    window) over ``hours``, arriving around a morning and an evening peak; each visit to a
    camera is one track. Files: ``site.yaml`` (cameras alternate 0- and 1-based frame numbers
    and started recording at different times, as real recorders do), ``tracks.jsonl``
    (DeepStream / Metropolis JSON lines, one message per camera per second, an embedding on
    every fifth message of a track) and ``ground_truth.txt`` (AI City text, person ids). The
    appearance is a random unit vector per person plus a camera cast and noise: it says nothing
    about real accuracy.
    """
    if cameras < 2 or tracks < 1 or hours <= 0 or dim < 2 or fps <= 0:
        raise ValueError("synthesize_site needs cameras >= 2, tracks >= 1, hours, dim, fps > 0")
    out = Path(out)
    if (out / "site.yaml").exists():
        raise DatasetError(f"synthetic site folder '{out}' already holds a site; choose a new one")
    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    epoch = 1.7e9  # the day starts at this unix time
    windows = _camera_links(cameras, rng)
    visits = _walks(cameras, tracks, hours * 3600.0, windows, rng)
    origins = epoch - rng.uniform(0.0, 3600.0, size=cameras).round(3)  # recorders started earlier
    casts = rng.normal(size=(cameras, dim)) * 0.3 / np.sqrt(dim)
    looks = rng.normal(size=(visits[-1].person + 1, dim)) / np.sqrt(dim)
    messages: dict[tuple[float, int, int], list[dict]] = {}
    truth = []
    for track_id, visit in enumerate(visits, 1):
        base = visit.camera % 2
        for k, moment in enumerate(np.arange(np.ceil(visit.start), visit.end, 1.0)):
            frame = round((epoch + moment - origins[visit.camera]) * fps) + base
            left, top = 100.0 + 5 * k, 80.0
            item: dict = {
                "id": str(track_id),
                "bbox": {"leftX": left, "topY": top, "rightX": left + 60, "bottomY": top + 160},
                "confidence": 0.9,
            }
            if k % 5 == 0:
                noise = rng.normal(size=dim) * 0.6 / np.sqrt(dim)
                vector = looks[visit.person] + casts[visit.camera] + noise
                item["embedding"] = {"vector": [round(float(v), 4) for v in vector]}
            moment_key = (float(origins[visit.camera] + (frame - base) / fps), visit.camera, frame)
            messages.setdefault(moment_key, []).append(item)
            truth.append(f"{visit.camera} {visit.person} {frame} {left} {top} 60.0 160.0 -1 -1")
    with open(out / "tracks.jsonl", "w", encoding="utf-8") as handle:
        for (stamp, camera, frame), items in sorted(messages.items()):
            message = {"sensorId": str(camera), "id": str(frame), "timestamp": round(stamp, 3)}
            handle.write(json.dumps({**message, "objects": items}) + "\n")
    (out / "ground_truth.txt").write_text("\n".join(truth) + "\n", encoding="utf-8")
    site = {
        "cameras": {
            str(c): {
                "fps": fps,
                "frame_base": c % 2,
                "clock_origin": float(origins[c]),
                "width": 1920,
                "height": 1080,
            }
            for c in range(cameras)
        },
        "transit": [
            {"cameras": [str(a), str(b)], "min_s": low, "max_s": high}
            for (a, b), (low, high) in sorted(windows.items())
        ],
    }
    (out / "site.yaml").write_text(yaml.safe_dump(site, sort_keys=False), encoding="utf-8")
    return {"cameras": cameras, "tracks": len(visits), "people": len({v.person for v in visits})}

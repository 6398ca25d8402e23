"""The site file (``site.yaml``): what a site knows about its cameras, schema-checked like a spec.

One entry per camera gives its clock (frame rate, the wall-clock time of its first frame, and
whether its tracker counts frames from 0 or from 1), its image size, an optional image-to-ground
homography, and where its per-camera files are (MOTChallenge tracks, a frames or crops folder,
ground truth). Optional transit windows say how long anyone takes, at the least, to get from one
camera's view to another's. Example::

    cameras:
      c0:
        fps: 25
        clock_origin: "2024-05-01T08:00:00Z"   # wall-clock time of frame `frame_base`
        frame_base: 0          # the tracker's first frame number: 0 or 1, always stated
        width: 360
        height: 288
        homography: c0/Homography.txt          # 3x3, image pixels -> ground plane (or a list)
        tracks: c0/tracks.txt                  # MOTChallenge text
        frames: c0/img1                        # frame images named by frame number
    transit:
      - {cameras: [c0, c3], min_s: 20}         # nobody gets from c0 to c3 in under 20 s

``frame_base`` has no default on purpose: mixing 0- and 1-based cameras (or a 0-based tracker
with 1-based ground truth) silently shifts every box by one frame, the known bug of
multi-camera evaluation scripts. Every frame number is turned into time here
(``clock_origin + (frame - frame_base) / fps``) and nowhere else.

A problem is one :class:`SiteError` line naming ``site.yaml:line`` and the fix.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import numpy as np
import yaml
from pydantic import ConfigDict, Field, ValidationError, field_validator

from reidkit.config.numbers import NumbersNotBooleans
from reidkit.config.times import parse_time, time_as_text
from reidkit.errors import ReidkitError
from reidkit.yamlsafe import load_yaml_file


class SiteError(ReidkitError):
    """The site file, or a tracks file read with it, is wrong; the message names file:line."""


#: Largest homography file read (bytes): nine numbers; a bigger file (or a device such as
#: /dev/zero behind a link) is not one, and reading it whole would hang or exhaust memory.
MAX_HOMOGRAPHY_BYTES = 64 * 2**10


class _Strict(NumbersNotBooleans):
    model_config = ConfigDict(extra="forbid")


class CameraEntry(_Strict):
    """One camera of ``site.yaml``."""

    fps: float = Field(..., gt=0.0, le=1000.0, description="Frames per second of the camera.")
    frame_base: Literal[0, 1] = Field(
        ..., description="Number of the first frame in this camera's files (0 or 1); required."
    )
    clock_origin: str = Field(
        "1970-01-01T00:00:00Z",
        description="Wall-clock time (ISO-8601 or unix seconds) of frame number frame_base.",
    )
    width: int | None = Field(None, ge=1, le=100_000, description="Frame width in pixels.")
    height: int | None = Field(None, ge=1, le=100_000, description="Frame height in pixels.")
    homography: str | list[list[float]] | None = Field(
        None, description="3x3 image-to-ground homography: a 3x3 list or a text file of 9 numbers."
    )
    tracks: str | None = Field(None, description="MOTChallenge tracks file of this camera.")
    frames: str | None = Field(
        None, description="Folder of frame images named by frame number (crops are cut from them)."
    )
    crops: str | None = Field(
        None, description="Folder of crops: <track_id>/<frame>.jpg (instead of frames)."
    )
    ground_truth: str | None = Field(
        None, description="MOTChallenge ground truth of this camera (ids are global ids)."
    )

    @field_validator("clock_origin", mode="before")
    @classmethod
    def _time_as_text(cls, value: object) -> object:
        return time_as_text(value)


class TransitEntry(_Strict):
    """One camera pair of ``transit``: the shortest time from one view to the other."""

    cameras: tuple[str, str] = Field(..., description="The two cameras.")
    min_s: float = Field(
        ..., ge=0.0, description="Shortest time anyone takes between the two views, by any route."
    )
    max_s: float | None = Field(
        None, ge=0.0, description="Longest direct transit (reported beside the learned ones)."
    )
    both_ways: bool = Field(True, description="The window holds in both directions.")


class SiteFile(_Strict):
    """``site.yaml``: cameras, their clocks, geometry and files; camera-pair transit windows."""

    cameras: dict[str, CameraEntry] = Field(..., min_length=1)
    transit: list[TransitEntry] = Field(default_factory=list)
    ground_gate: float | None = Field(
        None,
        gt=0.0,
        allow_inf_nan=False,
        description="Ground-plane distance (homography units) under which two cameras see the "
        "same person at one moment; null = learned from the tracks.",
    )


@dataclass(frozen=True)
class Camera:
    """One camera, resolved: paths absolute, clock origin in unix seconds."""

    name: str
    fps: float
    frame_base: int
    origin: float
    width: int | None = None
    height: int | None = None
    homography: np.ndarray | None = None
    tracks: Path | None = None
    frames: Path | None = None
    crops: Path | None = None
    ground_truth: Path | None = None

    def frame_time(self, frames: np.ndarray) -> np.ndarray:
        """Unix seconds of frame numbers as this camera's files write them."""
        return self.origin + (np.asarray(frames, dtype=np.float64) - self.frame_base) / self.fps

    def to_ground(self, boxes: np.ndarray) -> np.ndarray | None:
        """Ground-plane positions of the feet (bottom centre) of ``x, y, w, h`` boxes; NaN
        (unknown) for feet on or above the homography's horizon.

        A homography maps the whole image plane, but only the part below its horizon (the
        image line it sends to infinity, where the third coordinate is 0) looks at the ground
        in front of the camera. A point above it maps to a finite but mirrored position behind
        the camera, which could tie two people to one place. Feet are on the ground, so they
        lie on the side of the horizon that holds the bottom of any upright image, the side
        where the third coordinate has the sign of its ``y`` term (the image row grows
        downwards). A foot on the other side comes from a wrong homography or a wrong box,
        and its place is left unknown rather than made up. With no ``y`` term the map has no
        horizon across the rows (a camera looking straight down), and nothing is left out.
        """
        if self.homography is None:
            return None
        feet = np.stack(
            [boxes[:, 0] + boxes[:, 2] / 2, boxes[:, 1] + boxes[:, 3], np.ones(len(boxes))], 1
        )
        mapped = feet @ self.homography.T
        with np.errstate(divide="ignore", invalid="ignore"):
            ground = mapped[:, :2] / mapped[:, 2:3]
        front = np.sign(self.homography[2, 1])
        if front:
            ground[mapped[:, 2] * front <= 0] = np.nan
        return ground


@dataclass(frozen=True)
class Site:
    """A site: its cameras (in file order), transit minima and the ground gate, if given."""

    cameras: dict[str, Camera]
    source: str = "site"
    #: (from camera, to camera) -> (min_s, max_s or None)
    transit: dict[tuple[str, str], tuple[float, float | None]] = field(default_factory=dict)
    ground_gate: float | None = None

    @property
    def names(self) -> list[str]:
        return list(self.cameras)

    def camera(self, name: str, where: str) -> Camera:
        """The camera called ``name``; ``where`` (file:line) names the reference in the error."""
        found = self.cameras.get(name)
        if found is None:
            raise SiteError(
                f"{where}: camera {name!r} is not in {self.source} (cameras: "
                f"{', '.join(map(repr, self.cameras))}); add it under cameras: or fix the camera id"
            )
        return found

    def gallery_cameras(self) -> dict[str, int]:
        """The gallery's camera number of each site camera: the name itself when every name
        is a whole number (``"3"`` is camera 3), else the camera's position in the site file
        (the first is 0). A gallery stores cameras as numbers; this is the one mapping."""
        if all(name.isdigit() for name in self.cameras):
            return {name: int(name) for name in self.cameras}
        return {name: number for number, name in enumerate(self.cameras)}

    def min_transit_matrix(self) -> np.ndarray:
        """``[from, to]`` shortest transit seconds over camera indices (0 where none given)."""
        index = {name: i for i, name in enumerate(self.cameras)}
        matrix = np.zeros((len(index), len(index)))
        for (a, b), (low, _) in self.transit.items():
            matrix[index[a], index[b]] = low
        return matrix


def load_site(path: str | Path) -> Site:
    """Read and check ``site.yaml``; relative paths in it are relative to its folder."""
    path = Path(path)
    if not path.is_file():
        raise SiteError(f"site file '{path}' does not exist; set associate.site to a site.yaml")
    data = load_yaml_file(path, what="site file")
    lines = _key_lines(path.read_text(encoding="utf-8-sig"))
    return site_from_dict(data, path.parent, source=str(path), lines=lines)


def site_from_dict(
    data: Any,
    root: str | Path = ".",
    *,
    source: str = "site",
    lines: dict[tuple[str, ...], int] | None = None,
) -> Site:
    """A :class:`Site` from the plain data of a site file (what tests and benchmarks build)."""
    lines = lines or {}
    if not isinstance(data, dict):
        raise SiteError(f"{source}: must hold a mapping with a 'cameras:' section")
    try:
        parsed = SiteFile.model_validate(data)
    except ValidationError as exc:
        error = exc.errors()[0]
        keys = tuple(str(p) for p in error["loc"])
        where = _where(source, lines, keys)
        dotted = ".".join(keys) or "site"
        if error["type"] == "extra_forbidden":
            problem = f"unknown key {dotted!r}; remove it or fix its spelling"
        elif error["type"] == "missing":
            problem = f"{dotted!r} is required"
            if keys[-1] == "frame_base":
                problem += " (0 or 1: the number of the first frame in this camera's files)"
        else:
            message = error["msg"].removeprefix("Value error, ")
            problem = f"{dotted!r}: got {error.get('input')!r}; {message}"
        raise SiteError(f"{where}: {problem}") from None
    root = Path(root)
    cameras = {
        name: _camera(name, entry, root, source, lines) for name, entry in parsed.cameras.items()
    }
    transit: dict[tuple[str, str], tuple[float, float | None]] = {}
    for index, entry in enumerate(parsed.transit):
        where = _where(source, lines, ("transit", str(index)))
        for name in entry.cameras:
            if name not in cameras:
                raise SiteError(
                    f"{where}: transit names camera {name!r}, which is not under cameras: "
                    f"({', '.join(map(repr, cameras))}); fix the name"
                )
        if entry.max_s is not None and entry.max_s < entry.min_s:
            raise SiteError(f"{where}: transit max_s {entry.max_s} is below min_s {entry.min_s}")
        a, b = entry.cameras
        if a == b:
            raise SiteError(f"{where}: transit needs two different cameras, got {a!r} twice")
        pairs = [(a, b), (b, a)] if entry.both_ways else [(a, b)]
        for pair in pairs:
            if pair in transit:
                raise SiteError(
                    f"{where}: a second transit window from camera {pair[0]!r} to {pair[1]!r}; "
                    "give each camera pair one window"
                )
            transit[pair] = (entry.min_s, entry.max_s)
    return Site(cameras, source, transit, parsed.ground_gate)


def _camera(
    name: str, entry: CameraEntry, root: Path, source: str, lines: dict[tuple[str, ...], int]
) -> Camera:
    def where(key: str) -> str:
        return _where(source, lines, ("cameras", name, key))

    try:
        origin = parse_time(entry.clock_origin)
    except ValueError as exc:
        raise SiteError(
            f"{where('clock_origin')}: {exc}; write e.g. 2024-05-01T08:00:00Z"
        ) from None
    paths = {}
    for key in ("tracks", "frames", "crops", "ground_truth"):
        value = getattr(entry, key)
        paths[key] = None if value is None else _resolve(root, value)
    if paths["frames"] is not None and paths["crops"] is not None:
        raise SiteError(f"{where('crops')}: give frames or crops for camera {name!r}, not both")
    for key in ("frames", "crops"):
        if paths[key] is not None and not paths[key].is_dir():
            raise SiteError(f"{where(key)}: {key} folder '{paths[key]}' does not exist")
    for key in ("tracks", "ground_truth"):
        if paths[key] is not None and not paths[key].is_file():
            raise SiteError(f"{where(key)}: {key} file '{paths[key]}' does not exist")
    homography = None
    if entry.homography is not None:
        homography = _homography(entry.homography, root, where("homography"))
    return Camera(
        name, entry.fps, entry.frame_base, origin, entry.width, entry.height, homography, **paths
    )


def _homography(value: str | list[list[float]], root: Path, where: str) -> np.ndarray:
    """A finite, invertible 3x3 matrix from a nested list or a text file of 9 numbers."""
    if isinstance(value, str):
        path = _resolve(root, value)
        try:
            if path.exists() and not path.is_file():
                raise OSError(0, "not a plain file")
            if path.stat().st_size > MAX_HOMOGRAPHY_BYTES:
                raise OSError(
                    0, f"larger than {MAX_HOMOGRAPHY_BYTES} bytes; a homography is 9 numbers"
                )
            numbers = np.array(path.read_text().split(), dtype=np.float64)
        except (OSError, ValueError) as exc:
            problem = exc.strerror if isinstance(exc, OSError) else "it holds a non-number"
            raise SiteError(f"{where}: cannot read homography '{path}' ({problem})") from None
    else:
        numbers = np.array([v for row in value for v in row], dtype=np.float64)
    if numbers.size != 9 or (isinstance(value, list) and any(len(r) != 3 for r in value)):
        raise SiteError(f"{where}: a homography is 3x3 (9 numbers), got {numbers.size}")
    matrix = numbers.reshape(3, 3)
    if not np.all(np.isfinite(matrix)) or not _invertible(matrix):
        raise SiteError(f"{where}: the homography is not an invertible finite 3x3 matrix")
    # defined up to scale: kept with entries of at most 1, so mapping feet cannot overflow
    return matrix / np.abs(matrix).max()


def _invertible(matrix: np.ndarray) -> bool:
    """Whether a homography maps the image plane one to one. A homography is defined up to
    scale, so the test must not depend on it (a determinant threshold refused the same camera
    given in kilometres, and overflowed for huge entries): the condition number of the matrix
    scaled to entries of at most 1, against float64's precision."""
    largest = float(np.abs(matrix).max())
    if largest == 0.0:
        return False
    with np.errstate(all="ignore"):  # a singular matrix's condition number is inf, not a warning
        return bool(np.linalg.cond(matrix / largest) < 1e12)


def _resolve(root: Path, value: str) -> Path:
    path = Path(value).expanduser()
    return path if path.is_absolute() else root / path


def _where(source: str, lines: dict[tuple[str, ...], int], keys: tuple[str, ...]) -> str:
    for depth in range(len(keys), 0, -1):
        line = lines.get(keys[:depth])
        if line is not None:
            return f"{source}:{line}"
    return source


def _key_lines(text: str) -> dict[tuple[str, ...], int]:
    """1-based line of every key path (list items by index) in a YAML document (a key given
    twice in one mapping was refused when the file was loaded: :mod:`reidkit.yamlsafe`)."""
    try:
        root = yaml.compose(text, Loader=yaml.SafeLoader)
    except yaml.YAMLError:
        return {}
    found: dict[tuple[str, ...], int] = {}
    stack: list[tuple[yaml.Node, tuple[str, ...]]] = [(root, ())] if root is not None else []
    while stack:
        node, keys = stack.pop()
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                path = (*keys, str(key.value))
                found[path] = key.start_mark.line + 1
                stack.append((value, path))
        elif isinstance(node, yaml.SequenceNode):
            for index, item in enumerate(node.value):
                path = (*keys, str(index))
                found[path] = item.start_mark.line + 1
                stack.append((item, path))
    return found

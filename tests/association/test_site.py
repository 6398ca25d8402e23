"""The site file: frame numbering is explicit, every mistake is one line naming site.yaml:line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reidkit.association.site import SiteError, load_site
from reidkit.errors import ReidkitError
from tests.association.conftest import EPFL


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "site.yaml"
    path.write_text(text)
    return path


def test_frame_base_has_no_default_and_the_error_names_the_camera_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cameras:\n  c0:\n    fps: 25\n    frame_base: 0\n  c1:\n    fps: 25\n")
    with pytest.raises(
        SiteError, match=r"site.yaml:5: 'cameras.c1.frame_base' is required \(0 or 1"
    ):
        load_site(path)


def test_zero_and_one_based_cameras_put_the_same_moment_at_the_same_time(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "cameras:\n"
        "  a: {fps: 10, frame_base: 0, clock_origin: '2024-05-01T08:00:00Z'}\n"
        "  b: {fps: 10, frame_base: 1, clock_origin: 2024-05-01T08:00:00Z}\n",
    )
    site = load_site(path)
    a, b = site.cameras["a"], site.cameras["b"]
    # frame 0 of a 0-based file and frame 1 of a 1-based file are the first frame of each
    assert a.frame_time(np.array([0, 25]))[0] == b.frame_time(np.array([1]))[0]
    assert a.frame_time(np.array([25]))[0] - a.origin == pytest.approx(2.5)
    assert b.frame_time(np.array([26]))[0] == a.frame_time(np.array([25]))[0]
    assert a.origin == 1714550400.0


def test_unknown_keys_and_bad_values_name_their_line(tmp_path: Path) -> None:
    path = write(tmp_path, "cameras:\n  c0:\n    fps: 25\n    frame_base: 0\n    fsp: 3\n")
    with pytest.raises(SiteError, match=r"site.yaml:5: unknown key 'cameras.c0.fsp'"):
        load_site(path)
    path = write(tmp_path, "cameras:\n  c0:\n    fps: -1\n    frame_base: 0\n")
    with pytest.raises(SiteError, match=r"site.yaml:3: 'cameras.c0.fps': got -1"):
        load_site(path)
    path = write(tmp_path, "cameras:\n  c0:\n    fps: 25\n    frame_base: 2\n")
    with pytest.raises(SiteError, match=r"site.yaml:4: 'cameras.c0.frame_base': got 2"):
        load_site(path)


def test_transit_windows_name_known_cameras_and_hold_both_ways(tmp_path: Path) -> None:
    cameras = "cameras:\n  a: {fps: 5, frame_base: 1}\n  b: {fps: 5, frame_base: 1}\n"
    site = load_site(write(tmp_path, cameras + "transit:\n  - {cameras: [a, b], min_s: 20}\n"))
    assert site.transit == {("a", "b"): (20.0, None), ("b", "a"): (20.0, None)}
    assert site.min_transit_matrix().tolist() == [[0.0, 20.0], [20.0, 0.0]]
    bad = cameras + "transit:\n  - {cameras: [a, x], min_s: 20}\n"
    with pytest.raises(SiteError, match=r"site.yaml:5: transit names camera 'x'"):
        load_site(write(tmp_path, bad))
    # a second window for a pair would silently replace the first: which one did the user mean?
    twice = (
        cameras + "transit:\n  - {cameras: [a, b], min_s: 20}\n  - {cameras: [b, a], min_s: 9}\n"
    )
    with pytest.raises(SiteError, match=r"site.yaml:6: a second transit window from camera 'b'"):
        load_site(write(tmp_path, twice))


def test_a_clock_outside_1970_to_2200_is_a_unit_mistake(tmp_path: Path) -> None:
    path = write(tmp_path, "cameras:\n  a: {fps: 5, frame_base: 1, clock_origin: 1714550400000}\n")
    with pytest.raises(SiteError, match=r"site.yaml:2: time 1714550400000 is outside 1970..2200"):
        load_site(path)


def test_homography_from_a_file_maps_feet_to_the_ground(tmp_path: Path) -> None:
    matrix = np.loadtxt(EPFL / "terrace" / "c0" / "Homography.txt")
    path = write(
        tmp_path,
        f"cameras:\n  c0:\n    fps: 25\n    frame_base: 0\n"
        f"    homography: {EPFL / 'terrace' / 'c0' / 'Homography.txt'}\n",
    )
    camera = load_site(path).cameras["c0"]
    box = np.array([[100.0, 50.0, 40.0, 120.0]])
    feet = matrix @ np.array([120.0, 170.0, 1.0])
    assert camera.to_ground(box)[0] == pytest.approx(feet[:2] / feet[2])
    singular = write(
        tmp_path,
        "cameras:\n  c0:\n    fps: 25\n    frame_base: 0\n"
        "    homography: [[1, 0, 0], [0, 0, 0], [0, 0, 1]]\n",
    )
    with pytest.raises(SiteError, match=r"site.yaml:5: the homography is not an invertible"):
        load_site(singular)


@pytest.mark.parametrize("scale", [1e-6, 1.0, 1e6])
def test_a_homography_is_judged_whatever_its_scale(tmp_path: Path, scale: float) -> None:
    """A homography is defined up to scale: the same camera in other units maps feet to the
    same ground point, and a singular matrix stays refused at any scale."""

    def site_with(matrix: np.ndarray) -> Path:
        homography = json.dumps(matrix.tolist())  # a YAML flow list
        text = f"cameras:\n  c0:\n    fps: 25\n    frame_base: 0\n    homography: {homography}\n"
        return write(tmp_path, text)

    matrix = np.loadtxt(EPFL / "terrace" / "c0" / "Homography.txt") * scale
    feet = matrix @ np.array([120.0, 170.0, 1.0])
    box = np.array([[100.0, 50.0, 40.0, 120.0]])
    camera = load_site(site_with(matrix)).cameras["c0"]
    assert camera.to_ground(box)[0] == pytest.approx(feet[:2] / feet[2])
    singular = np.array([[1.0, 2.0, 3.0], [2.0, 4.0, 6.0], [0.0, 1.0, 1.0]]) * scale
    with pytest.raises(SiteError, match=r"site.yaml:5: the homography is not an invertible"):
        load_site(site_with(singular))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        (
            "cameras:\n  c0: {fps: 25, frame_base: 0}\n  c0: {fps: 5, frame_base: 1}\n",
            r"site.yaml' gives key 'cameras.c0' twice \(again at line 3\); keep one",
        ),
        (
            "cameras:\n  c0:\n    fps: 25\n    frame_base: 0\n    fps: 5\n",
            r"site.yaml' gives key 'cameras.c0.fps' twice \(again at line 5\)",
        ),
    ],
)
def test_a_key_given_twice_is_refused(tmp_path: Path, text: str, expected: str) -> None:
    """YAML keeps the last of two equal keys: a camera pasted twice would replace the first."""
    with pytest.raises(ReidkitError, match=expected):
        load_site(write(tmp_path, text))


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        # pydantic reads true as 1: one frame per second, silently
        (
            "cameras:\n  c0:\n    fps: true\n    frame_base: 0\n",
            r"site.yaml:3: 'cameras.c0.fps': got True; a number, not true/false",
        ),
        (
            "cameras:\n  c0:\n    fps: 25\n    frame_base: true\n",
            r"site.yaml:4: 'cameras.c0.frame_base': got True; a number, not true/false",
        ),
        # a gate of infinity joins everyone seen at one moment
        (
            "cameras:\n  c0: {fps: 25, frame_base: 0}\nground_gate: .inf\n",
            r"site.yaml:3: 'ground_gate': got inf; Input should be a finite number",
        ),
    ],
)
def test_silently_misread_values_are_refused_at_their_line(
    tmp_path: Path, text: str, expected: str
) -> None:
    with pytest.raises(SiteError, match=expected):
        load_site(write(tmp_path, text))


def test_a_homography_file_that_is_no_small_plain_file_is_refused(tmp_path: Path) -> None:
    """A link to /dev/zero read whole never ends (the run was killed for memory); a folder or a
    large file is no homography either."""
    text = "cameras:\n  c0:\n    fps: 25\n    frame_base: 0\n    homography: H.txt\n"
    (tmp_path / "H.txt").symlink_to("/dev/zero")
    with pytest.raises(SiteError, match=r"site.yaml:5: cannot read homography .*not a plain file"):
        load_site(write(tmp_path, text))
    (tmp_path / "H.txt").unlink()
    (tmp_path / "H.txt").write_text("1 0 0 0 1 0 0 0 1\n" + "#" * 100_000)
    with pytest.raises(SiteError, match=r"site.yaml:5: cannot read homography .*larger than"):
        load_site(write(tmp_path, text))


@pytest.mark.parametrize("sign", [1.0, -1.0])
def test_feet_above_the_homographys_horizon_have_no_ground_place(
    tmp_path: Path, sign: float
) -> None:
    """EPFL laboratory c2's horizon crosses the image near row 38: a foot above it maps to a
    finite point mirrored behind the camera, which must not count as a place (it could tie
    two people together); feet below it map as before. A homography is defined up to scale,
    sign included, so the negated matrix (the same map) leaves out the same feet."""
    matrix = np.loadtxt(EPFL / "laboratory" / "c2" / "Homography.txt") * sign
    homography = json.dumps(matrix.tolist())
    text = f"cameras:\n  c0:\n    fps: 25\n    frame_base: 0\n    homography: {homography}\n"
    camera = load_site(write(tmp_path, text)).cameras["c0"]
    boxes = np.array([[80.0, 0.0, 40.0, 20.0], [80.0, 80.0, 40.0, 120.0]])  # feet y 20, 200
    behind = matrix @ np.array([100.0, 20.0, 1.0])
    assert np.isfinite(behind[:2] / behind[2]).all()  # the mirrored point the map gives
    ground = camera.to_ground(boxes)
    assert np.isnan(ground[0]).all()
    feet = matrix @ np.array([100.0, 200.0, 1.0])
    assert ground[1] == pytest.approx(feet[:2] / feet[2])
    # a camera looking straight down has no horizon across its rows: every foot is kept
    text = "cameras:\n  c0:\n    fps: 25\n    frame_base: 0\n    homography: [[0.01, 0, 0], "
    text += "[0, 0.01, 0], [0, 0, -1]]\n"
    overhead = load_site(write(tmp_path, text)).cameras["c0"]
    assert overhead.to_ground(boxes).tolist() == [[-1.0, -0.2], [-1.0, -2.0]]


def test_a_homography_of_huge_entries_maps_feet_without_overflow(tmp_path: Path) -> None:
    """Defined up to scale, a homography of entries near float64's limit is the identity; the
    feet it maps must stay finite (it overflowed, with a warning on stderr, and lost the ground
    positions of every box)."""
    text = "cameras:\n  c0:\n    fps: 25\n    frame_base: 0\n    homography: [[1e308, 0, 0], "
    text += "[0, 1e308, 0], [0, 0, 1e308]]\n"
    camera = load_site(write(tmp_path, text)).cameras["c0"]
    with np.errstate(all="raise"):
        ground = camera.to_ground(np.array([[100.0, 50.0, 40.0, 120.0]]))
    assert ground.tolist() == [[120.0, 170.0]]

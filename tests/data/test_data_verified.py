"""The record of clean decodes: unchanged files skipped, changed ones and bad ones decoded again."""

from __future__ import annotations

import os
import re
from pathlib import Path

import pytest

from reidkit.data import dataset, verified
from reidkit.data.dataset import verify_images
from reidkit.data.market import ImageRecord
from reidkit.data.verified import VerifiedImages, cache_dir
from reidkit.errors import DatasetError


@pytest.fixture
def trusting(monkeypatch: pytest.MonkeyPatch) -> None:
    """Record files written moments ago (the racy-timestamp guard is tested on its own)."""
    monkeypatch.setattr(verified, "RACY_SECONDS", -60.0)


@pytest.fixture
def decodes(monkeypatch: pytest.MonkeyPatch) -> list[Path]:
    """Every path the integrity check decodes, in order."""
    seen: list[Path] = []
    real = dataset.decode_rgb

    def counting(path: Path, label: str, **options):
        seen.append(path)
        return real(path, label, **options)

    monkeypatch.setattr(dataset, "decode_rgb", counting)
    return seen


@pytest.fixture
def images(tmp_path: Path, write_image) -> list[Path]:
    return [write_image(tmp_path / "data" / f"0001_c1s1_{i:06d}_00.jpg") for i in range(12)]


def _records(paths: list[Path]) -> list[ImageRecord]:
    return [ImageRecord(p, 1, 1) for p in paths]


def test_unchanged_clean_files_are_decoded_once(
    tmp_path: Path, images: list[Path], trusting: None, decodes: list[Path]
) -> None:
    cache = VerifiedImages(tmp_path / "cache" / "checks.sqlite")
    verify_images(_records(images), cache=cache)
    assert sorted(decodes) == sorted(images)
    decodes.clear()
    verify_images(_records(images), cache=VerifiedImages(cache.db_file))
    assert decodes == []


@pytest.mark.parametrize("change", ["truncate", "same_size_rewrite", "replace"])
def test_a_changed_file_is_decoded_again(
    tmp_path: Path, images: list[Path], trusting: None, change: str
) -> None:
    cache = VerifiedImages(tmp_path / "checks.sqlite")
    verify_images(_records(images), cache=cache)
    broken = images[3]
    data = broken.read_bytes()
    if change == "truncate":
        broken.write_bytes(data[: len(data) // 2])
    elif change == "same_size_rewrite":
        # Same size, and the same modification time put back: the change time still moves.
        stat = broken.stat()
        broken.write_bytes(b"\0" * len(data))
        os.utime(broken, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    else:
        fresh = broken.with_suffix(".new")
        fresh.write_text("<html>404</html>")
        fresh.replace(broken)
    with pytest.raises(DatasetError, match=f"^1 images cannot be read: '{re.escape(str(broken))}'"):
        verify_images(_records(images), cache=VerifiedImages(cache.db_file))


def test_a_bad_file_is_never_recorded(tmp_path: Path, images: list[Path], trusting: None) -> None:
    images[0].write_bytes(b"not an image")
    cache = VerifiedImages(tmp_path / "checks.sqlite")
    for _ in range(2):
        with pytest.raises(DatasetError, match=r"^1 images cannot be read"):
            verify_images(_records(images), cache=VerifiedImages(cache.db_file))
    assert cache.unverified(images) == [images[0]]


def test_files_modified_just_now_are_not_recorded(tmp_path: Path, images: list[Path]) -> None:
    """A same-size rewrite within the timestamps' granularity would keep its stamp."""
    cache = VerifiedImages(tmp_path / "checks.sqlite")
    verify_images(_records(images), cache=cache)
    assert cache.unverified(images) == images


@pytest.mark.parametrize("kind", ["garbage_file", "folder_is_a_file"])
def test_an_unusable_cache_only_costs_time(
    tmp_path: Path, images: list[Path], trusting: None, decodes: list[Path], kind: str
) -> None:
    if kind == "garbage_file":
        db_file = tmp_path / "checks.sqlite"
        db_file.write_bytes(b"this is not a database" * 100)
    else:
        (tmp_path / "blocker").write_text("a file where the cache folder should be")
        db_file = tmp_path / "blocker" / "checks.sqlite"
    verify_images(_records(images), cache=VerifiedImages(db_file))
    verify_images(_records(images), cache=VerifiedImages(db_file))
    assert len(decodes) == 2 * len(images)
    images[5].write_bytes(b"")
    with pytest.raises(DatasetError, match="is empty"):
        verify_images(_records(images), cache=VerifiedImages(db_file))


def test_cache_folder_follows_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("REIDKIT_CACHE_DIR", str(tmp_path / "mine"))
    assert cache_dir() == tmp_path / "mine"
    monkeypatch.delenv("REIDKIT_CACHE_DIR")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    assert cache_dir() == tmp_path / "xdg" / "reidkit"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert cache_dir() == tmp_path / "home" / ".cache" / "reidkit"


def test_file_names_that_are_not_utf8_are_recorded(
    tmp_path: Path, write_image, trusting: None, decodes: list[Path]
) -> None:
    """SQLite text must be UTF-8; a Latin-1 byte in a name once broke inference elsewhere."""
    folder = tmp_path / "data"
    odd = Path(os.fsdecode(os.fsencode(folder) + b"/0001_c1s1_000001_00_caf\xe9.jpg"))
    images = [write_image(odd), write_image(folder / "0001_c1s1_000002_00.jpg")]
    cache = VerifiedImages(tmp_path / "checks.sqlite")
    verify_images(_records(images), cache=cache)
    decodes.clear()
    verify_images(_records(images), cache=VerifiedImages(cache.db_file))
    assert decodes == []


@pytest.mark.parametrize("kind", ["missing", "dangling_link"])
def test_a_file_that_is_gone_is_refused_by_name_not_taken_as_checked(
    tmp_path: Path, images: list[Path], kind: str
) -> None:
    """A file with no stamp (a manifest row naming a file that is gone, a link whose target
    moved) once matched "no record" and was skipped as checked; it reached the loader."""
    gone = tmp_path / "data" / "0001_c1s1_999999_00.jpg"
    if kind == "dangling_link":
        gone.symlink_to(tmp_path / "moved" / "crop.jpg")
    with pytest.raises(DatasetError, match=f"^1 images cannot be read: '{re.escape(str(gone))}'"):
        verify_images(_records([*images, gone]), cache=VerifiedImages(tmp_path / "c.sqlite"))

"""Dataset sources: folders pass through, archives unpack safely, once, atomically."""

from __future__ import annotations

import io
import os
import shutil
import stat
import tarfile
import zipfile
from pathlib import Path

import pytest

from reidkit.data.market import load_split
from reidkit.data.sources import resolve_dataset
from reidkit.errors import DatasetError

NAMES = ["0001_c1s1_000001_00.jpg", "0001_c2s1_000002_00.jpg", "0002_c1s1_000003_00.png"]


@pytest.fixture
def split_folder(tmp_path: Path, write_image) -> Path:
    folder = tmp_path / "src" / "sample_train"
    for name in NAMES:
        write_image(folder / name)
    return folder


def _tar(path: Path, members: list[tuple[tarfile.TarInfo, bytes | None]]) -> Path:
    mode = "w:gz" if path.name.endswith(("gz", "tgz")) else "w"
    with tarfile.open(path, mode) as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return path


def _entry(name: str, kind: bytes = tarfile.REGTYPE, link: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = link
    return info


def _listing(root: Path) -> list[str]:
    return sorted(p.name for p in root.iterdir()) if root.exists() else []


@pytest.mark.parametrize("suffix", [".tar.gz", ".tgz", ".tar", ".zip"])
def test_archive_of_a_split_is_unpacked_and_cached(
    tmp_path: Path, split_folder: Path, suffix: str
) -> None:
    archive = tmp_path / f"sample_train{suffix}"
    if suffix == ".zip":
        with zipfile.ZipFile(archive, "w") as zipped:
            for name in NAMES:
                zipped.write(split_folder / name, f"sample_train/{name}")
    else:
        with tarfile.open(archive, "w:gz" if "gz" in suffix else "w") as tar:
            tar.add(split_folder, arcname="sample_train")
    root = tmp_path / "extract"

    folder = resolve_dataset(archive, root)

    assert folder.name == "sample_train" and folder.parent.parent == root
    assert folder.parent.name.startswith("sample_train-")
    assert [r.path.name for r in load_split(folder, "train", keep_distractors=False)] == NAMES
    for name in NAMES:
        assert (folder / name).read_bytes() == (split_folder / name).read_bytes()
    marker = folder / "marker.txt"
    marker.write_text("kept")
    assert resolve_dataset(str(archive), root) == folder  # cached: not unpacked again
    assert marker.read_text() == "kept"
    assert _listing(root) == [folder.parent.name]  # no staging folders left behind


def test_archive_without_top_folder_and_nested_folders(tmp_path: Path, split_folder: Path) -> None:
    flat = tmp_path / "flat.tar"
    with tarfile.open(flat, "w") as tar:
        for name in NAMES:
            tar.add(split_folder / name, arcname=name)
    nested = tmp_path / "nested.tar.gz"
    with tarfile.open(nested, "w:gz") as tar:
        tar.add(split_folder, arcname="market/images/train")
    assert sorted(p.name for p in resolve_dataset(flat, tmp_path / "x").iterdir()) == NAMES
    assert resolve_dataset(nested, tmp_path / "x").relative_to(tmp_path / "x").parts[1:] == (
        "market",
        "images",
        "train",
    )


def test_replaced_archive_is_unpacked_again(tmp_path: Path, split_folder: Path) -> None:
    archive = tmp_path / "train.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(split_folder / NAMES[0], arcname=NAMES[0])
    first = resolve_dataset(archive, tmp_path / "x")
    with tarfile.open(archive, "w") as tar:
        for name in NAMES:
            tar.add(split_folder / name, arcname=name)
    os.utime(archive, ns=(1, 1))
    second = resolve_dataset(archive, tmp_path / "x")
    assert first != second and len(list(second.iterdir())) == len(NAMES)


def test_folder_is_returned_as_is(split_folder: Path, tmp_path: Path) -> None:
    assert resolve_dataset(str(split_folder), tmp_path / "x") == split_folder
    assert not (tmp_path / "x").exists()


def test_missing_path(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"dataset path '.*missing\.tar\.gz' does not exist"):
        resolve_dataset(tmp_path / "missing.tar.gz", tmp_path / "x")


def test_unsupported_suffix_lists_accepted_ones(tmp_path: Path) -> None:
    archive = tmp_path / "train.rar"
    archive.write_bytes(b"Rar!")
    with pytest.raises(DatasetError, match=r"\(\.tar\.gz, \.tgz, \.tar, \.zip\)"):
        resolve_dataset(archive, tmp_path / "x")


def test_damaged_archive(tmp_path: Path, split_folder: Path) -> None:
    archive = tmp_path / "train.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(split_folder, arcname="train")
    archive.write_bytes(archive.read_bytes()[:200])
    with pytest.raises(DatasetError, match=r"train\.tar\.gz' cannot be read as a tar archive"):
        resolve_dataset(archive, tmp_path / "x")
    assert _listing(tmp_path / "x") == []
    not_zip = tmp_path / "train.zip"
    not_zip.write_bytes(b"PK but not really a zip file")
    with pytest.raises(DatasetError, match="cannot be read as a zip archive"):
        resolve_dataset(not_zip, tmp_path / "x")


HOSTILE_TARS = {
    "absolute": ([(_entry("/tmp/evil.jpg"), b"x")], "/tmp/evil.jpg", "absolute path"),
    "dotdot": ([(_entry("train/../../evil.jpg"), b"x")], "train/../../evil.jpg", "'..'"),
    "symlink": (
        [(_entry("train/link.jpg", tarfile.SYMTYPE, "/etc/passwd"), None)],
        "train/link.jpg",
        "a link",
    ),
    "hardlink": (
        [(_entry("train/a.jpg"), b"x"), (_entry("train/b.jpg", tarfile.LNKTYPE, "../../x"), None)],
        "train/b.jpg",
        "a link",
    ),
    "device": ([(_entry("train/dev", tarfile.CHRTYPE), None)], "train/dev", "a device"),
    "fifo": ([(_entry("train/pipe", tarfile.FIFOTYPE), None)], "train/pipe", "a device, fifo"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_TARS))
def test_hostile_tar_is_refused(tmp_path: Path, case: str) -> None:
    members, offender, reason = HOSTILE_TARS[case]
    archive = _tar(tmp_path / "evil.tar.gz", [(_entry("train/ok.jpg"), b"ok"), *members])
    root = tmp_path / "x"
    with pytest.raises(DatasetError) as info:
        resolve_dataset(archive, root)
    message = str(info.value)
    assert f"'{archive}'" in message and f"'{offender}'" in message and reason in message
    assert _listing(root) == []  # nothing half-unpacked, no staging folder
    assert not (tmp_path / "evil.jpg").exists()


def _zip(path: Path, members: list[tuple[zipfile.ZipInfo | str, bytes]]) -> Path:
    with zipfile.ZipFile(path, "w") as zipped:
        for info, data in members:
            zipped.writestr(info, data)
    return path


def _zip_typed(name: str, kind: int) -> zipfile.ZipInfo:
    """A zip entry whose Unix mode says it is a link, a device, ... (as `zip -y` writes)."""
    info = zipfile.ZipInfo(name)
    info.external_attr = (kind | 0o777) << 16
    return info


@pytest.mark.parametrize(
    ("member", "reason"),
    [
        ("/abs/evil.jpg", "absolute path"),
        ("train/../../evil.jpg", "'..'"),
        ("train\\..\\..\\evil.jpg", "'..'"),
        ("C:/evil.jpg", "absolute path"),
        (_zip_typed("train/link.jpg", stat.S_IFLNK), "a link"),
        (_zip_typed("train/dev", stat.S_IFCHR), "a device"),
    ],
)
def test_hostile_zip_is_refused(tmp_path: Path, member: zipfile.ZipInfo | str, reason: str) -> None:
    payload = b"../../../etc/passwd"
    archive = _zip(tmp_path / "evil.zip", [("train/ok.jpg", b"ok"), (member, payload)])
    name = member.filename if isinstance(member, zipfile.ZipInfo) else member
    with pytest.raises(DatasetError) as info:
        resolve_dataset(archive, tmp_path / "x")
    assert f"'{name}'" in str(info.value) and reason in str(info.value)
    assert _listing(tmp_path / "x") == []


@pytest.mark.parametrize("suffix", [".tar.gz", ".zip"])
def test_too_large_archive_is_refused(tmp_path: Path, suffix: str) -> None:
    members = [(f"train/{i:04d}_c1s1_000001_00.jpg", b"\0" * 600) for i in range(4)]
    if suffix == ".zip":
        archive = _zip(tmp_path / f"big{suffix}", list(members))
    else:
        archive = _tar(tmp_path / f"big{suffix}", [(_entry(n), d) for n, d in members])
    resolve_dataset(archive, tmp_path / "ok", max_total_bytes=2400)
    with pytest.raises(DatasetError) as info:
        resolve_dataset(archive, tmp_path / "x", max_total_bytes=2000)
    assert "more than 2000 bytes" in str(info.value)
    assert "'train/0003_c1s1_000001_00.jpg'" in str(info.value)
    assert _listing(tmp_path / "x") == []


def test_zip_that_understates_a_member_size_is_refused(tmp_path: Path) -> None:
    """A zip bomb declares a small size to pass the size check; it must still fail cleanly."""
    archive = _zip(tmp_path / "bomb.zip", [("train/a.jpg", b"\0" * 5000)])
    data = bytearray(archive.read_bytes())
    central = data.rfind(b"PK\x01\x02")
    data[central + 24 : central + 28] = (10).to_bytes(4, "little")  # declared size: 10 bytes
    archive.write_bytes(bytes(data))
    with pytest.raises(DatasetError, match=r"bomb\.zip' cannot be read as a zip archive"):
        resolve_dataset(archive, tmp_path / "x", max_total_bytes=1000)
    assert _listing(tmp_path / "x") == []


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
def test_too_many_members_is_refused(tmp_path: Path, suffix: str) -> None:
    members = [(f"train/{i:04d}_c1s1_000001_00.jpg", b"x") for i in range(6)]
    if suffix == ".zip":
        archive = _zip(tmp_path / f"many{suffix}", list(members))
    else:
        archive = _tar(tmp_path / f"many{suffix}", [(_entry(n), d) for n, d in members])
    with pytest.raises(DatasetError) as info:
        resolve_dataset(archive, tmp_path / "x", max_members=5)
    assert "more than 5 members" in str(info.value)
    assert "'train/0005_c1s1_000001_00.jpg'" in str(info.value)
    assert _listing(tmp_path / "x") == []


def test_interrupted_extraction_is_not_mistaken_for_a_complete_one(
    tmp_path: Path, split_folder: Path
) -> None:
    archive = tmp_path / "sample_train.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(split_folder, arcname="sample_train")
    root = tmp_path / "x"
    folder = resolve_dataset(archive, root)
    # Simulate a run killed mid-extraction: its staging folder holds a partial copy.
    key_folder = folder.parent
    shutil.rmtree(key_folder)
    partial = root / f".{key_folder.name}.partial-killed"
    (partial / "sample_train").mkdir(parents=True)
    (partial / "sample_train" / NAMES[0]).write_bytes(b"half")

    again = resolve_dataset(archive, root)

    assert again == folder
    assert sorted(p.name for p in again.iterdir()) == NAMES

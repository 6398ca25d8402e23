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
from reidkit.data.sources import ExtractLimits, resolve_dataset
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
    resolve_dataset(archive, tmp_path / "ok", ExtractLimits(max_bytes=2400))
    with pytest.raises(DatasetError) as info:
        resolve_dataset(archive, tmp_path / "x", ExtractLimits(max_bytes=2000))
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
        resolve_dataset(archive, tmp_path / "x", ExtractLimits(max_bytes=1000))
    assert _listing(tmp_path / "x") == []


@pytest.mark.parametrize("suffix", [".tar", ".zip"])
def test_too_many_members_is_refused(tmp_path: Path, suffix: str) -> None:
    members = [(f"train/{i:04d}_c1s1_000001_00.jpg", b"x") for i in range(6)]
    if suffix == ".zip":
        archive = _zip(tmp_path / f"many{suffix}", list(members))
    else:
        archive = _tar(tmp_path / f"many{suffix}", [(_entry(n), d) for n, d in members])
    with pytest.raises(DatasetError) as info:
        resolve_dataset(archive, tmp_path / "x", ExtractLimits(max_members=5))
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


# --- Bombs and odd members: refused from the member list, before anything is written ---------


def _zeros_zip(path: Path, megabytes: int) -> Path:
    """A real zip bomb: one image member of zeros, ~1000 times smaller on disk than unpacked."""
    with (
        zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as zipped,
        zipped.open("train/0001_c1s1_000001_00.jpg", "w") as member,
    ):
        for _ in range(megabytes):
            member.write(b"\0" * 2**20)
    return path


def test_zip_bomb_is_refused_by_its_ratio_with_default_limits(tmp_path: Path) -> None:
    archive = _zeros_zip(tmp_path / "bomb.zip", 128)
    assert archive.stat().st_size < 2**20
    with pytest.raises(DatasetError) as info:
        resolve_dataset(archive, tmp_path / "x")
    assert "expands more than 20 times its size" in str(info.value)
    assert "'train/0001_c1s1_000001_00.jpg'" in str(info.value)
    assert not (tmp_path / "x").exists()  # refused before even the extract folder was made


def test_tar_gz_member_count_bomb_is_refused_before_writing(tmp_path: Path) -> None:
    """Many tiny members (the 1.8 MB tar.gz that made 200,000 files) trip the ratio check."""
    archive = tmp_path / "many.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        for i in range(20_000):
            info = _entry(f"train/{i:06d}_c1s1_000001_00.jpg")
            info.size = 1
            tar.addfile(info, io.BytesIO(b"x"))
    with pytest.raises(DatasetError, match=r"expands more than 20 times its size") as info:
        resolve_dataset(archive, tmp_path / "x", ExtractLimits(ratio_floor=2**20))
    assert "many.tar.gz" in str(info.value)
    assert not (tmp_path / "x").exists()


def test_absolute_cap_counts_declared_sizes_and_refusal_leaves_no_cache(tmp_path: Path) -> None:
    members = [(f"train/{i:04d}_c1s1_000001_00.jpg", b"\1" * 1000) for i in range(3)]
    archive = _tar(tmp_path / "cap.tar.gz", [(_entry(n), d) for n, d in members])
    root = tmp_path / "x"
    with pytest.raises(DatasetError, match=r"more than 2500 bytes.*dataset\.max_extract_bytes"):
        resolve_dataset(archive, root, ExtractLimits(max_bytes=2500))
    assert not root.exists()
    folder = resolve_dataset(archive, root, ExtractLimits(max_bytes=3000))  # cap raised: unpacks
    assert len(list(folder.iterdir())) == 3


def test_too_deep_and_too_long_names_are_refused(tmp_path: Path) -> None:
    deep = "/".join(["d"] * 40) + "/0001_c1s1_000001_00.jpg"
    archive = _tar(tmp_path / "deep.tar", [(_entry(deep), b"x")])
    with pytest.raises(DatasetError, match="nested more than 32 folders deep"):
        resolve_dataset(archive, tmp_path / "x")
    archive = _zip(tmp_path / "long.zip", [("train/" + "a" * 300 + ".jpg", b"x")])
    with pytest.raises(DatasetError, match="not a valid file name"):
        resolve_dataset(archive, tmp_path / "x")
    assert _listing(tmp_path / "x") == []


ODD_TARS = {
    "dot-file": ([(_entry("."), b"x")], "a file named '.'"),
    "file-then-folder": (
        [(_entry("train/a.jpg"), b"x"), (_entry("train/a.jpg/b.jpg"), b"y")],
        "a file and a folder of the same name",
    ),
    "folder-then-file": (
        [(_entry("train/a.jpg", tarfile.DIRTYPE), None), (_entry("train/a.jpg"), b"x")],
        "a file and a folder of the same name",
    ),
    "twice": ([(_entry("train/a.jpg"), b"x"), (_entry("train/a.jpg"), b"y")], "this file twice"),
}


@pytest.mark.parametrize("case", sorted(ODD_TARS))
def test_odd_members_are_refused_in_one_line(tmp_path: Path, case: str) -> None:
    members, reason = ODD_TARS[case]
    archive = _tar(tmp_path / "odd.tar.gz", members)
    with pytest.raises(DatasetError, match=reason) as info:
        resolve_dataset(archive, tmp_path / "x")
    assert "\n" not in str(info.value)
    assert not (tmp_path / "x").exists()


def test_dot_folder_members_and_non_images(tmp_path: Path, split_folder: Path) -> None:
    """`tar -C dir -czf a.tgz .` names members './...'; only images are written."""
    archive = tmp_path / "dot.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        tar.add(split_folder, arcname=".")
        tar.addfile(_entry("./README.txt"), io.BytesIO(b""))
    folder = resolve_dataset(archive, tmp_path / "x")
    assert _listing(folder) == NAMES


def test_archive_larger_than_free_space_is_refused_before_writing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive = _tar(tmp_path / "a.tar", [(_entry("train/0001_c1s1_000001_00.jpg"), b"x" * 5000)])
    real = shutil.disk_usage
    monkeypatch.setattr(shutil, "disk_usage", lambda p: real(p)._replace(free=4000))
    with pytest.raises(DatasetError, match=r"5000 bytes of images but .* 4000 bytes free"):
        resolve_dataset(archive, tmp_path / "x")
    assert _listing(tmp_path / "x") == []


def test_unwritable_extract_folder_is_one_line(tmp_path: Path, split_folder: Path) -> None:
    archive = tmp_path / "a.tar"
    with tarfile.open(archive, "w") as tar:
        tar.add(split_folder, arcname="train")
    not_a_folder = tmp_path / "file"
    not_a_folder.write_text("x")
    message = r"cannot unpack archive .* into '.*file/x' \(Not a directory\)"
    with pytest.raises(DatasetError, match=message):
        resolve_dataset(archive, not_a_folder / "x")

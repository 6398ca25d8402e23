"""Hostile files that were accepted silently or ended in a traceback: truncated archives (a query
set evaluated on part of its queries without a word), non-UTF-8 manifests, checkpoints that
carry code, and checkpoints that are cut short, empty, a device or a FIFO."""

from __future__ import annotations

import io
import os
import pickle
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from reidkit.cli import main
from reidkit.data.market import load_split
from reidkit.data.sources import resolve_dataset
from reidkit.errors import CheckpointError, DatasetError
from reidkit.gallery.ingest import read_manifest
from reidkit.gallery.store import GalleryError
from reidkit.models.checkpoint_file import read_checkpoint_object
from tests.conftest import RunMain, assert_one_line_error, empty_spec, run_cli
from tests.export.conftest import make_checkpoint

NAMES = [f"query/{pid:04d}_c1s1_{pid:06d}_00.jpg" for pid in range(1, 6)]


def _jpeg(seed: int) -> bytes:
    pixels = np.random.default_rng(seed).integers(0, 256, (64, 32, 3), dtype=np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="JPEG")
    return buffer.getvalue()


def _query_tar(path: Path) -> tuple[bytes, list[tarfile.TarInfo]]:
    """A query archive of five crops, its bytes, and its members as written."""
    with tarfile.open(path, "w:gz" if path.name.endswith(".gz") else "w") as tar:
        for seed, name in enumerate(NAMES):
            data = _jpeg(seed)
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    with tarfile.open(path) as tar:
        members = tar.getmembers()
    return path.read_bytes(), members


def _cuts(members: list[tarfile.TarInfo]) -> dict[str, tuple[int, str]]:
    """Where to cut a plain tar, and the member the refusal must name."""
    third, fourth = members[2], members[3]
    return {
        "inside a member's data": (third.offset_data + 100, NAMES[2]),
        "between two members": (fourth.offset, NAMES[2]),
        "inside a header": (fourth.offset + 200, NAMES[2]),
        "before the end marker": (members[-1].offset_data + 1024, NAMES[-1]),
    }


CUTS = ["inside a member's data", "between two members", "inside a header", "before the end marker"]


@pytest.mark.parametrize("where", CUTS)
def test_truncated_tar_is_refused_by_member(tmp_path: Path, where: str) -> None:
    data, members = _query_tar(tmp_path / "query.tar")
    cut, named = _cuts(members)[where]
    archive = tmp_path / "cut" / "query.tar"
    archive.parent.mkdir()
    archive.write_bytes(data[:cut])
    with pytest.raises(DatasetError) as refused:
        resolve_dataset(archive, tmp_path / "x")
    assert str(refused.value) == (
        f"archive '{archive}' is truncated or damaged: it stops without tar's end-of-archive "
        "marker, so this member or the ones after it are missing or cut short (refused at "
        f"'{named}'); re-download or rebuild it"
    )
    assert not (tmp_path / "x").exists() or not any((tmp_path / "x").iterdir())


def test_truncated_query_archive_stops_evaluation(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The defect as a user met it: evaluation ran on 3 of the 5 queries of a cut archive."""
    model = make_checkpoint(tmp_path / "model", "model.backbone=resnet_18")
    data, members = _query_tar(tmp_path / "query.tar")
    archive = tmp_path / "cut" / "query.tar"
    archive.parent.mkdir()
    archive.write_bytes(data[: members[3].offset])  # the last two queries are gone
    gallery = tmp_path / "gallery"
    gallery.mkdir()
    for pid in range(1, 6):
        (gallery / f"{pid:04d}_c2s1_{pid:06d}_00.jpg").write_bytes(_jpeg(10 + pid))
    code = main(
        [
            "evaluate", "-e", str(empty_spec(tmp_path)), f"results_dir={tmp_path / 'results'}",
            f"dataset.query_dataset_dir={archive}", f"dataset.test_dataset_dir={gallery}",
            f"evaluate.checkpoint={model.export.checkpoint}", "model.backbone=resnet_18",
            "model.input_height=64", "model.input_width=32", "model.feat_dim=64",
        ]
    )  # fmt: skip
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err[-1] == (
        f"reidkit evaluate: error: archive '{archive}' is truncated or damaged: it stops "
        "without tar's end-of-archive marker, so this member or the ones after it are missing "
        f"or cut short (refused at '{NAMES[2]}'); re-download or rebuild it"
    )


def test_complete_tar_still_unpacks_every_member(tmp_path: Path) -> None:
    _query_tar(tmp_path / "query.tar")
    folder = resolve_dataset(tmp_path / "query.tar", tmp_path / "x")
    assert len(load_split(folder, "query", keep_distractors=False)) == len(NAMES)


def test_tar_with_a_damaged_header_is_refused(tmp_path: Path) -> None:
    data, members = _query_tar(tmp_path / "query.tar")
    damaged = bytearray(data)
    damaged[members[3].offset : members[3].offset + 100] = b"\xff" * 100
    archive = tmp_path / "damaged.tar"
    archive.write_bytes(bytes(damaged))
    with pytest.raises(DatasetError, match=rf"is truncated or damaged.*refused at '{NAMES[2]}'"):
        resolve_dataset(archive, tmp_path / "x")


def test_zip_member_with_damaged_data_is_refused_by_name(tmp_path: Path) -> None:
    archive = tmp_path / "query.zip"
    with zipfile.ZipFile(archive, "w", zipfile.ZIP_DEFLATED) as zipped:
        for seed, name in enumerate(NAMES):
            zipped.writestr(name, _jpeg(seed))
    with zipfile.ZipFile(archive) as zipped:
        third = zipped.getinfo(NAMES[2])
    data = bytearray(archive.read_bytes())
    start = third.header_offset + 30 + len(NAMES[2]) + 20  # inside its compressed data
    data[start : start + 40] = bytes(40)
    archive.write_bytes(bytes(data))
    with pytest.raises(DatasetError) as refused:
        resolve_dataset(archive, tmp_path / "x")
    message = str(refused.value)
    assert message.startswith(
        f"archive '{archive}' cannot be read as a zip archive at member '{NAMES[2]}' ("
    )
    assert message.endswith("; re-download or rebuild it") and "\n" not in message


def test_non_utf8_manifest_names_its_line(tmp_path: Path) -> None:
    manifest = tmp_path / "site.csv"
    manifest.write_bytes(
        b"path,camera,timestamp,track_id\n"
        b"a.jpg,1,1767225600,t1\n"
        b"caf\xe9.jpg,1,1767225601,t2\n"  # Latin-1, as a Windows export writes it
    )
    with pytest.raises(GalleryError) as refused:
        read_manifest(manifest)
    assert str(refused.value) == (
        f"{manifest}:3: not UTF-8 text (byte 0xe9); save the manifest as UTF-8"
    )


def test_non_utf8_manifest_is_one_line_in_gallery_add(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    manifest = tmp_path / "site.csv"
    manifest.write_bytes(b"\xff\xfep\x00a\x00t\x00h\x00")  # UTF-16, as Excel may save it
    code = main(
        [
            "gallery", "add", "-e", str(empty_spec(tmp_path)),
            f"results_dir={tmp_path / 'results'}", f"gallery.manifest={manifest}",
        ]
    )  # fmt: skip
    assert code == 2
    assert capsys.readouterr().err.strip().splitlines()[-1] == (
        f"reidkit gallery: error: {manifest}:1: not UTF-8 text (byte 0xff); save the manifest "
        "as UTF-8"
    )


def test_manifest_with_a_byte_order_mark_reads(tmp_path: Path) -> None:
    manifest = tmp_path / "site.csv"
    manifest.write_bytes(b"\xef\xbb\xbfpath,camera,timestamp,track_id\na.jpg,1,0,t\n")
    assert [m.track_id for m in read_manifest(manifest)] == ["t"]


class _RunsCode:
    """Unpickled, it would run a shell command: what a booby-trapped ``.pth`` carries."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[str]]:
        return os.system, (f"touch {self.marker}",)


def test_a_checkpoint_that_carries_code_is_refused_unrun(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    marker = tmp_path / "ran"
    trapped = tmp_path / "trapped.pth"
    trapped.write_bytes(pickle.dumps({"state_dict": _RunsCode(marker)}))
    code = main(["evaluate", "-e", str(empty_spec(tmp_path)), f"evaluate.checkpoint={trapped}"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1, err
    assert "trapped.pth' cannot be read" in err[0] and "holds Python objects" in err[0]
    assert "weights_only" not in err[0]  # torch's own advice would be to load it unsafely
    assert not marker.exists()


#: What every refusal of a damaged checkpoint file tells the user to do.
REPLACE = "copy it again, or point at a checkpoint that reidkit train wrote (or its run folder)"


@pytest.fixture(scope="module")
def checkpoint_bytes(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """The bytes of a real checkpoint, saved as ``reidkit train`` saves them."""
    spec = make_checkpoint(tmp_path_factory.mktemp("real"), "model.backbone=resnet_18")
    return Path(spec.export.checkpoint).read_bytes()


@pytest.mark.parametrize("kept", [0, 100, -100])
def test_an_empty_or_truncated_checkpoint_says_so_and_what_to_do(
    tmp_path: Path, checkpoint_bytes: bytes, kept: int, capsys: pytest.CaptureFixture[str]
) -> None:
    cut = tmp_path / "cut.pth"
    cut.write_bytes(checkpoint_bytes[:kept])  # nothing, its first 100 bytes, all but its end
    spec = str(empty_spec(tmp_path))
    for action in ("evaluate", "export"):
        code = main([action, "-e", spec, f"results_dir={tmp_path}", f"{action}.checkpoint={cut}"])
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        size = len(checkpoint_bytes[:kept])
        what = "is empty (0 bytes)" if not kept else f"is truncated ({size:,} bytes, its end is"
        assert f"checkpoint '{cut}' {what}" in err[0] and err[0].endswith(REPLACE), err[0]


def test_a_checkpoint_with_flipped_bytes_is_refused_by_its_checksums(
    tmp_path: Path, checkpoint_bytes: bytes, capsys: pytest.CaptureFixture[str]
) -> None:
    """``torch.load`` loads damaged tensor bytes without a word (a bad disk, a broken copy):
    evaluate scored, export shipped, and a resume trained on from damaged weights, exit 0.
    Every member of a ``torch.save`` archive carries a CRC-32, now checked."""
    damaged = bytearray(checkpoint_bytes)
    middle = len(damaged) // 2
    damaged[middle : middle + 64] = bytes(b ^ 0xFF for b in damaged[middle : middle + 64])
    flipped = tmp_path / "flipped.pth"
    flipped.write_bytes(bytes(damaged))
    spec = str(empty_spec(tmp_path))
    for action in ("evaluate", "export"):
        code = main(
            [action, "-e", spec, f"results_dir={tmp_path}", f"{action}.checkpoint={flipped}"]
        )
        err = capsys.readouterr().err.strip().splitlines()
        assert code == 2 and len(err) == 1, err
        assert f"checkpoint '{flipped}' is damaged (its part '" in err[0], err[0]
        assert err[0].endswith(REPLACE), err[0]
    intact = tmp_path / "intact.pth"
    intact.write_bytes(checkpoint_bytes)
    assert isinstance(read_checkpoint_object(intact, None), dict)


def test_a_checkpoint_path_that_is_a_device_says_so(tmp_path: Path, run_main: RunMain) -> None:
    for action in ("evaluate", "export"):
        result = run_main(
            action, "-e", str(empty_spec(tmp_path)), f"results_dir={tmp_path}",
            f"{action}.checkpoint=/dev/null",
        )  # fmt: skip
        assert_one_line_error(
            result, f"{action}.checkpoint '/dev/null' is a character device, not a regular file"
        )
    with pytest.raises(CheckpointError) as refused:
        read_checkpoint_object("/dev/null", None)
    assert str(refused.value).startswith(
        "checkpoint '/dev/null' is a character device, not a regular file;"
    )


def test_a_checkpoint_path_that_is_a_fifo_says_so_and_never_waits_for_a_writer(
    tmp_path: Path,
) -> None:
    fifo = tmp_path / "model.pth"
    os.mkfifo(fifo)
    result = run_cli(
        "evaluate", "-e", str(empty_spec(tmp_path)), f"results_dir={tmp_path}",
        f"evaluate.checkpoint={fifo}",
        timeout=120,  # opened for reading, a FIFO would wait for a writer for ever
    )  # fmt: skip
    assert_one_line_error(
        result, f"evaluate.checkpoint '{fifo}' is a FIFO (named pipe), not a regular file"
    )
    with pytest.raises(CheckpointError, match=r"is a FIFO \(named pipe\), not a regular file"):
        read_checkpoint_object(fifo, None)  # stat only: returns at once, as the CLI did

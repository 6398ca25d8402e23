"""Turn a dataset location from the spec into a folder: folders pass through, archives are unpacked.

TAO's launcher hands datasets over as ``sample_train.tar.gz``-style archives, so a TAO spec may
name an archive where reidkit expects a folder. Archives come from elsewhere and are untrusted:
every member is checked *before* it is written (no absolute paths, no ``..``, no links, no
device files, bounded size and member count), and the checked members are written by our own
code, never by ``extractall``. Extraction goes to a hidden temporary folder that is renamed into
place only when complete, so an interrupted run can never leave a half folder that a later run
mistakes for a finished one; the finished folder is reused as a cache.
"""

from __future__ import annotations

import hashlib
import lzma
import os
import re
import shutil
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import BinaryIO

from reidkit.errors import DatasetError

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")

_COPY_CHUNK = 1 << 20
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
# Folders some archivers add next to the real content; they must not stop us descending into
# the single real top-level folder.
_ARCHIVER_NOISE = {"__MACOSX"}


def resolve_dataset(
    path: str | Path,
    extract_root: Path,
    *,
    max_total_bytes: int = 50 * 2**30,
    max_members: int = 2_000_000,
) -> Path:
    """Return the folder holding the images of ``path`` (a folder, or an archive to unpack).

    An archive is unpacked into ``extract_root/<stem>-<key>/`` where ``key`` hashes the
    archive's absolute path, size and modification time: hashing the content of a many-GB
    archive would cost as much as unpacking it, and a replaced archive gets a new key anyway.
    If the archive holds a single top-level folder (possibly nested), that folder is returned.
    """
    source = Path(path).expanduser()
    if not source.exists():
        raise DatasetError(f"dataset path '{source}' does not exist; fix the path in the spec")
    if source.is_dir():
        return source
    suffix = _archive_suffix(source)
    if suffix is None:
        accepted = ", ".join(ARCHIVE_SUFFIXES)
        raise DatasetError(
            f"dataset path '{source}' is neither a folder nor an archive ({accepted}); "
            "point the spec at a folder of images or at one of those archives"
        )
    target = Path(extract_root) / f"{source.name[: -len(suffix)]}-{_cache_key(source)}"
    if not target.is_dir():
        _extract_atomically(source, suffix, target, max_total_bytes, max_members)
    return _content_root(target)


def _archive_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), None)


def _cache_key(archive: Path) -> str:
    info = archive.stat()
    ident = f"{archive.resolve()}\0{info.st_size}\0{info.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def _extract_atomically(
    archive: Path, suffix: str, target: Path, max_total_bytes: int, max_members: int
) -> None:
    """Unpack into a temporary sibling of ``target`` and rename it into place when complete.

    Several processes (DDP ranks) may unpack the same archive at once: each works in its own
    temporary folder and the first rename wins; the others discard their copy.
    """
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    try:
        limits = _Limits(archive, max_total_bytes, max_members)
        if suffix == ".zip":
            _extract_zip(archive, staging, limits)
        else:
            _extract_tar(archive, staging, limits)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)


class _Limits:
    """Counts members and written bytes and refuses the member that crosses a bound."""

    def __init__(self, archive: Path, max_total_bytes: int, max_members: int) -> None:
        self.archive = archive
        self.max_total_bytes = max_total_bytes
        self.max_members = max_members
        self.members = 0
        self.total_bytes = 0

    def add_member(self, name: str) -> None:
        self.members += 1
        if self.members > self.max_members:
            raise DatasetError(
                f"archive '{self.archive}' has more than {self.max_members} members "
                f"(refused at '{name}'); extract it yourself and point the spec at the folder"
            )

    def add_bytes(self, name: str, count: int) -> None:
        self.total_bytes += count
        if self.total_bytes > self.max_total_bytes:
            raise self.too_large(name)

    def too_large(self, name: str) -> DatasetError:
        return DatasetError(
            f"archive '{self.archive}' unpacks to more than {self.max_total_bytes} bytes "
            f"(refused at '{name}'); extract it yourself and point the spec at the folder"
        )


def _member_target(archive: Path, name: str, root: Path) -> Path:
    """The path a member may be written to, or a refusal if its name could leave ``root``.

    Backslashes count as separators too, so a name crafted for Windows cannot slip through.
    """
    if name.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(name):
        raise DatasetError(
            f"archive '{archive}' holds member '{name}' with an absolute path; "
            "refusing to unpack it, rebuild the archive with relative paths"
        )
    parts = [p for p in re.split(r"[\\/]", name) if p not in ("", ".")]
    if ".." in parts:
        raise DatasetError(
            f"archive '{archive}' holds member '{name}' that points outside the archive ('..'); "
            "refusing to unpack it, rebuild the archive without '..' in member names"
        )
    target = root.joinpath(*parts) if parts else root
    if not target.resolve().is_relative_to(root.resolve()):
        raise DatasetError(
            f"archive '{archive}' holds member '{name}' that leaves the target folder; "
            "refusing to unpack it, rebuild the archive with plain relative paths"
        )
    return target


def _refuse_type(archive: Path, name: str, kind: str) -> DatasetError:
    return DatasetError(
        f"archive '{archive}' holds {kind} '{name}'; a dataset archive may only hold folders and "
        "image files, rebuild it without links or special files"
    )


def _write_member(source: BinaryIO, target: Path, name: str, limits: _Limits) -> None:
    """Copy one member, counting the bytes really written (headers may lie about sizes)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target, "wb") as out:
        while chunk := source.read(_COPY_CHUNK):
            limits.add_bytes(name, len(chunk))
            out.write(chunk)


@contextmanager
def _damaged_archive(archive: Path, kind: str) -> Iterator[None]:
    """Turn a decoder's complaint into a one-line user error naming the archive.

    Decoders (gzip, bz2, lzma) report bad data as an ``OSError`` without an errno, while real
    I/O failures (disk full, permissions) carry one and must surface unchanged.
    """
    try:
        yield
    except (tarfile.TarError, zipfile.BadZipFile, EOFError, zlib.error, lzma.LZMAError) as exc:
        raise DatasetError(
            f"archive '{archive}' cannot be read as {kind} ({exc}); re-download or rebuild it"
        ) from None
    except (RuntimeError, NotImplementedError) as exc:  # encrypted or exotic zip members
        raise DatasetError(
            f"archive '{archive}' cannot be unpacked ({exc}); rebuild it without encryption"
        ) from None
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise DatasetError(
            f"archive '{archive}' cannot be read as {kind} ({exc}); re-download or rebuild it"
        ) from None


def _extract_tar(archive: Path, root: Path, limits: _Limits) -> None:
    with _damaged_archive(archive, "a tar archive"), tarfile.open(archive, "r|*") as tar:
        for member in tar:
            name = member.name
            limits.add_member(name)
            if member.issym() or member.islnk():
                raise _refuse_type(archive, name, f"a link (to '{member.linkname}')")
            if not (member.isdir() or member.isfile()):
                raise _refuse_type(archive, name, "a device, fifo or other special file")
            target = _member_target(archive, name, root)
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            # Refuse on the declared size first so a huge member is never started.
            if limits.total_bytes + member.size > limits.max_total_bytes:
                raise limits.too_large(name)
            stream = tar.extractfile(member)
            if stream is None:
                raise _refuse_type(archive, name, "an unreadable member")
            _write_member(stream, target, name, limits)


def _extract_zip(archive: Path, root: Path, limits: _Limits) -> None:
    with _damaged_archive(archive, "a zip archive"), zipfile.ZipFile(archive) as zipped:
        infos = zipped.infolist()
        declared = 0
        for info in infos:
            limits.add_member(info.filename)
            # Unix zips keep the file type in the high bits; others leave it 0 (plain file).
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise _refuse_type(archive, info.filename, "a link")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse_type(archive, info.filename, "a device, fifo or other special file")
            _member_target(archive, info.filename, root)
            declared += info.file_size
            if declared > limits.max_total_bytes:
                raise limits.too_large(info.filename)
        for info in infos:
            target = _member_target(archive, info.filename, root)
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            with zipped.open(info) as stream:
                _write_member(stream, target, info.filename, limits)


def _content_root(folder: Path) -> Path:
    """Descend through single top-level folders to the one that holds the data."""
    while True:
        entries = [
            e
            for e in folder.iterdir()
            if not e.name.startswith(".") and e.name not in _ARCHIVER_NOISE
        ]
        if len(entries) != 1 or not entries[0].is_dir():
            return folder
        folder = entries[0]

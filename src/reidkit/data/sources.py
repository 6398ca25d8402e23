"""Turn a dataset location from the spec into a folder: folders pass through, archives are unpacked.

TAO's launcher hands datasets over as ``sample_train.tar.gz``-style archives, so a TAO spec may
name an archive where reidkit expects a folder. Archives come from elsewhere and are untrusted,
so unpacking is done in two passes. The first pass reads only the member list (a tar.gz is
decompressed but nothing is written) and refuses the archive before any byte reaches the disk
if a member could escape its folder (absolute paths, ``..``, links, device files), if names
are odd (a file named ``.``, a file and a folder of the same name, absurd depth or length), or
if the archive is a bomb: too many members, an unpacked size above the cap or above the free
space, or a compression ratio no image archive has. Only what the dataset needs is planned:
image files (other members are skipped). The second pass writes the planned members with our
own code (never ``extractall``), checking that the archive still matches the plan and counting
the bytes really written. A truncated archive is refused naming the member where it breaks:
Python's tar reader takes a stream that simply stops (a cut download, a full disk at packing
time) for the end of the archive, so the scan insists on tar's end-of-archive marker, and a
member shorter than it declares is refused when written (tar and zip). Extraction goes to a
hidden temporary folder renamed into place only when complete, so a refused or interrupted run
leaves no cache entry that a later run could mistake for a finished one; the finished folder is
reused as a cache.
"""

from __future__ import annotations

import glob
import hashlib
import logging
import lzma
import os
import re
import shutil
import socket
import stat
import tarfile
import tempfile
import zipfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from reidkit.data.market import IMAGE_SUFFIXES
from reidkit.errors import DatasetError
from reidkit.outputs import process_running

log = logging.getLogger("reidkit")

ARCHIVE_SUFFIXES = (".tar.gz", ".tgz", ".tar", ".zip")
DEFAULT_MAX_EXTRACT_BYTES = 50 * 2**30

_COPY_CHUNK = 1 << 20
_WINDOWS_DRIVE = re.compile(r"^[A-Za-z]:")
# Folders some archivers add next to the real content; they must not stop us descending into
# the single real top-level folder.
_ARCHIVER_NOISE = {"__MACOSX"}
# Most file systems refuse longer names; refusing them up front gives a clear message.
_MAX_NAME_BYTES = 255


@dataclass(frozen=True)
class ExtractLimits:
    """Bounds an archive must respect before anything is written.

    Image archives barely compress (JPEG and PNG are already compressed; a tar adds a 512-byte
    header per member), so ``max_ratio`` leaves a wide margin while a zip bomb (ratio ~1000) or
    a tar.gz of 200,000 empty files (~60) is refused. Below ``ratio_floor`` unpacked bytes the
    ratio is not checked: a tiny archive cannot hurt, and tiny synthetic images compress well.
    """

    max_bytes: int = DEFAULT_MAX_EXTRACT_BYTES
    max_members: int = 2_000_000
    max_ratio: float = 20.0
    ratio_floor: int = 64 * 2**20
    max_depth: int = 32


def resolve_dataset(
    path: str | Path, extract_root: Path, limits: ExtractLimits | None = None
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
        _extract_atomically(source, suffix, target, limits or ExtractLimits())
    return _content_root(target)


def _archive_suffix(path: Path) -> str | None:
    name = path.name.lower()
    return next((s for s in ARCHIVE_SUFFIXES if name.endswith(s)), None)


def _cache_key(archive: Path) -> str:
    info = archive.stat()
    ident = f"{archive.resolve()}\0{info.st_size}\0{info.st_mtime_ns}"
    return hashlib.sha256(ident.encode()).hexdigest()[:12]


def _extract_atomically(archive: Path, suffix: str, target: Path, limits: ExtractLimits) -> None:
    """Plan, check, then unpack into a temporary sibling of ``target`` renamed when complete.

    Several processes (DDP ranks) may unpack the same archive at once: each works in its own
    temporary folder and the first rename wins; the others discard their copy. A temporary
    folder is named after its host and process, so one left by a killed run of this machine
    is removed here, and never one another process may still be filling. An ``OSError``
    while writing (disk full, read-only folder, a file where the folder should be) becomes one
    line naming the folder.
    """
    scan = _scan_zip if suffix == ".zip" else _scan_tar
    plan = scan(archive, _Plan(archive, limits))
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        prefix = f".{target.name}.partial-{socket.gethostname()}-"
        _remove_stale_staging(target.parent, prefix)
        plan.check_space(target.parent)
        staging = Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=target.parent))
    except OSError as exc:
        raise _unwritable(archive, target.parent, exc) from None
    try:
        if suffix == ".zip":
            _write_zip(archive, staging, plan)
        else:
            _write_tar(archive, staging, plan)
        try:
            os.rename(staging, target)
        except OSError:
            if not target.is_dir():
                raise
    except OSError as exc:
        raise _unwritable(archive, target.parent, exc) from None
    finally:
        if staging.exists():
            shutil.rmtree(staging, ignore_errors=True)
    if plan.skipped:
        log.info("archive '%s': skipped %d members that are not images", archive, plan.skipped)


def _remove_stale_staging(folder: Path, prefix: str) -> None:
    """Remove this host's temporary folders ``<prefix><pid>-*`` whose process has died."""
    for entry in folder.glob(f"{glob.escape(prefix)}*"):
        pid = entry.name[len(prefix) :].split("-", 1)[0]
        if pid.isdigit() and 0 < int(pid) < 2**31 and not process_running(int(pid)):
            log.info("removing '%s', left by an extraction that was killed", entry)
            shutil.rmtree(entry, ignore_errors=True)


def _unwritable(archive: Path, folder: Path, exc: OSError) -> DatasetError:
    return DatasetError(
        f"cannot unpack archive '{archive}' into '{folder}' ({exc.strerror or exc}); "
        "free space there or set dataset.extract_dir to a writable folder"
    )


@dataclass(frozen=True)
class _Member:
    """One archive member as planned: where it goes (None: skipped) and its declared size."""

    name: str
    is_dir: bool
    size: int
    parts: tuple[str, ...] | None


class _Plan:
    """The checked member list of an archive; refuses the first member that crosses a bound."""

    def __init__(self, archive: Path, limits: ExtractLimits) -> None:
        self.archive = archive
        self.archive_bytes = max(1, archive.stat().st_size)
        self.limits = limits
        self.members: list[_Member] = []
        self.total_bytes = 0
        self.skipped = 0
        self._files: set[tuple[str, ...]] = set()
        self._dirs: set[tuple[str, ...]] = set()

    def refuse(self, name: str, why: str, fix: str) -> DatasetError:
        return DatasetError(f"archive '{self.archive}' {why} (refused at '{_shown(name)}'); {fix}")

    def add(self, name: str, *, is_dir: bool, size: int, unpacked_so_far: int) -> None:
        """Check one member; ``unpacked_so_far`` is the decompressed offset after it."""
        if len(self.members) >= self.limits.max_members:
            raise self.refuse(
                name,
                f"has more than {self.limits.max_members} members",
                "extract it yourself and point the spec at the folder",
            )
        self.check_ratio(name, unpacked_so_far)
        parts = _member_parts(self.archive, name, self.limits.max_depth)
        basename = parts[-1] if parts else ""
        wanted = is_dir or (
            not basename.startswith(".") and Path(basename).suffix.lower() in IMAGE_SUFFIXES
        )
        if not is_dir and not parts:
            raise self.refuse(name, "holds a file named '.'", "rebuild it with real file names")
        if not wanted:
            self.skipped += 1
            self.members.append(_Member(name, is_dir, size, None))
            return
        self._check_layout(name, parts, is_dir)
        self.members.append(_Member(name, is_dir, size, parts))
        if not is_dir:
            self.total_bytes += size
            if self.total_bytes > self.limits.max_bytes:
                raise self.refuse(
                    name,
                    f"unpacks to more than {self.limits.max_bytes} bytes",
                    "raise dataset.max_extract_bytes if it is genuine, or extract it yourself",
                )

    def check_ratio(self, name: str, unpacked: int) -> None:
        limit = self.limits.max_ratio * self.archive_bytes
        if unpacked > max(self.limits.ratio_floor, limit):
            raise self.refuse(
                name,
                f"expands more than {self.limits.max_ratio:g} times its size "
                f"({self.archive_bytes} bytes), which no image archive does",
                "it looks like an archive bomb; extract it yourself if it is genuine",
            )

    def _check_layout(self, name: str, parts: tuple[str, ...], is_dir: bool) -> None:
        """Refuse a file and a folder of the same name, and a file written twice."""
        ancestors = [parts[:i] for i in range(1, len(parts))]
        clash = any(a in self._files for a in ancestors) or (
            parts in self._files if is_dir else parts in self._dirs
        )
        if clash:
            raise self.refuse(
                name, "holds a file and a folder of the same name", "rebuild it with unique names"
            )
        if not is_dir and parts in self._files:
            raise self.refuse(name, "holds this file twice", "rebuild it with unique names")
        self._dirs.update(ancestors)
        (self._dirs if is_dir else self._files).add(parts)

    def check_space(self, folder: Path) -> None:
        free = shutil.disk_usage(folder).free
        if self.total_bytes > free:
            raise DatasetError(
                f"archive '{self.archive}' unpacks to {self.total_bytes} bytes of images but "
                f"'{folder}' has {free} bytes free; free space or set dataset.extract_dir"
            )


def _member_parts(archive: Path, name: str, max_depth: int) -> tuple[str, ...]:
    """The path parts a member may be written to, or a refusal if its name is unsafe.

    Backslashes count as separators too, so a name crafted for Windows cannot slip through.
    """
    if name.startswith(("/", "\\")) or _WINDOWS_DRIVE.match(name):
        raise DatasetError(
            f"archive '{archive}' holds member '{_shown(name)}' with an absolute path; "
            "refusing to unpack it, rebuild the archive with relative paths"
        )
    parts = tuple(p for p in re.split(r"[\\/]", name) if p not in ("", "."))
    if ".." in parts:
        raise DatasetError(
            f"archive '{archive}' holds member '{_shown(name)}' that points outside the archive "
            "('..'); refusing to unpack it, rebuild the archive without '..' in member names"
        )
    if len(parts) > max_depth:
        raise DatasetError(
            f"archive '{archive}' holds member '{_shown(name[:200])}' nested more than "
            f"{max_depth} folders deep; rebuild the archive with a flat layout"
        )
    if any(len(os.fsencode(p)) > _MAX_NAME_BYTES or "\0" in p for p in parts):
        raise DatasetError(
            f"archive '{archive}' holds member '{_shown(name[:200])}' whose name is not a valid "
            f"file name (over {_MAX_NAME_BYTES} bytes or with a NUL); rebuild it with short names"
        )
    return parts


def _shown(text: str) -> str:
    """A member name (or a message quoting one) fit for a one-line message: the archive chose
    it, so control characters such as a newline are written as escapes."""
    return "".join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def _refuse_type(archive: Path, name: str, kind: str) -> DatasetError:
    return DatasetError(
        f"archive '{archive}' holds {kind} '{_shown(name)}'; a dataset archive may only hold "
        "folders and image files, rebuild it without links or special files"
    )


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
            f"archive '{archive}' cannot be read as {kind} ({_shown(str(exc))}); re-download or "
            "rebuild it"
        ) from None
    except (RuntimeError, NotImplementedError) as exc:  # encrypted or exotic zip members
        raise DatasetError(
            f"archive '{archive}' cannot be unpacked ({_shown(str(exc))}); rebuild it without "
            "encryption"
        ) from None
    except OSError as exc:
        if exc.errno is not None:
            raise
        raise DatasetError(
            f"archive '{archive}' cannot be read as {kind} ({_shown(str(exc))}); re-download or "
            "rebuild it"
        ) from None


def _write_member(source: BinaryIO, target: Path, member: _Member, plan: _Plan) -> None:
    """Copy one member, refusing it if it yields more or fewer bytes than it declares."""
    target.parent.mkdir(parents=True, exist_ok=True)
    written = 0
    with open(target, "xb") as out:
        while chunk := source.read(_COPY_CHUNK):
            written += len(chunk)
            if written > member.size:
                raise plan.refuse(
                    member.name,
                    "holds a member larger than it declares",
                    "re-download or rebuild it",
                )
            out.write(chunk)
    if written < member.size:
        raise plan.refuse(
            member.name,
            f"holds a member shorter than it declares ({written} of {member.size} bytes)",
            "re-download or rebuild it",
        )


def _tar_kind(archive: Path, member: tarfile.TarInfo) -> bool:
    """Whether a tar member is a folder; links and special files are refused."""
    if member.issym() or member.islnk():
        raise _refuse_type(archive, member.name, f"a link (to '{_shown(member.linkname)}')")
    if not (member.isdir() or member.isfile()):
        raise _refuse_type(archive, member.name, "a device, fifo or other special file")
    return member.isdir()


class _HeaderBlocks(tarfile.TarInfo):
    """Tar headers that remember the last block read as one: the one that ended the archive.

    A subclass is made per scan (:func:`_scan_tar`), so scans never share the record.
    """

    last_block: bytes = b""

    @classmethod
    def frombuf(cls, buf: bytes, encoding: str, errors: str) -> tarfile.TarInfo:
        cls.last_block = buf
        return super().frombuf(buf, encoding, errors)


def _scan_tar(archive: Path, plan: _Plan) -> _Plan:
    """Read the member list; decompresses the stream but writes nothing.

    The reader stops at the first block that is not a header, whatever it is; only a block of
    zeros (tar's end-of-archive marker) ends a complete archive. A short or missing block is a
    truncated archive, another block a damaged one; either is refused at the last member read,
    as is a stream that ends inside a member's data.
    """
    blocks = type("_ScanBlocks", (_HeaderBlocks,), {})
    with (
        _damaged_archive(archive, "a tar archive"),
        tarfile.open(archive, "r|*", tarinfo=blocks) as tar,
    ):
        try:
            _plan_tar_members(archive, tar, plan)
        except (tarfile.ReadError, EOFError, zlib.error, lzma.LZMAError):
            if not plan.members:
                raise  # not a tar archive at all: the damaged-archive line
            raise _cut_short(plan) from None
    if blocks.last_block != bytes(tarfile.BLOCKSIZE):
        raise _cut_short(plan)
    return plan


def _plan_tar_members(archive: Path, tar: tarfile.TarFile, plan: _Plan) -> None:
    for member in tar:
        is_dir = _tar_kind(archive, member)
        size = 0 if is_dir else member.size
        plan.add(member.name, is_dir=is_dir, size=size, unpacked_so_far=member.offset_data + size)


def _cut_short(plan: _Plan) -> DatasetError:
    last = plan.members[-1].name if plan.members else "its first header"
    return plan.refuse(
        last,
        "is truncated or damaged: it stops without tar's end-of-archive marker, so this "
        "member or the ones after it are missing or cut short",
        "re-download or rebuild it",
    )


def _write_tar(archive: Path, root: Path, plan: _Plan) -> None:
    planned = iter(plan.members)
    changed = DatasetError(
        f"archive '{archive}' changed while it was being unpacked; run again once it is complete"
    )
    with _damaged_archive(archive, "a tar archive"), tarfile.open(archive, "r|*") as tar:
        for member in tar:
            expected = next(planned, None)
            is_dir = _tar_kind(archive, member)
            if expected is None or (expected.name, expected.is_dir) != (member.name, is_dir):
                raise changed
            if expected.parts is None:
                continue
            target = root.joinpath(*expected.parts)
            if is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            if member.size != expected.size:
                raise changed
            stream = tar.extractfile(member)
            if stream is None:
                raise _refuse_type(archive, member.name, "an unreadable member")
            _write_member(stream, target, expected, plan)
    if next(planned, None) is not None:
        raise changed


def _scan_zip(archive: Path, plan: _Plan) -> _Plan:
    """Check the central directory; nothing is decompressed or written."""
    with _damaged_archive(archive, "a zip archive"), zipfile.ZipFile(archive) as zipped:
        for info in zipped.infolist():
            # Unix zips keep the file type in the high bits; others leave it 0 (plain file).
            kind = stat.S_IFMT(info.external_attr >> 16)
            if kind == stat.S_IFLNK:
                raise _refuse_type(archive, info.filename, "a link")
            if kind not in (0, stat.S_IFREG, stat.S_IFDIR):
                raise _refuse_type(archive, info.filename, "a device, fifo or other special file")
            is_dir = info.is_dir() or kind == stat.S_IFDIR
            size = 0 if is_dir else info.file_size
            plan.add(
                info.filename,
                is_dir=is_dir,
                size=size,
                unpacked_so_far=plan.total_bytes + size,
            )
    return plan


def _write_zip(archive: Path, root: Path, plan: _Plan) -> None:
    with _damaged_archive(archive, "a zip archive"), zipfile.ZipFile(archive) as zipped:
        for member in plan.members:
            if member.parts is None:
                continue
            target = root.joinpath(*member.parts)
            if member.is_dir:
                target.mkdir(parents=True, exist_ok=True)
                continue
            with (
                _damaged_archive(archive, f"a zip archive at member '{_shown(member.name)}'"),
                zipped.open(member.name) as stream,
            ):
                _write_member(stream, target, member, plan)


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

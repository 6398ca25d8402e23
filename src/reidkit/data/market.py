"""Market-1501 layout: file-name parsing, split loading and the consistency checks TAO relies on.

A split is a flat folder of crops named ``PPPP_cCsS_FFFFFF_NN.jpg`` (person id, 1-based camera,
sequence, frame, box). Unlike TAO, the id pattern keeps its minus sign so junk images (``-1``)
are dropped instead of being silently merged into person 1, every common image suffix is read
in any case, and stray non-image files are ignored rather than shifting the query/gallery split.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from reidkit.errors import DatasetError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")

JUNK_PID = -1
DISTRACTOR_PID = 0

# Id, then camera, then either Market's "sS" sequence, a separator, or the suffix. CUHK03 and
# DukeMTMC converted to the Market layout use "PPPP_cC_FFFF.jpg"-style names, so the sequence
# is optional; the lookahead keeps "c1x" or "c12abc" from parsing as a camera. Ids are ASCII
# digits, at most 9 of them: a 20-digit camera id overflowed the 64-bit arrays downstream.
_NAME = re.compile(r"^(-1|[0-9]{1,9})_c([0-9]{1,9})(?=s[0-9]|[_.]|$)")
_SHOWN = 3


@dataclass(frozen=True)
class ImageRecord:
    """One crop: its file, person id and camera id exactly as written in the name (1-based)."""

    path: Path
    pid: int
    camid: int


def parse_name(name: str) -> tuple[int, int] | None:
    """``(pid, camid)`` of a Market-style file name, or None if it does not follow the pattern.

    Junk images parse as pid -1 so callers can drop them knowingly; camera 0 does not exist in
    the 1-based Market numbering and is treated as a malformed name.
    """
    match = _NAME.match(name)
    if match is None:
        return None
    pid, camid = int(match.group(1)), int(match.group(2))
    if camid < 1:
        return None
    return pid, camid


def load_split(folder: Path, split: str, *, keep_distractors: bool) -> list[ImageRecord]:
    """Read one flat split folder into records, sorted by file name so runs are reproducible.

    Hidden files (``.DS_Store``, macOS ``._x.jpg`` shadows) and files without an image suffix
    are strays and are skipped; sub-folders are ignored. Junk (-1) is always dropped. Id 0000
    marks Market-1501's gallery distractors and is dropped unless ``keep_distractors``; note that
    CUHK03 and other 0-based conversions use 0000 as a real person, which is why
    :func:`reidkit.data.splits.prepare_splits` keeps it in every split.
    """
    folder = Path(folder)
    if not folder.exists():
        raise DatasetError(
            f"{split} folder '{folder}' does not exist; set the {split} path to a folder of "
            "Market-1501-style images"
        )
    if not folder.is_dir():
        raise DatasetError(
            f"{split} path '{folder}' is not a folder; point it at the folder of {split} images"
        )
    records: list[ImageRecord] = []
    malformed: list[str] = []
    images = 0
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not entry.is_file():
            continue
        images += 1
        parsed = parse_name(entry.name)
        if parsed is None:
            malformed.append(entry.name)
            continue
        pid, camid = parsed
        if pid == JUNK_PID or (pid == DISTRACTOR_PID and not keep_distractors):
            continue
        records.append(ImageRecord(entry, pid, camid))
    if malformed:
        shown = ", ".join(f"'{n}'" for n in malformed[:_SHOWN])
        raise DatasetError(
            f"{len(malformed)} image names in {split} folder '{folder}' do not follow the "
            f"Market-1501 pattern PPPP_cC[sS_FFFFFF_NN].jpg (e.g. {shown}); rename or remove them"
        )
    if not records:
        raise DatasetError(_no_images_message(folder, split, images))
    return records


def _no_images_message(folder: Path, split: str, images: int) -> str:
    if images:
        return (
            f"{split} folder '{folder}' holds only junk (-1) or distractor (0000) images; "
            "point it at a folder with labelled person crops"
        )
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir())
    if subfolders:
        names = ", ".join(subfolders[:_SHOWN])
        return (
            f"{split} folder '{folder}' holds no images, only folders ({names}); "
            "point it at the folder that holds the image files"
        )
    suffixes = "/".join(IMAGE_SUFFIXES)
    return f"{split} folder '{folder}' holds no {suffixes} images; point it at the {split} images"


def _folder_of(records: Sequence[ImageRecord]) -> str:
    return str(records[0].path.parent) if records else "?"


def check_num_classes(train: Sequence[ImageRecord], num_classes: int) -> None:
    """Fail early when the spec's class count differs from the train split's identity count.

    A wrong count would otherwise surface as a CUDA index error deep inside the loss, or as
    silently unused classifier rows.
    """
    found = len({r.pid for r in train})
    if found != num_classes:
        raise DatasetError(
            f"dataset.num_classes is {num_classes} but the train split '{_folder_of(train)}' "
            f"has {found} identities; set dataset.num_classes={found}"
        )


def check_query_in_gallery(query: Sequence[ImageRecord], gallery: Sequence[ImageRecord]) -> None:
    """Fail when some query identities have no gallery image at all.

    That happens when query and gallery come from different datasets or id numberings; the
    evaluation would skip those queries and report a meaningless score.
    """
    gallery_ids = {r.pid for r in gallery}
    orphans = [r for r in query if r.pid not in gallery_ids]
    if orphans:
        ids = sorted({r.pid for r in orphans})
        shown = ", ".join(str(i) for i in ids[:5]) + (", ..." if len(ids) > 5 else "")
        raise DatasetError(
            f"{len(orphans)} query images ({len(ids)} ids: {shown}) in '{_folder_of(query)}' have "
            f"no image of their id in the gallery '{_folder_of(gallery)}'; query and gallery "
            "must come from the same dataset and id numbering"
        )


def split_table(splits: dict[str, list[ImageRecord]]) -> str:
    """A small aligned table (ids / images / cameras per split) for logs and reports."""
    header = ("split", "ids", "images", "cameras")
    rows = [header] + [
        (
            name,
            str(len({r.pid for r in records})),
            str(len(records)),
            str(len({r.camid for r in records})),
        )
        for name, records in splits.items()
    ]
    widths = [max(len(row[i]) for row in rows) for i in range(len(header))]
    lines = [
        "  ".join(
            cell.ljust(w) if i == 0 else cell.rjust(w)
            for i, (cell, w) in enumerate(zip(row, widths, strict=True))
        )
        for row in rows
    ]
    return "\n".join(lines)

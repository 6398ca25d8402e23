"""Dataset layouts: file-name parsing, split loading and the consistency checks TAO relies on.

A split is one of two layouts, told apart by what the folder holds:

* **Market-1501** (image files directly in the folder): crops named ``PPPP_cCsS_FFFFFF_NN.jpg``
  (person id, 1-based camera, sequence, frame, box). Unlike TAO, the id pattern keeps its minus
  sign so junk images (``-1``) are dropped instead of being silently merged into person 1.
* **One folder per identity** (only sub-folders, each named by an integer id): ``<id>/<file>``,
  e.g. ``pku_views/train/001/01_3.png`` or MARS' ``bbox_train/0003/0003C4T0003F001.jpg``. The
  folder is the person; the camera comes from the file name, tried in this order:

  1. MARS names ``<pid>C<camera>T<tracklet>F<frame>.jpg`` (e.g. ``0003C4T0003F001.jpg``):
     camera 4, and the tracklet ``0003C4T0003`` is kept as the crop's ``track`` (crops of one
     tracklet are one person seen continuously by one camera);
  2. Market names (``0003_c4s1_000123_00.jpg``): camera 4;
  3. ``<camera>_<anything>`` (``pku_views``' ``<camera>_<view>.png``, e.g. ``02_7.png``):
     the integer before the first underscore is the camera.

  Identity folders ``-1`` / ``00-1`` (MARS' junk) are skipped like Market's junk images.

Every common image suffix is read in any case, and stray non-image files are ignored rather
than shifting the query/gallery split.
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
# MARS: "0003C4T0003F001.jpg"; junk tracklets have the id "00-1".
_MARS_NAME = re.compile(r"^(00-1|-1|[0-9]{1,9})C([0-9]{1,9})T([0-9]{1,9})F([0-9]{1,9})(?=[_.]|$)")
# pku_views and similar: "<camera>_<anything>", e.g. "02_7.png".
_CAMERA_PREFIX = re.compile(r"^([0-9]{1,9})_")
_IDENTITY_FOLDER = re.compile(r"^(00-1|-1|[0-9]{1,9})$")
_SHOWN = 3


@dataclass(frozen=True)
class ImageRecord:
    """One crop: its file, person id and camera id exactly as written in the name (1-based).

    ``track`` names the tracklet the crop belongs to when the layout records one (MARS names,
    a manifest's ``track_id``); ``timestamp`` (unix seconds) is known only from a manifest.
    Both are None otherwise; neither is a label.
    """

    path: Path
    pid: int
    camid: int
    track: str | None = None
    timestamp: float | None = None


@dataclass(frozen=True)
class MarsName:
    """What a MARS file name says: person, camera, tracklet (``PPPPCcTtttt``) and frame."""

    pid: int
    camid: int
    tracklet: str
    frame: int


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


def parse_mars_name(name: str) -> MarsName | None:
    """The parts of a MARS file name (``0003C4T0003F001.jpg``), or None for another name.

    The junk id ``00-1`` parses as -1, as Market's junk does.
    """
    match = _MARS_NAME.match(name)
    if match is None:
        return None
    pid = -1 if match.group(1) in ("00-1", "-1") else int(match.group(1))
    tracklet = name[: match.end(3)]
    return MarsName(pid, int(match.group(2)), tracklet, int(match.group(4)))


def _camera_and_track(name: str) -> tuple[int, str | None] | None:
    """The camera (and MARS tracklet) of a file in an identity folder; see the module docstring."""
    mars = parse_mars_name(name)
    if mars is not None:
        return mars.camid, mars.tracklet
    market = parse_name(name)
    if market is not None:
        return market[1], None
    prefix = _CAMERA_PREFIX.match(name)
    return (int(prefix.group(1)), None) if prefix else None


def _images_in(folder: Path) -> list[Path]:
    """Image files directly in ``folder`` by name; hidden files and other suffixes are strays.

    Two kinds of entry would change a score without a word, so they are refused by name:
    - a link named as an image whose target is gone (or that points at itself): skipped, it
      left the split smaller than the folder says (a dataset moved, its links not);
    - one crop under two names that differ only in case or suffix (``x.png`` left beside its
      ``x.jpg``): each was a crop of its own, counted twice in every rank and in mAP.
    """
    images: list[Path] = []
    seen: dict[str, Path] = {}
    for entry in sorted(folder.iterdir(), key=lambda p: p.name):
        if entry.name.startswith(".") or entry.suffix.lower() not in IMAGE_SUFFIXES:
            continue
        if not entry.is_file():
            if entry.is_symlink() and not entry.exists():
                raise DatasetError(
                    f"image '{entry}' is a link to nothing (its target is gone, or it points "
                    "at itself); restore its target or remove the link"
                )
            continue
        crop = entry.with_suffix("").name.lower()
        if crop in seen:
            raise DatasetError(
                f"images '{seen[crop].name}' and '{entry.name}' in '{folder}' are one crop "
                "under two names (they differ only in case or suffix) and would count twice; "
                "keep one"
            )
        seen[crop] = entry
        images.append(entry)
    return images


def _identity_folders(folder: Path) -> list[tuple[int, Path]] | None:
    """``(id, sub-folder)`` when every visible sub-folder is named by an integer id, else None."""
    subfolders = [p for p in folder.iterdir() if p.is_dir() and not p.name.startswith(".")]
    if not subfolders or not all(_IDENTITY_FOLDER.match(p.name) for p in subfolders):
        return None
    ids = [(-1 if p.name in ("00-1", "-1") else int(p.name), p) for p in subfolders]
    return sorted(ids, key=lambda entry: entry[1].name)


def _load_identity_folders(
    folder: Path, split: str, identities: list[tuple[int, Path]], keep_distractors: bool
) -> list[ImageRecord]:
    records: list[ImageRecord] = []
    malformed: list[str] = []
    for pid, subfolder in identities:
        if pid == JUNK_PID or (pid == DISTRACTOR_PID and not keep_distractors):
            continue
        for image in _images_in(subfolder):
            parsed = _camera_and_track(image.name)
            if parsed is None:
                malformed.append(f"{subfolder.name}/{image.name}")
                continue
            records.append(ImageRecord(image, pid, parsed[0], track=parsed[1]))
    if malformed:
        shown = ", ".join(f"'{n}'" for n in malformed[:_SHOWN])
        raise DatasetError(
            f"{len(malformed)} image names in the identity folders of {split} folder "
            f"'{folder}' name no camera (e.g. {shown}); name them <camera>_<anything>.jpg, "
            "PPPPCcTtttFfff.jpg (MARS) or PPPP_cC....jpg (Market-1501)"
        )
    if not records:
        raise DatasetError(
            f"{split} folder '{folder}' holds identity folders without person crops; "
            "point it at a folder with labelled person crops"
        )
    return records


def load_split(folder: Path, split: str, *, keep_distractors: bool) -> list[ImageRecord]:
    """Read one split folder (either layout, see the module docstring) into records, sorted by
    path so runs are reproducible.

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
    images = _images_in(folder)
    identities = None if images else _identity_folders(folder)
    if identities is not None:
        return _load_identity_folders(folder, split, identities, keep_distractors)
    records: list[ImageRecord] = []
    malformed: list[str] = []
    for entry in images:
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
        raise DatasetError(_no_images_message(folder, split, len(images)))
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
            "point it at the folder that holds the image files (or one folder per "
            "identity, each named by an integer id)"
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

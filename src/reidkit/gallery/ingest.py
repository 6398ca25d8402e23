"""From a site's crop files to gallery entries: metadata, decoding, batched embedding.

Metadata comes from one of two places:

* Market-style names, ``PPPP_cCsS_FFFFFF_NN.jpg``: camera ``C``, track ``PPPP`` (the tracker's
  id), timestamp ``origin + FFFFFF / fps`` (frame number at the camera's frame rate);
* a CSV manifest with the header ``path,camera,timestamp,track_id[,site,zone]``; timestamps are
  unix seconds or ISO-8601 (a time without a zone is UTC); relative paths are relative to the
  manifest. A column outside that header is refused (a misspelt ``trackid`` would lose its
  cells). Every row has every cell, and path, camera, time and track id meet the rules of
  :mod:`reidkit.gallery.validation` (those of the HTTP API). A bad row is reported as
  ``file:line: what is wrong``.

Crops are decoded and normalised as the model card says (the one rule,
:func:`reidkit.data.preprocessing.resolve_preprocessing`) through the evaluation pipeline
(:func:`reidkit.data.transforms.build_eval_transform`), so a crop embeds in the gallery exactly
as it does in ``evaluate``.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm import tqdm

from reidkit.config.times import parse_time as parse_timestamp
from reidkit.data.images import decode_rgb
from reidkit.data.market import parse_name
from reidkit.data.preprocessing import resolve_preprocessing
from reidkit.data.transforms import build_eval_transform
from reidkit.errors import ImageRefused
from reidkit.gallery import validation
from reidkit.gallery.front import Gallery
from reidkit.gallery.store import CropMeta, GalleryError

IMAGE_SUFFIXES = (".jpg", ".jpeg", ".png", ".bmp")
MANIFEST_COLUMNS = ("path", "camera", "timestamp", "track_id")
OPTIONAL_COLUMNS = tuple(c for c in validation.CROP_FIELDS if c not in MANIFEST_COLUMNS)
_FRAME = re.compile(r"^(?:-1|\d+)_c\d+(?:s\d+)?_(\d+)")
THUMBNAIL_HEIGHT = 96

Embedder = Callable[[Tensor], Tensor]


def meta_from_name(path: Path, origin: float, fps: float = 25.0) -> CropMeta:
    """Camera, track and time of a Market-style crop name (see the module docstring)."""
    parsed = parse_name(path.name)
    frame = _FRAME.match(path.name)
    if parsed is None or frame is None:
        raise GalleryError(
            f"crop '{path}' is not named PPPP_cCsS_FFFFFF_NN.jpg; rename it or list the crops "
            "in a CSV manifest (path,camera,timestamp,track_id)"
        )
    _, camera = parsed
    try:  # the manifest's and the API's rules: a frame number can put a crop past any clock
        timestamp = validation.timestamp(origin + int(frame.group(1)) / fps)
    except ValueError as exc:
        raise GalleryError(
            f"crop '{path}': frame {frame.group(1)} at gallery.fps {fps:g} from "
            f"gallery.time_origin gives a {exc}; check the name, fps and time_origin"
        ) from None
    return CropMeta(
        path=str(path.resolve()),
        camera=camera,
        timestamp=timestamp,
        track_id=path.name.split("_", 1)[0],  # as written ("0042"), the way users will type it
    )


def crops_in_folder(folder: Path, origin: float, fps: float = 25.0) -> list[CropMeta]:
    """Every image directly in ``folder`` (sorted by name), with metadata from its name."""
    if folder.exists() and not folder.is_dir():
        raise GalleryError(
            f"gallery.crops '{folder}' is a file, not a folder; name the folder of crops (or "
            "list the crops in gallery.manifest)"
        )
    if not folder.is_dir():
        raise GalleryError(f"crop folder '{folder}' does not exist; check the path")
    files = sorted(
        p for p in folder.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.name[0] != "."
    )
    if not files:
        raise GalleryError(f"crop folder '{folder}' has no images ({', '.join(IMAGE_SUFFIXES)})")
    return [meta_from_name(p, origin, fps) for p in files]


class UntrackedRow(GalleryError):
    """A manifest row with an empty ``track_id`` (see :class:`validation.EmptyTrackId`)."""


def _manifest_row(path: Path, line: int, row: dict[Any, Any], columns: int) -> CropMeta:
    """One manifest row as a crop, checked by the rules the HTTP API applies too
    (:mod:`reidkit.gallery.validation`); a bad row is ``file:line: what is wrong``."""
    try:
        if None in row or None in row.values():  # csv's marks of extra and missing cells
            cells = columns + len(row.get(None) or []) - sum(v is None for v in row.values())
            raise ValueError(f"the row has {cells} cells, the header {columns}")
        validation.crop_key(row["path"])
        try:
            camera = int(row["camera"])
        except ValueError:
            raise ValueError(f"camera {row['camera']!r} is not an integer") from None
        validation.camera(camera)
        timestamp = validation.timestamp(parse_timestamp(row["timestamp"]))
        track_id = validation.track_id(row["track_id"])
    except ValueError as exc:
        refused = UntrackedRow if isinstance(exc, validation.EmptyTrackId) else GalleryError
        raise refused(f"{path}:{line}: {exc}; fix that row") from None
    crop = Path(row["path"].strip())
    crop = crop if crop.is_absolute() else path.parent / crop
    return CropMeta(
        path=str(crop.resolve()),
        camera=camera,
        timestamp=timestamp,
        track_id=track_id,
        site=(row.get("site") or "").strip() or None,
        zone=(row.get("zone") or "").strip() or None,
    )


def read_manifest(path: Path) -> list[CropMeta]:
    """The crops a CSV manifest lists (see the module docstring); one line per bad row."""
    if not path.is_file():
        raise GalleryError(f"manifest '{path}' does not exist; check the path")
    metas = []
    raw = path.read_bytes()
    try:
        text = raw.decode("utf-8-sig")  # a byte order mark (Excel's UTF-8 CSV) is fine
    except UnicodeDecodeError as exc:
        line = raw.count(b"\n", 0, exc.start) + 1
        raise GalleryError(
            f"{path}:{line}: not UTF-8 text (byte 0x{raw[exc.start]:02x}); save the manifest "
            "as UTF-8"
        ) from None
    with io.StringIO(text, newline="") as handle:
        reader = csv.DictReader(handle)
        header = [h.strip() for h in reader.fieldnames or []]
        missing = [c for c in MANIFEST_COLUMNS if c not in header]
        if missing:
            raise GalleryError(
                f"{path}:1: missing column(s) {', '.join(missing)}; the header must be "
                f"{','.join(MANIFEST_COLUMNS)}[,{','.join(OPTIONAL_COLUMNS)}]"
            )
        try:
            validation.crop_fields(header, "column")
        except ValueError as exc:
            raise GalleryError(f"{path}:1: {exc}; fix the header") from None
        repeated = sorted({h for h in header if header.count(h) > 1})
        if repeated:
            raise GalleryError(
                f"{path}:1: column(s) {', '.join(repeated)} appear more than once; name each "
                "column once"
            )
        reader.fieldnames = header
        lines: dict[str, int] = {}
        try:
            for row in reader:
                meta = _manifest_row(path, reader.line_num, row, len(header))
                if meta.path in lines:
                    raise GalleryError(
                        f"{path}:{reader.line_num}: crop '{meta.path}' is already listed on line "
                        f"{lines[meta.path]}; list each crop once"
                    )
                lines[meta.path] = reader.line_num
                metas.append(meta)
        except csv.Error as exc:  # e.g. a cell over csv's field size limit
            line = reader.line_num + 1  # the line being read when csv gave up
            raise GalleryError(f"{path}:{line}: {exc}; fix that row") from None
    if not metas:
        raise GalleryError(f"manifest '{path}' lists no crops")
    return metas


def _refusal(meta: CropMeta) -> str | None:
    """Why the crop's file cannot be embedded (None when it decodes; JPEGs at 1/8 scale)."""
    try:
        decode_rgb(Path(meta.path), f"crop '{meta.path}'", draft=True)
    except ImageRefused as refused:
        return str(refused)
    return None


def unreadable(metas: Sequence[CropMeta]) -> list[CropMeta]:
    """The crops whose file is missing, damaged or refused, such as the ``upload:<hash>`` keys
    of crops uploaded over HTTP, which have no file."""
    return [meta for meta in metas if _refusal(meta) is not None]


def check_readable(metas: Sequence[CropMeta]) -> None:
    """Decode every crop before anything is added: a missing, damaged or refused file fails the
    whole add up front, with the gallery unchanged."""
    for meta in metas:
        if (why := _refusal(meta)) is not None:
            raise GalleryError(why)


def _load(meta: CropMeta, transform: Any, thumbnails: bool) -> tuple[Tensor, bytes | None]:
    try:
        rgb = decode_rgb(Path(meta.path), f"crop '{meta.path}'")
    except ImageRefused as refused:
        raise GalleryError(str(refused)) from None
    thumb = None
    if thumbnails:
        small = rgb.copy()
        small.thumbnail((THUMBNAIL_HEIGHT, THUMBNAIL_HEIGHT))
        buffer = io.BytesIO()
        small.save(buffer, format="JPEG", quality=80)
        thumb = buffer.getvalue()
    return transform(rgb), thumb


def embed_batches(
    embedder: Embedder,
    card: dict[str, Any],
    metas: Sequence[CropMeta],
    *,
    batch_size: int = 64,
    thumbnails: bool = True,
    progress: bool = True,
) -> Iterator[tuple[Tensor, list[CropMeta], list[bytes | None]]]:
    """Embeddings of ``metas`` in batches, with their metadata and JPEG thumbnails."""
    transform = build_eval_transform(resolve_preprocessing(card=card))
    with tqdm(total=len(metas), unit="crop", disable=not progress, desc="embedding") as bar:
        for start in range(0, len(metas), batch_size):
            batch = list(metas[start : start + batch_size])
            loaded = [_load(m, transform, thumbnails) for m in batch]
            images = torch.stack([image for image, _ in loaded])
            with torch.inference_mode():
                vectors = embedder(images)
            yield vectors, batch, [thumb for _, thumb in loaded]
            bar.update(len(batch))


def add_crops(
    gallery: Gallery,
    embedder: Embedder,
    card: dict[str, Any],
    metas: Sequence[CropMeta],
    *,
    batch_size: int = 64,
    thumbnails: bool = True,
    progress: bool = True,
    operator: str | None = None,
) -> tuple[int, int]:
    """Embed and store the crops the gallery does not hold yet; returns (added, already there).

    Resumable: after a kill, a rerun skips every crop already stored (without embedding it)
    and adds the rest, so each crop ends up stored exactly once. Each batch is audited as
    ``operator``.
    """
    stored = gallery.contains([m.path for m in metas])
    todo = [m for m, present in zip(metas, stored, strict=True) if not present]
    check_readable(todo)
    added = 0
    for vectors, batch, thumbs in embed_batches(
        embedder, card, todo, batch_size=batch_size, thumbnails=thumbnails, progress=progress
    ):
        added += gallery.add(vectors, batch, thumbs if thumbnails else None, operator=operator)
    return added, len(metas) - len(todo)

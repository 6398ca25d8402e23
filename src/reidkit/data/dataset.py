"""The image dataset, train relabelling and an up-front integrity check of every image file.

A corrupt file found by a data-loader worker hours into training kills the run with a worker
traceback; :func:`verify_images` finds it in seconds before anything starts, and
:class:`ImageDataset` still names the file if one breaks later (e.g. on a flaky network disk).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError
from torch import Tensor
from torch.utils.data import Dataset

from reidkit.data.market import ImageRecord
from reidkit.data.verified import VerifiedImages
from reidkit.errors import DatasetError

# What Pillow raises for unreadable, truncated or malformed image data.
_DECODE_ERRORS = (
    OSError,
    UnidentifiedImageError,
    ValueError,
    SyntaxError,
    Image.DecompressionBombError,
)
_SHOWN = 3


# Integer modes Pillow cannot scale itself: its ``convert("RGB")`` clips them at 255, so a
# 16-bit PNG came out all white.
_WIDE_INTEGER_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")
_UINT16_MAX = 65535


def read_rgb(path: Path, draft: bool = False) -> Image.Image:
    """Decode a whole image as 8-bit RGB; ``convert`` forces the full decode so truncation shows.

    ``draft`` decodes a JPEG at 1/8 scale (other formats ignore it), for checks that only need
    to know the file decodes: libjpeg still reads every byte of the compressed stream, so
    truncation and corruption still show, in about half the time.

    16-bit greyscale is scaled to 8 bits (``round(v * 255 / 65535)``); Pillow already reduces
    16-bit colour PNGs to 8 bits per channel. Modes that cannot be scaled without guessing
    (floating point, 32-bit integers beyond the 16-bit range) are refused with a reason.
    """
    if path.stat().st_size == 0:
        raise OSError("empty file")
    with Image.open(path) as image:
        if draft:
            image.draft("RGB", (image.width // 8, image.height // 8))
        if image.mode in _WIDE_INTEGER_MODES:
            return _scale_to_8_bits(np.asarray(image), image.mode).convert("RGB")
        if image.mode == "F":
            raise ValueError("floating-point pixels (mode F); save it as an 8-bit image")
        return image.convert("RGB")


def _scale_to_8_bits(pixels: np.ndarray, mode: str) -> Image.Image:
    wide = pixels.astype(np.int64)
    if wide.size and (wide.min() < 0 or wide.max() > _UINT16_MAX):
        raise ValueError(f"{mode} pixels outside 0-65535; save it as an 8-bit or 16-bit image")
    return Image.fromarray(((wide * 255 + _UINT16_MAX // 2) // _UINT16_MAX).astype(np.uint8))


class ImageDataset(Dataset[tuple[Tensor, int, int]]):
    """Records as ``(image, label, camid)``; the label is the relabelled id when given, else pid."""

    def __init__(
        self,
        records: Sequence[ImageRecord],
        transform: Callable[[Image.Image], Tensor],
        labels: Sequence[int] | None = None,
    ) -> None:
        if labels is not None and len(labels) != len(records):
            raise ValueError(f"{len(labels)} labels given for {len(records)} records")
        self.records = list(records)
        self.transform = transform
        self.labels = list(labels) if labels is not None else None

    def __len__(self) -> int:
        return len(self.records)

    def __getitem__(self, index: int) -> tuple[Tensor, int, int]:
        record = self.records[index]
        try:
            image = read_rgb(record.path)
        except _DECODE_ERRORS as exc:
            raise DatasetError(
                f"image '{record.path}' cannot be read ({exc}); remove or replace it"
            ) from None
        label = self.labels[index] if self.labels is not None else record.pid
        return self.transform(image), label, record.camid


def relabel(records: Sequence[ImageRecord]) -> list[int]:
    """Train labels 0..N-1 in sorted pid order, so a label means the same id on every rank."""
    index = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [index[r.pid] for r in records]


def _problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None if it decodes (JPEGs in draft mode)."""
    try:
        read_rgb(path, draft=True)
    except _DECODE_ERRORS as exc:
        return str(exc) or type(exc).__name__
    return None


def verify_images(
    records: Sequence[ImageRecord], max_workers: int = 2, cache: VerifiedImages | None = None
) -> None:
    """Decode every image once, in threads, and fail naming the first bad files (up to 3).

    A full decode (not Pillow's header-only ``verify``) is needed because a truncated JPEG has a
    valid header; re-id crops are small, so this costs a fraction of a millisecond per image
    and Pillow's decoders release the GIL, so threads scale. With a ``cache``, files that
    decoded cleanly before and have not changed since are skipped, and clean ones are recorded.
    """
    paths = [r.path for r in records]
    todo = cache.unverified(paths) if cache is not None else paths
    with ThreadPoolExecutor(max_workers=max(1, max_workers)) as pool:
        reasons = list(pool.map(_problem, todo))
    if cache is not None:
        cache.remember([p for p, why in zip(todo, reasons, strict=True) if why is None])
    problems = [(p, why) for p, why in zip(todo, reasons, strict=True) if why]
    if problems:
        shown = "; ".join(f"'{p}' ({why})" for p, why in problems[:_SHOWN])
        raise DatasetError(
            f"{len(problems)} images cannot be read: {shown}; remove or replace them"
        )

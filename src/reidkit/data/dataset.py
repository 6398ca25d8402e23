"""The image dataset, train relabelling and an up-front integrity check of every image file.

A corrupt file found by a data-loader worker hours into training kills the run with a worker
traceback; :func:`verify_images` finds it in seconds before anything starts, and
:class:`ImageDataset` still names the file if one breaks later (e.g. on a flaky network disk).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from PIL import Image
from torch import Tensor
from torch.utils.data import Dataset

from reidkit.data.images import decode_rgb
from reidkit.data.market import ImageRecord
from reidkit.data.verified import VerifiedImages
from reidkit.errors import DatasetError, ImageRefused

_SHOWN = 3


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
        image = decode_rgb(record.path, f"image '{record.path}'")
        label = self.labels[index] if self.labels is not None else record.pid
        return self.transform(image), label, record.camid


def relabel(records: Sequence[ImageRecord]) -> list[int]:
    """Train labels 0..N-1 in sorted pid order, so a label means the same id on every rank."""
    index = {pid: label for label, pid in enumerate(sorted({r.pid for r in records}))}
    return [index[r.pid] for r in records]


def _problem(path: Path) -> str | None:
    """Why ``path`` cannot be used as an image, or None if it decodes (JPEGs in draft mode)."""
    try:
        decode_rgb(path, "image", draft=True)
    except ImageRefused as refused:
        return refused.reason
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
        shown = "; ".join(f"'{p}' {why}" for p, why in problems[:_SHOWN])
        raise DatasetError(
            f"{len(problems)} images cannot be read: {shown}; remove or replace them"
        )

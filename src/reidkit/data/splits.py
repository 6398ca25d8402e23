"""From a spec to checked train / query / gallery records: the one entry point actions use.

Every check that can fail on user data runs here, before any model is built, so a wrong path,
a wrong ``num_classes``, mismatched query/gallery folders or a corrupt image costs seconds
rather than a crashed run.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from pathlib import Path

from reidkit.config.spec import ExperimentSpec
from reidkit.data.dataset import verify_images
from reidkit.data.market import (
    ImageRecord,
    check_num_classes,
    check_query_in_gallery,
    load_split,
    split_table,
)
from reidkit.data.sources import ExtractLimits, resolve_dataset
from reidkit.data.verified import default_verified_images
from reidkit.errors import DatasetError

log = logging.getLogger("reidkit")


@dataclass
class ReidSplits:
    """The records of one run; ``train`` is empty for evaluation and inference."""

    train: list[ImageRecord] = field(default_factory=list)
    query: list[ImageRecord] = field(default_factory=list)
    gallery: list[ImageRecord] = field(default_factory=list)

    @property
    def num_train_ids(self) -> int:
        return len({r.pid for r in self.train})


def extract_root(spec: ExperimentSpec) -> Path:
    """Where archives named by the spec are unpacked (``dataset.extract_dir``)."""
    if spec.dataset.extract_dir:
        return Path(spec.dataset.extract_dir)
    return Path(spec.results_dir) / "datasets"


def _load(
    value: str | None, key: str, split: str, extract_root: Path, limits: ExtractLimits
) -> list[ImageRecord]:
    """Resolve and read one split; ``key`` names the spec setting in the error if it is unset.

    Id 0000 is kept in every split: Market-1501 has it only in the gallery (as distractors,
    which belong there), while CUHK03 and other 0-based conversions use it as a real person in
    all splits, and TAO counts it in ``num_classes``.
    """
    if not value:
        raise DatasetError(f"{key} is not set; set it to the {split} image folder or archive")
    folder = resolve_dataset(value, extract_root, limits)
    return load_split(folder, split, keep_distractors=True)


def prepare_splits(
    spec: ExperimentSpec,
    *,
    train: bool,
    query_dir: str | None = None,
    gallery_dir: str | None = None,
    verify: bool = True,
    scored: bool = True,
) -> ReidSplits:
    """Resolve, load and check the splits a run needs, and log their sizes.

    ``query_dir`` / ``gallery_dir`` override ``dataset.query_dataset_dir`` /
    ``dataset.test_dataset_dir`` (evaluate and inference pass their own keys here).
    ``scored``: the run scores the query against the gallery (train's validation, evaluate),
    so every query identity must have a gallery image. Inference only embeds and ranks, and
    searching for people the gallery may not hold is what it is for.
    """
    root = extract_root(spec)
    limits = ExtractLimits(max_bytes=spec.dataset.max_extract_bytes)
    data = spec.dataset
    splits = ReidSplits()
    if train:
        splits.train = _load(
            data.train_dataset_dir, "dataset.train_dataset_dir", "train", root, limits
        )
        check_num_classes(splits.train, data.num_classes)
    query = query_dir or data.query_dataset_dir
    gallery = gallery_dir or data.test_dataset_dir
    splits.query = _load(query, "dataset.query_dataset_dir", "query", root, limits)
    splits.gallery = _load(gallery, "dataset.test_dataset_dir", "gallery", root, limits)
    if scored:
        check_query_in_gallery(splits.query, splits.gallery)
    if verify:
        # Decoding releases the GIL, so more threads help on big machines; 8 saturates disks.
        workers = min(8, os.cpu_count() or 1)
        verify_images(
            splits.train + splits.query + splits.gallery,
            max_workers=workers,
            cache=default_verified_images(),
        )
    table = {"train": splits.train} if train else {}
    table |= {"query": splits.query, "gallery": splits.gallery}
    log.info("dataset splits:\n%s", split_table(table))
    return splits

"""Scoring shared by both sides of ``bench_cuhk03.py``: one metric code path for every model.

Each side also reports its own default scoring (reidkit's ``evaluate`` action, torchreid's
``_evaluate``); these helpers add the common ones, computed the same way for both models from
their raw embeddings: L2-normalised features with flip averaging (the embedding of an image and
of its mirror image, averaged before normalising), and the same plus k-reciprocal re-ranking
(k1 20, k2 6, lambda 0.3). Metrics are reidkit's (identical to torchreid's Cython
``evaluate_rank`` to 1e-6, see ``BENCHMARKS.md``).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
from torch import Tensor

from reidkit.evaluation.metrics import evaluate_distances, evaluate_features
from reidkit.evaluation.rerank import re_rank


@dataclass
class Split:
    """Raw embeddings of one split and of its mirror images, with identities and cameras."""

    features: Tensor
    flipped: Tensor
    pids: np.ndarray
    camids: np.ndarray

    @property
    def flip_averaged(self) -> Tensor:
        return (self.features + self.flipped) / 2


@torch.inference_mode()
def embed(model: Callable[[Tensor], Tensor], batches: Iterable[tuple[Tensor, Any, Any]]) -> Split:
    """Run ``model`` (in eval mode) over ``(images, pids, camids)`` batches and their mirrors."""
    features, flipped, pids, camids = [], [], [], []
    for images, batch_pids, batch_camids in batches:
        features.append(model(images).float())
        flipped.append(model(torch.flip(images, dims=[3])).float())
        pids.append(np.asarray(batch_pids))
        camids.append(np.asarray(batch_camids))
    return Split(
        torch.cat(features), torch.cat(flipped), np.concatenate(pids), np.concatenate(camids)
    )


def _percent(result: object) -> dict[str, float]:
    scores = result.as_percent()  # type: ignore[attr-defined]
    return {"rank1": float(scores["cmc_rank_1"]), "mAP": float(scores["mAP"])}


def norm_flip(query: Split, gallery: Split) -> dict[str, float]:
    """Rank-1 / mAP (percent) on normalised, flip-averaged features (cosine distance)."""
    q, g = query.flip_averaged, gallery.flip_averaged
    return _percent(evaluate_features(q, g, query.pids, gallery.pids, query.camids, gallery.camids))


def reranked(query: Split, gallery: Split) -> dict[str, float]:
    """:func:`norm_flip` features, k-reciprocal re-ranked (k1 20, k2 6, lambda 0.3)."""
    distances = re_rank(query.flip_averaged, gallery.flip_averaged)
    return _percent(
        evaluate_distances(distances, query.pids, gallery.pids, query.camids, gallery.camids)
    )


class Clock:
    """Training seconds since the start of a run, with the time spent scoring taken out."""

    def __init__(self) -> None:
        self.start = time.perf_counter()
        self.paused = 0.0

    def training_seconds(self) -> float:
        return time.perf_counter() - self.start - self.paused

    @contextmanager
    def off(self) -> Iterator[None]:
        """Time spent inside (scoring) does not count as training."""
        begun = time.perf_counter()
        try:
            yield
        finally:
            self.paused += time.perf_counter() - begun

"""Embedding extraction shared by validation, evaluate, inference and the export check."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

Embedder = Callable[[Tensor], Tensor]


@dataclass
class Embeddings:
    """Embeddings of one split with the identity and camera of each image, in loader order."""

    features: Tensor
    pids: np.ndarray
    camids: np.ndarray


def embed_batch(embedder: Embedder, images: Tensor, flip: bool) -> Tensor:
    """Embed a batch; with ``flip`` also average the mirrored image (``with_flip_feature``)."""
    features = embedder(images)
    if flip:
        features = (features + embedder(torch.flip(images, dims=[3]))) / 2
    return features


@torch.inference_mode()
def extract_embeddings(
    embedder: Embedder,
    batches: Iterable[tuple[Tensor, Tensor, Tensor]],
    device: torch.device,
    flip: bool,
) -> Embeddings:
    """Run ``embedder`` over ``(image, pid, camid)`` batches; features come back on ``device``."""
    features, pids, camids = [], [], []
    for images, batch_pids, batch_camids in batches:
        features.append(embed_batch(embedder, images.to(device, non_blocking=True), flip).float())
        pids.append(np.asarray(batch_pids))
        camids.append(np.asarray(batch_camids))
    if not features:
        return Embeddings(torch.empty(0, 0, device=device), np.empty(0, int), np.empty(0, int))
    return Embeddings(torch.cat(features), np.concatenate(pids), np.concatenate(camids))

"""The device an action runs on, and a spec's query and gallery embedded by its model.

``evaluate`` and ``inference`` both start from :func:`embed_splits`; the gallery verbs place
their embedder with :func:`select_device`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from reidkit.actions.models import load_checked_embedder, resolve_checkpoint
from reidkit.config.spec import ExperimentSpec
from reidkit.data import ImageRecord, prepare_splits, resolve_preprocessing
from reidkit.engine.datamodule import eval_loader
from reidkit.errors import CheckpointError
from reidkit.evaluation.features import Embeddings, extract_embeddings
from reidkit.models.card import ModelCard


def select_device(gpu_ids: list[int]) -> torch.device:
    """The first of ``gpu_ids`` when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", gpu_ids[0] if gpu_ids else 0)
    return torch.device("cpu")


@dataclass
class EmbeddedSplits:
    """Query and gallery embeddings with the records they came from (same order)."""

    query: Embeddings
    gallery: Embeddings
    query_records: list[ImageRecord]
    gallery_records: list[ImageRecord]
    card: ModelCard
    model: Path  # the model file (a run folder resolved), which a calibration names


def embed_splits(spec: ExperimentSpec, action: str) -> EmbeddedSplits:
    """Load the model (checkpoint, ONNX file or run folder) and embed query and gallery.

    ``action`` names the spec section (``evaluate`` or ``inference``, both sharing one base)
    whose ``checkpoint``, ``query_dataset``, ``test_dataset``, ``batch_size`` and ``gpu_ids``
    apply; the dataset section's folders are the fallback.
    """
    settings = getattr(spec, action)
    if not settings.checkpoint:
        raise CheckpointError(
            f"{action}.checkpoint is not set; point it at a .pth checkpoint, an .onnx file or "
            "a results folder"
        )
    device = select_device(settings.gpu_ids)
    model = resolve_checkpoint(settings.checkpoint, f"{action}.checkpoint")
    embedder, card = load_checked_embedder(
        spec, model, f"{action}.checkpoint", gpu_id=settings.gpu_ids[0] if settings.gpu_ids else 0
    )
    if isinstance(embedder, torch.nn.Module):
        embedder = embedder.to(device)
    splits = prepare_splits(
        spec, train=False,
        query_dir=settings.query_dataset or spec.dataset.query_dataset_dir,
        gallery_dir=settings.test_dataset or spec.dataset.test_dataset_dir,
    )  # fmt: skip
    flip = spec.model.with_flip_feature

    def embed(records: list[ImageRecord]) -> Embeddings:
        loader = eval_loader(spec, records, settings.batch_size, resolve_preprocessing(card=card))
        return extract_embeddings(embedder, loader, device, flip)

    return EmbeddedSplits(
        embed(splits.query), embed(splits.gallery), splits.query, splits.gallery, card, model
    )

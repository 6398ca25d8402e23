"""The device an action runs on, and a spec's query and gallery embedded by its model.

``evaluate`` and ``inference`` both start from :func:`embed_splits`; the gallery verbs place
their embedder with :func:`select_device`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from reidkit.actions.lifecycle import EXPERIMENT, PENDING, STATUS
from reidkit.actions.models import load_checked_embedder, resolve_checkpoint
from reidkit.config.spec import ExperimentSpec
from reidkit.data import ImageRecord, prepare_splits, resolve_preprocessing
from reidkit.engine.datamodule import eval_loader
from reidkit.errors import CheckpointError, SpecError
from reidkit.evaluation.features import Embeddings, extract_embeddings
from reidkit.models.card import ModelCard
from reidkit.runlock import LOCK_FILE


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
        scored=action == "evaluate",
    )  # fmt: skip
    flip = spec.model.with_flip_feature

    def embed(records: list[ImageRecord]) -> Embeddings:
        loader = eval_loader(spec, records, settings.batch_size, resolve_preprocessing(card=card))
        embedded = extract_embeddings(embedder, loader, device, flip)
        require_finite(embedded, records, model, f"{action}.checkpoint")
        return embedded

    return EmbeddedSplits(
        embed(splits.query), embed(splits.gallery), splits.query, splits.gallery, card, model
    )


def require_finite(embedded: Embeddings, records: list[ImageRecord], model: Path, key: str) -> None:
    """Refuse embeddings holding NaN or infinity, naming the model and the first images.

    A model whose weights hold NaN (a training that diverged, a damaged copy) embeds every image
    as NaN: evaluate stopped with a traceback, and inference wrote ``NaN`` (not even JSON) for
    every image with exit 0.
    """
    bad = (~torch.isfinite(embedded.features).all(dim=1)).nonzero().flatten().tolist()
    if bad:
        shown = ", ".join(f"'{records[i].path}'" for i in bad[:3])
        raise CheckpointError(
            f"{key} '{model}' embeds {len(bad)} of {len(records)} images as NaN or infinity "
            f"(e.g. {shown}): its weights are broken (a diverged training?); point {key} at an "
            "earlier checkpoint"
        )


def require_distinct_outputs(data: EmbeddedSplits, folder: Path, outputs: dict[str, Path]) -> None:
    """Refuse an output path that is another output, the model, or one of the run's records.

    ``outputs`` maps what names each file (a spec key, or the file's own name for the fixed
    ones) to its path. Each file is written whole and renamed into place, so a collision is
    silent: ``inference.output_file=<results>/inference/status.json`` lost the embeddings to
    the run's status record with exit 0, and an ``evaluate.output_cmc_curve_plot`` named
    ``metrics.json`` replaced the metrics with a PNG.
    """
    taken = {(folder / name).resolve(): f"the run's own {name}" for name in (EXPERIMENT, STATUS)}
    taken |= {(folder / name).resolve(): f"the run's own {name}" for name in PENDING.values()}
    taken[(folder / LOCK_FILE).resolve()] = f"the run's lock {LOCK_FILE}"
    taken[data.model.resolve()] = f"the model '{data.model}'"
    for key, path in outputs.items():
        resolved = path.resolve()
        if resolved in taken:
            raise SpecError(
                f"{key} '{path}' is {taken[resolved]}, which this run writes or reads too; "
                "name another file"
            )
        taken[resolved] = f"where {key} goes"

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


def embed_splits(
    spec: ExperimentSpec, action: str, folder: Path, outputs: dict[str, Path]
) -> EmbeddedSplits:
    """Load the model (checkpoint, ONNX file or run folder) and embed query and gallery.

    ``action`` names the spec section (``evaluate`` or ``inference``, both sharing one base)
    whose ``checkpoint``, ``query_dataset``, ``test_dataset``, ``batch_size`` and ``gpu_ids``
    apply; the dataset section's folders are the fallback. ``outputs`` (what names each file
    the action will write in the run ``folder``, to its path) are checked against what the run
    reads before any model or image is loaded (:func:`_require_distinct_outputs`).
    """
    settings = getattr(spec, action)
    if not settings.checkpoint:
        raise CheckpointError(
            f"{action}.checkpoint is not set; point it at a .pth checkpoint, an .onnx file or "
            "a results folder"
        )
    model = resolve_checkpoint(settings.checkpoint, f"{action}.checkpoint")
    datasets = _split_datasets(spec, action)
    _require_distinct_outputs(folder, outputs, model, datasets)
    device = select_device(settings.gpu_ids)
    embedder, card = load_checked_embedder(
        spec, model, f"{action}.checkpoint", gpu_id=settings.gpu_ids[0] if settings.gpu_ids else 0
    )
    if isinstance(embedder, torch.nn.Module):
        embedder = embedder.to(device)
    query_dir, gallery_dir = datasets.values()
    splits = prepare_splits(
        spec, train=False, query_dir=query_dir, gallery_dir=gallery_dir,
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


def _split_datasets(spec: ExperimentSpec, action: str) -> dict[str, str | None]:
    """The query and gallery datasets the action reads, by the spec key that names each (the
    action's own key, else the dataset section's fallback); query first."""
    settings = getattr(spec, action)
    query_key, gallery_key = f"{action}.query_dataset", f"{action}.test_dataset"
    if not settings.query_dataset:
        query_key = "dataset.query_dataset_dir"
    if not settings.test_dataset:
        gallery_key = "dataset.test_dataset_dir"
    return {
        query_key: settings.query_dataset or spec.dataset.query_dataset_dir,
        gallery_key: settings.test_dataset or spec.dataset.test_dataset_dir,
    }


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


def _require_distinct_outputs(
    folder: Path, outputs: dict[str, Path], model: Path, datasets: dict[str, str | None]
) -> None:
    """Refuse an output path that is another output, the model, one of the run's records, or
    lies in a query or gallery dataset (a folder or an archive).

    ``outputs`` maps what names each file (a spec key, or the file's own name for the fixed
    ones) to its path. Each file is written whole and renamed into place, so a collision is
    silent: ``inference.output_file=<results>/inference/status.json`` lost the embeddings to
    the run's status record with exit 0, an ``evaluate.output_cmc_curve_plot`` named
    ``metrics.json`` replaced the metrics with a PNG, and an ``inference.output_file`` named
    like a query image replaced that image with JSON (and the next run read it as a broken
    image). Anything written into a dataset folder changes the dataset, so no output goes there.
    """
    taken = {(folder / name).resolve(): f"the run's own {name}" for name in (EXPERIMENT, STATUS)}
    taken |= {(folder / name).resolve(): f"the run's own {name}" for name in PENDING.values()}
    taken[(folder / LOCK_FILE).resolve()] = f"the run's lock {LOCK_FILE}"
    taken[model.resolve()] = f"the model '{model}'"
    read = {Path(path).resolve(): f"{key} '{path}'" for key, path in datasets.items() if path}
    for key, path in outputs.items():
        resolved = path.resolve()
        if resolved in taken:
            raise SpecError(
                f"{key} '{path}' is {taken[resolved]}, which this run writes or reads too; "
                "name another file"
            )
        dataset = next((d for d in read if d == resolved or d in resolved.parents), None)
        if dataset is not None:
            where = "is" if dataset == resolved else "is inside"
            raise SpecError(
                f"{key} '{path}' {where} {read[dataset]}, whose images this run reads; name a "
                "file outside the query and gallery datasets"
            )
        taken[resolved] = f"where {key} goes"

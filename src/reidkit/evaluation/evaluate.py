"""The evaluate action: CMC / mAP / mINP of a checkpoint or an ONNX model on query vs gallery."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reidkit.config.spec import ExperimentSpec, start_action
from reidkit.data import ImageRecord, prepare_splits
from reidkit.engine.datamodule import eval_loader
from reidkit.errors import CheckpointError
from reidkit.evaluation.features import Embeddings, extract_embeddings
from reidkit.evaluation.metrics import evaluate_distances, evaluate_features, pairwise_distance
from reidkit.evaluation.plots import plot_cmc_curve, plot_sampled_matches
from reidkit.evaluation.rerank import re_rank
from reidkit.export.runtime import load_embedder
from reidkit.outputs import write_json, write_status

log = logging.getLogger("reidkit")


@dataclass
class EmbeddedSplits:
    """Query and gallery embeddings with the records they came from (same order)."""

    query: Embeddings
    gallery: Embeddings
    query_records: list[ImageRecord]
    gallery_records: list[ImageRecord]


def select_device(gpu_ids: list[int]) -> torch.device:
    """The first of ``gpu_ids`` when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", gpu_ids[0] if gpu_ids else 0)
    return torch.device("cpu")


def embed_splits(spec: ExperimentSpec, action: str) -> EmbeddedSplits:
    """Load the model (checkpoint or ONNX) and embed the query and gallery splits.

    ``action`` names the spec section (``evaluate`` or ``inference``, both sharing one base)
    whose ``checkpoint``, ``query_dataset``, ``test_dataset``, ``batch_size`` and ``gpu_ids``
    apply; the dataset section's folders are the fallback.
    """
    settings = getattr(spec, action)
    checkpoint = settings.checkpoint
    if not checkpoint:
        raise CheckpointError(
            f"{action}.checkpoint is not set; point it at a .pth checkpoint or .onnx file"
        )
    embedder, _ = load_embedder(spec, checkpoint)
    device = select_device(settings.gpu_ids)
    if isinstance(embedder, torch.nn.Module):
        embedder = embedder.to(device)
    splits = prepare_splits(
        spec, train=False,
        query_dir=settings.query_dataset or spec.dataset.query_dataset_dir,
        gallery_dir=settings.test_dataset or spec.dataset.test_dataset_dir,
    )  # fmt: skip
    flip = spec.model.with_flip_feature

    def embed(records: list[ImageRecord]) -> Embeddings:
        loader = eval_loader(spec, records, settings.batch_size)
        return extract_embeddings(embedder, loader, device, flip)

    return EmbeddedSplits(embed(splits.query), embed(splits.gallery), splits.query, splits.gallery)


@dataclass
class EvaluationResult:
    """Metrics in percent (as written to metrics.json) and the files the action wrote."""

    metrics: dict[str, float]
    cmc: list[float]
    results_dir: Path
    plots: list[Path]


def evaluate(spec: ExperimentSpec) -> EvaluationResult:
    """Score ``evaluate.checkpoint`` with the Market-1501 protocol and write metrics and plots."""
    folder = start_action(spec, "evaluate")
    settings, ranking = spec.evaluate, spec.re_ranking
    data = embed_splits(spec, "evaluate")
    q, g = data.query, data.gallery
    distances = None
    if ranking.re_ranking:
        distances = re_rank(q.features, g.features, ranking.k1, ranking.k2, ranking.lambda_value)
        result = evaluate_distances(distances, q.pids, g.pids, q.camids, g.camids, ranking.max_rank)
    else:
        result = evaluate_features(
            q.features, g.features, q.pids, g.pids, q.camids, g.camids, ranking.max_rank
        )
    metrics = result.as_percent()
    cmc = [round(float(v) * 100, 2) for v in result.cmc]
    write_json(folder / "metrics.json", {**metrics, "cmc": cmc, "re_ranking": ranking.re_ranking})
    write_status(folder, "evaluate", "SUCCESS", "evaluation finished", kpi=metrics)
    plots = [
        plot_cmc_curve(
            result.cmc, Path(settings.output_cmc_curve_plot or folder / "cmc_curve.png")
        ),
        _matches_plot(
            spec,
            data,
            distances,
            Path(settings.output_sampled_matches_plot or folder / "sampled_matches.png"),
        ),
    ]
    print(metrics_table(metrics))
    return EvaluationResult(metrics, cmc, folder, plots)


def metrics_table(metrics: dict[str, Any]) -> str:
    """A small two-column table for the terminal."""
    width = max(len(name) for name in metrics)
    lines = [f"{'metric':<{width}}  value", f"{'-' * width}  -----"]
    lines += [f"{name:<{width}}  {value}" for name, value in metrics.items()]
    return "\n".join(lines)


def _matches_plot(
    spec: ExperimentSpec, data: EmbeddedSplits, distances: torch.Tensor | None, path: Path
) -> Path:
    """Top gallery images for queries spread evenly over the query set, as evaluated."""
    ranking = spec.re_ranking
    count = min(ranking.num_query, len(data.query_records))
    rows = np.unique(np.linspace(0, len(data.query_records) - 1, count).round().astype(int))
    q, g = data.query, data.gallery
    if distances is None:
        selected = pairwise_distance(q.features[rows], g.features)
    else:
        selected = torch.as_tensor(distances)[rows]
    selected = selected.float().cpu().clone()
    # The same-id same-camera removal of the protocol, so the plot shows what was scored.
    same = (q.pids[rows][:, None] == g.pids[None, :]) & (
        q.camids[rows][:, None] == g.camids[None, :]
    )
    selected[torch.from_numpy(same)] = float("inf")
    top = torch.topk(
        selected, min(ranking.max_rank, selected.shape[1]), largest=False
    ).indices.numpy()
    return plot_sampled_matches(
        [str(data.query_records[i].path) for i in rows], q.pids[rows], q.camids[rows],
        [str(r.path) for r in data.gallery_records], g.pids, g.camids, top, path,
    )  # fmt: skip

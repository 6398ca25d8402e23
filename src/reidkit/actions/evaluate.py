"""``reidkit evaluate``: CMC / mAP / mINP of a checkpoint or ONNX model on query vs gallery."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from reidkit.actions.embedding import EmbeddedSplits, embed_splits
from reidkit.actions.lifecycle import ActionRun, run_action
from reidkit.actions.models import CALIBRATION, record_calibration
from reidkit.actions.run_record import EvaluateOutcome
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import SpecError
from reidkit.evaluation.metrics import evaluate_distances, evaluate_features, pairwise_distance
from reidkit.evaluation.plots import plot_cmc_curve, plot_roc_curve, plot_sampled_matches
from reidkit.evaluation.rerank import re_rank
from reidkit.evaluation.roc import DEFAULT_FALSE_MATCH_RATES, roc_from_distances
from reidkit.outputs import write_json


@dataclass
class EvaluationResult:
    """Metrics in percent (as written to metrics.json) and the files the action wrote."""

    metrics: dict[str, float]
    cmc: list[float]
    results_dir: Path
    plots: list[Path]


def evaluate(spec: ExperimentSpec) -> EvaluationResult:
    """Score ``evaluate.checkpoint`` with the Market-1501 protocol and write metrics and plots."""
    with run_action(spec, "evaluate") as run:
        return _evaluate(spec, run)


def _check_re_ranking(k1: int, k2: int, images: int) -> None:
    """k-reciprocal re-ranking looks at k1 + 1 (and k2) neighbours among all images."""
    needed = max(k1 + 1, k2)
    if images < needed:
        raise SpecError(
            f"re_ranking.k1 {k1} / re_ranking.k2 {k2} need at least {needed} query + gallery "
            f"images, there are {images}; lower re_ranking.k1 and re_ranking.k2"
        )


def _evaluate(spec: ExperimentSpec, run: ActionRun) -> EvaluationResult:
    folder = run.folder
    settings, ranking = spec.evaluate, spec.re_ranking
    plot_files = {
        "evaluate.output_cmc_curve_plot": settings.output_cmc_curve_plot
        or folder / "cmc_curve.png",
        "evaluate.output_sampled_matches_plot": (
            settings.output_sampled_matches_plot or folder / "sampled_matches.png"
        ),
        "evaluate.output_roc_curve_plot": settings.output_roc_curve_plot
        or folder / "roc_curve.png",
    }
    plots_at = {key: Path(value) for key, value in plot_files.items()}
    records = {name: folder / name for name in ("metrics.json", "model_card.json", CALIBRATION)}
    data = embed_splits(spec, "evaluate", folder, records | plots_at)
    q, g = data.query, data.gallery
    distances = None
    if ranking.re_ranking:
        _check_re_ranking(ranking.k1, ranking.k2, len(q.pids) + len(g.pids))
        distances = re_rank(q.features, g.features, ranking.k1, ranking.k2, ranking.lambda_value)
        result = evaluate_distances(distances, q.pids, g.pids, q.camids, g.camids, ranking.max_rank)
    else:
        result = evaluate_features(
            q.features, g.features, q.pids, g.pids, q.camids, g.camids, ranking.max_rank
        )
    metrics = result.as_percent()
    cmc = [round(float(v) * 100, 2) for v in result.cmc]
    # The "unknown person" threshold is calibrated on the plain distance, the one a gallery
    # search reports, even when the ranking above was re-ranked.
    plain = pairwise_distance(q.features, g.features)
    roc = roc_from_distances(plain, q.pids, g.pids, q.camids, g.camids)
    target = settings.target_false_match_rate
    threshold = roc.threshold_at(target)
    card = data.card.with_threshold(threshold, target)
    verification = {
        **roc.summary(),
        "target_false_match_rate": target,
        "match_threshold": round(threshold, 6),
        "true_match_rate_at_target": round(roc.true_match_rate(threshold) * 100.0, 2),
    }
    write_json(
        folder / "metrics.json",
        {**metrics, "cmc": cmc, "re_ranking": ranking.re_ranking, "verification": verification},
    )
    write_json(folder / "model_card.json", card.to_dict())
    record_calibration(folder, data.model, card)
    plots = [
        plot_cmc_curve(result.cmc, plots_at["evaluate.output_cmc_curve_plot"]),
        _matches_plot(spec, data, distances, plots_at["evaluate.output_sampled_matches_plot"]),
        plot_roc_curve(
            *roc.points(),
            plots_at["evaluate.output_roc_curve_plot"],
            {
                rate: (roc.true_match_rate(roc.threshold_at(rate)), roc.threshold_at(rate))
                for rate in sorted({*DEFAULT_FALSE_MATCH_RATES, target})
            },
        ),
    ]
    print(metrics_table(metrics))
    print(
        f"match_threshold {threshold:.4f} at false-match rate {target:g} (true-match rate "
        f"{verification['true_match_rate_at_target']}%), recorded in {folder / 'model_card.json'} "
        "(export, gallery and serve on this results_dir take it for this model)"
    )
    run.succeed("evaluation finished", metrics, EvaluateOutcome(match_threshold=threshold))
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

"""Evaluation: ranking metrics, k-reciprocal re-ranking and plots.

Names are resolved on first use (PEP 562) so that importing one piece, e.g. the metrics during
training, does not pull in matplotlib.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

_EXPORTS = {
    "RankingResult": "reidkit.evaluation.metrics",
    "evaluate_distances": "reidkit.evaluation.metrics",
    "evaluate_features": "reidkit.evaluation.metrics",
    "normalize_features": "reidkit.evaluation.metrics",
    "pairwise_distance": "reidkit.evaluation.metrics",
    "re_rank": "reidkit.evaluation.rerank",
    "plot_cmc_curve": "reidkit.evaluation.plots",
    "plot_roc_curve": "reidkit.evaluation.plots",
    "RocCurve": "reidkit.evaluation.roc",
    "roc_from_distances": "reidkit.evaluation.roc",
    "plot_sampled_matches": "reidkit.evaluation.plots",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'reidkit.evaluation' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)

"""Verification ROC of query-gallery pairs, and the "unknown person" distance threshold.

Ranking metrics (CMC, mAP) say how well the right person is ordered first; a site gallery also
has to say whether the nearest crop is that person at all. That is a verification question:
for a distance threshold ``t``, the false-match rate (FMR) is the fraction of different-person
pairs with distance ``<= t`` and the true-match rate (TMR) the fraction of same-person pairs
with distance ``<= t``. The pairs follow the Market-1501 protocol of the ranking metrics: a
query and a gallery image of the same person seen by the same camera are neither a match nor a
non-match (the task is cross-camera), so they are left out.

:meth:`RocCurve.threshold_at` gives the largest threshold whose FMR on these pairs does not
exceed a target; ``evaluate`` records it as the model card's ``match_threshold``, so every
gallery built with the model decides match/unknown with it.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

DEFAULT_FALSE_MATCH_RATES = (1e-2, 1e-3, 1e-4)
# Distance-matrix rows per block when splitting pairs (keeps the masks a few tens of MB).
_ROW_BLOCK = 1024


@dataclass(frozen=True)
class RocCurve:
    """Sorted distances of the same-person (genuine) and different-person (impostor) pairs."""

    genuine: np.ndarray
    impostor: np.ndarray

    def false_match_rate(self, threshold: float) -> float:
        """Fraction of different-person pairs at distance ``<= threshold``."""
        return _fraction_at_most(self.impostor, threshold)

    def true_match_rate(self, threshold: float) -> float:
        """Fraction of same-person pairs at distance ``<= threshold``."""
        return _fraction_at_most(self.genuine, threshold)

    def threshold_at(self, false_match_rate: float) -> float:
        """The largest distance threshold whose FMR is at most ``false_match_rate``.

        With ``m = floor(rate * impostors)`` pairs allowed below it, the threshold lies between
        the m-th and the (m+1)-th closest impostor: at their midpoint, or just below the latter
        when they tie. Rates below one pair (``m = 0``) give a threshold just below the closest
        impostor, so a too-ambitious target degrades to "no impostor accepted".
        """
        if not 0.0 < false_match_rate <= 1.0:
            raise ValueError(f"false_match_rate must be in (0, 1], got {false_match_rate}")
        n = len(self.impostor)
        if n == 0:
            raise ValueError("there are no different-person pairs to calibrate on")
        allowed = int(np.floor(false_match_rate * n + 1e-9))
        if allowed >= n:
            return float(max(self.impostor[-1], self.genuine[-1] if len(self.genuine) else 0))
        above = float(self.impostor[allowed])
        below = float(self.impostor[allowed - 1]) if allowed > 0 else None
        if below is not None and below < above:
            middle = (below + above) / 2.0
            return middle if middle < above else below
        return float(np.nextafter(above, -np.inf))

    def summary(
        self, false_match_rates: Sequence[float] = DEFAULT_FALSE_MATCH_RATES
    ) -> dict[str, float | int]:
        """TMR (percent, 2 decimals) and threshold at each FMR, plus the pair counts."""
        out: dict[str, float | int] = {}
        for rate in false_match_rates:
            threshold = self.threshold_at(rate)
            out[f"tmr_at_fmr_{rate:g}"] = round(self.true_match_rate(threshold) * 100.0, 2)
            out[f"threshold_at_fmr_{rate:g}"] = round(threshold, 6)
        out["genuine_pairs"] = len(self.genuine)
        out["impostor_pairs"] = len(self.impostor)
        return out

    def points(self, num: int = 200) -> tuple[np.ndarray, np.ndarray]:
        """(FMR, TMR) at ``num`` log-spaced false-match rates from one pair to all of them."""
        n = len(self.impostor)
        rates = np.unique(np.geomspace(1.0 / n, 1.0, num))
        thresholds = [self.threshold_at(rate) for rate in rates]
        fmr = np.array([self.false_match_rate(t) for t in thresholds])
        tmr = np.array([self.true_match_rate(t) for t in thresholds])
        return fmr, tmr


def _fraction_at_most(sorted_values: np.ndarray, threshold: float) -> float:
    if len(sorted_values) == 0:
        return 0.0
    return float(np.searchsorted(sorted_values, threshold, side="right")) / len(sorted_values)


def roc_from_distances(
    dist: Tensor | np.ndarray,
    q_pids: Tensor | np.ndarray,
    g_pids: Tensor | np.ndarray,
    q_camids: Tensor | np.ndarray,
    g_camids: Tensor | np.ndarray,
) -> RocCurve:
    """Split a ``[q, g]`` distance matrix into genuine and impostor pairs (see the module)."""
    dist = torch.as_tensor(dist)
    q_pids, g_pids = torch.as_tensor(q_pids), torch.as_tensor(g_pids)
    q_camids, g_camids = torch.as_tensor(q_camids), torch.as_tensor(g_camids)
    genuine, impostor = [], []
    for start in range(0, dist.shape[0], _ROW_BLOCK):
        stop = min(start + _ROW_BLOCK, dist.shape[0])
        same_id = q_pids[start:stop, None] == g_pids[None, :]
        same_cam = q_camids[start:stop, None] == g_camids[None, :]
        block = dist[start:stop]
        genuine.append(block[same_id & ~same_cam])
        impostor.append(block[~same_id])
    return RocCurve(
        genuine=np.sort(torch.cat(genuine).numpy()),
        impostor=np.sort(torch.cat(impostor).numpy()),
    )

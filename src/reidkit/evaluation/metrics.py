"""CMC, mAP and mINP under the Market-1501 protocol, without sorting the distance matrix.

The protocol (torchreid's ``evaluate_rank``): for each query, gallery images with the same id
AND the same camera are removed; a query with no remaining true match is skipped; CMC is cut at
``max_rank``; AP is the mean of the precision at each true match; mINP (Ye et al., AGW) is the
number of true matches over the rank of the hardest one.

Every one of these metrics depends only on the ranks of the true matches, so instead of
argsorting each gallery row (O(g log g) per query, the cost that dominates torchreid) we count,
for each true match, how many valid non-matches are at least as close: one vectorised comparison
of the row against the query's few match distances (O(g * matches) per query, streamed through
cache-sized blocks). That count is exact, needs no sort, and runs unchanged on any torch device.

Ties: numpy's default ``argsort`` that torchreid uses is not stable (on AVX-512 CPUs it is a
SIMD sort), so torchreid orders tied distances arbitrarily and its score on ties depends on the
CPU. Only ties between a true match and a non-match change a metric, and we rank such ties
pessimistically: the non-match comes first. The result is deterministic, independent of gallery
order, never higher than torchreid's, and equal to it whenever no true match is tied with a
non-match (the normal case for real-valued features).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from reidkit.errors import DatasetError

ArrayLike = np.ndarray | Tensor

# Comparisons (rows x matches x gallery) per block, 16 MB of float32: mostly cache-resident,
# and enough work per op to amortise its dispatch and thread wake-up, which dominate on a busy
# machine when blocks are small.
_COMPARE_BLOCK = 1 << 22
_DEFAULT_CHUNK_SIZE = 512


@dataclass
class RankingResult:
    """Ranking metrics over the valid queries; ``cmc`` and ``mAP``/``mINP`` are fractions."""

    cmc: np.ndarray
    mAP: float
    mINP: float
    num_valid_queries: int

    def as_percent(self) -> dict[str, float | int]:
        """The KPI dict that TAO reports: percentages rounded to 2 decimals (TAO's status.json
        rounds the mAP *fraction* to one decimal, which loses the figure)."""
        out: dict[str, float | int] = {}
        for rank in (1, 5, 10):
            if rank <= len(self.cmc):
                out[f"cmc_rank_{rank}"] = round(float(self.cmc[rank - 1]) * 100.0, 2)
        out["mAP"] = round(self.mAP * 100.0, 2)
        out["mINP"] = round(self.mINP * 100.0, 2)
        out["num_valid_queries"] = self.num_valid_queries
        return out


def normalize_features(x: Tensor) -> Tensor:
    """L2-normalise rows so that squared Euclidean distance ranks like cosine similarity."""
    return torch.nn.functional.normalize(x, p=2.0, dim=1)


def _as_float(x: Tensor) -> Tensor:
    """Half-precision features are upcast: their dot products would tie or reorder matches."""
    return x if x.dtype in (torch.float32, torch.float64) else x.float()


def _normalized_distance(qn: Tensor, gn: Tensor) -> Tensor:
    """``2 - 2 cos`` for already normalised rows, in one fused matmul."""
    return torch.addmm(
        torch.full((1,), 2.0, dtype=qn.dtype, device=qn.device), qn, gn.T, alpha=-2.0
    )


def pairwise_distance(qf: Tensor, gf: Tensor) -> Tensor:
    """Squared Euclidean distance between L2-normalised rows, ``2 - 2 cos`` ([q, g]).

    Not clamped at zero: rounding can give about -1e-7 for identical vectors, and clamping
    would turn such near-duplicates into artificial ties.
    """
    qf = _as_float(qf)
    return _normalized_distance(normalize_features(qf), normalize_features(gf.to(qf.dtype)))


class _MatchPlan:
    """Per query: the gallery columns of its true matches and of every same-id image.

    Built once from the labels (O(q * images per id)); the ranking then only gathers these
    columns from each distance row.
    """

    def __init__(self, q_pids: Tensor, g_pids: Tensor, q_camids: Tensor, g_camids: Tensor) -> None:
        order = torch.argsort(g_pids, stable=True)
        ids, counts = torch.unique_consecutive(g_pids[order], return_counts=True)
        starts = torch.cumsum(counts, 0) - counts
        slot = torch.searchsorted(ids, q_pids).clamp(max=len(ids) - 1)
        found = ids[slot] == q_pids
        same_id_count = torch.where(found, counts[slot], 0)
        width = int(same_id_count.max())
        offsets = torch.arange(width, device=g_pids.device)
        in_group = offsets < same_id_count[:, None]
        # Gallery columns of every same-id image, left-aligned; padding points at column 0.
        columns = order[(starts[slot][:, None] + offsets).clamp(max=len(order) - 1)]
        columns = torch.where(in_group, columns, 0)
        is_match = in_group & (g_camids[columns] != q_camids[:, None])
        # Left-align the true matches (a stable sort keeps them in gallery order).
        match_first = torch.argsort((~is_match).to(torch.uint8), dim=1, stable=True)
        self.same_id_columns = columns
        self.same_id_mask = in_group
        self.match_columns = torch.gather(columns, 1, match_first)
        self.num_matches = is_match.sum(1)


def _count_at_most(dist: Tensor, thresholds: Tensor, widths: Tensor) -> Tensor:
    """``counts[i, j]`` = number of entries of ``dist[i]`` that are <= ``thresholds[i, j]``, for
    the first ``widths[i]`` thresholds of each row (the others are left 0).

    Rows are reordered by width once, so that each block is a contiguous slice of about
    ``_COMPARE_BLOCK`` comparisons with little padding. The comparison writes 0/1 in the
    distances' own dtype: torch's CPU kernel is vectorised for that and ~4x slower when writing
    booleans; float32 sums of 0/1 are exact below 2**24.
    """
    num_gallery = dist.shape[1]
    sum_dtype = torch.float64 if num_gallery >= 2**24 else dist.dtype
    order = torch.argsort(widths)
    sorted_widths = widths[order].tolist()
    dist, thresholds = dist[order], thresholds[order]
    counts = torch.zeros(thresholds.shape, dtype=sum_dtype, device=dist.device)
    buffer_size = max(_COMPARE_BLOCK, num_gallery * thresholds.shape[1])
    buffer = torch.empty(buffer_size, dtype=dist.dtype, device=dist.device)
    start = sorted_widths.count(0)
    while start < len(order):
        # Size the block by the widest row it could reach, so it never exceeds the budget.
        reach = start + _COMPARE_BLOCK // (sorted_widths[start] * num_gallery)
        widest = sorted_widths[min(reach, len(order)) - 1]
        stop = min(start + max(1, _COMPARE_BLOCK // (widest * num_gallery)), len(order))
        width = sorted_widths[stop - 1]
        at_most = buffer[: (stop - start) * width * num_gallery].view(-1, width, num_gallery)
        torch.le(dist[start:stop, None, :], thresholds[start:stop, :width, None], out=at_most)
        torch.sum(at_most, 2, dtype=sum_dtype, out=counts[start:stop, :width])
        start = stop
    return torch.empty_like(counts, dtype=torch.int64).index_copy_(0, order, counts.long())


def _stats_for_rows(
    dist: Tensor, plan: _MatchPlan, rows: Tensor, max_rank: int
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Per-query AP, INP, first-match rank (capped at ``max_rank``) and validity, for the
    queries ``rows`` whose distance rows are ``dist``."""
    n = plan.num_matches[rows]
    valid = n > 0
    width = max(1, int(n.max()))
    slots = torch.arange(width, device=dist.device)
    is_slot = slots < n[:, None]
    # True-match distances, ascending, NaN-padded (NaN compares false, so padding counts
    # nothing).
    nan = torch.tensor(float("nan"), dtype=dist.dtype, device=dist.device)
    match_d = torch.gather(dist, 1, plan.match_columns[rows, :width])
    match_d = torch.sort(torch.where(is_slot, match_d, nan), dim=1).values
    if torch.isnan(match_d[is_slot]).any():
        raise ValueError("the distance matrix has NaN at a true match")
    same_id_d = torch.gather(dist, 1, plan.same_id_columns[rows])
    same_id_d = torch.where(plan.same_id_mask[rows], same_id_d, nan)
    same_id_at_most = torch.le(same_id_d[:, None, :], match_d[:, :, None]).sum(2)
    # 0-based rank among the valid gallery: the non-matches at least as close (ties go
    # against the query), then the true matches before this one.
    non_match_at_most = _count_at_most(dist, match_d, n) - same_id_at_most
    ranks = (non_match_at_most + slots).to(torch.float64)
    n_safe = n.clamp(min=1)
    precision = torch.where(is_slot, (slots + 1) / (ranks + 1), 0.0)
    ap = torch.where(valid, precision.sum(1) / n_safe, 0.0)
    hardest = torch.gather(ranks, 1, (n_safe - 1)[:, None]).squeeze(1)
    inp = torch.where(valid, n / (hardest + 1), 0.0)
    first = ranks[:, 0].to(torch.int64).clamp(max=max_rank)
    return ap, inp, first, valid


class _Accumulator:
    """Sums per-query statistics across chunks so no chunk's rows are kept."""

    def __init__(self, max_rank: int, device: torch.device) -> None:
        self.max_rank = max_rank
        self.first_rank_counts = torch.zeros(max_rank + 1, dtype=torch.int64, device=device)
        self.ap_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.inp_sum = torch.zeros((), dtype=torch.float64, device=device)
        self.num_valid = torch.zeros((), dtype=torch.int64, device=device)

    def add(self, ap: Tensor, inp: Tensor, first: Tensor, valid: Tensor) -> None:
        self.ap_sum += ap.sum()
        self.inp_sum += inp.sum()
        self.num_valid += valid.sum()
        self.first_rank_counts += torch.bincount(first[valid], minlength=self.max_rank + 1)

    def result(self) -> RankingResult:
        num_valid = int(self.num_valid)
        if num_valid == 0:
            raise DatasetError(
                "no query has a valid match in the gallery (every query id is missing from the "
                "gallery or seen only by the query's own camera): check the query/gallery split"
            )
        counts = self.first_rank_counts[: self.max_rank].double().cpu().numpy()
        return RankingResult(
            cmc=np.cumsum(counts) / num_valid,
            mAP=float(self.ap_sum) / num_valid,
            mINP=float(self.inp_sum) / num_valid,
            num_valid_queries=num_valid,
        )


def _labels(values: ArrayLike, name: str, length: int, device: torch.device) -> Tensor:
    """Ids or camera ids as an int64 tensor on ``device``, checked against the matrix shape."""
    labels = torch.as_tensor(np.asarray(values) if not isinstance(values, Tensor) else values)
    labels = labels.to(device=device, dtype=torch.int64).reshape(-1)
    if len(labels) != length:
        raise ValueError(f"{name} has {len(labels)} entries, expected {length}")
    return labels


def _prepare(
    num_query: int,
    num_gallery: int,
    device: torch.device,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int,
) -> tuple[_MatchPlan, _Accumulator]:
    if max_rank < 1:
        raise ValueError(f"max_rank must be >= 1, got {max_rank}")
    if num_query == 0 or num_gallery == 0:
        raise DatasetError(f"cannot evaluate {num_query} queries against {num_gallery} gallery")
    plan = _MatchPlan(
        _labels(q_pids, "q_pids", num_query, device),
        _labels(g_pids, "g_pids", num_gallery, device),
        _labels(q_camids, "q_camids", num_query, device),
        _labels(g_camids, "g_camids", num_gallery, device),
    )
    # Like torchreid, a gallery smaller than max_rank shortens the CMC curve.
    return plan, _Accumulator(min(max_rank, num_gallery), device)


def evaluate_distances(
    distmat: ArrayLike,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
) -> RankingResult:
    """CMC / mAP / mINP from a query x gallery distance matrix (numpy or torch, any device).

    Works in the matrix's own precision (float32 stays float32), with memory bounded by one
    block of comparisons, and never sorts a gallery row. See the module doc for tie handling.
    Raises :class:`~reidkit.errors.DatasetError` when no query has a valid match.
    """
    dist = torch.as_tensor(distmat)
    if dist.dim() != 2:
        raise ValueError(f"distmat must be 2-D [query, gallery], got shape {tuple(dist.shape)}")
    if dist.dtype not in (torch.float32, torch.float64):
        # Exact for half precision (float32 holds every value) and for integers below 2**53.
        dist = dist.float() if dist.is_floating_point() else dist.double()
    num_query, num_gallery = dist.shape
    plan, acc = _prepare(
        num_query, num_gallery, dist.device, q_pids, g_pids, q_camids, g_camids, max_rank
    )
    for start in range(0, num_query, _DEFAULT_CHUNK_SIZE):
        rows = torch.arange(start, min(start + _DEFAULT_CHUNK_SIZE, num_query), device=dist.device)
        acc.add(*_stats_for_rows(dist[start : start + len(rows)], plan, rows, acc.max_rank))
    return acc.result()


def evaluate_features(
    qf: Tensor,
    gf: Tensor,
    q_pids: ArrayLike,
    g_pids: ArrayLike,
    q_camids: ArrayLike,
    g_camids: ArrayLike,
    max_rank: int = 50,
    chunk_size: int = _DEFAULT_CHUNK_SIZE,
) -> RankingResult:
    """CMC / mAP / mINP straight from features, on the features' device.

    Distances are :func:`pairwise_distance`, built ``chunk_size`` query rows at a time, so peak
    memory is about ``chunk_size * num_gallery`` distances plus the normalised features: the
    full q x g matrix never exists. Results equal ``evaluate_distances(pairwise_distance(...))``.
    """
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features must be [n, d] with equal d, got {qf.shape} and {gf.shape}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")
    qn = normalize_features(_as_float(qf))
    gn = normalize_features(_as_float(gf)).to(qn.dtype)
    plan, acc = _prepare(len(qn), len(gn), qn.device, q_pids, g_pids, q_camids, g_camids, max_rank)
    for start in range(0, len(qn), chunk_size):
        block = qn[start : start + chunk_size]
        rows = torch.arange(start, start + len(block), device=qn.device)
        acc.add(*_stats_for_rows(_normalized_distance(block, gn), plan, rows, acc.max_rank))
    return acc.result()

"""Exact k-reciprocal re-ranking (Zhong et al., CVPR 2017) in memory that grows with q x g only.

The reference implementation (Zhong's, as shipped by torchreid and TAO) holds several dense
(q+g)^2 matrices (distances, their argsort, the V encodings) and loops over every image in
Python: about 9 GB and 50-140 s on a Market-sized split, and out of memory on large galleries.
Yet each step only needs a handful of numbers per image:

1. the k1+1 nearest neighbours of every image (and its largest distance, which the reference
   uses to scale rows): one pass over the (q+g)^2 distances in square blocks, each computed
   once for both of its row ranges (the matrix is symmetric), keeping a running top-k;
2. the k-reciprocal sets, their expansion and the V encodings: at most
   (k1+1) * (round(k1/2)+2) entries per image, built with batched gathers and compares;
3. query expansion over the k2 nearest neighbours: a sparse average;
4. the Jaccard distance, for query x gallery only, by intersecting the queries' sparse V rows
   with an inverted index of the gallery's (sum of element-wise minima).

Everything runs on the features' device with torch ops; the result agrees with the reference
given the same original distances (up to float32 rounding, and to the order the reference's
unstable argsort gives exactly tied distances).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
from torch import Tensor

from reidkit.evaluation.metrics import _as_float, _normalized_distance

# Temporary elements allowed per batched step (gathers, compares, pair lists) outside the
# distance blocks: about 16 MB per int64 buffer, a few buffers alive at once.
_STEP_ELEMENTS = 1 << 21


def _merge_top_k(
    best_d: Tensor, best_i: Tensor, block: Tensor, column_offset: int, by_column: bool
) -> None:
    """Fold a distance block into the running (ascending) top-k of each row, in place.

    The rows are the block's rows, or its columns when ``by_column`` (the symmetric half that
    is never computed). Once a row holds k neighbours, only entries below its current k-th
    distance can enter, and after the first block or two those are a few per row: selecting
    them with one comparison is several times cheaper than a top-k over the block.
    """
    num_rows, k = best_d.shape
    if torch.isinf(best_d[:, -1]).any():
        rows_first = block.T.contiguous() if by_column else block
        d, i = torch.topk(rows_first, min(k, rows_first.shape[1]), dim=1, largest=False)
    else:
        bound = best_d[:, -1]
        if by_column:
            cols, rows = torch.nonzero(block < bound[None, :], as_tuple=True)
            order = torch.argsort(rows, stable=True)
            rows, cols = rows[order], cols[order]
            values = block[cols, rows]
        else:
            rows, cols = torch.nonzero(block < bound[:, None], as_tuple=True)
            values = block[rows, cols]
        if len(rows) == 0:
            return
        # Left-align each row's candidates (now listed row by row), padded with inf.
        per_row = torch.bincount(rows, minlength=num_rows)
        slot = torch.arange(len(rows), device=rows.device) - (per_row.cumsum(0) - per_row)[rows]
        width = int(per_row.max())
        d = torch.full((num_rows, width), float("inf"), dtype=block.dtype, device=block.device)
        i = torch.zeros((num_rows, width), dtype=torch.int64, device=block.device)
        d[rows, slot] = values
        i[rows, slot] = cols
    d = torch.cat([best_d, d], dim=1)
    i = torch.cat([best_i, i + column_offset], dim=1)
    order = torch.topk(d, k, dim=1, largest=False, sorted=True).indices
    best_d.copy_(torch.gather(d, 1, order))
    best_i.copy_(torch.gather(i, 1, order))


def _neighbour_pass(
    feats: Tensor, k: int, num_query: int, query_gallery_out: Tensor, block_size: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Top-k neighbours of every image with their squared distances (ascending), and its
    largest squared distance; writes the query x gallery squared distances into
    ``query_gallery_out``.

    The reference ranks ``d**2`` (its "original distance" squares the squared Euclidean
    distance), so the same is ranked here.
    """
    n = len(feats)
    best_d = torch.full((n, k), float("inf"), dtype=feats.dtype, device=feats.device)
    best_i = torch.zeros((n, k), dtype=torch.int64, device=feats.device)
    row_max = torch.zeros(n, dtype=feats.dtype, device=feats.device)
    starts = range(0, n, block_size)
    for a, i0 in enumerate(starts):
        i1 = min(i0 + block_size, n)
        for j0 in starts[a:]:
            j1 = min(j0 + block_size, n)
            sq = _normalized_distance(feats[i0:i1], feats[j0:j1]).square_()
            _merge_top_k(best_d[i0:i1], best_i[i0:i1], sq, j0, by_column=False)
            torch.maximum(row_max[i0:i1], sq.amax(1), out=row_max[i0:i1])
            if j0 != i0:
                _merge_top_k(best_d[j0:j1], best_i[j0:j1], sq, i0, by_column=True)
                torch.maximum(row_max[j0:j1], sq.amax(0), out=row_max[j0:j1])
            # Queries come first, so query x gallery entries only appear above the diagonal.
            q1, g0 = min(i1, num_query), max(j0, num_query)
            if i0 < q1 and g0 < j1:
                query_gallery_out[i0:q1, g0 - num_query : j1 - num_query] = sq[: q1 - i0, g0 - j0 :]
    return best_i, best_d, row_max


def _reciprocal_mask(ranked: Tensor) -> Tensor:
    """``mask[i, a]``: image i is among the neighbours listed in ``ranked`` of ``ranked[i, a]``."""
    n, k = ranked.shape
    mask = torch.empty((n, k), dtype=torch.bool, device=ranked.device)
    step = max(1, _STEP_ELEMENTS // (k * k))
    for s in range(0, n, step):
        rows = ranked[s : s + step]
        me = torch.arange(s, s + len(rows), device=ranked.device)
        mask[s : s + step] = (ranked[rows] == me[:, None, None]).any(2)
    return mask


def _compact(columns: Tensor, sentinel: int) -> Tensor:
    """Sort each row, drop repeats and trailing sentinels: padded sets of distinct columns."""
    columns = torch.sort(columns, dim=1).values
    repeat = torch.zeros_like(columns, dtype=torch.bool)
    repeat[:, 1:] = columns[:, 1:] == columns[:, :-1]
    columns = torch.sort(columns.masked_fill(repeat, sentinel), dim=1).values
    width = int((columns < sentinel).sum(1).max())
    return columns[:, :width]


def _expansion_sets(neighbours: Tensor, k1: int) -> Tensor:
    """The expanded k-reciprocal set R*(i) of every image, as padded sorted columns.

    R(i) holds the k1+1 nearest neighbours that also have i among theirs; each member c of
    R(i) adds its own round(k1/2)-reciprocal set when more than 2/3 of that set lies in R(i).
    """
    n = len(neighbours)
    near = neighbours[:, : k1 + 1]
    # Python's round, like numpy's around in the reference, rounds halves to even.
    half = neighbours[:, : round(k1 / 2) + 1]
    near_ok = _reciprocal_mask(near)
    half_ok = _reciprocal_mask(half)
    half_size = half_ok.sum(1).double()
    k, h = near.shape[1], half.shape[1]
    step = max(1, _STEP_ELEMENTS // (k * k * h))
    parts = []
    for s in range(0, n, step):
        cand, cand_ok = near[s : s + step], near_ok[s : s + step]
        members, members_ok = half[cand], half_ok[cand]
        in_r = (members[..., None] == cand[:, None, None, :]) & cand_ok[:, None, None, :]
        overlap = (in_r.any(3) & members_ok).sum(2).double()
        # Same float comparison as the reference, so a 2/3 boundary case decides alike.
        accept = cand_ok & (overlap > (2.0 / 3.0) * half_size[cand])
        added = members.masked_fill(~(accept[..., None] & members_ok), n).flatten(1)
        parts.append(torch.cat([cand.masked_fill(~cand_ok, n), added], dim=1))
    return _compact(torch.cat(parts), n)


def _encode(
    feats: Tensor,
    columns: Tensor,
    neighbours: Tensor,
    neighbour_sq: Tensor,
    row_max: Tensor,
) -> Tensor:
    """V: weights exp(-original distance) over each R*(i), normalised to sum 1 per row.

    Most members of R*(i) are among i's k1+1 nearest neighbours, whose squared distances the
    neighbour pass kept; the others (members added through a neighbour's set) are recomputed
    as single dot products.
    """
    n, width = columns.shape
    valid = columns < n
    sq = torch.zeros(columns.shape, dtype=feats.dtype, device=feats.device)
    found = torch.zeros_like(valid)
    step = max(1, _STEP_ELEMENTS // max(1, width * neighbours.shape[1]))
    for s in range(0, n, step):
        match = columns[s : s + step, :, None] == neighbours[s : s + step, None, :]
        found[s : s + step] = match.any(2)
        sq[s : s + step] = torch.where(match, neighbour_sq[s : s + step, None, :], 0.0).sum(2)
    rows, slots = torch.nonzero(valid & ~found, as_tuple=True)
    others = columns[rows, slots]
    step = max(1, _STEP_ELEMENTS // feats.shape[1])
    for s in range(0, len(rows), step):
        dots = (feats[rows[s : s + step]] * feats[others[s : s + step]]).sum(1)
        sq[rows[s : s + step], slots[s : s + step]] = (2.0 - 2.0 * dots).square_()
    weights = torch.exp(-(sq / row_max[:, None])).masked_fill_(~valid, 0.0)
    return weights / weights.sum(1, keepdim=True)


def _query_expansion(
    columns: Tensor, weights: Tensor, neighbours: Tensor, k2: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Sparse rows of V averaged over each image's k2 nearest neighbours, as COO
    (row, column, value) sorted by row then column."""
    n, width = columns.shape
    rows_out, cols_out, vals_out = [], [], []
    step = max(1, _STEP_ELEMENTS // max(1, k2 * width))
    for s in range(0, n, step):
        near = neighbours[s : s + step, :k2]
        local = torch.arange(len(near), device=columns.device)[:, None]
        key = (local * (n + 1) + columns[near].flatten(1)).flatten()
        uniq, inverse = torch.unique(key, sorted=True, return_inverse=True)
        vals = torch.zeros(len(uniq), dtype=weights.dtype, device=weights.device)
        vals.index_add_(0, inverse, weights[near].flatten())
        col = uniq % (n + 1)
        keep = col < n
        rows_out.append(uniq[keep] // (n + 1) + s)
        cols_out.append(col[keep])
        vals_out.append(vals[keep] / k2)
    return torch.cat(rows_out), torch.cat(cols_out), torch.cat(vals_out)


def _split_entries(
    sparse: tuple[Tensor, Tensor, Tensor], first_column_row: int, num_columns: int
) -> tuple[tuple[Tensor, Tensor, Tensor], tuple[Tensor, Tensor, Tensor, Tensor]]:
    """Split sparse V rows into the rows whose distances are wanted and an inverted index.

    Rows below ``first_column_row`` are the "query" side: the result has one row per such
    row. Rows from ``first_column_row`` on are the "gallery" side, indexed by V column: their
    (row, value) pairs sorted by column with each column's start and count. Passing 0 puts
    every row on both sides (all pairs).
    """
    rows, cols, vals = sparse
    is_query = rows < first_column_row if first_column_row else torch.ones_like(rows, dtype=bool)
    query = rows[is_query], cols[is_query], vals[is_query]
    is_gallery = rows >= first_column_row
    g_cols = cols[is_gallery]
    g_order = torch.argsort(g_cols, stable=True)
    g_rows = rows[is_gallery][g_order] - first_column_row
    g_vals = vals[is_gallery][g_order]
    g_count = torch.bincount(g_cols, minlength=num_columns)
    g_start = torch.cumsum(g_count, 0) - g_count
    return query, (g_rows, g_vals, g_start, g_count)


def _jaccard_blocks(
    query: tuple[Tensor, Tensor, Tensor],
    index: tuple[Tensor, Tensor, Tensor, Tensor],
    num_query: int,
    num_gallery: int,
) -> Iterator[tuple[int, int, Tensor]]:
    """Jaccard distances ``1 - m / (2 - m)`` of a batch of query rows at a time, as dense
    ``[batch, num_gallery]`` blocks; m is the sum over shared columns of min(V_i, V_j).

    Only the (query, gallery) pairs that share a column are visited (through the inverted
    ``index`` of the gallery rows); a batch holds at most about ``_STEP_ELEMENTS`` pairs and
    dense entries, so memory stays flat however many rows there are.
    """
    q_rows, q_cols, q_vals = query
    g_rows, g_vals, g_start, g_count = index
    device = q_rows.device
    pairs = g_count[q_cols]
    pairs_per_query = torch.zeros(num_query, dtype=torch.int64, device=device)
    pairs_per_query.index_add_(0, q_rows, pairs)
    entry_end = torch.cumsum(torch.bincount(q_rows, minlength=num_query), 0).tolist()
    pair_end = torch.cumsum(pairs_per_query, 0).tolist()
    q0 = 0
    while q0 < num_query:
        # Extend the batch while its pairs and its dense rows stay within _STEP_ELEMENTS.
        done = pair_end[q0 - 1] if q0 else 0
        q1, last = q0 + 1, min(num_query, q0 + max(1, _STEP_ELEMENTS // max(1, num_gallery)))
        while q1 < last and pair_end[q1] - done <= _STEP_ELEMENTS:
            q1 += 1
        e0, e1 = (entry_end[q0 - 1] if q0 else 0), entry_end[q1 - 1]
        # Expand each query entry (query, column) into one pair per gallery row in that
        # column: ``entry`` says which entry a pair comes from, ``at`` where it is in the index.
        length = pairs[e0:e1]
        entry = torch.repeat_interleave(torch.arange(e1 - e0, device=device), length)
        first_pair = g_start[q_cols[e0:e1]] - (torch.cumsum(length, 0) - length)
        at = first_pair[entry] + torch.arange(len(entry), device=device)
        target = ((q_rows[e0:e1] - q0) * num_gallery)[entry] + g_rows[at]
        shared = torch.minimum(q_vals[e0:e1][entry], g_vals[at])
        overlap = torch.zeros((q1 - q0) * num_gallery, dtype=g_vals.dtype, device=device)
        overlap = overlap.index_add_(0, target, shared).view(q1 - q0, num_gallery)
        yield q0, q1, 1.0 - overlap / (2.0 - overlap)
        q0 = q1


def _blend_jaccard(
    out: Tensor,
    sparse: tuple[Tensor, Tensor, Tensor],
    row_max: Tensor,
    lambda_value: float,
) -> Tensor:
    """Turn ``out`` (query x gallery squared distances) into the re-ranked distances in place:
    the Jaccard distance blended with the original distance ``out / row_max``."""
    num_query, num_gallery = out.shape
    query, index = _split_entries(sparse, num_query, len(row_max))
    for q0, q1, jaccard in _jaccard_blocks(query, index, num_query, num_gallery):
        original = out[q0:q1].div_(row_max[q0:q1, None])
        out[q0:q1] = jaccard.mul_(1.0 - lambda_value).add_(original, alpha=lambda_value)
    return out


def _encoded(
    feats: Tensor, k1: int, k2: int, num_query: int, out: Tensor, chunk_size: int
) -> tuple[tuple[Tensor, Tensor, Tensor], Tensor]:
    """Steps 1-3 of the module docstring for normalised ``feats``: the sparse, query-expanded
    V rows of every image (COO) and each image's largest squared distance."""
    n = len(feats)
    # k1+1 neighbours for the reciprocal sets (the first is the image itself), k2 for the
    # query expansion.
    num_neighbours = max(k1 + 1, k2)
    if n < num_neighbours:
        raise ValueError(f"re-ranking with k1={k1}, k2={k2} needs {num_neighbours} images, got {n}")
    neighbours, neighbour_sq, row_max = _neighbour_pass(
        feats, num_neighbours, num_query, out, chunk_size
    )
    columns = _expansion_sets(neighbours, k1)
    weights = _encode(feats, columns, neighbours, neighbour_sq, row_max)
    if k2 == 1:
        keep = columns < n
        rows = torch.arange(n, device=feats.device)[:, None].expand_as(columns)[keep]
        return (rows, columns[keep], weights[keep]), row_max
    return _query_expansion(columns, weights, neighbours, k2), row_max


def _check_arguments(k1: int, k2: int, chunk_size: int) -> None:
    if k1 < 1 or k2 < 1:
        raise ValueError(f"k1 and k2 must be >= 1, got k1={k1}, k2={k2}")
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be >= 1, got {chunk_size}")


def _normalised_copy(*features: Tensor) -> Tensor:
    """The rows of all ``features`` stacked, as float, L2-normalised in place (one copy)."""
    first = _as_float(features[0])
    feats = torch.cat([first, *(f.to(first.dtype) for f in features[1:])])
    feats /= feats.norm(dim=1, keepdim=True).clamp_min_(1e-12)
    return feats


def re_rank(
    qf: Tensor,
    gf: Tensor,
    k1: int = 20,
    k2: int = 6,
    lambda_value: float = 0.3,
    *,
    chunk_size: int = 2048,
) -> Tensor:
    """k-reciprocal re-ranked query x gallery distances ([q, g], on the features' device).

    The original distance is the one torchreid feeds its ``re_ranking``: squared Euclidean
    distance of L2-normalised features (:func:`pairwise_distance`), squared again and divided
    by each image's largest value over all q+g images. The result is
    ``(1 - lambda) * jaccard + lambda * original`` as in the paper.

    Memory, with n = q + g and d the feature size: the [q, g] result; one
    ``chunk_size x chunk_size`` distance block; O(n * k1^2) integers for the neighbour and
    expansion sets and O(n * k2 * k1^2) sparse weights; plus about 16 MB per working buffer
    (``_STEP_ELEMENTS``). Nothing of size n^2 is ever allocated, so a 50,000-image gallery
    needs little more than its q x g output.
    """
    _check_arguments(k1, k2, chunk_size)
    if not 0.0 <= lambda_value <= 1.0:
        raise ValueError(f"lambda_value must be in [0, 1], got {lambda_value}")
    if qf.dim() != 2 or gf.dim() != 2 or qf.shape[1] != gf.shape[1]:
        raise ValueError(f"features must be [n, d] with equal d, got {qf.shape} and {gf.shape}")
    feats = _normalised_copy(qf, gf)
    num_query = len(qf)
    out = torch.empty((num_query, len(gf)), dtype=feats.dtype, device=feats.device)
    sparse, row_max = _encoded(feats, k1, k2, num_query, out, chunk_size)
    return _blend_jaccard(out, sparse, row_max[:num_query], lambda_value)


def jaccard_graph(
    features: Tensor,
    k1: int = 20,
    k2: int = 6,
    max_distance: float = 1.0,
    *,
    chunk_size: int = 2048,
) -> tuple[Tensor, Tensor, Tensor]:
    """The k-reciprocal Jaccard distances among all rows of ``features``, sparse.

    The same encoding as :func:`re_rank` (its lambda 0: Jaccard only), but every image
    against every other, as clustering on k-reciprocal distances needs (the pseudo-labels of
    SpCL and Cluster Contrast). Returns ``(rows, cols, distances)`` of the pairs whose distance
    is below ``max_distance``, the diagonal included (distance 0); pairs that share no
    k-reciprocal neighbour have distance 1 and are never listed. Memory grows with the number
    of images times their neighbourhoods, never with its square.
    """
    _check_arguments(k1, k2, chunk_size)
    if features.dim() != 2:
        raise ValueError(f"features must be [n, d], got {features.shape}")
    feats = _normalised_copy(features)
    n = len(feats)
    none = torch.empty((0, n), dtype=feats.dtype, device=feats.device)
    sparse, _ = _encoded(feats, k1, k2, 0, none, chunk_size)
    query, index = _split_entries(sparse, 0, n)
    found: list[tuple[Tensor, Tensor, Tensor]] = []
    for q0, _, jaccard in _jaccard_blocks(query, index, n, n):
        rows, cols = torch.nonzero(jaccard < max_distance, as_tuple=True)
        found.append((rows + q0, cols, jaccard[rows, cols]))
    rows, cols, distances = (torch.cat(parts) for parts in zip(*found, strict=True))
    return rows, cols, distances

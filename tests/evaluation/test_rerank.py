"""k-reciprocal re-ranking against a dense reference written from the paper and torchreid's."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch

from reidkit.evaluation.metrics import evaluate_distances, pairwise_distance
from reidkit.evaluation.rerank import jaccard_graph, re_rank


def dense_encoding(feats: torch.Tensor, k1: int, k2: int) -> tuple[np.ndarray, np.ndarray]:
    """Zhong et al. 2017's V rows (query-expanded) and original distances of every image, with
    dense n^2 matrices and plain loops, in float64 from the same float32 distances: slow and
    memory-hungry, but obviously the paper's algorithm."""
    n = len(feats)
    squared = pairwise_distance(feats, feats).double().numpy() ** 2
    original = squared / squared.max(axis=1, keepdims=True)
    rank = np.argsort(original, axis=1, kind="stable")

    def reciprocal(i: int, k: int) -> set[int]:
        return {int(j) for j in rank[i, : k + 1] if i in rank[j, : k + 1]}

    v = np.zeros((n, n))
    for i in range(n):
        near = reciprocal(i, k1)
        expanded = set(near)
        for c in near:
            candidate = reciprocal(c, round(k1 / 2))
            if len(candidate & near) > 2 / 3 * len(candidate):
                expanded |= candidate
        idx = sorted(expanded)
        weights = np.exp(-original[i, idx])
        v[i, idx] = weights / weights.sum()
    if k2 > 1:
        v = np.stack([v[rank[i, :k2]].mean(axis=0) for i in range(n)])
    return v, original


def dense_jaccard(v_rows: np.ndarray, v_columns: np.ndarray) -> np.ndarray:
    shared = np.minimum(v_rows[:, None, :], v_columns[None, :, :]).sum(axis=2)
    return 1 - shared / (2 - shared)


def dense_re_rank(qf: torch.Tensor, gf: torch.Tensor, k1: int, k2: int, lam: float) -> np.ndarray:
    """The reference re-ranking of queries against the gallery (see :func:`dense_encoding`)."""
    num_query = len(qf)
    v, original = dense_encoding(torch.cat([qf, gf]), k1, k2)
    jaccard = dense_jaccard(v[:num_query], v[num_query:])
    return (1 - lam) * jaccard + lam * original[:num_query, num_query:]


def clustered(seed: int, num_q: int, num_g: int, dim: int, ids: int) -> tuple[torch.Tensor, ...]:
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(ids, dim, generator=gen)
    q_pids = torch.randint(0, ids, (num_q,), generator=gen)
    g_pids = torch.randint(0, ids, (num_g,), generator=gen)
    qf = centers[q_pids] + 0.8 * torch.randn(num_q, dim, generator=gen)
    gf = centers[g_pids] + 0.8 * torch.randn(num_g, dim, generator=gen)
    q_camids = torch.randint(0, 3, (num_q,), generator=gen)
    g_camids = torch.randint(0, 3, (num_g,), generator=gen)
    return qf, gf, q_pids, g_pids, q_camids, g_camids


CASES = [
    # seed, queries, gallery, dim, ids, k1, k2, lambda
    (0, 30, 150, 32, 12, 20, 6, 0.3),
    (1, 20, 120, 16, 6, 7, 3, 0.0),
    (2, 12, 80, 64, 20, 5, 1, 0.5),
    (3, 25, 100, 8, 4, 15, 6, 1.0),
    (4, 15, 60, 16, 5, 3, 6, 0.3),  # k2 > k1 + 1: the expansion needs more neighbours
]


def assert_same_ranking(ours: np.ndarray, reference: np.ndarray, labels: tuple) -> None:
    a, b = evaluate_distances(ours, *labels), evaluate_distances(reference, *labels)
    np.testing.assert_allclose(a.cmc, b.cmc, atol=1e-6, rtol=0)
    assert a.mAP == pytest.approx(b.mAP, abs=1e-6)


@pytest.mark.parametrize(("seed", "num_q", "num_g", "dim", "ids", "k1", "k2", "lam"), CASES)
def test_matches_dense_reference(
    seed: int, num_q: int, num_g: int, dim: int, ids: int, k1: int, k2: int, lam: float
) -> None:
    qf, gf, *labels = clustered(seed, num_q, num_g, dim, ids)
    reference = dense_re_rank(qf, gf, k1, k2, lam)
    # A block size that does not divide q+g, and one block holding everything.
    for chunk_size in (16, 4096):
        ours = re_rank(qf, gf, k1, k2, lam, chunk_size=chunk_size)
        assert ours.shape == (num_q, num_g) and ours.dtype == torch.float32
        np.testing.assert_allclose(ours.numpy(), reference, atol=1e-4, rtol=0)
        assert_same_ranking(ours.numpy(), reference, tuple(labels))


@pytest.mark.parametrize(("seed", "num_q", "num_g", "dim", "ids", "k1", "k2", "lam"), CASES)
def test_jaccard_graph_matches_dense_reference(
    seed: int, num_q: int, num_g: int, dim: int, ids: int, k1: int, k2: int, lam: float
) -> None:
    """All pairs of one set (what clustering needs), sparse: every pair below the bound and
    no other, with the reference's distances."""
    qf, gf, *_ = clustered(seed, num_q, num_g, dim, ids)
    feats = torch.cat([qf, gf])
    v, _ = dense_encoding(feats, k1, k2)
    reference = dense_jaccard(v, v)
    for bound in (1.0, 0.6):
        rows, cols, distances = jaccard_graph(feats, k1, k2, max_distance=bound, chunk_size=16)
        ours = np.ones_like(reference)
        ours[rows.numpy(), cols.numpy()] = distances.numpy()
        expected = np.where(reference < bound - 1e-4, reference, 1.0)
        listed = np.zeros(reference.shape, dtype=bool)
        listed[rows.numpy(), cols.numpy()] = True
        clear = np.abs(reference - bound) > 1e-4  # pairs not on the bound itself
        np.testing.assert_array_equal(listed[clear], (reference < bound)[clear])
        np.testing.assert_allclose(ours[clear], expected[clear], atol=1e-4, rtol=0)
        assert np.all(np.diag(ours) < 1e-6)


def test_re_ranking_changes_the_ranking() -> None:
    qf, gf, *labels = clustered(5, 30, 150, 32, 12)
    plain = pairwise_distance(qf, gf).numpy()
    reranked = re_rank(qf, gf).numpy()
    assert np.abs(plain - reranked).max() > 0.1
    assert evaluate_distances(reranked, *labels).mAP >= evaluate_distances(plain, *labels).mAP


def test_rejects_bad_arguments() -> None:
    qf, gf = torch.randn(3, 8), torch.randn(10, 8)
    with pytest.raises(ValueError, match="needs 21 images"):
        re_rank(qf, gf)
    with pytest.raises(ValueError, match="lambda_value"):
        re_rank(qf, gf, k1=3, lambda_value=1.5)
    with pytest.raises(ValueError, match="equal d"):
        re_rank(qf, torch.randn(10, 9), k1=3)


@pytest.fixture(scope="module")
def torchreid_rerank() -> ModuleType:
    return pytest.importorskip(
        "torchreid.reid.utils.rerank",
        reason="torchreid (the bench extra) is not installed",
        exc_type=ImportError,
    )


@pytest.mark.parametrize(("seed", "num_q", "num_g", "dim", "ids", "k1", "k2", "lam"), CASES)
def test_matches_torchreid(
    torchreid_rerank: ModuleType,
    seed: int,
    num_q: int,
    num_g: int,
    dim: int,
    ids: int,
    k1: int,
    k2: int,
    lam: float,
) -> None:
    qf, gf, *labels = clustered(seed, num_q, num_g, dim, ids)
    # torchreid takes the three distance matrices; give it the same original distance.
    reference = torchreid_rerank.re_ranking(
        pairwise_distance(qf, gf).numpy(),
        pairwise_distance(qf, qf).numpy(),
        pairwise_distance(gf, gf).numpy(),
        k1=k1,
        k2=k2,
        lambda_value=lam,
    )
    ours = re_rank(qf, gf, k1, k2, lam).numpy()
    np.testing.assert_allclose(ours, reference, atol=1e-4, rtol=0)
    assert_same_ranking(ours, reference, tuple(labels))

"""Ranking metrics against a plain-loop reference and, when installed, torchreid."""

from __future__ import annotations

from types import ModuleType

import numpy as np
import pytest
import torch

from reidkit.errors import DatasetError
from reidkit.evaluation.metrics import (
    RankingResult,
    evaluate_distances,
    evaluate_features,
    normalize_features,
    pairwise_distance,
)


def reference_rank(
    distmat: np.ndarray,
    q_pids: np.ndarray,
    g_pids: np.ndarray,
    q_camids: np.ndarray,
    g_camids: np.ndarray,
    max_rank: int,
) -> tuple[np.ndarray, float, float, int]:
    """One query at a time, straight from the definitions. Ties between a true match and a
    non-match put the non-match first (the documented, pessimistic order)."""
    max_rank = min(max_rank, distmat.shape[1])
    cmc_sum = np.zeros(max_rank)
    ap_sum = inp_sum = 0.0
    valid = 0
    for i in range(len(q_pids)):
        keep = ~((g_pids == q_pids[i]) & (g_camids == q_camids[i]))
        d, match = distmat[i][keep], g_pids[keep] == q_pids[i]
        if not match.any():
            continue
        match = match[np.lexsort((match, d))]  # by distance, then non-matches first
        positions = np.flatnonzero(match)
        cmc_sum[positions[0] :] += 1
        ap_sum += np.mean([(k + 1) / (p + 1) for k, p in enumerate(positions)])
        inp_sum += len(positions) / (positions[-1] + 1)
        valid += 1
    return cmc_sum / valid, ap_sum / valid, inp_sum / valid, valid


def random_split(
    rng: np.random.Generator, num_q: int, num_g: int, num_ids: int, num_cams: int
) -> tuple[np.ndarray, ...]:
    q_pids = rng.integers(1, num_ids + 1, num_q)
    # Market's gallery also holds distractors (id 0) and junk (id -1).
    g_pids = rng.integers(-1, num_ids + 1, num_g)
    q_camids = rng.integers(1, num_cams + 1, num_q)
    g_camids = rng.integers(1, num_cams + 1, num_g)
    return q_pids, g_pids, q_camids, g_camids


def assert_matches_reference(
    result: RankingResult, distmat: np.ndarray, *labels: np.ndarray, max_rank: int = 50
) -> None:
    cmc, mAP, mINP, valid = reference_rank(distmat, *labels, max_rank)
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-6, rtol=0)
    assert result.mAP == pytest.approx(mAP, abs=1e-6)
    assert result.mINP == pytest.approx(mINP, abs=1e-6)
    assert result.num_valid_queries == valid


@pytest.mark.parametrize("seed", range(6))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_random_cases_match_reference(seed: int, dtype: type) -> None:
    rng = np.random.default_rng(seed)
    num_q, num_g = int(rng.integers(5, 80)), int(rng.integers(30, 400))
    labels = random_split(rng, num_q, num_g, num_ids=int(rng.integers(3, 30)), num_cams=3)
    distmat = rng.random((num_q, num_g)).astype(dtype)
    max_rank = int(rng.integers(1, 60))
    result = evaluate_distances(distmat, *labels, max_rank=max_rank)
    assert_matches_reference(result, distmat, *labels, max_rank=max_rank)


@pytest.mark.parametrize("seed", range(4))
def test_heavy_ties_rank_non_matches_first(seed: int) -> None:
    rng = np.random.default_rng(100 + seed)
    labels = random_split(rng, 40, 300, num_ids=8, num_cams=2)
    distmat = rng.integers(0, 4, (40, 300)).astype(np.float32)  # almost everything ties
    assert_matches_reference(evaluate_distances(distmat, *labels), distmat, *labels)


def test_constant_distances_score_as_worst_case() -> None:
    """A collapsed model (all distances equal) must not score by gallery file order."""
    g_pids = np.array([1, 1, 2, 2, 3, 3])
    result = evaluate_distances(np.zeros((1, 6)), [1], g_pids, [9], np.ones(6, int))
    assert result.cmc[0] == 0.0 and result.cmc[4] == 1.0
    assert result.mAP == pytest.approx((1 / 5 + 2 / 6) / 2)
    assert result.mINP == pytest.approx(2 / 6)


def test_same_id_same_camera_is_removed_and_distractors_count() -> None:
    # Query id 1 on camera 1. Gallery: its own camera (junk here), a distractor, a match.
    distmat = np.array([[0.1, 0.2, 0.3, 0.4]])
    g_pids = np.array([1, 0, 1, 2])
    g_camids = np.array([1, 2, 2, 1])
    result = evaluate_distances(distmat, [1], g_pids, [1], g_camids, max_rank=3)
    np.testing.assert_allclose(result.cmc, [0.0, 1.0, 1.0])
    assert result.mAP == pytest.approx(0.5)
    assert result.mINP == pytest.approx(0.5)
    assert result.as_percent() == {
        "cmc_rank_1": 0.0,
        "mAP": 50.0,
        "mINP": 50.0,
        "num_valid_queries": 1,
    }


def test_queries_without_valid_match_are_skipped() -> None:
    distmat = np.array([[0.5, 0.1, 0.9], [0.2, 0.3, 0.1], [0.3, 0.2, 0.1]])
    q_pids, q_camids = np.array([1, 2, 3]), np.array([1, 1, 1])
    g_pids, g_camids = np.array([1, 2, 2]), np.array([1, 2, 1])
    # Query 1 only has a same-camera match, query 3's id is not in the gallery.
    result = evaluate_distances(distmat, q_pids, g_pids, q_camids, g_camids)
    assert result.num_valid_queries == 1
    np.testing.assert_allclose(result.cmc, [0.0, 1.0, 1.0])
    assert len(result.cmc) == 3  # max_rank is cut to the gallery size


def test_no_valid_query_raises_dataset_error() -> None:
    with pytest.raises(DatasetError, match="no query has a valid match"):
        evaluate_distances(np.zeros((2, 2)), [1, 2], [1, 3], [1, 1], [1, 2])


def test_nan_at_a_true_match_is_refused() -> None:
    with pytest.raises(ValueError, match="NaN"):
        evaluate_distances(np.array([[np.nan, 0.5]]), [1], [1, 2], [1], [2, 2])


def test_as_percent_respects_max_rank() -> None:
    result = RankingResult(np.array([0.5, 0.75, 1.0]), 0.123456, 0.5, 7)
    assert result.as_percent() == {
        "cmc_rank_1": 50.0,
        "mAP": 12.35,
        "mINP": 50.0,
        "num_valid_queries": 7,
    }
    full = RankingResult(np.linspace(0.1, 1.0, 10), 0.5, 0.25, 3).as_percent()
    assert (full["cmc_rank_5"], full["cmc_rank_10"]) == (50.0, 100.0)


def test_torch_inputs_equal_numpy_inputs() -> None:
    rng = np.random.default_rng(7)
    labels = random_split(rng, 30, 200, num_ids=10, num_cams=3)
    distmat = rng.random((30, 200)).astype(np.float32)
    from_numpy = evaluate_distances(distmat, *labels)
    from_torch = evaluate_distances(torch.from_numpy(distmat), *map(torch.from_numpy, labels))
    np.testing.assert_array_equal(from_numpy.cmc, from_torch.cmc)
    assert (from_numpy.mAP, from_numpy.mINP) == (from_torch.mAP, from_torch.mINP)


def test_features_chunked_equal_unchunked_and_distance_path() -> None:
    gen = torch.Generator().manual_seed(0)
    centers = torch.randn(12, 64, generator=gen)
    q_pids, g_pids = torch.randint(0, 12, (50,), generator=gen), torch.randint(0, 12, (300,))
    qf = centers[q_pids] + torch.randn(50, 64, generator=gen)
    gf = centers[g_pids] + torch.randn(300, 64, generator=gen)
    q_camids, g_camids = torch.randint(0, 3, (50,)), torch.randint(0, 3, (300,))
    labels = (q_pids, g_pids, q_camids, g_camids)
    whole = evaluate_features(qf, gf, *labels, chunk_size=1000)
    chunked = evaluate_features(qf, gf, *labels, chunk_size=7)
    from_distances = evaluate_distances(pairwise_distance(qf, gf), *labels)
    for other in (chunked, from_distances):
        np.testing.assert_allclose(other.cmc, whole.cmc, atol=1e-12, rtol=0)
        assert other.mAP == pytest.approx(whole.mAP, abs=1e-12)
        assert other.mINP == pytest.approx(whole.mINP, abs=1e-12)
    assert 0.3 < whole.mAP < 1.0  # the clusters make the task non-trivial but learnable


def test_pairwise_distance_is_two_minus_two_cosine() -> None:
    x, y = torch.randn(5, 16), torch.randn(7, 16)
    cosine = normalize_features(x) @ normalize_features(y).T
    torch.testing.assert_close(pairwise_distance(x, y), 2 - 2 * cosine, atol=1e-6, rtol=0)
    self_distance = pairwise_distance(x, x).diagonal()
    torch.testing.assert_close(self_distance, torch.zeros(5), atol=1e-6, rtol=0)


@pytest.fixture(scope="module")
def torchreid_rank() -> ModuleType:
    return pytest.importorskip(
        "torchreid.reid.metrics.rank",
        reason="torchreid (the bench extra) is not installed",
        exc_type=ImportError,
    )


@pytest.mark.parametrize("seed", range(5))
def test_agrees_with_torchreid_without_cross_ties(torchreid_rank: ModuleType, seed: int) -> None:
    rng = np.random.default_rng(200 + seed)
    labels = random_split(rng, 60, 500, num_ids=20, num_cams=4)
    # Float32 distances, as torchreid's Cython path casts them: no ties at all ...
    distmat = rng.random((60, 500)).astype(np.float32)
    if seed % 2:
        # ... or many ties, but only within each query's matches or within its non-matches,
        # which no ordering of ties can turn into a different score.
        is_match = labels[1][None, :] == labels[0][:, None]
        ties = rng.integers(0, 3, distmat.shape)
        distmat = np.where(is_match, ties, ties + 3).astype(np.float32)
    cmc, mAP = torchreid_rank.evaluate_rank(distmat, *labels, max_rank=20)
    result = evaluate_distances(distmat, *labels, max_rank=20)
    np.testing.assert_allclose(result.cmc, cmc, atol=1e-6, rtol=0)
    assert result.mAP == pytest.approx(float(mAP), abs=1e-6)


def test_cross_ties_never_score_above_torchreid(torchreid_rank: ModuleType) -> None:
    rng = np.random.default_rng(300)
    labels = random_split(rng, 60, 500, num_ids=10, num_cams=3)
    distmat = rng.integers(0, 5, (60, 500)).astype(np.float32)
    cmc, mAP = torchreid_rank.evaluate_rank(distmat, *labels, max_rank=20)
    result = evaluate_distances(distmat, *labels, max_rank=20)
    assert np.all(result.cmc <= cmc + 1e-6)
    assert result.mAP <= float(mAP) + 1e-6

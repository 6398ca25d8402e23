"""ROC and threshold calibration against a pair-by-pair Python loop."""

from __future__ import annotations

import numpy as np
import pytest
from PIL import Image

from reidkit.evaluation.plots import plot_roc_curve
from reidkit.evaluation.roc import roc_from_distances


def _labelled(seed: int, q: int = 40, g: int = 300, ids: int = 25):
    rng = np.random.default_rng(seed)
    q_pids, g_pids = rng.integers(0, ids, q), rng.integers(0, ids, g)
    q_cams, g_cams = rng.integers(0, 3, q), rng.integers(0, 3, g)
    dist = rng.uniform(0.5, 2.0, (q, g))
    dist[q_pids[:, None] == g_pids[None, :]] -= 0.6  # same person: closer on average
    # Ties on purpose: thresholds must stay exact when distances repeat.
    dist = np.round(dist, 2).astype(np.float32)
    return dist, q_pids, g_pids, q_cams, g_cams


def _loop_pairs(dist, q_pids, g_pids, q_cams, g_cams):
    genuine, impostor = [], []
    for i in range(dist.shape[0]):
        for j in range(dist.shape[1]):
            if q_pids[i] != g_pids[j]:
                impostor.append(float(dist[i, j]))
            elif q_cams[i] != g_cams[j]:
                genuine.append(float(dist[i, j]))
    return genuine, impostor


@pytest.mark.parametrize("seed", [0, 1])
def test_rates_and_thresholds_match_a_loop(seed):
    data = _labelled(seed)
    curve = roc_from_distances(*data)
    genuine, impostor = _loop_pairs(*data)
    assert sorted(genuine) == curve.genuine.tolist()
    assert sorted(impostor) == curve.impostor.tolist()
    for target in (0.5, 0.1, 1e-2, 1e-3, 1e-4):
        t = curve.threshold_at(target)
        accepted = sum(d <= t for d in impostor)
        assert accepted <= target * len(impostor) + 1e-9
        # Largest such threshold: the next impostor distance above t breaks the target,
        # unless no impostor at all may be accepted.
        next_up = min((d for d in impostor if d > t), default=None)
        if next_up is not None and target * len(impostor) >= 1:
            assert sum(d <= next_up for d in impostor) > target * len(impostor)
        assert curve.false_match_rate(t) == accepted / len(impostor)
        assert curve.true_match_rate(t) == sum(d <= t for d in genuine) / len(genuine)
    summary = curve.summary()
    t3 = curve.threshold_at(1e-3)
    assert summary["threshold_at_fmr_0.001"] == round(t3, 6)
    assert summary["tmr_at_fmr_0.001"] == round(
        100 * sum(d <= t3 for d in genuine) / len(genuine), 2
    )
    assert summary["impostor_pairs"] == len(impostor)


def test_plot_roc_curve_writes_png(tmp_path):
    curve = roc_from_distances(*_labelled(2))
    fmr, tmr = curve.points()
    assert np.all(np.diff(fmr) >= 0) and np.all(np.diff(tmr) >= 0)
    marked = {
        r: (curve.true_match_rate(curve.threshold_at(r)), curve.threshold_at(r))
        for r in (1e-2, 1e-3)
    }
    path = plot_roc_curve(fmr, tmr, tmp_path / "roc.png", marked)
    with Image.open(path) as image:
        assert image.size == (840, 540)
    assert [p.name for p in tmp_path.iterdir()] == ["roc.png"]


def test_bad_rate_refused():
    curve = roc_from_distances(*_labelled(3))
    with pytest.raises(ValueError, match="false_match_rate"):
        curve.threshold_at(0.0)

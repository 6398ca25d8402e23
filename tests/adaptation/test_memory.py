"""The proxy memory's losses against hand-computed InfoNCE, and its momentum update."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from reidkit.adaptation import OUTLIER, ProxyMemory
from reidkit.adaptation.memory import (
    CAMERA_TEMPERATURE,
    CLUSTER_TEMPERATURE,
    INTER_CAMERA_WEIGHT,
    MOMENTUM,
)

# Cluster 0 is seen by camera 1, cluster 1 by camera 2, cluster 2 by both; crop 6 is an outlier.
LABELS = np.array([0, 0, 1, 1, 2, 2, OUTLIER])
CAMERAS = np.array([1, 1, 2, 2, 1, 2, 1])


def _feats(seed: int = 0) -> torch.Tensor:
    return F.normalize(torch.randn(7, 16, generator=torch.Generator().manual_seed(seed)), dim=1)


def _info_nce(feat: torch.Tensor, proxies: torch.Tensor, positive: int, tau: float) -> float:
    logits = [float(feat @ p) / tau for p in proxies]
    return -logits[positive] + math.log(sum(math.exp(x) for x in logits))


def test_cluster_loss_is_info_nce_against_every_cluster_proxy() -> None:
    feats = _feats()
    memory = ProxyMemory(feats, LABELS, CAMERAS, camera_proxies=False)
    centres = [F.normalize(feats[c == LABELS].mean(0), dim=0) for c in range(3)]
    assert torch.allclose(memory.clusters, torch.stack(centres), atol=1e-6)
    batch = _feats(5)[:2]  # crops of the batch, not of the memory: a loss well above 0
    loss, parts = memory.loss(batch, torch.tensor([0, 1]), torch.tensor([1, 2]))
    # Every other cluster is a negative, whichever cameras saw it (as in both papers).
    expected = (
        _info_nce(batch[0], centres, 0, CLUSTER_TEMPERATURE)
        + _info_nce(batch[1], centres, 1, CLUSTER_TEMPERATURE)
    ) / 2
    assert float(parts["cluster"]) == pytest.approx(expected, rel=1e-5)
    assert float(loss) == pytest.approx(expected, rel=1e-5)


def test_camera_proxies_intra_and_inter_camera_terms() -> None:
    feats = _feats(1)
    memory = ProxyMemory(feats, LABELS, CAMERAS, camera_proxies=True)
    # Proxies: (cluster, camera) pairs present, in sorted order.
    pairs = [(0, 1), (1, 2), (2, 1), (2, 2)]
    assert memory.proxy_cluster.tolist() == [c for c, _ in pairs]
    proxy = {
        pair: F.normalize(feats[(pair[0] == LABELS) & (pair[1] == CAMERAS)].mean(0), dim=0)
        for pair in pairs
    }
    crop = _feats(6)[0]  # a crop of cluster 2 seen by camera 2
    _, parts = memory.loss(crop[None], torch.tensor([2]), torch.tensor([2]))
    # Intra: against the camera-2 proxies only, (2, 2) being its own.
    intra = _info_nce(crop, [proxy[(2, 2)], proxy[(1, 2)]], 0, CAMERA_TEMPERATURE)
    assert float(parts["intra_camera"]) == pytest.approx(intra, rel=1e-5)
    # Inter: both proxies of cluster 2 are positives; negatives are the other clusters' proxies.
    negatives = [proxy[(0, 1)], proxy[(1, 2)]]
    terms = []
    for positive in (proxy[(2, 1)], proxy[(2, 2)]):
        s = float(crop @ positive) / CAMERA_TEMPERATURE
        mass = sum(math.exp(float(crop @ n) / CAMERA_TEMPERATURE) for n in negatives)
        terms.append(-(s - math.log(math.exp(s) + mass)))
    inter = INTER_CAMERA_WEIGHT * sum(terms) / 2
    assert float(parts["inter_camera"]) == pytest.approx(inter, rel=1e-5)


def test_momentum_update_moves_each_proxy_towards_its_batch() -> None:
    feats = _feats(2)
    memory = ProxyMemory(feats, LABELS, CAMERAS, camera_proxies=False)
    before = memory.clusters.clone()
    batch = F.normalize(torch.randn(3, 16, generator=torch.Generator().manual_seed(3)), dim=1)
    memory.update(batch, torch.tensor([0, 0, 2]), torch.tensor([1, 1, 1]))
    moved_0 = F.normalize(
        MOMENTUM * before[0] + (1 - MOMENTUM) * F.normalize(batch[:2].sum(0), dim=0), dim=0
    )
    moved_2 = F.normalize(MOMENTUM * before[2] + (1 - MOMENTUM) * batch[2], dim=0)
    assert torch.allclose(memory.clusters[0], moved_0, atol=1e-6)
    assert torch.allclose(memory.clusters[2], moved_2, atol=1e-6)
    assert torch.equal(memory.clusters[1], before[1])

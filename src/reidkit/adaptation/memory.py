"""The proxy memory and its contrastive losses: what the model learns from pseudo-labels.

* **Cluster proxies** (Cluster Contrast, Dai et al. 2021): one L2-normalised vector per cluster,
  initialised with the cluster's mean feature at the start of a round and moved towards each
  batch's features of that cluster (momentum). The loss is InfoNCE of a crop's feature against
  all cluster proxies, its own being the positive. One vector per cluster, rather than one per
  crop as in SpCL's instance memory, keeps every cluster equally up to date whatever its size.
* **Camera proxies** (Wang et al., AAAI 2021, "camera-aware proxies"): one proxy per
  (cluster, camera). The intra-camera loss contrasts a crop only with the proxies of its own
  camera, so what tells people apart is learned without the camera's look getting in the way;
  the inter-camera loss pulls a crop towards its cluster's proxies in *every* camera and pushes
  it from the nearest proxies of other clusters, which is what teaches the model to match one
  person across cameras. It needs at least two cameras.

Every other cluster is a negative, as in both papers. An earlier version contrasted a crop only
with clusters seen by a camera that also saw its own cluster (so that one person split into one
cluster per camera would not be pushed apart); measured, it lost on both targets of
``bench_adapt.py`` (pku_views 38.6 against 42.5 mAP, mars_mini 52.9 against 63.8; BENCHMARKS.md,
"Unsupervised domain adaptation") and was removed. A clustering that keeps every person within
one camera is the guard's business instead (:mod:`reidkit.adaptation.pseudo_labels`).

Temperatures and momentum are the papers' (0.05 for clusters, 0.07 for camera proxies, momentum
0.2 as in SpCL and the camera-proxy paper; 50 hard negatives and weight 0.5 for the
inter-camera term as in the camera-proxy paper).
"""

from __future__ import annotations

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from reidkit.adaptation.pseudo_labels import OUTLIER, centres

CLUSTER_TEMPERATURE = 0.05
CAMERA_TEMPERATURE = 0.07
MOMENTUM = 0.2
HARD_NEGATIVES = 50
INTER_CAMERA_WEIGHT = 0.5


class ProxyMemory:
    """Cluster proxies (and camera proxies) of one round, with the losses that use them.

    Plain tensors rather than module buffers: the memory is rebuilt from the clustering at the
    start of every round (its size changes with the number of clusters), so it is never part of
    the model's state.
    """

    def __init__(
        self, feats: Tensor, labels: np.ndarray, cameras: np.ndarray, camera_proxies: bool
    ) -> None:
        """``feats`` (L2-normalised, one row per crop) with each crop's cluster (or outlier)
        and camera."""
        kept = labels != OUTLIER
        self.num_clusters = int(labels[kept].max()) + 1 if kept.any() else 0
        self.clusters = centres(feats, labels, self.num_clusters)
        self.camera_proxies = camera_proxies
        if camera_proxies:
            # One proxy per (cluster, camera) pair present; its index is looked up per crop.
            pairs = np.unique(np.stack([labels[kept], cameras[kept]], 1), axis=0)
            self._proxy_of = {(int(c), int(k)): i for i, (c, k) in enumerate(pairs)}
            proxy_labels = np.full(len(labels), OUTLIER, dtype=np.int64)
            proxy_labels[kept] = [
                self._proxy_of[(int(c), int(k))]
                for c, k in zip(labels[kept], cameras[kept], strict=True)
            ]
            self.proxies = centres(feats, proxy_labels, len(pairs))
            device = feats.device
            self.proxy_cluster = torch.as_tensor(pairs[:, 0], device=device)
            self.proxy_camera = torch.as_tensor(pairs[:, 1], device=device)

    def to(self, device: torch.device) -> ProxyMemory:
        self.clusters = self.clusters.to(device)
        if self.camera_proxies:
            self.proxies = self.proxies.to(device)
            self.proxy_cluster = self.proxy_cluster.to(device)
            self.proxy_camera = self.proxy_camera.to(device)
        return self

    def proxy_index(self, labels: Tensor, cameras: Tensor) -> Tensor:
        return torch.as_tensor(
            [self._proxy_of[(int(c), int(k))] for c, k in zip(labels, cameras, strict=True)],
            device=labels.device,
        )

    def loss(self, feats: Tensor, labels: Tensor, cameras: Tensor) -> tuple[Tensor, dict]:
        """The total loss of a batch of normalised features and each term by name."""
        feats = feats.float()
        logits = feats @ self.clusters.T / CLUSTER_TEMPERATURE
        parts = {"cluster": F.cross_entropy(logits, labels)}
        if self.camera_proxies:
            similarity = feats @ self.proxies.T / CAMERA_TEMPERATURE
            own = self.proxy_index(labels, cameras)
            same_camera = self.proxy_camera[None, :] == cameras[:, None]
            parts["intra_camera"] = F.cross_entropy(
                similarity.masked_fill(~same_camera, float("-inf")), own
            )
            parts["inter_camera"] = INTER_CAMERA_WEIGHT * self._inter_camera(similarity, labels)
        return sum(parts.values()), {name: value.detach() for name, value in parts.items()}

    def _inter_camera(self, similarity: Tensor, labels: Tensor) -> Tensor:
        """Each crop against every proxy of its cluster (positives, all cameras) and the
        :data:`HARD_NEGATIVES` most similar proxies of other clusters."""
        positive = self.proxy_cluster[None, :] == labels[:, None]
        negatives = similarity.masked_fill(positive, float("-inf"))
        hard = negatives.topk(min(HARD_NEGATIVES, negatives.shape[1]), dim=1).values
        # log(exp(s_p) / (exp(s_p) + sum over hard negatives)) for every positive p.
        negative_mass = torch.logsumexp(hard, dim=1, keepdim=True)
        log_ratio = similarity - torch.logaddexp(similarity, negative_mass)
        per_crop = (log_ratio * positive).sum(1) / positive.sum(1)
        return -per_crop.mean()

    @torch.no_grad()
    def update(self, feats: Tensor, labels: Tensor, cameras: Tensor) -> None:
        """Move each proxy in the batch towards the mean feature of its crops there."""
        feats = feats.float()
        _momentum_update(self.clusters, feats, labels)
        if self.camera_proxies:
            _momentum_update(self.proxies, feats, self.proxy_index(labels, cameras))


def _momentum_update(memory: Tensor, feats: Tensor, index: Tensor) -> None:
    present, inverse = torch.unique(index, return_inverse=True)
    sums = torch.zeros(len(present), feats.shape[1], dtype=feats.dtype, device=feats.device)
    sums.index_add_(0, inverse, feats)
    batch_mean = F.normalize(sums, dim=1)
    memory[present] = F.normalize(MOMENTUM * memory[present] + (1 - MOMENTUM) * batch_mean, dim=1)

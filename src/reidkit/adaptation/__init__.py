"""Adaptation: a trained model fitted to a new site from the site's unlabelled crops.

Pseudo-labels from clustering k-reciprocal neighbours (:mod:`~reidkit.adaptation.pseudo_labels`,
with a site's tracks as constraints), a memory of cluster and camera proxies and its
contrastive losses (:mod:`~reidkit.adaptation.memory`), and the round-by-round loop on top of
Lightning (:mod:`~reidkit.adaptation.loop`). ``reidkit.actions.adapt`` builds them from the spec.
"""

from reidkit.adaptation.loop import (
    AdaptModule,
    AdaptSettings,
    LatestCheckpoint,
    PseudoLabeller,
    RoundReport,
    TargetDataModule,
    site_batchnorm,
)
from reidkit.adaptation.memory import ProxyMemory
from reidkit.adaptation.pseudo_labels import (
    OUTLIER,
    AdaptationError,
    Clustering,
    ClusterSettings,
    cluster,
    co_occurring_tracks,
)

__all__ = [
    "OUTLIER",
    "AdaptModule",
    "AdaptSettings",
    "AdaptationError",
    "ClusterSettings",
    "Clustering",
    "LatestCheckpoint",
    "ProxyMemory",
    "PseudoLabeller",
    "RoundReport",
    "TargetDataModule",
    "cluster",
    "co_occurring_tracks",
    "site_batchnorm",
]

"""Re-id training losses: label-smoothed ID loss, batch-hard triplet loss and center loss.

:class:`ReidCriterion` combines them as the spec asks (Bag of Tricks, Luo et al. 2019): the ID
loss on the head's logits (margin heads already applied their margin, having received the
labels), the triplet and center losses on the pre-BNNeck feature.
"""

from __future__ import annotations

from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidkit.config.spec import ExperimentSpec
from reidkit.errors import SpecError
from reidkit.models.reid_model import ReidOutput


class CrossEntropyLabelSmooth(nn.CrossEntropyLoss):
    """Cross-entropy against ``(1 - epsilon) * one_hot + epsilon / num_classes`` targets.

    PyTorch's ``label_smoothing`` is exactly BoT's formula; ``num_classes`` keeps BoT's
    signature and catches a head built for a different number of identities.
    """

    def __init__(self, num_classes: int, epsilon: float = 0.1) -> None:
        super().__init__(label_smoothing=epsilon)
        self.num_classes = num_classes

    def forward(self, logits: Tensor, labels: Tensor) -> Tensor:
        if logits.shape[1] != self.num_classes:
            raise ValueError(f"logits have {logits.shape[1]} classes, expected {self.num_classes}")
        return super().forward(logits, labels)


def euclidean_distances(features: Tensor) -> Tensor:
    """Pairwise Euclidean distances ``[B, B]``, in float32.

    Squared distances from the expansion ``|x|^2 + |y|^2 - 2 x.y`` can come out slightly
    negative and ``sqrt`` has an infinite gradient at 0 (every diagonal entry), so they are
    clamped first; float32 avoids fp16 overflow of the squared norms under mixed precision.
    """
    x = features.float()
    squared = x.square().sum(dim=1, keepdim=True)
    distances = squared + squared.T - 2.0 * (x @ x.T)
    return distances.clamp(min=1e-12).sqrt()


class TripletLoss(nn.Module):
    """Batch-hard triplet loss (Hermans et al. 2017) on the pre-BNNeck feature.

    For each anchor, its farthest same-identity and closest other-identity sample in the batch
    (which the P x K sampler fills with K images of P identities). ``margin == 0`` selects the
    soft margin ``log(1 + exp(d_ap - d_an))``, which needs no margin to be tuned.
    """

    def __init__(self, margin: float) -> None:
        super().__init__()
        self.margin = margin

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        distances = euclidean_distances(features)
        same = labels[:, None] == labels[None, :]
        hardest_positive = distances.masked_fill(~same, float("-inf")).amax(dim=1)
        hardest_negative = distances.masked_fill(same, float("inf")).amin(dim=1)
        gap = hardest_positive - hardest_negative
        if self.margin == 0:
            return F.softplus(gap).mean()
        return F.relu(gap + self.margin).mean()


class CenterLoss(nn.Module):
    """Center loss (Wen et al. 2016): squared distance of each feature to its class center.

    The centers are an ``nn.Parameter`` but are NOT trained by the model's optimizer: the engine
    gives :meth:`ReidCriterion.center_parameters` their own SGD optimizer with lr
    ``train.optim.center_lr`` and, before stepping it, multiplies their gradients by
    ``1 / center_loss_weight`` so that the center update does not shrink with the loss weight
    (as in Bag of Tricks). TAO never steps that optimizer, so its centers stay random.
    """

    def __init__(self, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        self.centers = nn.Parameter(torch.randn(num_classes, feat_dim))

    def forward(self, features: Tensor, labels: Tensor) -> Tensor:
        return (features.float() - self.centers[labels]).square().sum(dim=1).mean()


class ReidCriterion(nn.Module):
    """The training objective selected by the spec.

    ``dataset.sampler``: 'softmax' -> ID loss only, 'triplet' -> metric losses only,
    'softmax_triplet' -> both. The triplet term needs ``metric_loss_type`` 'triplet' or
    'triplet_center'; center loss (weighted by ``center_loss_weight``) is added when
    ``with_center_loss`` or a '*center' metric loss type asks for it.
    """

    def __init__(self, spec: ExperimentSpec, num_classes: int, feat_dim: int) -> None:
        super().__init__()
        model, optim, sampler = spec.model, spec.train.optim, spec.dataset.sampler
        self.id_loss = (
            CrossEntropyLabelSmooth(num_classes, 0.1 if model.label_smooth else 0.0)
            if sampler != "triplet"
            else None
        )
        self.triplet_loss = (
            TripletLoss(optim.triplet_loss_margin)
            if sampler != "softmax" and model.uses_triplet_loss
            else None
        )
        if self.id_loss is None and self.triplet_loss is None:
            raise SpecError(
                "dataset.sampler 'triplet' drops the ID loss and model.metric_loss_type "
                f"'{model.metric_loss_type}' has no triplet term; use sampler softmax_triplet "
                "or metric_loss_type triplet/triplet_center"
            )
        self.center_loss = CenterLoss(num_classes, feat_dim) if model.uses_center_loss else None
        self.center_loss_weight = optim.center_loss_weight

    def forward(
        self, output: ReidOutput, labels: Tensor, metric_weight: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its named, detached parts for logging.

        ``metric_weight`` scales the triplet and center terms (0 during an ID-only warm-up on
        random batches, where they would have almost no positive pairs to work with).
        """
        parts: dict[str, Tensor] = {}
        if self.id_loss is not None:
            parts["id"] = self.id_loss(output.logits, labels)
        if self.triplet_loss is not None:
            parts["triplet"] = self.triplet_loss(output.features, labels)
        if self.center_loss is not None:
            parts["center"] = self.center_loss(output.features, labels)
        weights = {"triplet": metric_weight, "center": metric_weight * self.center_loss_weight}
        total = sum(weights.get(name, 1.0) * value for name, value in parts.items())
        return total, {name: value.detach() for name, value in parts.items()}

    def center_parameters(self) -> Iterator[nn.Parameter]:
        """The center-loss centers (empty without center loss), for their own SGD optimizer."""
        if self.center_loss is not None:
            yield self.center_loss.centers

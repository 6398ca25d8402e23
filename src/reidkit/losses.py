"""Re-id training losses: label-smoothed ID loss, batch-hard triplet loss and center loss.

:class:`ReidCriterion` sums the registered terms it is given (Bag of Tricks, Luo et al. 2019): the
ID loss on the head's logits (margin heads already applied their margin, having received the
labels), the triplet and center losses on the pre-BNNeck feature. Adding a loss is one
``@LOSSES.register`` factory here.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidkit.errors import SpecError
from reidkit.models.reid_model import ReidOutput
from reidkit.registry import Registry


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


class LossFactory(Protocol):
    """``(num_classes=, feat_dim=, **settings) -> loss module`` taking ``(input, labels)``."""

    def __call__(self, *, num_classes: int, feat_dim: int, **settings: Any) -> nn.Module: ...


#: Loss term name -> factory. Each term reads the logits ("id") or the pre-BNNeck feature.
LOSSES: Registry[LossFactory] = Registry("loss")
#: Terms computed on the identity head's logits; all others read the pre-BNNeck feature.
_ON_LOGITS = frozenset({"id"})


@LOSSES.register("id")
def id_loss(*, num_classes: int, label_smooth: float = 0.1, **_: Any) -> nn.Module:
    return CrossEntropyLabelSmooth(num_classes, label_smooth)


@LOSSES.register("triplet")
def triplet_loss(*, margin: float = 0.3, **_: Any) -> nn.Module:
    return TripletLoss(margin)


@LOSSES.register("center")
def center_loss(*, num_classes: int, feat_dim: int, **_: Any) -> nn.Module:
    return CenterLoss(num_classes, feat_dim)


@dataclass(frozen=True)
class LossTerm:
    """One weighted term of the objective: a registered loss name and its settings."""

    name: str
    weight: float = 1.0
    settings: dict[str, Any] = field(default_factory=dict)


class ReidCriterion(nn.Module):
    """The weighted sum of the given loss terms (Bag of Tricks, Luo et al. 2019).

    Which terms a spec asks for (``dataset.sampler``, ``model.metric_loss_type``, ...) is decided
    where the spec is translated; this module only builds each term from :data:`LOSSES`.
    """

    def __init__(self, terms: list[LossTerm], num_classes: int, feat_dim: int) -> None:
        super().__init__()
        if not terms:
            raise SpecError("the training objective has no loss term")
        self.losses = nn.ModuleDict(
            {
                term.name: LOSSES.get(term.name)(
                    num_classes=num_classes, feat_dim=feat_dim, **term.settings
                )
                for term in terms
            }
        )
        self.weights = {term.name: term.weight for term in terms}

    def forward(
        self, output: ReidOutput, labels: Tensor, metric_weight: float = 1.0
    ) -> tuple[Tensor, dict[str, Tensor]]:
        """Total loss and its named, detached parts for logging.

        ``metric_weight`` scales the terms on the feature (triplet, center): 0 during an ID-only
        warm-up on random batches, where they would have almost no positive pairs to work with.
        """
        parts = {
            name: loss(output.logits if name in _ON_LOGITS else output.features, labels)
            for name, loss in self.losses.items()
        }
        total = sum(
            self.weights[name] * (1.0 if name in _ON_LOGITS else metric_weight) * value
            for name, value in parts.items()
        )
        return total, {name: value.detach() for name, value in parts.items()}

    def center_parameters(self) -> Iterator[nn.Parameter]:
        """The center-loss centers (empty without center loss), for their own SGD optimizer."""
        for loss in self.losses.values():
            if isinstance(loss, CenterLoss):
                yield loss.centers

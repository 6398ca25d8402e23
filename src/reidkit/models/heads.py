"""Necks and identity heads: BNNeck, the softmax classifier and margin-based heads.

Margin heads (ArcFace, CosFace/AM-Softmax, Circle) add their margin at the target class, so
they must see the labels during training; TAO's heads never received them, which left these
losses untrainable. Here ``forward(features, labels)`` takes the labels explicitly. Heads are
built by ``model.id_loss_type`` from :data:`ID_HEADS`, with plain arguments (the margin heads'
scale and margin, which TAO keeps in ``train.optim``, are translated by the caller).
"""

from __future__ import annotations

import math
from typing import ClassVar, Protocol

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from reidkit.registry import Registry


class BNNeck(nn.BatchNorm1d):
    """BatchNorm1d between the metric feature and the classifier (Luo et al., Bag of Tricks).

    The bias is frozen at zero so the BN only scales: the triplet loss works on the feature
    before it, the ID loss on a normalised version after it, and the two do not fight over a
    shift. Weight 1 / bias 0 is the kaiming-style BN init of BoT.
    """

    def __init__(self, num_features: int) -> None:
        super().__init__(num_features)
        nn.init.ones_(self.weight)
        nn.init.zeros_(self.bias)
        self.bias.requires_grad_(False)


class IdHead(nn.Module):
    """Maps ``[B, D]`` features to ``[B, num_classes]`` logits; labels add margins in training."""

    #: True when the logits depend on the labels (the model must pass them while training).
    uses_labels: ClassVar[bool] = False

    def __init__(self, in_features: int, num_classes: int) -> None:
        super().__init__()
        # Small-std normal init keeps the initial logits near zero (BoT's classifier init).
        self.weight = nn.Parameter(torch.empty(num_classes, in_features))
        nn.init.normal_(self.weight, std=0.001)

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        raise NotImplementedError


class LinearClassifier(IdHead):
    """Bias-free linear classifier for the plain softmax (cross-entropy) ID loss."""

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        return F.linear(features, self.weight)


class CosineHead(IdHead):
    """Base of margin heads: logits are ``scale * cos(feature, class weight)``.

    Without labels (e.g. a direct call for scoring) the plain scaled cosine is returned; with
    labels, :meth:`apply_margin` penalises the target class.
    """

    uses_labels = True

    def __init__(self, in_features: int, num_classes: int, scale: float, margin: float) -> None:
        super().__init__(in_features, num_classes)
        self.scale = scale
        self.margin = margin

    def forward(self, features: Tensor, labels: Tensor | None = None) -> Tensor:
        cosine = F.linear(F.normalize(features), F.normalize(self.weight))
        if labels is None:
            return self.scale * cosine
        target = F.one_hot(labels, cosine.shape[1]).bool()
        return self.apply_margin(cosine, target)

    def apply_margin(self, cosine: Tensor, target: Tensor) -> Tensor:
        """Scaled logits with the margin applied where ``target`` (one-hot, bool) is set."""
        raise NotImplementedError


class ArcFace(CosineHead):
    """Additive angular margin: ``cos(theta + m)`` at the target (Deng et al. 2019).

    Beyond ``theta > pi - m`` the angle can no longer grow monotonically, so the target falls
    back to ``cos(theta) - m * sin(m)`` (InsightFace's non-easy margin).
    """

    def apply_margin(self, cosine: Tensor, target: Tensor) -> Tensor:
        # The clamp keeps sqrt's gradient finite when a feature aligns exactly with its class.
        sine = torch.sqrt((1.0 - cosine.square()).clamp(min=1e-7))
        shifted = cosine * math.cos(self.margin) - sine * math.sin(self.margin)
        threshold = math.cos(math.pi - self.margin)
        fallback = cosine - math.sin(math.pi - self.margin) * self.margin
        shifted = torch.where(cosine > threshold, shifted, fallback)
        return self.scale * torch.where(target, shifted, cosine)


class CosFace(CosineHead):
    """Additive cosine margin: ``cos(theta) - m`` at the target.

    CosFace (Wang et al. 2018) and AM-Softmax (Wang et al. 2018) are the same formula published
    twice, so both ``id_loss_type`` values build this head.
    """

    def apply_margin(self, cosine: Tensor, target: Tensor) -> Tensor:
        return self.scale * torch.where(target, cosine - self.margin, cosine)


class Circle(CosineHead):
    """Circle loss logits (Sun et al. 2020): each similarity is re-weighted by its distance
    from its optimum (``1 + m`` for the target, ``-m`` for the others) and shifted by a
    margin (``1 - m`` / ``m``). The weights are detached, as in the paper and fast-reid."""

    def apply_margin(self, cosine: Tensor, target: Tensor) -> Tensor:
        detached = cosine.detach()
        alpha_p = F.relu(1.0 + self.margin - detached)
        alpha_n = F.relu(detached + self.margin)
        positive = alpha_p * (cosine - (1.0 - self.margin))
        negative = alpha_n * (cosine - self.margin)
        return self.scale * torch.where(target, positive, negative)


class IdHeadFactory(Protocol):
    """``(in_features, num_classes, scale=, margin=) -> IdHead``."""

    def __call__(
        self, in_features: int, num_classes: int, *, scale: float, margin: float
    ) -> IdHead: ...


#: ``model.id_loss_type`` name -> factory.
ID_HEADS: Registry[IdHeadFactory] = Registry("model.id_loss_type")


def build_id_head(
    name: str, in_features: int, num_classes: int, *, scale: float = 30.0, margin: float = 0.5
) -> IdHead:
    """The head for ``model.id_loss_type``; ``scale``/``margin`` are read by margin heads."""
    return ID_HEADS.get(name)(in_features, num_classes, scale=scale, margin=margin)


@ID_HEADS.register("softmax")
def softmax_head(in_features: int, num_classes: int, **_: float) -> IdHead:
    return LinearClassifier(in_features, num_classes)


@ID_HEADS.register("arcface")
def arcface_head(in_features: int, num_classes: int, *, scale: float, margin: float) -> IdHead:
    return ArcFace(in_features, num_classes, scale, margin)


@ID_HEADS.register("cosface", "amsoftmax")
def cosface_head(in_features: int, num_classes: int, *, scale: float, margin: float) -> IdHead:
    return CosFace(in_features, num_classes, scale, margin)


@ID_HEADS.register("circle")
def circle_head(in_features: int, num_classes: int, *, scale: float, margin: float) -> IdHead:
    return Circle(in_features, num_classes, scale, margin)

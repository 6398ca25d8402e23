"""The re-identification network: backbone -> embedding -> BNNeck -> identity head.

Training returns the logits (for the ID loss) and the pre-BNNeck feature (for the triplet and
center losses); evaluation returns only the embedding, so the same module is what gets exported
to ONNX. Its eval forward branches on Python attributes only, never on tensor values, so it
traces with a dynamic batch axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from reidkit.models.backbones import build_backbone
from reidkit.models.card import ModelCard
from reidkit.models.digest import weights_digest
from reidkit.models.heads import BNNeck, build_id_head
from reidkit.models.pooling import use_gem_pooling


class ReidOutput(NamedTuple):
    """Training output. A NamedTuple so DDP and Lightning can walk it like a tuple."""

    logits: Tensor
    features: Tensor


class ReidModel(nn.Module):
    """Bag-of-Tricks re-id model for any registered backbone, built from plain arguments.

    Embedding width: CNN backbones always give ``feat_dim`` (a bias-free linear projection of
    the pooled feature when the widths differ); Swin gives its native width unless
    ``reduce_feat_dim``, matching TAO's transformer variant. The keyword arguments other than
    the ones a :class:`ModelCard` names directly are recorded in its ``build`` entry, so
    :meth:`from_card` rebuilds exactly this network.
    """

    def __init__(
        self,
        backbone: str,
        num_classes: int,
        *,
        input_size: tuple[int, int] = (256, 128),
        feat_dim: int = 256,
        neck: str = "bnneck",
        neck_feat: str = "after",
        last_stride: int = 1,
        reduce_feat_dim: bool = False,
        dropout_rate: float = 0.0,
        drop_path: float = 0.1,
        id_loss_type: str = "softmax",
        cosine_scale: float = 30.0,
        cosine_margin: float = 0.5,
        pooling: str = "avg",
    ) -> None:
        super().__init__()
        self.backbone = build_backbone(
            backbone, last_stride=last_stride, input_size=input_size, drop_path=drop_path
        )
        if pooling == "gem":
            use_gem_pooling(self.backbone)
        width = self.backbone.out_channels
        reduce = reduce_feat_dim or not self.backbone.is_transformer
        self.embedding_dim = feat_dim if reduce else width
        self.reduction = (
            _projection(width, self.embedding_dim) if self.embedding_dim != width else nn.Identity()
        )
        self.neck = BNNeck(self.embedding_dim) if neck == "bnneck" else nn.Identity()
        self.neck_feat = neck_feat
        self.dropout = nn.Dropout(dropout_rate)
        self.classifier = build_id_head(
            id_loss_type, self.embedding_dim, num_classes, scale=cosine_scale, margin=cosine_margin
        )
        self._identity = {
            "backbone": backbone,
            "input_height": input_size[0],
            "input_width": input_size[1],
            "feat_dim": feat_dim,
            "num_classes": num_classes,
            "neck": neck,
            "neck_feat": neck_feat,
        }
        self._build = {
            "last_stride": last_stride,
            "reduce_feat_dim": reduce_feat_dim,
            "dropout_rate": dropout_rate,
            "drop_path": drop_path,
            "id_loss_type": id_loss_type,
            "cosine_scale": cosine_scale,
            "cosine_margin": cosine_margin,
            "pooling": pooling,
        }
        # Channels-last convolutions: oneDNN runs a MobileNetV2 training step 1.2x and its
        # inference 1.6x faster on a CPU than the default layout, and GPU tensor cores want it
        # too. load_state_dict copies into these tensors, so loaded weights keep the layout.
        self.to(memory_format=torch.channels_last)

    @classmethod
    def from_card(cls, card: ModelCard, neck_feat: str | None = None) -> ReidModel:
        """The untrained network a card describes; ``neck_feat`` overrides the test-time side."""
        return cls(
            card.backbone or "",
            card.num_classes or 1,
            input_size=(card.input_height, card.input_width),
            feat_dim=card.feat_dim or card.embedding_dim,
            neck=card.neck or "bnneck",
            neck_feat=neck_feat or card.neck_feat or "after",
            **card.build,
        )

    def card(
        self, pixel_mean: Sequence[float], pixel_std: Sequence[float], **extra: Any
    ) -> ModelCard:
        """This network's card as it stands, with the normalisation its inputs get.

        The card names these very weights (``weights_digest``), so it is taken when the weights
        are final for the file it goes into: when a checkpoint is written.
        """
        return ModelCard(
            **self._identity,
            embedding_dim=self.embedding_dim,
            pixel_mean=tuple(pixel_mean),
            pixel_std=tuple(pixel_std),
            build=dict(self._build),
            weights_digest=weights_digest(self.state_dict()),
            **extra,
        )

    def forward(self, images: Tensor, labels: Tensor | None = None) -> ReidOutput | Tensor:
        """``ReidOutput`` in training mode, the ``[B, embedding_dim]`` embedding in eval mode.

        The embedding is not L2-normalised; evaluation normalises it.
        """
        features = self.reduction(self.backbone(images))
        normed = self.neck(features)
        if not self.training:
            return normed if self.neck_feat == "after" else features
        if self.classifier.uses_labels and labels is None:
            raise ValueError(f"the {type(self.classifier).__name__} head needs labels in training")
        return ReidOutput(self.classifier(self.dropout(normed), labels), features)


def _projection(in_features: int, out_features: int) -> nn.Linear:
    """Bias-free linear reduction (a 1x1 conv after pooling).

    Variance-preserving init (no activation follows), so the triplet margin sees features on
    the backbone's own scale whatever ``feat_dim`` is.
    """
    layer = nn.Linear(in_features, out_features, bias=False)
    nn.init.kaiming_normal_(layer.weight, nonlinearity="linear")
    return layer

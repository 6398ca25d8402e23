"""The re-identification network: backbone -> embedding -> BNNeck -> identity head.

Training returns the logits (for the ID loss) and the pre-BNNeck feature (for the triplet and
center losses); evaluation returns only the embedding, so the same module is what gets exported
to ONNX. Its eval forward branches on Python attributes only, never on tensor values, so it
traces with a dynamic batch axis.
"""

from __future__ import annotations

import logging
from typing import NamedTuple

from torch import Tensor, nn

from reidkit.config.spec import ExperimentSpec, ModelSpec, OptimSpec
from reidkit.models.backbones import build_backbone
from reidkit.models.heads import BNNeck, build_id_head
from reidkit.models.pooling import use_gem_pooling
from reidkit.models.pretrained import load_imagenet, load_pretrained

logger = logging.getLogger("reidkit")


class ReidOutput(NamedTuple):
    """Training output. A NamedTuple so DDP and Lightning can walk it like a tuple."""

    logits: Tensor
    features: Tensor


class ReidModel(nn.Module):
    """Bag-of-Tricks re-id model for any registered backbone.

    Embedding width: CNN backbones always give ``feat_dim`` (a bias-free linear projection of
    the pooled feature when the widths differ); Swin gives its native width unless
    ``reduce_feat_dim``, matching TAO's transformer variant.
    """

    def __init__(self, spec: ModelSpec, num_classes: int, optim: OptimSpec) -> None:
        super().__init__()
        self.backbone = build_backbone(spec)
        if spec.pooling == "gem":
            use_gem_pooling(self.backbone)
        width = self.backbone.out_channels
        reduce = spec.reduce_feat_dim or not self.backbone.is_transformer
        self.embedding_dim = spec.feat_dim if reduce else width
        self.reduction = (
            _projection(width, self.embedding_dim) if self.embedding_dim != width else nn.Identity()
        )
        self.neck = BNNeck(self.embedding_dim) if spec.neck == "bnneck" else nn.Identity()
        self.neck_feat = spec.neck_feat
        self.dropout = nn.Dropout(spec.dropout_rate)
        self.classifier = build_id_head(spec.id_loss_type, self.embedding_dim, num_classes, optim)

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


def build_model(spec: ExperimentSpec, num_classes: int) -> ReidModel:
    """Build the model and load its starting weights.

    ``model.pretrained_model_path``, when set, is always loaded (an ImageNet state dict into the
    backbone, or a reidkit checkpoint into the whole model); otherwise 'imagenet' downloads the
    library's ImageNet weights and 'self' starts from scratch.
    """
    model = ReidModel(spec.model, num_classes, spec.train.optim)
    path = spec.model.pretrained_model_path
    if path is not None:
        report = load_pretrained(model, path)
        logger.info("pretrained weights %s: %s", path, report.summary())
    elif spec.model.pretrain_choice == "imagenet":
        report = load_imagenet(model.backbone)
        logger.info("ImageNet weights for %s: %s", spec.model.backbone, report.summary())
    return model

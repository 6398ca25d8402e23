"""Backbones: image -> globally pooled feature ``[B, C]``, built by name from a registry.

Each backbone wraps a library network (torchvision ResNet / MobileNetV2, timm Swin) instead of
re-implementing it, so its layers and parameter names follow the library and ImageNet state
dicts map onto it with a fixed prefix. Factories register in :data:`BACKBONES`, so adding a
backbone is one decorated factory here plus its name in the spec's ``BackboneName``.
Factories take plain arguments (name, last stride, input size, drop-path rate): the spec is
translated by the caller.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import ClassVar, Protocol

import timm
import torch
from timm.models.swin_transformer import checkpoint_filter_fn
from torch import Tensor, nn
from torchvision import models
from torchvision.models import WeightsEnum
from torchvision.models.resnet import BasicBlock

from reidkit.registry import Registry

StateDict = dict[str, Tensor]


class Backbone(nn.Module):
    """A network that maps ``[B, 3, H, W]`` images to a pooled ``[B, out_channels]`` feature.

    Subclasses also say how a library (torchvision / timm) state dict maps onto their own
    parameter names and how to download their ImageNet weights, so that
    :mod:`reidkit.models.pretrained` stays free of per-architecture branches.
    """

    #: Width of the pooled feature.
    out_channels: int
    #: Transformers keep their native width unless ``model.reduce_feat_dim``; CNNs always reduce.
    is_transformer: ClassVar[bool] = False

    def __init__(self, name: str) -> None:
        super().__init__()
        self.name = name

    def adapt_library_state_dict(self, state: Mapping[str, Tensor]) -> StateDict:
        """Rename a torchvision/timm state dict to this module's keys, dropping the classifier.

        Raises ``ValueError`` (with the reason) when the library cannot adapt the tensors.
        """
        raise NotImplementedError

    def download_imagenet_state_dict(self) -> StateDict:
        """Fetch the library's ImageNet weights (library key names); raises when offline."""
        raise NotImplementedError


class BackboneFactory(Protocol):
    """``(name, last_stride=, input_size=, drop_path=) -> Backbone``."""

    def __call__(
        self, name: str, *, last_stride: int, input_size: tuple[int, int], drop_path: float
    ) -> Backbone: ...


#: ``model.backbone`` name -> factory.
BACKBONES: Registry[BackboneFactory] = Registry("model.backbone")


def build_backbone(
    name: str,
    *,
    last_stride: int = 1,
    input_size: tuple[int, int] = (256, 128),
    drop_path: float = 0.1,
) -> Backbone:
    """Build backbone ``name``; ``input_size`` is (height, width), used by transformers."""
    return BACKBONES.get(name)(
        name, last_stride=last_stride, input_size=input_size, drop_path=drop_path
    )


def _prefixed(prefix: str, state: Mapping[str, Tensor], dropped: str) -> StateDict:
    """``state`` with ``prefix`` added to every key, minus the keys under ``dropped``."""
    return {f"{prefix}{key}": value for key, value in state.items() if not key.startswith(dropped)}


class ResNetBackbone(Backbone):
    """torchvision ResNet with ``layer4``'s stride set to ``last_stride`` (BoT's trick).

    torchvision's constructors give the right block type per depth (BasicBlock for 18/34,
    Bottleneck for 50+) and a stem with its ReLU, the two things TAO's ResNet gets wrong.
    The ImageNet classifier ``fc`` is replaced by an identity so the forward ends at the
    global average pool.
    """

    def __init__(
        self,
        name: str,
        constructor: Callable[..., models.ResNet],
        weights: WeightsEnum,
        last_stride: int,
    ) -> None:
        super().__init__(name)
        self.body = constructor(weights=None)
        self.out_channels = self.body.fc.in_features
        self.body.fc = nn.Identity()
        self._weights = weights
        first = self.body.layer4[0]
        # torchvision strides the first conv of a BasicBlock but the 3x3 (second) conv of a
        # Bottleneck (ResNet v1.5); the shortcut's 1x1 conv must use the same stride.
        strided = first.conv1 if isinstance(first, BasicBlock) else first.conv2
        strided.stride = (last_stride, last_stride)
        first.downsample[0].stride = (last_stride, last_stride)

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def adapt_library_state_dict(self, state: Mapping[str, Tensor]) -> StateDict:
        return _prefixed("body.", state, dropped="fc.")

    def download_imagenet_state_dict(self) -> StateDict:
        return self._weights.get_state_dict(progress=False)


def _resnet(
    name: str, last_stride: int, constructor: Callable[..., models.ResNet], weights: WeightsEnum
) -> Backbone:
    return ResNetBackbone(name, constructor, weights, last_stride)


# IMAGENET1K_V1 are the original model-zoo weights the Bag-of-Tricks baselines start from.
@BACKBONES.register("resnet_18")
def resnet_18(name: str, *, last_stride: int, **_: object) -> Backbone:
    return _resnet(name, last_stride, models.resnet18, models.ResNet18_Weights.IMAGENET1K_V1)


@BACKBONES.register("resnet_34")
def resnet_34(name: str, *, last_stride: int, **_: object) -> Backbone:
    return _resnet(name, last_stride, models.resnet34, models.ResNet34_Weights.IMAGENET1K_V1)


@BACKBONES.register("resnet_50")
def resnet_50(name: str, *, last_stride: int, **_: object) -> Backbone:
    return _resnet(name, last_stride, models.resnet50, models.ResNet50_Weights.IMAGENET1K_V1)


@BACKBONES.register("resnet_101")
def resnet_101(name: str, *, last_stride: int, **_: object) -> Backbone:
    return _resnet(name, last_stride, models.resnet101, models.ResNet101_Weights.IMAGENET1K_V1)


@BACKBONES.register("resnet_152")
def resnet_152(name: str, *, last_stride: int, **_: object) -> Backbone:
    return _resnet(name, last_stride, models.resnet152, models.ResNet152_Weights.IMAGENET1K_V1)


class MobileNetV2Backbone(Backbone):
    """torchvision MobileNetV2 ``features`` (1280 channels) followed by global average pooling.

    ``last_stride == 1`` removes the stride of the last stride-2 stage (the 160-channel one),
    doubling the final feature map like ResNet's ``last_stride``.
    """

    out_channels = 1280

    def __init__(self, name: str, last_stride: int) -> None:
        super().__init__(name)
        self.features = models.mobilenet_v2(weights=None).features
        self.pool = nn.AdaptiveAvgPool2d(1)
        if last_stride == 1:
            self._unstride_last_stage()

    def _unstride_last_stage(self) -> None:
        last = [m for m in self.features if isinstance(m, models.mobilenetv2.InvertedResidual)]
        block = next(m for m in reversed(last) if m.stride == 2)
        for conv in block.modules():
            if isinstance(conv, nn.Conv2d) and conv.stride == (2, 2):
                conv.stride = (1, 1)
        block.stride = 1

    def forward(self, x: Tensor) -> Tensor:
        return torch.flatten(self.pool(self.features(x)), 1)

    def adapt_library_state_dict(self, state: Mapping[str, Tensor]) -> StateDict:
        return _prefixed("", state, dropped="classifier.")

    def download_imagenet_state_dict(self) -> StateDict:
        return models.MobileNet_V2_Weights.IMAGENET1K_V1.get_state_dict(progress=False)


@BACKBONES.register("mobilenet_v2")
def mobilenet_v2(name: str, *, last_stride: int, **_: object) -> Backbone:
    return MobileNetV2Backbone(name, last_stride)


class SwinBackbone(Backbone):
    """timm Swin Transformer built for the person-crop size (e.g. 256x128 or 384x128).

    The window stays 7 so ImageNet weights fit: timm pads feature maps that 7 does not divide
    and shrinks the window where a map is smaller than 7 (the 4-wide last stage), which is
    how SOLIDER's Swin runs at these sizes. The output is timm's normed, average-pooled token.
    """

    is_transformer = True

    def __init__(self, name: str, img_size: tuple[int, int], drop_path: float) -> None:
        super().__init__(name)
        self._img_size = img_size
        self.body = timm.create_model(
            name, pretrained=False, img_size=img_size, num_classes=0, drop_path_rate=drop_path
        )
        self.out_channels = self.body.num_features

    def forward(self, x: Tensor) -> Tensor:
        return self.body(x)

    def adapt_library_state_dict(self, state: Mapping[str, Tensor]) -> StateDict:
        """timm's own filter resizes relative-position tables to the windows used here and
        converts original Microsoft/SOLIDER checkpoints (downsample at the end of a stage)."""
        try:
            adapted = checkpoint_filter_fn(_prefixed("", state, dropped="head."), self.body)
        except (AttributeError, RuntimeError, ValueError) as exc:
            raise ValueError(f"timm cannot adapt it to {self.name} ({exc})") from exc
        return {f"body.{key}": value for key, value in adapted.items()}

    def download_imagenet_state_dict(self) -> StateDict:
        model = timm.create_model(
            self.name, pretrained=True, img_size=self._img_size, num_classes=0
        )
        return model.state_dict()


@BACKBONES.register(
    "swin_tiny_patch4_window7_224", "swin_small_patch4_window7_224", "swin_base_patch4_window7_224"
)
def swin(name: str, *, input_size: tuple[int, int], drop_path: float, **_: object) -> Backbone:
    """The timm variant is named like the spec literal, so one factory serves all three."""
    return SwinBackbone(name, input_size, drop_path)

"""Backbones: block types, stem ReLU, last stride, and real forwards of every family."""

from __future__ import annotations

from typing import get_args

import pytest
import torch
from torch import Tensor, nn
from torchvision.models.resnet import BasicBlock, Bottleneck

from reidkit.config.spec import BackboneName, ModelSpec
from reidkit.errors import SpecError
from reidkit.models import BACKBONES, Backbone
from tests.conftest import backbone_from


def small_spec(backbone: str, **fields: object) -> ModelSpec:
    return ModelSpec(backbone=backbone, input_height=64, input_width=32, **fields)


def output_size(backbone: Backbone, stage: nn.Module, images: Tensor) -> tuple[int, int]:
    """Spatial size of ``stage``'s output during a real forward."""
    sizes: list[tuple[int, int]] = []
    handle = stage.register_forward_hook(lambda _m, _i, out: sizes.append(tuple(out.shape[-2:])))
    with torch.no_grad():
        backbone.eval()(images)
    handle.remove()
    return sizes[0]


def test_registry_holds_every_spec_backbone() -> None:
    assert set(BACKBONES.names()) == set(get_args(BackboneName))


def test_registering_a_name_twice_is_refused() -> None:
    with pytest.raises(ValueError, match="twice"):
        BACKBONES.register("resnet_18")(lambda name, **_: nn.Identity())


def test_unknown_backbone_is_a_spec_error() -> None:
    spec = small_spec("resnet_18").model_construct(backbone="vgg_16")
    with pytest.raises(SpecError, match=r"model\.backbone 'vgg_16'"):
        backbone_from(spec)


@pytest.mark.parametrize(
    ("name", "block", "width"),
    [
        ("resnet_18", BasicBlock, 512),
        ("resnet_34", BasicBlock, 512),
        ("resnet_50", Bottleneck, 2048),
        ("resnet_101", Bottleneck, 2048),
        ("resnet_152", Bottleneck, 2048),
    ],
)
def test_resnet_depth_has_its_block_type(name: str, block: type, width: int) -> None:
    backbone = backbone_from(small_spec(name))
    body = backbone.body
    blocks = [b for layer in (body.layer1, body.layer2, body.layer3, body.layer4) for b in layer]
    assert all(type(b) is block for b in blocks)
    assert backbone.out_channels == width


@pytest.mark.parametrize("name", ["resnet_18", "resnet_50"])
def test_resnet_stem_applies_its_relu(name: str) -> None:
    backbone = backbone_from(small_spec(name))
    stem_out: list[Tensor] = []
    backbone.body.maxpool.register_forward_hook(lambda _m, inputs, _o: stem_out.append(inputs[0]))
    with torch.no_grad():
        backbone.eval()(torch.randn(2, 3, 64, 32))
    assert isinstance(backbone.body.relu, nn.ReLU)
    assert stem_out[0].min() >= 0  # the maxpool sees rectified activations


@pytest.mark.parametrize("name", ["resnet_18", "resnet_50"])
def test_resnet_last_stride_sets_layer4_resolution(name: str) -> None:
    images = torch.randn(1, 3, 64, 32)
    strided = backbone_from(small_spec(name, last_stride=2))
    unstrided = backbone_from(small_spec(name, last_stride=1))
    assert output_size(strided, strided.body.layer4, images) == (2, 1)
    assert output_size(unstrided, unstrided.body.layer4, images) == (4, 2)


def test_mobilenet_last_stride_sets_final_resolution() -> None:
    images = torch.randn(1, 3, 64, 32)
    strided = backbone_from(small_spec("mobilenet_v2", last_stride=2))
    unstrided = backbone_from(small_spec("mobilenet_v2", last_stride=1))
    assert output_size(strided, strided.features, images) == (2, 1)
    assert output_size(unstrided, unstrided.features, images) == (4, 2)


@pytest.mark.parametrize(
    ("name", "width"), [("resnet_18", 512), ("resnet_50", 2048), ("mobilenet_v2", 1280)]
)
def test_cnn_forward_train_and_eval(name: str, width: int) -> None:
    backbone = backbone_from(small_spec(name))
    images = torch.randn(2, 3, 64, 32)
    with torch.no_grad():
        trained = backbone.train()(images)
        evaluated = backbone.eval()(images)
    assert trained.shape == evaluated.shape == (2, width) == (2, backbone.out_channels)
    assert not torch.allclose(trained, evaluated)  # batch vs running BN statistics


@pytest.mark.parametrize(("height", "mode"), [(256, "train"), (384, "eval")])
def test_swin_tiny_forward_at_person_sizes(height: int, mode: str) -> None:
    spec = ModelSpec(backbone="swin_tiny_patch4_window7_224", input_height=height, input_width=128)
    backbone = backbone_from(spec)
    backbone.train(mode == "train")
    with torch.no_grad():
        pooled = backbone(torch.randn(1, 3, height, 128))
    assert backbone.is_transformer
    assert pooled.shape == (1, 768) == (1, backbone.out_channels)
    assert torch.isfinite(pooled).all()


@pytest.mark.parametrize(
    ("name", "width"),
    [("swin_small_patch4_window7_224", 768), ("swin_base_patch4_window7_224", 1024)],
)
def test_larger_swins_build_at_256x128(name: str, width: int) -> None:
    backbone = backbone_from(ModelSpec(backbone=name, drop_path=0.2))
    assert backbone.out_channels == width
    assert backbone.body.patch_embed.img_size == (256, 128)

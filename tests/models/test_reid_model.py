"""The assembled model: embedding widths, train/eval outputs, export, build_model, a real step."""

from __future__ import annotations

import logging
from pathlib import Path
from urllib.error import URLError

import pytest
import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec, ModelSpec
from reidkit.engine.module import build_model, loss_terms
from reidkit.errors import CheckpointError
from reidkit.losses import ReidCriterion
from reidkit.models import ReidModel, ReidOutput
from reidkit.models.pooling import GeneralizedMeanPooling
from tests.conftest import model_from

LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def small_spec(backbone: str = "resnet_18", **fields: object) -> ModelSpec:
    return ModelSpec(
        backbone=backbone, input_height=64, input_width=32, pretrain_choice="self", **fields
    )


def experiment(**overrides: object) -> ExperimentSpec:
    base = {
        "model.backbone": "resnet_18",
        "model.input_height": 64,
        "model.input_width": 32,
        "model.feat_dim": 64,
        "model.pretrain_choice": "self",
    }
    return apply_overrides(ExperimentSpec(), base | overrides)


@pytest.mark.parametrize(
    ("backbone", "fields", "width", "reduced"),
    [
        ("resnet_18", {"feat_dim": 64}, 64, True),
        ("resnet_18", {"feat_dim": 512}, 512, False),
        ("resnet_50", {"feat_dim": 256}, 256, True),
        ("mobilenet_v2", {"feat_dim": 128}, 128, True),
        ("swin_tiny_patch4_window7_224", {"feat_dim": 256}, 768, False),
        ("swin_tiny_patch4_window7_224", {"feat_dim": 256, "reduce_feat_dim": True}, 256, True),
    ],
)
def test_embedding_width_rule(backbone: str, fields: dict, width: int, reduced: bool) -> None:
    spec = ModelSpec(backbone=backbone, pretrain_choice="self", **fields)
    model = model_from(spec, 10)
    assert model.embedding_dim == width
    assert isinstance(model.reduction, nn.Linear) == reduced
    assert model.classifier.weight.shape == (10, width)


def test_train_output_and_eval_embedding() -> None:
    model = model_from(small_spec(feat_dim=64, dropout_rate=0.2), 4)
    images = torch.randn(8, 3, 64, 32)
    output = model.train()(images, LABELS)
    assert isinstance(output, ReidOutput)
    assert output.logits.shape == (8, 4) and output.features.shape == (8, 64)
    with torch.no_grad():
        embedding = model.eval()(images)
    assert embedding.shape == (8, 64)
    assert not torch.allclose(embedding.norm(dim=1), torch.ones(8))  # not L2-normalised


def test_neck_feat_selects_the_embedding_side_of_the_bnneck() -> None:
    model = model_from(small_spec(feat_dim=64), 4)
    images = torch.randn(8, 3, 64, 32)
    model.train()(images, LABELS)  # moves the BN running statistics away from identity
    before_model = model_from(small_spec(feat_dim=64, neck_feat="before"), 4)
    before_model.load_state_dict(model.state_dict())
    with torch.no_grad():
        after = model.eval()(images)
        before = before_model.eval()(images)
        torch.testing.assert_close(after, model.neck(before))
    assert not torch.allclose(after, before)


def test_without_bnneck_there_is_no_neck() -> None:
    model = model_from(small_spec(feat_dim=64, neck="no"), 4)
    assert not any(isinstance(m, nn.BatchNorm1d) for m in model.modules())


def test_margin_head_gets_the_labels_in_training() -> None:
    spec = small_spec(feat_dim=64, neck="no", id_loss_type="arcface")
    model = model_from(spec, 4).train()
    output = model(torch.randn(8, 3, 64, 32), LABELS)
    with torch.no_grad():
        torch.testing.assert_close(output.logits, model.classifier(output.features, LABELS))
        assert not torch.allclose(output.logits, model.classifier(output.features))
    with pytest.raises(ValueError, match="ArcFace head needs labels"):
        model(torch.randn(2, 3, 64, 32))


def test_eval_forward_exports_with_a_dynamic_batch() -> None:
    model = model_from(small_spec(feat_dim=64), 4).eval()
    batch = torch.export.Dim("batch", min=1, max=64)
    program = torch.export.export(model, (torch.randn(2, 3, 64, 32),), dynamic_shapes=({0: batch},))
    images = torch.randn(5, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(program.module()(images), model(images))


def test_build_model_from_scratch_loads_nothing(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.INFO, logger="reidkit"):
        model = build_model(experiment(), num_classes=4)
    assert model.embedding_dim == 64 and caplog.records == []


def test_build_model_loads_imagenet_file_and_logs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    source = torchvision.models.resnet18().state_dict()
    path = tmp_path / "resnet18.pth"
    torch.save(source, path)
    spec = experiment(**{"model.pretrained_model_path": str(path)})
    with caplog.at_level(logging.INFO, logger="reidkit"):
        model = build_model(spec, num_classes=4)
    torch.testing.assert_close(model.backbone.body.conv1.weight, source["conv1.weight"])
    assert "0 missing" in caplog.text and str(path) in caplog.text


def test_convolutions_stay_channels_last_through_weight_loading(tmp_path: Path) -> None:
    """The layout that makes CPU convolutions 1.2-1.6x faster survives every way weights load."""
    path = tmp_path / "resnet18.pth"
    torch.save(torchvision.models.resnet18().state_dict(), path)
    trained = build_model(experiment(**{"model.pretrained_model_path": str(path)}), 4)
    restored = ReidModel.from_card(trained.card((0.5,) * 3, (0.25,) * 3))
    restored.load_state_dict(trained.state_dict())
    for model in (trained, restored):
        weights = [m.weight for m in model.modules() if isinstance(m, nn.Conv2d)]
        assert weights and all(w.is_contiguous(memory_format=torch.channels_last) for w in weights)
    plain = ReidModel.from_card(trained.card((0.5,) * 3, (0.25,) * 3))
    plain.load_state_dict(trained.state_dict())
    plain.to(memory_format=torch.contiguous_format)
    images = torch.randn(4, 3, 64, 32)
    with torch.no_grad():
        torch.testing.assert_close(restored.eval()(images), plain.eval()(images))


def test_build_model_imagenet_offline_is_a_checkpoint_error(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    def offline(self: WeightsEnum, *args: object, **kwargs: object) -> None:
        raise URLError("no network")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(CheckpointError, match=r"set model\.pretrained_model_path to a local"):
        build_model(experiment(**{"model.pretrain_choice": "imagenet"}), num_classes=4)


def test_training_steps_reduce_the_loss() -> None:
    torch.manual_seed(0)
    spec = experiment(**{"model.metric_loss_type": "triplet_center"})
    model = build_model(spec, num_classes=4).train()
    criterion = ReidCriterion(loss_terms(spec), num_classes=4, feat_dim=model.embedding_dim)
    optimizer = torch.optim.Adam(model.parameters(), lr=spec.train.optim.base_lr)
    center_optimizer = torch.optim.SGD(criterion.center_parameters(), lr=0.5)
    images = torch.randn(8, 3, 64, 32)
    losses = []
    for _ in range(6):
        optimizer.zero_grad()
        center_optimizer.zero_grad()
        loss, parts = criterion(model(images, LABELS), LABELS)
        loss.backward()
        for center in criterion.center_parameters():
            center.grad.mul_(1.0 / spec.train.optim.center_loss_weight)
        optimizer.step()
        center_optimizer.step()
        losses.append(loss.item())
    assert set(parts) == {"id", "triplet", "center"}
    assert losses[-1] < losses[0]


def test_gem_pooling_matches_its_formula_and_replaces_the_average_pool() -> None:
    x = torch.rand(2, 5, 4, 3) + 0.1
    gem = GeneralizedMeanPooling(p=3.0)
    expected = (x**3).mean(dim=(2, 3), keepdim=True) ** (1 / 3)
    torch.testing.assert_close(gem(x), expected)
    torch.testing.assert_close(GeneralizedMeanPooling(p=1.0)(x), x.mean(dim=(2, 3), keepdim=True))
    spec = ExperimentSpec.model_validate(
        {"model": {"backbone": "resnet_18", "pretrain_choice": "self", "pooling": "gem"}}
    )
    model = build_model(spec, num_classes=3)
    pools = [m for m in model.modules() if isinstance(m, GeneralizedMeanPooling)]
    assert len(pools) == 1
    assert not any(isinstance(m, torch.nn.AdaptiveAvgPool2d) for m in model.modules())
    model.train()
    model(torch.rand(4, 3, 64, 32), torch.tensor([0, 1, 2, 0]))[0].sum().backward()
    assert pools[0].p.grad is not None  # p is learned
    rebuilt = ReidModel.from_card(model.card((0.5, 0.5, 0.5), (0.2, 0.2, 0.2)))
    assert any(isinstance(m, GeneralizedMeanPooling) for m in rebuilt.modules())

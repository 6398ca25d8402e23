"""Loading ImageNet state dicts and reidkit checkpoints, with honest reports and clear errors."""

from __future__ import annotations

import os
from pathlib import Path
from urllib.error import URLError

import pytest
import timm
import torch
import torchvision
from torchvision.models import WeightsEnum

from reidkit.config.spec import ModelSpec
from reidkit.errors import CheckpointError
from reidkit.models import load_imagenet, load_pretrained
from tests.conftest import backbone_from, model_from

MOBILENET_FILE = (
    Path(__file__).resolve().parents[3] / "shared/weights/mobilenet_v2_imagenet_features.pth"
)


def small_spec(backbone: str = "resnet_18", **fields: object) -> ModelSpec:
    return ModelSpec(
        backbone=backbone, input_height=64, input_width=32, pretrain_choice="self", **fields
    )


def torchvision_resnet18_file(folder: Path, drop_counters: bool = False) -> Path:
    """A torchvision-format resnet18 state dict with distinctive values."""
    state = torchvision.models.resnet18().state_dict()
    if drop_counters:  # the original model-zoo files predate num_batches_tracked
        state = {k: v for k, v in state.items() if not k.endswith("num_batches_tracked")}
    path = folder / "resnet18.pth"
    torch.save(state, path)
    return path


@pytest.mark.skipif(not MOBILENET_FILE.is_file(), reason=f"{MOBILENET_FILE} is absent")
def test_real_mobilenet_imagenet_file_fits_completely() -> None:
    backbone = backbone_from(small_spec("mobilenet_v2"))
    report = load_pretrained(backbone, MOBILENET_FILE)
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    assert report.loaded == len(backbone.state_dict())
    reference = torch.load(MOBILENET_FILE, weights_only=True)
    first_conv = "features.0.0.weight"
    assert torch.equal(backbone.state_dict()[first_conv], reference[first_conv])


@pytest.mark.skipif(not MOBILENET_FILE.is_file(), reason=f"{MOBILENET_FILE} is absent")
def test_mobilenet_file_into_reid_model_reports_backbone_keys_only() -> None:
    model = model_from(small_spec("mobilenet_v2"), 10)
    report = load_pretrained(model, MOBILENET_FILE)
    assert report.missing == [] and report.loaded == len(model.backbone.state_dict())


@pytest.mark.parametrize("drop_counters", [False, True])
def test_torchvision_resnet_state_dict_loads(tmp_path: Path, drop_counters: bool) -> None:
    path = torchvision_resnet18_file(tmp_path, drop_counters)
    source = torch.load(path, weights_only=True)
    backbone = backbone_from(small_spec(last_stride=1))
    report = load_pretrained(backbone, path)
    assert report.missing == [] and report.unexpected == [] and report.mismatched == []
    assert report.loaded == len(source) - 2  # all but the ImageNet classifier fc.weight/fc.bias
    layer4_conv = backbone.body.layer4[0].conv1.weight
    torch.testing.assert_close(layer4_conv, source["layer4.0.conv1.weight"])
    assert "loaded" in report.summary() and "\n" not in report.summary()


@pytest.mark.filterwarnings("ignore::UserWarning:timm")  # timm's bias-table interpolation
def test_timm_swin_state_dict_is_resized_to_person_windows(tmp_path: Path) -> None:
    source = timm.create_model("swin_tiny_patch4_window7_224", num_classes=1000).state_dict()
    path = tmp_path / "swin_tiny.pth"
    torch.save(source, path)
    backbone = backbone_from(ModelSpec(backbone="swin_tiny_patch4_window7_224"))
    report = load_pretrained(backbone, path)
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    torch.testing.assert_close(
        backbone.body.patch_embed.proj.weight, source["patch_embed.proj.weight"]
    )


def test_reidkit_checkpoint_with_other_class_count_reports_the_mismatch(tmp_path: Path) -> None:
    trained = model_from(small_spec(feat_dim=64), 5)
    path = tmp_path / "reid.pth"
    torch.save({"state_dict": trained.state_dict(), "epoch": 3}, path)
    model = model_from(small_spec(feat_dim=64), 7)
    report = load_pretrained(model, path)
    assert report.mismatched == ["classifier.weight"]
    assert report.missing == [] and report.unexpected == []
    torch.testing.assert_close(model.reduction.weight, trained.reduction.weight)
    assert "1 shape-mismatched (classifier.weight)" in report.summary()


def test_lightning_checkpoint_loads_the_model_part(tmp_path: Path) -> None:
    trained = model_from(small_spec(feat_dim=64), 5)
    state = {f"model.{k}": v for k, v in trained.state_dict().items()}
    state["criterion.center_loss.centers"] = torch.zeros(5, 64)
    path = tmp_path / "reid_model_latest.pth"
    torch.save({"state_dict": state, "reidkit": {"backbone": "resnet_18"}}, path)
    model = model_from(small_spec(feat_dim=64), 5)
    report = load_pretrained(model, path)
    assert (report.missing, report.unexpected, report.mismatched) == ([], [], [])
    torch.testing.assert_close(model.classifier.weight, trained.classifier.weight)


def test_missing_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match=r"nope\.pth' do not exist; fix model\.pretrained"):
        load_pretrained(backbone_from(small_spec()), tmp_path / "nope.pth")


def test_a_device_or_fifo_is_not_a_file_of_weights(tmp_path: Path) -> None:
    fifo = tmp_path / "weights.pth"
    os.mkfifo(fifo)  # never opened: reading one waits for a writer
    for path, kind in ((Path("/dev/null"), "a character device"), (fifo, "a FIFO (named pipe)")):
        with pytest.raises(CheckpointError) as refused:
            load_pretrained(backbone_from(small_spec()), path)
        assert str(refused.value) == (
            f"pretrained weights '{path}' are {kind}, not a regular file; "
            "fix model.pretrained_model_path"
        )


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (b"REIDKIT-AESGCM-1\nsealed bytes", "is encrypted; set encryption_key"),
        ([1, 2, 3], "holds a list, not a state dict"),
        ({"conv1.weight": "text"}, "entry 'conv1.weight' is a str"),
    ],
)
def test_non_state_dict_files_are_checkpoint_errors(
    tmp_path: Path, content: object, needle: str
) -> None:
    path = tmp_path / "bad.pth"
    if isinstance(content, bytes):
        path.write_bytes(content)
    else:
        torch.save(content, path)
    with pytest.raises(CheckpointError, match=needle) as error:
        load_pretrained(backbone_from(small_spec()), path)
    assert "\n" not in str(error.value)


@pytest.mark.skipif(not MOBILENET_FILE.is_file(), reason=f"{MOBILENET_FILE} is absent")
def test_weights_of_another_architecture_are_refused() -> None:
    with pytest.raises(CheckpointError, match=r"no tensor of .* fits the model"):
        load_pretrained(backbone_from(small_spec("resnet_18")), MOBILENET_FILE)


def test_imagenet_without_path_offline_says_what_to_do(monkeypatch: pytest.MonkeyPatch) -> None:
    def offline(self: WeightsEnum, *args: object, **kwargs: object) -> None:
        raise URLError("[Errno -2] Name or service not known")

    monkeypatch.setattr(WeightsEnum, "get_state_dict", offline)
    with pytest.raises(CheckpointError) as error:
        load_imagenet(backbone_from(small_spec("resnet_50")))
    assert str(error.value) == (
        "model.pretrain_choice is 'imagenet' but the ImageNet weights for resnet_50 cannot be "
        "downloaded (<urlopen error [Errno -2] Name or service not known>); set "
        "model.pretrained_model_path to a local ImageNet state dict, or "
        "model.pretrain_choice=self to train from scratch"
    )

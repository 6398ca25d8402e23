"""OnnxEmbedder and load_embedder: an exported file used exactly where a PyTorch model is."""

from __future__ import annotations

from pathlib import Path

import onnx
import pytest
import torch

from reidkit.actions.models import load_checked_embedder
from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec
from reidkit.errors import CheckpointError
from reidkit.export import ExportResult, OnnxEmbedder, load_embedder
from reidkit.models import ReidModel
from reidkit.models.restore import restore_model


@pytest.fixture
def onnx_file(exported: ExportResult) -> Path:
    return exported.onnx_file


def test_embedder_gives_the_pytorch_embeddings(
    resnet_spec: ExperimentSpec, onnx_file: Path
) -> None:
    model, card = restore_model(resnet_spec.export.checkpoint)
    embedder = OnnxEmbedder(onnx_file)
    images = torch.randn(6, 3, 64, 32)
    with torch.no_grad():
        expected = model(images)
    embeddings = embedder(images)
    assert embeddings.dtype == torch.float32 and embeddings.device == images.device
    torch.testing.assert_close(embeddings, expected, atol=1e-4, rtol=0)
    assert "CPUExecutionProvider" in embedder.providers
    assert embedder.card == card  # the whole model card travels in the file


def test_file_without_metadata_reads_shapes_from_the_graph(onnx_file: Path, tmp_path: Path) -> None:
    """A TAO-exported file has no reidkit metadata; its graph still says how to feed it."""
    model = onnx.load(str(onnx_file))
    del model.metadata_props[:]
    bare = tmp_path / "tao.onnx"
    onnx.save_model(model, bare)
    card = OnnxEmbedder(bare).card
    assert (card.input_height, card.input_width, card.embedding_dim) == (64, 32, 64)
    assert card.backbone is None and card.pixel_mean is None and card.match_threshold is None


def test_missing_or_foreign_file_is_a_checkpoint_error(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        OnnxEmbedder(tmp_path / "absent.onnx")
    foreign = tmp_path / "weights.onnx"
    foreign.write_bytes(b"this is not a protobuf")
    with pytest.raises(CheckpointError, match=r"weights\.onnx' is not a usable ONNX model"):
        OnnxEmbedder(foreign)


def test_load_embedder_dispatches_on_the_suffix(
    resnet_spec: ExperimentSpec, onnx_file: Path
) -> None:
    embed, card = load_embedder(onnx_file)
    assert isinstance(embed, OnnxEmbedder) and card.embedding_dim == 64
    model, card = load_embedder(resnet_spec.export.checkpoint)
    assert isinstance(model, ReidModel) and not model.training and card.num_classes == 10


def test_load_embedder_refuses_a_file_for_another_input_size(
    resnet_spec: ExperimentSpec, onnx_file: Path
) -> None:
    spec = apply_overrides(resnet_spec, {"model.input_height": 128})
    with pytest.raises(CheckpointError, match=r"model\.input_height=64 but the spec has 128"):
        load_checked_embedder(spec, onnx_file, "evaluate.checkpoint")

"""Export for real: files run by onnxruntime and compared with the PyTorch model they came from."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from reidkit.actions.export import export
from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec
from reidkit.data import prepare_splits
from reidkit.data.preprocessing import resolve_preprocessing
from reidkit.engine.datamodule import eval_loader
from reidkit.errors import CheckpointError, ExportError
from reidkit.evaluation.features import extract_embeddings
from reidkit.export import ExportResult, load_embedder
from reidkit.export import onnx as onnx_export
from reidkit.models.restore import restore_model
from tests.conftest import RunMain, assert_one_line_error, empty_spec, tiny_overrides
from tests.export.conftest import make_checkpoint


def _onnx_vs_torch(spec: ExperimentSpec, path: Path, batch: int) -> float:
    """Largest |onnxruntime - PyTorch| on a fresh random batch, independent of export's check."""
    model, _ = restore_model(spec.export.checkpoint)
    images = torch.randn(batch, 3, spec.model.input_height, spec.model.input_width)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (output,) = session.run(["fc_pred"], {"input": images.numpy()})
    with torch.no_grad():
        reference = model(images).numpy()
    assert output.shape == reference.shape
    return float(np.abs(output - reference).max())


def test_export_writes_one_verified_file_with_tao_interface(
    resnet_spec: ExperimentSpec, exported: ExportResult
) -> None:
    folder = resnet_spec.action_dir("export")
    assert exported.onnx_file == folder / "model.onnx"
    assert sorted(p.name for p in folder.iterdir() if not p.name.startswith(".")) == [
        "experiment.yaml",
        "model.onnx",
        "status.json",
    ]
    assert exported.max_abs_diff < 1e-4 and exported.min_cosine > 0.99999
    assert "CPUExecutionProvider" in exported.providers and "random" in exported.inputs
    model = onnx.load(str(exported.onnx_file), load_external_data=False)
    onnx.checker.check_model(model, full_check=True)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [17]
    (graph_input,), (graph_output,) = model.graph.input, model.graph.output
    assert graph_input.name == "input" and graph_output.name == "fc_pred"
    in_dims = [d.dim_param or d.dim_value for d in graph_input.type.tensor_type.shape.dim]
    out_dims = [d.dim_param or d.dim_value for d in graph_output.type.tensor_type.shape.dim]
    assert isinstance(in_dims[0], str) and in_dims[1:] == [3, 64, 32]
    assert isinstance(out_dims[0], str) and out_dims[1:] == [64]
    status = json.loads((folder / "status.json").read_text())
    assert status["status"] == "SUCCESS" and status["max_abs_diff"] == exported.max_abs_diff


def test_metadata_records_preprocessing_and_provenance(
    resnet_spec: ExperimentSpec, exported: ExportResult
) -> None:
    model = onnx.load(str(exported.onnx_file), load_external_data=False)
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["backbone"] == "resnet_18" and json.loads(meta["embedding_dim"]) == 64
    assert json.loads(meta["input_height"]) == 64 and json.loads(meta["input_width"]) == 32
    assert json.loads(meta["pixel_mean"]) == resnet_spec.dataset.pixel_mean
    assert json.loads(meta["pixel_std"]) == resnet_spec.dataset.pixel_std
    assert meta["color_order"] == "RGB" and meta["pixel_scale"] == "1/255"
    assert meta["spec_digest"] == resnet_spec.digest() and meta["reidkit_version"]


def _elsewhere(spec: ExperimentSpec, folder: Path, onnx_file: Path) -> ExperimentSpec:
    """``spec`` exporting to ``onnx_file`` with its status in ``folder``, not the shared run."""
    overrides = {"export.onnx_file": str(onnx_file), "export.results_dir": str(folder / "run")}
    return apply_overrides(spec, overrides)


@pytest.mark.parametrize("batch", [1, 5])
def test_dynamic_batch_matches_pytorch(
    resnet_spec: ExperimentSpec, exported: ExportResult, batch: int
) -> None:
    assert _onnx_vs_torch(resnet_spec, exported.onnx_file, batch) < 1e-4


@pytest.mark.parametrize(
    ("backbone", "opset"),
    [("mobilenet_v2", 17), ("swin_tiny_patch4_window7_224", 17), ("resnet_18", 18)],
)
def test_other_backbones_and_the_dynamo_exporter(tmp_path: Path, backbone: str, opset: int) -> None:
    """Swin runs at 64x32, its smallest size here: timm pads and shrinks windows to fit."""
    spec = make_checkpoint(tmp_path, f"model.backbone={backbone}", f"export.opset={opset}")
    result = export(spec)
    model = onnx.load(str(result.onnx_file), load_external_data=False)
    assert [o.version for o in model.opset_import if o.domain in ("", "ai.onnx")] == [opset]
    assert result.max_abs_diff < 1e-4
    assert _onnx_vs_torch(spec, result.onnx_file, 5) < 1e-4


def test_dataset_images_check_and_evaluation_embeddings_from_either_file(
    synth_root: Path, tmp_path: Path
) -> None:
    """The check runs on real crops; evaluation's extractor gives the same embeddings from the
    ONNX file as from the checkpoint, flip averaging included."""
    data_keys = [o for o in tiny_overrides(synth_root, tmp_path) if o.startswith("dataset.")]
    data_keys = [o for o in data_keys if not o.startswith("dataset.num_classes")]
    spec = make_checkpoint(tmp_path, "model.backbone=resnet_18", *data_keys)
    result = export(spec)
    assert result.inputs == "8 query/gallery images" and result.max_abs_diff < 1e-4
    query = prepare_splits(spec, train=False, verify=False).query
    features = {}
    for name, path in (("torch", spec.export.checkpoint), ("onnx", result.onnx_file)):
        embedder, card = load_embedder(path)
        loader = eval_loader(spec, query, 16, resolve_preprocessing(card=card))
        features[name] = extract_embeddings(embedder, loader, torch.device("cpu"), flip=True)
    torch.testing.assert_close(
        features["onnx"].features, features["torch"].features, atol=1e-4, rtol=0
    )
    assert (features["onnx"].pids == features["torch"].pids).all()


def test_fp16_variant_is_checked_and_keeps_float32_io(tmp_path: Path) -> None:
    spec = make_checkpoint(tmp_path, "model.backbone=resnet_18", "export.fp16=true")
    result = export(spec)
    assert result.fp16_file == result.onnx_file.with_name("model_fp16.onnx")
    assert result.fp16_min_cosine is not None and result.fp16_min_cosine >= 0.999
    assert result.fp16_max_abs_diff is not None and result.fp16_max_abs_diff > result.max_abs_diff
    model = onnx.load(str(result.fp16_file))
    float16 = onnx.TensorProto.FLOAT16
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert model.graph.output[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT
    assert all(t.data_type == float16 for t in model.graph.initializer if t.dims)
    assert result.fp16_file.stat().st_size < 0.6 * result.onnx_file.stat().st_size


def test_existing_file_is_refused_unless_overwrite(
    tmp_path: Path, resnet_spec: ExperimentSpec
) -> None:
    target = tmp_path / "out" / "reid.onnx"
    target.parent.mkdir()
    target.write_bytes(b"keep me")
    spec = _elsewhere(resnet_spec, tmp_path, target)
    with pytest.raises(ExportError, match=r"reid\.onnx.*export\.overwrite=true"):
        export(spec)
    assert target.read_bytes() == b"keep me"
    result = export(apply_overrides(spec, {"export.overwrite": True}))
    assert result.onnx_file == target and onnx.load(str(target)).graph.output[0].name == "fc_pred"


def test_unwritable_path_is_named(tmp_path: Path, resnet_spec: ExperimentSpec) -> None:
    blocker = tmp_path / "not_a_folder"
    blocker.write_text("")
    spec = _elsewhere(resnet_spec, tmp_path, blocker / "model.onnx")
    with pytest.raises(ExportError, match=r"export\.onnx_file.*not_a_folder"):
        export(spec)


def test_missing_and_unfitting_checkpoints(tmp_path: Path, resnet_spec: ExperimentSpec) -> None:
    spec = _elsewhere(resnet_spec, tmp_path, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match=r"export\.checkpoint is not set"):
        export(apply_overrides(spec, {"export.checkpoint": None}))
    with pytest.raises(CheckpointError, match=r"model\.feat_dim=64"):
        export(apply_overrides(spec, {"model.feat_dim": 128}))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]  # no model file, only records
    status = json.loads((tmp_path / "run" / "status.json").read_text())
    assert status["status"] == "FAILURE" and "model.feat_dim=64" in status["message"]


def test_file_beyond_tolerance_is_not_kept(
    tmp_path: Path, resnet_spec: ExperimentSpec, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A zero tolerance fails any real export; nothing, not even a temporary file, remains."""
    monkeypatch.setattr(onnx_export, "FP32_ATOL", 0.0)
    spec = _elsewhere(resnet_spec, tmp_path, tmp_path / "m.onnx")
    with pytest.raises(ExportError, match="differs from PyTorch"):
        export(spec)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"]
    assert sorted(p.name for p in (tmp_path / "run").iterdir() if not p.name.startswith(".")) == [
        "experiment.yaml",
        "status.json",
    ]
    status = json.loads((spec.action_dir("export") / "status.json").read_text())
    assert status["status"] == "FAILURE"


def test_cli_reports_a_missing_checkpoint_in_one_line(tmp_path: Path, run_main: RunMain) -> None:
    result = run_main("export", "-e", str(empty_spec(tmp_path)), f"results_dir={tmp_path}")
    assert_one_line_error(result, "export.checkpoint is not set")

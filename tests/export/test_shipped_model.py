"""The shipped model is a first-class model: evaluate and inference give the same answers from
the exported ONNX file as from the checkpoint it came from, on a really trained model."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from reidkit.actions.evaluate import evaluate
from reidkit.actions.export import export
from reidkit.actions.infer import infer
from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec


@pytest.fixture(scope="module")
def shipped(trained: tuple[ExperimentSpec, Path], tmp_path_factory: pytest.TempPathFactory):
    spec, checkpoint = trained
    folder = tmp_path_factory.mktemp("shipped")
    spec = apply_overrides(spec, {"results_dir": str(folder), "export.checkpoint": str(checkpoint)})
    return spec, checkpoint, export(spec).onnx_file


def test_evaluate_metrics_agree_between_checkpoint_and_onnx(shipped, tmp_path: Path) -> None:
    spec, checkpoint, onnx_file = shipped
    results = {}
    for name, model in (("pth", checkpoint), ("onnx", onnx_file)):
        overrides = {
            "evaluate.checkpoint": str(model),
            "evaluate.results_dir": str(tmp_path / name),
            "model.with_flip_feature": True,
        }
        results[name] = evaluate(apply_overrides(spec, overrides))
    assert results["onnx"].metrics == results["pth"].metrics
    np.testing.assert_allclose(results["onnx"].cmc, results["pth"].cmc)


def test_inference_embeddings_agree_between_checkpoint_and_onnx(shipped, tmp_path: Path) -> None:
    spec, checkpoint, onnx_file = shipped
    embeddings = {}
    for name, model in (("pth", checkpoint), ("onnx", onnx_file)):
        overrides = {
            "inference.checkpoint": str(model),
            "inference.results_dir": str(tmp_path / name),
        }
        result = infer(apply_overrides(spec, overrides))
        embeddings[name] = np.load(result.embeddings_file)
        matches = json.loads(result.matches_file.read_text())
        embeddings[name + "_top1"] = [q["matches"][0]["img_path"] for q in matches]
    np.testing.assert_allclose(embeddings["onnx"], embeddings["pth"], atol=1e-4)
    assert embeddings["onnx_top1"] == embeddings["pth_top1"]

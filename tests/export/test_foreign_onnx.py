"""An ONNX file as TAO's own export writes it (input ``input`` [B,3,256,128], output ``fc_pred``,
no reidkit metadata) works in evaluate, inference, gallery add / search and serve, through the
Python functions and the CLI, with one note of the preprocessing it assumed.

The file is a real network (a ResNet-18 with moved BatchNorm statistics) exported with TAO's
names and nothing else; its embeddings are checked against the PyTorch model fed with TAO's
documented normalisation, computed here by hand.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
import yaml
from fastapi.testclient import TestClient

from reidkit.actions.evaluate import evaluate
from reidkit.actions.gallery import gallery_add, gallery_search
from reidkit.actions.infer import infer
from reidkit.actions.serve import serve_settings
from reidkit.config.loading import load_spec
from reidkit.data import synthesize
from reidkit.errors import ReidkitError
from reidkit.export.onnx import to_onnx
from reidkit.gallery.factory import open_gallery
from reidkit.models import restore_model
from reidkit.serve.app import create_app
from reidkit.serve.tokens import create_token
from tests.conftest import RunMain
from tests.export.conftest import embed_by_hand, make_checkpoint
from tests.serve.conftest import Server

# TAO's documented defaults (shared/reference/tao_reid.md), written out by hand.
TAO_MEAN = (0.485, 0.456, 0.406)
TAO_STD = (0.226, 0.226, 0.226)
NOTE = "preprocessing for ONNX file"


@dataclass(frozen=True)
class TaoModel:
    onnx: Path
    reference: torch.nn.Module  # the network the file was exported from
    data: Path


@pytest.fixture(scope="module")
def tao(tmp_path_factory: pytest.TempPathFactory) -> TaoModel:
    root = tmp_path_factory.mktemp("tao-onnx")
    synthesize(root / "data", ids=6, cameras=2, images_per_id=4, height=64, width=32, seed=5)
    spec = make_checkpoint(
        root, "model.backbone=resnet_18", "model.input_height=256", "model.input_width=128",
        "model.feat_dim=256",
    )  # fmt: skip
    model, _ = restore_model(spec.export.checkpoint or "")
    path = root / "tao_reid.onnx"
    onnx.save(to_onnx(model, 256, 128, 17), path)
    proto = onnx.load(path)
    assert not proto.metadata_props  # nothing of reidkit's: what TAO writes
    assert [i.name for i in proto.graph.input] == ["input"]
    assert [o.name for o in proto.graph.output] == ["fc_pred"]
    return TaoModel(path, model, root / "data")


def _spec_file(tao: TaoModel, folder: Path) -> Path:
    """A user's spec naming the file and the data only: no model section, no normalisation."""
    model = str(tao.onnx)
    spec = {
        "results_dir": str(folder / "results"),
        "dataset": {
            "test_dataset_dir": str(tao.data / "bounding_box_test"),
            "query_dataset_dir": str(tao.data / "query"),
            "num_workers": 0,
        },
        "evaluate": {"checkpoint": model},
        "inference": {"checkpoint": model},
        "gallery": {
            "uri": str(folder / "gallery"),
            "checkpoint": model,
            "crops": str(tao.data / "bounding_box_test"),
            "operator": "tester",
        },
        "serve": {"token_file": str(folder / "tokens.json"), "threads": 1},
    }
    path = folder / "tao_spec.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def _reference(tao: TaoModel, paths: list[Path]) -> np.ndarray:
    """The PyTorch network on TAO-normalised crops, preprocessed by hand."""
    return embed_by_hand(tao.reference, paths, (256, 128), TAO_MEAN, TAO_STD)


def _unit(rows: np.ndarray) -> np.ndarray:
    return rows / np.linalg.norm(rows, axis=1, keepdims=True)


def _notes(text: str) -> list[str]:
    return [line for line in text.splitlines() if NOTE in line]


def test_evaluate_and_inference_run_it_as_tao_would_feed_it(
    tao: TaoModel, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spec = load_spec(_spec_file(tao, tmp_path))
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        metrics = evaluate(spec).metrics
    assert 0 <= metrics["mAP"] <= 100 and metrics["num_valid_queries"] > 0
    (note,) = _notes(caplog.text)
    assert str(tao.onnx) in note and "TAO's default" in note and "dataset.pixel_std" in note

    result = infer(spec)
    rows = json.loads(result.output_file.read_text())
    paths = [Path(row["img_path"]) for row in rows]
    ours = np.array([row["embedding"] for row in rows], dtype=np.float32)
    reference = _reference(tao, paths)
    assert np.abs(ours - reference).max() <= 1e-4 * max(1.0, np.abs(reference).max())


def test_evaluate_and_inference_cli(tao: TaoModel, tmp_path: Path, run_main: RunMain) -> None:
    spec = str(_spec_file(tao, tmp_path))
    for action in ("evaluate", "inference"):
        result = run_main(action, "-e", spec)
        assert result.returncode == 0, result.stderr
        assert len(_notes(result.stdout + result.stderr)) == 1, result.stderr


def test_gallery_add_and_search_python(tao: TaoModel, tmp_path: Path) -> None:
    spec = load_spec(_spec_file(tao, tmp_path))
    added = gallery_add(spec).added
    assert added == len(list((tao.data / "bounding_box_test").glob("*.jpg")))
    with open_gallery(tmp_path / "gallery") as store:
        card = store.card
    assert card is not None
    # The gallery records what the crops were fed and which file embedded them.
    assert card["pixel_mean"] == pytest.approx(TAO_MEAN)
    assert card["pixel_std"] == pytest.approx(TAO_STD)
    assert card["weights_digest"] == hashlib.sha256(tao.onnx.read_bytes()).hexdigest()

    probe = sorted((tao.data / "bounding_box_test").glob("*.jpg"))[2]
    search = load_spec(_spec_file(tao, tmp_path), [f"gallery.query=[{probe}]", "gallery.top_k=3"])
    (hits,) = gallery_search(search).hits
    assert Path(hits[0].meta.path) == probe.resolve()
    assert hits[0].distance < 1e-4
    # Its distances are those of the PyTorch network fed as TAO feeds it.
    others = [Path(h.meta.path) for h in hits]
    vectors = _unit(_reference(tao, [probe, *others]))
    expected = ((vectors[1:] - vectors[0]) ** 2).sum(axis=1)
    assert [h.distance for h in hits] == pytest.approx(expected.tolist(), abs=1e-4)


def test_gallery_add_and_search_cli(tao: TaoModel, tmp_path: Path, run_main: RunMain) -> None:
    spec = str(_spec_file(tao, tmp_path))
    added = run_main("gallery", "add", "-e", spec)
    assert added.returncode == 0, added.stderr  # was: TypeError from data/transforms.py
    assert len(_notes(added.stdout + added.stderr)) == 1
    probe = sorted((tao.data / "bounding_box_test").glob("*.jpg"))[0]
    found = run_main("gallery", "search", "-e", spec, f"gallery.query=[{probe}]")
    assert found.returncode == 0, found.stderr
    assert len(_notes(found.stdout + found.stderr)) == 1
    assert probe.name in found.stdout


def test_a_gallery_filled_with_other_normalisation_refuses_it(
    tao: TaoModel, tmp_path: Path
) -> None:
    """The assumed normalisation is part of what the gallery records: feeding the same file
    otherwise is another embedding space."""
    spec = _spec_file(tao, tmp_path)
    gallery_add(load_spec(spec, ["dataset.pixel_std=[0.25,0.25,0.25]"]))
    probe = sorted((tao.data / "bounding_box_test").glob("*.jpg"))[0]
    with pytest.raises(ReidkitError) as refused:
        gallery_search(load_spec(spec, [f"gallery.query=[{probe}]"]))
    assert "\n" not in str(refused.value)


def test_serve_python(tao: TaoModel, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    spec = load_spec(_spec_file(tao, tmp_path))
    gallery_add(spec)
    token = create_token(tmp_path / "tokens.json", "desk", ["search"])
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="reidkit"):
        app = create_app(serve_settings(spec))
    assert len(_notes(caplog.text)) == 1
    probe = sorted((tao.data / "bounding_box_test").glob("*.jpg"))[1]
    with TestClient(app) as client:
        response = client.post(
            "/v1/search",
            headers={"Authorization": f"Bearer {token}"},
            files=[("images", ("q.jpg", probe.read_bytes(), "image/jpeg"))],
            data={"k": "2"},
        )
    assert response.status_code == 200, response.text
    hits = response.json()["hits"]
    assert Path(hits[0]["path"]).name == probe.name and hits[0]["distance"] < 1e-4


def test_serve_cli(tao: TaoModel, tmp_path: Path, run_main: RunMain) -> None:
    spec = _spec_file(tao, tmp_path)
    assert run_main("gallery", "add", "-e", str(spec)).returncode == 0
    tokens = tmp_path / "tokens.json"
    token = create_token(tokens, "desk", ["search"])
    server = Server(tao.onnx, tmp_path / "gallery", tokens)
    try:
        probe = sorted((tao.data / "bounding_box_test").glob("*.jpg"))[1]
        with server.client(token) as client:
            files = [("images", ("q.jpg", probe.read_bytes(), "image/jpeg"))]
            hits = client.post("/v1/search", files=files, data={"k": "2"}).json()["hits"]
        assert Path(hits[0]["path"]).name == probe.name and hits[0]["distance"] < 1e-4
        server.stop()
        assert server.process.returncode == 0
        assert len(_notes(server.log.read_text())) == 1
    finally:
        server.kill()

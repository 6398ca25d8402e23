"""Run an exported ONNX file where a PyTorch model would run: tensors in, embeddings out.

Evaluate and inference accept either a checkpoint or an ``.onnx`` file; :func:`load_embedder`
hides the difference, so scoring the deployed file uses the very code path that scores the
checkpoint. Everything the file needs to be used correctly (input size, normalisation, backbone)
travels in its ``metadata_props``; files without them (e.g. TAO's own exports) still run, with
the input size and embedding width read from the graph.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnxruntime as ort
import torch
from onnxruntime.capi.onnxruntime_pybind11_state import (
    Fail,
    InvalidArgument,
    InvalidGraph,
    InvalidProtobuf,
    NoSuchFile,
    NotImplemented,
)
from torch import Tensor

from reidkit.config.spec import ExperimentSpec
from reidkit.engine.restore import restore_model
from reidkit.errors import CheckpointError

INPUT_NAME = "input"
OUTPUT_NAME = "fc_pred"

# metadata_props values are strings; these keys hold JSON (lists and numbers).
_JSON_KEYS = ("input_height", "input_width", "embedding_dim", "feat_dim", "num_classes")
_JSON_LIST_KEYS = ("pixel_mean", "pixel_std")
_TEXT_KEYS = ("backbone", "reidkit_version", "spec_digest", "color_order", "pixel_scale")
_SESSION_ERRORS = (Fail, InvalidArgument, InvalidGraph, InvalidProtobuf, NoSuchFile, NotImplemented)


def default_providers(gpu_id: int = 0) -> list[str | tuple[str, dict[str, Any]]]:
    """CUDA first when this onnxruntime build has it, CPU always as the fallback.

    TF32 is switched off so GPU results stay within the fp32 tolerance the export was checked
    against (TF32 matmuls round to 10 mantissa bits).
    """
    providers: list[str | tuple[str, dict[str, Any]]] = []
    if "CUDAExecutionProvider" in ort.get_available_providers():
        providers.append(("CUDAExecutionProvider", {"device_id": gpu_id, "use_tf32": 0}))
    providers.append("CPUExecutionProvider")
    return providers


def _decode(metadata: dict[str, str]) -> dict[str, Any]:
    card: dict[str, Any] = {k: metadata[k] for k in _TEXT_KEYS if k in metadata}
    for key in (*_JSON_KEYS, *_JSON_LIST_KEYS):
        if key in metadata:
            card[key] = json.loads(metadata[key])
    return card


class OnnxEmbedder:
    """An onnxruntime session that maps ``[B, 3, H, W]`` float images to ``[B, D]`` embeddings.

    Callable like an eval-mode :class:`~reidkit.models.ReidModel`: the result is float32 on the
    input's device, so evaluation code needs no ONNX-specific branch.
    """

    def __init__(
        self,
        path: str | Path,
        *,
        providers: list[str | tuple[str, dict[str, Any]]] | None = None,
        gpu_id: int = 0,
        session_options: ort.SessionOptions | None = None,
    ) -> None:
        """Open ``path``; ``session_options`` sets e.g. thread counts on a shared machine."""
        self.path = Path(path)
        if not self.path.is_file():
            raise CheckpointError(f"ONNX file '{self.path}' does not exist; check the path")
        try:
            self.session = ort.InferenceSession(
                str(self.path),
                sess_options=session_options,
                providers=providers or default_providers(gpu_id),
            )
        except _SESSION_ERRORS as exc:
            reason = str(exc).strip().splitlines()[0][:200] if str(exc).strip() else "unreadable"
            raise CheckpointError(
                f"'{self.path}' is not a usable ONNX model ({reason}); pass a file written by "
                "reidkit export or a checkpoint"
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if len(inputs) != 1 or len(outputs) != 1 or len(inputs[0].shape) != 4:
            raise CheckpointError(
                f"ONNX file '{self.path}' is not a re-id embedder (expected one [B,3,H,W] input "
                "and one [B,D] output); export the model with reidkit export"
            )
        self._input_name = inputs[0].name
        self._card = self._read_card(inputs[0].shape, outputs[0].shape)

    def _read_card(self, input_shape: list[Any], output_shape: list[Any]) -> dict[str, Any]:
        """Metadata, with the graph's own static shapes taking precedence over recorded ones."""
        card = _decode(self.session.get_modelmeta().custom_metadata_map)
        _, _, height, width = input_shape
        for key, value in (("input_height", height), ("input_width", width)):
            if isinstance(value, int):
                card[key] = value
        if isinstance(output_shape[-1], int):
            card["embedding_dim"] = output_shape[-1]
        return card

    @property
    def card(self) -> dict[str, Any]:
        """The keys of a checkpoint's model card that the file records (no ``spec``)."""
        return dict(self._card)

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, best first."""
        return self.session.get_providers()

    def __call__(self, images: Tensor) -> Tensor:
        """Embeddings of a batch; float32, on the device ``images`` came from."""
        batch = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        (embeddings,) = self.session.run(None, {self._input_name: batch})
        return torch.from_numpy(embeddings).to(device=images.device, dtype=torch.float32)


# Spec key -> card key that an ONNX file must agree on to score what the spec describes.
_MUST_MATCH = {
    "model.input_height": "input_height",
    "model.input_width": "input_width",
    "model.backbone": "backbone",
    "model.feat_dim": "feat_dim",
}


def check_onnx_fits(spec: ExperimentSpec, card: dict[str, Any], path: Path) -> None:
    """Refuse a file built for another input size or model; keys it does not record are skipped."""
    for dotted, card_key in _MUST_MATCH.items():
        if card_key not in card:
            continue
        expected = getattr(spec.model, dotted.removeprefix("model."))
        if card[card_key] != expected:
            raise CheckpointError(
                f"ONNX file '{path}' was exported with {dotted}={card[card_key]} but the spec has "
                f"{expected}; set {dotted}={card[card_key]} or export a matching model"
            )


def load_embedder(
    spec: ExperimentSpec, path: str | Path, *, gpu_id: int = 0
) -> tuple[Callable[[Tensor], Tensor], dict[str, Any]]:
    """An embedding function and its model card, from an ``.onnx`` file or a checkpoint.

    A checkpoint gives the eval-mode PyTorch model (checked by ``restore_model``); an ONNX file
    gives an :class:`OnnxEmbedder` checked against the spec's input size and model.
    """
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        return restore_model(spec, path)
    embedder = OnnxEmbedder(path, gpu_id=gpu_id)
    check_onnx_fits(spec, embedder.card, path)
    return embedder, embedder.card

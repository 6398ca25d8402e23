"""Run an exported ONNX file where a PyTorch model would run: tensors in, embeddings out.

Evaluate and inference accept either a checkpoint or an ``.onnx`` file; :func:`load_embedder`
hides the difference, so scoring the deployed file uses the very code path that scores the
checkpoint. Everything the file needs to be used correctly (input size, normalisation, backbone)
travels in its ``metadata_props``; files without them (e.g. TAO's own exports) still run, with
the input size and embedding width read from the graph, the normalisation left to
:func:`reidkit.data.preprocessing.resolve_preprocessing` and the file's digest as its identity.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
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

from reidkit.errors import CheckpointError, first_line
from reidkit.models.card import ModelCard
from reidkit.models.digest import file_digest
from reidkit.models.restore import restore_model

INPUT_NAME = "input"
OUTPUT_NAME = "fc_pred"

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
            raise CheckpointError(
                f"'{self.path}' is not a usable ONNX model ({first_line(exc, 200)}); pass a file "
                "written by "
                "reidkit export or a checkpoint"
            ) from None
        inputs, outputs = self.session.get_inputs(), self.session.get_outputs()
        if (
            len(inputs) != 1
            or len(outputs) != 1
            or len(inputs[0].shape) != 4
            or len(outputs[0].shape) != 2
        ):
            raise CheckpointError(
                f"ONNX file '{self.path}' is not a re-id embedder (expected one [B,3,H,W] input "
                "and one [B,D] output); export the model with reidkit export"
            )
        self._input_name = inputs[0].name
        card = ModelCard.from_onnx(
            self.session.get_modelmeta().custom_metadata_map,
            tuple(inputs[0].shape),
            tuple(outputs[0].shape),
            f"ONNX file '{self.path}'",
        )
        #: What the file records about its model, the graph's static shapes taking precedence.
        #: A file that names no weights (TAO's export, or reidkit's before cards carried a
        #: digest) is identified by its bytes: its identity is the file itself.
        self.card = card if card.weights_digest else replace(card, weights_digest=file_digest(path))

    @property
    def providers(self) -> list[str]:
        """The execution providers the session actually uses, best first."""
        return self.session.get_providers()

    def __call__(self, images: Tensor) -> Tensor:
        """Embeddings of a batch; float32, on the device ``images`` came from."""
        batch = np.ascontiguousarray(images.detach().to("cpu", torch.float32).numpy())
        (embeddings,) = self.session.run(None, {self._input_name: batch})
        return torch.from_numpy(embeddings).to(device=images.device, dtype=torch.float32)


def load_embedder(
    path: str | Path,
    *,
    encryption_key: str | None = None,
    gpu_id: int = 0,
    neck_feat: str | None = None,
) -> tuple[Callable[[Tensor], Tensor], ModelCard]:
    """An embedding function and its model card, from an ``.onnx`` file or a checkpoint.

    A checkpoint gives the eval-mode PyTorch model (``neck_feat`` chooses its test-time
    embedding); an ONNX file gives an :class:`OnnxEmbedder` on GPU ``gpu_id`` when this
    onnxruntime has CUDA. Whether the model fits what the caller needs is the caller's check.
    """
    path = Path(path)
    if path.suffix.lower() != ".onnx":
        return restore_model(path, encryption_key, neck_feat=neck_feat)
    embedder = OnnxEmbedder(path, gpu_id=gpu_id)
    return embedder, embedder.card

"""The server's model: an ONNX file on onnxruntime, fed through the micro-batcher.

Preprocessing follows the one rule (:func:`reidkit.data.preprocessing.resolve_preprocessing`):
the spec's explicit ``dataset.pixel_mean`` / ``pixel_std``, else the model's own metadata, else
TAO's defaults (a TAO export records no normalisation), so the server feeds a model exactly as
``gallery add`` and ``evaluate`` do.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from reidkit.data.preprocessing import Explicit, resolve_preprocessing
from reidkit.data.transforms import build_eval_transform
from reidkit.errors import CheckpointError
from reidkit.export.runtime import OnnxEmbedder
from reidkit.serve.batching import MicroBatcher


class ServedModel:
    """Crops -> L2-normalised embeddings, batched across concurrent requests."""

    def __init__(
        self,
        path: Path,
        *,
        threads: int = 0,
        max_batch: int = 32,
        max_wait_s: float = 0.005,
        on_batch: Callable[[int], None] | None = None,
        explicit: Explicit | None = None,
    ) -> None:
        """``explicit``: the preprocessing the spec sets itself (``field -> (key, value)``)."""
        if path.suffix.lower() != ".onnx":
            raise CheckpointError(
                f"serve.model '{path}' must be an .onnx file; export the checkpoint with "
                "reidkit export"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.embedder = OnnxEmbedder(path, session_options=options)
        fed = resolve_preprocessing(explicit, self.embedder.card, model=f"ONNX file '{path}'")
        #: The model card the file records, with the preprocessing it is fed; the gallery
        #: checks it on every open.
        self.card = self.embedder.card.with_preprocessing(fed.values())
        self.height, self.width = fed.input_size
        self.dim = self.card.embedding_dim
        # The evaluation pipeline itself, so a query embeds exactly as 'gallery add' and
        # 'evaluate' embed.
        self._transform = build_eval_transform(fed)
        self.batcher = MicroBatcher(
            self._embed_batch, max_batch=max_batch, max_wait_s=max_wait_s, on_batch=on_batch
        )

    def preprocess(self, images: list[Image.Image]) -> np.ndarray:
        """RGB images -> ``[n, 3, H, W]`` float32, exactly as the eval transform prepares them."""
        return torch.stack([self._transform(image) for image in images]).numpy()

    def _embed_batch(self, batch: np.ndarray) -> np.ndarray:
        embeddings = self.embedder(torch.from_numpy(batch)).numpy()
        norms = np.linalg.norm(embeddings, axis=1, keepdims=True)
        return embeddings / np.maximum(norms, 1e-12)

    async def embed(self, batch: np.ndarray) -> np.ndarray:
        """Normalised embeddings ``[n, D]`` of a preprocessed batch."""
        return await self.batcher.embed(batch)

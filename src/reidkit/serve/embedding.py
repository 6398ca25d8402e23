"""The server's model: an ONNX file on onnxruntime, fed through the micro-batcher.

Preprocessing is read from the model's own metadata (input size, mean, std), so the server
cannot feed a model differently from how it was trained and exported.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from PIL import Image

from reidkit.data.transforms import eval_transform
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
    ) -> None:
        if path.suffix.lower() != ".onnx":
            raise CheckpointError(
                f"serve.model '{path}' must be an .onnx file; export the checkpoint with "
                "reidkit export"
            )
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        options.inter_op_num_threads = 1
        self.embedder = OnnxEmbedder(path, session_options=options)
        #: The model card the file records; the gallery checks it on every open.
        self.card = self.embedder.card
        self.height, self.width = self.card.input_height, self.card.input_width
        self.dim = self.card.embedding_dim
        # The evaluation pipeline itself, so a query embeds exactly as 'gallery add' and
        # 'evaluate' embed; files without a card (TAO's) get the statistics TAO uses.
        self._transform = eval_transform(
            (self.height, self.width),
            self.card.pixel_mean or (0.485, 0.456, 0.406),
            self.card.pixel_std or (0.226, 0.226, 0.226),
        )
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

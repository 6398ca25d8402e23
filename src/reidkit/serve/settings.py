"""What a server needs, as plain values: the ``serve:`` spec section is translated to this.

The defaults are the safe ones: loopback only, no CORS, bounded requests. Every limit exists
because the service holds people's movements and runs on a small machine: a request must not be
able to exhaust its memory (bytes, pixels, images) or its time (k, batch).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class ServeSettings:
    """One server: its model, gallery, token file, bind address and limits."""

    model: Path
    gallery: str
    tokens: Path
    host: str = "127.0.0.1"
    port: int = 8080
    workers: int = 1
    # Limits: requests over max_request_bytes get 413, images over max_image_pixels or more
    # than max_images per request get 422.
    max_request_bytes: int = 16 * 1024 * 1024
    max_image_pixels: int = 4_000_000
    max_images: int = 64
    max_k: int = 100
    # Micro-batching: gather concurrent requests for up to batch_wait_ms, max_batch images.
    max_batch: int = 32
    batch_wait_ms: float = 5.0
    # Distance at or below which a hit is a match; None: the gallery model card's calibrated one.
    match_threshold: float | None = None
    # Normalisation the spec sets itself (dataset.pixel_mean / pixel_std); None: the model's.
    pixel_mean: tuple[float, ...] | None = None
    pixel_std: tuple[float, ...] | None = None
    # onnxruntime intra-op threads; 0 lets onnxruntime use every core.
    threads: int = 0
    cors_origins: tuple[str, ...] = field(default_factory=tuple)
    # Folder the gallery's crop files were added from: search hits show paths relative to it
    # (absolute paths only to admin tokens). None: only the file name of an absolute path.
    crop_root: str | None = None
    # Where audit records go when the gallery is read-only (its own audit.jsonl cannot grow).
    audit_file: Path | None = None
    # An associate run's calibration.json: enables live association (POST /v1/tracks).
    association_calibration: str | None = None

    def explicit_preprocessing(self) -> dict[str, tuple[str, tuple[float, ...]]]:
        """The normalisation set in the spec, as the preprocessing rule takes it."""
        given = {"pixel_mean": self.pixel_mean, "pixel_std": self.pixel_std}
        return {name: (f"dataset.{name}", tuple(v)) for name, v in given.items() if v is not None}

    def to_json(self) -> str:
        """Serialised for uvicorn worker processes, which rebuild the app from the environment."""
        data: dict[str, Any] = asdict(self)
        data["model"], data["tokens"] = str(self.model), str(self.tokens)
        data["cors_origins"] = list(self.cors_origins)
        data["audit_file"] = None if self.audit_file is None else str(self.audit_file)
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ServeSettings:
        data = json.loads(text)
        data["model"], data["tokens"] = Path(data["model"]), Path(data["tokens"])
        data["cors_origins"] = tuple(data["cors_origins"])
        data["audit_file"] = None if data["audit_file"] is None else Path(data["audit_file"])
        return cls(**data)

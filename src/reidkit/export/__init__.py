"""ONNX: write a model verified against PyTorch, and run exported files like a PyTorch model."""

from reidkit.export.onnx import ExportResult, write_verified
from reidkit.export.runtime import OnnxEmbedder, load_embedder

__all__ = ["ExportResult", "OnnxEmbedder", "load_embedder", "write_verified"]

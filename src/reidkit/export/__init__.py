"""Export to ONNX, verified against PyTorch, and run exported files like a PyTorch model."""

from reidkit.export.onnx import ExportResult, export
from reidkit.export.runtime import OnnxEmbedder, load_embedder

__all__ = ["ExportResult", "OnnxEmbedder", "export", "load_embedder"]

"""The service fixtures (a small exported model, its tokens) for the tests that also check the
service: the one image decoder is checked through it, and how a stopped service ends."""

from tests.serve.conftest import model, onnx_model, tokens  # noqa: F401

"""reidkit: an open, TAO-compatible person re-identification toolkit.

Every action is a plain function of an :class:`~reidkit.config.ExperimentSpec`, usable from a
notebook exactly as the CLI uses it::

    import reidkit
    spec = reidkit.load_spec("spec.yaml", ["train.num_epochs=30"])
    result = reidkit.train(spec)

Actions are imported on first use so that ``import reidkit`` stays cheap.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

# Public name -> "module:attribute", resolved lazily (PEP 562).
_ACTIONS = {
    "load_spec": "reidkit.config.spec:load_spec",
    "train": "reidkit.engine.train:train",
    "evaluate": "reidkit.evaluation.evaluate:evaluate",
    "infer": "reidkit.evaluation.infer:infer",
    "export": "reidkit.export.onnx:export",
    "automl": "reidkit.automl.study:run_automl",
}

__all__ = ["__version__", *_ACTIONS]


def __getattr__(name: str) -> Any:
    if name not in _ACTIONS:
        raise AttributeError(f"module 'reidkit' has no attribute {name!r}")
    module, attribute = _ACTIONS[name].split(":")
    return getattr(import_module(module), attribute)

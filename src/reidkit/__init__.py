"""reidkit: an open, TAO-compatible person re-identification toolkit.

Every action is a plain function of an :class:`~reidkit.config.ExperimentSpec` in
:mod:`reidkit.actions`; the CLI calls the very same functions, so a notebook gets exactly what
the command line does (``reidkit.train`` included: it routes through AutoML when the spec's
``automl_policy`` and ``automl.automl_enabled`` say so)::

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
    "load_spec": "reidkit.config.loading:load_spec",
    "train": "reidkit.actions.train:train",
    "evaluate": "reidkit.actions.evaluate:evaluate",
    "infer": "reidkit.actions.infer:infer",
    "export": "reidkit.actions.export:export",
    "automl": "reidkit.actions.automl:automl",
    "associate": "reidkit.actions.associate:associate",
    "adapt": "reidkit.actions.adapt:adapt",
}

__all__ = ["__version__", *_ACTIONS]


def __getattr__(name: str) -> Any:
    if name not in _ACTIONS:
        raise AttributeError(f"module 'reidkit' has no attribute {name!r}")
    module, attribute = _ACTIONS[name].split(":")
    return getattr(import_module(module), attribute)

"""Rebuild a trained model from a checkpoint, refusing one that does not fit the spec.

Evaluate, inference and export all start here, so a checkpoint trained for another backbone,
embedding width, class count or input size fails with one clear line instead of a wall of
``load_state_dict`` shape errors (or, worse, silently wrong embeddings).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from reidkit.config.spec import ExperimentSpec, ModelSpec, OptimSpec
from reidkit.engine.checkpoints import load_checkpoint
from reidkit.errors import CheckpointError
from reidkit.models import ReidModel

# Spec key -> model-card key that must agree between the spec and the checkpoint.
_MUST_MATCH = {
    "model.backbone": "backbone",
    "model.feat_dim": "feat_dim",
    "dataset.num_classes": "num_classes",
    "model.input_height": "input_height",
    "model.input_width": "input_width",
}


def _spec_value(spec: ExperimentSpec, dotted: str) -> Any:
    section, key = dotted.split(".")
    return getattr(getattr(spec, section), key)


def check_fits(spec: ExperimentSpec, card: dict[str, Any], path: Path) -> None:
    """Raise when the checkpoint's model differs from the spec's in a way that changes results."""
    for dotted, card_key in _MUST_MATCH.items():
        expected, found = _spec_value(spec, dotted), card.get(card_key)
        if found != expected:
            raise CheckpointError(
                f"checkpoint '{path}' was trained with {dotted}={found} "
                f"but the spec has {expected}; "
                f"set {dotted}={found} or pick the matching checkpoint"
            )


def restore_model(spec: ExperimentSpec, path: str | Path) -> tuple[ReidModel, dict[str, Any]]:
    """The checkpoint's model in eval mode on the CPU, and its model card.

    The architecture comes from the checkpoint's own spec (so structural options always match
    the weights); the test-time options ``neck_feat`` and ``with_flip_feature`` come from ``spec``.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path, spec.encryption_key)
    card = checkpoint.get("reidkit")
    if not isinstance(card, dict) or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint '{path}' was not written by reidkit train")
    check_fits(spec, card, path)
    trained = card["spec"]["model"] | {"neck_feat": spec.model.neck_feat, "pretrain_choice": "self"}
    model = ReidModel(
        ModelSpec.model_validate(trained),
        card["num_classes"],
        OptimSpec.model_validate(card["spec"]["train"]["optim"]),
    )
    weights = {
        k.removeprefix("model."): v
        for k, v in checkpoint["state_dict"].items()
        if k.startswith("model.")
    }
    try:
        model.load_state_dict(weights)
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit its model: {str(exc).splitlines()[0]}"
        ) from None
    return model.eval(), card

"""Rebuild a trained model from a checkpoint file: card first, then the network, then weights.

Evaluate, inference, export and the gallery all start here. The network is rebuilt from the
checkpoint's own card, so structural options always match the weights; whether the model fits
what the caller wants is the caller's check (:meth:`ModelCard.require_fit`), made before any
weight is loaded.
"""

from __future__ import annotations

import logging
from dataclasses import replace
from pathlib import Path

from reidkit.errors import CheckpointError, first_line
from reidkit.models.card import ModelCard, model_weights, read_card
from reidkit.models.checkpoint_file import load_checkpoint
from reidkit.models.digest import weights_digest
from reidkit.models.reid_model import ReidModel

log = logging.getLogger("reidkit")


def read_checkpoint_card(path: str | Path, encryption_key: str | None) -> ModelCard:
    """Only the card of a checkpoint (to check it before building anything)."""
    return read_card(load_checkpoint(path, encryption_key), str(path))


def restore_model(
    path: str | Path, encryption_key: str | None = None, neck_feat: str | None = None
) -> tuple[ReidModel, ModelCard]:
    """The checkpoint's model in eval mode on the CPU, and its card.

    ``neck_feat`` (a test-time choice: the embedding before or after the BNNeck) overrides the
    card's; everything structural comes from the card. The card's ``weights_digest`` is the
    digest of the weights the file holds, computed here: a checkpoint written before cards
    recorded one gets it, and one whose weights were edited afterwards is not mistaken for
    the model it came from.
    """
    path = Path(path)
    checkpoint = load_checkpoint(path, encryption_key)
    card = read_card(checkpoint, str(path))
    model = ReidModel.from_card(card, neck_feat=neck_feat)
    try:
        model.load_state_dict(model_weights(checkpoint))
    except RuntimeError as exc:
        raise CheckpointError(
            f"checkpoint '{path}' does not fit its own model card: {first_line(exc)}"
        ) from None
    digest = weights_digest(model.state_dict())
    if card.weights_digest not in (None, digest):
        log.warning(
            "checkpoint '%s': its weights changed after its card was written; it is identified "
            "by the weights it holds", path,
        )  # fmt: skip
    card = replace(card, weights_digest=digest)
    if neck_feat is not None:
        card = replace(card, neck_feat=neck_feat)
    return model.eval(), card

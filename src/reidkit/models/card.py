"""The model card: what a trained model is, in every file that holds one.

In the spirit of timm's ``PretrainedCfg``: a small typed record of everything a user of the
model must know to feed it and to trust its output (backbone, input size, normalisation,
embedding width, identities it was trained on, neck, and the calibrated "same person" distance
threshold once evaluation has measured one), plus the keyword arguments that rebuild the
network. It is written into every checkpoint and every exported ONNX file and read back from
both, and :meth:`ModelCard.require_fit` is the one "does this model fit" check.

This module also owns the checkpoint layout (see ``docs/architecture.md``): a checkpoint is
Lightning's training state dictionary whose ``state_dict`` holds the model's tensors under the
``model.`` prefix (the criterion's centers under ``criterion.``) and whose ``reidkit`` entry is
the card. Nothing else in reidkit knows those key names. The module imports no torch, so the
card of an ONNX file can be read by the lightest tools.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from typing import Any

from reidkit import __version__
from reidkit.errors import CheckpointError

#: Checkpoint key holding the card.
CARD_KEY = "reidkit"
#: Prefix of the model's tensors inside a checkpoint's ``state_dict``.
MODEL_PREFIX = "model."
#: ONNX ``metadata_props`` key holding the whole card as JSON.
ONNX_CARD_KEY = "reidkit_card"


#: Card fields that decide the embedding space (see :meth:`ModelCard.identity`).
IDENTITY_FIELDS = (
    "weights_digest",
    "backbone",
    "input_height",
    "input_width",
    "embedding_dim",
    "pixel_mean",
    "pixel_std",
    "neck_feat",
)


@dataclass(frozen=True)
class ModelCard:
    """A trained re-identification model, as a deployment or a check needs to know it.

    Fields a foreign ONNX file (e.g. TAO's own export) does not record are ``None`` and are
    skipped by :meth:`require_fit`.
    """

    #: Registered backbone name (``model.backbone``).
    backbone: str | None
    #: Network input size in pixels.
    input_height: int
    input_width: int
    #: Width of the embedding the model outputs.
    embedding_dim: int
    #: ``model.feat_dim`` it was built with (CNNs project to it; Swin may keep its own width).
    feat_dim: int | None = None
    #: Training identities (width of the identity head).
    num_classes: int | None = None
    #: Per-channel RGB normalisation on a 0-1 pixel scale: ``(pixel / 255 - mean) / std``.
    pixel_mean: tuple[float, float, float] | None = None
    pixel_std: tuple[float, float, float] | None = None
    #: ``bnneck`` or ``no``, and which side of it the embedding is taken from at test time.
    neck: str | None = None
    neck_feat: str | None = None
    #: Squared-Euclidean distance of L2-normalised embeddings under which two crops are called
    #: the same person; None until an evaluation calibrated it.
    match_threshold: float | None = None
    #: The false-match rate that threshold was calibrated for.
    match_false_match_rate: float | None = None
    reidkit_version: str = __version__
    #: The remaining keyword arguments that rebuild the network (:meth:`ReidModel.from_card`).
    build: dict[str, Any] = field(default_factory=dict)
    #: SHA-256 of the trained weights (not of a file; :func:`reidkit.models.digest.weights_digest`):
    #: a checkpoint, its ONNX export and an fp16 variant of it share it, two trainings of one
    #: architecture do not. A loaded foreign file (TAO's ONNX) gets the SHA-256 of its bytes:
    #: its identity is the file. ``None`` only where nothing computed it yet (the card of a
    #: checkpoint from before digests, read without loading its weights).
    weights_digest: str | None = None
    #: What ``reidkit adapt`` did to make this model from another (source digest, target size,
    #: rounds); ``None`` for a model trained on labels.
    adaptation: dict[str, Any] | None = None

    # ------------------------------------------------------------------ identity
    def identity(self) -> dict[str, Any]:
        """What makes two models' embeddings comparable: equal identities, same space.

        A gallery records it and refuses another; a recalibrated threshold or a newer reidkit
        leaves it unchanged.
        """
        data = self.to_dict()
        return {key: data[key] for key in IDENTITY_FIELDS}

    # ------------------------------------------------------------------ plain data
    def to_dict(self) -> dict[str, Any]:
        """JSON-ready dictionary (tuples become lists)."""
        data = asdict(self)
        for key in ("pixel_mean", "pixel_std"):
            if data[key] is not None:
                data[key] = list(data[key])
        return data

    @classmethod
    def from_dict(cls, data: Mapping[str, Any], source: str = "model card") -> ModelCard:
        """Rebuild a card; a damaged or foreign one is a one-line :class:`CheckpointError`."""
        if not isinstance(data, Mapping):
            raise CheckpointError(f"{source} has no readable model card; pass a reidkit model")
        known = {f.name for f in fields(cls)}
        values = {k: v for k, v in data.items() if k in known}
        try:
            for key in ("pixel_mean", "pixel_std"):
                if values.get(key) is not None:
                    values[key] = tuple(float(v) for v in values[key])
                    if len(values[key]) != 3:
                        raise ValueError(f"{key} needs 3 values")
            for key in ("input_height", "input_width", "embedding_dim"):
                values[key] = int(values[key])
            if not isinstance(values.get("build", {}), dict):
                raise ValueError("build is not a mapping")
            return cls(**values)
        except (KeyError, TypeError, ValueError) as exc:
            raise CheckpointError(
                f"{source} has a damaged model card ({exc!s:.80}); re-export or retrain the model"
            ) from None

    def with_preprocessing(self, values: Mapping[str, Any]) -> ModelCard:
        """A copy recording how the model is fed: ``input_height``, ``input_width``,
        ``pixel_mean``, ``pixel_std`` as :func:`reidkit.data.preprocessing.resolve_preprocessing`
        resolved them. A card-less file's assumed normalisation then travels with it: a gallery
        records it, and a model fed otherwise has another :meth:`identity`."""
        unknown = set(values) - {"input_height", "input_width", "pixel_mean", "pixel_std"}
        if unknown:
            raise ValueError(f"not preprocessing fields: {sorted(unknown)}")
        return replace(self, **values)

    def with_threshold(self, threshold: float, false_match_rate: float) -> ModelCard:
        """A copy carrying a calibrated match threshold."""
        return replace(self, match_threshold=threshold, match_false_match_rate=false_match_rate)

    # ------------------------------------------------------------------ ONNX metadata
    def to_onnx_metadata(self) -> dict[str, str]:
        """``metadata_props``: the whole card as JSON plus flat keys deployment tools read.

        Preprocessing is ``((pixel * pixel_scale) - pixel_mean) / pixel_std`` per channel on RGB
        pixels in [0, 255], NCHW; the embedding is not L2-normalised.
        """
        flat = {
            k: json.dumps(v) if not isinstance(v, str) else v
            for k, v in self.to_dict().items()
            if k != "build" and v is not None
        }
        return {
            **flat,
            "pixel_scale": "1/255",
            "color_order": "RGB",
            ONNX_CARD_KEY: json.dumps(self.to_dict(), sort_keys=True),
        }

    @classmethod
    def from_onnx(
        cls,
        metadata: Mapping[str, str],
        input_shape: tuple[Any, ...],
        output_shape: tuple[Any, ...],
        source: str,
    ) -> ModelCard:
        """The card of an ONNX file; the graph's static shapes win over recorded ones.

        Files without reidkit's card (TAO's exports, other tools) get a card with the input
        size and embedding width read from the graph and every other field unknown.
        """
        if ONNX_CARD_KEY in metadata:
            try:
                recorded = json.loads(metadata[ONNX_CARD_KEY])
            except ValueError:
                raise CheckpointError(
                    f"{source} has a damaged model card in its metadata; re-export the model"
                ) from None
        else:
            recorded = {}
        _, _, height, width = input_shape
        shapes = {"input_height": height, "input_width": width, "embedding_dim": output_shape[-1]}
        for key, value in shapes.items():
            if isinstance(value, int):
                recorded[key] = value
            elif key not in recorded:
                raise CheckpointError(
                    f"{source} has a dynamic {key.replace('_', ' ')} and no model card; "
                    "export it with a fixed input size or with reidkit export"
                )
        recorded.setdefault("backbone", None)
        return cls.from_dict(recorded, source)

    # ------------------------------------------------------------------ the fit check
    def require_fit(self, expected: Mapping[str, tuple[str, Any]], source: str) -> None:
        """Raise one :class:`CheckpointError` naming every field that differs from ``expected``.

        ``expected`` maps a card field to ``(spec key, value the spec asks for)``. Fields this
        card does not know (None) are skipped.
        """
        differing = [
            (key, found, wanted)
            for field_name, (key, wanted) in expected.items()
            if (found := getattr(self, field_name)) is not None and _differs(found, wanted)
        ]
        if differing:
            trained = ", ".join(f"{key}={_show(found)}" for key, found, _ in differing)
            spec = ", ".join(f"{_show(wanted)}" for _, _, wanted in differing)
            raise CheckpointError(
                f"{source} was trained with {trained} but the spec has {spec}; set "
                f"{' '.join(f'{key}={_show(found)}' for key, found, _ in differing)} "
                "or use a model (or a new results_dir) that matches the spec"
            )


def _differs(found: Any, wanted: Any) -> bool:
    if isinstance(found, tuple | list) and isinstance(wanted, tuple | list):
        return [float(v) for v in found] != [float(v) for v in wanted]
    return found != wanted


def _show(value: Any) -> str:
    return json.dumps(list(value)) if isinstance(value, tuple | list) else str(value)


# ---------------------------------------------------------------------- checkpoint layout
def attach_card(checkpoint: dict[str, Any], card: ModelCard) -> None:
    """Record ``card`` in a checkpoint dictionary about to be saved."""
    checkpoint[CARD_KEY] = card.to_dict()


def read_card(checkpoint: Mapping[str, Any], source: str) -> ModelCard:
    """The card of a loaded checkpoint; one written by something else is refused clearly."""
    if CARD_KEY not in checkpoint or "state_dict" not in checkpoint:
        raise CheckpointError(f"checkpoint '{source}' was not written by reidkit train")
    return ModelCard.from_dict(checkpoint[CARD_KEY], f"checkpoint '{source}'")


def is_reidkit_checkpoint(checkpoint: Any) -> bool:
    """Whether a loaded object is a reidkit training checkpoint (card and weights)."""
    return isinstance(checkpoint, Mapping) and CARD_KEY in checkpoint and "state_dict" in checkpoint


def model_weights(checkpoint: Mapping[str, Any]) -> dict[str, Any]:
    """The model's own tensors from a checkpoint, keyed as the model names them."""
    state = checkpoint.get("state_dict", checkpoint)
    return {k.removeprefix(MODEL_PREFIX): v for k, v in state.items() if k.startswith(MODEL_PREFIX)}


def has_model_prefix(state: Mapping[str, Any]) -> bool:
    """Whether a state dictionary is a reidkit checkpoint's (prefixed) rather than a model's."""
    return any(key.startswith(f"{MODEL_PREFIX}backbone.") for key in state)

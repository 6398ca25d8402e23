"""The one preprocessing rule: what input size and normalisation feed a model, and why.

In the spirit of timm's ``resolve_data_config``, each value is taken from the first of

1. **explicit settings**: spec keys the user wrote (``model.input_height``,
   ``model.input_width``, ``dataset.pixel_mean``, ``dataset.pixel_std``; see
   :func:`spec_settings`), as YAML, a CLI override or an AutoML trial's spec;
2. **the model card**: what the model records about how it was trained (every reidkit
   checkpoint and ONNX export records all four; an ONNX file from TAO records only its input
   size, in its graph);
3. **the documented defaults**: TAO's, which are also the spec's defaults: 256x128,
   ``pixel_mean`` [0.485, 0.456, 0.406] (ImageNet's), ``pixel_std`` [0.226, 0.226, 0.226].

The spec's *default* values are not explicit: a gallery or serve spec that does not mention the
normalisation feeds a model the way its card says it was trained. Training has no card yet, so
there the rule gives the spec's values (defaults included), and the card it writes records them.
When a model has a card, the evaluation paths (evaluate, inference, export's check images,
gallery, serve) resolve against it; an explicit input size that differs from the card's is refused
before this rule runs (:meth:`reidkit.models.card.ModelCard.require_fit`), while an explicit
normalisation overrides the card's (the user's word is last, as in timm) and is reported in the
note. The resolved values go on the card the action carries on (a gallery records them), so a
gallery filled with one normalisation refuses a model fed with another.

Every value records where it came from; :meth:`Preprocessing.note` is the one line an action
prints when something was assumed or overridden.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from reidkit.config.spec import DatasetSpec, ModelSpec

log = logging.getLogger("reidkit")

#: The four values the rule resolves, named as a model card names them.
FIELDS = ("input_height", "input_width", "pixel_mean", "pixel_std")
#: Where each field is set in a spec.
SPEC_KEYS = {
    "input_height": "model.input_height",
    "input_width": "model.input_width",
    "pixel_mean": "dataset.pixel_mean",
    "pixel_std": "dataset.pixel_std",
}
#: TAO's defaults, read from the spec so that the two can never disagree.
DEFAULTS: dict[str, Any] = {
    "input_height": ModelSpec.model_fields["input_height"].default,
    "input_width": ModelSpec.model_fields["input_width"].default,
    "pixel_mean": tuple(DatasetSpec().pixel_mean),
    "pixel_std": tuple(DatasetSpec().pixel_std),
}
CARD = "model card"
DEFAULT = "default"

Explicit = Mapping[str, tuple[str, Any]]


class RecordedPreprocessing(Protocol):
    """What a model card records (:class:`reidkit.models.card.ModelCard` is one)."""

    input_height: int
    input_width: int
    pixel_mean: Sequence[float] | None
    pixel_std: Sequence[float] | None


@dataclass(frozen=True)
class Preprocessing:
    """The input size and per-channel normalisation (0-1 pixel scale) to feed a model."""

    input_height: int
    input_width: int
    pixel_mean: tuple[float, float, float]
    pixel_std: tuple[float, float, float]
    #: Where each field's value came from: a spec key, :data:`CARD` or :data:`DEFAULT`.
    sources: Mapping[str, str]
    #: The card's own values that explicit settings replaced (field -> card value).
    overridden: Mapping[str, Any]

    @property
    def input_size(self) -> tuple[int, int]:
        """``(height, width)``, as torchvision's ``Resize`` takes it."""
        return (self.input_height, self.input_width)

    def values(self) -> dict[str, Any]:
        """The four resolved values keyed as on a model card (to record them on one)."""
        return {name: getattr(self, name) for name in FIELDS}

    def note(self, model: str) -> str | None:
        """One line for the user when a value was assumed or overrode the card, else None."""
        assumed = [name for name in FIELDS if self.sources[name] == DEFAULT]
        if not assumed and not self.overridden:
            return None
        shown = ", ".join(
            f"{name} {_show(getattr(self, name))} ({self._source(name)})" for name in FIELDS
        )
        line = f"preprocessing for {model}: {shown}"
        if assumed:
            keys = " / ".join(SPEC_KEYS[name] for name in assumed)
            line += f"; the model records no {' or '.join(assumed)}: set {keys} if it differs"
        return line

    def _source(self, name: str) -> str:
        source = self.sources[name]
        if name in self.overridden:
            return f"{source}, not the model card's {_show(self.overridden[name])}"
        return "TAO's default" if source == DEFAULT else source


def resolve_preprocessing(
    explicit: Explicit | None = None,
    card: RecordedPreprocessing | Mapping[str, Any] | None = None,
    *,
    model: str | None = None,
) -> Preprocessing:
    """Each value from ``explicit`` settings, else the model ``card``, else :data:`DEFAULTS`.

    ``explicit`` maps a field of :data:`FIELDS` to ``(spec key, value)``, as
    :func:`spec_settings` gives it; ``card`` is a model card or its dictionary (as a gallery
    records it), whose ``None`` values are unknown. ``model`` names the model in
    :meth:`Preprocessing.note`, logged (as a warning: an assumption may be wrong) when a value
    was assumed or overrode the card; an action passes it where it loads the model, once.
    """
    explicit = explicit or {}
    if card is None:
        recorded: Mapping[str, Any] = {}
    elif isinstance(card, Mapping):
        recorded = card
    else:
        recorded = {name: getattr(card, name, None) for name in FIELDS}
    values: dict[str, Any] = {}
    sources: dict[str, str] = {}
    overridden: dict[str, Any] = {}
    for name in FIELDS:
        on_card = recorded.get(name)
        if name in explicit:
            sources[name], values[name] = explicit[name]
            if on_card is not None and _canonical(name, on_card) != _canonical(name, values[name]):
                overridden[name] = _canonical(name, on_card)
        elif on_card is not None:
            sources[name], values[name] = CARD, on_card
        else:
            sources[name], values[name] = DEFAULT, DEFAULTS[name]
    resolved = Preprocessing(
        **{name: _canonical(name, values[name]) for name in FIELDS},
        sources=sources,
        overridden=overridden,
    )
    if model is not None and (note := resolved.note(model)):
        log.warning(note)
    return resolved


def spec_settings(model: ModelSpec, data: DatasetSpec) -> dict[str, tuple[str, Any]]:
    """The preprocessing a spec sets explicitly: only the keys the user wrote, never defaults."""
    sections = {"input_height": model, "input_width": model, "pixel_mean": data, "pixel_std": data}
    return {
        name: (SPEC_KEYS[name], getattr(section, name))
        for name, section in sections.items()
        if name in section.model_fields_set
    }


def training_preprocessing(model: ModelSpec, data: DatasetSpec) -> Preprocessing:
    """What a model being trained is fed: the spec's values (it has no card yet)."""
    return resolve_preprocessing(spec_settings(model, data))


def _canonical(name: str, value: Any) -> Any:
    if name in ("pixel_mean", "pixel_std"):
        return tuple(float(v) for v in value)
    return int(value)


def _show(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    return "[" + ", ".join(f"{v:g}" for v in value) + "]"

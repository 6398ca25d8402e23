"""Loading pretrained weights: ImageNet state dicts (torchvision / timm) and reidkit checkpoints.

Loading is lenient by design: keys the module lacks, keys the file lacks and tensors whose
shape differs (e.g. a classifier trained for another number of identities) are skipped and
listed in a :class:`LoadReport`, which the caller logs. Only a file that cannot be read, is not
a state dict, or of which nothing fits raises :class:`~reidkit.errors.CheckpointError`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from torch import Tensor, nn

from reidkit.errors import CheckpointError, first_line
from reidkit.models.backbones import Backbone, StateDict
from reidkit.models.card import has_model_prefix, is_reidkit_checkpoint, model_weights
from reidkit.models.checkpoint_file import read_checkpoint_object
from reidkit.oserrors import special_file_kind

# Wrapper keys under which training scripts nest the weights (reidkit/timm: "state_dict",
# original Swin/SOLIDER releases: "model").
_WRAPPER_KEYS = ("state_dict", "model")


@dataclass
class LoadReport:
    """What a lenient load did; ``missing`` never lists BatchNorm's ``num_batches_tracked``
    counters, which older torchvision files lack and which carry no learned value."""

    loaded: int
    missing: list[str]
    unexpected: list[str]
    mismatched: list[str]

    def summary(self) -> str:
        """One line for the log, naming the first few skipped keys of each kind."""
        parts = [f"loaded {self.loaded} tensors"]
        for label, keys in (
            ("missing", self.missing),
            ("unexpected", self.unexpected),
            ("shape-mismatched", self.mismatched),
        ):
            shown = ", ".join(keys[:3]) + (", ..." if len(keys) > 3 else "")
            parts.append(f"{len(keys)} {label}" + (f" ({shown})" if keys else ""))
        return "; ".join(parts)


def load_pretrained(
    module: nn.Module, path: str | Path, encryption_key: str | None = None
) -> LoadReport:
    """Load a torchvision/timm ImageNet state dict or a reidkit checkpoint file into ``module``.

    ``module`` is a :class:`ReidModel` (anything with a ``backbone`` attribute), a
    :class:`Backbone`, or any module whose keys match the file. A reidkit checkpoint sealed with
    ``encryption_key`` is opened with it, exactly as evaluate and export open it.
    """
    path = Path(path)
    if kind := special_file_kind(path):
        raise CheckpointError(
            f"pretrained weights '{path}' are {kind}, not a regular file; "
            "fix model.pretrained_model_path"
        )
    if not path.is_file():
        raise CheckpointError(
            f"pretrained weights '{path}' do not exist; fix model.pretrained_model_path"
        )
    return load_state(module, read_checkpoint_object(path, encryption_key), source=str(path))


def load_state(module: nn.Module, checkpoint: Any, source: str = "checkpoint") -> LoadReport:
    """Load an in-memory checkpoint the way :func:`load_pretrained` loads a file.

    A dict whose keys start with ``backbone.`` (or ``model.backbone.``, as Lightning saves it)
    is a whole-model (reidkit) state dict and is loaded into ``module``; anything else is a
    library state dict for the backbone, renamed by the backbone itself, so the report's
    ``missing`` lists backbone keys only.
    """
    if is_reidkit_checkpoint(checkpoint):
        # A reidkit training checkpoint also stores the criterion (center-loss centers), which
        # is not part of the model; the card knows which tensors are the model's.
        checkpoint = model_weights(checkpoint)
    state = _tensors(checkpoint, source)
    if has_model_prefix(state):  # a bare Lightning state dict of a reidkit model
        state = model_weights(state)
    backbone = getattr(module, "backbone", module)
    whole_model = backbone is not module and any(key.startswith("backbone.") for key in state)
    target = module if whole_model else backbone
    if isinstance(target, Backbone) and not whole_model:
        try:
            state = target.adapt_library_state_dict(state)
        except ValueError as exc:
            message = f"'{source}' does not fit backbone {target.name}: {exc}"
            raise CheckpointError(message) from None
    report = _load_matching(target, state)
    if report.loaded == 0:
        raise CheckpointError(
            f"no tensor of '{source}' fits the model ({report.summary()}); pass an ImageNet "
            "state dict of the configured model.backbone or a reidkit checkpoint"
        )
    return report


def load_imagenet(backbone: Backbone) -> LoadReport:
    """Download the library's ImageNet weights for ``backbone`` and load them.

    Used when ``pretrain_choice`` is 'imagenet' and no local file is given; offline this fails
    and the error tells the user the two ways out.
    """
    try:
        state = backbone.download_imagenet_state_dict()
    except Exception as exc:  # network, cache and hub errors all have the same remedy
        raise CheckpointError(
            f"model.pretrain_choice is 'imagenet' but the ImageNet weights for {backbone.name} "
            f"cannot be downloaded ({first_line(exc, 200)}); set model.pretrained_model_path to a "
            "local ImageNet state dict, or model.pretrain_choice=self to train from scratch"
        ) from None
    return load_state(backbone, state, source=f"ImageNet weights of {backbone.name}")


def _tensors(checkpoint: Any, source: str) -> StateDict:
    """The ``str -> Tensor`` mapping inside ``checkpoint``, unwrapping one wrapper key."""
    if isinstance(checkpoint, Mapping):
        for key in _WRAPPER_KEYS:
            if isinstance(checkpoint.get(key), Mapping):
                checkpoint = checkpoint[key]
                break
    if not isinstance(checkpoint, Mapping) or not checkpoint:
        raise CheckpointError(
            f"'{source}' holds a {type(checkpoint).__name__}, not a state dict; pass a "
            "torchvision/timm state dict or a reidkit checkpoint"
        )
    bad = next((k for k, v in checkpoint.items() if not isinstance(v, Tensor)), None)
    if bad is not None:
        raise CheckpointError(
            f"'{source}' is not a state dict: entry '{bad}' is a "
            f"{type(checkpoint[bad]).__name__}, not a tensor; pass a state dict of tensors"
        )
    return dict(checkpoint)


def _load_matching(module: nn.Module, state: Mapping[str, Tensor]) -> LoadReport:
    """Copy the tensors whose name and shape match; report everything else."""
    own = module.state_dict()
    fitting = {k: v for k, v in state.items() if k in own and own[k].shape == v.shape}
    module.load_state_dict(fitting, strict=False)
    return LoadReport(
        loaded=len(fitting),
        missing=[k for k in own if k not in state and not k.endswith("num_batches_tracked")],
        unexpected=[k for k in state if k not in own],
        mismatched=[k for k in state if k in own and own[k].shape != state[k].shape],
    )

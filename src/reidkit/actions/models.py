"""Which model a path or a run folder means, whether it fits the spec, and its calibration.

Wherever the spec names a model (``evaluate.checkpoint``, ``export.checkpoint``,
``gallery.checkpoint``, ``serve.model``, ``train.resume_training_checkpoint_path``,
``model.pretrained_model_path``) a file or an earlier run's results folder is accepted;
:func:`resolve_checkpoint` says which file that is, reading the folder's run record. The
threshold ``evaluate`` calibrates is recorded here with the digest of the file it was measured
on, so that export, gallery and serve take it for that very model and no other.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from reidkit.actions.lifecycle import STATUS
from reidkit.actions.run_record import (
    AdaptOutcome,
    AutomlOutcome,
    ExportOutcome,
    Outcome,
    TrainOutcome,
    read_run_record,
)
from reidkit.config.spec import ExperimentSpec
from reidkit.data import resolve_preprocessing, spec_settings
from reidkit.engine.checkpoints import LATEST_NAME, find_resume_checkpoint
from reidkit.errors import CheckpointError
from reidkit.evaluation.features import Embedder
from reidkit.export.runtime import load_embedder
from reidkit.models.card import ModelCard
from reidkit.models.digest import file_digest
from reidkit.oserrors import special_file_kind
from reidkit.outputs import read_json, write_json

log = logging.getLogger("reidkit")

#: ``evaluate``'s record of the match threshold it calibrated, and for which model file.
CALIBRATION = "calibration.json"


def architecture(spec: ExperimentSpec) -> dict[str, tuple[str, Any]]:
    """What the spec builds, defaults included: card field -> (spec key, value).

    The identity count is left out: it sizes only the training head, never the embedding.
    """
    model = spec.model
    return {
        "backbone": ("model.backbone", model.backbone),
        "feat_dim": ("model.feat_dim", model.feat_dim),
        "input_height": ("model.input_height", model.input_height),
        "input_width": ("model.input_width", model.input_width),
    }


def card_expectations(spec: ExperimentSpec) -> dict[str, tuple[str, Any]]:
    """What a trained model must be to embed as the spec asks: only the keys the user set.

    A trained model is rebuilt from its own card, so a key the spec leaves at its default asks
    nothing of it: the card's value is taken, as the one preprocessing rule takes its input
    size (:func:`reidkit.data.preprocessing.spec_settings`). A key the user wrote (spec file or
    override) is a requirement, and a model that differs is refused.
    """
    return {
        name: setting
        for name, setting in architecture(spec).items()
        if name in spec.model.model_fields_set
    }


def training_expectations(spec: ExperimentSpec) -> dict[str, tuple[str, Any]]:
    """What a checkpoint must be for training to continue from it (resume).

    Training builds the network from the spec, so its values count whether or not the user
    wrote them: a checkpoint of another architecture cannot continue into this one.
    """
    return {
        **architecture(spec),
        "num_classes": ("dataset.num_classes", spec.dataset.num_classes),
        "neck": ("model.neck", spec.model.neck),
    }


def require_card_fit(spec: ExperimentSpec, card: ModelCard, model: str) -> None:
    """Refuse ``model`` if its card differs from a key the spec sets; say what it takes from
    the card where the spec leaves a key at a default the card does not share."""
    card.require_fit(card_expectations(spec), model)
    taken = [
        f"{key}={found}"
        for name, (key, default) in architecture(spec).items()
        if name not in spec.model.model_fields_set
        and (found := getattr(card, name)) is not None
        and found != default
    ]
    if taken:
        log.warning(
            "%s: %s from its model card (the spec does not set %s)",
            model, ", ".join(taken), "them" if len(taken) > 1 else "it",
        )  # fmt: skip


def resolve_checkpoint(path: str | Path, key: str) -> Path:
    """A model file, or the model an earlier run left in a results folder; the choice is printed.

    A folder of a train run gives its best checkpoint by the monitored metric (recorded in its
    ``status.json``), else its latest; an export run gives its ONNX file; an AutoML run its best
    trial's; a ``results_dir`` root its ``train`` (else ``export``) run. ``key`` names the spec
    setting in errors.
    """
    path = Path(path)
    if path.is_file():
        return path
    if kind := special_file_kind(path):
        raise CheckpointError(
            f"{key} '{path}' is {kind}, not a regular file; point it at a model or a run folder"
        )
    if not path.is_dir():
        raise CheckpointError(f"{key} '{path}' does not exist; point it at a model or a run folder")
    chosen, why = _model_in_folder(path, key)
    print(f"{key}: using {chosen} ({why})")
    return chosen


def _model_in_folder(folder: Path, key: str, depth: int = 0) -> tuple[Path, str]:
    record = read_run_record(folder / STATUS)
    action = record.action if record else None
    outcome = record.outcome if record else None
    if action == "train" or (action is None and (folder / LATEST_NAME).is_file()):
        best = _best_checkpoint(folder, outcome)
        if best is not None:
            return best
        latest = find_resume_checkpoint(folder)
        if latest is not None:
            return latest, f"latest of {folder}; it recorded no validated best"
    if isinstance(outcome, ExportOutcome) and outcome.onnx_file:
        onnx_file = Path(outcome.onnx_file)
        if onnx_file.is_file():
            return onnx_file, f"exported by {folder}"
    if isinstance(outcome, AdaptOutcome) and outcome.adapted_checkpoint:
        adapted = Path(outcome.adapted_checkpoint)
        if adapted.is_file():
            return adapted, f"adapted by {folder}"
    if isinstance(outcome, AutomlOutcome) and outcome.best_trial_dir:
        trial = Path(outcome.best_trial_dir) / "train"
        if depth == 0 and trial.is_dir():
            found, _ = _model_in_folder(trial, key, depth + 1)
            return found, f"best AutoML trial {outcome.best_trial} of {folder}"
    if depth == 0:
        for sub in ("train", "export", "adapt"):
            if (folder / sub).is_dir():
                try:
                    return _model_in_folder(folder / sub, key, depth + 1)
                except CheckpointError:
                    continue
    raise CheckpointError(
        f"{key} '{folder}' is a folder without a model from a train, export or AutoML run; "
        "point it at a checkpoint, an .onnx file or such a run's folder"
    )


def _best_checkpoint(folder: Path, outcome: Outcome | None) -> tuple[Path, str] | None:
    """The best checkpoint a train run recorded, if it is a file of that run's folder."""
    if not isinstance(outcome, TrainOutcome) or not outcome.best_checkpoint:
        return None
    name = outcome.best_checkpoint
    if Path(name).name != name or not (folder / name).is_file():
        return None  # a record naming a file elsewhere is not trusted
    return folder / name, " ".join(filter(None, ["best", outcome.best_metric, f"of {folder}"]))


def load_checked_embedder(
    spec: ExperimentSpec, path: str | Path, key: str, gpu_id: int = 0
) -> tuple[Embedder, ModelCard]:
    """The model at ``path`` (or in a run folder) as an embedder, refused if it does not fit.

    Its card carries the preprocessing the model is fed (the one rule:
    :func:`reidkit.data.preprocessing.resolve_preprocessing`) and the match threshold
    ``evaluate`` calibrated for this very file in this results folder, if there is one (see
    :func:`calibrated_card`).
    """
    resolved = resolve_checkpoint(path, key)
    embedder, card = load_embedder(
        resolved, encryption_key=spec.encryption_key, gpu_id=gpu_id, neck_feat=spec.model.neck_feat
    )
    model = f"{'ONNX file' if resolved.suffix.lower() == '.onnx' else 'checkpoint'} '{resolved}'"
    require_card_fit(spec, card, model)
    fed = resolve_preprocessing(spec_settings(spec.model, spec.dataset), card, model=model)
    return embedder, calibrated_card(spec, card.with_preprocessing(fed.values()), resolved)


def record_calibration(folder: Path, model: Path, card: ModelCard) -> None:
    """Write ``evaluate``'s threshold with the digest of the model file it was calibrated on."""
    write_json(
        folder / CALIBRATION,
        {
            "model": str(model),
            "sha256": file_digest(model),
            "match_threshold": card.match_threshold,
            "false_match_rate": card.match_false_match_rate,
        },
    )


def calibrated_card(spec: ExperimentSpec, card: ModelCard, model: Path) -> ModelCard:
    """``card`` with the threshold ``evaluate`` calibrated for ``model`` in ``results_dir``.

    ``reidkit evaluate`` then ``export`` / ``gallery`` / ``serve`` on one spec is the site
    workflow: the threshold travels into the ONNX file and the gallery without being copied by
    hand. Only a calibration of the same bytes counts (a retrained checkpoint has none); a
    model without one keeps the threshold its card already has (an exported one), if any.
    """
    record = read_json(Path(spec.results_dir) / "evaluate" / CALIBRATION)
    if not isinstance(record, dict) or record.get("match_threshold") is None:
        return card
    if record.get("sha256") != file_digest(model):
        return card
    log.info(
        "match_threshold %.4f from %s (calibrated on this model)",
        record["match_threshold"], Path(spec.results_dir) / "evaluate" / CALIBRATION,
    )  # fmt: skip
    return card.with_threshold(float(record["match_threshold"]), float(record["false_match_rate"]))

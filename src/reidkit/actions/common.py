"""What every action shares: its lifecycle, the device, choosing and checking a model.

Every action runs inside :func:`run_action`, so ``status.json`` means the same thing for all of
them: ``RUNNING`` while it works, then ``SUCCESS`` or ``FAILURE`` with the one-line reason, on
every way out (a user error, a crash, Ctrl-C). This is also where the spec is translated into
the plain arguments the libraries below take.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reidkit.config.loading import save_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.data import ImageRecord, prepare_splits, resolve_preprocessing, spec_settings
from reidkit.engine.checkpoints import LATEST_NAME, find_resume_checkpoint
from reidkit.engine.datamodule import eval_loader
from reidkit.engine.distributed import is_launch_primary
from reidkit.errors import CheckpointError, ReidkitError, first_line
from reidkit.evaluation.features import Embedder, Embeddings, extract_embeddings
from reidkit.export.runtime import load_embedder
from reidkit.interrupts import RunInterrupted
from reidkit.models.card import ModelCard
from reidkit.models.digest import file_digest
from reidkit.oserrors import describe_os_error
from reidkit.outputs import read_json, write_json, write_status
from reidkit.runlock import run_lock

log = logging.getLogger("reidkit")

RUNNING, SUCCESS, FAILURE = "RUNNING", "SUCCESS", "FAILURE"


EXPERIMENT, STATUS = "experiment.yaml", "status.json"
#: ``evaluate``'s record of the match threshold it calibrated, and for which model file.
CALIBRATION = "calibration.json"
#: Where a rerun keeps its records until it has something to show (see :func:`run_action`).
PENDING = {EXPERIMENT: "experiment.pending.yaml", STATUS: "status.pending.json"}


@dataclass
class ActionRun:
    """One run of an action: its results folder and how it reports its state.

    ``published`` is False while a rerun's records are staged under :data:`PENDING` names
    beside the previous run's; :meth:`publish` makes them the folder's records. Only rank 0 of
    a multi-process run ``writes`` them.
    """

    action: str
    folder: Path
    published: bool = True
    writes: bool = True
    finished: bool = field(default=False, init=False)

    def record(self, name: str) -> Path:
        """Where this run writes the record ``name`` (``experiment.yaml``, ``status.json``)."""
        return self.folder / (name if self.published else PENDING[name])

    def update(self, message: str, **extra: Any) -> None:
        """A progress note while the action runs (``status.json`` stays ``RUNNING``)."""
        self._write(RUNNING, message, **extra)

    def publish(self) -> None:
        """Replace the previous run's records with this run's (at its first checkpoint)."""
        if self.published or not self.writes:
            return
        for name, pending in PENDING.items():
            os.replace(self.folder / pending, self.folder / name)
        self.published = True

    def succeed(self, message: str, kpi: dict[str, float] | None = None, **extra: Any) -> None:
        """Record success with the action's KPIs (percent) and whatever else it reports."""
        self.publish()
        self._write(SUCCESS, message, kpi=kpi, **extra)
        self.finished = True

    def fail(self, message: str) -> None:
        """Record the failure; a full or read-only disk must not hide the original error."""
        try:
            self._write(FAILURE, message)
        except OSError as exc:
            log.warning("%s: could not record the failure (%s)", self.folder, exc.strerror or exc)

    def _write(self, status: str, message: str, **extra: Any) -> None:
        if not self.writes:
            return
        write_status(
            self.folder, self.action, status, message, name=self.record(STATUS).name, **extra
        )


@contextmanager
def run_action(spec: ExperimentSpec, action: str, *, exclusive: bool = True) -> Iterator[ActionRun]:
    """Lock the action's folder, record the resolved spec, and report its state to the end.

    The folder is held by one run at a time (:func:`reidkit.runlock.run_lock`); a second run
    stops at once naming the holder. ``exclusive=False`` is for AutoML, whose workers share
    one folder on purpose and coordinate through the study (each trial's train folder is
    still locked by its own run). ``status.json`` says ``RUNNING`` from the start; an action
    that returns without calling :meth:`ActionRun.succeed` is recorded as a success with a plain
    message; any exception, a user error, a crash or an interruption, is recorded as
    ``FAILURE`` with its one-line reason and raised again.

    When the folder holds the records of a run that succeeded, this run's ``experiment.yaml`` and
    ``status.json`` are staged (:data:`PENDING`) until it publishes them, at its first
    checkpoint or on success: a rerun that fails earlier leaves the earlier run's records as
    they were. Secrets are never recorded (:mod:`reidkit.redaction`).
    """
    folder = spec.action_dir(action)
    primary = is_launch_primary()  # the other ranks of a multi-process run neither lock nor write
    with ExitStack() as held:
        try:
            if exclusive and primary:
                held.enter_context(run_lock(folder, action))
            else:
                folder.mkdir(parents=True, exist_ok=True)
            run = ActionRun(
                action,
                folder,
                published=not _finished(folder),
                writes=primary,
            )
            if primary:
                save_spec(spec, run.record(EXPERIMENT))
            run.update(f"{action} started")
        except OSError as exc:
            raise ReidkitError(
                f"results folder '{folder}' cannot be written ({exc.strerror or exc}); set "
                f"{action}.results_dir or results_dir to a writable folder"
            ) from None
        try:
            yield run
        except RunInterrupted as exc:
            run.fail(str(exc))
            raise
        except (KeyboardInterrupt, SystemExit) as exc:
            if not isinstance(exc, SystemExit) or exc.code not in (0, None):
                run.fail("interrupted; rerun the same command to resume")
            raise
        except BaseException as exc:
            run.fail(failure_line(exc))
            raise
        if not run.finished:
            run.succeed(f"{action} finished")


def _finished(folder: Path) -> bool:
    """Whether ``folder`` holds the records of a run that succeeded (worth keeping)."""
    status = read_json(folder / STATUS)
    return isinstance(status, dict) and status.get("status") == SUCCESS


def failure_line(error: BaseException) -> str:
    """The one line that tells a user why an action failed (an OSError names its path)."""
    if isinstance(error, OSError):
        described = describe_os_error(error)
        if described:
            return described
    return first_line(error)


def select_device(gpu_ids: list[int]) -> torch.device:
    """The first of ``gpu_ids`` when CUDA is present, else the CPU."""
    if torch.cuda.is_available():
        return torch.device("cuda", gpu_ids[0] if gpu_ids else 0)
    return torch.device("cpu")


def card_expectations(spec: ExperimentSpec) -> dict[str, tuple[str, Any]]:
    """What a model must be to embed images as the spec describes them: card field -> key.

    The identity count is left out: it sizes only the training head, never the embedding.
    """
    model = spec.model
    return {
        "backbone": ("model.backbone", model.backbone),
        "feat_dim": ("model.feat_dim", model.feat_dim),
        "input_height": ("model.input_height", model.input_height),
        "input_width": ("model.input_width", model.input_width),
    }


def training_expectations(spec: ExperimentSpec) -> dict[str, tuple[str, Any]]:
    """What a checkpoint must be for training to continue from it (resume)."""
    return {
        **card_expectations(spec),
        "num_classes": ("dataset.num_classes", spec.dataset.num_classes),
        "neck": ("model.neck", spec.model.neck),
    }


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
    if not path.is_dir():
        raise CheckpointError(f"{key} '{path}' does not exist; point it at a model or a run folder")
    chosen, why = _model_in_folder(path, key)
    print(f"{key}: using {chosen} ({why})")
    return chosen


def _model_in_folder(folder: Path, key: str, depth: int = 0) -> tuple[Path, str]:
    status = read_json(folder / "status.json")
    action = status.get("action") if isinstance(status, dict) else None
    if action == "train" or (action is None and (folder / LATEST_NAME).is_file()):
        best = status.get("best_checkpoint") if isinstance(status, dict) else None
        if best and (folder / best).is_file():
            return folder / best, f"best {status.get('best_metric', '')} of {folder}".strip()
        latest = find_resume_checkpoint(folder)
        if latest is not None:
            return latest, f"latest of {folder}; it recorded no validated best"
    if action == "export" and isinstance(status, dict) and status.get("onnx_file"):
        onnx_file = Path(status["onnx_file"])
        if onnx_file.is_file():
            return onnx_file, f"exported by {folder}"
    if action == "automl" and isinstance(status, dict) and status.get("best_trial_dir"):
        trial = Path(status["best_trial_dir"]) / "train"
        if depth == 0 and trial.is_dir():
            found, _ = _model_in_folder(trial, key, depth + 1)
            return found, f"best AutoML trial {status.get('best_trial')} of {folder}"
    if depth == 0:
        for sub in ("train", "export"):
            if (folder / sub).is_dir():
                try:
                    return _model_in_folder(folder / sub, key, depth + 1)
                except CheckpointError:
                    continue
    raise CheckpointError(
        f"{key} '{folder}' is a folder without a model from a train, export or AutoML run; "
        "point it at a checkpoint, an .onnx file or such a run's folder"
    )


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
    card.require_fit(card_expectations(spec), model)
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


@dataclass
class EmbeddedSplits:
    """Query and gallery embeddings with the records they came from (same order)."""

    query: Embeddings
    gallery: Embeddings
    query_records: list[ImageRecord]
    gallery_records: list[ImageRecord]
    card: ModelCard
    model: Path  # the model file (a run folder resolved), which a calibration names


def embed_splits(spec: ExperimentSpec, action: str) -> EmbeddedSplits:
    """Load the model (checkpoint, ONNX file or run folder) and embed query and gallery.

    ``action`` names the spec section (``evaluate`` or ``inference``, both sharing one base)
    whose ``checkpoint``, ``query_dataset``, ``test_dataset``, ``batch_size`` and ``gpu_ids``
    apply; the dataset section's folders are the fallback.
    """
    settings = getattr(spec, action)
    if not settings.checkpoint:
        raise CheckpointError(
            f"{action}.checkpoint is not set; point it at a .pth checkpoint, an .onnx file or "
            "a results folder"
        )
    device = select_device(settings.gpu_ids)
    model = resolve_checkpoint(settings.checkpoint, f"{action}.checkpoint")
    embedder, card = load_checked_embedder(
        spec, model, f"{action}.checkpoint", gpu_id=settings.gpu_ids[0] if settings.gpu_ids else 0
    )
    if isinstance(embedder, torch.nn.Module):
        embedder = embedder.to(device)
    splits = prepare_splits(
        spec, train=False,
        query_dir=settings.query_dataset or spec.dataset.query_dataset_dir,
        gallery_dir=settings.test_dataset or spec.dataset.test_dataset_dir,
    )  # fmt: skip
    flip = spec.model.with_flip_feature

    def embed(records: list[ImageRecord]) -> Embeddings:
        loader = eval_loader(spec, records, settings.batch_size, resolve_preprocessing(card=card))
        return extract_embeddings(embedder, loader, device, flip)

    return EmbeddedSplits(
        embed(splits.query), embed(splits.gallery), splits.query, splits.gallery, card, model
    )

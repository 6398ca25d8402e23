"""What every action shares: its lifecycle, the device, choosing and checking a model.

Every action runs inside :func:`run_action`, so ``status.json`` means the same thing for all of
them: ``RUNNING`` while it works, then ``SUCCESS`` or ``FAILURE`` with the one-line reason, on
every way out (a user error, a crash, Ctrl-C). This is also where the spec is translated into
the plain arguments the libraries below take.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from reidkit.config.loading import save_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.data import ImageRecord, prepare_splits
from reidkit.engine.checkpoints import LATEST_NAME, find_resume_checkpoint
from reidkit.engine.datamodule import eval_loader
from reidkit.errors import CheckpointError, ReidkitError, first_line
from reidkit.evaluation.features import Embedder, Embeddings, extract_embeddings
from reidkit.export.runtime import load_embedder
from reidkit.models.card import ModelCard
from reidkit.outputs import read_json, write_status

log = logging.getLogger("reidkit")

RUNNING, SUCCESS, FAILURE = "RUNNING", "SUCCESS", "FAILURE"


@dataclass
class ActionRun:
    """One run of an action: its results folder and how it reports its state."""

    action: str
    folder: Path
    finished: bool = field(default=False, init=False)

    def update(self, message: str, **extra: Any) -> None:
        """A progress note while the action runs (``status.json`` stays ``RUNNING``)."""
        write_status(self.folder, self.action, RUNNING, message, **extra)

    def succeed(self, message: str, kpi: dict[str, float] | None = None, **extra: Any) -> None:
        """Record success with the action's KPIs (percent) and whatever else it reports."""
        write_status(self.folder, self.action, SUCCESS, message, kpi=kpi, **extra)
        self.finished = True


@contextmanager
def run_action(spec: ExperimentSpec, action: str) -> Iterator[ActionRun]:
    """Make the action's folder, record the resolved spec, and report its state to the end.

    ``status.json`` says ``RUNNING`` from the start; an action that returns without calling
    :meth:`ActionRun.succeed` is recorded as a success with a plain message; any exception, a
    user error, a crash or an interruption (Ctrl-C arrives from Lightning as ``SystemExit``),
    is recorded as ``FAILURE`` with its one-line reason and raised again.
    """
    folder = spec.action_dir(action)
    try:
        folder.mkdir(parents=True, exist_ok=True)
        save_spec(spec, folder / "experiment.yaml")
        run = ActionRun(action, folder)
        run.update(f"{action} started")
    except OSError as exc:
        raise ReidkitError(
            f"results folder '{folder}' cannot be written ({exc.strerror or exc}); set "
            f"{action}.results_dir or results_dir to a writable folder"
        ) from None
    try:
        yield run
    except (KeyboardInterrupt, SystemExit) as exc:
        if not isinstance(exc, SystemExit) or exc.code not in (0, None):
            write_status(folder, action, FAILURE, "interrupted; rerun the same command to resume")
        raise
    except BaseException as exc:
        write_status(folder, action, FAILURE, first_line(exc))
        raise
    if not run.finished:
        run.succeed(f"{action} finished")


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
    log.info("%s: using %s (%s)", key, chosen, why)
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
    """The model at ``path`` (or in a run folder) as an embedder, refused if it does not fit."""
    resolved = resolve_checkpoint(path, key)
    embedder, card = load_embedder(
        resolved, encryption_key=spec.encryption_key, gpu_id=gpu_id, neck_feat=spec.model.neck_feat
    )
    kind = "ONNX file" if resolved.suffix.lower() == ".onnx" else "checkpoint"
    card.require_fit(card_expectations(spec), f"{kind} '{resolved}'")
    return embedder, card


@dataclass
class EmbeddedSplits:
    """Query and gallery embeddings with the records they came from (same order)."""

    query: Embeddings
    gallery: Embeddings
    query_records: list[ImageRecord]
    gallery_records: list[ImageRecord]
    card: ModelCard


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
    embedder, card = load_checked_embedder(
        spec,
        settings.checkpoint,
        f"{action}.checkpoint",
        gpu_id=settings.gpu_ids[0] if settings.gpu_ids else 0,
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
        loader = eval_loader(spec, records, settings.batch_size)
        return extract_embeddings(embedder, loader, device, flip)

    return EmbeddedSplits(
        embed(splits.query), embed(splits.gallery), splits.query, splits.gallery, card
    )

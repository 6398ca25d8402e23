"""One training run: the Lightning Trainer around :mod:`reidkit.engine`, inside the lifecycle.

:func:`run_training` is what ``reidkit train`` runs when no AutoML routing applies, and what each
AutoML trial runs (it is handed to :mod:`reidkit.automl` by :mod:`reidkit.actions.automl`). It
lives apart from both verbs so that neither imports the other.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import EMAWeightAveraging

from reidkit.actions.lifecycle import run_action
from reidkit.actions.models import resolve_checkpoint, training_expectations
from reidkit.actions.run_record import TrainOutcome
from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec, TrainSpec
from reidkit.data import prepare_splits
from reidkit.engine.checkpoints import (
    LATEST_NAME,
    ReidCheckpointIO,
    find_resume_checkpoint,
    periodic_checkpoints,
)
from reidkit.engine.datamodule import ReidDataModule
from reidkit.engine.distributed import lost_peer, trainer_devices
from reidkit.engine.health import NumericalHealth
from reidkit.engine.memory import out_of_memory
from reidkit.engine.module import ReidModule, build_optimizer
from reidkit.engine.progress import training_progress_bar
from reidkit.engine.recorder import RunRecorder
from reidkit.errors import CheckpointError
from reidkit.interrupts import RunInterrupted
from reidkit.models.checkpoint_file import load_checkpoint
from reidkit.models.restore import read_checkpoint_card

log = logging.getLogger("reidkit")


@dataclass
class TrainResult:
    """Where the run left its files and the last validation KPIs (percent)."""

    results_dir: Path
    checkpoint: Path
    kpi: dict[str, float]
    epochs: int
    #: The validated best checkpoint (by rank-1), None when no epoch was validated.
    best_checkpoint: Path | None = None


def run_training(
    spec: ExperimentSpec, *, callbacks: list[lightning.pytorch.Callback] | None = None
) -> TrainResult:
    """Train a ReID model as the spec says; rerunning with the same results folder resumes.

    ``callbacks`` lets callers (AutoML's pruning, tests) watch the run without changing it.
    """
    with run_action(spec, "train") as run:
        folder = run.folder
        spec = _pretrained_from_folder(spec)
        splits = prepare_splits(spec, train=True)
        start = _resume_checkpoint(spec, folder)
        lightning.seed_everything(spec.train.seed, workers=True, verbose=False)
        module = ReidModule(spec, splits.num_train_ids)
        if start is not None:
            _require_resumable(spec, module, start, folder)
        max_epoch = spec.train.num_epochs

        def report(epoch: int) -> None:  # the first report publishes a rerun's staged records
            run.publish()
            outcome = _outcome(recorder, epoch, max_epoch)
            run.update(f"epoch {epoch} of {max_epoch} done", outcome, recorder.kpi)

        recorder = RunRecorder(
            folder, spec.train.checkpoint_interval, spec.train.validation_interval, report
        )
        # Health first: Lightning runs callbacks in order, and its epoch-end check must come
        # before the recorder's checkpoint.
        health = NumericalHealth(spec.train.divergence_factor)
        devices = device_settings(spec.train)
        bar = training_progress_bar(on_gpu=devices["accelerator"] == "gpu")
        trainer = Trainer(
            **devices,
            max_epochs=max_epoch,
            callbacks=[health, recorder, bar, *weight_averaging(spec.train), *(callbacks or [])],
            plugins=[ReidCheckpointIO(spec.encryption_key)],
            logger=False,
            enable_checkpointing=False,
            default_root_dir=folder,
            check_val_every_n_epoch=spec.train.validation_interval,
            limit_train_batches=spec.train.steps_per_epoch or 1.0,
            num_sanity_val_steps=0,
            use_distributed_sampler=False,
            log_every_n_steps=1,
            enable_model_summary=False,
        )
        if start is not None:
            log.info("resuming from %s", start)
        run.update("training started", TrainOutcome(epoch=0, max_epoch=max_epoch))
        try:
            trainer.fit(module, datamodule=ReidDataModule(spec, splits), ckpt_path=start)
        except RunInterrupted as stop:
            raise stop.with_message(_interrupted(stop, trainer, folder, recorder)) from None
        except (RuntimeError, MemoryError) as error:
            hint = "run the same command again (on every node) to resume from the last checkpoint"
            size = (spec.model.input_height, spec.model.input_width)
            known = out_of_memory(
                error, spec.dataset.batch_size, size, spec.dataset.num_workers
            ) or lost_peer(error, trainer.world_size, trainer.global_rank, hint)
            if known is None:
                raise
            raise known from None
        outcome = _outcome(recorder, trainer.current_epoch, max_epoch)
        run.succeed("training finished", recorder.kpi, outcome)
        best = recorder.best_checkpoint
        return TrainResult(
            folder,
            folder / LATEST_NAME,
            dict(recorder.kpi),
            trainer.current_epoch,
            folder / best if best else None,
        )


def _outcome(recorder: RunRecorder, epoch: int, max_epoch: int) -> TrainOutcome:
    """The train run's record after ``epoch`` epochs: its progress and best checkpoint."""
    return TrainOutcome(
        epoch=epoch,
        max_epoch=max_epoch,
        best_checkpoint=recorder.best_checkpoint,
        best_metric=recorder.best_metric,
    )


def weight_averaging(train: TrainSpec) -> list[Callback]:
    """Lightning's EMA callback when ``train.ema_decay`` asks for one.

    It swaps the average in for validation and writes it as the checkpoint's weights (the live
    weights ride along for resuming), so every later action sees the averaged model. It comes
    before the caller's callbacks, so theirs see the average during validation too.
    """
    return [] if train.ema_decay is None else [EMAWeightAveraging(decay=train.ema_decay)]


def _interrupted(
    stop: RunInterrupted, trainer: Trainer, folder: Path, recorder: RunRecorder
) -> str:
    """What a signal stopped, what is kept, and how to go on."""
    where = f"interrupted by {stop.signal_name} during epoch {trainer.current_epoch + 1}"
    if recorder.saved_epoch is not None:
        kept = f"{LATEST_NAME} holds epoch {recorder.saved_epoch}"
    elif (folder / LATEST_NAME).is_file():
        kept = f"{LATEST_NAME} holds the last finished epoch"
    else:
        return f"{where}, before any epoch finished; rerun the same command to start again"
    return f"{where}; {kept}: rerun the same command to resume"


def _pretrained_from_folder(spec: ExperimentSpec) -> ExperimentSpec:
    """``model.pretrained_model_path`` may name an earlier run's folder: use its best model."""
    path = spec.model.pretrained_model_path
    if not path or not Path(path).is_dir():
        return spec
    resolved = resolve_checkpoint(path, "model.pretrained_model_path")
    return apply_overrides(spec, {"model.pretrained_model_path": str(resolved)})


def device_settings(train: TrainSpec) -> dict[str, Any]:
    """Trainer arguments for the spec's devices (see :mod:`reidkit.engine.distributed`)."""
    return trainer_devices(
        accelerator=train.accelerator,
        precision=train.precision,
        num_processes=train.num_processes,
        num_gpus=train.num_gpus,
        gpu_ids=train.gpu_ids,
        num_nodes=train.num_nodes,
    )


def _resume_checkpoint(spec: ExperimentSpec, folder: Path) -> Path | None:
    """An explicit ``resume_training_checkpoint_path`` (file or run folder) wins; else the
    latest checkpoint in ``folder``. Either must fit the spec, checked before anything loads."""
    explicit = spec.train.resume_training_checkpoint_path
    key = "train.resume_training_checkpoint_path"
    start = resolve_checkpoint(explicit, key) if explicit else find_resume_checkpoint(folder)
    if start is not None:
        try:
            card = read_checkpoint_card(start, spec.encryption_key)
        except CheckpointError as error:
            if explicit:
                raise
            older = _readable_older_checkpoint(folder, start, spec.encryption_key)
            if older is None:
                raise
            raise CheckpointError(
                f"{error}; or resume from the periodic checkpoint beside it: {key}={older}"
            ) from None
        card.require_fit(training_expectations(spec), f"checkpoint '{start}' (resuming)")
    return start


def _readable_older_checkpoint(
    folder: Path, damaged: Path, encryption_key: str | None
) -> Path | None:
    """The newest periodic checkpoint beside a damaged one that a rerun found on its own.

    The user did not choose the damaged file, so the refusal names the checkpoint the run can
    go on from (it is never picked silently: the user decides to lose the epochs after it).
    Only the newest few are tried, each read in full.
    """
    for path in [p for p in periodic_checkpoints(folder) if p != damaged][:3]:
        try:
            read_checkpoint_card(path, encryption_key)
        except CheckpointError:
            continue
        return path
    return None


def _require_resumable(spec: ExperimentSpec, module: ReidModule, start: Path, folder: Path) -> None:
    """Refuse a resume the spec contradicts, reading the checkpoint once for every check."""
    saved = load_checkpoint(start, spec.encryption_key)
    _require_epochs_left(spec, start, saved, folder)
    _require_same_optimiser(spec, module, start, saved)


def _require_epochs_left(
    spec: ExperimentSpec, start: Path, saved: dict[str, Any], folder: Path
) -> None:
    """Refuse a resume from a checkpoint that already holds ``train.num_epochs`` epochs or more.

    Lightning stops such a fit before its first step, so the run "finished" without training,
    reported ``epoch 2 of 1`` and replaced the folder's records with a spec it never trained
    with. Rerunning a finished run in its own folder (the same ``train.num_epochs``) stays a
    no-op success: an AutoML trial retried after its last checkpoint must get its result back.
    From any other checkpoint nothing would be written to this folder, so that is refused too.
    """
    done = _epochs_done(saved)
    wanted = spec.train.num_epochs
    if done < wanted:
        return
    if done == wanted and start.resolve().parent == folder.resolve():
        log.info("'%s' already holds all %d epochs of train.num_epochs", start, done)
        return
    raise CheckpointError(
        f"checkpoint '{start}' (resuming) has already trained {done} epochs and "
        f"train.num_epochs is {wanted}: nothing is left to train; set train.num_epochs above "
        f"{done} to train on, or evaluate the checkpoint (evaluate.checkpoint={start})"
    )


def _epochs_done(saved: dict[str, Any]) -> int:
    """The epochs a checkpoint has finished, by Lightning's own rule for stopping a fit.

    Lightning counts an epoch ``processed`` before the epoch-end hook that writes reidkit's
    checkpoints; a checkpoint without loop state restarts at epoch 0, as Lightning restores it.
    """
    loops = saved.get("loops")
    if loops is None:
        return 0
    return int(loops["fit_loop"]["epoch_progress"]["current"]["processed"])


def _require_same_optimiser(
    spec: ExperimentSpec, module: ReidModule, start: Path, checkpoint: dict[str, Any]
) -> None:
    """Refuse a resume whose spec sets other learning rates or weight decays than the run.

    Resuming restores the optimiser's parameter groups as they were saved, so a rerun with
    another ``train.optim.base_lr`` (or bias factor, weight decay) trained on at the old values
    while its ``experiment.yaml`` recorded the new ones. A resume continues the same run; new
    values start a new one from the checkpoint's weights.
    """
    saved = checkpoint.get("optimizer_states") or []
    if not saved:
        return
    expected = build_optimizer(module.model, spec.train.optim).param_groups
    want = sorted((float(g["initial_lr"]), float(g["weight_decay"])) for g in expected)
    got = sorted(
        (float(g.get("initial_lr", g["lr"])), float(g.get("weight_decay", 0.0)))
        for g in saved[0]["param_groups"]
    )
    if len(want) == len(got) and all(
        math.isclose(w, g, rel_tol=1e-9)
        for pair in zip(want, got, strict=True)
        for w, g in zip(*pair, strict=True)
    ):
        return
    raise CheckpointError(
        f"checkpoint '{start}' (resuming) was trained with train.optim learning rates and "
        f"weight decays {_pairs(got)} but the spec gives {_pairs(want)} (base_lr "
        f"{spec.train.optim.base_lr:g}); a resume continues the same run: set train.optim back, "
        f"or use a new results_dir with model.pretrained_model_path={start}"
    )


def _pairs(groups: list[tuple[float, float]]) -> str:
    return ", ".join(f"lr {lr:g} / decay {decay:g}" for lr, decay in groups)

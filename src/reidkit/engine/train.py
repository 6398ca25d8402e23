"""The train action: spec in, checkpoints, ``metrics.csv`` and ``status.json`` out."""

from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import lightning
import torch
from lightning.pytorch import Trainer

from reidkit.config.spec import ExperimentSpec, TrainSpec, start_action
from reidkit.data import prepare_splits
from reidkit.engine.checkpoints import LATEST_NAME, ReidCheckpointIO, find_resume_checkpoint
from reidkit.engine.datamodule import ReidDataModule
from reidkit.engine.module import ReidModule
from reidkit.engine.recorder import RunRecorder
from reidkit.errors import CheckpointError, SpecError
from reidkit.outputs import write_status

log = logging.getLogger("reidkit")


@dataclass
class TrainResult:
    """Where the run left its files and the last validation KPIs (percent)."""

    results_dir: Path
    checkpoint: Path
    kpi: dict[str, float]
    epochs: int


def device_settings(train: TrainSpec) -> dict[str, Any]:
    """Trainer arguments for the spec's devices: GPUs with DDP and sync BN only when several."""
    on_gpu = torch.cuda.is_available()
    precision = train.precision
    if precision == "auto":
        precision = "16-mixed" if on_gpu else "32"
    if not on_gpu and precision == "16-mixed":
        raise SpecError(
            "train.precision is '16-mixed' but no GPU is available; use 'bf16-mixed' or '32' on CPU"
        )
    if not on_gpu:
        if train.num_gpus > 1 or train.num_nodes > 1:
            log.warning("no GPU available: training on the CPU in one process")
        return {"accelerator": "cpu", "devices": 1, "precision": precision}
    devices = (
        train.gpu_ids[: train.num_gpus] if len(train.gpu_ids) >= train.num_gpus else train.num_gpus
    )
    distributed = train.num_gpus * train.num_nodes > 1
    return {
        "accelerator": "gpu",
        "devices": devices,
        "num_nodes": train.num_nodes,
        "strategy": "ddp" if distributed else "auto",
        "sync_batchnorm": distributed,
        "precision": precision,
    }


def resume_checkpoint(spec: ExperimentSpec, folder: Path) -> Path | None:
    """An explicit ``resume_training_checkpoint_path`` wins; else the latest one in ``folder``."""
    explicit = spec.train.resume_training_checkpoint_path
    if explicit:
        path = Path(explicit)
        if not path.is_file():
            raise CheckpointError(
                f"train.resume_training_checkpoint_path '{path}' does not exist; "
                "fix the path or unset it"
            )
        return path
    return find_resume_checkpoint(folder)


def train(
    spec: ExperimentSpec, *, callbacks: list[lightning.pytorch.Callback] | None = None
) -> TrainResult:
    """Train a ReID model as the spec says; rerunning with the same results folder resumes.

    ``callbacks`` lets callers (AutoML's pruning, tests) watch the run without changing it.
    """
    folder = start_action(spec, "train")
    splits = prepare_splits(spec, train=True)
    lightning.seed_everything(spec.train.seed, workers=True, verbose=False)
    module = ReidModule(spec, splits.num_train_ids)
    recorder = RunRecorder(folder, spec.train.checkpoint_interval, spec.train.validation_interval)
    trainer = Trainer(
        **device_settings(spec.train),
        max_epochs=spec.train.num_epochs,
        callbacks=[recorder, *(callbacks or [])],
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
    start = resume_checkpoint(spec, folder)
    if start is not None:
        log.info("resuming from %s", start)
    write_status(
        folder, "train", "RUNNING", "training started", epoch=0, max_epoch=spec.train.num_epochs
    )
    trainer.fit(module, datamodule=ReidDataModule(spec, splits), ckpt_path=start)
    write_status(
        folder, "train", "SUCCESS", "training finished",
        kpi=recorder.kpi, epoch=trainer.current_epoch, max_epoch=spec.train.num_epochs,
    )  # fmt: skip
    return TrainResult(folder, folder / LATEST_NAME, dict(recorder.kpi), trainer.current_epoch)

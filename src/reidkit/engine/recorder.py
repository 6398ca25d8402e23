"""What a training run leaves after every epoch: a CSV row, a progress report and checkpoints.

One callback does all three, in that order (the report is the train action's to record in
``status.json``), so the checkpoint written at the end of an epoch
already contains that epoch's CSV rows in its callback state. A run killed later and resumed from
that checkpoint rewrites the CSV from the checkpoint: no epoch is lost and none is counted twice.
"""

from __future__ import annotations

import csv
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from lightning.pytorch import Callback, LightningModule, Trainer

from reidkit.engine.checkpoints import LATEST_NAME, periodic_name
from reidkit.outputs import atomic_open

VALIDATION_KEYS = ("cmc_rank_1", "cmc_rank_5", "cmc_rank_10", "mAP", "mINP", "num_valid_queries")
#: The metric that makes a checkpoint the run's best (TAO's monitored metric).
MONITOR = "cmc_rank_1"
# Lightning's step/epoch copies of "loss" (logged with on_step and on_epoch) repeat it.
_REDUNDANT = ("loss_step", "loss_epoch")


class RunRecorder(Callback):
    """Writes ``metrics.csv`` and the TAO-named checkpoints each epoch, and reports progress."""

    def __init__(
        self,
        folder: Path,
        checkpoint_interval: int,
        validation_interval: int,
        report: Callable[[int], None] | None = None,
    ) -> None:
        """``report(epoch)`` is called on rank 0 once an epoch's CSV row is written, before its
        checkpoint: the caller records the progress (:attr:`kpi`, :attr:`best_checkpoint`)."""
        self.folder = folder
        self.report = report
        self.checkpoint_interval = checkpoint_interval
        self.validation_interval = validation_interval
        self.rows: list[dict[str, Any]] = []
        self.kpi: dict[str, float] = {}
        #: The periodic checkpoint with the highest validated :data:`MONITOR`, and that value.
        self.best: dict[str, Any] = {}
        #: The last epoch whose ``reid_model_latest.pth`` is complete on disk (None: none yet).
        self.saved_epoch: int | None = None
        self._epoch_started = 0.0

    # Callback state travels inside the checkpoint, so resuming restores the CSV history.
    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows, "kpi": self.kpi, "best": self.best}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
        self.kpi = dict(state_dict.get("kpi", {}))
        self.best = dict(state_dict.get("best", {}))
        self.saved_epoch = self.rows[-1]["epoch"] if self.rows else None

    @property
    def best_checkpoint(self) -> str | None:
        """The file name of the best checkpoint so far (None before one is validated)."""
        return self.best.get("checkpoint")

    @property
    def best_metric(self) -> str | None:
        """What made it the best: ``cmc_rank_1 87.50`` (None before one is validated)."""
        return f"{MONITOR} {self.best['value']:.2f}" if self.best else None

    def on_train_epoch_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._epoch_started = time.perf_counter()

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        epoch = trainer.current_epoch + 1  # epochs completed
        metrics = {k: float(v) for k, v in trainer.callback_metrics.items()}
        row: dict[str, Any] = {
            "epoch": epoch,
            "step": trainer.global_step,
            "epoch_seconds": round(time.perf_counter() - self._epoch_started, 3),
        }
        skipped = (*VALIDATION_KEYS, *_REDUNDANT)
        row.update({k: v for k, v in metrics.items() if k not in skipped})
        validated = epoch % self.validation_interval == 0 and "cmc_rank_1" in metrics
        if validated:
            self.kpi = {k: round(metrics[k], 2) for k in VALIDATION_KEYS if k in metrics}
            row.update(self.kpi)
        self.rows.append(row)
        last = epoch == trainer.max_epochs
        periodic = epoch % self.checkpoint_interval == 0 or last
        name = periodic_name(epoch, trainer.global_step)
        if periodic and validated and metrics[MONITOR] > self.best.get("value", float("-inf")):
            self.best = {"checkpoint": name, "value": round(metrics[MONITOR], 2)}
        if trainer.is_global_zero:
            self._write_csv()
            if self.report is not None:
                self.report(epoch)
        if periodic:
            trainer.save_checkpoint(self.folder / name, weights_only=False)
        trainer.save_checkpoint(self.folder / LATEST_NAME, weights_only=False)
        self.saved_epoch = epoch

    def _write_csv(self) -> None:
        columns: list[str] = []
        for row in self.rows:
            columns.extend(k for k in row if k not in columns)
        with atomic_open(self.folder / "metrics.csv", "w") as handle:
            writer = csv.DictWriter(handle, fieldnames=columns)
            writer.writeheader()
            writer.writerows(self.rows)

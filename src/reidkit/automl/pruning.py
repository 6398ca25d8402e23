"""The Lightning callback that reports each validation to optuna and stops pruned trials."""

from __future__ import annotations

import optuna
from lightning.pytorch import Callback, LightningModule, Trainer


class OptunaPruning(Callback):
    """Reports ``metric`` after every validation as ``trial.report(value, epoch)``.

    Raising :class:`optuna.TrialPruned` from the hook makes Lightning stop and re-raise it, so
    the objective sees the trial pruned. ``last`` and ``epoch`` keep the latest validation's
    value (rounded to 4 decimals, which drops float32 noise) and epoch: the trial's result when
    training reaches the budget.
    """

    def __init__(self, trial: optuna.Trial, metric: str) -> None:
        self.trial = trial
        self.metric = metric
        self.last: float | None = None
        self.epoch = 0

    def on_validation_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        value = trainer.callback_metrics.get(self.metric)
        if trainer.sanity_checking or value is None:
            return
        self.epoch = trainer.current_epoch + 1
        self.last = round(float(value), 4)  # a float32 tensor: drop its noise digits
        self.trial.report(self.last, self.epoch)
        if self.trial.should_prune():
            raise optuna.TrialPruned(f"{self.metric} {self.last:.2f} at epoch {self.epoch}")

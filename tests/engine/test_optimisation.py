"""The optimisation step: per-step learning rate and mixed precision with two optimizers."""

from __future__ import annotations

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from lightning.pytorch.plugins.precision import MixedPrecision

from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec
from reidkit.data import prepare_splits
from reidkit.engine.datamodule import ReidDataModule
from reidkit.engine.module import ReidModule
from reidkit.engine.schedule import lr_factor


class LrRecorder(Callback):
    """The learning rate each training step ran with."""

    def __init__(self) -> None:
        self.lrs: list[float] = []

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, *args: object) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def _fit(spec: ExperimentSpec, steps: int, **trainer_args: object) -> ReidModule:
    splits = prepare_splits(spec, train=True)
    module = ReidModule(spec, splits.num_train_ids)
    trainer = Trainer(
        accelerator="cpu",
        devices=1,
        max_epochs=spec.train.num_epochs,
        limit_train_batches=steps,
        limit_val_batches=0,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
        use_distributed_sampler=False,
        **trainer_args,
    )
    trainer.fit(module, datamodule=ReidDataModule(spec, splits))
    return module


def test_fp16_grad_scaler_is_updated_once_per_step_with_center_loss(
    tiny_spec: ExperimentSpec,
) -> None:
    """Two optimizers (model + centers) share one scaler: one update per training step.

    With ``growth_interval=1`` and finite gradients the scale doubles at every update, so after
    three steps it must be 2**3 times its start; updating after each optimizer gives 2**6.
    """
    spec = apply_overrides(tiny_spec, {"model.with_center_loss": True, "train.num_epochs": 1})
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**4, growth_interval=1)
    _fit(spec, steps=3, plugins=[MixedPrecision("16-mixed", "cpu", scaler)])
    assert scaler.get_scale() == pytest.approx(2.0**7)


def test_learning_rate_is_set_for_every_step(tiny_spec: ExperimentSpec) -> None:
    """A 2-epoch cosine run: each step's lr is base_lr x the schedule at that global step."""
    overrides = {
        "train.num_epochs": 2,
        "train.optim.warmup_method": "cosine",
        "train.optim.warmup_epochs": 1,
    }
    spec = apply_overrides(tiny_spec, overrides)
    recorder = LrRecorder()
    _fit(spec, steps=4, callbacks=[recorder])
    factor = lr_factor(spec.train.optim, 2, steps_per_epoch=4)
    expected = [spec.train.optim.base_lr * factor(step) for step in range(8)]
    assert recorder.lrs == pytest.approx(expected)
    assert len(set(recorder.lrs)) == 8  # it moves within an epoch, not once per epoch


class WeightRecorder(Callback):
    """Copies of the backbone's and the classifier's weights after every training step."""

    def __init__(self) -> None:
        self.backbone: list[list[torch.Tensor]] = []
        self.classifier: list[torch.Tensor] = []

    def on_train_start(self, trainer: Trainer, module: LightningModule) -> None:
        self._record(module)

    def on_train_batch_end(self, trainer: Trainer, module: LightningModule, *args: object) -> None:
        self._record(module)

    def _record(self, module: LightningModule) -> None:
        assert isinstance(module, ReidModule)
        self.backbone.append([p.detach().clone() for p in module.model.backbone.parameters()])
        self.classifier.append(module.model.classifier.weight.detach().clone())


def _changed(before: list[torch.Tensor], after: list[torch.Tensor]) -> bool:
    return any(not torch.equal(b, a) for b, a in zip(before, after, strict=True))


def test_frozen_backbone_holds_its_weights_while_the_head_learns(
    tiny_spec: ExperimentSpec,
) -> None:
    """Half of a 2-epoch run of 4 steps: the backbone moves from step 3 on, the head at once.

    Adam's weight decay would move a parameter whose gradient were merely zero, so this also
    checks that frozen gradients are dropped, not zeroed.
    """
    overrides = {"train.num_epochs": 2, "train.freeze_backbone_epochs": 1.0}
    recorder = WeightRecorder()
    _fit(apply_overrides(tiny_spec, overrides), steps=2, callbacks=[recorder])
    start, *after_step = recorder.backbone
    assert [_changed(start, weights) for weights in after_step] == [False, False, True, True]
    assert not torch.equal(recorder.classifier[0], recorder.classifier[1])

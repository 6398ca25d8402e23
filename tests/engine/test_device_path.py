"""The device data path in real training: selection, batches, checkpoints, resume, accuracy."""

from __future__ import annotations

import csv
import logging
from pathlib import Path
from typing import Any

import pytest
import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from reidkit.actions.fit import run_training as train
from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec
from reidkit.data import ImageDataset, prepare_splits
from reidkit.data.device_batches import IndexDataset
from reidkit.engine.datamodule import ReidDataModule
from reidkit.models.checkpoint_file import load_checkpoint


class BatchSpy(Callback):
    """Records what each training step receives (after the batch reached the device)."""

    def __init__(self) -> None:
        self.images: list[torch.Tensor] = []

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        self.images.append(batch[0])


def _rows(folder: Path) -> list[dict[str, str]]:
    with open(folder / "metrics.csv") as handle:
        return list(csv.DictReader(handle))


def _datamodule(spec: ExperimentSpec) -> ReidDataModule:
    """A datamodule attached to an unfitted CPU trainer: enough to build its loaders."""
    datamodule = ReidDataModule(spec, prepare_splits(spec, train=True))
    datamodule.trainer = Trainer(accelerator="cpu", devices=1, logger=False)
    return datamodule


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the choice on a machine without CUDA")
def test_auto_without_cuda_uses_the_normal_loader(
    tiny_spec: ExperimentSpec, caplog: pytest.LogCaptureFixture
) -> None:
    datamodule = _datamodule(apply_overrides(tiny_spec, {"dataset.device_cache": "auto"}))
    with caplog.at_level(logging.INFO, logger="reidkit"):
        loader = datamodule.train_dataloader()
    assert isinstance(loader.dataset, ImageDataset) and datamodule.device_train_set is None
    assert "train data path: normal loader" in caplog.text and "no GPU" in caplog.text


def test_on_loads_indices_and_keeps_the_decoded_set(tiny_spec: ExperimentSpec) -> None:
    datamodule = _datamodule(apply_overrides(tiny_spec, {"dataset.device_cache": "on"}))
    loader = datamodule.train_dataloader()
    assert isinstance(loader.dataset, IndexDataset) and loader.num_workers == 0
    indices, labels, camids = next(iter(loader))
    assert indices.shape == labels.shape == camids.shape == (16,)
    cache = datamodule.device_train_set
    assert cache is not None and cache.images.dtype == torch.uint8
    assert cache.images.shape == (len(datamodule.splits.train), 3, 64, 32)
    batch = (images, _, _) = datamodule.on_after_batch_transfer((indices, labels, camids), 0)
    assert images is indices  # outside the train loop (validation) batches pass unchanged
    datamodule.trainer.training = True
    images, out_labels, _ = datamodule.on_after_batch_transfer(batch, 0)
    assert images.shape == (16, 3, 64, 32) and out_labels is labels


def test_device_path_trains_checkpoints_and_resumes(
    tiny_spec: ExperimentSpec, caplog: pytest.LogCaptureFixture
) -> None:
    spec = apply_overrides(
        tiny_spec,
        {
            "dataset.device_cache": "on",
            "train.num_epochs": 1,
            "train.steps_per_epoch": 2,
            "train.validation_interval": 2,
        },
    )
    spy = BatchSpy()
    with caplog.at_level(logging.INFO, logger="reidkit"):
        first = train(spec, callbacks=[spy])
    assert "train data path: device cache" in caplog.text
    assert len(spy.images) == 2
    for images in spy.images:
        assert images.shape == (16, 3, 64, 32) and images.dtype == torch.float32
        assert images.is_contiguous(memory_format=torch.channels_last)
    assert [int(r["epoch"]) for r in _rows(first.results_dir)] == [1]
    before = load_checkpoint(first.checkpoint, None)["state_dict"]

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="reidkit"):
        resumed = train(apply_overrides(spec, {"train.num_epochs": 2}))
    assert "resuming from" in caplog.text and "device cache" in caplog.text
    rows = _rows(resumed.results_dir)
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert all(float(r["loss"]) > 0 for r in rows)
    assert 0 <= resumed.kpi["mAP"] <= 100
    after = load_checkpoint(resumed.checkpoint, None)
    assert after["epoch"] == 1
    name = next(k for k in before if k.endswith("weight") and before[k].dim() == 4)
    assert not torch.equal(before[name], after["state_dict"][name])  # epoch 2 really trained


# 24 queries: one query's AP moving by 0.5 moves mAP by 2 points, and this budget is chaotic
# enough that rounding alone moves it further: making the model channels-last (same function,
# other kernels) moved the normal loader from 28.6 to 18.1 mAP while the device path stayed
# at 24.7, and the loss curves stayed within 3 %. So the loss curves are compared closely and
# mAP only coarsely; a broken pipeline (unnormalised, unaugmented or misaligned inputs)
# changes both far more.
MAP_RATIO = 0.5


@pytest.mark.slow
def test_device_path_learns_like_the_normal_loader(
    tiny_spec: ExperimentSpec, tmp_path: Path
) -> None:
    overrides = {
        "train.num_epochs": 6,
        "train.optim.base_lr": 1e-3,
        "train.optim.warmup_iters": 0,
        "train.validation_interval": 6,
        "train.checkpoint_interval": 6,
    }
    mean_ap, losses = {}, {}
    for mode in ("off", "on"):
        spec = apply_overrides(
            tiny_spec,
            {**overrides, "dataset.device_cache": mode, "results_dir": str(tmp_path / mode)},
        )
        result = train(spec)
        mean_ap[mode] = result.kpi["mAP"]
        losses[mode] = [float(r["loss"]) for r in _rows(result.results_dir)]
    assert min(mean_ap.values()) >= MAP_RATIO * max(mean_ap.values()), mean_ap
    for curve in losses.values():
        assert curve[-1] < 0.7 * curve[0], losses  # both really learn (about -40 %)
    assert abs(losses["on"][-1] / losses["off"][-1] - 1) < 0.1, losses

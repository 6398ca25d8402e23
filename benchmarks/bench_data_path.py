"""Training images/s of the device data path against the normal loader.

Run from the repository root::

    .venv/bin/python benchmarks/bench_data_path.py            # --steps 24 --rounds 2

Synthesises a small Market-style set (96 ids x 8 images at 128x64: 12 batches an epoch) and
trains ResNet-18 at 128x64, batch 32, with ``dataset.device_cache`` off (PIL pipeline in loader
workers) and on (uint8 set on the training device, whole-batch augmentation), interleaved round
by round. The first ``--warmup`` steps of each run are not timed (model set-up, first decode,
allocator warm-up). Prints the median images/s of each path and appends them to
``benchmarks/results.csv``. On a machine without CUDA the GPU figure is printed as not measured:
the target there (>= 4,000 img/s, ResNet-50 256x128 on an H100) needs a real GPU run.
"""

from __future__ import annotations

import argparse
import logging
import statistics
import sys
import tempfile
import time
from datetime import date
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

from common import append_rows, machine
from reidkit.actions.fit import device_settings
from reidkit.config.loading import load_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.data import prepare_splits, synthesize
from reidkit.engine.datamodule import ReidDataModule
from reidkit.engine.module import ReidModule

IDS, IMAGES_PER_ID, HEIGHT, WIDTH, BATCH = 96, 8, 128, 64, 32


class StepClock(Callback):
    """Times the training steps after the first ``warmup`` ones, across epoch boundaries.

    The clock stops at the end of the last timed step, so what follows the steps (validation,
    checkpoint writes, teardown) is not counted as training time.
    """

    def __init__(self, warmup: int) -> None:
        self.warmup = warmup
        self.started = 0.0
        self.ended = 0.0
        self.timed_images = 0

    def _sync(self) -> None:
        if torch.cuda.is_available():
            torch.cuda.synchronize()

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.warmup and not self.started:
            self._sync()
            self.started = time.perf_counter()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.started:
            images, _, _ = batch  # (images, labels, camera ids) on both data paths
            self.timed_images += len(images)
            self._sync()
            self.ended = time.perf_counter()

    def images_per_second(self) -> float:
        return self.timed_images / (self.ended - self.started)


def bench_spec(data: Path, results: Path, device_cache: str, steps: int) -> ExperimentSpec:
    return load_spec(
        None,
        [
            f"results_dir={results}",
            f"dataset.train_dataset_dir={data / 'bounding_box_train'}",
            f"dataset.test_dataset_dir={data / 'bounding_box_test'}",
            f"dataset.query_dataset_dir={data / 'query'}",
            f"dataset.num_classes={IDS // 2}",
            f"dataset.batch_size={BATCH}",
            f"dataset.device_cache={device_cache}",
            "dataset.num_workers=2",
            "model.backbone=resnet_18",
            "model.pretrain_choice=self",
            f"model.input_height={HEIGHT}",
            f"model.input_width={WIDTH}",
            "train.num_epochs=1",
            f"train.steps_per_epoch={steps}",
        ],
    )


def images_per_second(spec: ExperimentSpec, warmup: int) -> float:
    """``train.steps_per_epoch`` real training steps in all (no validation, no checkpoints)."""
    splits = prepare_splits(spec, train=True)
    clock = StepClock(warmup)
    trainer = Trainer(
        **device_settings(spec.train),
        max_epochs=-1,
        max_steps=spec.train.steps_per_epoch,
        limit_val_batches=0,
        callbacks=[clock],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        use_distributed_sampler=False,
    )
    trainer.fit(ReidModule(spec, splits.num_train_ids), datamodule=ReidDataModule(spec, splits))
    return clock.images_per_second()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=24, help="training steps per run")
    parser.add_argument("--warmup", type=int, default=4, help="untimed steps at the start")
    parser.add_argument("--rounds", type=int, default=2, help="interleaved runs of each path")
    args = parser.parse_args()
    logging.getLogger("lightning.pytorch").setLevel(logging.ERROR)
    host = machine()
    figures: dict[str, list[float]] = {"off": [], "on": []}
    with tempfile.TemporaryDirectory() as folder:
        data = Path(folder) / "data"
        synthesize(data, ids=IDS, cameras=3, images_per_id=IMAGES_PER_ID, height=HEIGHT,
                   width=WIDTH, seed=0)  # fmt: skip
        for _ in range(args.rounds):
            for mode in figures:
                spec = bench_spec(data, Path(folder) / "results", mode, args.steps)
                figures[mode].append(images_per_second(spec, args.warmup))
    normal, device = (statistics.median(figures[m]) for m in ("off", "on"))
    where = torch.cuda.get_device_name() if torch.cuda.is_available() else "CPU"
    print(f"{where}, resnet_18 {HEIGHT}x{WIDTH}, batch {BATCH}, {args.steps} steps x {args.rounds}")
    print(f"normal loader (2 workers): {normal:8.1f} img/s  runs {figures['off']}")
    print(f"device path:               {device:8.1f} img/s  runs {figures['on']}")
    print(f"speed-up: {device / normal:.2f}x")
    if not torch.cuda.is_available():
        print("GPU: not measured (no CUDA here)")
    command = " ".join(["benchmarks/bench_data_path.py", *sys.argv[1:]])
    metric = (
        f"train img/s on {where}, resnet_18 {HEIGHT}x{WIDTH} batch {BATCH}, device path "
        "(reference: normal loader, 2 workers; ratio = value / reference)"
    )
    row = {"date": date.today().isoformat(), "benchmark": "data_path", "machine": host}
    row |= {"command": f".venv/bin/python {command}", "metric": metric}
    row |= {
        "value": f"{device:.1f}",
        "reference": f"{normal:.1f}",
        "ratio": f"{device / normal:.2f}",
    }
    append_rows([row])
    return 0


if __name__ == "__main__":
    sys.exit(main())

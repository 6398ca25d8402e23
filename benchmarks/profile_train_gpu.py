"""Where a GPU training step's time goes: the profile behind the GPU check's ``train`` figure.

    python3 benchmarks/profile_train_gpu.py [--batch 128] [--steps 10]

Trains ResNet-50 256x128 16-mixed through the train action on gpu_check's synthetic set, first
timing twice ``--batch`` (if images/s grows as much as the batch, the step has a fixed host-side
cost), then records ``--steps`` steps with ``torch.profiler`` and prints the operators that take the
most host time and the most device time.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path
from typing import Any

import torch
from lightning.pytorch import Callback, LightningModule, Trainer

import gpu_check
from bench_data_path import StepClock
from reidkit.actions.fit import run_training
from reidkit.config.loading import load_spec


class StepProfiler(Callback):
    """Profiles the training steps from ``start`` to ``start + steps`` and prints two tables."""

    def __init__(self, start: int, steps: int) -> None:
        self.start, self.stop = start, start + steps
        self.profiler: torch.profiler.profile | None = None

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: Any, batch_idx: int
    ) -> None:
        if trainer.global_step == self.start and self.profiler is None:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if torch.cuda.is_available():
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.profiler = torch.profiler.profile(activities=activities)
            self.profiler.__enter__()

    def on_train_batch_end(
        self, trainer: Trainer, pl_module: LightningModule, outputs: Any, batch: Any, batch_idx: int
    ) -> None:
        if self.profiler is not None and trainer.global_step == self.stop:
            self.report()

    def on_train_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.profiler is not None:  # a run shorter than asked: report what was recorded
            self.report()

    def report(self) -> None:
        if self.profiler is not None:
            gpu_check.sync()
            self.profiler.__exit__(None, None, None)
            events = self.profiler.key_averages()
            print(events.table(sort_by="self_cpu_time_total", row_limit=30))
            if torch.cuda.is_available():
                print(events.table(sort_by="self_cuda_time_total", row_limit=15))
            self.profiler = None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--steps", type=int, default=10)
    args = parser.parse_args()
    sizes = gpu_check.FULL if torch.cuda.is_available() else gpu_check.DRY
    with tempfile.TemporaryDirectory() as tmp:
        data, ids = gpu_check.throughput_data(Path(tmp), sizes)
        for batch in (2 * args.batch, args.batch):
            overrides = gpu_check.train_overrides(data, ids, Path(tmp) / f"run{batch}", sizes)
            overrides += [f"dataset.batch_size={batch}", "dataset.device_cache=on"]
            clock = StepClock(sizes.warmup_steps)
            callbacks: list[Callback] = [clock]
            if batch == args.batch:
                callbacks.append(StepProfiler(sizes.warmup_steps, args.steps))
            run_training(load_spec(None, overrides), callbacks=callbacks)
            print(f"[profile] batch {batch}: {clock.images_per_second():.0f} img/s")


if __name__ == "__main__":
    main()

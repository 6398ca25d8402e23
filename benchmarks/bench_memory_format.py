"""Channels-last against the default (contiguous) layout for reidkit's model on this machine:
a training step and inference, the same network and batches, interleaved, medians.

``ReidModel`` builds its convolutions channels-last; this measures what that buys. Run from
the repository root on an otherwise idle machine::

    .venv/bin/python benchmarks/bench_memory_format.py            # --threads 1,<nproc>

Setting: the CUHK03 short recipe's network (MobileNetV2, 128x64, ``feat_dim`` 1280, BNNeck,
743 classes, ID loss with label smoothing, Adam), batch 32 for training and 128 for inference,
random images (the layout, not the data, is under test). Appends rows to ``results.csv``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import torch

from reidkit.models import ReidModel

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import append_rows, machine


def build(layout: torch.memory_format) -> tuple[ReidModel, torch.optim.Optimizer]:
    """The same initial weights in either layout (seeded), with its own optimizer."""
    torch.manual_seed(0)
    model = ReidModel("mobilenet_v2", 743, input_size=(128, 64), feat_dim=1280, last_stride=2)
    model.to(memory_format=layout)
    return model, torch.optim.Adam(model.parameters(), lr=3.5e-4)


def train_step(model: ReidModel, optimizer: torch.optim.Optimizer) -> Callable[[], None]:
    images, labels = torch.randn(32, 3, 128, 64), torch.randint(0, 743, (32,))

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        logits = model.train()(images, labels).logits
        torch.nn.functional.cross_entropy(logits, labels, label_smoothing=0.1).backward()
        optimizer.step()

    return step


def inference(model: ReidModel) -> Callable[[], None]:
    images = torch.randn(128, 3, 128, 64)

    def embed() -> None:
        with torch.inference_mode():
            model.eval()(images)

    return embed


def interleaved_medians(calls: dict[str, Callable[[], None]], repeats: int) -> dict[str, float]:
    """Median seconds per call, the candidates alternating so that load hits both alike."""
    for call in calls.values():
        call()  # warm-up: oneDNN picks its kernels on the first call
    times: dict[str, list[float]] = {name: [] for name in calls}
    for _ in range(repeats):
        for name, call in calls.items():
            start = time.perf_counter()
            call()
            times[name].append(time.perf_counter() - start)
    return {name: statistics.median(values) for name, values in times.items()}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", default=f"1,{os.cpu_count()}")
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args()
    host = machine()
    command = " ".join([".venv/bin/python benchmarks/bench_memory_format.py", *sys.argv[1:]])
    print(f"machine: {host}\n")
    print("| threads | what | channels-last | contiguous | speed-up |\n|---|---|---|---|---|")
    rows = []
    for threads in sorted({int(t) for t in args.threads.split(",")}):
        torch.set_num_threads(threads)
        last, plain = build(torch.channels_last), build(torch.contiguous_format)
        for what, per_call, unit, make in (
            ("train step, batch 32", 32, "img/s", lambda m: train_step(*m)),
            ("inference, batch 128", 128, "img/s", lambda m: inference(m[0])),
        ):
            seconds = interleaved_medians({"last": make(last), "plain": make(plain)}, args.repeats)
            ours, ref = per_call / seconds["last"], per_call / seconds["plain"]
            print(
                f"| {threads} | {what} | {ours:.1f} {unit} | {ref:.1f} {unit} | {ours / ref:.2f}x |"
            )
            rows.append(
                {
                    "date": date.today().isoformat(),
                    "benchmark": "memory_format",
                    "machine": host,
                    "command": command,
                    "metric": f"MobileNetV2 128x64 {what}, {threads} threads, {unit}: "
                    "channels-last (reference: contiguous)",
                    "value": f"{ours:.2f}",
                    "reference": f"{ref:.2f}",
                    "ratio": f"{ours / ref:.3f}",
                }
            )
    append_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Export a ResNet-50 (random init, 256x128) and compare onnxruntime with PyTorch eager throughput.

Run from the repository root::

    .venv/bin/python benchmarks/bench_export.py

Prints images/s at batch 1 and 64 on the CPU, with 1 thread and with every core (and on the GPU
when both PyTorch and onnxruntime have CUDA), and appends one row per measurement to
``benchmarks/results.csv``. Both runtimes are timed end to end from host memory (the way
evaluation feeds them), interleaved, on the same inputs. Random weights do not change the speed
of a dense network, so no trained checkpoint is needed.
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import onnxruntime as ort
import torch
from torch import Tensor

from common import RESULTS, append_rows, machine
from reidkit.actions.export import export
from reidkit.config.loading import apply_overrides, load_spec
from reidkit.config.spec import ExperimentSpec
from reidkit.engine.module import build_model
from reidkit.export import OnnxEmbedder
from reidkit.models.card import MODEL_PREFIX, attach_card
from reidkit.models.checkpoint_file import save_checkpoint
from reidkit.models.restore import restore_model

COMMAND = ".venv/bin/python benchmarks/bench_export.py"
# (batch, warm-up calls, timed calls per runtime): a stable median in ~2-3 minutes on 2 cores.
PLAN = ((1, 3, 10), (64, 1, 2))
HEIGHT, WIDTH = 256, 128


def resnet50_spec(folder: Path) -> ExperimentSpec:
    """A ResNet-50 checkpoint at 256x128, saved as training saves it, ready to export."""
    spec = load_spec(
        None,
        [f"results_dir={folder}", "model.pretrain_choice=self", "dataset.num_classes=751"],
    )
    model = build_model(spec, 751)
    state = {MODEL_PREFIX + key: value for key, value in model.state_dict().items()}
    content = {"state_dict": state}
    attach_card(content, model.card(spec.dataset.pixel_mean, spec.dataset.pixel_std))
    checkpoint = folder / "resnet50.pth"
    save_checkpoint(content, checkpoint, None)
    return apply_overrides(spec, {"export.checkpoint": str(checkpoint)})


def median_rates(
    runtimes: dict[str, Callable[[Tensor], Tensor]],
    batch: int,
    warmup: int,
    timed: int,
    sync: Callable[[], None],
) -> dict[str, float]:
    """Images/s of each runtime from the median of interleaved calls on the same batch.

    Interleaving gives every runtime the same share of any background load, and the median
    ignores calls hit by a preemption, so the ratio holds even on a busy shared machine.
    """
    images = torch.randn(batch, 3, HEIGHT, WIDTH)
    seconds: dict[str, list[float]] = {name: [] for name in runtimes}
    with torch.no_grad():
        for embed in runtimes.values():
            for _ in range(warmup):
                embed(images)
        for _ in range(timed):
            for name, embed in runtimes.items():
                sync()
                start = time.perf_counter()
                embed(images)
                sync()
                seconds[name].append(time.perf_counter() - start)
    return {name: batch / statistics.median(values) for name, values in seconds.items()}


def compare(
    label: str, model: torch.nn.Module, embedder: OnnxEmbedder, sync: Callable[[], None]
) -> list[dict[str, str]]:
    """Rows of onnxruntime images/s with PyTorch eager (on the model's device) as the reference."""
    device = next(model.parameters()).device

    def eager(images: Tensor) -> Tensor:
        return model(images.to(device)).cpu()

    rows = []
    for batch, warmup, timed in PLAN:
        rates = median_rates({"torch": eager, "ort": embedder}, batch, warmup, timed, sync)
        ratio = rates["ort"] / rates["torch"]
        print(
            f"{label} batch {batch:3d}: onnxruntime {rates['ort']:8.1f} img/s, "
            f"PyTorch eager {rates['torch']:8.1f} img/s, ratio {ratio:.2f}"
        )
        rows.append(
            {
                "metric": f"{label} batch {batch} images/s onnxruntime (reference: PyTorch eager)",
                "value": f"{rates['ort']:.1f}",
                "reference": f"{rates['torch']:.1f}",
                "ratio": f"{ratio:.3f}",
            }
        )
    return rows


def cpu_rows(model: torch.nn.Module, onnx_file: Path) -> list[dict[str, str]]:
    """CPU rows with 1 thread and with every core, the same thread count for both runtimes.

    One thread is the fair figure on a shared machine: with more threads than free cores,
    PyTorch's OpenMP barriers stall whenever one thread is preempted (measured here: 2.3 s
    instead of 0.11 s per ResNet-50 image under a load average of 6 on 2 cores).
    """
    rows = []
    for threads in sorted({1, os.cpu_count() or 1}):
        torch.set_num_threads(threads)
        options = ort.SessionOptions()
        options.intra_op_num_threads = threads
        embedder = OnnxEmbedder(
            onnx_file, providers=["CPUExecutionProvider"], session_options=options
        )
        rows += compare(f"cpu {threads} thread(s)", model, embedder, sync=lambda: None)
    return rows


def main() -> int:
    common = {"date": date.today().isoformat(), "benchmark": "export", "command": COMMAND}
    common["machine"] = machine()
    print(f"machine: {common['machine']}")
    print(f"torch {torch.__version__}, onnxruntime {ort.__version__}")
    with tempfile.TemporaryDirectory() as tmp:
        spec = resnet50_spec(Path(tmp))
        start = time.perf_counter()
        result = export(spec)
        print(
            f"export: {time.perf_counter() - start:.1f} s, max |onnx - torch| "
            f"{result.max_abs_diff:.2e} (tolerance {result.tolerance:.2e}), "
            f"min cosine {result.min_cosine:.7f}"
        )
        model, _ = restore_model(spec.export.checkpoint)
        rows = cpu_rows(model, result.onnx_file)
        if torch.cuda.is_available() and "CUDAExecutionProvider" in ort.get_available_providers():
            gpu = OnnxEmbedder(result.onnx_file)
            rows += compare("cuda", model.cuda(), gpu, sync=torch.cuda.synchronize)
        else:
            print("GPU: not measured (no CUDA device or no CUDA onnxruntime here)")
    append_rows([common | row for row in rows])
    print(f"appended {len(rows)} rows to {RESULTS}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

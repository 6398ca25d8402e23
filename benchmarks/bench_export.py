"""Export a ResNet-50 (random init, 256x128) and compare onnxruntime with PyTorch eager throughput.

Run from the repository root::

    .venv/bin/python benchmarks/bench_export.py

Prints images/s at batch 1 and 64 on the CPU (and on the GPU when both PyTorch and onnxruntime
have CUDA) and appends one row per measurement to ``benchmarks/results.csv``. Both runtimes are
timed end to end from host memory (the way evaluation feeds them) on the same inputs. Random
weights do not change the speed of a dense network, so no trained checkpoint is needed.
"""

from __future__ import annotations

import csv
import os
import sys
import tempfile
import time
from collections.abc import Callable
from datetime import date
from pathlib import Path

import onnxruntime as ort
import torch
from torch import Tensor

from reidkit.config.spec import ExperimentSpec, apply_overrides, load_spec
from reidkit.engine.checkpoints import save_checkpoint
from reidkit.engine.module import model_card
from reidkit.engine.restore import restore_model
from reidkit.export import OnnxEmbedder, export
from reidkit.models import ReidModel

RESULTS = Path(__file__).resolve().parent / "results.csv"
COLUMNS = ["date", "benchmark", "machine", "command", "metric", "value", "reference", "ratio"]
COMMAND = "python benchmarks/bench_export.py"
# (batch, warm-up calls, timed calls): enough for a stable mean, ~3 minutes on 2 cores.
PLAN = ((1, 3, 20), (64, 1, 3))
HEIGHT, WIDTH = 256, 128


def machine() -> str:
    """``<n> CPU <model>``: what a reader needs to compare these figures with their own."""
    model = "unknown CPU"
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        names = [ln for ln in cpuinfo.read_text().splitlines() if ln.startswith("model name")]
        model = names[0].split(":", 1)[1].strip() if names else model
    return f"{os.cpu_count()} CPU {model}"


def resnet50_spec(folder: Path) -> ExperimentSpec:
    """A ResNet-50 checkpoint at 256x128, saved as training saves it, ready to export."""
    spec = load_spec(
        None,
        [f"results_dir={folder}", "model.pretrain_choice=self", "dataset.num_classes=751"],
    )
    model = ReidModel(spec.model, 751, spec.train.optim)
    state = {f"model.{key}": value for key, value in model.state_dict().items()}
    checkpoint = folder / "resnet50.pth"
    save_checkpoint(
        {"state_dict": state, "reidkit": model_card(spec, model, 751)}, checkpoint, None
    )
    return apply_overrides(spec, {"export.checkpoint": str(checkpoint)})


def images_per_second(
    embed: Callable[[Tensor], Tensor], batch: int, warmup: int, timed: int, sync: Callable[[], None]
) -> float:
    images = torch.randn(batch, 3, HEIGHT, WIDTH)
    with torch.no_grad():
        for _ in range(warmup):
            embed(images)
        sync()
        start = time.perf_counter()
        for _ in range(timed):
            embed(images)
        sync()
    return batch * timed / (time.perf_counter() - start)


def compare(
    device: str, model: torch.nn.Module, embedder: OnnxEmbedder, sync: Callable[[], None]
) -> list[dict[str, str]]:
    """Rows of onnxruntime images/s with PyTorch eager as the reference, per batch size."""

    def eager(images: Tensor) -> Tensor:
        return model(images.to(device)).cpu()

    rows = []
    for batch, warmup, timed in PLAN:
        torch_rate = images_per_second(eager, batch, warmup, timed, sync)
        ort_rate = images_per_second(embedder, batch, warmup, timed, sync)
        ratio = ort_rate / torch_rate
        print(
            f"{device.upper()} batch {batch:3d}: onnxruntime {ort_rate:8.1f} img/s, "
            f"PyTorch eager {torch_rate:8.1f} img/s, ratio {ratio:.2f}"
        )
        rows.append(
            {
                "metric": f"{device} batch {batch} images/s onnxruntime (reference: PyTorch eager)",
                "value": f"{ort_rate:.1f}",
                "reference": f"{torch_rate:.1f}",
                "ratio": f"{ratio:.3f}",
            }
        )
    return rows


def append_rows(rows: list[dict[str, str]]) -> None:
    """Append to results.csv, following the header of an existing file."""
    header = COLUMNS
    if RESULTS.is_file() and RESULTS.stat().st_size:
        with RESULTS.open(newline="") as handle:
            header = next(csv.reader(handle))
    new = not RESULTS.is_file() or not RESULTS.stat().st_size
    with RESULTS.open("a", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=header, extrasaction="ignore")
        if new:
            writer.writeheader()
        writer.writerows(rows)


def main() -> int:
    common = {"date": date.today().isoformat(), "benchmark": "export", "command": COMMAND}
    common["machine"] = machine()
    print(f"machine: {common['machine']}, load average {os.getloadavg()[0]:.1f}")
    print(
        f"torch {torch.__version__} ({torch.get_num_threads()} threads), onnxruntime {ort.__version__}"
    )
    with tempfile.TemporaryDirectory() as tmp:
        spec = resnet50_spec(Path(tmp))
        start = time.perf_counter()
        result = export(spec)
        print(
            f"export: {time.perf_counter() - start:.1f} s, max |onnx - torch| "
            f"{result.max_abs_diff:.2e} (tolerance {result.tolerance:.2e}), "
            f"min cosine {result.min_cosine:.7f}"
        )
        model, _ = restore_model(spec, spec.export.checkpoint)
        cpu = OnnxEmbedder(result.onnx_file, providers=["CPUExecutionProvider"])
        rows = compare("cpu", model, cpu, sync=lambda: None)
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

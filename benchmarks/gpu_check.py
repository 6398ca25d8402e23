"""The parts of the GPU check (issue 14); ``benchmarks/gpu_check.sh`` runs each in its own process.

Run from the repository root, one part at a time (the shell script does this, with a time limit
for each part, so that a crash or hang in one part leaves the others their figures)::

    python3 benchmarks/gpu_check.py PART --out DIR [--dry-run] [--data TAR] [--weights PTH]
    python3 benchmarks/gpu_check.py summary --out DIR [--record]

Parts (each writes ``DIR/PART.json``, updated after every figure, so a part stopped by its time
limit keeps what it measured):

* ``env``: the device, torch / CUDA / onnxruntime versions and providers.
* ``train``: training images/s of ResNet-50 at 256x128, 16-mixed (channels-last is what reidkit
  does on a GPU), batch 64 and 128, through the train action with ``dataset.device_cache`` on
  (the uint8 set lives on the GPU, augmented there) and off (the ordinary loader: PIL decode
  and augmentation in one worker per CPU), on a synthetic set generated there. Goal: >= 4,000
  images/s on one H100.
* ``eval``: seconds of ``evaluate_features`` on the GPU for a Market-sized split (3,368 x
  15,913, d=2048; ``bench_eval.market_split``), with the CPU (every core) as the reference in
  the same run, and the mAP of both (they must agree).
* ``onnx``: a ResNet-50 exported by ``reidkit.export`` (which checks it against PyTorch), then
  images/s at batch 1 and 256, end to end from host memory: onnxruntime with the CUDA provider
  against PyTorch eager fp32 and fp16 (autocast, channels-last) on the same GPU.
* ``cuhk03``: CUHK03 at 128x64 (``benchmarks/pack_cuhk03.py``'s archive), MobileNetV2 from
  ImageNet weights and ResNet-50 from scratch, the ``bench_cuhk03.py`` recipe: rank-1, mAP,
  training seconds and images/s.

``--dry-run`` runs every part at tiny sizes (small backbones and inputs, a few steps, 32-bit)
on whatever device is there, to prove the script works where no GPU is lent. ``summary`` prints
one table of every figure found under ``DIR`` and, with ``--record`` (never in a dry run),
appends them to ``benchmarks/results.csv``.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tarfile
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import date
from pathlib import Path
from typing import Any

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from common import append_rows, machine  # noqa: E402

PARTS = ("env", "train", "eval", "onnx", "cuhk03")
TRAIN_GOAL = 4000.0  # images/s, ResNet-50 256x128 on one H100 (issue 14)
COMMAND = "benchmarks/gpu_check.sh"


@dataclass(frozen=True)
class Sizes:
    """Everything a dry run shrinks."""

    backbone: str
    height: int
    width: int
    batches: tuple[int, ...]
    warmup_steps: int
    timed_steps: int
    synth_ids: int
    synth_copies: int
    eval_gallery: int
    onnx_batches: tuple[int, ...]
    onnx_timed: int
    cuhk03_height: int
    cuhk03_width: int
    cuhk03_epochs: int
    cuhk03_max_batches: int


FULL = Sizes(
    backbone="resnet_50", height=256, width=128, batches=(64, 128), warmup_steps=15,
    timed_steps=50, synth_ids=72, synth_copies=18, eval_gallery=15913, onnx_batches=(1, 256),
    onnx_timed=10, cuhk03_height=128, cuhk03_width=64, cuhk03_epochs=24, cuhk03_max_batches=0,
)  # fmt: skip
DRY = Sizes(
    backbone="resnet_18", height=64, width=32, batches=(16,), warmup_steps=2, timed_steps=2,
    synth_ids=16, synth_copies=2, eval_gallery=300, onnx_batches=(1, 4), onnx_timed=2,
    cuhk03_height=64, cuhk03_width=32, cuhk03_epochs=1, cuhk03_max_batches=2,
)  # fmt: skip


class Figures:
    """One part's figures, rewritten to ``<out>/<part>.json`` after each one is added."""

    def __init__(self, out: Path, part: str) -> None:
        self.path = out / f"{part}.json"
        self.part = part
        self.rows: list[dict[str, Any]] = []
        out.mkdir(parents=True, exist_ok=True)

    def add(self, figure: str, value: float | str, unit: str = "", reference: str = "") -> None:
        row = {"part": self.part, "figure": figure, "value": value, "unit": unit}
        row["reference"] = reference
        self.rows.append(row)
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"[{self.part}] {figure}: {shown} {unit}{f'  ({reference})' if reference else ''}")
        self.path.write_text(json.dumps(self.rows, indent=1))


def on_gpu() -> bool:
    return torch.cuda.is_available()


def sync() -> None:
    if on_gpu():
        torch.cuda.synchronize()


def device_name() -> str:
    return torch.cuda.get_device_name() if on_gpu() else f"CPU ({platform.processor() or 'cpu'})"


def precision() -> str:
    """What the check trains in: the GPU default (16-mixed), or 32-bit where there is no GPU."""
    return "16-mixed" if on_gpu() else "32"


# ----------------------------------------------------------------------------------------- env
def part_env(args: argparse.Namespace, sizes: Sizes, figures: Figures) -> None:
    import lightning
    import onnxruntime as ort

    figures.add("device", device_name())
    figures.add("torch", f"{torch.__version__} (CUDA {torch.version.cuda})")
    figures.add("lightning", lightning.__version__)
    figures.add("onnxruntime", f"{ort.__version__}: {', '.join(ort.get_available_providers())}")
    figures.add("host", machine())
    if on_gpu():
        free, total = torch.cuda.mem_get_info()
        figures.add("GPU memory free / total", f"{free / 2**30:.1f} / {total / 2**30:.1f}", "GiB")


# --------------------------------------------------------------------------------------- train
def throughput_data(folder: Path, sizes: Sizes) -> tuple[Path, int]:
    """A synthetic Market-layout set big enough for one epoch of warm-up plus timed steps.

    Rendering is single-threaded (~10 ms an image), so a few identities are rendered and their
    train images linked under ``synth_copies`` new identity numbers each: the loader still
    decodes every file, and the sampler sees ``synth_ids / 2 * synth_copies`` identities.
    """
    from reidkit.data import synthesize

    data = folder / "synth"
    synthesize(data, ids=sizes.synth_ids, cameras=4, images_per_id=16, height=sizes.height,
               width=sizes.width, seed=0)  # fmt: skip
    train = data / "bounding_box_train"
    originals = sorted(train.iterdir())
    for copy in range(1, sizes.synth_copies):
        for path in originals:
            pid, rest = path.name.split("_", 1)
            os.link(path, train / f"{int(pid) + copy * 10000}_{rest}")
    ids = len({path.name.split("_", 1)[0] for path in train.iterdir()})
    return data, ids


def train_overrides(data: Path, ids: int, results: Path, sizes: Sizes) -> list[str]:
    return [
        f"results_dir={results}",
        f"dataset.train_dataset_dir={data / 'bounding_box_train'}",
        f"dataset.test_dataset_dir={data / 'bounding_box_test'}",
        f"dataset.query_dataset_dir={data / 'query'}",
        f"dataset.num_classes={ids}",
        f"dataset.num_workers={os.cpu_count() if on_gpu() else 1}",
        f"model.backbone={sizes.backbone}",
        "model.pretrain_choice=self",
        f"model.input_height={sizes.height}",
        f"model.input_width={sizes.width}",
        f"train.precision='{precision()}'",
        "train.num_epochs=1",
        "train.validation_interval=2",
        f"train.steps_per_epoch={sizes.warmup_steps + sizes.timed_steps}",
    ]


def part_train(args: argparse.Namespace, sizes: Sizes, figures: Figures) -> None:
    from bench_data_path import StepClock
    from reidkit.actions.fit import run_training
    from reidkit.config.loading import load_spec

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        data, ids = throughput_data(Path(tmp), sizes)
        print(f"[train] synthetic set: {ids} train ids in {time.perf_counter() - start:.1f} s")
        best = 0.0
        for batch in sizes.batches:
            for cache, path in (("on", "device cache"), ("off", "ordinary loader")):
                overrides = train_overrides(data, ids, Path(tmp) / f"{batch}_{cache}", sizes)
                overrides += [f"dataset.batch_size={batch}", f"dataset.device_cache={cache}"]
                clock = StepClock(sizes.warmup_steps)
                run_training(load_spec(None, overrides), callbacks=[clock])
                rate = clock.images_per_second()
                best = max(best, rate) if cache == "on" else best
                layout = " channels-last" if on_gpu() else ""
                label = (
                    f"train {sizes.backbone} {sizes.height}x{sizes.width} batch {batch} "
                    f"{precision()}{layout}, {path}"
                )
                figures.add(label, rate, "img/s")
        verdict = "met" if best >= TRAIN_GOAL else "MISSED"
        figures.add(
            f"goal >= {TRAIN_GOAL:.0f} img/s (H100, ResNet-50 256x128)",
            f"{verdict} ({best:.0f} img/s best, {device_name()})",
        )


# ---------------------------------------------------------------------------------------- eval
def part_eval(args: argparse.Namespace, sizes: Sizes, figures: Figures) -> None:
    import bench_eval
    from reidkit.evaluation.metrics import evaluate_features

    # A dry run shrinks the split through bench_eval's own constants.
    if sizes is DRY:
        bench_eval.NUM_QUERY, bench_eval.NUM_DISTRACTORS, bench_eval.NUM_IDS = 60, 20, 30
        bench_eval.DIM = 32
    split = bench_eval.market_split(num_gallery=sizes.eval_gallery)
    qf, gf = split[0], split[1]
    label = f"{len(qf)} x {len(gf)}, d={qf.shape[1]}"

    def timed(device: str, repeats: int) -> tuple[float, float]:
        q, g = qf.to(device), gf.to(device)
        evaluate_features(q, g, *split[2:])  # warm-up: kernels, allocator
        seconds = []
        for _ in range(repeats):
            sync()
            start = time.perf_counter()
            result = evaluate_features(q, g, *split[2:])
            sync()
            seconds.append(time.perf_counter() - start)
        return statistics.median(seconds), float(result.mAP)

    cpu_s, cpu_map = timed("cpu", 1 if sizes is FULL else 2)
    if on_gpu():
        gpu_s, gpu_map = timed("cuda", 5)
        figures.add(f"evaluate_features {label} on the GPU", gpu_s, "s",
                    f"CPU, {os.cpu_count()} cores, same run: {cpu_s:.3f} s")  # fmt: skip
        figures.add("evaluation mAP GPU vs CPU |difference|", abs(gpu_map - cpu_map), "",
                    f"mAP {gpu_map:.6f}")  # fmt: skip
        if abs(gpu_map - cpu_map) > 1e-4:
            raise SystemExit(f"GPU mAP {gpu_map} differs from the CPU's {cpu_map}")
    else:
        figures.add(f"evaluate_features {label} on the CPU (no GPU)", cpu_s, "s")


# ---------------------------------------------------------------------------------------- onnx
def part_onnx(args: argparse.Namespace, sizes: Sizes, figures: Figures) -> None:
    import onnxruntime as ort

    import bench_export
    from reidkit.actions.export import export
    from reidkit.export import OnnxEmbedder
    from reidkit.models.restore import restore_model

    if sizes is DRY:
        bench_export.HEIGHT, bench_export.WIDTH = sizes.height, sizes.width
    with tempfile.TemporaryDirectory() as tmp:
        spec = bench_export.resnet50_spec(
            Path(tmp),
            [f"model.backbone={sizes.backbone}", f"model.input_height={sizes.height}",
             f"model.input_width={sizes.width}"],
        )  # fmt: skip
        start = time.perf_counter()
        result = export(spec)
        figures.add("export + onnxruntime check", time.perf_counter() - start, "s",
                    f"max |onnx - torch| {result.max_abs_diff:.2e} via "
                    f"{', '.join(result.providers)}")  # fmt: skip
        model, _ = restore_model(spec.export.checkpoint)
        device = torch.device("cuda" if on_gpu() else "cpu")
        model = model.to(device).eval()
        fast = model.to(memory_format=torch.channels_last) if on_gpu() else model

        def eager(images: torch.Tensor) -> torch.Tensor:
            return model(images.to(device)).cpu()

        def eager_fp16(images: torch.Tensor) -> torch.Tensor:
            batch = images.to(device).to(memory_format=torch.channels_last)
            with torch.autocast(device.type, dtype=torch.float16):
                return fast(batch).float().cpu()

        runtimes: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {"torch fp32": eager}
        if on_gpu():
            runtimes["torch fp16 channels-last"] = eager_fp16
        provider = "CUDAExecutionProvider" if on_gpu() else "CPUExecutionProvider"
        if provider in ort.get_available_providers():
            runtimes[f"onnxruntime {provider}"] = OnnxEmbedder(
                result.onnx_file, providers=[provider]
            )
        else:
            figures.add(
                f"onnxruntime {provider}",
                f"not measured: this onnxruntime has {', '.join(ort.get_available_providers())} "
                "(the CUDA one is the onnxruntime-gpu package)",
            )
        for batch in sizes.onnx_batches:
            rates = bench_export.median_rates(runtimes, batch, 2, sizes.onnx_timed, sync)
            for name, rate in rates.items():
                figures.add(f"{sizes.backbone} {sizes.height}x{sizes.width} batch {batch}: {name}",
                            rate, "img/s", f"on {device_name()}")  # fmt: skip


# -------------------------------------------------------------------------------------- cuhk03
def part_cuhk03(args: argparse.Namespace, sizes: Sizes, figures: Figures) -> None:
    import bench_cuhk03

    if not args.data or not args.data.is_file():
        raise SystemExit(f"no CUHK03 archive at {args.data}: run benchmarks/pack_cuhk03.py first")
    with tempfile.TemporaryDirectory() as tmp:
        data = Path(tmp) / "cuhk03"
        with tarfile.open(args.data) as tar:
            tar.extractall(data, filter="data")
        settings = argparse.Namespace(
            height=sizes.cuhk03_height, width=sizes.cuhk03_width, epochs=sizes.cuhk03_epochs,
            batch_size=64 if on_gpu() else 16, workers=os.cpu_count() if on_gpu() else 1,
            max_batches=sizes.cuhk03_max_batches, seed=0, recipe=bench_cuhk03.RECIPE,
            set=[f"train.precision='{precision()}'", f"dataset.num_classes={count_ids(data)}"],
        )  # fmt: skip
        weights = args.weights if args.weights and args.weights.is_file() else None
        runs = [("mobilenet_v2", "ImageNet" if weights else "scratch (no weights given)", weights)]
        runs.append(("resnet_50", "scratch", None))
        for backbone, start, path in runs:
            settings.set.append(f"model.backbone={backbone}")
            scores = bench_cuhk03.run_reidkit(settings, Path(tmp) / backbone, data, path)
            setting = (
                f"CUHK03 {backbone} ({start}) {settings.height}x{settings.width}, "
                f"{settings.epochs} epochs, batch {settings.batch_size}"
            )
            own = scores["own"]  # the evaluate action's scoring
            figures.add(f"{setting}: mAP", own["mAP"], "%", f"rank-1 {own['rank1']:.1f} %")
            figures.add(f"{setting}: training", scores["train_s"], "s",
                        f"{scores['images_per_s']:.0f} img/s")  # fmt: skip


def count_ids(data: Path) -> int:
    return len({p.name.split("_", 1)[0] for p in (data / "bounding_box_train").iterdir()})


# ------------------------------------------------------------------------------------- summary
def summary(out: Path, record: bool) -> int:
    """Print every figure found under ``out`` as one table; list parts that left none."""
    rows = [row for part in PARTS if (out / f"{part}.json").is_file()
            for row in json.loads((out / f"{part}.json").read_text())]  # fmt: skip
    missing = [part for part in PARTS if not (out / f"{part}.json").is_file()]
    print("\n== GPU check summary ==")
    print("| part | figure | value | unit | reference |\n|---|---|---|---|---|")
    for row in rows:
        value = row["value"]
        shown = f"{value:.4g}" if isinstance(value, float) else value
        print(f"| {row['part']} | {row['figure']} | {shown} | {row['unit']} | {row['reference']} |")
    failures = out / "failures.txt"  # written by gpu_check.sh: one line per failed part
    failed = failures.read_text().splitlines() if failures.is_file() else []
    for line in failed:
        print(f"FAILED: {line}")
    for part in missing:
        print(f"no figures from part '{part}'")
    if record and rows:
        host = next((r["value"] for r in rows if r["figure"] == "device"), "unknown device")
        common = {"date": date.today().isoformat(), "benchmark": "gpu_check", "command": COMMAND}
        common["machine"] = host
        append_rows([
            common | {"metric": f"{r['part']}: {r['figure']} ({r['unit']})",
                      "value": r["value"], "reference": r["reference"], "ratio": ""}
            for r in rows if isinstance(r["value"], float)
        ])  # fmt: skip
    return 1 if failed or missing else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("part", choices=[*PARTS, "summary"])
    parser.add_argument("--out", type=Path, required=True, help="folder of the parts' JSON")
    parser.add_argument("--dry-run", action="store_true", help="tiny sizes, any device")
    parser.add_argument("--data", type=Path, help="CUHK03 archive from pack_cuhk03.py")
    parser.add_argument("--weights", type=Path, help="ImageNet MobileNetV2 features weights")
    parser.add_argument("--record", action="store_true", help="summary: append results.csv")
    args = parser.parse_args()
    if args.part == "summary":
        return summary(args.out, args.record and not args.dry_run)
    logging.getLogger("lightning.pytorch").setLevel(logging.WARNING)
    if not on_gpu():
        torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    sizes = DRY if args.dry_run else FULL
    if not args.dry_run and not on_gpu():
        raise SystemExit("no CUDA device here; use --dry-run to check the script on a CPU")
    part = {"env": part_env, "train": part_train, "eval": part_eval, "onnx": part_onnx,
            "cuhk03": part_cuhk03}[args.part]  # fmt: skip
    part(args, sizes, Figures(args.out, args.part))
    return 0


if __name__ == "__main__":
    sys.exit(main())

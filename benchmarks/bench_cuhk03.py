"""Train and evaluate on real CUHK03 (detected) with reidkit and with torchreid 0.2.5, side by
side: the same data, ImageNet MobileNetV2 weights, input size, epoch budget and batch size.

Run from the repository root (needs the ``bench`` extra and ``../shared``)::

    .venv/bin/python benchmarks/bench_cuhk03.py --epochs 4 --height 128 --width 64

Train on ``bounding_box_train`` (743 ids, 7,239 images), evaluate ``query`` against
``bounding_box_test`` (Market-1501 protocol). The two sides run one after the other, each in
its own process (never in parallel):

* reidkit: ``model.backbone=mobilenet_v2`` with ``model.pretrained_model_path`` pointing at the
  torchvision ``features.*`` weights, the Market/TAO recipe (softmax_triplet sampler, 8 ids x
  4 images, softmax with label smoothing + triplet, BNNeck, flip + pad/crop + random erasing,
  Adam 3.5e-4), but a schedule made for a few epochs: cosine decay over the run without
  warm-up (TAO's 10-epoch linear warm-up would spend the whole budget warming up), through
  ``reidkit.load_spec`` / ``reidkit.train`` / ``reidkit.evaluate``; no re-ranking.
* torchreid: ``benchmarks/torchreid_cuhk03.py`` (the anchor recipe, see its docstring).

Prints the table and appends one row per figure to ``benchmarks/results.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import time
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from bench_eval import append_rows, machine  # noqa: E402

DATA = (ROOT / "../shared/data/cuhk03_detected").resolve()
WEIGHTS = (ROOT / "../shared/weights/mobilenet_v2_imagenet_features.pth").resolve()


def reidkit_overrides(
    args: argparse.Namespace, results_dir: Path, data: Path = DATA, weights: Path | None = WEIGHTS
) -> list[str]:
    """The spec (as ``key=value`` overrides of the defaults, which are TAO's Market recipe).

    ``weights=None`` trains from scratch (``args.set`` then usually names another backbone).
    """
    padding = max(1, round(10 * args.height / 256))  # TAO pads 10 px at 256x128
    start = (
        ["model.pretrain_choice=imagenet", f"model.pretrained_model_path={weights}"]
        if weights
        else ["model.pretrain_choice=self"]
    )
    overrides = [
        f"results_dir={results_dir}",
        "model.backbone=mobilenet_v2",
        *start,
        f"model.input_height={args.height}",
        f"model.input_width={args.width}",
        f"dataset.train_dataset_dir={data / 'bounding_box_train'}",
        f"dataset.test_dataset_dir={data / 'bounding_box_test'}",
        f"dataset.query_dataset_dir={data / 'query'}",
        "dataset.num_classes=743",
        f"dataset.batch_size={args.batch_size}",
        "dataset.num_instances=4",
        "dataset.sampler=softmax_triplet",
        f"dataset.num_workers={args.workers}",
        f"dataset.padding={padding}",
        f"train.num_epochs={args.epochs}",
        f"train.checkpoint_interval={args.epochs}",
        f"train.validation_interval={args.epochs + 1}",
        "train.optim.base_lr=0.00035",
        "train.optim.warmup_method=cosine",
        f"train.optim.warmup_epochs={args.warmup}",
        "re_ranking.re_ranking=False",
        f"evaluate.checkpoint={results_dir / 'train' / 'reid_model_latest.pth'}",
        f"evaluate.query_dataset={data / 'query'}",
        f"evaluate.test_dataset={data / 'bounding_box_test'}",
    ]
    if args.max_batches:
        overrides.append(f"train.steps_per_epoch={args.max_batches}")
    return overrides + args.set


def run_reidkit(
    args: argparse.Namespace,
    results_dir: Path | None = None,
    data: Path = DATA,
    weights: Path | None = WEIGHTS,
) -> dict[str, float]:
    """In this (child) process: train, then evaluate, timing each call."""
    import logging

    import reidkit

    # reidkit's INFO lines, among them the weight-loading report (0 missing backbone keys).
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")

    results_dir = results_dir or args.workdir / "reidkit"
    spec = reidkit.load_spec(None, reidkit_overrides(args, results_dir, data, weights))
    start = time.perf_counter()
    trained = reidkit.train(spec)
    train_s = time.perf_counter() - start
    start = time.perf_counter()
    evaluated = reidkit.evaluate(spec)
    eval_s = time.perf_counter() - start
    # The periodic checkpoint is named model_{epoch:03d}_{step:05d}.pth: total optimizer steps.
    steps = max(
        int(m.group(1))
        for p in trained.results_dir.glob("model_*.pth")
        if (m := re.match(r"model_\d+_(\d+)\.pth", p.name))
    )
    m = evaluated.metrics
    return {
        "rank1": m["cmc_rank_1"],
        "mAP": m["mAP"],
        "mINP": m["mINP"],
        "valid_queries": m["num_valid_queries"],
        "train_s": train_s,
        "eval_s": eval_s,
        "train_images": steps * args.batch_size,
        "images_per_s": steps * args.batch_size / train_s,
        "batches_per_epoch": steps / args.epochs,
    }


def side(args: argparse.Namespace, name: str) -> dict[str, float]:
    """Run one side in its own process and read its JSON."""
    out = args.workdir / f"{name}.json"
    common = [
        f"--epochs={args.epochs}",
        f"--height={args.height}",
        f"--width={args.width}",
        f"--batch-size={args.batch_size}",
        f"--workers={args.workers}",
        f"--max-batches={args.max_batches}",
    ]
    if name == "reidkit":
        cmd = [sys.executable, __file__, "--child", out.as_posix(), *common]
        cmd += [f"--warmup={args.warmup}", f"--workdir={args.workdir}"]
        cmd += [f"--set={s}" for s in args.set]
    else:
        cmd = [sys.executable, str(HERE / "torchreid_cuhk03.py"), *common, f"--out={out}"]
    print(f"== {name}: {' '.join(cmd)}", flush=True)
    start = time.perf_counter()
    subprocess.run(cmd, check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    result["total_s"] = time.perf_counter() - start
    print(f"== {name}: {json.dumps(result)}", flush=True)
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=4)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="data loader workers (both)")
    parser.add_argument("--warmup", type=int, default=0, help="reidkit cosine warm-up epochs")
    parser.add_argument("--max-batches", type=int, default=0, help="cap per epoch (probe only)")
    parser.add_argument("--sides", default="reidkit,torchreid")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/reidkit_bench_cuhk03"))
    parser.add_argument("--set", action="append", default=[], help="extra reidkit key=value")
    parser.add_argument("--no-record", action="store_true", help="do not append results.csv")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    if args.child:
        args.child.write_text(json.dumps(run_reidkit(args)))
        return 0
    for needed in (DATA, WEIGHTS):
        if not needed.exists():
            sys.exit(f"missing {needed} (the shared data sits beside the repository)")
    host = machine()
    command = " ".join([".venv/bin/python benchmarks/bench_cuhk03.py", *sys.argv[1:]])
    print(f"machine: {host}\nsetting: {args.height}x{args.width}, {args.epochs} epochs, "
          f"batch {args.batch_size}, {args.workers} workers", flush=True)  # fmt: skip
    results = {name: side(args, name) for name in args.sides.split(",")}
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    if set(results) != {"reidkit", "torchreid"}:
        return 0
    ours, ref = results["reidkit"], results["torchreid"]
    # (label, key, higher is better)
    figures = [
        ("rank-1 %", "rank1", True),
        ("mAP %", "mAP", True),
        ("train wall s", "train_s", False),
        ("eval wall s", "eval_s", False),
        ("train images/s", "images_per_s", True),
    ]
    print("\n| figure | reidkit | torchreid | ratio (better > 1) |\n|---|---|---|---|")
    setting = f"{args.height}x{args.width} {args.epochs} ep batch {args.batch_size}"
    rows = []
    for label, key, higher in figures:
        ratio = ours[key] / ref[key] if higher else ref[key] / ours[key]
        print(f"| {label} | {ours[key]:.2f} | {ref[key]:.2f} | {ratio:.2f} |")
        rows.append(
            {
                "date": date.today().isoformat(),
                "benchmark": "cuhk03",
                "machine": host,
                "command": command,
                "metric": f"{setting} {label} reidkit mobilenet_v2 (reference: torchreid "
                f"mobilenetv2_x1_0){'' if higher else ' [ratio = reference / value]'}",
                "value": f"{ours[key]:.2f}",
                "reference": f"{ref[key]:.2f}",
                "ratio": f"{ratio:.3f}",
            }
        )
    print(f"| mINP % | {ours['mINP']:.2f} | n/a | |")
    rows.append(
        {
            "date": date.today().isoformat(),
            "benchmark": "cuhk03",
            "machine": host,
            "command": command,
            "metric": f"{setting} mINP % reidkit mobilenet_v2 (torchreid does not report it)",
            "value": f"{ours['mINP']:.2f}",
            "reference": "",
            "ratio": "",
        }
    )
    if not args.no_record and not args.max_batches:
        append_rows(rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())

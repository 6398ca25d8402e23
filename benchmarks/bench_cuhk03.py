"""Train and evaluate on real CUHK03 (detected) with reidkit and with torchreid 0.2.5, side by
side: the same data, ImageNet MobileNetV2 weights, input size, images seen and batch size.

Run from the repository root (needs the ``bench`` extra and ``../shared``), one seed per call
so that each call stays short; the table and plot cover every seed recorded so far::

    .venv/bin/python benchmarks/bench_cuhk03.py --epochs 2 --seed 1
    .venv/bin/python benchmarks/bench_cuhk03.py --epochs 2 --seed 2

Train on ``bounding_box_train`` (743 ids, 7,239 images), evaluate ``query`` against
``bounding_box_test`` (Market-1501 protocol). The two sides run one after the other, each in
its own process (never in parallel), and both see ``epochs x (7,239 // batch)`` batches:

* reidkit: ``--recipe``, by default ``examples/cuhk03_mobilenet_short.yaml`` (the
  short-budget recipe of ``docs/recipes.md``; ``examples/cuhk03_mobilenet_12ep.yaml`` for
  12 epochs), with the data paths, input size, epochs and seed set here, through
  ``reidkit.load_spec`` / ``reidkit.actions.fit.run_training`` / ``reidkit.evaluate``.
* torchreid: ``benchmarks/torchreid_cuhk03.py`` (the anchor recipe, see its docstring).

Both sides use PyTorch's default threads (one per core; record in each JSON's
``torch_threads``): what a user of either gets. Keep the machine otherwise idle.

Scoring: each side's own default (reidkit ``evaluate``: normalised features, no flip;
torchreid ``_evaluate``: raw features, Euclidean), and both the same way with
``cuhk03_scoring`` (normalised + flip; the same re-ranked, reported separately). After every
epoch both are scored off the clock (normalised + flip) for the time-to-accuracy curve.

Writes ``benchmarks/results/cuhk03_<H>x<W>_<E>ep_<side>_seed<S>.json`` per run (``reidkit-<label>``
for a ``--label``ed variant, e.g. a recipe changed with ``--set``), then prints
the table over all recorded seeds, plots mAP against training seconds
(``benchmarks/results/cuhk03_<H>x<W>_<E>ep.png``) and appends rows to ``results.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from datetime import date
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import append_rows, machine  # noqa: E402

DATA = (ROOT / "../shared/data/cuhk03_detected").resolve()
WEIGHTS = (ROOT / "../shared/weights/mobilenet_v2_imagenet_features.pth").resolve()
RECIPE = ROOT / "examples" / "cuhk03_mobilenet_short.yaml"
RESULTS = HERE / "results"
SIDES = ("reidkit", "torchreid")


def reidkit_overrides(
    args: argparse.Namespace, results_dir: Path, data: Path = DATA, weights: Path | None = WEIGHTS
) -> list[str]:
    """What the benchmark sets on top of the recipe file: paths, size, budget, seed.

    ``weights=None`` trains from scratch (``args.set`` then usually names another backbone).
    """
    start = f"model.pretrained_model_path={weights}" if weights else "model.pretrain_choice=self"
    overrides = [
        f"results_dir={results_dir}",
        start,
        f"model.input_height={args.height}",
        f"model.input_width={args.width}",
        f"dataset.train_dataset_dir={data / 'bounding_box_train'}",
        f"dataset.test_dataset_dir={data / 'bounding_box_test'}",
        f"dataset.query_dataset_dir={data / 'query'}",
        f"dataset.batch_size={args.batch_size}",
        f"dataset.num_workers={args.workers}",
        f"train.seed={args.seed}",
        f"train.num_epochs={args.epochs}",
        f"train.checkpoint_interval={args.epochs}",
        f"train.validation_interval={args.epochs + 1}",
        "re_ranking.re_ranking=False",
        "model.with_flip_feature=False",
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
) -> dict:
    """In this (child) process: train (scored after each epoch, off the clock), evaluate."""
    import logging

    import torch
    from lightning.pytorch import Callback

    import reidkit
    from cuhk03_scoring import Clock, embed, norm_flip, reranked
    from reidkit.actions.fit import run_training
    from reidkit.data import prepare_splits, training_preprocessing
    from reidkit.engine.datamodule import eval_loader

    # reidkit's INFO lines, among them the weight-loading report (0 missing backbone keys).
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    results_dir = results_dir or args.workdir / "reidkit"
    spec = reidkit.load_spec(args.recipe, reidkit_overrides(args, results_dir, data, weights))
    test = prepare_splits(spec, train=False)
    fed = training_preprocessing(spec.model, spec.dataset)
    curve: list[dict] = []
    last: dict = {}

    class EpochScores(Callback):
        def on_train_epoch_end(self, trainer, module) -> None:
            point = {"epoch": trainer.current_epoch + 1, "train_s": clock.training_seconds()}
            last["batches_per_epoch"] = trainer.num_training_batches
            with clock.off():
                model = shipped_model(trainer, module)
                model.eval()
                last["query"], last["gallery"] = (
                    embed(model, eval_loader(spec, records, 128, fed))
                    for records in (test.query, test.gallery)
                )
                model.train()
                curve.append({**point, **norm_flip(last["query"], last["gallery"])})
            print(f"epoch {point['epoch']}: {curve[-1]}", flush=True)

    clock = Clock()
    trained = run_training(spec, callbacks=[EpochScores()])
    train_s = clock.training_seconds()
    start = time.perf_counter()
    evaluated = reidkit.evaluate(spec)
    eval_s = time.perf_counter() - start
    batches = trained.epochs * last["batches_per_epoch"]
    m = evaluated.metrics
    return {
        "own": {"rank1": m["cmc_rank_1"], "mAP": m["mAP"], "mINP": m["mINP"]},
        "norm_flip": {k: curve[-1][k] for k in ("rank1", "mAP")},
        "rerank": reranked(last["query"], last["gallery"]),
        "curve": curve,
        "train_s": train_s,
        "eval_s": eval_s,
        "train_images": batches * args.batch_size,
        "images_per_s": batches * args.batch_size / train_s,
        "batches_per_epoch": last["batches_per_epoch"],
        "torch_threads": torch.get_num_threads(),
        "recipe": Path(args.recipe).resolve().relative_to(ROOT).as_posix(),
        "set": args.set,
    }


def shipped_model(trainer, module) -> torch.nn.Module:
    """The weights a checkpoint would hold now: with ``train.ema_decay``, Lightning's moving
    average (its callback keeps it privately and swaps it in only to validate and save)."""
    from lightning.pytorch.callbacks import WeightAveraging

    for callback in trainer.callbacks:
        if isinstance(callback, WeightAveraging) and callback._average_model is not None:
            return callback._average_model.module.model
    return module.model


def result_path(args: argparse.Namespace, side: str, seed: int) -> Path:
    """Where one side's run is recorded; a ``--label``ed reidkit run (a variant) has its own."""
    name = f"{side}-{args.label}" if args.label and side == "reidkit" else side
    return RESULTS / f"cuhk03_{args.height}x{args.width}_{args.epochs}ep_{name}_seed{seed}.json"


def run_side(args: argparse.Namespace, side: str) -> dict:
    """Run one side in its own process; its JSON goes to ``benchmarks/results``."""
    out = result_path(args, side, args.seed)
    common = [
        f"--epochs={args.epochs}",
        f"--height={args.height}",
        f"--width={args.width}",
        f"--batch-size={args.batch_size}",
        f"--workers={args.workers}",
        f"--max-batches={args.max_batches}",
        f"--seed={args.seed}",
    ]
    if side == "reidkit":
        cmd = [sys.executable, __file__, "--child", out.as_posix(), *common]
        cmd += [f"--workdir={args.workdir / f'seed{args.seed}'}", f"--recipe={args.recipe}"]
        cmd += [f"--set={s}" for s in args.set]
    else:
        cmd = [sys.executable, str(HERE / "torchreid_cuhk03.py"), *common, f"--out={out}"]
    print(f"== {side}: {' '.join(cmd)}", flush=True)
    subprocess.run(cmd, check=True, cwd=ROOT)
    result = json.loads(out.read_text())
    result["load_average_after"] = round(os.getloadavg()[0], 1)
    out.write_text(json.dumps(result, indent=1))
    return result


def seconds_to_reach(curve: list[dict], target: float) -> float | None:
    """Training seconds at the first epoch whose mAP reaches ``target`` (None: never)."""
    return next((p["train_s"] for p in curve if p["mAP"] >= target), None)


def summarise(args: argparse.Namespace, host: str, command: str) -> None:
    """Table over every recorded seed of this budget, the time-to-accuracy plot, csv rows."""
    runs = {
        side: {
            int(p.stem.rsplit("seed", 1)[1]): json.loads(p.read_text())
            for p in sorted(RESULTS.glob(result_path(args, side, 0).name.replace("seed0", "seed*")))
        }
        for side in SIDES
    }
    seeds = sorted(set(runs["reidkit"]) & set(runs["torchreid"]))
    if not seeds:
        return
    figures = [
        ("rank-1 %, own scoring", lambda r: r["own"]["rank1"], True),
        ("mAP %, own scoring", lambda r: r["own"]["mAP"], True),
        ("rank-1 %, norm + flip", lambda r: r["norm_flip"]["rank1"], True),
        ("mAP %, norm + flip", lambda r: r["norm_flip"]["mAP"], True),
        ("rank-1 %, norm + flip + re-ranking", lambda r: r["rerank"]["rank1"], True),
        ("mAP %, norm + flip + re-ranking", lambda r: r["rerank"]["mAP"], True),
        ("train s (scoring excluded)", lambda r: r["train_s"], False),
        ("train images/s", lambda r: r["images_per_s"], True),
        ("evaluate s (own, end to end)", lambda r: r["eval_s"], False),
    ]
    # Time to accuracy: torchreid's final mAP (norm + flip, seed mean) as the target.
    target = statistics.mean(runs["torchreid"][s]["norm_flip"]["mAP"] for s in seeds)
    reach = {
        side: [seconds_to_reach(runs[side][s]["curve"], target) for s in seeds] for side in SIDES
    }
    setting = f"{args.height}x{args.width} {args.epochs} ep batch {args.batch_size}"
    if args.label:
        setting += f" (reidkit {args.label})"
    print(f"\n{setting}, seeds {seeds}: mean (per seed)\n")
    print("| figure | reidkit | torchreid | difference or ratio |\n|---|---|---|---|")
    rows = []
    for label, get, higher in figures:
        ours = [get(runs["reidkit"][s]) for s in seeds]
        ref = [get(runs["torchreid"][s]) for s in seeds]
        mo, mr = statistics.mean(ours), statistics.mean(ref)
        ratio = mo / mr if higher else mr / mo
        compare = f"{mo - mr:+.1f} points" if "%" in label else f"{ratio:.2f}x"
        each = lambda v: ", ".join(f"{x:.1f}" for x in v)  # noqa: E731
        print(f"| {label} | {mo:.1f} ({each(ours)}) | {mr:.1f} ({each(ref)}) | {compare} |")
        rows.append(
            {
                "date": date.today().isoformat(),
                "benchmark": "cuhk03",
                "machine": host,
                "command": command,
                "metric": f"{setting} {label}, seeds {seeds} mean: reidkit mobilenet_v2 "
                "(reference: torchreid mobilenetv2_x1_0)",
                "value": f"{mo:.2f}",
                "reference": f"{mr:.2f}",
                "ratio": f"{ratio:.3f}",
            }
        )
    fmt = lambda v: "never" if v is None else f"{v:.0f} s"  # noqa: E731
    print(
        f"| seconds to torchreid's final mAP ({target:.1f}, norm + flip) | "
        f"{', '.join(fmt(v) for v in reach['reidkit'])} | "
        f"{', '.join(fmt(v) for v in reach['torchreid'])} | |"
    )
    variant = f"_{args.label}" if args.label else ""
    plot = RESULTS / f"cuhk03_{args.height}x{args.width}_{args.epochs}ep{variant}.png"
    _plot(runs, seeds, target, plot, setting)
    print(f"\nplot: {plot.relative_to(ROOT)}")
    if not args.no_record and not args.max_batches:
        append_rows(rows)


def _plot(runs: dict, seeds: list[int], target: float, path: Path, setting: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for side, colour in zip(SIDES, ("tab:blue", "tab:orange"), strict=True):
        for i, seed in enumerate(seeds):
            curve = runs[side][seed]["curve"]
            ax.plot(
                [0] + [p["train_s"] for p in curve],
                [0] + [p["mAP"] for p in curve],
                marker="o",
                color=colour,
                linestyle="-" if i == 0 else "--",
                label=f"{side} seed {seed}",
            )
    ax.axhline(target, color="grey", linewidth=0.8, linestyle=":", label="torchreid final mAP")
    ax.set_xlabel("training seconds (scoring excluded)")
    ax.set_ylabel("mAP % (normalised + flip)")
    ax.set_title(f"CUHK03 {setting}")
    ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--height", type=int, default=128)
    parser.add_argument("--width", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2, help="data loader workers (both)")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--max-batches", type=int, default=0, help="cap per epoch (probe only)")
    parser.add_argument("--sides", default=",".join(SIDES))
    parser.add_argument("--summary-only", action="store_true", help="table of recorded runs")
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/reidkit_bench_cuhk03"))
    parser.add_argument("--recipe", type=Path, default=RECIPE, help="reidkit's spec file")
    parser.add_argument("--set", action="append", default=[], help="extra reidkit key=value")
    parser.add_argument(
        "--label",
        help="record reidkit's side as a named variant (its own JSON, table and plot against "
        "the same torchreid runs), e.g. for a recipe tried with --set",
    )
    parser.add_argument("--no-record", action="store_true", help="do not append results.csv")
    parser.add_argument("--child", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        args.child.write_text(json.dumps(run_reidkit(args)))
        return 0
    for needed in (DATA, WEIGHTS):
        if not needed.exists():
            sys.exit(f"missing {needed} (the shared data sits beside the repository)")
    RESULTS.mkdir(exist_ok=True)
    host = machine()
    command = " ".join([".venv/bin/python benchmarks/bench_cuhk03.py", *sys.argv[1:]])
    print(f"machine: {host}\nsetting: {args.height}x{args.width}, {args.epochs} epochs, batch "
          f"{args.batch_size}, {args.workers} workers, seed {args.seed}", flush=True)  # fmt: skip
    if not args.summary_only:
        import shutil

        shutil.rmtree(args.workdir / f"seed{args.seed}", ignore_errors=True)  # never resume
        for side in args.sides.split(","):
            print(f"== {side}: {json.dumps(run_side(args, side))[:400]}", flush=True)
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    summarise(args, host, command)
    return 0


if __name__ == "__main__":
    sys.exit(main())

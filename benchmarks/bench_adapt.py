"""Adaptation to unseen campuses: direct transfer, ``reidkit adapt`` (without and with track
constraints) and the labelled in-domain upper bound, side by side in one run.

Run from the repository root, under the shared lock (it trains)::

    flock /tmp/reidkit-heavy.lock .venv/bin/python benchmarks/bench_adapt.py \\
        --cache /work/cache/source_models --recipes cuhk03_mobilenet_short cuhk03_mobilenet_12ep \\
        --seeds 1 2

Sources: CUHK03-trained models of the shipped recipes (``examples/<recipe>.yaml``), one per seed,
from ``--cache`` (trained there first when missing; see ``benchmarks/source_models.py``).

Targets (labels are used only to score):

* ``pku``: adapt on ``pku_views/train`` (62 people, 992 crops, 2 cameras), score ``val/query``
  against ``val/gallery`` (12 other people);
* ``mars``: adapt on ``mars_mini/bbox_train`` (16 people, 32 tracklets, 1,719 frames), score the
  ``gtPepper`` query tracklets against the gallery tracklets (16 other people; a tracklet's
  embedding is the mean of its frames', MARS's protocol);
* transductive, what a site does: adapt on a target's gallery itself, then search it
  (``pku-gallery``: the 181 val gallery crops; ``mars-gallery``: the 32 gallery tracklets).

Rows: direct transfer (the source model as is), adapt without and with track constraints (MARS
names carry tracklet ids), and the upper bound: the source model trained further on the target's
labelled train split with the 12-epoch recipe's losses (ID + triplet, P x K). Each adapt and
upper-bound run is a child process, so its peak memory (``ru_maxrss``) is its own. Scores:
normalised embeddings, no flip, no re-ranking (``reidkit evaluate``'s default).

``--ablation`` adds, for the first recipe and seed only, the method with one part removed at a
time on ``pku`` and ``mars``. ``--round-cost`` (first source only) times one adaptation round on
10,000 synthetic crops against one training epoch over the same crops. Both run after every
source's main rows; results are written after every child run. Writes
``benchmarks/results/adapt_<recipe>_seed<N>.json`` per source and prints the tables.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import machine  # noqa: E402
from source_models import (  # noqa: E402
    CUHK03,
    DEFAULT_CACHE,
    RECIPES,
    ensure_source_model,
)

DATA = (ROOT / "../shared/data").resolve()
PKU = DATA / "pku_views"
MARS = DATA / "mars_mini"
RESULTS = HERE / "results"
UPPER_RECIPE = ROOT / "examples" / "cuhk03_mobilenet_12ep.yaml"
UPPER_EPOCHS = 6
#: target name -> (adapt target, scoring protocol, whether MARS tracklets are in the names)
TARGETS = {
    "pku": (PKU / "train", "pku"),
    "mars": (MARS / "bbox_train", "mars"),
    "pku-gallery": (PKU / "val" / "gallery", "pku"),
    "mars-gallery": (None, "mars"),  # a folder of the gallery tracklets, made in the workdir
}
#: The rows of each source (``--rows``): adapt rows by target, upper bounds.
ROWS = (
    "pku", "mars", "mars+tracks", "upper-pku", "upper-mars", "pku-gallery", "mars-gallery+tracks",
    "pku+source", "mars+tracks+source", "pku-gallery+source", "mars-gallery+tracks+source",
    "site-bn",
)  # fmt: skip
#: ablation name -> (spec overrides, code change made in the child)
ABLATIONS = {  # most telling first: a run cut short (or --ablation-limit) keeps them
    "no site BatchNorm statistics (the source model's kept)": (
        ["adapt.site_batchnorm=false"],
        None,
    ),
    "every cluster trained (not only cross-camera ones)": (
        ["adapt.cross_camera_training=false"],
        None,
    ),
    "no per-camera standardisation (raw embeddings clustered)": (
        ["adapt.per_camera_standardise=false"],
        None,
    ),
    "guard on coverage x silhouette (all clusters, not only cross-camera)": ([], "any_cluster"),
    "no camera proxies": (["adapt.camera_proxies=off"], None),
    "clustered once (no re-clustering)": ([], "cluster_once"),
    "fixed eps 0.6 (Cluster Contrast's)": (["adapt.eps=0.6"], None),
}


# ---------------------------------------------------------------------- scoring
def _embed(model: Any, card: Any, paths: list[Path]) -> Any:
    import torch
    from torch.utils.data import DataLoader

    from reidkit.data import ImageDataset, ImageRecord
    from reidkit.data.preprocessing import resolve_preprocessing
    from reidkit.data.transforms import build_eval_transform
    from reidkit.evaluation.features import extract_embeddings
    from reidkit.evaluation.metrics import normalize_features

    transform = build_eval_transform(resolve_preprocessing(card=card))
    records = [ImageRecord(p, 0, 0) for p in paths]
    loader = DataLoader(ImageDataset(records, transform), batch_size=128, num_workers=2)
    return normalize_features(
        extract_embeddings(model, loader, torch.device("cpu"), False).features
    )


def score(checkpoint: Path, protocol: str) -> dict[str, float]:
    """mAP and rank-1 (percent) of ``checkpoint`` on ``protocol``'s query vs gallery."""
    from reidkit.models.restore import restore_model

    return score_model(*restore_model(checkpoint), protocol)


def site_batchnorm_score(checkpoint: Path, target: str, seed: int) -> dict[str, float]:
    """The source model with its BatchNorm statistics re-estimated on ``target``'s adapt
    crops, shuffled by ``seed`` (what ``reidkit adapt`` does before its round 0; no
    training), scored on it."""
    import torch
    from torch.utils.data import DataLoader

    from reidkit.adaptation import site_batchnorm
    from reidkit.data import ImageDataset, load_split
    from reidkit.data.preprocessing import resolve_preprocessing
    from reidkit.data.transforms import build_eval_transform
    from reidkit.models.restore import restore_model

    model, card = restore_model(checkpoint)
    crops = load_split(TARGETS[target][0], target, keep_distractors=True)
    transform = build_eval_transform(resolve_preprocessing(card=card))
    loader = DataLoader(
        ImageDataset(crops, transform),
        batch_size=128,
        shuffle=True,
        generator=torch.Generator().manual_seed(seed),
        num_workers=2,
    )
    site_batchnorm(model, loader, torch.device("cpu"))
    return score_model(model, card, TARGETS[target][1])


def score_model(model: Any, card: Any, protocol: str) -> dict[str, float]:
    """mAP and rank-1 (percent) of an eval-mode model on ``protocol``'s query vs gallery."""
    import numpy as np
    import torch

    from reidkit.data import load_split
    from reidkit.evaluation.metrics import evaluate_features

    if protocol in ("pku", "cuhk03"):
        query_dir, gallery_dir = (
            (PKU / "val" / "query", PKU / "val" / "gallery")
            if protocol == "pku"
            else (CUHK03 / "query", CUHK03 / "bounding_box_test")
        )
        splits = [load_split(d, "split", keep_distractors=True) for d in (query_dir, gallery_dir)]
        feats = [_embed(model, card, [r.path for r in s]) for s in splits]
        ids = [np.asarray([r.pid for r in s]) for s in splits]
        cams = [np.asarray([r.camid for r in s]) for s in splits]
    else:
        feats, ids, cams = [], [], []
        for split in ("query", "gallery"):
            tracklets = json.loads((MARS / "gtPepper" / f"{split}.json").read_text())
            frames = [MARS / p for t in tracklets for p in t["img_paths"]]
            per_frame = _embed(model, card, frames)
            lengths = [len(t["img_paths"]) for t in tracklets]
            feats.append(torch.stack([c.mean(0) for c in per_frame.split(lengths)]))
            ids.append(np.asarray([t["pid"] for t in tracklets]))
            cams.append(np.asarray([t["camid"] for t in tracklets]))
    result = evaluate_features(feats[0], feats[1], ids[0], ids[1], cams[0], cams[1], 10)
    metrics = result.as_percent()
    return {"mAP": round(metrics["mAP"], 2), "rank1": round(metrics["cmc_rank_1"], 2)}


# ---------------------------------------------------------------------- child runs
def mars_gallery_folder(workdir: Path) -> Path:
    """The gallery tracklets as an identity-folder layout of links (labels unused by adapt)."""
    folder = workdir / "mars_gallery"
    if not folder.is_dir():
        for tracklet in json.loads((MARS / "gtPepper" / "gallery.json").read_text()):
            for path in tracklet["img_paths"]:
                link = folder / Path(path).parent.name / Path(path).name
                link.parent.mkdir(parents=True, exist_ok=True)
                link.symlink_to(MARS / path)
    return folder


def base_overrides(results: Path, seed: int) -> list[str]:
    return [f"results_dir={results}", f"train.seed={seed}", "dataset.num_workers=2"]


def run_adapt(job: dict[str, Any]) -> dict[str, Any]:
    """In the child: adapt the source to the job's target and score the result."""
    import reidkit
    from reidkit.adaptation import loop, pseudo_labels
    from reidkit.errors import ReidkitError

    if job.get("change") == "any_cluster":
        pseudo_labels.Clustering.quality = pseudo_labels.Clustering.structure
    if job.get("change") == "cluster_once":
        first = loop.PseudoLabeller._next_round

        def keep_first(self, clustering, feats, pl_module) -> None:
            if self.labels is None:
                first(self, clustering, feats, pl_module)

        loop.PseudoLabeller._next_round = keep_first
    target = job["target_dir"]
    spec = reidkit.load_spec(
        ROOT / "examples" / f"{job['recipe']}.yaml",
        [
            *base_overrides(Path(job["workdir"]), job["seed"]),
            f"adapt.checkpoint={job['source']}",
            f"adapt.target={target}",
            f"adapt.use_tracks={job['tracks']}",
            *job.get("overrides", []),
        ],
    )
    start = time.perf_counter()
    try:
        result = reidkit.adapt(spec)
    except ReidkitError as error:  # the guard kept the source model
        return {"refused": str(error), "wall_s": round(time.perf_counter() - start, 1)}
    wall = time.perf_counter() - start
    return {
        **score(result.checkpoint, job["protocol"]),
        "wall_s": round(wall, 1),
        "chosen_round": result.chosen_round,
        "rounds": [r.__dict__ for r in result.rounds],
    }


def run_upper_bound(job: dict[str, Any]) -> dict[str, Any]:
    """In the child: the source trained further on the target's labelled train split."""
    import reidkit
    from reidkit.actions.fit import run_training
    from reidkit.data import load_split

    train_dir = Path(job["target_dir"])
    ids = len({r.pid for r in load_split(train_dir, "train", keep_distractors=True)})
    spec = reidkit.load_spec(
        UPPER_RECIPE,
        [
            *base_overrides(Path(job["workdir"]), job["seed"]),
            f"model.pretrained_model_path={job['source']}",
            f"dataset.train_dataset_dir={train_dir}",
            f"dataset.query_dataset_dir={train_dir}",
            f"dataset.test_dataset_dir={train_dir}",
            f"dataset.num_classes={ids}",
            f"train.num_epochs={UPPER_EPOCHS}",
            "train.ema_decay=null",
            "train.optim.base_lr=0.00035",
            "train.validation_interval=1000",
        ],
    )
    start = time.perf_counter()
    trained = run_training(spec)
    wall = time.perf_counter() - start
    return {**score(trained.checkpoint, job["protocol"]), "wall_s": round(wall, 1)}


def run_round_cost(job: dict[str, Any]) -> dict[str, Any]:
    """In the child: one training epoch, then one adaptation round, on the same 10,000 crops.

    ``joint``: the round also trains on the labelled crops (``adapt.source_dataset``), adapting
    the model that epoch trained (whose classes they are).
    """
    import reidkit
    from reidkit.actions.fit import run_training
    from reidkit.adaptation import loop
    from reidkit.data import synthesize
    from reidkit.errors import ReidkitError

    data = Path(job["workdir"]) / "synth10k"
    if not (data / "bounding_box_train").is_dir():
        synthesize(data, ids=500, cameras=4, images_per_id=40, height=128, width=64, seed=0)
    train_dir = data / "bounding_box_train"
    crops = len(list(train_dir.iterdir()))
    common = [*base_overrides(Path(job["workdir"]) / "runs", job["seed"])]
    recipe = ROOT / "examples" / f"{job['recipe']}.yaml"
    spec_overrides = [
        *common,
        f"model.pretrained_model_path={job['source']}",
        f"dataset.train_dataset_dir={train_dir}",
        f"dataset.query_dataset_dir={data / 'query'}",
        f"dataset.test_dataset_dir={data / 'bounding_box_test'}",
        f"dataset.num_classes={len({p.name.split('_')[0] for p in train_dir.iterdir()})}",
        "train.num_epochs=1",
        "train.validation_interval=1000",
        "adapt.num_epochs=1",
        f"adapt.target={train_dir}",
    ]
    spec = reidkit.load_spec(recipe, [*spec_overrides, f"adapt.checkpoint={job['source']}"])
    start = time.perf_counter()
    trained = run_training(spec)
    epoch = time.perf_counter() - start
    if job.get("joint"):
        spec = reidkit.load_spec(
            recipe,
            [
                *spec_overrides,
                f"adapt.checkpoint={trained.checkpoint}",
                f"adapt.source_dataset={train_dir}",
            ],
        )
    rounds: list[dict] = []
    record = loop.PseudoLabeller._record

    def recorded(self, number, clustering, pl_module):  # every round, also when refused
        report = record(self, number, clustering, pl_module)
        rounds.append(report.__dict__)
        return report

    loop.PseudoLabeller._record = recorded
    try:
        reidkit.adapt(spec)
        refused = ""
    except ReidkitError as error:  # the guard kept the source model; the rounds still ran
        refused = str(error)
    return {"epoch_s": round(epoch, 1), "crops": crops, "rounds": rounds, "refused": refused}


CHILDREN = {"adapt": run_adapt, "upper": run_upper_bound, "round_cost": run_round_cost}


def child(job: dict[str, Any], workdir: Path) -> dict[str, Any]:
    """Run one job in its own process; its JSON result plus its peak memory."""
    workdir.mkdir(parents=True, exist_ok=True)
    job = {**job, "workdir": str(workdir)}
    out = workdir / "result.json"
    log = workdir / "log.txt"
    with log.open("w") as handle:
        subprocess.run(
            [sys.executable, __file__, "--child", json.dumps(job), "--out", str(out)],
            check=True,
            cwd=ROOT,
            stdout=handle,
            stderr=subprocess.STDOUT,
        )
    result = json.loads(out.read_text())
    print(f"  {job['kind']} {job.get('name', '')}: {_brief(result)}", flush=True)
    return result


def _brief(result: dict[str, Any]) -> str:
    keys = ("mAP", "rank1", "wall_s", "peak_mb", "chosen_round", "refused", "epoch_s")
    return ", ".join(f"{k} {result[k]}" for k in keys if k in result)


# ---------------------------------------------------------------------- one source
def added_rows(args: argparse.Namespace, recipe: str, seed: int) -> dict[str, Any]:
    """Run the chosen adapt rows of a recorded source again (or for the first time), keeping
    its other rows and its direct-transfer figures."""
    path = RESULTS / f"adapt_{recipe}_seed{seed}.json"
    record = json.loads(path.read_text())
    site_batchnorm_rows(args, record)
    adapt_jobs(args, record, [*MAIN_JOBS, *TRANSDUCTIVE_JOBS])
    return record


def site_batchnorm_rows(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """``site-bn``: each target's score with the site's BatchNorm statistics alone."""
    if "site-bn" in args.rows:
        source = Path(record["source"])
        record["site_batchnorm"] = {
            t: site_batchnorm_score(source, t, record["seed"]) for t in ("pku", "mars")
        }
        print(f"  site BatchNorm statistics alone: {record['site_batchnorm']}", flush=True)
        _save(record)


def bench_source(
    args: argparse.Namespace, recipe: str, seed: int, transductive: bool
) -> dict[str, Any]:
    """Direct transfer, the adapt rows, the upper bounds and (``transductive``) the adapt rows
    on the targets' galleries, of one source model."""
    source_dir = ensure_source_model(args.cache, recipe, seed)
    source = source_dir / "reid_model_latest.pth"
    work = args.workdir / f"{recipe}_seed{seed}"
    print(f"== {recipe} seed {seed}: {source}", flush=True)
    record: dict[str, Any] = {"recipe": recipe, "seed": seed, "source": str(source)}
    record["direct"] = {p: score(source, p) for p in ("cuhk03", "pku", "mars")}
    print(f"  direct transfer: {record['direct']}", flush=True)
    site_batchnorm_rows(args, record)
    record["adapt"] = {}
    adapt_jobs(args, record, MAIN_JOBS)
    record["upper"] = {}
    for target in [t for t in ("pku", "mars") if f"upper-{t}" in args.rows]:
        job = {
            "kind": "upper", "name": target, "seed": seed, "source": str(source),
            "target_dir": str(TARGETS[target][0]), "protocol": TARGETS[target][1],
        }  # fmt: skip
        record["upper"][target] = child(job, work / f"upper_{target}")
        _save(record)
    if transductive:
        adapt_jobs(args, record, TRANSDUCTIVE_JOBS)
    return record


#: (target, scoring protocol, with tracks) of the adapt rows, and of the transductive ones.
MAIN_JOBS = [("pku", "pku", False), ("mars", "mars", False), ("mars", "mars", True)]
TRANSDUCTIVE_JOBS = [("pku-gallery", "pku", False), ("mars-gallery", "mars", True)]


def adapt_jobs(
    args: argparse.Namespace, record: dict[str, Any], jobs: list[tuple[str, str, bool]]
) -> None:
    """Adapt rows of one source: (target, scoring protocol, with tracks) each, on the target
    crops alone and (``+source``) trained jointly with the labelled CUHK03 train split."""
    recipe, seed, source = record["recipe"], record["seed"], record["source"]
    work = args.workdir / f"{recipe}_seed{seed}"
    for target, protocol, tracks in jobs:
        for joint in (False, True):
            name = f"{target}{' +tracks' if tracks else ''}{' +source' if joint else ''}"
            if name.replace(" ", "") not in args.rows:
                continue
            folder = TARGETS[target][0] or mars_gallery_folder(args.workdir)
            job = {
                "kind": "adapt", "name": name, "recipe": recipe, "seed": seed, "source": source,
                "target_dir": str(folder), "protocol": protocol, "tracks": tracks,
                "overrides": [f"adapt.source_dataset={CUHK03 / 'bounding_box_train'}"] if joint
                else [],
            }  # fmt: skip
            record["adapt"][name] = child(job, work / name.replace(" +", "_"))
            _save(record)


def _save(record: dict[str, Any]) -> None:
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"adapt_{record['recipe']}_seed{record['seed']}.json"
    path.write_text(json.dumps(record, indent=1))


def bench_extras(args: argparse.Namespace, record: dict[str, Any]) -> None:
    """The ablation and the round cost, added to one source's recorded rows."""
    recipe, seed, source = record["recipe"], record["seed"], record["source"]
    work = args.workdir / f"{recipe}_seed{seed}"
    for joint in [
        j for j, asked in ((False, args.round_cost), (True, args.round_cost_joint)) if asked
    ]:
        key = "round_cost_joint" if joint else "round_cost"
        job = {"kind": "round_cost", "recipe": recipe, "seed": seed, "source": source,
               "joint": joint}  # fmt: skip
        record[key] = child(job, args.workdir / key)
        _save(record)
    if args.ablation:
        record["ablation"] = {}
        for label, (overrides, change) in list(ABLATIONS.items())[: args.ablation_limit]:
            for target in ("pku", "mars"):
                job = {
                    "kind": "adapt", "name": f"{target} {label}", "recipe": recipe, "seed": seed,
                    "source": source, "target_dir": str(TARGETS[target][0]),
                    "protocol": target, "tracks": False, "overrides": overrides, "change": change,
                }  # fmt: skip
                slug = f"ablation_{target}_{len(record['ablation'])}"
                record["ablation"][f"{target}: {label}"] = child(job, work / slug)
                _save(record)


# ---------------------------------------------------------------------- tables
def _mean(values: list[float]) -> str:
    shown = ", ".join(f"{v:.1f}" for v in values)
    return f"{statistics.mean(values):.1f} ({shown})" if values else "n/a"


def summarise(records: list[dict]) -> None:
    """The tables over seeds, per recipe."""
    for recipe in sorted({r["recipe"] for r in records}):
        runs = [r for r in records if r["recipe"] == recipe]
        seeds = [r["seed"] for r in runs]
        print(f"\n### {recipe}, seeds {seeds}: mean (per seed)\n")
        print("| target | row | mAP % | rank-1 % | wall s | peak MB | gap closed | x direct |")
        print("|---|---|---|---|---|---|---|---|")
        cuhk = [r["direct"]["cuhk03"]["mAP"] for r in runs]
        print(f"| CUHK03 (source test) | direct | {_mean(cuhk)} | "
              f"{_mean([r['direct']['cuhk03']['rank1'] for r in runs])} | | | | |")  # fmt: skip
        for target, protocol in (("pku", "pku"), ("mars", "mars"), ("pku-gallery", "pku"),
                                 ("mars-gallery", "mars")):  # fmt: skip
            upper_key = target.split("-")[0]
            direct = [r["direct"][protocol]["mAP"] for r in runs]
            print(f"| {target} | direct transfer | {_mean(direct)} | "
                  f"{_mean([r['direct'][protocol]['rank1'] for r in runs])} | | | | |")  # fmt: skip
            site_bn = [
                r["site_batchnorm"][target] for r in runs if target in r.get("site_batchnorm", {})
            ]
            if site_bn:
                print(f"| {target} | site BatchNorm statistics alone | "
                      f"{_mean([x['mAP'] for x in site_bn])} | "
                      f"{_mean([x['rank1'] for x in site_bn])} | | | | |")  # fmt: skip
            names = dict.fromkeys(n for r in runs for n in r["adapt"] if n.split(" ")[0] == target)
            for name in names:
                present = [r for r in runs if name in r["adapt"]]
                rows = [r["adapt"][name] for r in present]
                # A refused run ships nothing: the site keeps the source model (direct transfer).
                maps, ranks = (
                    [
                        r["direct"][protocol][key] if "refused" in x else x[key]
                        for r, x in zip(present, rows, strict=True)
                    ]
                    for key in ("mAP", "rank1")
                )
                ratio = [
                    m / r["direct"][protocol]["mAP"] for r, m in zip(present, maps, strict=True)
                ]
                gap = [
                    100
                    * (m - r["direct"][protocol]["mAP"])
                    / (r["upper"][upper_key]["mAP"] - r["direct"][protocol]["mAP"])
                    for r, m in zip(present, maps, strict=True)
                    if upper_key in r.get("upper", {})
                    and r["upper"][upper_key]["mAP"] > r["direct"][protocol]["mAP"]
                ]
                refused = sum("refused" in x for x in rows)
                label = f"adapt{name[len(target) :]}" + (f" ({refused} refused)" if refused else "")
                print(
                    f"| {target} | {label} | {_mean(maps)} | "
                    f"{_mean(ranks)} | "
                    f"{_mean([x['wall_s'] for x in rows])} | {_mean([x['peak_mb'] for x in rows])}"
                    f" | {_mean(gap) + ' %' if gap else 'n/a: upper <= direct'} |"
                    f" {_mean(ratio)} |"
                )
            if target in ("pku", "mars"):
                rows = [r["upper"][target] for r in runs if target in r.get("upper", {})]
                print(
                    f"| {target} | labelled upper bound ({UPPER_EPOCHS} ep) | "
                    f"{_mean([x['mAP'] for x in rows])} | {_mean([x['rank1'] for x in rows])} | "
                    f"{_mean([x['wall_s'] for x in rows])} | {_mean([x['peak_mb'] for x in rows])}"
                    " | | |"
                )
        for run in runs:
            if "ablation" in run:
                print(f"\nAblation ({recipe} seed {run['seed']}):\n")
                print("| variant | mAP % | rank-1 % | chosen round |\n|---|---|---|---|")
                for name, key in (("pku", "pku"), ("mars", "mars")):
                    full = run["adapt"][key]
                    cells = [full.get("mAP", "refused"), full.get("rank1", ""),
                             full.get("chosen_round", "")]  # fmt: skip
                    print(f"| {name}: full method | {' | '.join(map(str, cells))} |")
                for name, x in run["ablation"].items():
                    print(f"| {name} | {x.get('mAP', 'refused')} | {x.get('rank1', '')} | "
                          f"{x.get('chosen_round', '')} |")  # fmt: skip
            for key in ("round_cost", "round_cost_joint"):
                if key not in run:
                    continue
                cost = run[key]
                joint = ", trained jointly with them" if key.endswith("joint") else ""
                print(f"\nRound cost ({cost['crops']} synthetic crops{joint}): one training epoch "
                      f"{cost['epoch_s']} s; adapt rounds: "
                      f"{[(x['round'], x['seconds']) for x in cost.get('rounds', [])]}"
                      f" {cost.get('refused', '')}")  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/reidkit_bench_adapt"))
    parser.add_argument("--ablation", action="store_true", help="first recipe and seed only")
    parser.add_argument(
        "--ablation-limit", type=int, default=None, help="only the first N ablations (in order)"
    )
    parser.add_argument(
        "--round-cost", action="store_true", help="10,000-crop round timing (first source only)"
    )
    parser.add_argument(
        "--round-cost-joint",
        action="store_true",
        help="the same, the round trained jointly with the labelled crops (first source only)",
    )
    parser.add_argument(
        "--transductive-first-only",
        action="store_true",
        help="the transductive rows (adapt on a target's gallery) for the first source only",
    )
    parser.add_argument(
        "--rows",
        nargs="*",
        default=list(ROWS),
        choices=ROWS,
        help="the rows to run of each source (default: all); direct transfer always runs",
    )
    parser.add_argument("--summary-only", action="store_true", help="tables of recorded runs")
    parser.add_argument(
        "--add",
        action="store_true",
        help="run only the --rows adapt rows, added to the recorded runs (no direct transfer)",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        job = json.loads(args.child)
        result = CHILDREN[job["kind"]](job)
        result["peak_mb"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)
        args.out.write_text(json.dumps(result))
        return 0
    for needed in (CUHK03, PKU, MARS):
        if not needed.exists():
            sys.exit(f"missing {needed} (the shared data sits beside the repository)")
    print(f"machine: {machine()}\ncommand: {' '.join(sys.argv)}", flush=True)
    if args.add:
        added = [added_rows(args, recipe, seed) for recipe in args.recipes for seed in args.seeds]
        bench_extras(args, added[0])
    elif not args.summary_only:
        # Every source's main rows first, then the extras of the first one: a run cut short
        # still has every seed's table.
        sources = [(recipe, seed) for recipe in args.recipes for seed in args.seeds]
        done = [
            bench_source(args, recipe, seed, i == 0 or not args.transductive_first_only)
            for i, (recipe, seed) in enumerate(sources)
        ]
        bench_extras(args, done[0])
    records = [
        json.loads((RESULTS / f"adapt_{recipe}_seed{seed}.json").read_text())
        for recipe in args.recipes
        for seed in args.seeds
        if (RESULTS / f"adapt_{recipe}_seed{seed}.json").is_file()
    ]
    print(f"load average at the end: {os.getloadavg()[0]:.1f}")
    summarise(records)
    return 0


if __name__ == "__main__":
    sys.exit(main())

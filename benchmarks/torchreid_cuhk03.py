"""The torchreid 0.2.5 side of ``bench_cuhk03.py``: train and evaluate ``mobilenetv2_x1_0`` on
CUHK03 (detected, Market layout) with torchreid's own engine, as its users would.

Run by ``bench_cuhk03.py`` (one side at a time); on its own::

    .venv/bin/python benchmarks/torchreid_cuhk03.py --epochs 4 --height 128 --width 64 --out r.json

Recipe (the anchor in ``../shared/reference/anchors.md``, epochs and input size as given):
ImageNet init from ``../shared/weights/mobilenet_v2_imagenet_features.pth`` mapped into
torchreid's ``conv1..conv9`` by order and shape, softmax + label smoothing, Adam 3.5e-4
(weight decay 5e-4) with a cosine schedule over the epochs, batch 32 (RandomSampler),
random flip + random erasing, evaluation of raw features with Euclidean distances (torchreid's
``_evaluate``, Market-1501 protocol, its Cython ``evaluate_rank``). After every epoch the model
is also scored off the clock with ``cuhk03_scoring`` (normalised + flip features), the same
code that scores reidkit, for the time-to-accuracy curve; the last epoch's features are also
re-ranked.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
import warnings
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_eval import torchreid_rank
from cuhk03_scoring import Clock, embed, norm_flip, reranked

ROOT = Path(__file__).resolve().parents[1]
DATA = (ROOT / "../shared/data/cuhk03_detected").resolve()
WEIGHTS = (ROOT / "../shared/weights/mobilenet_v2_imagenet_features.pth").resolve()
NAME = re.compile(r"^(-?\d+)_c(\d+)")


def _split(folder: Path, relabel: bool) -> list[tuple[str, int, int]]:
    items = []
    for path in sorted(folder.glob("*.jpg")):
        pid, cam = map(int, NAME.match(path.name).groups())
        if pid >= 0:
            items.append((str(path), pid, cam - 1))
    if relabel:
        ids = {pid: i for i, pid in enumerate(sorted({pid for _, pid, _ in items}))}
        items = [(p, ids[pid], cam) for p, pid, cam in items]
    return items


def register() -> str:
    """Register the CUHK03 folder as a torchreid ImageDataset in the Market layout."""
    from torchreid.reid.data import ImageDataset, register_image_dataset

    class CUHK03Local(ImageDataset):
        def __init__(self, root: str = "", **kwargs):
            train = _split(DATA / "bounding_box_train", relabel=True)
            query = _split(DATA / "query", relabel=False)
            gallery = _split(DATA / "bounding_box_test", relabel=False)
            super().__init__(train, query, gallery, **kwargs)

    register_image_dataset("cuhk03_local", CUHK03Local)
    return "cuhk03_local"


def load_imagenet(model: torch.nn.Module) -> str:
    """Copy torchvision's ``features.*`` into torchreid's MobileNetV2, in order, by shape.

    torchreid's first bottleneck (t=1) has a 1x1 expansion conv that torchvision's lacks; it is
    set to the identity (weight eye, BN at its identity init): its input is already ReLU6-ed,
    so the mapped network computes what torchvision's does.
    """
    source = torch.load(WEIGHTS, map_location="cpu")
    src = [(k, v) for k, v in source.items() if k.startswith("features.")]
    extra = "conv2.0.conv1."
    dst = [
        k
        for k in model.state_dict()
        if not k.startswith(("classifier.", "fc.")) and not k.startswith(extra)
    ]
    if len(src) != len(dst):
        raise SystemExit(f"weight mapping: {len(src)} source tensors vs {len(dst)} targets")
    target = model.state_dict()
    for (skey, value), dkey in zip(src, dst, strict=True):
        if target[dkey].shape != value.shape:
            raise SystemExit(f"weight mapping: {skey} {tuple(value.shape)} -> {dkey}")
        target[dkey] = value.clone()
    weight = target[extra + "conv.weight"]
    target[extra + "conv.weight"] = torch.eye(weight.shape[0]).reshape(weight.shape)
    model.load_state_dict(target, strict=True)
    return f"{len(dst)} tensors mapped from {len(src)} features.* tensors (+ identity {extra})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--height", type=int, default=256)
    parser.add_argument("--width", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--max-batches", type=int, default=0, help="cap per epoch (timing probe)")
    parser.add_argument("--seed", type=int, default=1234)
    parser.add_argument("--out", type=Path, required=True, help="JSON file for the figures")
    args = parser.parse_args()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import torchreid
    _, evaluator = torchreid_rank()
    print(f"torchreid {torchreid.__version__}, evaluate_rank: {evaluator}", flush=True)
    torchreid.utils.set_random_seed(args.seed)

    clock = Clock()
    manager = torchreid.data.ImageDataManager(
        root=str(DATA),
        sources=register(),
        height=args.height,
        width=args.width,
        batch_size_train=args.batch_size,
        batch_size_test=128,
        transforms=["random_flip", "random_erase"],
        workers=args.workers,
        train_sampler="RandomSampler",
    )
    model = torchreid.models.build_model(
        "mobilenetv2_x1_0", num_classes=manager.num_train_pids, loss="softmax", pretrained=False
    )
    print("ImageNet init:", load_imagenet(model), flush=True)
    optimizer = torchreid.optim.build_optimizer(model, optim="adam", lr=3.5e-4)
    scheduler = torchreid.optim.build_lr_scheduler(
        optimizer, lr_scheduler="cosine", max_epoch=args.epochs
    )
    engine = torchreid.engine.ImageSoftmaxEngine(
        manager, model, optimizer=optimizer, scheduler=scheduler, label_smooth=True, use_gpu=False
    )
    loader = manager.train_loader
    batches = len(loader) if not args.max_batches else min(args.max_batches, len(loader))
    if args.max_batches:
        import itertools

        class Capped:  # the first max_batches batches of each epoch
            def __iter__(self):
                return itertools.islice(iter(loader), args.max_batches)

            def __len__(self):
                return args.max_batches

        engine.train_loader = Capped()
    setup = clock.training_seconds()
    engine.max_epoch = args.epochs
    name = manager.sources[0]
    test = manager.test_loader[name]
    curve = []
    for epoch in range(args.epochs):
        engine.epoch = epoch
        engine.train(print_freq=50)
        point = {"epoch": epoch + 1, "train_s": round(clock.training_seconds(), 2)}
        with clock.off():
            model.eval()
            query, gallery = (
                embed(model, ((b["img"], b["pid"], b["camid"]) for b in test[part]))
                for part in ("query", "gallery")
            )
            curve.append({**point, **norm_flip(query, gallery)})
        print(f"epoch {epoch + 1}: {curve[-1]}", flush=True)
    train_s = clock.training_seconds()

    start = time.perf_counter()
    engine.set_model_mode("eval")  # what engine.test does before _evaluate
    rank1, mAP = engine._evaluate(
        dataset_name=name,
        query_loader=manager.test_loader[name]["query"],
        gallery_loader=manager.test_loader[name]["gallery"],
        dist_metric="euclidean",
        normalize_feature=False,
    )
    eval_s = time.perf_counter() - start
    images = args.epochs * batches * args.batch_size
    result = {
        "own": {"rank1": 100 * float(rank1), "mAP": 100 * float(mAP)},
        "norm_flip": {k: curve[-1][k] for k in ("rank1", "mAP")},
        "rerank": reranked(query, gallery),
        "curve": curve,
        "train_s": train_s,
        "setup_s": setup,
        "eval_s": eval_s,
        "train_images": images,
        "images_per_s": images / train_s,
        "batches_per_epoch": batches,
        "torch_threads": torch.get_num_threads(),
    }
    print(json.dumps(result), flush=True)
    args.out.write_text(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())

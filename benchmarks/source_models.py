"""The CUHK03 source models that adaptation benchmarks start from, trained once and cached.

A source model is the shipped recipe (``examples/<recipe>.yaml``) trained on CUHK03's
``bounding_box_train`` from the ImageNet MobileNetV2 weights with one seed, exactly as
``bench_cuhk03.py`` trains it (no validation during training; the latest checkpoint is the
model). It lives OUTSIDE the repository in ``<cache>/<recipe>_seed<N>/``, which is that train
run's folder: a finished run there (``status.json`` SUCCESS) is reused, anything else is
(re)trained in place, resuming from its last checkpoint. Other benchmarks (association,
adaptation) share this cache and convention.

Training is heavy: run it under the shared lock, e.g.::

    flock /tmp/reidkit-heavy.lock .venv/bin/python benchmarks/source_models.py \\
        --cache /work/cache/source_models --recipes cuhk03_mobilenet_short --seeds 1 2
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
CUHK03 = (ROOT / "../shared/data/cuhk03_detected").resolve()
WEIGHTS = (ROOT / "../shared/weights/mobilenet_v2_imagenet_features.pth").resolve()
RECIPES = ("cuhk03_mobilenet_short", "cuhk03_mobilenet_12ep")
DEFAULT_CACHE = Path("/work/cache/source_models")


def source_folder(cache: Path, recipe: str, seed: int) -> Path:
    """``<cache>/<recipe>_seed<N>``: the train run folder of one source model."""
    return cache / f"{recipe}_seed{seed}"


def is_finished(folder: Path) -> bool:
    """Whether ``folder`` holds a train run that succeeded."""
    status = folder / "status.json"
    if not status.is_file():
        return False
    record = json.loads(status.read_text())
    return record.get("status") == "SUCCESS" and record.get("action") == "train"


def source_overrides(recipe: str, seed: int, folder: Path, work: Path) -> list[str]:
    """The keys set on top of the recipe: data, weights, seed, where the run goes."""
    return [
        f"results_dir={work}",
        f"train.results_dir={folder}",
        f"model.pretrained_model_path={WEIGHTS}",
        f"dataset.train_dataset_dir={CUHK03 / 'bounding_box_train'}",
        f"dataset.test_dataset_dir={CUHK03 / 'bounding_box_test'}",
        f"dataset.query_dataset_dir={CUHK03 / 'query'}",
        f"train.seed={seed}",
        "train.validation_interval=1000",  # never: the latest checkpoint is the model
        "dataset.num_workers=2",
    ]


def ensure_source_model(cache: Path, recipe: str, seed: int) -> Path:
    """The folder of a finished source model, training it first if the cache lacks it."""
    folder = source_folder(cache, recipe, seed)
    if is_finished(folder):
        return folder
    import reidkit
    from reidkit.actions.train import run_training

    work = cache / ".work" / folder.name
    spec = reidkit.load_spec(
        ROOT / "examples" / f"{recipe}.yaml", source_overrides(recipe, seed, folder, work)
    )
    print(f"training source model {folder.name} ({spec.train.num_epochs} epochs)", flush=True)
    run_training(spec)
    return folder


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE)
    parser.add_argument("--recipes", nargs="+", default=list(RECIPES), choices=RECIPES)
    parser.add_argument("--seeds", nargs="+", type=int, default=[1, 2])
    args = parser.parse_args()
    for needed in (CUHK03, WEIGHTS):
        if not needed.exists():
            sys.exit(f"missing {needed} (the shared data sits beside the repository)")
    for recipe in args.recipes:
        for seed in args.seeds:
            print(ensure_source_model(args.cache, recipe, seed), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Does evaluate's "unknown person" threshold hold for people it was not calibrated on?

    python benchmarks/bench_calibration.py --checkpoint PATH [--splits 10] [--no-record]

The gallery issue's calibration check. ``PATH`` is a model trained on CUHK03's train split
(``bench_cuhk03.py`` leaves one under its ``--workdir``). Its query and gallery embeddings of
CUHK03's 100 test identities are split by identity into two random halves: the threshold is
calibrated on one half exactly as ``evaluate`` does (``RocCurve.threshold_at`` on the plain
distances of the Market-protocol pairs) and the false-match rate it gives is measured on the
other half, at targets 1e-2 and 1e-3, over ``--splits`` random splits. Goal: the measured rate
within a factor of 2 of the target.
"""

from __future__ import annotations

import argparse
import statistics
import sys
from datetime import date
from pathlib import Path

import torch

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_cuhk03 import DATA, RECIPE  # noqa: E402
from common import append_rows, machine  # noqa: E402

TARGETS = (1e-2, 1e-3)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, required=True)
    parser.add_argument("--splits", type=int, default=10)
    parser.add_argument("--no-record", action="store_true")
    args = parser.parse_args()
    host = machine()

    import reidkit
    from reidkit.actions.embedding import embed_splits
    from reidkit.evaluation.metrics import pairwise_distance
    from reidkit.evaluation.roc import roc_from_distances

    torch.set_num_threads(2)
    spec = reidkit.load_spec(
        RECIPE,
        [
            "results_dir=/tmp/reidkit_bench_calibration",
            f"evaluate.checkpoint={args.checkpoint}",
            f"dataset.query_dataset_dir={DATA / 'query'}",
            f"dataset.test_dataset_dir={DATA / 'bounding_box_test'}",
            "evaluate.gpu_ids=[]",
        ],
    )
    data = embed_splits(spec, "evaluate", Path(spec.results_dir), outputs={})  # writes nothing
    q, g = data.query, data.gallery
    dist = pairwise_distance(q.features, g.features)
    ids = sorted(set(q.pids.tolist()))
    measured: dict[float, list[float]] = {target: [] for target in TARGETS}
    for split in range(args.splits):
        order = torch.randperm(len(ids), generator=torch.Generator().manual_seed(split)).tolist()
        half = len(ids) // 2
        halves = [{ids[i] for i in order[:half]}, {ids[i] for i in order[half:]}]
        rocs = []
        for members in halves:
            qi = torch.tensor([p in members for p in q.pids.tolist()])
            gi = torch.tensor([p in members for p in g.pids.tolist()])
            sub = dist[qi][:, gi]
            rocs.append(roc_from_distances(sub, q.pids[qi], g.pids[gi], q.camids[qi], g.camids[gi]))
        calibrate, held_out = rocs
        for target in TARGETS:
            threshold = calibrate.threshold_at(target)
            measured[target].append(held_out.false_match_rate(threshold))
    print(f"{args.checkpoint}: {len(ids)} test identities, {args.splits} random halvings")
    print("| target FMR | held-out FMR, mean (min, max) | ratio to target | within 2x |")
    print("|---|---|---|---|")
    rows = []
    for target, rates in measured.items():
        mean = statistics.mean(rates)
        ratio = mean / target
        within = all(target / 2 <= r <= target * 2 for r in rates)
        print(
            f"| {target:g} | {mean:.2e} ({min(rates):.2e}, {max(rates):.2e}) | {ratio:.2f} | "
            f"{'every split' if within else 'not every split'} |"
        )
        rows.append(
            {
                "date": date.today().isoformat(), "benchmark": "calibration", "machine": host,
                "command": "python benchmarks/bench_calibration.py --checkpoint <bench_cuhk03's>",
                "metric": f"held-out false-match rate at target {target:g} (mean of {args.splits})",
                "value": f"{mean:.3e}", "reference": f"{target:g}", "ratio": f"{ratio:.2f}",
            }
        )  # fmt: skip
    if not args.no_record:
        append_rows(rows)


if __name__ == "__main__":
    main()

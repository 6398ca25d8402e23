"""Time and measure reidkit's k-reciprocal re-ranking against torchreid's ``re_ranking``.

Run from the repository root (needs the ``bench`` extra, see benchmarks/README.md)::

    .venv/bin/python benchmarks/bench_rerank.py                  # Market-sized, both sides
    .venv/bin/python benchmarks/bench_rerank.py --gallery 50000 --skip-reference

On the seeded Market-sized split of ``bench_eval.py`` (k1=20, k2=6, lambda=0.3), each side
runs in its own process so that its peak memory (``ru_maxrss``) is its own:

* torchreid: the three distance matrices (q-g, q-q, g-g) built as torchreid's engine builds
  them (``F.normalize`` then ``compute_distance_matrix(..., "euclidean")``), then
  ``torchreid.reid.utils.rerank.re_ranking``;
* reidkit: :func:`reidkit.evaluation.re_rank` from the features.

Both processes first build the same features; the time excludes that, the memory figures are
the whole process (and, in brackets, the growth over the features alone). The parent checks
that the two re-ranked matrices agree (max |difference|, CMC and mAP) and appends the figures
to ``benchmarks/results.csv``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import numpy as np
import torch

from bench_eval import NUM_GALLERY, append_rows, machine, market_split
from reidkit.evaluation import evaluate_distances, pairwise_distance, re_rank

K1, K2, LAMBDA = 20, 6, 0.3


def peak_mb() -> float:
    """This process's peak resident memory so far (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_side(side: str, out: Path, num_gallery: int, distance: str) -> dict[str, float]:
    """Re-rank with one implementation in this process; save the result; return figures."""
    qf, gf, *_ = market_split(num_gallery=num_gallery)
    baseline = peak_mb()
    start = time.perf_counter()
    if side == "reidkit":
        distances = re_rank(qf, gf, K1, K2, LAMBDA).numpy()
        build = 0.0
    else:
        from torchreid.reid.metrics import compute_distance_matrix
        from torchreid.reid.utils.rerank import re_ranking

        if distance == "torchreid":
            qn, gn = torch.nn.functional.normalize(qf), torch.nn.functional.normalize(gf)
            q_g = compute_distance_matrix(qn, gn, "euclidean").numpy()
            q_q = compute_distance_matrix(qn, qn, "euclidean").numpy()
            g_g = compute_distance_matrix(gn, gn, "euclidean").numpy()
        else:
            pairs = ((qf, gf), (qf, qf), (gf, gf))
            q_g, q_q, g_g = (pairwise_distance(a, b).numpy() for a, b in pairs)
        build = time.perf_counter() - start
        distances = re_ranking(q_g, q_q, g_g, k1=K1, k2=K2, lambda_value=LAMBDA)
    seconds = time.perf_counter() - start
    np.save(out, distances)
    return {"seconds": seconds, "build": build, "peak_mb": peak_mb(), "baseline_mb": baseline}


def spawn(side: str, folder: Path, num_gallery: int, distance: str) -> dict[str, float]:
    """Run one side in a fresh interpreter and read its JSON figures."""
    out = folder / f"{side}.npy"
    command = [sys.executable, __file__, "--side", side, "--out", str(out), "--gallery"]
    done = subprocess.run(
        [*command, str(num_gallery), "--distance", distance],
        check=True,
        capture_output=True,
        text=True,
    )
    return json.loads(done.stdout.strip().splitlines()[-1])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--gallery", type=int, default=NUM_GALLERY, help="gallery images")
    parser.add_argument("--skip-reference", action="store_true", help="run reidkit only")
    parser.add_argument(
        "--distance",
        choices=["torchreid", "reidkit"],
        default="reidkit",
        help="how torchreid's three input matrices are built: its compute_distance_matrix "
        "(a^2 + b^2 - 2ab, as its engine does) or reidkit's pairwise_distance (2 - 2 cos, "
        "the very values re_rank uses); the same distance up to float rounding",
    )
    parser.add_argument("--side", choices=["reidkit", "torchreid"], help=argparse.SUPPRESS)
    parser.add_argument("--out", type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.side:
        print(json.dumps(run_side(args.side, args.out, args.gallery, args.distance)))
        return 0
    command = " ".join([".venv/bin/python benchmarks/bench_rerank.py", *sys.argv[1:]])
    host = machine()
    print(
        f"machine: {host}; gallery {args.gallery}, k1={K1} k2={K2} lambda={LAMBDA}, "
        f"torchreid's input distances from {args.distance}"
    )
    sides = ["reidkit"] if args.skip_reference else ["reidkit", "torchreid"]
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        figures = {side: spawn(side, folder, args.gallery, args.distance) for side in sides}
        for side, f in figures.items():
            extra = f" (distance build {f['build']:.1f} s)" if side == "torchreid" else ""
            print(
                f"{side}: {f['seconds']:.1f} s{extra}; peak memory {f['peak_mb']:.0f} MB "
                f"(+{f['peak_mb'] - f['baseline_mb']:.0f} MB over the features)"
            )
        agree = True
        if not args.skip_reference:
            ours = np.load(folder / "reidkit.npy")
            reference = np.load(folder / "torchreid.npy")
            gap = np.abs(ours - reference)
            _, _, *labels = market_split(num_gallery=args.gallery)
            a, b = evaluate_distances(ours, *labels), evaluate_distances(reference, *labels)
            cmc_gap, map_gap = float(np.abs(a.cmc - b.cmc).max()), abs(a.mAP - b.mAP)
            # From identical input distances every entry must agree; from torchreid's own
            # (differently rounded) distances a few near-tied neighbours swap, so only the
            # ranking metrics are held to it.
            agree = cmc_gap < 1e-6 and map_gap < 1e-6
            if args.distance == "reidkit":
                agree &= float(gap.max()) < 1e-4
            print(
                f"agreement: max |distance diff| {gap.max():.2e} "
                f"({int((gap > 1e-4).sum())} of {gap.size} entries above 1e-4), "
                f"|CMC diff| {cmc_gap:.2e}, |mAP diff| {map_gap:.2e}"
            )
            print(f"re-ranked metrics: {a.as_percent()}")
    mine = figures["reidkit"]
    rows = []
    for metric, key in (("seconds", "seconds"), ("peak memory MB", "peak_mb")):
        reference = figures["torchreid"][key] if "torchreid" in figures else None
        rows.append(
            {
                "date": date.today().isoformat(),
                "benchmark": "rerank",
                "machine": host,
                "command": command,
                "metric": f"re_rank {metric}, gallery {args.gallery}, k1={K1} k2={K2} "
                f"(reference: torchreid re_ranking with its distance build by {args.distance}, "
                "each in its own process; ratio = reference / value)",
                "value": f"{mine[key]:.2f}",
                "reference": "" if reference is None else f"{reference:.2f}",
                "ratio": "" if reference is None else f"{reference / mine[key]:.2f}",
            }
        )
        if reference is not None:
            print(f"{metric}: torchreid / reidkit = {reference / mine[key]:.1f}x")
    append_rows(rows)
    print(f"load average at end: {os.getloadavg()[0]:.1f}; rows appended")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())

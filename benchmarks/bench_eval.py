"""Time reidkit's ranking metrics against torchreid's Cython ``evaluate_rank`` on a Market-sized
split.

Run from the repository root (needs the ``bench`` extra, see benchmarks/README.md)::

    .venv/bin/python benchmarks/bench_eval.py

Builds a seeded synthetic split the size of Market-1501's test set (3,368 queries, 15,913
gallery images of which 2,798 distractors, 750 identities, 6 cameras, 2048-d features), then
times, interleaved: torchreid's ``evaluate_rank`` (Cython) against
:func:`reidkit.evaluation.evaluate_distances` on the same float32 distance matrix, and
torchreid's pipeline from features (``compute_distance_matrix`` + ``evaluate_rank``) against
:func:`evaluate_features`. Checks that CMC and mAP agree, prints medians and speed-ups and
appends them to ``benchmarks/results.csv``.
"""

from __future__ import annotations

import argparse
import glob
import importlib.util
import os
import statistics
import sys
import time
import warnings
from collections.abc import Callable
from datetime import date
from types import ModuleType

import numpy as np
import torch

from common import RESULTS, append_rows, machine
from reidkit.evaluation import RankingResult, evaluate_distances, evaluate_features
from reidkit.evaluation.metrics import pairwise_distance

# Market-1501's test set as torchreid loads it (junk images, id -1, removed).
NUM_QUERY, NUM_GALLERY, NUM_DISTRACTORS, NUM_IDS, NUM_CAMERAS, DIM = 3368, 15913, 2798, 750, 6, 2048
# Feature noise around each identity's centre: rank-1 ~98%, mAP ~70%, like a decent model.
NOISE = 3.25


def market_split(seed: int = 0, num_gallery: int = NUM_GALLERY) -> tuple[torch.Tensor, ...]:
    """qf, gf, q_pids, g_pids, q_camids, g_camids: a seeded Market-sized synthetic split.

    Each identity has a random centre; images are centre + Gaussian noise; distractors (id 0)
    each get a centre of their own. ``num_gallery`` grows the gallery with more images of the
    same identities (for scale tests).
    """
    gen = torch.Generator().manual_seed(seed)
    centers = torch.randn(NUM_IDS + 1, DIM, generator=gen)
    q_pids = torch.randint(1, NUM_IDS + 1, (NUM_QUERY,), generator=gen)
    distractors = torch.zeros(NUM_DISTRACTORS, dtype=torch.int64)
    identities = torch.randint(1, NUM_IDS + 1, (num_gallery - NUM_DISTRACTORS,), generator=gen)
    g_pids = torch.cat([distractors, identities])
    q_camids = torch.randint(1, NUM_CAMERAS + 1, (NUM_QUERY,), generator=gen)
    g_camids = torch.randint(1, NUM_CAMERAS + 1, (num_gallery,), generator=gen)
    qf = centers[q_pids] + NOISE * torch.randn(NUM_QUERY, DIM, generator=gen)
    gf = centers[g_pids] + NOISE * torch.randn(num_gallery, DIM, generator=gen)
    gf[:NUM_DISTRACTORS] += torch.randn(NUM_DISTRACTORS, DIM, generator=gen) - centers[0]
    return qf, gf, q_pids, g_pids, q_camids, g_camids


def torchreid_rank() -> tuple[ModuleType, str]:
    """torchreid's rank module with its Cython evaluator active, and where that came from.

    torchreid 0.2.5 on PyPI ships without ``rank_cy.pyx``, so its ``evaluate_rank`` silently
    falls back to pure Python (20-35x slower). If the extension was not built into torchreid,
    the one compiled from the same source in the ``pyppbox-torchreid`` wheel is loaded by path
    (without importing that package) and plugged into torchreid's own dispatch.
    """
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from torchreid.reid.metrics import rank
    if rank.IS_CYTHON_AVAI:
        return rank, f"Cython, {rank.evaluate_cy.__module__} built into torchreid"
    spec = importlib.util.find_spec("pyppbox_torchreid")
    if spec is None or not spec.submodule_search_locations:
        sys.exit(
            "torchreid's Cython evaluator is not available; install the bench extra "
            "(benchmarks/README.md) or build rank_cy into torchreid"
        )
    pattern = f"{spec.submodule_search_locations[0]}/metrics/rank_cylib/rank_cy*.so"
    library = glob.glob(pattern)[0]
    loader = importlib.util.spec_from_file_location("rank_cy", library)
    rank_cy = importlib.util.module_from_spec(loader)
    loader.loader.exec_module(rank_cy)
    rank.evaluate_cy, rank.IS_CYTHON_AVAI = rank_cy.evaluate_cy, True
    return rank, f"Cython, {library}"


def timed(fn: Callable[[], object]) -> tuple[float, object]:
    start = time.perf_counter()
    out = fn()
    return time.perf_counter() - start, out


def torchreid_from_features(
    rank: ModuleType, qf: torch.Tensor, gf: torch.Tensor, labels: list[np.ndarray]
) -> tuple[np.ndarray, float]:
    """torchreid's own pipeline from features: normalise, ``compute_distance_matrix``
    (euclidean), to numpy, ``evaluate_rank``."""
    from torchreid.reid.metrics import compute_distance_matrix

    qn, gn = torch.nn.functional.normalize(qf), torch.nn.functional.normalize(gf)
    distmat = compute_distance_matrix(qn, gn, "euclidean").numpy()
    return rank.evaluate_rank(distmat, *labels, max_rank=50)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--repeats", type=int, default=5, help="interleaved timed runs per side")
    parser.add_argument(
        "--threads", default=f"1,{os.cpu_count()}", help="torch thread counts for reidkit"
    )
    args = parser.parse_args()
    command = " ".join([".venv/bin/python benchmarks/bench_eval.py", *sys.argv[1:]])
    host = machine()
    rank, evaluator = torchreid_rank()
    print(f"machine: {host}\ntorchreid evaluate_rank: {evaluator}")
    qf, gf, *labels = market_split()
    distmat = pairwise_distance(qf, gf).numpy()
    np_labels = [x.numpy() for x in labels]
    thread_counts = [int(t) for t in args.threads.split(",")]
    default_threads = torch.get_num_threads()
    # (what, threads) -> seconds of each run; torchreid rows use the default thread count.
    times: dict[tuple[str, int], list[float]] = {}
    results: dict[str, RankingResult] = {}
    expected: dict[str, tuple[np.ndarray, float]] = {}
    for _ in range(args.repeats):
        torch.set_num_threads(default_threads)
        for what, fn in (
            ("distances", lambda: rank.evaluate_rank(distmat, *np_labels, max_rank=50)),
            ("features", lambda: torchreid_from_features(rank, qf, gf, np_labels)),
        ):
            seconds, expected[what] = timed(fn)
            times.setdefault((f"torchreid {what}", default_threads), []).append(seconds)
        for threads in thread_counts:
            torch.set_num_threads(threads)
            for what, fn in (
                ("distances", lambda: evaluate_distances(distmat, *labels, max_rank=50)),
                ("features", lambda: evaluate_features(qf, gf, *labels, max_rank=50)),
            ):
                seconds, results[what] = timed(fn)
                times.setdefault((what, threads), []).append(seconds)
    print(f"metrics: {results['distances'].as_percent()}")
    agree = True
    for what, (cmc, mAP) in expected.items():
        cmc_gap = float(np.abs(results[what].cmc - cmc).max())
        map_gap = abs(results[what].mAP - float(mAP))
        agree &= cmc_gap < 1e-5 and map_gap < 1e-5
        print(f"vs torchreid from {what}: max |CMC diff| {cmc_gap:.2e}, |mAP diff| {map_gap:.2e}")
    median = {key: statistics.median(values) for key, values in times.items()}
    references = {
        "distances": median[("torchreid distances", default_threads)],
        "features": median[("torchreid features", default_threads)],
    }
    print(
        f"torchreid evaluate_rank from distances: median {references['distances']:.3f} s; "
        f"from features (compute_distance_matrix + evaluate_rank, {default_threads} threads): "
        f"{references['features']:.3f} s"
    )
    rows = []
    for (what, threads), seconds in median.items():
        if what.startswith("torchreid"):
            continue
        reference = references[what]
        print(
            f"reidkit evaluate_{what}, {threads} thread(s): median {seconds:.3f} s "
            f"(min {min(times[what, threads]):.3f}) -> {reference / seconds:.1f}x torchreid"
        )
        source = "distances" if what == "distances" else "features, distances included"
        rows.append(
            {
                "date": date.today().isoformat(),
                "benchmark": "eval",
                "machine": host,
                "command": command,
                "metric": f"evaluate_{what} seconds from {source}, {threads} thread(s), median of "
                f"{len(times[what, threads])} (reference: torchreid {evaluator.split(',')[0]} "
                f"evaluate_rank from {source}; ratio = reference / value)",
                "value": f"{seconds:.4f}",
                "reference": f"{reference:.4f}",
                "ratio": f"{reference / seconds:.2f}",
            }
        )
    append_rows(rows)
    print(f"load average at end: {os.getloadavg()[0]:.1f}; rows appended to {RESULTS}")
    return 0 if agree else 1


if __name__ == "__main__":
    sys.exit(main())

"""benchmarks/bench_gallery.py --small runs end to end and its exactness checks hold."""

from __future__ import annotations

import sys
from pathlib import Path

import faiss
import torch

BENCHMARKS = Path(__file__).resolve().parents[2] / "benchmarks"


def test_small_benchmark_runs_and_agrees_with_references(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(BENCHMARKS))
    sys.modules.pop("bench_gallery", None)
    import bench_gallery

    threads = torch.get_num_threads()
    try:
        rows = {metric: value for metric, value, _, _ in bench_gallery.main(
            ["--small", "--no-record", "--workdir", str(tmp_path)]
        )}  # fmt: skip
    finally:  # the benchmark pins torch and FAISS to one thread
        torch.set_num_threads(threads)
        faiss.omp_set_num_threads(threads)
    assert rows["exact top-10 lists equal to FAISS IndexFlatIP's (fraction)"] == 1.0
    assert rows["filtered results identical to exact filtering (fraction)"] == 1.0
    recall = next(v for m, v in rows.items() if m.startswith("ANN recall@10"))
    assert recall >= 0.95
    assert list(tmp_path.iterdir()) == []  # the temporary gallery is removed

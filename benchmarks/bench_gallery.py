"""Site gallery: search, filter, reopen and add figures beside FAISS in the same process.

Run from the repository root (under the shared lock on the shared machine)::

    .venv/bin/python benchmarks/bench_gallery.py            # 1,000,000 x 256, Milvus Lite 100k
    .venv/bin/python benchmarks/bench_gallery.py --small    # 20,000 x 64 in seconds (a test)

A synthetic site: clustered identities (10 crops per person around a random centre), 8
cameras, 30 days. Figures, each with its reference measured in this process:

* add/s: embeddings + metadata stored durably by the embedded gallery (embedding excluded),
  and the IVF index build time;
* exact top-10, batches of 256 queries: queries/s of ``search(exact=True)`` against FAISS
  ``IndexFlatIP`` on the same normalised matrix (ratio = gallery / FAISS);
* approximate top-10: recall@10 against exact (FAISS flat); p50/p99 of single queries through
  the gallery (``Gallery.search``: validation, normalisation, identity check, the IVF search,
  metadata, decisions, audit record) against the gallery's own IVF index searched by FAISS
  alone, the two timed alternately on each query so that both see the same machine load;
* filtered (2 of 8 cameras, a 1-day window): p50 single query, and whether every result list
  equals the exact filtered one (FAISS flat with an ID selector over the same rows);
* reopen: seconds from ``open_gallery`` to a first answered query;
* Milvus Lite with a 100k subset: add/s, batched q/s, single and filtered p50.

Both sides use the same number of threads (``--threads``, default 1: the machine is shared).
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import time
from datetime import date
from pathlib import Path

import faiss
import numpy as np
import torch

from common import append_rows, machine
from reidkit.gallery.factory import open_gallery
from reidkit.gallery.front import unit_rows
from reidkit.gallery.store import CropFilter, CropMeta

DAY = 86_400.0
ORIGIN = 1_767_225_600.0  # 2026-01-01T00:00:00Z
CARD = {"backbone": "synthetic", "embedding_dim": 256, "match_threshold": 0.8}


def crops_of(centres: np.ndarray, person: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Embeddings of new crops of these people: their centre plus per-crop noise."""
    vectors = centres[person]
    vectors += 0.6 * rng.standard_normal(vectors.shape, dtype=np.float32)
    return vectors


def synthetic_site(
    n: int, dim: int, seed: int = 0
) -> tuple[np.ndarray, list[CropMeta], np.ndarray]:
    """``n`` crops of ``n // 10`` people in ``n // 500`` looks, 8 cameras, 30 days; also the
    people's centres."""
    rng = np.random.default_rng(seed)
    people = max(1, n // 10)
    # People who look alike (clothing, build) share a look; their centres scatter around it,
    # so the neighbours after a person's own crops are look-alikes, as with real embeddings.
    looks = rng.standard_normal((max(1, people // 50), dim), dtype=np.float32)
    centres = looks[rng.integers(0, len(looks), people)]
    centres += 0.8 * rng.standard_normal((people, dim), dtype=np.float32)
    person = rng.integers(0, people, n)
    vectors = crops_of(centres, person, rng)
    cameras = rng.integers(0, 8, n)
    times = ORIGIN + rng.uniform(0, 30 * DAY, n)
    metas = [
        CropMeta(f"site/{p:07d}_c{c}_{i:08d}.jpg", int(c), float(t), f"t{p}")
        for i, (p, c, t) in enumerate(
            zip(person.tolist(), cameras.tolist(), times.tolist(), strict=True)
        )
    ]
    return vectors, metas, centres


def percentile_ms(samples: list[float], q: float) -> float:
    return float(np.percentile(np.array(samples) * 1000.0, q))


def time_add(gallery, vectors: np.ndarray, metas: list[CropMeta], batch: int) -> float:
    start = time.perf_counter()
    for i in range(0, len(metas), batch):
        gallery.add(vectors[i : i + batch], metas[i : i + batch])
    return len(metas) / (time.perf_counter() - start)


def batched_qps(search, queries: np.ndarray, rounds: int) -> float:
    """Best of ``rounds`` passes over all the query batches (the machine is shared)."""
    best = np.inf
    for _ in range(rounds):
        start = time.perf_counter()
        for i in range(0, len(queries), 256):
            search(queries[i : i + 256])
        best = min(best, time.perf_counter() - start)
    return len(queries) / best


def single_latencies(search, queries: np.ndarray) -> list[float]:
    times = []
    for query in queries:
        start = time.perf_counter()
        search(query[None])
        times.append(time.perf_counter() - start)
    return times


def paired_latencies(ours, reference, queries: np.ndarray) -> tuple[list[float], list[float]]:
    """Single-query latencies of two searches, timed alternately on each query (the one that
    goes first alternates too), so that both sides see the same load of a shared machine."""
    mine, theirs = [], []
    for i, query in enumerate(queries):
        row = query[None]
        for side in (0, 1) if i % 2 == 0 else (1, 0):
            start = time.perf_counter()
            (ours if side == 0 else reference)(row)
            (mine if side == 0 else theirs).append(time.perf_counter() - start)
    return mine, theirs


class Rows(list):
    """The figures so far, each printed and (unless ``record`` is None) appended to
    results.csv as soon as it is measured, so a run cut short keeps what it measured."""

    def __init__(self, record: dict[str, str] | None) -> None:
        super().__init__()
        self.record = record

    def append(self, row: tuple[str, float, float | str, str]) -> None:
        metric, value, reference, ratio = row
        ref = f"{reference:.4g}" if isinstance(reference, float) else reference
        extra = f"  (reference {ref}, ratio {ratio})" if ref else ""
        print(f"{time.strftime('%H:%M:%S')} {metric}: {value:.4g}{extra}", flush=True)
        if self.record is not None:
            append_rows(
                [
                    {
                        **self.record,
                        "metric": metric,
                        "value": f"{value:.6g}",
                        "reference": f"{reference:.6g}" if isinstance(reference, float) else "",
                        "ratio": ratio,
                    }
                ]
            )
        super().append(row)


def onnx_crops_per_second(work: Path, crops: int, threads: int) -> tuple[float, str]:
    """End to end: decode, normalise, embed with an exported ONNX model on CPU, store.

    The model is an untrained ResNet-50 at 256x128 (the TAO spec's defaults), exported by
    ``reidkit export``: its speed, not its accuracy, is measured. The crops are synthetic.
    """
    import onnxruntime as ort

    from reidkit.actions.export import export
    from reidkit.config.loading import apply_overrides, load_spec
    from reidkit.data import synthesize
    from reidkit.engine.module import model_settings
    from reidkit.export.runtime import OnnxEmbedder
    from reidkit.gallery.ingest import add_crops, crops_in_folder
    from reidkit.models import ReidModel
    from reidkit.models.card import MODEL_PREFIX, attach_card
    from reidkit.models.checkpoint_file import save_checkpoint

    spec = load_spec(None, [f"results_dir={work / 'results'}", "model.pretrain_choice=self"])
    num_classes = spec.dataset.num_classes
    model = ReidModel(
        spec.model.backbone, num_classes, **model_settings(spec.model, spec.train.optim)
    )
    checkpoint = {"state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}}
    attach_card(checkpoint, model.card(spec.dataset.pixel_mean, spec.dataset.pixel_std))
    save_checkpoint(checkpoint, work / "model.pth", None)
    onnx_file = export(
        apply_overrides(spec, {"export.checkpoint": str(work / "model.pth")})
    ).onnx_file
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads
    embedder = OnnxEmbedder(onnx_file, providers=["CPUExecutionProvider"], session_options=options)
    card = embedder.card.to_dict()
    per_id = 8
    synthesize(work / "site", ids=max(2, crops // per_id), cameras=4, images_per_id=per_id,
               height=256, width=128, seed=0)  # fmt: skip
    folders = [p for p in (work / "site").iterdir() if p.is_dir()]
    metas = [m for folder in folders for m in crops_in_folder(folder, ORIGIN)][:crops]
    with open_gallery(work / "onnx-gallery", card, create=True) as gallery:
        start = time.perf_counter()
        add_crops(gallery, embedder, card, metas, batch_size=32, progress=False)
        rate = len(metas) / (time.perf_counter() - start)
    return rate, f"{spec.model.backbone} {card['input_height']}x{card['input_width']}"


def run(args: argparse.Namespace, rows: Rows) -> list[tuple[str, float, float | str, str]]:
    """Measures everything into ``rows``: (metric, value, reference, ratio)."""
    n, dim = (20_000, 64) if args.small else (args.size, 256)
    milvus_n = 5_000 if args.small else args.milvus_size
    card = {**CARD, "embedding_dim": dim}
    vectors, metas, centres = synthetic_site(n, dim)
    unit = unit_rows(vectors, "vectors")
    rng = np.random.default_rng(1)
    # Queries are new crops of people the site has seen.
    people = rng.integers(0, len(centres), args.queries)
    queries = unit_rows(crops_of(centres, people, rng), "queries")
    folder = Path(tempfile.mkdtemp(prefix="bench-gallery-", dir=args.workdir))
    try:
        # ---- add (no index maintenance while adding), then one index build.
        gallery = open_gallery(folder / "g", card, create=True, ann_min_size=None)
        add_rate = time_add(gallery, vectors, metas, batch=min(n, 100_000))
        rows.append((f"add embeddings/s ({n:,} x {dim}, batches of 100k)", add_rate, "", ""))
        gallery.backend.ann_min_size = min(n, 200_000)
        start = time.perf_counter()
        gallery.optimise()
        rows.append(("IVF index build s", time.perf_counter() - start, "", ""))
        kind = gallery.stats().index_kind
        gallery.close()
        del vectors
        # ---- reopen: open + first answered query.
        start = time.perf_counter()
        gallery = open_gallery(folder / "g", card)
        gallery.search(queries[:1], k=10)
        rows.append(
            (f"reopen s ({n:,} entries, to first answer)", time.perf_counter() - start, "", "")
        )
        # ---- exact batched vs FAISS IndexFlatIP (FAISS once: it is the slow side here).
        flat = faiss.IndexFlatIP(dim)
        flat.add(unit)
        batch_q = queries[: args.batched]
        ours = batched_qps(lambda q: gallery.search(q, 10, exact=True), batch_q, args.rounds)
        ref = batched_qps(lambda q: flat.search(q, 10), batch_q, 1)
        rows.append(
            (
                "exact top-10 q/s, batches of 256 (ref: FAISS IndexFlatIP)",
                ours,
                ref,
                f"{ours / ref:.2f}",
            )
        )
        exact = [
            [h.crop_id for h in row]
            for i in range(0, len(queries), 256)
            for row in gallery.search(queries[i : i + 256], 10, exact=True)
        ]
        _, faiss_ids = flat.search(batch_q, 10)
        agree = np.mean([e == f.tolist() for e, f in zip(exact, faiss_ids, strict=False)])
        rows.append(("exact top-10 lists equal to FAISS IndexFlatIP's (fraction)", agree, "", ""))
        flat.reset()  # frees its copy of the matrix
        # ---- approximate: recall@10 against exact, single-query latency.
        approx = [gallery.search(q[None], 10)[0] for q in queries]
        recall = np.mean(
            [len({h.crop_id for h in a} & set(e)) / 10 for a, e in zip(approx, exact, strict=True)]
        )
        ivf = gallery.backend.ann_index  # the gallery's own index, searched by FAISS directly
        lat, ref_lat = paired_latencies(
            lambda q: gallery.search(q, 10), lambda q: ivf.search(q, 10), queries
        )
        rows.append((f"ANN recall@10 vs exact ({kind})", float(recall), "", ""))
        for q in (50, 99):
            ours, ref = percentile_ms(lat, q), percentile_ms(ref_lat, q)
            rows.append(
                (
                    f"ANN single query p{q} ms through the gallery (ref: its IVF index searched "
                    "by FAISS alone)",
                    ours,
                    ref,
                    f"{ours / ref:.3f}",
                )
            )
        # ---- the recall / latency trade-off of nprobe on the same index (FAISS alone).
        default_nprobe = ivf.nprobe
        for nprobe in (8, 16, 32, 64):
            ivf.nprobe = min(nprobe, ivf.nlist)
            _, found = ivf.search(queries, 10)
            sweep = np.mean(
                [len(set(f) & set(e)) / 10 for f, e in zip(found.tolist(), exact, strict=True)]
            )
            sweep_lat = single_latencies(lambda q: ivf.search(q, 10), queries[:100])
            rows.append((f"IVF nprobe={ivf.nprobe} recall@10 vs exact", float(sweep), "", ""))
            rows.append((f"IVF nprobe={ivf.nprobe} single query p50 ms (FAISS alone)",
                         percentile_ms(sweep_lat, 50), "", ""))  # fmt: skip
        ivf.nprobe = default_nprobe
        # ---- filtered: 2 of 8 cameras, a 1-day window; identical to a NumPy brute force.
        meta_cameras = np.array([m.camera for m in metas])
        meta_times = np.array([m.timestamp for m in metas])
        filters = []
        for _ in range(len(queries)):
            day = ORIGIN + DAY * float(rng.integers(0, 30))
            cams = sorted(rng.choice(8, 2, replace=False).tolist())
            filters.append(CropFilter(cameras=tuple(cams), start=day, end=day + DAY))
        lat, identical = [], 0
        for query, where in zip(queries, filters, strict=True):
            start = time.perf_counter()
            hits = gallery.search(query[None], 10, where=where)[0]
            lat.append(time.perf_counter() - start)
            mask = np.isin(meta_cameras, where.cameras)
            mask &= (meta_times >= where.start) & (meta_times <= where.end)
            allowed = np.flatnonzero(mask)
            dist = 2.0 - 2.0 * (unit[allowed].astype(np.float64) @ query.astype(np.float64))
            reference = allowed[np.argsort(dist, kind="stable")[:10]].tolist()
            identical += [h.crop_id for h in hits] == reference
        rows.append(("filtered (2/8 cameras, 1 day) p50 ms", percentile_ms(lat, 50), "", ""))
        rows.append(
            (
                "filtered results identical to exact filtering (fraction)",
                identical / len(queries),
                "",
                "",
            )
        )
        gallery.close()
        # ---- Milvus Lite on a subset.
        if milvus_n:
            sub_vectors, sub_metas = unit[:milvus_n], metas[:milvus_n]
            milvus = open_gallery(str(folder / "milvus.db"), card, create=True)
            rate = time_add(milvus, sub_vectors, sub_metas, batch=10_000)
            rows.append((f"Milvus Lite add embeddings/s ({milvus_n:,})", rate, "", ""))
            mq = queries[: min(256, len(queries))]
            sub_flat = faiss.IndexFlatIP(dim)
            sub_flat.add(sub_vectors)
            qps = batched_qps(lambda q: milvus.search(q, 10), mq, 1)
            ref = batched_qps(lambda q: sub_flat.search(q, 10), mq, 1)
            rows.append(
                (
                    f"Milvus Lite top-10 q/s, batch 256, {milvus_n:,} (ref: FAISS flat)",
                    qps,
                    ref,
                    f"{qps / ref:.3f}",
                )
            )
            few = queries[:5]  # Milvus Lite takes seconds per single query
            lat = single_latencies(lambda q: milvus.search(q, 10), few)
            rows.append(
                (f"Milvus Lite single query p50 ms ({milvus_n:,})", percentile_ms(lat, 50), "", "")
            )
            lat = [0.0] * len(few)
            for i, (query, where) in enumerate(zip(few, filters, strict=False)):
                start = time.perf_counter()
                milvus.search(query[None], 10, where=where)
                lat[i] = time.perf_counter() - start
            p50 = percentile_ms(lat, 50)
            rows.append((f"Milvus Lite filtered p50 ms ({milvus_n:,})", p50, "", ""))
            milvus.close()
        if args.onnx_crops:
            rate, model = onnx_crops_per_second(folder / "onnx", args.onnx_crops, args.threads)
            rows.append((f"add end to end crops/s, ONNX {model} on CPU, batch 32", rate, "", ""))
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    return rows


def main(argv: list[str] | None = None) -> list[tuple[str, float, float | str, str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--small", action="store_true", help="20k x 64: a quick functional run")
    parser.add_argument("--size", type=int, default=1_000_000)
    parser.add_argument("--milvus-size", type=int, default=100_000, help="0 skips Milvus")
    parser.add_argument("--onnx-crops", type=int, default=256, help="0 skips the ONNX run")
    parser.add_argument("--queries", type=int, default=500, help="single queries timed")
    parser.add_argument("--batched", type=int, default=256, help="queries in the batched test")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--workdir", default=None, help="where the temporary gallery goes")
    parser.add_argument("--no-record", action="store_true", help="do not append results.csv")
    args = parser.parse_args(argv)
    if args.small:
        args.queries, args.batched, args.rounds, args.onnx_crops = 200, 256, 1, 0
    torch.set_num_threads(args.threads)
    faiss.omp_set_num_threads(args.threads)
    where = machine()
    print(where, flush=True)
    command = "python benchmarks/bench_gallery.py " + " ".join(argv or sys.argv[1:])
    record = {
        "date": date.today().isoformat(),
        "benchmark": "gallery",
        "machine": where,
        "command": command.strip(),
    }
    return run(args, Rows(None if args.no_record else record))


if __name__ == "__main__":
    main()

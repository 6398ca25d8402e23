"""``reidkit inference``: embeddings of every query and gallery image, and each query's matches.

Three files, so both TAO tooling and large galleries are served:

* ``inference.output_file`` (JSON): TAO's list of ``{"img_path", "embedding"}`` for every image
  (TAO keeps only the last batch; here every image is written).
* ``<stem>_matches.json``: per query, the top ``re_ranking.max_rank`` gallery images with their
  distance (squared Euclidean of L2-normalised embeddings), id and camera.
* ``<stem>_embeddings.npy`` + ``<stem>_index.csv``: the same embeddings as one float32 matrix
  and a row index, compact enough for galleries of hundreds of thousands of images.
"""

from __future__ import annotations

import csv
import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO

import numpy as np
import torch

from reidkit.actions.embedding import EmbeddedSplits, embed_splits
from reidkit.actions.lifecycle import ActionRun, run_action
from reidkit.actions.run_record import InferenceOutcome
from reidkit.config.spec import ExperimentSpec
from reidkit.evaluation.metrics import pairwise_distance
from reidkit.outputs import atomic_open, path_text, write_json

_QUERY_CHUNK = 1024


@dataclass
class InferenceResult:
    output_file: Path
    matches_file: Path
    embeddings_file: Path
    index_file: Path
    num_images: int


def infer(spec: ExperimentSpec) -> InferenceResult:
    """Embed ``inference.query_dataset`` and ``inference.test_dataset`` and match them."""
    with run_action(spec, "inference") as run:
        return _infer(spec, run)


def _infer(spec: ExperimentSpec, run: ActionRun) -> InferenceResult:
    folder, settings = run.folder, spec.inference
    output = Path(settings.output_file or folder / "inference.json")
    stem = output.with_suffix("")
    matches = stem.with_name(stem.name + "_matches.json")
    embeddings = stem.with_name(stem.name + "_embeddings.npy")
    index = stem.with_name(stem.name + "_index.csv")
    outputs = {
        "inference.output_file": output,
        f"its matches file {matches.name}": matches,
        f"its embeddings file {embeddings.name}": embeddings,
        f"its index file {index.name}": index,
    }
    data = embed_splits(spec, "inference", folder, outputs)
    paths = [path_text(r.path) for r in data.query_records + data.gallery_records]
    features = torch.cat([data.query.features, data.gallery.features]).float().cpu().numpy()

    _write_embeddings_json(output, paths, features)
    write_json(matches, _top_matches(data, spec.re_ranking.max_rank))
    with atomic_open(embeddings, "wb") as handle:
        np.save(handle, features)
    with atomic_open(index) as handle:
        _write_index_csv(handle, data)
    run.succeed(f"embedded {len(paths)} images", outcome=InferenceOutcome(num_images=len(paths)))
    return InferenceResult(output, matches, embeddings, index, len(paths))


def _write_embeddings_json(path: Path, paths: list[str], features: np.ndarray) -> None:
    # Streamed entry by entry: one json.dumps of the whole list would hold every float's text.
    with atomic_open(path) as handle:
        handle.write("[\n")
        for i, (image, vector) in enumerate(zip(paths, features, strict=True)):
            separator = ",\n" if i < len(paths) - 1 else "\n"
            handle.write(json.dumps({"img_path": image, "embedding": vector.tolist()}) + separator)
        handle.write("]\n")


def _top_matches(data: EmbeddedSplits, k: int) -> list[dict]:
    """Nearest gallery images per query, computed in chunks of queries to bound memory."""
    q, g = data.query, data.gallery
    k = min(k, len(data.gallery_records))
    results = []
    for start in range(0, len(data.query_records), _QUERY_CHUNK):
        distances = pairwise_distance(q.features[start : start + _QUERY_CHUNK], g.features)
        values, indices = torch.topk(distances, k, largest=False)
        for row, (dist_row, index_row) in enumerate(
            zip(values.tolist(), indices.tolist(), strict=True)
        ):
            record = data.query_records[start + row]
            results.append(
                {
                    "img_path": path_text(record.path), "pid": record.pid, "camid": record.camid,
                    "matches": [
                        {
                            "img_path": path_text(data.gallery_records[j].path),
                            "distance": round(d, 6),
                            "pid": data.gallery_records[j].pid,
                            "camid": data.gallery_records[j].camid,
                        }
                        for d, j in zip(dist_row, index_row, strict=True)
                    ],
                }
            )  # fmt: skip
    return results


def _write_index_csv(handle: IO[str], data: EmbeddedSplits) -> None:
    writer = csv.writer(handle)
    writer.writerow(["row", "split", "img_path", "pid", "camid"])
    rows = [("query", r) for r in data.query_records] + [
        ("gallery", r) for r in data.gallery_records
    ]
    for i, (split, record) in enumerate(rows):
        writer.writerow([i, split, path_text(record.path), record.pid, record.camid])

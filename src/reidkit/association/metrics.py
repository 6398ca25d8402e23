"""Scoring global identities against ground truth: multi-camera IDF1, HOTA, pairwise P / R.

* **Multi-camera IDF1 / IDP / IDR** as the AI City Challenge computes them: every camera's
  frames are laid end to end (camera ``k`` starts after the last frame of camera ``k - 1``),
  so one global matching of true to predicted identities covers all cameras; a detection
  matches a true box at IoU >= 0.5. :func:`motmetrics_identity` runs ``motmetrics`` on that
  concatenation; :func:`identity_scores` is an independent count (pairs per identity pair,
  then one Hungarian matching) that must agree with it.
* **HOTA / AssA / DetA** with ``reid-hota`` and global id alignment (one camera per video):
  true and predicted ids are matched once for the whole site, and a box is a hit only under
  the predicted id aligned to its true id, so here DetA, too, charges identity mistakes.
* **Pairwise precision / recall** over tracks, for crop-only sets without boxes or time:
  of the track pairs put together, how many are one person; of the pairs that are one person,
  how many were put together.

Frames are compared as ``frame - frame_base`` of their camera, never as written: a 1-based
tracker scored against 0-based ground truth would otherwise be one frame off everywhere.
"""

from __future__ import annotations

import contextlib
import io
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy.optimize import linear_sum_assignment

from reidkit.association.site import Site
from reidkit.association.tracks import Track

IOU_MATCH = 0.5


@dataclass
class Detections:
    """Detections of all cameras: camera index, frame index from 0, ``x y w h``, identity."""

    camera: np.ndarray
    frame: np.ndarray
    boxes: np.ndarray
    identity: np.ndarray

    def __len__(self) -> int:
        return len(self.camera)


def detections(tracks: Sequence[Track], identities: Sequence[object], site: Site) -> Detections:
    """Every detection of ``tracks`` labelled with its track's identity (any hashable label)."""
    names = site.names
    codes = {value: code for code, value in enumerate(dict.fromkeys(identities))}
    if not tracks:
        return Detections(*(np.empty(0, dtype=np.int64),) * 2, np.empty((0, 4)), np.empty(0, int))
    return Detections(
        camera=np.concatenate([np.full(len(t), names.index(t.camera)) for t in tracks]),
        frame=np.concatenate([t.frames - site.cameras[t.camera].frame_base for t in tracks]),
        boxes=np.concatenate([t.boxes for t in tracks]).astype(np.float64),
        identity=np.concatenate(
            [
                np.full(len(t), codes[i], dtype=np.int64)
                for t, i in zip(tracks, identities, strict=True)
            ]
        ),
    )


def _frame_offsets(*sets: Detections) -> np.ndarray:
    """Start of each camera on the concatenated time line (after the previous one's last frame)."""
    cameras = max(int(s.camera.max()) + 1 for s in sets if len(s))
    last = np.full(cameras, -1)
    for s in sets:
        np.maximum.at(last, s.camera, s.frame)
    return np.concatenate([[0], np.cumsum(last + 1)[:-1]])


def _iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """IoU of paired ``x y w h`` rows."""
    left = np.maximum(a[:, 0], b[:, 0])
    top = np.maximum(a[:, 1], b[:, 1])
    right = np.minimum(a[:, 0] + a[:, 2], b[:, 0] + b[:, 2])
    bottom = np.minimum(a[:, 1] + a[:, 3], b[:, 1] + b[:, 3])
    inter = np.clip(right - left, 0, None) * np.clip(bottom - top, 0, None)
    union = a[:, 2] * a[:, 3] + b[:, 2] * b[:, 3] - inter
    return inter / np.maximum(union, 1e-12)


def _matched_pairs(truth: Detections, predicted: Detections) -> tuple[np.ndarray, np.ndarray]:
    """(true id, predicted id) of every same-moment pair of boxes at IoU >= 0.5."""
    offsets = _frame_offsets(truth, predicted)
    t_key = offsets[truth.camera] + truth.frame
    p_key = offsets[predicted.camera] + predicted.frame
    t_order, p_order = np.argsort(t_key, kind="stable"), np.argsort(p_key, kind="stable")
    t_sorted, p_sorted = t_key[t_order], p_key[p_order]
    lo = np.searchsorted(p_sorted, t_sorted, side="left")
    hi = np.searchsorted(p_sorted, t_sorted, side="right")
    counts = hi - lo
    t_rows = np.repeat(t_order, counts)
    p_rows = p_order[
        np.repeat(lo, counts)
        + np.arange(counts.sum())
        - np.repeat(np.cumsum(counts) - counts, counts)
    ]
    keep = _iou(truth.boxes[t_rows], predicted.boxes[p_rows]) >= IOU_MATCH
    return truth.identity[t_rows[keep]], predicted.identity[p_rows[keep]]


def identity_scores(truth: Detections, predicted: Detections) -> dict[str, float]:
    """IDF1 / IDP / IDR in percent (one global matching over the concatenated cameras)."""
    true_ids, pred_ids = _matched_pairs(truth, predicted)
    idtp = 0.0
    if len(true_ids):
        rows, row_of = np.unique(true_ids, return_inverse=True)
        cols, col_of = np.unique(pred_ids, return_inverse=True)
        overlap = np.zeros((len(rows), len(cols)))
        np.add.at(overlap, (row_of, col_of), 1)
        r, c = linear_sum_assignment(-overlap)
        idtp = float(overlap[r, c].sum())
    return _percent(idtp, len(truth), len(predicted))


def _percent(idtp: float, n_true: int, n_pred: int) -> dict[str, float]:
    return {
        "IDF1": round(100.0 * 2 * idtp / max(n_true + n_pred, 1), 2),
        "IDP": round(100.0 * idtp / max(n_pred, 1), 2),
        "IDR": round(100.0 * idtp / max(n_true, 1), 2),
    }


def motmetrics_identity(truth: Detections, predicted: Detections) -> dict[str, float]:
    """IDF1 / IDP / IDR in percent computed by ``motmetrics`` on the concatenated cameras."""
    import motmetrics as mm

    offsets = _frame_offsets(truth, predicted)
    t_key = offsets[truth.camera] + truth.frame
    p_key = offsets[predicted.camera] + predicted.frame
    accumulator = mm.MOTAccumulator(auto_id=False)
    t_groups = _groups(t_key)
    p_groups = _groups(p_key)
    for key in sorted(set(t_groups) | set(p_groups)):
        t_rows = t_groups.get(key, np.empty(0, dtype=np.int64))
        p_rows = p_groups.get(key, np.empty(0, dtype=np.int64))
        distance = _iou_distance(truth.boxes[t_rows], predicted.boxes[p_rows])
        accumulator.update(
            truth.identity[t_rows].tolist(), predicted.identity[p_rows].tolist(), distance,
            frameid=int(key),
        )  # fmt: skip
    summary = mm.metrics.create().compute(
        accumulator, metrics=["idtp", "num_objects", "num_predictions"], name="all"
    )
    return _percent(
        float(summary["idtp"].iloc[0]),
        int(summary["num_objects"].iloc[0]),
        int(summary["num_predictions"].iloc[0]),
    )


def _iou_distance(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """``1 - IoU`` of every pair, NaN where below the match IoU (``motmetrics``' convention;
    its own ``iou_matrix`` calls a NumPy function NumPy 2 removed)."""
    rows, cols = np.meshgrid(np.arange(len(a)), np.arange(len(b)), indexing="ij")
    distance = 1.0 - _iou(a[rows.ravel()], b[cols.ravel()]).reshape(len(a), len(b))
    distance[distance > 1.0 - IOU_MATCH] = np.nan
    return distance


def _groups(keys: np.ndarray) -> dict[int, np.ndarray]:
    order = np.argsort(keys, kind="stable")
    values, starts = np.unique(keys[order], return_index=True)
    return dict(zip(values.tolist(), np.split(order, starts[1:]), strict=True))


def hota_scores(truth: Detections, predicted: Detections) -> dict[str, float]:
    """HOTA, AssA and DetA in percent (``reid-hota``, global id alignment, one video per camera,
    mean over its IoU thresholds)."""
    import pandas as pd
    from reid_hota import HOTAConfig, HOTAReIDEvaluator

    def frames(d: Detections) -> dict[str, pd.DataFrame]:
        out = {}
        for camera in np.unique(np.concatenate([truth.camera, predicted.camera])):
            rows = d.camera == camera
            out[str(camera)] = pd.DataFrame(
                {
                    "frame": d.frame[rows].astype(np.int64),
                    "id": d.identity[rows].astype(np.int64),
                    "x1": d.boxes[rows, 0],
                    "y1": d.boxes[rows, 1],
                    "x2": d.boxes[rows, 0] + d.boxes[rows, 2],
                    "y2": d.boxes[rows, 1] + d.boxes[rows, 3],
                }
            )
        return out

    config = HOTAConfig(
        id_alignment_method="global",
        reference_contains_dense_annotations=True,
        suppress_print_statements=True,
    )
    evaluator = HOTAReIDEvaluator(n_workers=0, config=config)
    with contextlib.redirect_stdout(io.StringIO()):
        evaluator.evaluate(frames(truth), frames(predicted))
    result = evaluator.get_global_hota_data()
    return {
        name: round(100.0 * float(np.mean(result[name])), 2) for name in ("HOTA", "AssA", "DetA")
    }


def pairwise_scores(truth: np.ndarray, predicted: np.ndarray) -> dict[str, float]:
    """Pairwise precision / recall / F1 (percent) of putting tracks together."""
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(predicted, return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1))
    np.add.at(table, (t, p), 1)

    def pairs(counts: np.ndarray) -> float:
        return float((counts * (counts - 1) / 2).sum())

    together, same, both = pairs(table.sum(0)), pairs(table.sum(1)), pairs(table)
    precision = both / together if together else 1.0
    recall = both / same if same else 1.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {
        "pair_precision": round(100 * precision, 2),
        "pair_recall": round(100 * recall, 2),
        "pair_F1": round(100 * f1, 2),
    }


def weighted_identity_f1(truth: np.ndarray, predicted: np.ndarray, sizes: np.ndarray) -> float:
    """IDF1 (percent) of crop-only sets: each track counts its crops, one global matching."""
    _, t = np.unique(truth, return_inverse=True)
    _, p = np.unique(predicted, return_inverse=True)
    table = np.zeros((t.max() + 1, p.max() + 1))
    np.add.at(table, (t, p), sizes)
    r, c = linear_sum_assignment(-table)
    return round(100.0 * table[r, c].sum() / max(sizes.sum(), 1), 2)

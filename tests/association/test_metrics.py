"""Multi-camera IDF1 and HOTA against hand-made cases with known answers, and each other."""

from __future__ import annotations

import numpy as np
import pytest

from reidkit.association.metrics import (
    Detections,
    hota_scores,
    identity_scores,
    motmetrics_identity,
    pairwise_scores,
    weighted_identity_f1,
)

BOX_A = [10.0, 10.0, 20.0, 50.0]
BOX_B = [100.0, 10.0, 20.0, 50.0]


def dets(rows: list[tuple[int, int, list[float], int]]) -> Detections:
    """(camera, frame, box, identity) rows."""
    return Detections(
        camera=np.array([r[0] for r in rows]),
        frame=np.array([r[1] for r in rows]),
        boxes=np.array([r[2] for r in rows], dtype=float),
        identity=np.array([r[3] for r in rows]),
    )


def two_people(frames: int = 10) -> Detections:
    return dets([(0, f, box, pid) for f in range(frames) for box, pid in ((BOX_A, 1), (BOX_B, 2))])


def test_a_swap_halfway_scores_half() -> None:
    """Ids swapped after frame 4: each true id shares 5 of 10 frames with either prediction."""
    truth = two_people()
    swapped = dets(
        [(0, f, BOX_A, 1 if f < 5 else 2) for f in range(10)]
        + [(0, f, BOX_B, 2 if f < 5 else 1) for f in range(10)]
    )
    expected = {"IDF1": 50.0, "IDP": 50.0, "IDR": 50.0}
    assert identity_scores(truth, swapped) == expected
    assert motmetrics_identity(truth, swapped) == expected
    # reid-hota aligns ids globally first (A->1, B->2), and a box counts only under its
    # aligned id: 10 of 20 true boxes are hits, 10 misses, 10 false (DetA 10/30); each hit
    # shares 5 of 15 associations (AssA 5 / (5 + 5 + 5)); HOTA = sqrt(DetA * AssA) = 1/3.
    assert hota_scores(truth, swapped) == {"HOTA": 33.33, "AssA": 33.33, "DetA": 33.33}


def test_cameras_are_concatenated_so_one_person_needs_one_id_everywhere() -> None:
    """One person in two cameras at the same frame numbers: ids per camera score 50."""
    truth = dets([(c, f, BOX_A, 7) for c in (0, 1) for f in range(10)])
    per_camera = dets([(c, f, BOX_A, 100 + c) for c in (0, 1) for f in range(10)])
    global_ids = dets([(c, f, BOX_A, 5) for c in (0, 1) for f in range(10)])
    for scorer in (identity_scores, motmetrics_identity):
        assert scorer(truth, per_camera)["IDF1"] == 50.0
        assert scorer(truth, global_ids) == {"IDF1": 100.0, "IDP": 100.0, "IDR": 100.0}
    assert hota_scores(truth, global_ids) == {"HOTA": 100.0, "AssA": 100.0, "DetA": 100.0}
    # aligned to one camera's id: 10 hits, 10 misses, 10 false boxes (DetA 1/3); each hit
    # shares 10 of its person's 20 boxes (AssA 10 / (10 + 10 + 0)); HOTA sqrt(1/6)
    hota = hota_scores(truth, per_camera)
    assert hota["DetA"] == 33.33 and hota["AssA"] == 50.0
    assert hota["HOTA"] == pytest.approx(100 * np.sqrt(1 / 6), abs=0.01)


def test_misses_and_false_boxes_count_against_recall_and_precision() -> None:
    """IoU below 0.5 is no match: 3 of 4 predicted boxes hit 3 of 6 true ones."""
    truth = dets([(0, f, BOX_A, 1) for f in range(6)])
    shifted = [BOX_A[0] + 15.0, *BOX_A[1:]]  # IoU 0.14 with BOX_A
    predicted = dets([(0, f, BOX_A, 3) for f in range(3)] + [(0, 3, shifted, 3)])
    expected = {"IDF1": 60.0, "IDP": 75.0, "IDR": 50.0}
    assert identity_scores(truth, predicted) == expected
    assert motmetrics_identity(truth, predicted) == expected


def test_random_cases_agree_with_motmetrics() -> None:
    rng = np.random.default_rng(0)
    rows_t, rows_p = [], []
    for camera in range(3):
        for frame in range(30):
            for person in range(4):
                if rng.random() < 0.8:
                    box = [40.0 * person, 10.0, 30.0, 60.0]
                    rows_t.append((camera, frame, box, person))
                    if rng.random() < 0.9:
                        jitter = [box[0] + rng.normal(0, 4), *box[1:]]
                        rows_p.append((camera, frame, jitter, int(rng.integers(6))))
    truth, predicted = dets(rows_t), dets(rows_p)
    assert identity_scores(truth, predicted) == motmetrics_identity(truth, predicted)


def test_pairwise_and_weighted_identity_scores_by_hand() -> None:
    truth = np.array(["a", "a", "a", "b", "b"])
    predicted = np.array([0, 0, 1, 1, 1])
    # together: (0,1), (2,3), (2,4), (3,4) -> 4 pairs, 2 of them one person (01, 34)
    # same person: (0,1), (0,2), (1,2), (3,4) -> 4 pairs, 2 of them put together
    assert pairwise_scores(truth, predicted) == {
        "pair_precision": 50.0, "pair_recall": 50.0, "pair_F1": 50.0,
    }  # fmt: skip
    sizes = np.array([10, 10, 5, 3, 3])
    # best matching: a <-> 0 (20 crops), b <-> 1 (6 of its 11): 26 of 31
    assert weighted_identity_f1(truth, predicted, sizes) == pytest.approx(100 * 26 / 31, abs=0.01)

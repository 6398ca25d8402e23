"""Per-camera standardisation of embeddings: what a camera does to every crop, taken out.

A model embeds a camera's light, background and angle along with the person, so embeddings from
a site first group by camera. Association (one identity across cameras) and adaptation (pseudo-
labels that must link cameras) both compare embeddings across cameras, and both take each
camera's own statistics out first, with this one function.
"""

from __future__ import annotations

import numpy as np

#: A dimension whose spread in one camera is below this share of that camera's typical
#: (median) spread is taken to be flat there, not informative (a numerical guard).
FLAT_SPREAD = 1e-3


def standardise_by_camera(
    embeddings: np.ndarray,
    cameras: np.ndarray,
    means: dict[int, np.ndarray] | None = None,
    scales: dict[int, np.ndarray] | None = None,
    *,
    min_rows: int = 8,
    units: np.ndarray | None = None,
) -> tuple[np.ndarray, dict[int, np.ndarray], dict[int, np.ndarray]]:
    """Unit embeddings standardised per camera, with each camera's means and scales.

    ``embeddings`` are one row per crop or per track, ``cameras`` each row's camera. What every
    row of one camera shares (its light, colour cast, background, viewpoint) is
    not who the person is; left in, it makes strangers in one camera look closer than one
    person in two, so each camera's mean embedding is removed. Cameras also differ in
    *how much* their tracks differ, dimension by dimension: a far, blurred or dim camera
    compresses everyone's look into a few directions, a close sharp one spreads them out, and
    a plain distance then ranks every pair of that sharp camera as more different than any
    cross-camera pair. Dividing each dimension by the camera's own spread (its standard
    deviation around its mean) puts every camera on one scale, as camera-based batch
    normalisation does for the same reason (Zhuang et al., ECCV 2020: each camera's features
    standardised with that camera's own statistics) and intra/inter-camera clustering does
    before matching across cameras (Xuan and Zhang, CVPR 2021). Both statistics come from the
    site's own rows, so nothing is set per data set. Only cameras with at least ``min_rows``
    rows are standardised (with fewer, the statistics describe a few people, not a camera);
    the others are only L2-normalised. Where rows are crops, many of them are one person:
    ``units`` then gives each row's person-visit (a track, a cluster; -1 unknown) and a camera
    needs ``min_rows`` distinct ones. A dimension that barely varied in a camera (below
    :data:`FLAT_SPREAD` of its typical spread: e.g. a feature that camera never fires) takes
    the typical spread instead, so a later track that does fire it is not blown up by it.
    ``means`` and ``scales`` (from an earlier run) are used as given instead of being
    measured; a camera with a mean but no scale is only centred (calibrations written before
    scales were kept).
    """
    out = embeddings.astype(np.float64).copy()
    if means is None:
        means, scales = {}, {}
        for camera in np.unique(cameras).tolist():
            rows = cameras == camera
            seen = rows.sum() if units is None else len(np.unique(units[rows & (units >= 0)]))
            if seen >= min_rows:
                mean = embeddings[rows].astype(np.float64).mean(0)
                spread = embeddings[rows].astype(np.float64).std(0)
                typical = float(np.median(spread))
                means[int(camera)] = mean.astype(np.float32)
                scales[int(camera)] = np.where(
                    spread > FLAT_SPREAD * typical, spread, max(typical, 1e-12)
                ).astype(np.float32)
    scales = scales or {}
    for camera in np.unique(cameras).tolist():  # the cameras present (live: one track's)
        if camera not in means:
            continue
        rows = cameras == camera
        out[rows] -= means[camera]
        if camera in scales:
            out[rows] /= scales[camera]
    out /= np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)
    return out.astype(np.float32), means, scales

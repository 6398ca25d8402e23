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


#: Key, in the means and scales :func:`standardise_by_camera` returns, of the site's own
#: statistics (every row together), which a camera without enough rows of its own takes.
SITE = -1


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
    site's own rows, so nothing is set per data set.

    Only cameras with at least ``min_rows`` rows take their own statistics (with fewer, the
    statistics describe a few people, not a camera). The others take the site's: the mean
    and spread of every row together, under the key :data:`SITE`. They must be standardised
    too, not left as they are: every raw embedding carries the model's common direction,
    which standardisation removes, so two raw rows of two small cameras would look far closer
    than any standardised pair, and strangers of small cameras would join each other first.
    With fewer than ``min_rows`` rows in all, rows are only L2-normalised.

    Where rows are crops, many of them are one person: ``units`` then gives each row's
    person-visit (a track, a cluster; -1 unknown) and a camera needs ``min_rows`` distinct
    ones. A dimension that barely varied (below :data:`FLAT_SPREAD` of its typical spread:
    e.g. a feature that camera never fires) takes the typical spread instead, so a later track
    that does fire it is not blown up by it. ``means`` and ``scales`` (from an earlier run) are
    used as given instead of being measured; a camera with a mean but no scale is only
    centred (calibrations written before scales were kept).
    """
    out = embeddings.astype(np.float64).copy()
    if means is None:
        means, scales = {}, {}
        everyone = np.ones(len(cameras), dtype=bool)
        groups = [(int(c), cameras == c) for c in np.unique(cameras).tolist()]
        for key, rows in [*groups, (SITE, everyone)]:
            seen = rows.sum() if units is None else len(np.unique(units[rows & (units >= 0)]))
            if seen >= min_rows:
                means[key], scales[key] = _statistics(embeddings[rows])
    scales = scales or {}
    for camera in np.unique(cameras).tolist():  # the cameras present (live: one track's)
        key = camera if camera in means else SITE
        if key not in means:
            continue
        rows = cameras == camera
        out[rows] -= means[key]
        if key in scales:
            out[rows] /= scales[key]
    out /= np.linalg.norm(out, axis=1, keepdims=True).clip(1e-12)
    return out.astype(np.float32), means, scales


def _statistics(rows: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and per-dimension spread of ``rows``, flat dimensions given the typical spread."""
    mean = rows.astype(np.float64).mean(0)
    spread = rows.astype(np.float64).std(0)
    typical = float(np.median(spread))
    scale = np.where(spread > FLAT_SPREAD * typical, spread, max(typical, 1e-12))
    return mean.astype(np.float32), scale.astype(np.float32)

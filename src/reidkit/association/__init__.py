"""Cross-camera association: per-camera tracks in, one global identity per person out.

``site`` (the site file), ``readers`` (MOTChallenge, AI City, DeepStream / Metropolis JSON,
EPFL), ``tracks`` (a track, split at gaps), ``features`` (one embedding per track from its
best crops), ``constraints`` (cannot-links, transit, ground plane), ``cluster`` (the offline
method), ``online`` (the live assigner and its identity store), ``baselines``, ``metrics``
(multi-camera IDF1, HOTA, pairwise), ``results`` (global ids, MOT files, timeline), ``epfl``.
"""

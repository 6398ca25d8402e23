"""Cross-camera association against the published baseline, in one run, on every set we have.

Run from the repository root, under the shared lock (it trains the source model once if the
cache lacks it, then embeds a few thousand crops)::

    flock /tmp/reidkit-heavy.lock .venv/bin/python benchmarks/bench_associate.py \\
        --cache /work/cache/source_models

No fetchable set has real images *and* real timing, so the table has honest halves, each
labelled in its ``set`` column:

1. **EPFL terrace / laboratory** (real trajectories and global ids, 4 overlapping cameras with
   homographies, 25 fps, 0-based frames; each person's visible runs cut at 0.4 s gaps into
   tracker tracks by :func:`reidkit.association.epfl.write_epfl_site`), with appearance
   * from **real crops of another set**, embedded by a real trained model (the shipped short
     CUHK03 recipe): each EPFL person is given one CUHK03 *test* identity (camera 1 crops for
     EPFL c0/c1, camera 2 crops for c2/c3, alternating) or one MARS-mini *test* identity (one
     of its tracklets per camera), linked into a crops folder; several seeds pick the ids;
   * **simulated**: a random unit look per person, a camera cast, and noise of several
     norms per track (no model);
   and each again with every second person kept in one camera only (the same embeddings).
2. **Real crops without time**: MARS-mini test tracklets, CUHK03 test (one tracklet per
   identity and camera), PKU val (same); pairwise precision / recall and crop-weighted IDF1.
   The same sets again with each tracklet cut into runs of consecutive crops (2, 2 and 4), as
   a tracker that loses people hands them over: one person then has several tracks per camera.
   And all six again with every second person kept in one camera only, as a site sees many
   people once.
   Appearance is all these sets have, so their figures hang on one model's embeddings: each
   is measured with the short recipe's models of several training seeds
   (``--crop-model-seeds``) and the table gives their mean, the JSON each seed's.
3. **Synthetic site, scale only** (``reidkit dataset synth --site``: 10,000 tracks from 100
   cameras over one day, then 40,000 from 400, DeepStream JSON lines with embeddings): offline
   association seconds and peak memory in a fresh 2-thread process, the live assigner's
   per-track latency and the baseline's seconds (first size), the model's crops per second;
   never accuracy.

Methods, all on the same track embeddings: **ours** (``associate_site``: site threshold or
stability cut, camera standardisation, cannot-links, ground-plane evidence), its ablations (no
homographies; no camera standardisation; the model card's threshold), the **Metropolis-style**
baseline (HDBSCAN + co-existence Hungarian, :mod:`reidkit.association.baselines`), a **plain
threshold** on mean embeddings (the card's threshold with a model, else the one ours learned),
and the bounds: **every track alone** and the ground-truth **oracle**; on the crop-only sets
also the **best single threshold** (ours at the one ``match_threshold`` of
:data:`THRESHOLD_GRID` the answers rate best: what knowing the threshold is worth). The live
assigner is replayed on the same tracks (in closing order, with the offline run's calibration
and the live threshold it measures, as ``reidkit associate`` writes them) and compared with the
offline result. Prints the tables and writes ``benchmarks/results/associate.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from collections.abc import Callable
from datetime import date
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
from common import machine  # noqa: E402
from source_models import DEFAULT_CACHE, ensure_source_model  # noqa: E402

SHARED = (ROOT / "../shared/data").resolve()
EPFL = SHARED / "epfl_mtmc"
CUHK03 = SHARED / "cuhk03_detected"
MARS = SHARED / "mars_mini"
PKU = SHARED / "pku_views"
RECIPE = "cuhk03_mobilenet_short"
RESULTS = HERE / "results"
NOISE_LEVELS = (0.5, 1.0, 1.5, 2.0)
CAST = 0.3  # norm of a simulated camera's colour cast, against a look of norm 1
CROP_EVERY = 25  # one crop linked per second of a track (25 fps)
#: Raw squared distances between unit embeddings tried for the best-threshold bound (0..2:
#: identical..orthogonal), in steps finer than the thresholds' spread across sets.
THRESHOLD_GRID = [round(0.05 * k, 2) for k in range(1, 40)]
BEST_THRESHOLD = "bound: best single threshold (chosen with the answers)"


def _np():
    import numpy as np

    return np


# --------------------------------------------------------------------------- the model


def source_model(cache: Path, seed: int) -> tuple[Path, object, object, float]:
    """(checkpoint, embedder, card, calibrated threshold) of the cached short CUHK03 model.

    The threshold is ``reidkit evaluate``'s, run once on CUHK03 test and kept in the cache.
    """
    import reidkit
    from reidkit.actions.models import calibrated_card, resolve_checkpoint
    from reidkit.export.runtime import load_embedder

    folder = ensure_source_model(cache, RECIPE, seed)
    checkpoint = resolve_checkpoint(folder, "model")
    spec = _spec(cache, seed, [f"evaluate.checkpoint={checkpoint}"])
    embedder, card = load_embedder(checkpoint)
    card = calibrated_card(spec, card, checkpoint)
    if card.match_threshold is None:
        reidkit.evaluate(spec)
        card = calibrated_card(spec, card, checkpoint)
    return checkpoint, embedder, card, float(card.match_threshold)


def _spec(cache: Path, seed: int, overrides: list[str]):
    import reidkit

    return reidkit.load_spec(
        ROOT / "examples" / f"{RECIPE}.yaml",
        [
            f"results_dir={cache / f'associate_bench_seed{seed}'}",
            f"dataset.test_dataset_dir={CUHK03 / 'bounding_box_test'}",
            f"dataset.query_dataset_dir={CUHK03 / 'query'}",
            "dataset.num_workers=0",
            "evaluate.gpu_ids=[]",
            "associate.gpu_ids=[]",
            *overrides,
        ],
    )


# --------------------------------------------------------------------------- appearance


def cuhk03_identities() -> dict[int, dict[int, list[Path]]]:
    """CUHK03 test crops: identity -> camera -> files (query and gallery together)."""
    found: dict[int, dict[int, list[Path]]] = defaultdict(lambda: defaultdict(list))
    for split in ("bounding_box_test", "query"):
        for path in sorted((CUHK03 / split).iterdir()):
            match = re.match(r"(\d+)_c(\d)", path.name)
            if match:
                found[int(match.group(1))][int(match.group(2))].append(path)
    return found


def mars_tracklets() -> list[tuple[int, int, list[Path]]]:
    """MARS-mini test tracklets as (identity, camera, crops), from its ``gtPepper`` lists."""
    out = []
    for name in ("query.json", "gallery.json"):
        for item in json.loads((MARS / "gtPepper" / name).read_text()):
            out.append(
                (int(item["pid"]), int(item["camid"]), [MARS / p for p in item["img_paths"]])
            )
    return out


def crop_source(name: str, people: list[int], seed: int) -> Callable[[int, str], list[Path]]:
    """``crops(epfl_person, camera)``: the real crops one EPFL person shows in one camera."""
    np = _np()
    rng = np.random.default_rng(seed)
    if name == "cuhk03":
        pool = cuhk03_identities()
        chosen = dict(
            zip(people, rng.choice(sorted(pool), len(people), replace=False).tolist(), strict=True)
        )

        def crops(person: int, camera: str) -> list[Path]:
            k = int(camera[1:])
            files = pool[chosen[person]][1 if k < 2 else 2]
            return files[k % 2 :: 2] or files

        return crops
    by_person: dict[int, list[list[Path]]] = defaultdict(list)
    for pid, _, files in mars_tracklets():
        by_person[pid].append(files)
    chosen = dict(
        zip(people, rng.choice(sorted(by_person), len(people), replace=False).tolist(), strict=True)
    )

    def mars_crops(person: int, camera: str) -> list[Path]:
        tracklets = by_person[chosen[person]]
        return tracklets[int(camera[1:]) % len(tracklets)]

    return mars_crops


def link_crops(folder: Path, tracks, person_of, crops: Callable[[int, str], list[Path]]) -> None:
    """``folder/<camera>/<track_id>/<frame>.jpg``: one real crop per second of each track."""
    for track in tracks:
        files = crops(person_of(track), track.camera)
        target = folder / track.camera / track.track_id
        target.mkdir(parents=True, exist_ok=True)
        for k, frame in enumerate(track.frames[::CROP_EVERY].tolist()):
            os.symlink(files[k % len(files)], target / f"{frame}.jpg")


def simulated_looks(people, cameras, noise: float, seed: int, dim: int = 128):
    """Unit embeddings: person look (norm 1) + camera cast (norm CAST) + noise (norm ``noise``)."""
    np = _np()
    rng = np.random.default_rng(seed)
    looks = rng.normal(size=(int(people.max()) + 1, dim)) / np.sqrt(dim)
    casts = rng.normal(size=(int(cameras.max()) + 1, dim)) * CAST / np.sqrt(dim)
    vectors = (
        looks[people] + casts[cameras] + rng.normal(size=(len(people), dim)) * noise / np.sqrt(dim)
    )
    return (vectors / np.linalg.norm(vectors, axis=1, keepdims=True)).astype(np.float32)


# --------------------------------------------------------------------------- methods


def replay_online(track_set, min_transit, calibration):
    """Final labels of the live assigner fed tracks in closing order (corrections applied),
    and its per-track seconds (the stability cut's calibration has no threshold: 1.0)."""
    from dataclasses import replace

    from reidkit.association.online import replay

    if calibration.threshold is None:
        calibration = replace(calibration, threshold=1.0)
    return replay(track_set, min_transit, calibration)


def methods(track_set, min_transit, truth, card_threshold: float | None) -> dict[str, object]:
    """Labels of every method and bound on one track set (see the module docstring)."""
    from reidkit.association.baselines import (
        every_track_alone,
        metropolis_style,
        oracle,
        threshold_links,
    )
    from reidkit.association.cluster import associate_site
    from reidkit.association.constraints import TrackSet
    from reidkit.association.online import calibrate_live_threshold

    ours, calibration, evidence = associate_site(track_set, min_transit)
    calibration.live_threshold = calibrate_live_threshold(
        track_set, min_transit, calibration, evidence, ours.labels
    )
    flat = TrackSet(
        track_set.cameras,
        track_set.start,
        track_set.end,
        track_set.embeddings,
        [None] * len(track_set),
    )
    labels = {
        "ours": ours.labels,
        "ours, no homographies": associate_site(flat, min_transit)[0].labels,
        "ours, no camera standardisation": associate_site(
            track_set, min_transit, centre_cameras=False
        )[0].labels,
    }
    if card_threshold is not None:
        labels["ours, card threshold"] = associate_site(
            track_set, min_transit, open_set="card", card_threshold=card_threshold
        )[0].labels
    labels["Metropolis-style (HDBSCAN + Hungarian)"] = metropolis_style(
        track_set, calibration.ground_gate
    )
    plain = (
        card_threshold
        if card_threshold is not None
        else _raw_site_threshold(track_set, min_transit)
    )
    if plain is not None:
        labels["plain threshold on mean embeddings"] = threshold_links(track_set, plain)
    labels["bound: every track alone"] = every_track_alone(track_set)
    labels["bound: oracle"] = oracle(truth)
    if any(g is not None for g in track_set.ground) or ours.threshold is not None:
        online, _ = replay_online(track_set, min_transit, calibration)
        labels["ours, live replay"] = online
    return {"labels": labels, "calibration": calibration}


def _raw_site_threshold(track_set, min_transit) -> float | None:
    """The site threshold learned on raw (uncentred) embeddings, for the plain baseline."""
    from reidkit.association.cluster import associate_site

    return associate_site(track_set, min_transit, centre_cameras=False)[1].threshold


# --------------------------------------------------------------------------- part 1: EPFL


def epfl_part(
    scene: str, work: Path, appearance: str, seed: int, model, scored: bool
) -> list[dict]:
    """Rows for one EPFL scene with one appearance source and seed; ``scored``: also
    ``motmetrics`` IDF1 (the cross-check) and HOTA for ours and the baseline (30 s each)."""
    np = _np()
    from reidkit.association.epfl import epfl_cameras, write_epfl_site
    from reidkit.association.features import crop_transform, track_embeddings
    from reidkit.association.metrics import detections
    from reidkit.association.readers import read_ground_truth, read_tracks
    from reidkit.association.site import load_site, site_from_dict

    folder = work / f"{scene}_{appearance}_{seed}"
    epfl = write_epfl_site(EPFL / scene, folder)
    site = load_site(epfl.site_file)
    tracks = read_tracks(site)
    people = np.array([epfl.person_of(t) for t in tracks])
    truth_tracks = read_ground_truth(site)
    true = detections(truth_tracks, [t.track_id for t in truth_tracks], site)
    card_threshold = None
    started = time.perf_counter()
    if appearance in ("cuhk03", "mars"):
        _, embedder, card, card_threshold = model
        link_crops(
            folder / "crops",
            tracks,
            epfl.person_of,
            crop_source(appearance, sorted(set(people.tolist())), seed),
        )
        cameras = epfl_cameras(EPFL / scene)
        for name in cameras:
            cameras[name]["crops"] = str(folder / "crops" / name)
        crop_site = site_from_dict({"cameras": cameras}, folder)
        transform = crop_transform(card)
        embeddings, _ = track_embeddings(
            tracks, crop_site, embedder=embedder, transform=transform, full_height=card.input_height
        )
        source = "CUHK03" if appearance == "cuhk03" else "MARS-mini"
        label = f"EPFL {scene}: real paths + real {source} test crops"
    else:
        noise = float(appearance.split("=")[1])
        embeddings = simulated_looks(
            people, np.array([site.names.index(t.camera) for t in tracks]), noise, seed
        )
        label = f"EPFL {scene}: real paths + simulated looks, noise {noise}"
    embed_seconds = time.perf_counter() - started
    full = (tracks, people, true, embeddings)
    rows = _epfl_rows(f"{label} (seed {seed})", *full, site, card_threshold, scored)
    rows[0]["embed_seconds"] = round(embed_seconds, 1)
    # people seen by one camera only, on the same embeddings (the truth is the tracks' own)
    kept = people_seen_once(people.tolist(), [t.camera for t in tracks])
    kept_tracks = [tracks[k] for k in kept]
    kept_true = detections(kept_tracks, people[kept].tolist(), site)
    half = (kept_tracks, people[kept], kept_true, embeddings[kept])
    label = f"{label}, half in one camera (seed {seed})"
    rows += _epfl_rows(label, *half, site, card_threshold, scored=False)
    for row in rows:
        row |= {"part": "epfl", "scene": scene, "appearance": appearance, "seed": seed}
    return rows


def _epfl_rows(
    label: str, tracks, people, true, embeddings, site, card_threshold, scored: bool
) -> list[dict]:
    """One row per method on one EPFL track set (``true``: the ground truth's detections)."""
    from reidkit.association.constraints import TrackSet
    from reidkit.association.metrics import (
        detections,
        hota_scores,
        identity_scores,
        motmetrics_identity,
        pairwise_scores,
    )

    track_set = TrackSet.from_tracks(tracks, embeddings, site.names)
    found = methods(track_set, site.min_transit_matrix(), people, card_threshold)
    rows = []
    for method, labels in found["labels"].items():
        predicted = detections(tracks, labels.tolist(), site)
        row = {
            "set": label,
            "method": method,
            "tracks": len(tracks),
            "identities": len(set(labels.tolist())),
            **identity_scores(true, predicted),
            **pairwise_scores(people, labels),
        }
        if scored and method in ("ours", "Metropolis-style (HDBSCAN + Hungarian)"):
            row["IDF1_motmetrics"] = motmetrics_identity(true, predicted)["IDF1"]
            row |= hota_scores(true, predicted)
        if method == "ours, live replay":
            row["agreement_with_offline_pair_F1"] = pairwise_scores(
                found["labels"]["ours"], labels
            )["pair_F1"]
        rows.append(row)
    calibration = found["calibration"]
    rows[0] |= {
        "threshold_source": calibration.source,
        "threshold": calibration.threshold,
        "ground_gate": calibration.ground_gate,
    }
    return rows


# --------------------------------------------------------------------------- part 2: crops


def crop_sets() -> dict[str, list[tuple[str, str, list[Path]]]]:
    """(identity, camera, crops) tracklets of each crop-only set."""
    cuhk = [
        (str(pid), str(cam), files)
        for pid, cams in sorted(cuhk03_identities().items())
        for cam, files in sorted(cams.items())
    ]
    pku = []
    for person in sorted((PKU / "val" / "all_imgs").iterdir()):
        by_camera: dict[str, list[Path]] = defaultdict(list)
        for path in sorted(person.iterdir()):
            by_camera[path.name.split("_")[0]].append(path)  # <camera>_<view>.png
        pku += [(person.name, cam, files) for cam, files in sorted(by_camera.items())]
    mars = [(str(pid), str(cam), files) for pid, cam, files in mars_tracklets()]
    sets = {
        "MARS-mini test tracklets": mars,
        "CUHK03 test (tracklet = id x camera)": cuhk,
        "PKU val (tracklet = id x camera)": pku,
        "MARS-mini test tracklets, each cut in 2": fragmented(mars, 2),
        "CUHK03 test, each tracklet cut in 2": fragmented(cuhk, 2),
        "PKU val, each tracklet cut in 4": fragmented(pku, 4),
    }
    return sets | {f"{name}, half in one camera": half_in_one_camera(t) for name, t in sets.items()}


def fragmented(
    tracklets: list[tuple[str, str, list[Path]]], parts: int
) -> list[tuple[str, str, list[Path]]]:
    """Each tracklet cut into ``parts`` runs of consecutive crops, as a tracker that loses a
    person now and then hands over one person's visit as several tracks."""
    np = _np()
    return [
        (pid, cam, [files[i] for i in run])
        for pid, cam, files in tracklets
        for run in np.array_split(np.arange(len(files)), min(parts, len(files)))
    ]


def people_seen_once(people: list, cameras: list[str]) -> list[int]:
    """Indices of the tracks kept when every second person (in identity order) is kept in
    one camera only, the first of theirs: a site sees many people in one camera only, and such
    a person must stay one identity of their own rather than join a look-alike seen elsewhere."""
    first_camera: dict = {}
    for person, camera in zip(people, cameras, strict=True):
        first_camera.setdefault(person, camera)
    alone = set(sorted(first_camera)[1::2])
    return [
        k
        for k, (person, camera) in enumerate(zip(people, cameras, strict=True))
        if person not in alone or camera == first_camera[person]
    ]


def half_in_one_camera(
    tracklets: list[tuple[str, str, list[Path]]],
) -> list[tuple[str, str, list[Path]]]:
    """The tracklets :func:`people_seen_once` keeps."""
    people = [pid for pid, _, _ in tracklets]
    return [tracklets[k] for k in people_seen_once(people, [cam for _, cam, _ in tracklets])]


def crops_part(name: str, tracklets, model, model_seed: int) -> list[dict]:
    """Rows for one crop-only set embedded by the source model of ``model_seed``: no time,
    tracklets placed apart so no constraint applies."""
    np = _np()
    from reidkit.association.baselines import best_threshold
    from reidkit.association.constraints import TrackSet
    from reidkit.association.features import crop_transform, track_embeddings
    from reidkit.association.metrics import pairwise_scores, weighted_identity_f1
    from reidkit.association.site import site_from_dict
    from reidkit.association.tracks import Track

    _, embedder, card, card_threshold = model
    cameras = sorted({cam for _, cam, _ in tracklets})
    site = site_from_dict({"cameras": {c: {"fps": 1, "frame_base": 0} for c in cameras}})
    tracks = []
    for k, (_, cam, files) in enumerate(tracklets):
        n = len(files)
        box = np.tile(np.array([0, 0, card.input_width, card.input_height], np.float32), (n, 1))
        tracks.append(
            Track(
                cam,
                str(k),
                np.arange(n),
                k * 1000.0 + np.arange(n) * 1e-3,
                box,
                np.ones(n, np.float32),
                crops=list(files),
            )
        )
    transform = crop_transform(card)
    embeddings, _ = track_embeddings(
        tracks, site, embedder=embedder, transform=transform, full_height=card.input_height
    )
    track_set = TrackSet.from_tracks(tracks, embeddings, site.names)
    truth = np.array([pid for pid, _, _ in tracklets])
    sizes = np.array([len(files) for _, _, files in tracklets])
    found = methods(track_set, site.min_transit_matrix(), truth, card_threshold)
    bound, threshold = best_threshold(
        track_set,
        site.min_transit_matrix(),
        lambda labels: weighted_identity_f1(truth, labels, sizes),
        THRESHOLD_GRID,
    )
    found["labels"][BEST_THRESHOLD] = bound
    return [
        {
            "set": f"{name}: real crops, no time (model seed {model_seed})",
            "part": "crops",
            "method": method,
            "tracks": len(tracks),
            "identities": len(set(labels.tolist())),
            "IDF1": weighted_identity_f1(truth, labels, sizes),
            **pairwise_scores(truth, labels),
            "threshold_source": found["calibration"].source,
            **({"threshold": threshold} if method == BEST_THRESHOLD else {}),
        }
        for method, labels in found["labels"].items()
        if method not in ("ours, no homographies", "ours, live replay")
    ]


# --------------------------------------------------------------------------- part 3: scale


SCALE_CHILD = """
import json, sys, time
import numpy as np
from reidkit.association.cluster import associate_site
from reidkit.association.constraints import TrackSet
data = np.load(sys.argv[1], allow_pickle=True)
count = len(data["cameras"])
tracks = TrackSet(data["cameras"], data["start"], data["end"], data["embeddings"], [None] * count)
def high_water_mb():  # VmHWM starts afresh at exec; ru_maxrss would carry the parent's
    for line in open("/proc/self/status"):
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
before = high_water_mb()
began = time.perf_counter()
result, calibration, _ = associate_site(tracks, data["transit"])
seconds = time.perf_counter() - began
print(json.dumps({"seconds": seconds, "identities": result.identities, "source": calibration.source,
                  "peak_rss_mb": high_water_mb(), "rss_before_mb": before}))
"""


def scale_part(work: Path, tracks_count: int, cameras: int, full: bool) -> dict:
    """Offline seconds and peak memory (fresh 2-thread process); with ``full`` also the live
    assigner's per-track latency and the Metropolis-style baseline's seconds."""
    np = _np()
    from reidkit.association.cluster import associate_site
    from reidkit.association.constraints import TrackSet
    from reidkit.association.features import track_embeddings
    from reidkit.association.readers import read_tracks
    from reidkit.association.site import load_site
    from reidkit.association.tracks import split_at_gaps
    from reidkit.data.synth import synthesize_site

    folder = work / f"synthetic_site_{tracks_count}"
    began = time.perf_counter()
    summary = synthesize_site(folder, cameras=cameras, tracks=tracks_count, hours=24.0)
    site = load_site(folder / "site.yaml")
    read_began = time.perf_counter()
    tracks = split_at_gaps(read_tracks(site, folder / "tracks.jsonl"), 2.0)
    embeddings, _ = track_embeddings(tracks, site, embedder=None, transform=None, full_height=256)
    read_seconds = time.perf_counter() - read_began
    track_set = TrackSet.from_tracks(tracks, embeddings, site.names)
    arrays = work / "scale_tracks.npz"
    np.savez(
        arrays,
        cameras=track_set.cameras,
        start=track_set.start,
        end=track_set.end,
        embeddings=track_set.embeddings,
        transit=site.min_transit_matrix(),
    )
    env = os.environ | {"OMP_NUM_THREADS": "2", "OPENBLAS_NUM_THREADS": "2", "MKL_NUM_THREADS": "2"}
    child = subprocess.run(
        [sys.executable, "-c", SCALE_CHILD, str(arrays)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    offline = json.loads(child.stdout.strip().splitlines()[-1])
    figures = {
        "set": "synthetic site (scale only, never accuracy)",
        "tracks": len(tracks),
        "cameras": cameras,
        "people": summary["people"],
        "synthesis_seconds": round(read_began - began, 1),
        "read_seconds": round(read_seconds, 1),
        "offline_seconds": round(offline["seconds"], 2),
        "offline_peak_rss_mb": round(offline["peak_rss_mb"]),
        "offline_rss_before_mb": round(offline["rss_before_mb"]),
        "open_set": offline["source"],
    }
    if not full:
        return figures
    _, calibration, _ = associate_site(track_set, site.min_transit_matrix())
    _, seconds = replay_online(track_set, site.min_transit_matrix(), calibration)
    from reidkit.association.baselines import metropolis_style

    hdbscan_began = time.perf_counter()
    metropolis_style(track_set, None)
    hdbscan_seconds = time.perf_counter() - hdbscan_began
    return figures | {
        "metropolis_style_seconds": round(hdbscan_seconds, 2),
        "live_p50_ms": round(float(np.percentile(seconds, 50)) * 1e3, 2),
        "live_p99_ms": round(float(np.percentile(seconds, 99)) * 1e3, 2),
        "live_max_ms": round(float(seconds.max()) * 1e3, 2),
    }


def served_model(work: Path, dim: int) -> Path:
    """An ONNX model of width ``dim`` exported as ``reidkit export`` exports it (random weights:
    the live part's tracks bring their embeddings, so only the width is used)."""
    import torch

    import reidkit
    from reidkit.actions.export import export
    from reidkit.config.loading import apply_overrides
    from reidkit.engine.module import model_settings
    from reidkit.models import ReidModel
    from reidkit.models.card import MODEL_PREFIX, attach_card
    from reidkit.models.checkpoint_file import save_checkpoint

    spec = reidkit.load_spec(
        None,
        [
            f"results_dir={work / 'live_model'}",
            "model.pretrain_choice=self",
            "model.backbone=resnet_18",
            "model.input_height=64",
            "model.input_width=32",
            f"model.feat_dim={dim}",
            "dataset.num_classes=10",
        ],
    )
    torch.manual_seed(0)
    model = ReidModel(spec.model.backbone, 10, **model_settings(spec.model, spec.train.optim))
    checkpoint = {"state_dict": {MODEL_PREFIX + k: v for k, v in model.state_dict().items()}}
    attach_card(checkpoint, model.card(spec.dataset.pixel_mean, spec.dataset.pixel_std))
    path = work / "live_model.pth"
    save_checkpoint(checkpoint, path, None)
    return export(apply_overrides(spec, {"export.checkpoint": str(path)})).onnx_file


def _free_port() -> int:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


async def _open_loop_async(port: int, token: str, bodies: list[bytes], rate: float) -> dict:
    """POST ``bodies`` to ``/v1/tracks`` open loop from one thread: request ``n`` is written at
    ``start + n / rate`` on a free keep-alive connection (a new one when all are busy) and its
    latency counted from that scheduled time, however late the send. One asyncio thread
    writing bare HTTP/1.1 costs the shared cores about 0.3 ms per request (16 threads of httpx:
    about 1.3 ms) and sends in schedule order (threads can overtake each other)."""
    import asyncio

    head = (
        f"POST /v1/tracks HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Authorization: Bearer {token}\r\nContent-Type: application/json\r\nContent-Length: "
    ).encode()
    idle: list[tuple[asyncio.StreamReader, asyncio.StreamWriter]] = []
    latencies = [0.0] * len(bodies)
    answers: list[dict | None] = [None] * len(bodies)

    async def post(n: int, due: float) -> None:
        while idle and (idle[-1][0].at_eof() or idle[-1][1].is_closing()):
            idle.pop()[1].close()  # closed by the server while idle
        try:
            reader, writer = (
                idle.pop() if idle else await asyncio.open_connection("127.0.0.1", port)
            )
            writer.write(head + str(len(bodies[n])).encode() + b"\r\n\r\n" + bodies[n])
            status = (await reader.readline()).split(b" ")
            length, keep = 0, True
            while (line := await reader.readline()) not in (b"\r\n", b""):
                name, _, value = line.partition(b":")
                length = int(value) if name.lower() == b"content-length" else length
                keep = keep and not (name.lower() == b"connection" and b"close" in value.lower())
            payload = await reader.readexactly(length)
            latencies[n] = time.perf_counter() - due
            if len(status) > 1 and status[1] == b"200":
                answers[n] = json.loads(payload)
            if keep:
                idle.append((reader, writer))
            else:
                writer.close()
        except (OSError, ValueError, asyncio.IncompleteReadError):
            latencies[n] = time.perf_counter() - due  # an error: answers[n] stays None

    start = time.perf_counter() + 0.5
    sending = []
    for n in range(len(bodies)):
        due = start + n / rate
        if due > time.perf_counter():
            await asyncio.sleep(due - time.perf_counter())
        sending.append(asyncio.create_task(post(n, due)))
    await asyncio.gather(*sending)
    for _, writer in idle:
        writer.close()
    return {"latencies": latencies, "answers": answers, "wall": time.perf_counter() - start}


def _open_loop_threads(url: str, token: str, bodies: list[bytes], rate: float) -> dict:
    """The same schedule from 16 threads sharing an httpx client (the first client of this
    benchmark, kept as the reference for the client's own cost)."""
    from concurrent.futures import ThreadPoolExecutor

    import httpx

    client = httpx.Client(
        base_url=url,
        headers={"Authorization": f"Bearer {token}", "Content-Type": "application/json"},
        timeout=30,
        limits=httpx.Limits(max_connections=16),
    )
    latencies = [0.0] * len(bodies)
    answers: list[dict | None] = [None] * len(bodies)
    start = time.perf_counter() + 0.5

    def send(n: int) -> None:
        due = start + n / rate
        time.sleep(max(0.0, due - time.perf_counter()))
        try:
            response = client.post("/v1/tracks", content=bodies[n])
        except httpx.HTTPError:
            response = None
        latencies[n] = time.perf_counter() - due
        if response is not None and response.status_code == 200:
            answers[n] = response.json()

    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(send, range(len(bodies))))
    client.close()
    return {"latencies": latencies, "answers": answers, "wall": time.perf_counter() - start}


#: The live part's clients: the light one the figures are given with, and the first one.
LIVE_CLIENTS = ("asyncio", "threads")


def live_part(work: Path, tracks_count: int, cameras: int, rate: float, clients) -> dict:
    """The live endpoint at ``rate`` closing tracks per second: a real ``reidkit serve`` on
    127.0.0.1 (one process, one onnxruntime thread) fed the synthetic site's tracks in closing
    order with their embeddings (one pooled row each, as a DeepStream pipeline sends them),
    open loop (each request is sent at its scheduled time, latency counted from then), once
    per client in ``clients`` (a fresh server and gallery each). The final ids (corrections
    applied) are compared with the library's online replay, and the offline ``reidkit
    associate`` run that calibrates the service is timed as users run it."""
    import asyncio

    import httpx

    np = _np()
    import reidkit
    from reidkit.association.cluster import associate_site
    from reidkit.association.constraints import TrackSet
    from reidkit.association.features import track_embeddings
    from reidkit.association.online import final_identity, replay
    from reidkit.association.readers import read_tracks
    from reidkit.association.site import load_site
    from reidkit.association.tracks import split_at_gaps
    from reidkit.data.synth import synthesize_site
    from reidkit.serve.tokens import create_token

    folder = work / f"synthetic_site_{tracks_count}"
    if not (folder / "site.yaml").exists():
        synthesize_site(folder, cameras=cameras, tracks=tracks_count, hours=24.0)
    spec = reidkit.load_spec(
        None,
        [
            f"results_dir={work / 'live'}",
            f"associate.site={folder / 'site.yaml'}",
            f"associate.tracks={folder / 'tracks.jsonl'}",
        ],
    )
    began = time.perf_counter()
    reidkit.associate(spec)
    action_seconds = time.perf_counter() - began
    calibration = work / "live" / "associate" / "calibration.json"
    site = load_site(folder / "site.yaml")
    tracks = split_at_gaps(read_tracks(site, folder / "tracks.jsonl"), 2.0)
    embeddings, _ = track_embeddings(tracks, site, embedder=None, transform=None, full_height=256)
    track_set = TrackSet.from_tracks(tracks, embeddings, site.names)
    _, learned, _ = associate_site(track_set, site.min_transit_matrix())
    learned.live_threshold = json.loads(calibration.read_text())["live_threshold"]
    expected, _ = replay(track_set, site.min_transit_matrix(), learned)

    onnx = served_model(work, embeddings.shape[1])
    token = create_token(work / "tokens.json", "bench", ["write", "search"])
    (work / "serve.yaml").write_text("serve:\n  threads: 1\n  log_level: warning\n")
    env = os.environ | {"OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT / "src")}
    order = np.argsort(track_set.end, kind="stable").tolist()
    bodies = [
        json.dumps(
            {
                "camera": tracks[i].camera,
                "track_id": f"{tracks[i].track_id}.{tracks[i].part}",
                "start": tracks[i].start,
                "end": tracks[i].end,
                "embeddings": [embeddings[i].tolist()],
            }
        ).encode()
        for i in order
    ]
    runs = {}
    for client in clients:
        port = _free_port()
        log = open(work / f"serve_{client}.log", "w")  # noqa: SIM115 (closed below)
        server = subprocess.Popen(
            [
                sys.executable, "-m", "reidkit", "serve", "-e", str(work / "serve.yaml"),
                f"results_dir={work / 'serve'}", f"serve.model={onnx}",
                f"serve.gallery_uri={work / f'live_gallery_{client}'}",
                f"serve.token_file={work / 'tokens.json'}",
                f"serve.port={port}", f"serve.association_calibration={calibration}",
            ],
            env=env, stdout=log, stderr=log,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline:
                try:
                    if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.2)
            cpu_before = _cpu_seconds(server.pid)
            if client == "asyncio":
                sent = asyncio.run(_open_loop_async(port, token, bodies, rate))
            else:
                sent = _open_loop_threads(url, token, bodies, rate)
            server_cpu = _cpu_seconds(server.pid) - cpu_before
            status = Path(f"/proc/{server.pid}/status").read_text()
            server_peak = int(re.search(r"VmHWM:\s+(\d+)", status).group(1)) / 1024
        finally:
            server.terminate()
            server.wait(timeout=30)
            log.close()
        answers = sent["answers"]
        given, renamed = {}, {}
        for n, i in enumerate(order):
            if answers[n] is not None:
                given[i] = answers[n]["global_id"]
                renamed |= {c["absorbed"]: c["kept"] for c in answers[n]["corrections"]}
        agree = np.mean(
            [final_identity(given[i], renamed) == expected[i] for i in range(len(tracks))
             if i in given]
        )  # fmt: skip
        seconds = np.array(sent["latencies"])
        runs[client] = {
            "rate_achieved_per_s": round(len(order) / sent["wall"], 1),
            "errors": sum(answer is None for answer in answers),
            "p50_ms": round(float(np.percentile(seconds, 50)) * 1e3, 2),
            "p99_ms": round(float(np.percentile(seconds, 99)) * 1e3, 2),
            "max_ms": round(float(seconds.max()) * 1e3, 2),
            "same_final_ids_as_library_replay": round(float(agree), 4),
            "identities_live": len({final_identity(g, renamed) for g in given.values()}),
            "server_cpu_ms_per_track": round(server_cpu / len(order) * 1e3, 2),
            "server_peak_rss_mb": round(server_peak),
        }
    return {
        "tracks": len(tracks),
        "cameras": cameras,
        "rate_asked_per_s": rate,
        "offline_associate_action_seconds": round(action_seconds, 1),
        "clients": runs,
    }


def _cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of process ``pid`` so far (all its threads)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def model_rate(model, batch: int = 64, images: int = 256) -> float:
    """Crops per second of the model alone (decoded and resized crops, CPU)."""
    import torch
    from PIL import Image

    from reidkit.association.features import crop_transform

    _, embedder, card, _ = model
    transform = crop_transform(card)
    files = sorted((CUHK03 / "bounding_box_test").iterdir())[:images]
    stacked = torch.stack([transform(Image.open(p).convert("RGB")) for p in files])
    with torch.inference_mode():
        embedder(stacked[:batch])
        began = time.perf_counter()
        for start in range(0, images, batch):
            embedder(stacked[start : start + batch])
    return images / (time.perf_counter() - began)


# --------------------------------------------------------------------------- report


def table(rows: list[dict], columns: list[str]) -> str:
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    for row in rows:
        lines.append("| " + " | ".join(str(row.get(c, "")) for c in columns) + " |")
    return "\n".join(lines)


#: Figures averaged over seeds, in the printed table's column order.
SUMMARY_KEYS = (
    "IDF1", "IDP", "IDR", "HOTA", "AssA", "pair_precision", "pair_recall", "identities",
    "agreement_with_offline_pair_F1", "threshold",
)  # fmt: skip


def summarise(rows: list[dict]) -> list[dict]:
    """Mean over seeds per (set without seed, method)."""
    np = _np()
    groups: dict[tuple[str, str], list[dict]] = defaultdict(list)
    for row in rows:
        groups[(re.sub(r" \((model )?seed \d+\)", "", row["set"]), row["method"])].append(row)
    out = []
    for (name, method), members in groups.items():
        merged = {"set": name, "method": method, "seeds": len(members)}
        for key in SUMMARY_KEYS:
            values = [m[key] for m in members if key in m]
            if values:
                merged[key] = round(float(np.mean(values)), 2)
        out.append(merged)
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cache", type=Path, default=DEFAULT_CACHE, help="source model cache")
    parser.add_argument("--model-seed", type=int, default=1, help="seed of the cached source model")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2], help="identity draws")
    parser.add_argument(
        "--crop-model-seeds",
        type=int,
        nargs="+",
        default=[1, 2],
        help="seeds of the source models that embed the crop-only sets (mean reported)",
    )
    parser.add_argument("--parts", nargs="+", default=["epfl", "crops", "scale", "live"])
    parser.add_argument("--live-rate", type=float, default=100.0, help="closing tracks per second")
    parser.add_argument(
        "--live-clients",
        nargs="+",
        choices=LIVE_CLIENTS,
        default=list(LIVE_CLIENTS),
        help="open-loop clients of the live part, each against a fresh server: asyncio (one "
        "thread, bare HTTP/1.1 keep-alive pool) and threads (16 threads sharing httpx)",
    )
    parser.add_argument(
        "--scale-tracks",
        type=int,
        nargs="+",
        default=[10_000, 40_000],
        help="synthetic site sizes (100 tracks per camera); the first also gets live latency",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "associate.json")
    args = parser.parse_args()
    import torch

    torch.set_num_threads(2)
    model = (
        source_model(args.cache, args.model_seed) if {"epfl", "crops"} & set(args.parts) else None
    )
    rows: list[dict] = []
    extra: dict = {"date": str(date.today()), "machine": machine(), "command": " ".join(sys.argv)}
    with tempfile.TemporaryDirectory(prefix="bench-associate-") as scratch:
        work = Path(scratch)
        if "epfl" in args.parts:
            for scene in ("terrace", "laboratory"):
                for seed in args.seeds:
                    for appearance in ("cuhk03", "mars", *(f"noise={n}" for n in NOISE_LEVELS)):
                        scored = seed == args.seeds[0]
                        rows += epfl_part(scene, work, appearance, seed, model, scored)
                        print(f"done {scene} {appearance} seed {seed}", flush=True)
        if "crops" in args.parts:
            for model_seed in args.crop_model_seeds:
                embedder = (
                    model if model_seed == args.model_seed else source_model(args.cache, model_seed)
                )
                for name, tracklets in crop_sets().items():
                    rows += crops_part(name, tracklets, embedder, model_seed)
                    print(f"done {name}, model seed {model_seed}", flush=True)
        if "scale" in args.parts:
            extra["scale"] = [
                scale_part(work, size, max(2, size // 100), full=k == 0)
                for k, size in enumerate(args.scale_tracks)
            ]
            if model is not None:
                extra["model_crops_per_second"] = round(model_rate(model), 1)
        if "live" in args.parts:
            size = args.scale_tracks[0]
            extra["live"] = live_part(
                work, size, max(2, size // 100), args.live_rate, args.live_clients
            )
            print(json.dumps(extra["live"], indent=2), flush=True)
    summary = summarise(rows)
    columns = ["set", "method", "seeds", *SUMMARY_KEYS]
    print(table(summary, columns))
    crop_rows = [row for row in rows if row["part"] == "crops"]
    if crop_rows:
        print("\nCrop-only sets, each source model:")
        print(table(crop_rows, ["set", "method", "IDF1", "pair_precision", "pair_recall"]))
    for key in ("scale", "live", "model_crops_per_second"):
        if key in extra:
            print(json.dumps(extra[key], indent=2))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(
        json.dumps({**extra, "summary": summary, "rows": rows}, indent=1, default=float)
    )
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss // 1024
    print(f"wrote {args.out}; peak memory of this process {peak} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

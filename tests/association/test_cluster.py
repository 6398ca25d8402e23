"""Offline association: known answers, constraints that always hold, the stability cut checked
against an independent implementation, real EPFL trajectories."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.cluster.hierarchy import linkage, to_tree
from scipy.spatial.distance import pdist
from scipy.stats import norm
from sklearn.preprocessing import StandardScaler

from reidkit.association.baselines import best_threshold, metropolis_style, threshold_links
from reidkit.association.cluster import (
    associate,
    associate_site,
    holds_constraints,
    learn_threshold,
)
from reidkit.association.constraints import Rules, TrackSet, pair_evidence
from reidkit.association.epfl import EpflSite
from reidkit.association.metrics import detections, identity_scores, weighted_identity_f1
from reidkit.association.readers import read_ground_truth, read_tracks
from reidkit.association.site import load_site
from reidkit.evaluation.cameras import FLAT_SPREAD, SITE, standardise_by_camera
from tests.association.conftest import simulated_embeddings


def unit(*angles: float) -> np.ndarray:
    return np.array([[np.cos(a), np.sin(a)] for a in angles], dtype=np.float32)


def track_set(cameras, spans, embeddings, ground=None) -> TrackSet:
    return TrackSet(
        cameras=np.asarray(cameras),
        start=np.array([s for s, _ in spans], dtype=float),
        end=np.array([e for _, e in spans], dtype=float),
        embeddings=np.asarray(embeddings, dtype=np.float32),
        ground=ground or [None] * len(cameras),
    )


def test_look_alikes_in_one_camera_at_one_moment_stay_two_people() -> None:
    """Tracks 0 and 1 look the same but share a moment in camera 0; track 2 (camera 1) looks
    like both: it joins one of them, never both."""
    tracks = track_set([0, 0, 1], [(0, 10), (5, 15), (30, 40)], unit(0.0, 0.01, 0.02))
    rules = Rules(np.zeros((2, 2)))
    labels = associate(tracks, rules, threshold=0.5).labels
    assert labels[0] != labels[1]
    assert labels[2] in (labels[0], labels[1])
    assert threshold_links(tracks, 0.5).tolist() == [0, 0, 0]  # the plain baseline merges all


def test_transit_minimum_and_views_apart() -> None:
    """Camera 1 is at least 20 s from camera 0: a track 5 s later, or at the same moment,
    cannot be the same person; one 25 s later can."""
    rules = Rules(np.array([[0.0, 20.0], [20.0, 0.0]]))
    same_look = unit(0.0, 0.0, 0.0, 0.0)
    tracks = track_set([0, 1, 1, 1], [(0, 10), (15, 20), (5, 8), (35, 40)], same_look)
    evidence = pair_evidence(tracks, rules)
    cannot = set(zip(evidence.cannot_i.tolist(), evidence.cannot_j.tolist(), strict=True))
    assert (0, 1) in cannot and (0, 2) in cannot and (0, 3) not in cannot
    labels = associate(tracks, rules, threshold=0.5, evidence=evidence).labels
    assert labels[0] == labels[3] and labels[0] != labels[1] and labels[0] != labels[2]


def test_same_place_at_one_moment_joins_tracks_that_look_different() -> None:
    """Two cameras see someone at the same ground point for 10 s: one person, even though the
    appearance (a strong camera change) is beyond the threshold, but not beyond the veto."""
    moments = np.arange(0.0, 10.0, 0.5)
    walk = np.column_stack([moments, moments * 0.5, np.zeros_like(moments)])
    other = walk.copy()
    other[:, 2] += 5.0  # a second person 5 m away, same moments, camera 1
    ground = [walk, walk + np.array([0.0, 0.1, 0.0]), other]
    tracks = track_set([0, 1, 1], [(0, 9.5)] * 3, unit(0.0, 1.2, 1.3), ground)
    rules = Rules(np.zeros((2, 2)), ground_gate=1.0)
    evidence = pair_evidence(tracks, rules)
    assert evidence.same_place_i.tolist() == [0] and evidence.same_place_j.tolist() == [1]
    assert (0, 2) in set(zip(evidence.cannot_i.tolist(), evidence.cannot_j.tolist(), strict=True))
    result = associate(tracks, rules, threshold=0.2, veto=1.5, evidence=evidence)
    assert result.labels.tolist() == [0, 0, 1] and result.merges_by_place == 1
    vetoed = associate(tracks, rules, threshold=0.2, veto=0.5, evidence=evidence)
    assert vetoed.labels.tolist() == [0, 1, 2]


def test_best_threshold_is_the_grid_point_the_answers_rate_highest() -> None:
    # three people 120 degrees apart, each seen by two cameras 0.1 rad apart, hours apart
    angles = [0.0, 0.1, 2.1, 2.2, 4.2, 4.3]
    tracks = track_set([0, 1] * 3, [(3600.0 * k, 3600.0 * k + 5) for k in range(6)], unit(*angles))
    truth = np.repeat([7, 8, 9], 2)
    sizes = np.ones(6)
    grid = [3.99, 0.001, 0.5]  # everyone one person (strangers ~3 apart) / all alone / right

    def idf1(labels: np.ndarray) -> float:
        return weighted_identity_f1(truth, labels, sizes)

    labels, threshold = best_threshold(tracks, np.zeros((2, 2)), idf1, grid)
    assert threshold == 0.5 and idf1(labels) == pytest.approx(100.0)
    fewest, threshold = best_threshold(
        tracks, np.zeros((2, 2)), lambda found: -len(set(found.tolist())), grid
    )
    assert threshold == 3.99 and len(set(fewest.tolist())) == 1


def test_site_threshold_is_the_normal_fit_of_proven_strangers() -> None:
    count = 40
    tracks = track_set(
        [0] * count, [(0, 10)] * count, simulated_embeddings(np.arange(count), 0.1, seed=2)
    )
    evidence = pair_evidence(tracks, Rules(np.zeros((1, 1))))
    assert len(evidence.proven_i) == count * (count - 1) // 2  # all share a moment in one camera
    threshold, veto = learn_threshold(tracks, evidence, strangers_per_track=2.0)
    e = tracks.embeddings
    d = 2 - 2 * np.sum(e[evidence.proven_i] * e[evidence.proven_j], axis=1)
    assert threshold == pytest.approx(d.mean() + norm.ppf(2.0 / (count - 1)) * d.std(), rel=1e-5)
    assert veto == pytest.approx(np.median(d), rel=1e-5)


def test_camera_standardisation_equals_a_per_camera_standard_scaler() -> None:
    """Each camera with enough tracks standardised by its own statistics (checked against
    scikit-learn's StandardScaler fitted per camera), a camera with too few by the site's (a
    StandardScaler fitted on every row); every row unit length."""
    rng = np.random.default_rng(0)
    cameras = np.array([0] * 12 + [1] * 9 + [2] * 3)
    raw = rng.normal(size=(24, 6)) * rng.uniform(0.1, 3.0, size=(3, 6))[cameras] + cameras[:, None]
    raw = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    out, means, scales = standardise_by_camera(raw, cameras)
    assert sorted(means) == sorted(scales) == [SITE, 0, 1]
    expected = StandardScaler().fit(raw.astype(np.float64)).transform(raw.astype(np.float64))
    for camera in (0, 1):
        rows = cameras == camera
        expected[rows] = StandardScaler().fit_transform(raw[rows].astype(np.float64))
    expected /= np.linalg.norm(expected, axis=1, keepdims=True)
    np.testing.assert_allclose(out, expected, atol=1e-5)
    few, few_means, _ = standardise_by_camera(raw[:5], cameras[:5])  # under 8 rows in all
    assert few_means == {}
    np.testing.assert_allclose(few, raw[:5], atol=1e-6)
    again, _, _ = standardise_by_camera(raw, cameras, means, scales)  # as a live assigner does
    np.testing.assert_allclose(again, out, atol=1e-6)
    centred_only, _, _ = standardise_by_camera(raw, cameras, means, {})  # an old calibration
    assert not np.allclose(centred_only, out, atol=1e-3)


def test_strangers_of_two_small_cameras_do_not_join_each_other_first() -> None:
    """Two cameras saw ten people each and two small cameras two people each, all sharing the
    model's common direction. Were the small cameras left as they are, each of their tracks
    would be nearest to the other small camera's stranger (both keep the common direction the
    large cameras lose); on the site's statistics each is nearest to its own person."""
    rng = np.random.default_rng(3)
    looks = rng.normal(size=(10, 32))
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    common = rng.normal(size=32)
    common /= np.linalg.norm(common)
    cameras = np.array([0] * 10 + [1] * 10 + [2, 2, 3, 3])
    people = np.array([*range(10), *range(10), 0, 1, 2, 3])
    raw = 2.0 * common + looks[people] + 0.2 * rng.normal(size=(24, 32))
    raw = (raw / np.linalg.norm(raw, axis=1, keepdims=True)).astype(np.float32)
    standardised, means, scales = standardise_by_camera(raw, cameras)
    assert sorted(means) == [SITE, 0, 1]
    own_only = {key: value for key, value in means.items() if key != SITE}
    small_left_alone, _, _ = standardise_by_camera(raw, cameras, own_only, scales)

    def nearest(embeddings: np.ndarray) -> np.ndarray:
        similarity = embeddings @ embeddings.T
        np.fill_diagonal(similarity, -np.inf)
        return similarity[20:].argmax(1)

    assert people[nearest(standardised)].tolist() == [0, 1, 2, 3]
    assert cameras[nearest(small_left_alone)].tolist() == [2, 2, 2, 2]  # small-camera strangers
    assert not (people[nearest(small_left_alone)] == people[20:]).any()


def test_a_dimension_a_camera_never_used_does_not_blow_up_a_later_track() -> None:
    rng = np.random.default_rng(1)
    raw = np.column_stack([rng.normal(size=(10, 3)), np.zeros(10)]).astype(np.float32)
    _, means, scales = standardise_by_camera(raw, np.zeros(10, dtype=int))
    typical = np.median(raw.std(0))
    assert scales[0][3] == pytest.approx(typical, rel=1e-5) and FLAT_SPREAD * typical > 0
    later = np.array([[0.5, 0.5, 0.5, 0.5]], dtype=np.float32)
    out, _, _ = standardise_by_camera(later, np.zeros(1, dtype=int), means, scales)
    assert abs(out[0, 3]) < 0.9  # one weight among four, not the whole vector


def test_a_camera_that_compresses_looks_is_matched_once_its_spread_is_taken_out() -> None:
    """Ten people seen by a sharp camera and by a blurred one that shows the same embeddings
    changed per dimension (squeezed along half the dimensions, stretched by its own flicker
    along the rest, shifted by its colour cast). Removing only each camera's mean leaves no
    threshold that separates a person's two tracks from two strangers; dividing by each
    camera's spread undoes the change exactly (the known answer: every person's two tracks
    coincide), and the association finds the ten people with no stranger joined."""
    rng = np.random.default_rng(2)
    looks = rng.normal(size=(10, 16))
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    gain = np.where(np.arange(16) < 8, 0.05, 4.0)
    blurred = looks * gain + rng.normal(size=16) * 0.3
    raw = np.concatenate([looks, blurred]).astype(np.float32)
    cameras = np.repeat([0, 1], 10)
    people = np.tile(np.arange(10), 2)
    same = people[:, None] == people[None, :]
    across = cameras[:, None] != cameras[None, :]

    def separable(embeddings: np.ndarray) -> bool:
        """Whether every person's cross-camera pair is closer than every cross-camera stranger."""
        distance = 2.0 - 2.0 * embeddings @ embeddings.T
        return distance[same & across].max() < distance[~same & across].min()

    centred = raw - np.array([raw[cameras == c].mean(0) for c in (0, 1)])[cameras]
    centred /= np.linalg.norm(centred, axis=1, keepdims=True)
    standardised, _, _ = standardise_by_camera(raw, cameras)
    np.testing.assert_allclose(standardised[10:], standardised[:10], atol=1e-5)
    assert separable(standardised) and not separable(centred)
    tracks = track_set(cameras, [(k * 100.0, k * 100.0 + 1) for k in range(20)], raw)
    result, calibration, _ = associate_site(tracks, np.zeros((2, 2)))
    assert calibration.source == "stability" and sorted(calibration.camera_scales) == [SITE, 0, 1]
    assert (result.labels[:, None] == result.labels[None, :]).tolist() == same.tolist()


def reference_stability_cut(points: np.ndarray) -> list[set[int]]:
    """HDBSCAN's excess-of-mass selection on scipy's average-linkage tree, top down."""
    tree = to_tree(linkage(pdist(points, "sqeuclidean"), "average"))

    def leaves(node) -> list[int]:
        return node.pre_order()

    def best(node, birth: float) -> tuple[float, list[set[int]]]:
        """(stability, selection) of the cluster ``node`` born at level ``birth``."""
        # follow the chain while one side is a single point (it falls out of the cluster)
        total, current = 0.0, node
        while not current.is_leaf():
            level = 1.0 / max(current.dist, 1e-6)
            left, right = current.get_left(), current.get_right()
            if left.get_count() >= 2 and right.get_count() >= 2:
                total += current.get_count() * (level - birth)
                kids = [best(child, level) for child in (left, right)]
                below = sum(k[0] for k in kids)
                if total >= below:
                    return total, [set(leaves(node))]
                return below, [s for k in kids for s in k[1]]
            if left.get_count() < 2 and right.get_count() < 2:  # the last points fall out
                total += current.get_count() * (level - birth)
                break
            small, big = (left, right) if left.get_count() < 2 else (right, left)
            total += small.get_count() * (level - birth)
            current = big
        return total, [set(leaves(node))]

    root_level = 1.0 / max(tree.dist, 1e-6)
    kids = [best(child, root_level) for child in (tree.get_left(), tree.get_right())]
    return [s for k in kids for s in k[1] if len(s) >= 2]


@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_stability_cut_matches_an_independent_excess_of_mass(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    # the cut alone: no sighting released afterwards
    monkeypatch.setattr("reidkit.association.cluster._release_outsiders", lambda labels, *_: labels)
    rng = np.random.default_rng(seed)
    people = rng.integers(0, 6, size=30)
    embeddings = simulated_embeddings(people, noise=0.6, seed=seed, dim=16)
    # every track its own camera: no pair of one camera's tracks is joined before the tree
    tracks = track_set(np.arange(30), [(k * 10.0, k * 10.0 + 1) for k in range(30)], embeddings)
    labels = associate(tracks, Rules(np.zeros((30, 30))), threshold=None, neighbours=29).labels
    mine = [set(np.flatnonzero(labels == k).tolist()) for k in np.unique(labels)]
    expected = reference_stability_cut(embeddings.astype(np.float64))
    assert sorted(map(sorted, (g for g in mine if len(g) >= 2))) == sorted(map(sorted, expected))


def test_a_trackers_pieces_of_one_visit_are_one_person_under_the_stability_cut(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Eight people, each seen by two cameras, and a tracker that cut every visit in two: the
    two pieces of a visit are nearly the same look, a person's two cameras differ more. Left
    to the stability cut, each visit's tight pair would be the most stable group and stay a
    person of its own; joined first as one camera's mutual nearest tracks, each person is one
    identity across both cameras (the known answer), and nothing joins across people."""
    rng = np.random.default_rng(5)
    looks = rng.normal(size=(8, 32))
    looks /= np.linalg.norm(looks, axis=1, keepdims=True)
    people = np.repeat(np.arange(8), 4)  # per person: camera 0 twice, camera 1 twice
    cameras = np.tile([0, 0, 1, 1], 8)
    # noise of norm about 0.8 between a person's two visits, 0.1 between a visit's two pieces
    per_visit = rng.normal(size=(8, 2, 32)).repeat(2, axis=1).reshape(32, 32)
    visit = looks[people] + 0.8 / np.sqrt(32) * per_visit
    pieces = visit + 0.1 / np.sqrt(32) * rng.normal(size=(32, 32))
    pieces = (pieces / np.linalg.norm(pieces, axis=1, keepdims=True)).astype(np.float32)
    tracks = track_set(cameras, [(k * 100.0, k * 100.0 + 1) for k in range(32)], pieces)
    rules = Rules(np.zeros((2, 2)))
    joined = associate(tracks, rules, threshold=None)
    assert (joined.labels[:, None] == joined.labels[None, :]).tolist() == (
        people[:, None] == people[None, :]
    ).tolist()
    monkeypatch.setattr("reidkit.association.cluster._join_camera_twins", lambda *_: 0)
    apart = associate(tracks, rules, threshold=None)
    assert apart.identities == 16  # every visit its own "person": one camera's pieces only
    assert all(len(set(cameras[apart.labels == k])) == 1 for k in range(apart.identities))


@pytest.mark.parametrize("seed", [2, 4, 6, 8])
def test_a_set_cut_in_pieces_gets_the_identities_of_the_uncut_set(seed: int) -> None:
    """Eight people seen four times each (twice by camera 0, once by cameras 1 and 2), then the
    same visits each handed over in two nearly identical pieces: the stability cut counts a
    visit's pieces as one sighting, so the pieces stay together and the visits are grouped as
    the uncut set's are. Counted in tracks, each visit was a candidate identity of its own and
    the cut set came out with more identities than the uncut one (every seed here)."""
    rng = np.random.default_rng(seed)
    looks = rng.normal(size=(8, 32))
    people = np.repeat(np.arange(8), 4)
    cameras = np.tile([0, 0, 1, 2], 8)
    visits = looks[people] / np.linalg.norm(looks[people], axis=1, keepdims=True)
    visits = visits + 0.9 / np.sqrt(32) * rng.normal(size=(32, 32))
    visits /= np.linalg.norm(visits, axis=1, keepdims=True)
    pieces = visits.repeat(2, axis=0) + 1e-3 * rng.normal(size=(64, 32))
    pieces /= np.linalg.norm(pieces, axis=1, keepdims=True)
    rules = Rules(np.zeros((3, 3)))

    def labels(cams: np.ndarray, embeddings: np.ndarray) -> np.ndarray:
        spans = [(k * 100.0, k * 100.0 + 1) for k in range(len(cams))]
        tracks = track_set(cams, spans, embeddings.astype(np.float32))
        return associate(tracks, rules, threshold=None).labels

    whole = labels(cameras, visits)
    cut = labels(cameras.repeat(2), pieces)
    assert (cut[::2] == cut[1::2]).all()
    visits_cut = cut[::2]
    assert (whole[:, None] == whole[None, :]).tolist() == (
        visits_cut[:, None] == visits_cut[None, :]
    ).tolist()


@pytest.mark.parametrize("seed", range(6))
def test_a_person_seen_once_is_released_from_a_look_alikes_identity(
    seed: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Fifteen people seen by two cameras and fifteen seen once: average linkage joins some of
    the people seen once to a look-alike's pair, though neither of the pair has them among
    its two nearest tracks. Released, more of them are people of their own and the score
    against the truth rises; no person seen twice is split by it, and afterwards every
    sighting of an identity of three sightings or more is among some other member's nearest."""
    people = np.concatenate([np.repeat(np.arange(15), 2), np.arange(15, 30)])
    cameras = np.concatenate([np.tile([0, 1], 15), np.zeros(15, dtype=int)])
    embeddings = simulated_embeddings(people, noise=1.0, seed=seed, dim=32)
    tracks = track_set(cameras, [(k * 100.0, k * 100.0 + 1) for k in range(45)], embeddings)
    rules = Rules(np.zeros((2, 2)))
    released = associate(tracks, rules, threshold=None).labels
    monkeypatch.setattr("reidkit.association.cluster._release_outsiders", lambda labels, *_: labels)
    kept = associate(tracks, rules, threshold=None).labels

    def seen_once_alone(labels: np.ndarray) -> int:
        return sum(int((labels == labels[k]).sum() == 1) for k in range(30, 45))

    def seen_twice_split(labels: np.ndarray) -> int:
        return int((labels[0:30:2] != labels[1:30:2]).sum())

    sizes = np.ones(45)
    assert seen_once_alone(released) > seen_once_alone(kept)
    assert weighted_identity_f1(people, released, sizes) > weighted_identity_f1(people, kept, sizes)
    assert seen_twice_split(released) == seen_twice_split(kept)
    nearest = np.argsort(-(embeddings @ embeddings.T) + 10 * np.eye(45), axis=1)
    twin = nearest[:, 0]  # one camera's mutual nearest tracks are one sighting
    twin = np.where((twin[twin] == np.arange(45)) & (cameras[twin] == cameras), twin, -1)
    for label in np.unique(released):
        members = np.flatnonzero(released == label)
        sightings = {min(track, twin[track]) if twin[track] >= 0 else track for track in members}
        for track in members if len(sightings) >= 3 else []:
            sighting = [track, twin[track]]
            others = members[~np.isin(members, sighting)]
            assert np.isin(nearest[others, : len(members) - 1], sighting).any()


@pytest.mark.parametrize("open_set", ["stability", "auto"])
def test_no_tracks_give_no_identities(open_set: str) -> None:
    tracks = TrackSet(np.zeros(0, int), np.zeros(0), np.zeros(0), np.zeros((0, 8), np.float32), [])
    result, _, _ = associate_site(tracks, np.zeros((1, 1)), open_set=open_set)
    assert result.labels.tolist() == [] and result.identities == 0


@st.composite
def random_sites(draw) -> tuple[TrackSet, np.ndarray]:
    count = draw(st.integers(2, 40))
    cameras = draw(st.integers(1, 4))
    rng = np.random.default_rng(draw(st.integers(0, 2**31)))
    start = rng.uniform(0, 100, size=count).round(1)
    end = start + rng.uniform(0, 30, size=count).round(1)
    people = rng.integers(0, max(1, count // 3), size=count)
    embeddings = simulated_embeddings(people, noise=draw(st.floats(0.0, 2.0)), seed=1, dim=8)
    tracks = TrackSet(rng.integers(0, cameras, size=count), start, end, embeddings, [None] * count)
    transit = rng.uniform(0, 20, size=(cameras, cameras)) * (rng.random((cameras, cameras)) < 0.5)
    np.fill_diagonal(transit, 0)
    return tracks, transit


@settings(max_examples=60, deadline=None)
@given(random_sites(), st.sampled_from(["auto", "stability"]), st.floats(0.05, 3.0))
def test_no_identity_ever_holds_two_tracks_that_cannot_be_one_person(site, open_set, thr) -> None:
    """Whatever the tracks and settings: no identity has two co-existing tracks of one camera,
    nor two tracks closer in time than their cameras' transit minimum."""
    tracks, transit = site
    for match_threshold in (None, thr):
        result, _, evidence = associate_site(
            tracks, transit, open_set=open_set, match_threshold=match_threshold
        )
        assert holds_constraints(result.labels, evidence)
        same_camera = tracks.cameras[:, None] == tracks.cameras[None, :]
        overlap = np.minimum.outer(tracks.end, tracks.end) >= np.maximum.outer(
            tracks.start, tracks.start
        )
        together = result.labels[:, None] == result.labels[None, :]
        np.fill_diagonal(together, False)
        assert not np.any(together & same_camera & overlap)


def test_real_epfl_trajectories_with_simulated_looks(terrace: EpflSite) -> None:
    """EPFL terrace's first minute: real paths and ids, 4 overlapping cameras. With its
    homographies the site alone names everyone; the published baseline does not."""
    site = load_site(terrace.site_file)
    tracks = read_tracks(site)
    people = np.array([terrace.people[(t.camera, t.track_id)] for t in tracks])
    truth = read_ground_truth(site)
    true = detections(truth, [t.track_id for t in truth], site)
    embeddings = simulated_embeddings(people, noise=1.0, seed=3)
    track_set = TrackSet.from_tracks(tracks, embeddings, site.names)
    result, calibration, evidence = associate_site(track_set, site.min_transit_matrix())
    assert calibration.source == "site" and calibration.ground_gate is not None
    assert holds_constraints(result.labels, evidence)
    ours = identity_scores(true, detections(tracks, result.labels.tolist(), site))["IDF1"]
    baseline = metropolis_style(track_set, calibration.ground_gate)
    theirs = identity_scores(true, detections(tracks, baseline.tolist(), site))["IDF1"]
    assert ours >= 95.0, ours
    assert ours >= theirs + 5.0, (ours, theirs)

"""Pseudo-labels on real crops: must-links and cannot-links hold, giants and outliers stay out."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from torch.utils.data import DataLoader

from reidkit.adaptation import (
    OUTLIER,
    AdaptationError,
    AdaptSettings,
    Clustering,
    ClusterSettings,
    PseudoLabeller,
    TargetDataModule,
    cluster,
    co_occurring_tracks,
    site_batchnorm,
)
from reidkit.adaptation.loop import MIN_MIRROR_AGREEMENT
from reidkit.adaptation.pseudo_labels import (
    MAX_CLUSTER_SHARE,
    cross_camera_members,
    mirror_agreement,
)
from reidkit.data import ImageDataset, ImageRecord, load_split
from reidkit.data.preprocessing import resolve_preprocessing
from reidkit.data.transforms import build_eval_transform
from reidkit.evaluation.features import extract_embeddings
from reidkit.models.restore import restore_model
from tests.adaptation.conftest import SIZE


@pytest.fixture(scope="module")
def embedded(adapt_inputs: tuple[Path, Path]) -> tuple[list[ImageRecord], torch.Tensor]:
    """The real target crops (16 people x 2 cameras x 8 views) and their source embeddings."""
    source, target = adapt_inputs
    records = load_split(target, "target", keep_distractors=True)
    model, card = restore_model(source)
    transform = build_eval_transform(resolve_preprocessing(card=card))
    loader = DataLoader(ImageDataset(records, transform), batch_size=64)
    return records, extract_embeddings(model, loader, torch.device("cpu"), flip=False).features


def _same_label(labels: np.ndarray, members: np.ndarray) -> bool:
    return len(set(labels[members].tolist())) == 1


def test_must_links_put_every_crop_of_a_track_in_one_cluster(embedded) -> None:
    """Tracks of two views each (one person, one camera): every crop of a track gets the
    track's label, although the features alone put some tracks' two crops apart."""
    records, feats = embedded
    tracks = two_view_tracks(records)
    members = {t: np.flatnonzero(np.asarray(tracks) == t) for t in set(tracks)}
    free = cluster(feats, ClusterSettings()).labels
    assert any(not _same_label(free, m) for m in members.values()), "needs tracks split apart"
    linked = cluster(feats, ClusterSettings(), tracks)
    assert all(_same_label(linked.labels, m) for m in members.values())
    assert linked.num_clusters >= 3 and linked.coverage >= 0.5 * np.mean(free != OUTLIER)


def two_view_tracks(records: list[ImageRecord]) -> list[str]:
    """Tracks of two consecutive views of one person in one camera (4 per person-camera)."""
    return [f"{r.pid}-{r.camid}-{(int(r.path.stem[-1]) + 1) // 2}" for r in records]


def _same_camera_tracks_together(labels: np.ndarray, tracks: list[str], cameras: list[int]) -> int:
    """How many clusters hold two tracks of one camera."""
    count = 0
    for label in set(labels.tolist()) - {OUTLIER}:
        inside = {(tracks[i], cameras[i]) for i in np.flatnonzero(labels == label)}
        per_camera = [camera for _, camera in inside]
        count += len(per_camera) != len(set(per_camera))
    return count


def test_cannot_links_split_tracks_seen_at_once_by_one_camera(embedded) -> None:
    """Every camera sees all its tracks at the same moment: no cluster may then hold two tracks
    of one camera, although left alone the clustering puts several together."""
    records, feats = embedded
    tracks = two_view_tracks(records)
    cameras = [r.camid for r in records]
    together = cluster(feats, ClusterSettings(), tracks).labels
    assert _same_camera_tracks_together(together, tracks, cameras) > 0
    # Each track spans seconds 0-1 (its two views at 0 and 1): all tracks of a camera co-exist.
    timestamps = [float(int(r.path.stem[-1]) % 2) for r in records]
    conflicts = co_occurring_tracks(tracks, cameras, timestamps)
    assert (tracks[0], tracks[2]) in conflicts and (tracks[2], tracks[0]) in conflicts
    apart = cluster(feats, ClusterSettings(), tracks, conflicts)
    assert apart.splits > 0
    assert _same_camera_tracks_together(apart.labels, tracks, cameras) == 0
    assert apart.num_clusters > 0


def test_co_occurring_tracks_by_hand() -> None:
    tracks = ["a", "a", "b", "b", "c", "c", "d", None]
    cameras = [1, 1, 1, 1, 1, 1, 2, 1]
    times = [0.0, 10.0, 5.0, 12.0, 20.0, 30.0, 5.0, 5.0]
    # a [0, 10] and b [5, 12] overlap in camera 1; c [20, 30] meets nobody; d is alone in
    # camera 2; the crop without a track says nothing.
    assert co_occurring_tracks(tracks, cameras, times) == {("a", "b"), ("b", "a")}
    assert co_occurring_tracks(tracks, cameras, [None] * 8) == set()


def test_a_giant_cluster_is_not_a_person() -> None:
    """Over half the crops along one path chain into one cluster: outliers, not one person."""
    gen = torch.Generator().manual_seed(0)
    people = torch.randn(10, 64, generator=gen)
    small = people.repeat_interleave(8, 0) + 0.05 * torch.randn(80, 64, generator=gen)
    start, end = torch.randn(2, 64, generator=gen)
    path = start + torch.linspace(0, 1, 100)[:, None] * (end - start)
    chain = path + 0.001 * torch.randn(100, 64, generator=gen)
    result = cluster(torch.cat([small, chain]), ClusterSettings(k1=10, eps=0.6))
    assert (result.labels[80:] == OUTLIER).all()
    assert np.bincount(result.labels[result.labels != OUTLIER]).max() <= MAX_CLUSTER_SHARE * 180
    assert result.num_clusters == 10
    assert result.coverage == pytest.approx(80 / 180)


def test_mirror_agreement_tells_people_from_noise(embedded) -> None:
    records, feats = embedded
    model, card = restore_model(Path(str(records[0].path)).parents[2] / "source.pth")
    transform = build_eval_transform(resolve_preprocessing(card=card))
    loader = DataLoader(ImageDataset(records, transform), batch_size=64)
    mirrored = extract_embeddings(
        lambda x: model(torch.flip(x, dims=[3])), loader, torch.device("cpu"), flip=False
    ).features
    found = cluster(feats, ClusterSettings())
    assert mirror_agreement(found, feats, mirrored) > MIN_MIRROR_AGREEMENT + 0.15
    # Clusters of crops against the embeddings of other crops: agreement by chance only (0).
    shuffled = mirrored[torch.randperm(len(mirrored), generator=torch.Generator().manual_seed(0))]
    assert abs(mirror_agreement(found, feats, shuffled)) < 0.2


def _round_loader(records: list[ImageRecord], labels: np.ndarray, cross_camera: bool) -> DataLoader:
    """The round's training loader for ``labels`` as the labeller's pseudo-labels."""
    settings = AdaptSettings(
        ClusterSettings(), False, 16, 4, 0, 0, cross_camera_training=cross_camera
    )
    labeller = PseudoLabeller(records, lambda image: image, settings)
    labeller.labels = labels
    transform = build_eval_transform(
        resolve_preprocessing(
            card={
                "input_height": SIZE[0],
                "input_width": SIZE[1],
                "pixel_mean": (0.5,) * 3,
                "pixel_std": (0.5,) * 3,
            }
        )
    )
    return TargetDataModule(records, transform, labeller, settings).train_dataloader()


def test_outliers_stay_out_of_the_round(embedded) -> None:
    records, _ = embedded
    labels = np.arange(len(records)) // 8
    labels[::3] = OUTLIER
    loader = _round_loader(records, labels, cross_camera=False)
    dataset: ImageDataset = loader.dataset
    assert len(dataset) == int((labels != OUTLIER).sum())
    assert {r.path for r in dataset.records} == {
        r.path for r, label in zip(records, labels, strict=True) if label != OUTLIER
    }
    seen = torch.cat([batch_labels for _, batch_labels, _ in loader])
    assert len(seen) and (seen >= 0).all()


def test_a_round_trains_on_the_clusters_two_cameras_saw(embedded) -> None:
    """Clusters of one person's crops: the first 8 people's span both cameras, the others'
    are split by camera. Only the cross-camera clusters' crops train; the cluster ids keep
    their numbers (the memory holds every cluster as a negative)."""
    records, _ = embedded
    people = np.asarray([r.pid for r in records])
    cameras = np.asarray([r.camid for r in records])
    ids = {pid: n for n, pid in enumerate(dict.fromkeys(people.tolist()))}
    person = np.asarray([ids[p] for p in people])
    assert len(np.unique(cameras)) == 2 and len(ids) == 16
    labels = np.where(person < 8, person, 8 + 2 * (person - 8) + (cameras == cameras.max()))
    labels[::5] = OUTLIER
    expected = {
        r.path for r, label, p in zip(records, labels, person, strict=True)
        if label != OUTLIER and p < 8
    }  # fmt: skip
    dataset: ImageDataset = _round_loader(records, labels, cross_camera=True).dataset
    assert {r.path for r in dataset.records} == expected
    assert set(dataset.labels) == set(range(8))
    every = _round_loader(records, labels, cross_camera=False).dataset
    assert len(every) == int((labels != OUTLIER).sum())


def test_per_camera_standardisation_finds_people_across_a_camera_cast() -> None:
    """12 people, each seen by two cameras; the second camera adds its own look (one offset
    for all its crops) larger than what tells the people apart. Raw embeddings group by
    camera; standardised per camera they group by person, both cameras in each cluster."""
    gen = torch.Generator().manual_seed(0)
    people = torch.randn(12, 64, generator=gen)
    cast = 3.0 * torch.randn(64, generator=gen)
    crops = people.repeat_interleave(12, 0) + 0.3 * torch.randn(144, 64, generator=gen)
    cameras = np.tile(np.repeat([0, 1], 6), 12)
    crops[torch.as_tensor(cameras == 1)] += cast
    truth = np.repeat(np.arange(12), 12)

    def cross_camera_people(found) -> int:
        """People whose crops of both cameras all sit in one cluster of theirs alone."""
        return sum(
            len(set(found.labels[truth == p])) == 1
            and found.labels[truth == p][0] != OUTLIER
            and set(np.flatnonzero(found.labels == found.labels[truth == p][0]))
            == set(np.flatnonzero(truth == p))
            for p in range(12)
        )

    raw = cluster(crops, ClusterSettings(k1=10, per_camera=False), cameras=cameras)
    standardised = cluster(crops, ClusterSettings(k1=10), cameras=cameras)
    assert cross_camera_people(raw) == 0 and raw.linked == 0.0
    assert cross_camera_people(standardised) == 12
    assert standardised.linked == 1.0


def test_cameras_that_saw_a_few_people_keep_their_embeddings() -> None:
    """Four people a camera, other people in each (as in five of mars_mini's six train cameras,
    1-6 tracklets each), where each of camera 1's people differs from one of camera 0's by the
    same change. With so few people that change cannot be told from a camera's cast: taken out,
    it would merge four pairs of strangers across cameras. The cameras keep their embeddings
    and the eight people stay apart."""
    gen = torch.Generator().manual_seed(1)
    first = torch.randn(4, 64, generator=gen)
    people = torch.cat([first, first + 3.0 * torch.randn(64, generator=gen)])
    crops = people.repeat_interleave(10, 0) + 0.3 * torch.randn(80, 64, generator=gen)
    cameras = np.repeat([0, 1], 40)
    kept = cluster(crops, ClusterSettings(k1=10), cameras=cameras)
    raw = cluster(crops, ClusterSettings(k1=10, per_camera=False), cameras=cameras)
    assert np.array_equal(kept.labels, raw.labels)
    assert kept.num_clusters == 8 and kept.linked == 0.0


def test_site_batchnorm_takes_the_target_crops_statistics(adapt_inputs) -> None:
    """Every BatchNorm layer's statistics become the target crops' and no weight moves: the
    first layer's running mean equals the mean of its inputs over all target crops, computed
    here independently with a hook on the untouched model."""
    source, target = adapt_inputs
    records = load_split(target, "target", keep_distractors=True)
    model, card = restore_model(source)
    transform = build_eval_transform(resolve_preprocessing(card=card))
    first_bn = model.backbone.features[0][1]
    assert isinstance(first_bn, torch.nn.BatchNorm2d)
    inputs: list[torch.Tensor] = []
    hook = first_bn.register_forward_hook(lambda _m, args, _out: inputs.append(args[0]))
    loader = DataLoader(ImageDataset(records, transform), batch_size=len(records))
    model.eval()
    with torch.no_grad():
        model(next(iter(loader))[0])
    hook.remove()
    expected = inputs[0].mean(dim=(0, 2, 3))
    assert not torch.allclose(first_bn.running_mean, expected, atol=1e-3), "needs a shift"
    before = {k: v.clone() for k, v in model.named_parameters()}

    assert len(records) % 32 == 0  # equal batches: the mean of batch means is the mean
    site_batchnorm(model, DataLoader(ImageDataset(records, transform), batch_size=32), "cpu")

    torch.testing.assert_close(first_bn.running_mean, expected, atol=1e-5, rtol=1e-5)
    assert all(torch.equal(v, before[k]) for k, v in model.named_parameters())
    assert not any(m.training for m in model.modules()) and first_bn.momentum == 0.1


def test_a_round_is_kept_only_when_it_links_more_crops_across_cameras(embedded) -> None:
    """A round whose silhouette rose on the same cross-camera clusters (what training on its
    own clusters does anyway) is not kept; one that links clearly more crops and scores higher
    is. "Clearly" is counted in tracks where the crops have them: one more person's two tracks
    joining across cameras is a rise that 32 tracks' own moves can give by chance, while the
    same rise over 256 single crops is not."""
    records, _ = embedded
    pids = np.array([r.pid for r in records])
    cameras = np.array([r.camid for r in records])
    people = np.unique(pids)
    assert len(people) == 16 and len(np.unique(cameras)) == 2
    module = SimpleNamespace(model=torch.nn.Linear(2, 2))

    def linking(count: int, silhouette: float) -> Clustering:
        """The first ``count`` people one cluster each over both cameras, the others one
        cluster per camera."""
        joint = np.isin(pids, people[:count])
        _, labels = np.unique(np.where(joint, pids * 10, pids * 10 + cameras), return_inverse=True)
        linked = float(cross_camera_members(labels, cameras).mean())
        return Clustering(labels, int(labels.max()) + 1, 1.0, linked, silhouette)

    settings = AdaptSettings(ClusterSettings(), False, 16, 4, 0, 0)
    crops = PseudoLabeller(records, lambda image: image, settings)
    tracked = PseudoLabeller(
        records, lambda image: image, settings, tracks=[f"{r.pid}-{r.camid}" for r in records]
    )
    rounds = [(4, 0.6), (4, 0.9), (5, 0.7), (8, 0.7)]
    for number, (count, silhouette) in enumerate(rounds):
        crops._record(number, linking(count, silhouette), module)
        tracked._record(number, linking(count, silhouette), module)
        assert crops.best["round"] == [0, 0, 2, 3][number]
        assert tracked.best["round"] == [0, 0, 0, 3][number]
    assert crops.best["quality"] == pytest.approx(0.35) == tracked.best["quality"]


def test_a_checkpoint_of_an_older_guard_is_refused_in_one_line(embedded) -> None:
    """Resuming needs round 0's cross-camera links, which older checkpoints did not keep."""
    records, _ = embedded
    settings = AdaptSettings(ClusterSettings(), False, 16, 4, 0, 0)
    state = PseudoLabeller(records, lambda image: image, settings).state_dict()
    PseudoLabeller(records, lambda image: image, settings).load_state_dict(state)
    del state["source_links"]
    with pytest.raises(AdaptationError, match="started by an older reidkit"):
        PseudoLabeller(records, lambda image: image, settings).load_state_dict(state)

"""Losses against hand computations and brute-force references; ReidCriterion's composition."""

from __future__ import annotations

import math

import pytest
import torch

from reidkit.config.loading import apply_overrides
from reidkit.config.spec import ExperimentSpec
from reidkit.engine.module import loss_terms
from reidkit.errors import SpecError
from reidkit.losses import (
    CenterLoss,
    CrossEntropyLabelSmooth,
    ReidCriterion,
    TripletLoss,
    euclidean_distances,
)
from reidkit.models import ReidOutput

LABELS = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])


def brute_force_triplet(features: torch.Tensor, labels: torch.Tensor, margin: float) -> float:
    """Batch-hard triplet loss written as plain loops over anchors."""
    total = 0.0
    n = len(labels)
    for a in range(n):
        d = [torch.dist(features[a], features[j]).item() for j in range(n)]
        hardest_pos = max(d[j] for j in range(n) if labels[j] == labels[a])
        hardest_neg = min(d[j] for j in range(n) if labels[j] != labels[a])
        gap = hardest_pos - hardest_neg
        total += math.log1p(math.exp(gap)) if margin == 0 else max(0.0, gap + margin)
    return total / n


def test_label_smoothing_matches_hand_computation() -> None:
    logits, labels = torch.tensor([[2.0, 0.5, -1.0], [0.1, 0.2, 3.0]]), torch.tensor([0, 1])
    epsilon, k = 0.1, 3
    expected = 0.0
    for row, label in zip(logits, labels.tolist(), strict=True):
        log_p = torch.log_softmax(row, dim=0)
        targets = [(1 - epsilon) * (j == label) + epsilon / k for j in range(k)]
        expected += -sum(t * log_p[j].item() for j, t in enumerate(targets))
    loss = CrossEntropyLabelSmooth(num_classes=3, epsilon=epsilon)(logits, labels)
    assert loss.item() == pytest.approx(expected / 2, rel=1e-6)
    with pytest.raises(ValueError, match="expected 4"):
        CrossEntropyLabelSmooth(num_classes=4)(logits, labels)


def test_euclidean_distances_match_torch_cdist() -> None:
    features = torch.randn(6, 5)
    distances = euclidean_distances(features)
    off_diagonal = ~torch.eye(6, dtype=torch.bool)
    reference = torch.cdist(features, features)
    torch.testing.assert_close(distances[off_diagonal], reference[off_diagonal])
    assert distances.diagonal().max() < 1e-2  # cancellation noise, but never NaN


@pytest.mark.parametrize("margin", [0.3, 0.0])
def test_triplet_loss_matches_brute_force(margin: float) -> None:
    torch.manual_seed(1)
    features = torch.randn(8, 16)
    loss = TripletLoss(margin)(features, LABELS)
    assert loss.item() == pytest.approx(brute_force_triplet(features, LABELS, margin), rel=1e-4)


def test_triplet_gradients_stay_finite_for_identical_features() -> None:
    features = torch.ones(8, 4).requires_grad_()
    TripletLoss(0.3)(features, LABELS).backward()
    assert torch.isfinite(features.grad).all()


def test_center_loss_centers_move_with_their_optimizer() -> None:
    torch.manual_seed(2)
    loss_fn = CenterLoss(num_classes=4, feat_dim=8)
    features = torch.randn(8, 8)
    expected = sum((features[i] - loss_fn.centers[LABELS[i]]).square().sum() for i in range(8)) / 8
    loss = loss_fn(features, LABELS)
    torch.testing.assert_close(loss, expected)
    before = loss_fn.centers.detach().clone()
    optimizer = torch.optim.SGD(loss_fn.parameters(), lr=0.1)
    loss.backward()
    optimizer.step()
    assert not torch.equal(loss_fn.centers, before)
    assert loss_fn(features, LABELS) < loss


def spec_with(**overrides: object) -> ExperimentSpec:
    return apply_overrides(ExperimentSpec(), overrides)


@pytest.mark.parametrize(
    ("overrides", "parts"),
    [
        ({"dataset.sampler": "softmax"}, {"id"}),
        ({"dataset.sampler": "triplet"}, {"triplet"}),
        ({"dataset.sampler": "softmax_triplet"}, {"id", "triplet"}),
        ({"model.metric_loss_type": "center"}, {"id", "center"}),
        ({"model.metric_loss_type": "triplet_center"}, {"id", "triplet", "center"}),
        ({"model.with_center_loss": True, "dataset.sampler": "softmax"}, {"id", "center"}),
    ],
)
def test_criterion_composes_what_the_spec_asks(overrides: dict, parts: set[str]) -> None:
    spec = spec_with(**overrides)
    criterion = ReidCriterion(loss_terms(spec), num_classes=4, feat_dim=8)
    logits = torch.randn(8, 4, requires_grad=True)
    features = torch.randn(8, 8, requires_grad=True)
    total, named = criterion(ReidOutput(logits, features), LABELS)
    assert set(named) == parts
    assert all(not value.requires_grad for value in named.values())
    weight = spec.train.optim.center_loss_weight
    expected = sum(weight * v if k == "center" else v for k, v in named.items())
    torch.testing.assert_close(total.detach(), expected)
    total.backward()
    assert len(list(criterion.center_parameters())) == ("center" in parts)


def test_metric_weight_zero_leaves_the_id_loss_alone() -> None:
    """The ID-only warm-up: triplet and center terms drop out, features get no metric grad."""
    spec = spec_with(**{"model.metric_loss_type": "triplet_center"})
    criterion = ReidCriterion(loss_terms(spec), num_classes=4, feat_dim=8)
    logits = torch.randn(8, 4)
    features = torch.randn(8, 8, requires_grad=True)
    total, named = criterion(ReidOutput(logits, features), LABELS, metric_weight=0.0)
    torch.testing.assert_close(total, named["id"])
    assert named["triplet"] > 0  # still measured for the log
    total.backward()
    assert features.grad is not None and not features.grad.any()


def test_label_smooth_off_is_plain_cross_entropy() -> None:
    spec = spec_with(**{"model.label_smooth": False, "dataset.sampler": "softmax"})
    logits = torch.randn(8, 4)
    total, _ = ReidCriterion(loss_terms(spec), 4, 8)(ReidOutput(logits, torch.randn(8, 8)), LABELS)
    torch.testing.assert_close(total, torch.nn.functional.cross_entropy(logits, LABELS))


def test_center_only_objective_is_refused() -> None:
    spec = spec_with(**{"dataset.sampler": "triplet", "model.metric_loss_type": "center"})
    with pytest.raises(SpecError, match=r"dataset\.sampler 'triplet' drops the ID loss"):
        loss_terms(spec)


def test_soft_margin_never_reaches_zero() -> None:
    """margin 0 keeps pulling already-separated identities apart, unlike the hinge."""
    features = torch.tensor([[0.0], [0.1], [5.0], [5.1]])
    labels = torch.tensor([0, 0, 1, 1])
    assert TripletLoss(0.3)(features, labels).item() == 0.0
    soft = TripletLoss(0.0)(features, labels).item()
    assert 0.0 < soft == pytest.approx(brute_force_triplet(features, labels, 0.0), rel=1e-4)

"""BNNeck, the softmax classifier and the margin heads that must receive labels."""

from __future__ import annotations

import math
import typing

import pytest
import torch

from reidkit.config.spec import ModelSpec, OptimSpec
from reidkit.errors import SpecError
from reidkit.models import ID_HEADS, BNNeck, build_id_head
from reidkit.models.heads import LinearClassifier


def test_bnneck_bias_is_frozen_at_zero() -> None:
    neck = BNNeck(16)
    assert not neck.bias.requires_grad
    assert torch.equal(neck.weight, torch.ones(16))
    neck(torch.randn(8, 16)).square().sum().backward()
    assert neck.bias.grad is None and neck.weight.grad is not None


def test_softmax_head_is_bias_free_with_small_init() -> None:
    head = build_id_head("softmax", 256, 500)
    assert isinstance(head, LinearClassifier)
    assert [name for name, _ in head.named_parameters()] == ["weight"]
    assert head.weight.std().item() == pytest.approx(0.001, rel=0.1)
    features = torch.randn(3, 256)
    assert torch.equal(head(features), head(features, torch.tensor([0, 1, 2])))


def test_unknown_head_is_a_spec_error() -> None:
    with pytest.raises(SpecError, match="id_loss_type 'sphereface'"):
        build_id_head("sphereface", 8, 4)


@pytest.mark.parametrize("name", ["arcface", "cosface", "amsoftmax", "circle"])
def test_labels_move_the_target_logit(name: str) -> None:
    optim = OptimSpec(cosine_scale=16.0, cosine_margin=0.3)
    head = build_id_head(name, 8, 5, scale=optim.cosine_scale, margin=optim.cosine_margin)
    torch.nn.init.normal_(head.weight)
    features, labels = torch.randn(4, 8), torch.tensor([0, 3, 3, 1])
    with_margin, plain = head(features, labels), head(features)
    target = torch.nn.functional.one_hot(labels, 5).bool()
    assert head.uses_labels
    assert not torch.allclose(with_margin[target], plain[target])
    cosine = plain / optim.cosine_scale
    if name in ("cosface", "amsoftmax"):
        expected = optim.cosine_scale * (cosine[target] - optim.cosine_margin)
        torch.testing.assert_close(with_margin[target], expected)
    if name == "arcface":
        expected = optim.cosine_scale * torch.cos(torch.acos(cosine[target]) + optim.cosine_margin)
        theta_ok = torch.acos(cosine[target]) + optim.cosine_margin < math.pi
        torch.testing.assert_close(with_margin[target][theta_ok], expected[theta_ok])
    if name != "circle":  # circle re-weights every class, the others only the target
        torch.testing.assert_close(with_margin[~target], plain[~target])


def test_margin_heads_train() -> None:
    head = build_id_head("arcface", 8, 5)
    logits = head(torch.randn(4, 8, requires_grad=True), torch.tensor([0, 1, 2, 3]))
    torch.nn.functional.cross_entropy(logits, torch.tensor([0, 1, 2, 3])).backward()
    assert torch.isfinite(head.weight.grad).all() and head.weight.grad.abs().sum() > 0


def test_every_spec_head_is_registered_and_back() -> None:
    """The spec lists id_loss_type names without importing torch; the registry must agree."""
    allowed = typing.get_args(ModelSpec.model_fields["id_loss_type"].annotation)
    assert set(ID_HEADS.names()) == set(allowed)

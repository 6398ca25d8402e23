"""Generalized-mean (GeM) pooling, an opt-in replacement for a CNN backbone's average pool.

GeM (Radenovic et al. 2018) pools ``(mean(x^p))^(1/p)`` per channel with a learned ``p``: 1
is average pooling, large ``p`` approaches max pooling. Re-id recipes (fast-reid's BoT/AGW/SBS)
use it because a person's identity often sits in a few strong activations (a bag, a logo)
that average pooling dilutes.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from reidkit.errors import SpecError


class GeneralizedMeanPooling(nn.Module):
    """``[B, C, H, W] -> [B, C, 1, 1]``, a drop-in for ``nn.AdaptiveAvgPool2d(1)``.

    Inputs are clamped to ``eps`` first: the power of a negative or zero activation has no
    useful gradient (CNN features here follow a ReLU, so this only guards exact zeros).
    """

    def __init__(self, p: float = 3.0, eps: float = 1e-6) -> None:
        super().__init__()
        self.p = nn.Parameter(torch.tensor(float(p)))
        self.eps = eps

    def forward(self, x: Tensor) -> Tensor:
        pooled = x.clamp(min=self.eps).pow(self.p).mean(dim=(-2, -1), keepdim=True)
        return pooled.pow(1.0 / self.p)


def use_gem_pooling(backbone: nn.Module) -> None:
    """Replace the backbone's global average pool(s) by GeM, in place."""
    replaced = 0
    for parent in backbone.modules():
        for name, child in parent.named_children():
            if isinstance(child, nn.AdaptiveAvgPool2d) and child.output_size in (1, (1, 1)):
                setattr(parent, name, GeneralizedMeanPooling())
                replaced += 1
    if not replaced:
        raise SpecError(
            "model.pooling 'gem' needs a CNN backbone with a global average pool; "
            f"{type(backbone).__name__} has none: use model.pooling avg"
        )

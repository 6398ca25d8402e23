"""Learning-rate schedules of the TAO recipes, as per-epoch multipliers of ``base_lr``.

TAO counts warm-up and steps in epochs, so the schedule is a pure function of the epoch index;
expressing it as a ``LambdaLR`` factor keeps it inspectable and lets Lightning checkpoint it.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable

from reidkit.config.spec import OptimSpec


def lr_factor(optim: OptimSpec, num_epochs: int) -> Callable[[int], float]:
    """The multiplier of ``base_lr`` at each epoch for the spec's warm-up method.

    ``linear``/``constant``: warm-up over ``warmup_iters`` epochs, then ``gamma`` at each of
    ``lr_steps`` (Bag of Tricks). ``cosine``: linear warm-up over ``warmup_epochs`` then cosine
    decay to zero at ``num_epochs`` (the Swin recipe).
    """
    if optim.warmup_method == "cosine":
        return _cosine(optim, num_epochs)
    return _warmup_multistep(optim)


def _warmup_multistep(optim: OptimSpec) -> Callable[[int], float]:
    def factor(epoch: int) -> float:
        warmup = 1.0
        if epoch < optim.warmup_iters:
            if optim.warmup_method == "constant":
                warmup = optim.warmup_factor
            else:
                alpha = epoch / optim.warmup_iters
                warmup = optim.warmup_factor * (1 - alpha) + alpha
        return warmup * optim.gamma ** bisect_right(optim.lr_steps, epoch)

    return factor


def _cosine(optim: OptimSpec, num_epochs: int) -> Callable[[int], float]:
    warmup = min(optim.warmup_epochs, max(num_epochs - 1, 0))

    def factor(epoch: int) -> float:
        if epoch < warmup:
            alpha = epoch / warmup
            return optim.warmup_factor * (1 - alpha) + alpha
        span = max(num_epochs - warmup, 1)
        return 0.5 * (1 + math.cos(math.pi * (epoch - warmup) / span))

    return factor

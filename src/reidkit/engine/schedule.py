"""Learning-rate schedules of the TAO recipes, as per-iteration multipliers of ``base_lr``.

TAO's keys count epochs (``warmup_iters``, ``warmup_epochs``, ``lr_steps``) and keep that
meaning here, but the factor is evaluated at every iteration, at the fractional epoch
``step / steps_per_epoch``: the warm-up is a smooth ramp and the cosine a smooth curve, however
few epochs a run has. The factor is a pure function of the global step, so a resumed run
continues on exactly the same schedule.

Any run length gets a schedule that reaches ``base_lr`` and then decays. Epoch keys written for
a longer run would otherwise leave a short run warming up for its whole length, or never reach
a decay step (TAO's defaults: a 10-epoch warm-up in a 10-epoch run). So:

* when the run ends at or before the last of ``lr_steps``, the warm-up and every step are
  scaled by one factor so that the last step falls at 3/4 of the run (their proportions kept);
* the warm-up never takes more than a quarter of the run.

A schedule that fits its run (TAO's 120-epoch Market recipe, the Swin recipe) is unchanged.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections.abc import Callable

from reidkit.config.spec import OptimSpec

#: The longest warm-up, as a share of the run.
MAX_WARMUP_SHARE = 0.25
#: Where the last lr step falls, as a share of the run, when the steps must be compressed.
LAST_STEP_SHARE = 0.75


def lr_factor(
    optim: OptimSpec, num_epochs: int, steps_per_epoch: int = 1
) -> Callable[[int], float]:
    """The multiplier of ``base_lr`` at each global step (0-based) of a run.

    ``linear``/``constant``: warm-up over ``warmup_iters`` epochs, then ``gamma`` at each of
    ``lr_steps`` (Bag of Tricks). ``cosine``: linear warm-up over ``warmup_epochs``, base_lr
    for ``cosine_delay_epochs`` (fast-reid's flat-then-cosine; ends by 3/4 of the run at the
    latest), then cosine decay to zero at the end of ``num_epochs`` (the Swin recipe).
    ``steps_per_epoch=1`` gives the factor of each whole epoch.
    """
    if steps_per_epoch < 1:
        raise ValueError(f"steps_per_epoch must be >= 1, got {steps_per_epoch}")
    if optim.warmup_method == "cosine":
        warmup, _ = fitted_epochs(optim.warmup_epochs, [], num_epochs)
        flat_until = min(warmup + optim.cosine_delay_epochs, LAST_STEP_SHARE * num_epochs)
        schedule = _cosine(optim.warmup_factor, warmup, flat_until, num_epochs)
    else:
        warmup, steps = fitted_epochs(optim.warmup_iters, optim.lr_steps, num_epochs)
        schedule = _warmup_multistep(optim, warmup, steps)
    return lambda step: schedule(step / steps_per_epoch)


def fitted_epochs(warmup: float, lr_steps: list[int], num_epochs: int) -> tuple[float, list[float]]:
    """The warm-up length and lr steps (epochs) this run uses: see the module docstring."""
    steps = [float(s) for s in lr_steps]
    if steps and steps[-1] >= num_epochs:
        scale = LAST_STEP_SHARE * num_epochs / steps[-1]
        warmup, steps = warmup * scale, [s * scale for s in steps]
    return min(warmup, MAX_WARMUP_SHARE * num_epochs), steps


def _ramp(warmup_factor: float, epoch: float, warmup: float) -> float:
    alpha = epoch / warmup
    return warmup_factor * (1 - alpha) + alpha


def _warmup_multistep(
    optim: OptimSpec, warmup: float, steps: list[float]
) -> Callable[[float], float]:
    def factor(epoch: float) -> float:
        ramp = 1.0
        if epoch < warmup:
            constant = optim.warmup_method == "constant"
            ramp = optim.warmup_factor if constant else _ramp(optim.warmup_factor, epoch, warmup)
        return ramp * optim.gamma ** bisect_right(steps, epoch)

    return factor


def _cosine(
    warmup_factor: float, warmup: float, flat_until: float, num_epochs: int
) -> Callable[[float], float]:
    def factor(epoch: float) -> float:
        if epoch < warmup:
            return _ramp(warmup_factor, epoch, warmup)
        progress = min(max(epoch - flat_until, 0.0) / (num_epochs - flat_until), 1.0)
        return 0.5 * (1 + math.cos(math.pi * progress))

    return factor

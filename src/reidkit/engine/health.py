"""Numerical health: stop training at the first non-finite loss, weight or BatchNorm statistic.

A NaN loss does not crash PyTorch: the run goes on, every weight turns NaN, and each epoch's
checkpoint (``reid_model_latest.pth`` included) is overwritten with garbage, so even a resume
starts from it. :class:`NumericalHealth` checks the loss before each backward pass and the
weights and buffers after each step and before each epoch's checkpoint, and raises
:class:`TrainingDivergedError` at once. The exception leaves ``trainer.fit`` before the
recorder's next checkpoint, so the files on disk remain those of the last healthy epoch.

It must come before :class:`~reidkit.engine.recorder.RunRecorder` in the trainer's callbacks:
Lightning runs callback hooks in list order, and the epoch-end check has to precede the save.

The optional divergence guard stops a loss that explodes without becoming infinite (one run
reached 4.6e9 and was reported as a success): with ``divergence_factor`` N, a step whose loss
is above N times the median of the last ``window`` step losses stops training.
"""

from __future__ import annotations

import math
import statistics
from collections import deque
from collections.abc import Iterable

import torch
from lightning.pytorch import Callback, LightningModule, Trainer
from torch import Tensor

from reidkit.errors import TrainingDivergedError

# Steps of history before the divergence guard judges: the first losses are noisy.
_MIN_HISTORY = 20
_FIX = "lower train.optim.base_lr or set train.grad_clip, then rerun to resume"


class NumericalHealth(Callback):
    """Stops training with one line naming the step and the loss term or tensor at fault.

    The module may expose ``last_loss`` = (detached total, {term name: detached term}) set
    before its backward pass, so the message names the term; the loss handed to the backward
    hook is already multiplied by the mixed-precision scale, so the unscaled total is preferred.
    """

    def __init__(self, divergence_factor: float | None = None, window: int = 200) -> None:
        if divergence_factor is not None and divergence_factor <= 1:
            raise ValueError("divergence_factor must be above 1")
        self.divergence_factor = divergence_factor
        self.history: deque[float] = deque(maxlen=window)
        self._where = "before the first step"

    def on_train_batch_start(
        self, trainer: Trainer, pl_module: LightningModule, batch: object, batch_idx: int
    ) -> None:
        self._where = f"epoch {trainer.current_epoch + 1}, batch {batch_idx + 1}"

    def on_before_backward(
        self, trainer: Trainer, pl_module: LightningModule, loss: Tensor
    ) -> None:
        total_tensor, parts = getattr(pl_module, "last_loss", None) or (loss, {})
        scalars = [loss.detach(), total_tensor.detach(), *parts.values()]
        scaled, total, *terms = torch.stack([v.float().reshape(()) for v in scalars]).tolist()
        problem = self._loss_problem(dict(zip(parts, terms, strict=True)), total, scaled)
        if trainer.world_size > 1:  # every rank must stop together, or the others hang
            stop = trainer.strategy.reduce_boolean_decision(problem is not None, all=False)
            if stop and problem is None:
                problem = "a non-finite or diverging loss on another process"
        if problem is not None:
            raise TrainingDivergedError(
                f"training stopped at {self._where}: {problem}; the checkpoints on disk are "
                f"from before it; {_FIX}"
            )
        self.history.append(total)

    def _loss_problem(self, parts: dict[str, float], total: float, scaled: float) -> str | None:
        bad = [name for name, value in parts.items() if not math.isfinite(value)]
        if bad:
            terms = ", ".join(f"'{name}' is {parts[name]}" for name in bad)
            return f"loss term {terms}"
        if not math.isfinite(total) or not math.isfinite(scaled):
            return f"the loss is {total if not math.isfinite(total) else scaled}"
        if self.divergence_factor is None or len(self.history) < _MIN_HISTORY:
            return None
        median = statistics.median(self.history)
        if median > 0 and total > self.divergence_factor * median:
            return (
                f"the loss {total:.4g} is above {self.divergence_factor:g} x its running median "
                f"{median:.4g} (train.divergence_factor)"
            )
        return None

    def on_train_batch_end(
        self,
        trainer: Trainer,
        pl_module: LightningModule,
        outputs: object,
        batch: object,
        batch_idx: int,
    ) -> None:
        self._check_tensors(trainer, pl_module, buffers=False)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        self._check_tensors(trainer, pl_module, buffers=True)

    def _check_tensors(
        self, trainer: Trainer, pl_module: LightningModule, *, buffers: bool
    ) -> None:
        named = list(pl_module.named_parameters())
        if buffers:  # BatchNorm running statistics: updated without gradients, checked per epoch
            named += [(n, b) for n, b in pl_module.named_buffers() if b.is_floating_point()]
        culprit = None
        if not all_finite(t for _, t in named):  # exact search only on the rare alarm
            culprit = next((n for n, t in named if not bool(torch.isfinite(t).all())), None)
        if trainer.world_size > 1 and trainer.strategy.reduce_boolean_decision(
            culprit is not None, all=False
        ):
            culprit = culprit or "(on another process)"
        if culprit is None:
            return
        kind = "weight or statistic" if buffers else "weight"
        raise TrainingDivergedError(
            f"training stopped at {self._where}: {kind} '{culprit}' is not finite; the "
            f"checkpoints on disk are from before it; {_FIX}"
        )


def all_finite(tensors: Iterable[Tensor]) -> bool:
    """Whether every value is finite, with one multi-tensor norm per device and dtype.

    A tensor holding a NaN or an infinity has a non-finite norm; one fused kernel per group
    and a single device-to-host copy keep the per-step cost small on a GPU. A norm can also
    overflow for huge finite values, so a False here is confirmed element-wise by the caller.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[Tensor]] = {}
    for tensor in tensors:
        if tensor.numel():
            groups.setdefault((tensor.device, tensor.dtype), []).append(tensor.detach())
    norms = [
        torch.stack(torch._foreach_norm(group)).float().isfinite().all()
        for group in groups.values()
    ]
    if not norms:
        return True
    return bool(torch.stack([n.to(norms[0].device) for n in norms]).all())

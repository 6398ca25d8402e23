"""The LightningModule: one training step, the optimizers of the TAO recipe, validation metrics.

Optimisation is manual because the Bag-of-Tricks center loss trains its centers with a second,
plain SGD optimizer whose gradients are rescaled by ``1 / center_loss_weight``; Lightning's
automatic loop supports only one optimizer. The learning rate is set before every step from a
pure function of the global step, so a resumed run continues on the exact schedule.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

import reidkit
from reidkit.config.spec import ExperimentSpec, OptimSpec
from reidkit.engine.schedule import lr_factor
from reidkit.evaluation.features import embed_batch
from reidkit.evaluation.metrics import evaluate_features
from reidkit.losses import ReidCriterion
from reidkit.models import ReidModel, build_model

QUERY, GALLERY = 0, 1


def build_optimizer(model: torch.nn.Module, optim: OptimSpec) -> torch.optim.Optimizer:
    """TAO's parameter groups: biases get ``bias_lr_factor`` and ``weight_decay_bias``.

    With ``large_fc_lr`` the classifier learns twice as fast (the Swin recipe). Each group keeps
    its own ``initial_lr`` so the epoch schedule can scale every group from its base.
    """
    groups: dict[tuple[float, float], list[torch.nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        lr, decay = optim.base_lr, optim.weight_decay
        if name.endswith("bias"):
            lr, decay = optim.base_lr * optim.bias_lr_factor, optim.weight_decay_bias
        if optim.large_fc_lr and "classifier" in name:
            lr *= 2
        groups.setdefault((lr, decay), []).append(param)
    param_groups = [
        {"params": params, "lr": lr, "initial_lr": lr, "weight_decay": decay}
        for (lr, decay), params in groups.items()
    ]
    optimizer_class = getattr(torch.optim, optim.name)
    extra = {"momentum": optim.momentum} if _accepts(optimizer_class, "momentum") else {}
    return optimizer_class(param_groups, lr=optim.base_lr, **extra)


def _accepts(optimizer_class: type, argument: str) -> bool:
    return argument in inspect.signature(optimizer_class.__init__).parameters


def model_card(spec: ExperimentSpec, model: ReidModel, num_classes: int) -> dict[str, Any]:
    """What a checkpoint must record so evaluate/export can check it fits their spec."""
    return {
        "reidkit_version": reidkit.__version__,
        "backbone": spec.model.backbone,
        "num_classes": num_classes,
        "feat_dim": spec.model.feat_dim,
        "embedding_dim": model.embedding_dim,
        "input_height": spec.model.input_height,
        "input_width": spec.model.input_width,
        "pixel_mean": list(spec.dataset.pixel_mean),
        "pixel_std": list(spec.dataset.pixel_std),
        "spec": spec.model_dump(mode="json"),
    }


class ReidModule(LightningModule):
    """Trains a :class:`ReidModel` with ID + metric losses and validates with CMC/mAP."""

    def __init__(self, spec: ExperimentSpec, num_classes: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.spec = spec
        self.num_classes = num_classes
        self.model = build_model(spec, num_classes)
        self.criterion = ReidCriterion(spec, num_classes, self.model.embedding_dim)
        self._lr_factor: Callable[[int], float] | None = None
        self._val_features: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}

    def on_fit_start(self) -> None:
        """On a GPU, channels-last convolutions are faster (the device batch path emits them)."""
        if self.device.type == "cuda":
            self.model.to(memory_format=torch.channels_last)

    # ---------------------------------------------------------------- optimisation
    def configure_optimizers(self) -> list[torch.optim.Optimizer]:
        optimizers = [build_optimizer(self.model, self.spec.train.optim)]
        centers = list(self.criterion.center_parameters())
        if centers:
            optimizers.append(torch.optim.SGD(centers, lr=self.spec.train.optim.center_lr))
        return optimizers

    def on_train_start(self) -> None:
        """The schedule needs the epoch length, known once the train loader exists."""
        self._lr_factor = lr_factor(
            self.spec.train.optim, self.spec.train.num_epochs, self.trainer.num_training_batches
        )

    def on_train_epoch_start(self) -> None:
        self.log("lr", self._set_lr(self._global_step(0)), on_step=False, on_epoch=True)

    def _global_step(self, batch_idx: int) -> int:
        """Batches trained before this one: what the schedule and the ID warm-up count."""
        return self.current_epoch * self.trainer.num_training_batches + batch_idx

    def _set_lr(self, step: int) -> float:
        assert self._lr_factor is not None, "on_train_start builds the schedule"
        factor = self._lr_factor(step)
        optimizer = self._optimizers()[0].optimizer
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor
        return optimizer.param_groups[0]["lr"]

    def _metric_loss_weight(self, step: int) -> float:
        """0 during the ID-only warm-up (``train.id_warmup_epochs``, random batches), else 1."""
        warmup = round(self.spec.train.id_warmup_epochs * self.trainer.num_training_batches)
        return 0.0 if step < warmup else 1.0

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels, _ = batch
        step = self._global_step(batch_idx)
        self._set_lr(step)
        model_optimizer, *center_optimizers = self._optimizers()
        model_optimizer.zero_grad()
        for optimizer in center_optimizers:
            optimizer.zero_grad()
        loss, parts = self.criterion(
            self.model(images, labels), labels, metric_weight=self._metric_loss_weight(step)
        )
        self.manual_backward(loss)
        for optimizer in center_optimizers:
            self._step_centers(optimizer.optimizer)
        # Lightning unscales (mixed precision), calls on_before_optimizer_step, steps, and
        # updates the grad scaler: once per training step, after the centers have stepped.
        model_optimizer.step()
        batch_size = images.shape[0]
        self.log(
            "loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=batch_size
        )
        for name, value in parts.items():
            self.log(f"loss_{name}", value, on_step=False, on_epoch=True, batch_size=batch_size)
        return loss.detach()

    def _step_centers(self, optimizer: torch.optim.Optimizer) -> None:
        """Step the center optimizer on unscaled gradients rescaled by ``1 / weight``.

        Under 16-bit mixed precision both optimizers share the grad scaler. It must be updated
        once per step, after every optimizer has been unscaled and stepped with the same scale
        (stepping each through Lightning would update it twice); the model optimizer's
        Lightning step does that single update.
        """
        scaler = getattr(self.trainer.precision_plugin, "scaler", None)
        if scaler is not None:
            scaler.unscale_(optimizer)
        for param in self.criterion.center_parameters():
            if param.grad is not None:
                param.grad.mul_(1.0 / self.spec.train.optim.center_loss_weight)
        if scaler is not None:
            scaler.step(optimizer)  # skipped, like the model's, when a gradient is not finite
        else:
            optimizer.step()

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Gradients are unscaled here (mixed precision), so clipping is exact."""
        if self.spec.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.train.grad_clip)

    def _optimizers(self) -> list[Any]:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_features = {QUERY: [], GALLERY: []}

    def validation_step(
        self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int, dataloader_idx: int = 0
    ) -> None:
        images, pids, camids = batch
        features = embed_batch(self.model, images, self.spec.model.with_flip_feature)
        self._val_features[dataloader_idx].append((features.float(), pids, camids))

    def on_validation_epoch_end(self) -> None:
        query, gallery = (self._stack(self._val_features[i]) for i in (QUERY, GALLERY))
        result = evaluate_features(
            query[0], gallery[0], query[1], gallery[1], query[2], gallery[2],
            max_rank=max(10, self.spec.re_ranking.max_rank),
        )  # fmt: skip
        for name, value in result.as_percent().items():
            self.log(name, float(value), prog_bar=name in ("cmc_rank_1", "mAP"))
        self._val_features = {}

    @staticmethod
    def _stack(chunks: list[tuple[Tensor, Tensor, Tensor]]) -> tuple[Tensor, Any, Any]:
        features = torch.cat([c[0] for c in chunks])
        pids = torch.cat([c[1] for c in chunks]).cpu().numpy()
        camids = torch.cat([c[2] for c in chunks]).cpu().numpy()
        return features, pids, camids

    # ---------------------------------------------------------------- checkpoints
    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["reidkit"] = model_card(self.spec, self.model, self.num_classes)

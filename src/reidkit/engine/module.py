"""The LightningModule: one training step, the optimizers of the TAO recipe, validation metrics.

Optimisation is manual because the Bag-of-Tricks center loss trains its centers with a second,
plain SGD optimizer whose gradients are rescaled by ``1 / center_loss_weight``; Lightning's
automatic loop supports only one optimizer. The learning rate is set before every step from a
pure function of the global step, so a resumed run continues on the exact schedule.
"""

from __future__ import annotations

import inspect
import logging
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import torch
from lightning.pytorch import LightningModule
from torch import Tensor

from reidkit.config.spec import ExperimentSpec, ModelSpec, OptimSpec
from reidkit.data.preprocessing import training_preprocessing
from reidkit.engine.schedule import lr_factor
from reidkit.errors import SpecError
from reidkit.evaluation.features import embed_batch
from reidkit.evaluation.metrics import evaluate_features
from reidkit.losses import LossTerm, ReidCriterion
from reidkit.models import ReidModel, load_imagenet, load_pretrained
from reidkit.models.card import attach_card, model_weights
from reidkit.models.digest import weights_digest

log = logging.getLogger("reidkit")

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


def model_settings(model: ModelSpec, optim: OptimSpec) -> dict[str, Any]:
    """The spec's ``model`` section (and the margin heads' two ``optim`` keys) as the keyword
    arguments of :class:`ReidModel`."""
    return {
        "input_size": (model.input_height, model.input_width),
        "feat_dim": model.feat_dim,
        "neck": model.neck,
        "neck_feat": model.neck_feat,
        "last_stride": model.last_stride,
        "reduce_feat_dim": model.reduce_feat_dim,
        "dropout_rate": model.dropout_rate,
        "drop_path": model.drop_path,
        "id_loss_type": model.id_loss_type,
        "cosine_scale": optim.cosine_scale,
        "cosine_margin": optim.cosine_margin,
        "pooling": model.pooling,
    }


def build_model(spec: ExperimentSpec, num_classes: int) -> ReidModel:
    """The spec's network with its starting weights: the spec translated to plain arguments.

    ``model.pretrained_model_path``, when set, is always loaded (an ImageNet state dict into the
    backbone, or a reidkit checkpoint, encrypted with ``encryption_key`` or not, into the whole
    model); otherwise 'imagenet' downloads the library's ImageNet weights and 'self' starts
    from scratch.
    """
    m = spec.model
    model = ReidModel(m.backbone, num_classes, **model_settings(m, spec.train.optim))
    if m.pretrained_model_path is not None:
        report = load_pretrained(model, m.pretrained_model_path, spec.encryption_key)
        log.info("pretrained weights %s: %s", m.pretrained_model_path, report.summary())
    elif m.pretrain_choice == "imagenet":
        report = load_imagenet(model.backbone)
        log.info("ImageNet weights for %s: %s", m.backbone, report.summary())
    return model


def loss_terms(spec: ExperimentSpec) -> list[LossTerm]:
    """The objective's terms as the spec asks for them (TAO's keys, translated here).

    ``dataset.sampler``: 'softmax' -> ID loss only, 'triplet' -> metric losses only,
    'softmax_triplet' -> both. The triplet term needs ``metric_loss_type`` 'triplet' or
    'triplet_center'; center loss (weighted by ``center_loss_weight``) is added when
    ``with_center_loss`` or a '*center' metric loss type asks for it.
    """
    model, optim, sampler = spec.model, spec.train.optim, spec.dataset.sampler
    terms = []
    if sampler != "triplet":
        terms.append(LossTerm("id", settings={"label_smooth": 0.1 if model.label_smooth else 0.0}))
    if sampler != "softmax" and model.uses_triplet_loss:
        terms.append(LossTerm("triplet", settings={"margin": optim.triplet_loss_margin}))
    if not terms:
        raise SpecError(
            "dataset.sampler 'triplet' drops the ID loss and model.metric_loss_type "
            f"'{model.metric_loss_type}' has no triplet term; use sampler softmax_triplet "
            "or metric_loss_type triplet/triplet_center"
        )
    if model.uses_center_loss:
        terms.append(LossTerm("center", weight=optim.center_loss_weight))
    return terms


class ReidModule(LightningModule):
    """Trains a :class:`ReidModel` with ID + metric losses and validates with CMC/mAP."""

    def __init__(self, spec: ExperimentSpec, num_classes: int) -> None:
        super().__init__()
        self.automatic_optimization = False
        self.spec = spec
        self.num_classes = num_classes
        self.model = build_model(spec, num_classes)
        self.criterion = ReidCriterion(loss_terms(spec), num_classes, self.model.embedding_dim)
        self._lr_factor: Callable[[int], float] | None = None
        self._backbone_frozen = False
        self._val_features: dict[int, list[tuple[Tensor, Tensor, Tensor]]] = {}

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
        return 0.0 if step < self._steps_of(self.spec.train.id_warmup_epochs) else 1.0

    def _steps_of(self, epochs: float) -> int:
        """A spec's fractional epoch count as training steps of this run."""
        return round(epochs * self.trainer.num_training_batches)

    def training_step(self, batch: tuple[Tensor, Tensor, Tensor], batch_idx: int) -> Tensor:
        images, labels, _ = batch
        step = self._global_step(batch_idx)
        self._set_lr(step)
        self._backbone_frozen = step < self._steps_of(self.spec.train.freeze_backbone_epochs)
        model_optimizer, *center_optimizers = self._optimizers()
        model_optimizer.zero_grad()
        for optimizer in center_optimizers:
            optimizer.zero_grad()
        loss, parts = self.criterion(
            self.model(images, labels), labels, metric_weight=self._metric_loss_weight(step)
        )
        # Read by the NumericalHealth callback in the backward hook, to name a bad loss term.
        self.last_loss = (loss.detach(), parts)
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
        """Gradients are unscaled here (mixed precision), so clipping is exact.

        While the backbone is frozen (``train.freeze_backbone_epochs``) its gradients are
        dropped rather than never computed: DDP has already reduced them, and a parameter
        without a gradient is skipped by the optimizer, weight decay and momentum included.
        """
        if self._backbone_frozen:
            for param in self.model.backbone.parameters():
                param.grad = None
        if self.spec.train.grad_clip > 0:
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.spec.train.grad_clip)

    def _optimizers(self) -> list[Any]:
        optimizers = self.optimizers()
        return optimizers if isinstance(optimizers, list) else [optimizers]

    # ---------------------------------------------------------------- validation
    def on_validation_epoch_start(self) -> None:
        self._val_features = {QUERY: [], GALLERY: []}
        if torch.distributed.is_available() and torch.distributed.is_initialized():
            # Without sync BN (CPU processes), each rank's BatchNorm statistics have seen only
            # its own batches since DDP last broadcast them. Every rank validates the whole
            # split, so give them all rank 0's: the statistics its checkpoint keeps, and one
            # set of metrics whichever rank reports them.
            for buffer in self.model.buffers():
                torch.distributed.broadcast(buffer, src=0)

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
        fed = training_preprocessing(self.spec.model, self.spec.dataset)
        card = self.model.card(fed.pixel_mean, fed.pixel_std)
        # The card names the weights the file holds, which are not always the live ones: with
        # ``train.ema_decay`` Lightning's averaging callback (whose hook runs before this one)
        # has put the averaged weights in the checkpoint's state_dict.
        saved = weights_digest(model_weights(checkpoint))
        attach_card(checkpoint, replace(card, weights_digest=saved))

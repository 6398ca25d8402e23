"""The adaptation loop on Lightning: every epoch is one round of cluster -> train.

Before round 1 the source model takes the site's BatchNorm statistics (:func:`site_batchnorm`).
A round starts from a clustering of all target crops made with the current model (the source
model for round 1): the crops in clusters (on two or more cameras, in clusters two cameras saw:
:meth:`PseudoLabeller.training_crops`) are trained on for one pass, P clusters x K crops per
batch, against the round's proxy memory (:mod:`reidkit.adaptation.memory`); outliers wait for a
later round. At the end of the round the crops are embedded and clustered again, which both
scores the model just trained (the label-free quality of :mod:`reidkit.adaptation.pseudo_labels`)
and gives the next round its pseudo-labels.

:class:`PseudoLabeller` (a callback) owns the clusterings and the best round so far; its state
travels in every checkpoint, so a run killed at any point resumes at the start of the round it
was in, with the same pseudo-labels. :class:`TargetDataModule` turns the current pseudo-labels
into the round's loader (Lightning reloads it every epoch, before the epoch starts), and
:class:`AdaptModule` is the training step. The action (``reidkit.actions.adapt``) builds them
from the spec, runs the trainer and writes the result.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from lightning.pytorch import Callback, LightningDataModule, LightningModule, Trainer
from lightning.pytorch.utilities import CombinedLoader
from torch import Tensor
from torch.optim.swa_utils import update_bn
from torch.utils.data import DataLoader

from reidkit.adaptation.memory import ProxyMemory
from reidkit.adaptation.pseudo_labels import (
    OUTLIER,
    AdaptationError,
    Clustering,
    ClusterSettings,
    cluster,
    cross_camera_members,
    links_more,
    mirror_agreement,
    track_groups,
)
from reidkit.data import IdentitySampler, ImageDataset, ImageRecord, relabel
from reidkit.evaluation.features import extract_embeddings
from reidkit.evaluation.metrics import normalize_features
from reidkit.losses import CrossEntropyLabelSmooth
from reidkit.models import ReidModel
from reidkit.models.card import ModelCard, attach_card

log = logging.getLogger("reidkit")

Transform = Callable[[Any], Tensor]

#: Below this agreement (beyond chance) of mirrored crops with their cluster, the source model's
#: clusters are called "no structure" (:func:`~reidkit.adaptation.pseudo_labels.mirror_agreement`).
MIN_MIRROR_AGREEMENT = 0.6
#: Rounds without a better quality after which the loop stops early.
PATIENCE = 3


@dataclass(frozen=True)
class AdaptSettings:
    """How the loop runs: the clustering, the loss terms and the batches."""

    clustering: ClusterSettings
    camera_proxies: bool
    batch_size: int
    num_instances: int
    workers: int
    seed: int
    embed_batch_size: int = 128
    #: Re-estimate the BatchNorm statistics on the target crops before round 0 (AdaBN).
    site_batchnorm: bool = True
    #: With two or more cameras, train only on clusters seen by two or more of them.
    cross_camera_training: bool = True


@dataclass(frozen=True)
class RoundReport:
    """What one clustering found; round 0 is the source model's."""

    round: int
    num_clusters: int
    outliers: int
    coverage: float
    #: Share of crops in clusters seen by two or more cameras (the quality's first factor).
    linked: float
    silhouette: float
    quality: float
    splits: int
    eps: float
    #: Wall time since the previous report: round 0 embeds and clusters; a round trains one
    #: pass over the clustered crops, then embeds and clusters them all again.
    seconds: float

    @classmethod
    def of(cls, number: int, clustering: Clustering, seconds: float) -> RoundReport:
        return cls(
            number,
            clustering.num_clusters,
            clustering.outliers,
            round(clustering.coverage, 4),
            round(clustering.linked, 4),
            round(clustering.silhouette, 4),
            round(clustering.quality, 4),
            clustering.splits,
            clustering.eps,
            round(seconds, 2),
        )

    def line(self) -> str:
        who = "source model" if self.round == 0 else f"round {self.round}"
        return (
            f"{who}: {self.num_clusters} clusters, {self.outliers} outliers, quality "
            f"{self.quality:.3f} (cross-camera {self.linked:.2f} x silhouette "
            f"{self.silhouette:.3f}; coverage {self.coverage:.2f}, eps {self.eps:g})"
            + (f", {self.splits} clusters split by cannot-links" if self.splits else "")
            + f" [{self.seconds:.0f} s]"
        )


def site_batchnorm(model: ReidModel, loader: DataLoader, device: torch.device | str) -> None:
    """Replaces the model's BatchNorm statistics by those of ``loader``'s crops (AdaBN: Li et
    al., "Revisiting batch normalization for practical domain adaptation", 2016).

    A network's BatchNorm layers normalise with the mean and spread of the crops it was
    trained on: another site's light and cameras shift every layer's inputs, and each layer
    then feeds the next activations it never saw. One pass over the site's crops (as they are,
    no augmentation) re-estimates every layer's statistics; no weight moves and no label is
    read. Direct transfer of the short CUHK03 recipe (seed 1) went from 15.3 to 31.7 mAP on
    ``pku_views`` and from 61.8 to 62.6 on ``mars_mini`` (``bench_adapt.py --rows site-bn``;
    ``BENCHMARKS.md``, "Unsupervised domain adaptation"). Only the embedding path runs: the
    classifier head may need labels in training mode. The model's train / eval mode is left
    as it was.

    ``loader`` should shuffle: each layer's variance is taken as the mean of its batches'
    variances, which misses the spread between batches of one person or one camera (in
    folder order, ``mars_mini`` short recipe seed 1: 60.5 mAP against 62.6 shuffled).
    """
    embedding_path = torch.nn.Sequential(model.backbone, model.reduction, model.neck)
    embedding_path.train(model.training)  # update_bn restores the mode it finds
    update_bn(loader, embedding_path, device)


class PseudoLabeller(Callback):
    """Clusters the target crops before round 1 and after every round; keeps the best round.

    ``report`` is called with each round's :class:`RoundReport` (the action prints it and
    records it in ``status.json``).
    """

    def __init__(
        self,
        crops: Sequence[ImageRecord],
        embed_transform: Transform,
        settings: AdaptSettings,
        *,
        tracks: Sequence[str | None] | None = None,
        conflicts: set[tuple[str, str]] | None = None,
        report: Callable[[RoundReport], None] = lambda _: None,
    ) -> None:
        self.crops = list(crops)
        self.cameras = np.asarray([c.camid for c in self.crops])
        #: Whether the site has two or more cameras, where only cross-camera clusters count.
        self.multi_camera = len(np.unique(self.cameras)) >= 2
        self.embed_transform = embed_transform
        self.settings = settings
        self.tracks = tracks
        #: What the linking guard counts in (:meth:`_links_more`): tracks, or single crops.
        self.units = track_groups(tracks if tracks is not None else [None] * len(self.crops))
        self.conflicts = conflicts
        self.report = report
        self.reports: list[RoundReport] = []
        self.labels: np.ndarray | None = None
        #: Round 0's cross-camera crops (:func:`cross_camera_members`), what rounds must beat.
        self.source_links: np.ndarray | None = None
        self.memory: ProxyMemory | None = None
        #: The round with the highest quality: its number, quality and model weights.
        self.best: dict[str, Any] = {}
        self.stale_rounds = 0
        self._since = time.perf_counter()

    # ------------------------------------------------------------------ state (checkpoints)
    def state_dict(self) -> dict[str, Any]:
        return {
            "reports": [r.__dict__ for r in self.reports],
            "labels": torch.as_tensor(self.labels) if self.labels is not None else None,
            "source_links": (
                torch.as_tensor(self.source_links) if self.source_links is not None else None
            ),
            "best": self.best,
            "stale_rounds": self.stale_rounds,
        }

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.reports = [RoundReport(**r) for r in state_dict["reports"]]
        labels = state_dict["labels"]
        self.labels = labels.numpy() if labels is not None else None
        if "source_links" not in state_dict:
            raise AdaptationError(
                "the adaptation being resumed was started by an older reidkit, whose checkpoint "
                "lacks round 0's cross-camera links; start it again (another results_dir, or "
                "remove the adapt folder's checkpoint)"
            )
        links = state_dict["source_links"]
        self.source_links = links.numpy() if links is not None else None
        self.best = dict(state_dict["best"])
        self.stale_rounds = int(state_dict["stale_rounds"])

    # ------------------------------------------------------------------ rounds
    def on_fit_start(self, trainer: Trainer, pl_module: LightningModule) -> None:
        """Round 0: the source model's clustering. A target without structure stops here."""
        self._since = time.perf_counter()
        if self.reports:  # resumed: the pseudo-labels of the round in progress are restored
            self._rebuild_memory(pl_module)
            trainer.should_stop = self.stale_rounds >= PATIENCE  # it had stopped early
            return
        if self.settings.site_batchnorm:
            shuffled = self._loader(shuffle_seed=self.settings.seed)
            site_batchnorm(pl_module.model, shuffled, pl_module.device)
            log.info("BatchNorm statistics re-estimated on the %d target crops", len(self.crops))
        clustering, feats = self._cluster(pl_module)
        report = self._record(0, clustering, pl_module)
        # The test asks whether the model's own embedding holds people, so it reads the
        # clusters of the embedding as it is: standardised per camera, random pixels group by
        # the few global statistics (brightness) that mirroring keeps.
        raw = cluster(
            feats,
            replace(self.settings.clustering, per_camera=False),
            self.tracks,
            self.conflicts,
            self.cameras,
        )
        agreement = mirror_agreement(raw, feats, self._embed(pl_module, mirrored=True))
        log.info(
            "source model: mirrored crops stay in their cluster with agreement %.2f beyond chance",
            agreement,
        )
        if min(clustering.num_clusters, raw.num_clusters) < 2 or agreement < MIN_MIRROR_AGREEMENT:
            raise AdaptationError(
                f"the {len(self.crops)} target crops show no identity structure to learn from "
                f"(the source model finds {report.num_clusters} clusters, and their crops stay "
                f"in them mirrored with agreement {agreement:.2f} beyond chance, < "
                f"{MIN_MIRROR_AGREEMENT}); check that they are person crops, or adapt from a "
                "model that already tells some of these people apart"
            )
        if self._linked_clusters(clustering.labels) < 2:
            raise AdaptationError(
                f"none of the source model's {report.num_clusters} clusters of the "
                f"{len(self.crops)} target crops, or just one, was seen by two cameras: there is "
                "nothing to learn about matching across cameras; keep the source model (or, for "
                "a site whose people each meet one camera, set adapt.cross_camera_training=false)"
            )
        self._next_round(clustering, feats, pl_module)

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        clustering, feats = self._cluster(pl_module)
        number = trainer.current_epoch + 1
        self._record(number, clustering, pl_module)
        if clustering.num_clusters < 2:
            log.warning("round %d: the clustering collapsed; stopping", number)
            trainer.should_stop = True
            return
        if self._linked_clusters(clustering.labels) < 2:
            log.warning("round %d: fewer than two clusters span two cameras; stopping", number)
            trainer.should_stop = True
            return
        if self.stale_rounds >= PATIENCE:
            log.info("no better quality for %d rounds; stopping", PATIENCE)
            trainer.should_stop = True
        self._next_round(clustering, feats, pl_module)

    def training_crops(self) -> np.ndarray:
        """Indices of the crops this round trains on: those in a cluster, and, with
        ``cross_camera_training`` on a site of two or more cameras, only those in a cluster two
        cameras saw. The others stay in the memory as negatives. A cluster one camera alone saw
        may be a person or that camera's look (the reason the quality counts only cross-camera
        clusters, :mod:`reidkit.adaptation.pseudo_labels`): trained on, it teaches the model to
        tighten what it already groups. On ``mars_mini``'s train tracklets, where 4 of 16
        people meet a second camera, training on every cluster ended below direct transfer on
        both seeds of the short recipe (57.8 and 62.8 against 61.8 and 68.0 mAP, before the
        linking guard of :meth:`_links_more`); on cross-camera clusters only, no round beat
        round 0 and the source model was kept.
        """
        assert self.labels is not None, "the labeller clusters before the first round"
        if self._cross_camera_only():
            return np.flatnonzero(cross_camera_members(self.labels, self.cameras))
        return np.flatnonzero(self.labels != OUTLIER)

    def _links_more(self, labels: np.ndarray) -> bool:
        """Whether a round's clusters put more crops in cross-camera clusters than round 0's
        did by more than chance (:func:`~reidkit.adaptation.pseudo_labels.links_more`, counted
        in tracks where the crops have them), which a round must do to be kept on two or more
        cameras.

        Its clusters' silhouette is what the round trained, so it rises whether or not the
        model got better at matching people; only a rise of the cross-camera share is evidence
        that it did. On ``mars_mini``'s tracklets (short recipe, seed 1) one round tightened
        the same 19 clusters (silhouette 0.719 -> 0.743, cross-camera share unchanged) while
        mAP fell from 61.8 to 56.6. And the rise must clear chance: adapting on ``mars_mini``'s
        gallery with its 32 tracklets, a round whose share rose from 0.23 to 0.31 (a few more
        tracklets in cross-camera clusters, partly strangers) ended 0.3 mAP below direct
        transfer, and one whose share rose from 0.36 to 0.39, 1.9 below.
        """
        if not self.multi_camera:
            return True
        assert self.source_links is not None, "round 0 is recorded first"
        return links_more(self.source_links, cross_camera_members(labels, self.cameras), self.units)

    def _cross_camera_only(self) -> bool:
        return self.settings.cross_camera_training and self.multi_camera

    def _linked_clusters(self, labels: np.ndarray) -> int:
        """Clusters a round would train on when only cross-camera ones count (all otherwise)."""
        if not self._cross_camera_only():
            return int(labels.max()) + 1 if (labels != OUTLIER).any() else 0
        return len(np.unique(labels[cross_camera_members(labels, self.cameras)]))

    def _record(
        self, number: int, clustering: Clustering, pl_module: LightningModule
    ) -> RoundReport:
        now = time.perf_counter()
        report = RoundReport.of(number, clustering, now - self._since)
        self._since = now
        self.reports.append(report)
        if number == 0:
            self.source_links = cross_camera_members(clustering.labels, self.cameras)
        better = number == 0 or (
            self._links_more(clustering.labels) and report.quality > self.best["quality"]
        )
        if better:
            self.best = {
                "round": number,
                "quality": report.quality,
                "weights": {
                    k: v.detach().cpu().clone() for k, v in pl_module.model.state_dict().items()
                },
            }
            self.stale_rounds = 0
        else:
            self.stale_rounds += 1
        self.report(report)
        return report

    def _next_round(
        self, clustering: Clustering, feats: Tensor, pl_module: LightningModule
    ) -> None:
        self.labels = clustering.labels
        self.memory = ProxyMemory(
            feats, clustering.labels, self.cameras, self.settings.camera_proxies
        ).to(pl_module.device)
        pl_module.memory = self.memory

    def _rebuild_memory(self, pl_module: LightningModule) -> None:
        """After a resume: the memory of the restored pseudo-labels, from the restored model."""
        assert self.labels is not None
        feats = self._embed(pl_module)
        self.memory = ProxyMemory(
            feats, self.labels, self.cameras, self.settings.camera_proxies
        ).to(pl_module.device)
        pl_module.memory = self.memory

    def _cluster(self, pl_module: LightningModule) -> tuple[Clustering, Tensor]:
        feats = self._embed(pl_module)
        clustering = cluster(
            feats, self.settings.clustering, self.tracks, self.conflicts, self.cameras
        )
        return clustering, feats

    def _loader(self, shuffle_seed: int | None = None) -> DataLoader:
        """All target crops as evaluation sees them: in order, or shuffled by ``shuffle_seed``
        for :func:`site_batchnorm`.

        That pass runs BatchNorm in training mode, which refuses a batch of one crop (the
        neck's BatchNorm1d has one value per channel): with ``dataset.val_batch_size`` 1, or a
        crop count one above a multiple of it (65 crops in batches of 64), the action stopped
        with a traceback. Its batches hold at least two crops, and a last batch of one is left
        out of the statistics (one crop of a shuffled pass).
        """
        batch_size, drop_last = self.settings.embed_batch_size, False
        if shuffle_seed is not None:
            batch_size = max(2, batch_size)
            drop_last = len(self.crops) > batch_size and len(self.crops) % batch_size == 1
        return DataLoader(
            ImageDataset(self.crops, self.embed_transform),
            batch_size=batch_size,
            shuffle=shuffle_seed is not None,
            generator=None if shuffle_seed is None else torch.Generator().manual_seed(shuffle_seed),
            num_workers=self.settings.workers,
            drop_last=drop_last,
        )

    def _embed(self, pl_module: LightningModule, mirrored: bool = False) -> Tensor:
        """Every crop's L2-normalised embedding by the current model (eval mode), of the crops
        as they are or ``mirrored`` (flipped left to right)."""
        loader = self._loader()
        model = pl_module.model
        was_training = model.training
        model.eval()
        try:
            embedder = (lambda images: model(torch.flip(images, dims=[3]))) if mirrored else model
            embedded = extract_embeddings(embedder, loader, pl_module.device, flip=False)
        finally:
            model.train(was_training)
        return normalize_features(embedded.features)


class TargetDataModule(LightningDataModule):
    """One round's batches: P pseudo-identities x K crops, outliers left out.

    With ``source`` (the labelled set the source model was trained on, relabelled as training
    does), every target batch comes with a random batch of it: ``{"target": ..., "source": ...}``
    (SpCL's joint training, which keeps what the source labels taught).
    """

    def __init__(
        self,
        crops: Sequence[ImageRecord],
        train_transform: Transform,
        labeller: PseudoLabeller,
        settings: AdaptSettings,
        source: Sequence[ImageRecord] = (),
    ) -> None:
        super().__init__()
        self.crops = list(crops)
        self.train_transform = train_transform
        self.labeller = labeller
        self.settings = settings
        self.source = list(source)

    def train_dataloader(self) -> DataLoader | CombinedLoader:
        target = self._target_loader()
        if not self.source:
            return target
        source = DataLoader(
            ImageDataset(self.source, self.train_transform, relabel(self.source)),
            batch_size=target.batch_size,
            shuffle=True,
            drop_last=True,
            num_workers=self.settings.workers,
            pin_memory=torch.cuda.is_available(),
        )
        return CombinedLoader({"target": target, "source": source}, mode="min_size")

    def _target_loader(self) -> DataLoader:
        labels = self.labeller.labels
        assert labels is not None, "the labeller clusters before the first round"
        kept = self.labeller.training_crops()
        clusters = len(np.unique(labels[kept]))
        k = self.settings.num_instances
        per_batch = min(self.settings.batch_size // k, clusters)
        dataset = ImageDataset(
            [self.crops[i] for i in kept], self.train_transform, labels[kept].tolist()
        )
        return DataLoader(
            dataset,
            batch_size=per_batch * k,
            sampler=IdentitySampler(labels[kept], per_batch * k, k, self.settings.seed),
            drop_last=True,
            num_workers=self.settings.workers,
            pin_memory=torch.cuda.is_available(),
        )


class AdaptModule(LightningModule):
    """Trains the model's embedding against the round's proxy memory."""

    def __init__(
        self,
        model: ReidModel,
        optimizer: Callable[[torch.nn.Module], torch.optim.Optimizer],
        card: Callable[[ReidModel], ModelCard],
    ) -> None:
        super().__init__()
        self.model = model
        self.make_optimizer = optimizer
        self.make_card = card
        self.memory: ProxyMemory | None = None
        self._batch: tuple[Tensor, Tensor, Tensor] | None = None
        # The source batches' ID loss (label smoothing 0.1, as the recipes train).
        self.source_loss = CrossEntropyLabelSmooth(model.classifier.weight.shape[0], epsilon=0.1)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return self.make_optimizer(self.model)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        """Round 1 ramps the learning rate up from zero (constant after): its memory is built
        from eval-mode features while training sees batch statistics, and the source model's
        BatchNorm has yet to meet the site, so full-size first steps undo what it knew."""
        factor = (
            (batch_idx + 1) / self.trainer.num_training_batches if self.current_epoch == 0 else 1.0
        )
        optimizer = self.optimizers()
        for group in optimizer.param_groups:
            group["lr"] = group["initial_lr"] * factor

    def embed(self, images: Tensor) -> Tensor:
        """The training-mode embedding, taken where the model's test-time embedding is."""
        features = self.model.reduction(self.model.backbone(images))
        if self.model.neck_feat == "after":
            features = self.model.neck(features)
        return normalize_features(features.float())

    def training_step(
        self, batch: tuple[Tensor, Tensor, Tensor] | dict[str, Any], batch_idx: int
    ) -> Tensor:
        assert self.memory is not None, "the labeller builds the memory before each round"
        joint = isinstance(batch, dict)
        images, labels, cameras = batch["target"] if joint else batch
        feats = self.embed(images)
        loss, parts = self.memory.loss(feats, labels, cameras)
        if joint:
            source_images, source_labels, _ = batch["source"]
            logits = self.model(source_images, source_labels).logits
            source_id = self.source_loss(logits.float(), source_labels)
            parts["source_id"] = source_id.detach()
            loss = loss + source_id
        self._batch = (feats.detach(), labels, cameras)
        self.last_loss = (loss.detach(), parts)  # read by the NumericalHealth callback
        size = images.shape[0]
        self.log("loss", loss.detach(), prog_bar=True, on_step=True, on_epoch=True, batch_size=size)
        for name, value in parts.items():
            self.log(f"loss_{name}", value, on_step=False, on_epoch=True, batch_size=size)
        return loss

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        """The memory moves after the step (it was part of the loss's graph)."""
        if self.memory is not None and self._batch is not None:
            self.memory.update(*self._batch)
        self._batch = None

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        attach_card(checkpoint, self.make_card(self.model))


class LatestCheckpoint(Callback):
    """After every round: the full training state (pseudo-labels included) to ``path``.

    It must come after :class:`PseudoLabeller` in the trainer's callbacks, so the checkpoint
    holds the next round's pseudo-labels. ``publish`` is called once, before the first write
    (the action's records of a rerun stay staged until then).
    """

    def __init__(self, path: Path, publish: Callable[[], None] | None = None) -> None:
        self.path = path
        self.publish = publish

    def on_train_epoch_end(self, trainer: Trainer, pl_module: LightningModule) -> None:
        if self.publish is not None:
            self.publish()
            self.publish = None
        trainer.save_checkpoint(self.path, weights_only=False)

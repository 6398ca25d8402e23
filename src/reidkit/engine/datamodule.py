"""The LightningDataModule: loaders for the train split and the query/gallery validation pair."""

from __future__ import annotations

import logging
import os

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, DistributedSampler, Sampler

from reidkit.config.spec import ExperimentSpec
from reidkit.data import (
    IdentitySampler,
    ImageDataset,
    ReidSplits,
    build_eval_transform,
    build_train_transform,
    relabel,
)

log = logging.getLogger("reidkit")


def worker_count(requested: int) -> int:
    """TAO's default of 8 workers oversubscribes small machines; never exceed the CPU count."""
    available = os.cpu_count() or 1
    if requested > available:
        log.info(
            "dataset.num_workers=%d exceeds the %d CPUs here; using %d",
            requested,
            available,
            available,
        )
    return min(requested, available)


def eval_loader(spec: ExperimentSpec, records: list, batch_size: int) -> DataLoader:
    """A loader over query or gallery records yielding ``(image, pid, camid)`` in file order."""
    dataset = ImageDataset(records, build_eval_transform(spec.model, spec.dataset))
    workers = worker_count(spec.dataset.num_workers)
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        num_workers=workers,
        pin_memory=torch.cuda.is_available(),
        persistent_workers=workers > 0,
    )


class ReidDataModule(LightningDataModule):
    """Batches of P identities x K images for training; query then gallery for validation.

    ``batch_size`` is per device, as in TAO. Lightning's automatic distributed sampler is off
    (the trainer sets ``use_distributed_sampler=False``): the identity sampler shards whole
    identities across ranks itself, which a generic sampler wrapper cannot do.
    """

    def __init__(self, spec: ExperimentSpec, splits: ReidSplits) -> None:
        super().__init__()
        self.spec = spec
        self.splits = splits

    def train_dataloader(self) -> DataLoader:
        data = self.spec.dataset
        labels = relabel(self.splits.train)
        dataset = ImageDataset(
            self.splits.train, build_train_transform(self.spec.model, data), labels
        )
        workers = worker_count(data.num_workers)
        return DataLoader(
            dataset,
            batch_size=data.batch_size,
            sampler=self._train_sampler(dataset, labels),
            drop_last=True,
            num_workers=workers,
            pin_memory=torch.cuda.is_available(),
            persistent_workers=workers > 0,
        )

    def _train_sampler(self, dataset: ImageDataset, labels: list[int]) -> Sampler[int]:
        replicas, rank = self.trainer.world_size, self.trainer.global_rank
        seed = self.spec.train.seed
        if self.spec.dataset.sampler == "softmax":
            return DistributedSampler(
                dataset, replicas, rank, shuffle=True, seed=seed, drop_last=True
            )
        return IdentitySampler(
            labels,
            self.spec.dataset.batch_size,
            self.spec.dataset.num_instances,
            seed,
            replicas,
            rank,
        )

    def val_dataloader(self) -> list[DataLoader]:
        size = self.spec.dataset.val_batch_size
        return [
            eval_loader(self.spec, self.splits.query, size),
            eval_loader(self.spec, self.splits.gallery, size),
        ]

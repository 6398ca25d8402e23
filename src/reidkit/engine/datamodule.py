"""The LightningDataModule: loaders for the train split and the query/gallery validation pair.

Training has two data paths. The normal one decodes and augments every image on the CPU in
loader workers. The device path (``dataset.device_cache``, see
:mod:`reidkit.data.device_batches`) keeps the decoded train set on the training device, loads
only indices and augments whole batches there in :meth:`ReidDataModule.on_after_batch_transfer`.
Both draw batches from the same sampler; validation is the same for both.
"""

from __future__ import annotations

import logging
import os
from typing import Any

import torch
from lightning.pytorch import LightningDataModule
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from reidkit.config.spec import ExperimentSpec
from reidkit.data import (
    IdentitySampler,
    ImageDataset,
    Preprocessing,
    ReidSplits,
    build_eval_transform,
    build_train_transform,
    relabel,
    training_preprocessing,
)
from reidkit.data.device_batches import (
    BatchAugmentation,
    DeviceTrainSet,
    IndexDataset,
    cache_nbytes,
    choose_device_cache,
    decode_images,
)
from reidkit.errors import BatchLargerThanData

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


def eval_loader(
    spec: ExperimentSpec, records: list, batch_size: int, preprocessing: Preprocessing
) -> DataLoader:
    """A loader over query or gallery records yielding ``(image, pid, camid)`` in file order."""
    dataset = ImageDataset(records, build_eval_transform(preprocessing))
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
        self.preprocessing = training_preprocessing(spec.model, spec.dataset)
        self.device_train_set: DeviceTrainSet | None = None

    def train_dataloader(self) -> DataLoader:
        labels = relabel(self.splits.train)
        if self._use_device_cache():
            return self._device_train_loader(labels)
        data = self.spec.dataset
        dataset = ImageDataset(
            self.splits.train, build_train_transform(self.preprocessing, data), labels
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

    def _use_device_cache(self) -> bool:
        """Pick the train data path from ``dataset.device_cache`` and log the choice and why."""
        nbytes = cache_nbytes(len(self.splits.train), self.preprocessing.input_size)
        device = self.trainer.strategy.root_device
        chosen, reason = choose_device_cache(self.spec.dataset.device_cache, device, nbytes)
        path = "device cache (batches augmented on the device)" if chosen else "normal loader"
        log.info("train data path: %s; %s", path, reason)
        return chosen

    def _device_train_loader(self, labels: list[int]) -> DataLoader:
        """Indices, labels and camera ids only: no per-image work is left for loader workers.

        The set is decoded once per datamodule, so reloading the loader does not decode again.
        """
        if self.device_train_set is None:
            self.device_train_set = self._decode_train_set()
        dataset = IndexDataset(labels, [r.camid for r in self.splits.train])
        return DataLoader(
            dataset,
            batch_size=self.spec.dataset.batch_size,
            sampler=self._train_sampler(dataset, labels),
            drop_last=True,
            num_workers=0,
        )

    def _decode_train_set(self) -> DeviceTrainSet:
        data = self.spec.dataset
        size = self.preprocessing.input_size
        images = decode_images(self.splits.train, size, max_workers=os.cpu_count() or 1)
        device = self.trainer.strategy.root_device
        log.info(
            "decoded %d train images (%.1f MiB) to keep on %s",
            len(images), images.numel() / 2**20, device,
        )  # fmt: skip
        return DeviceTrainSet(
            images.to(device),
            BatchAugmentation.from_spec(self.preprocessing, data),
            self.spec.train.seed,
            self.trainer.global_rank,
        )

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        """On the device path, turn a training batch of indices into augmented images."""
        if self.device_train_set is None or not self.trainer.training:
            return batch
        indices, labels, camids = batch
        images = self.device_train_set.batch(indices, self.trainer.current_epoch)
        return images, labels, camids

    def _train_sampler(self, dataset: Dataset, labels: list[int]) -> Sampler[int]:
        replicas, rank = self.trainer.world_size, self.trainer.global_rank
        seed = self.spec.train.seed
        if self.spec.dataset.sampler == "softmax":
            _require_one_random_batch(len(dataset), self.spec.dataset.batch_size, replicas)
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
            random_epochs=self.spec.train.id_warmup_epochs,
        )

    def val_dataloader(self) -> list[DataLoader]:
        size = self.spec.dataset.val_batch_size
        return [
            eval_loader(self.spec, self.splits.query, size, self.preprocessing),
            eval_loader(self.spec, self.splits.gallery, size, self.preprocessing),
        ]


def _require_one_random_batch(images: int, batch_size: int, replicas: int) -> None:
    """Refuse a random-batch (``softmax``) run that would get no batch at all.

    Its loader drops a last partial batch (every step sees ``batch_size`` images), so a batch
    larger than a process's share of the train set left an epoch with no step: Lightning
    stopped at once and the run ended "trained 0 epochs" with exit 0 and no checkpoint. The
    P x K sampler makes the same check in identities (:class:`reidkit.data.IdentitySampler`).
    """
    per_rank = images // replicas
    if per_rank < batch_size:
        raise BatchLargerThanData(
            f"dataset.batch_size={batch_size} is more than the {per_rank} train images each of "
            f"{replicas} process(es) gets (of {images}); lower dataset.batch_size to at most "
            f"{max(per_rank, 1)}"
        )

"""Data: dataset sources and archives, Market-1501 splits, images, transforms and sampling."""

from reidkit.data.dataset import ImageDataset, relabel, verify_images
from reidkit.data.device_batches import BatchAugmentation, DeviceTrainSet, decode_images
from reidkit.data.market import (
    IMAGE_SUFFIXES,
    ImageRecord,
    MarsName,
    check_num_classes,
    check_query_in_gallery,
    load_split,
    parse_mars_name,
    parse_name,
    split_table,
)
from reidkit.data.preprocessing import (
    Preprocessing,
    resolve_preprocessing,
    spec_settings,
    training_preprocessing,
)
from reidkit.data.sampler import IdentitySampler
from reidkit.data.sources import ARCHIVE_SUFFIXES, resolve_dataset
from reidkit.data.splits import ReidSplits, prepare_splits
from reidkit.data.synth import synthesize
from reidkit.data.transforms import build_eval_transform, build_train_transform

__all__ = [
    "ARCHIVE_SUFFIXES",
    "IMAGE_SUFFIXES",
    "BatchAugmentation",
    "DeviceTrainSet",
    "IdentitySampler",
    "ImageDataset",
    "ImageRecord",
    "MarsName",
    "Preprocessing",
    "ReidSplits",
    "build_eval_transform",
    "build_train_transform",
    "check_num_classes",
    "check_query_in_gallery",
    "decode_images",
    "load_split",
    "parse_mars_name",
    "parse_name",
    "prepare_splits",
    "relabel",
    "resolve_dataset",
    "resolve_preprocessing",
    "spec_settings",
    "split_table",
    "synthesize",
    "training_preprocessing",
    "verify_images",
]

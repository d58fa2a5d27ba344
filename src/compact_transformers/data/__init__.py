"""Offline dataset readers: everything is loaded into memory as uint8 (N, C, H, W) tensors.

    from compact_transformers.data import load_dataset
    ds = load_dataset("cifar10", "~/data/cifar-10-python.tar.gz", val_fraction=0.1)
    ds.train.images, ds.train.labels, ds.val, ds.test, ds.classes, ds.mean, ds.std

Readers: digits (scikit-learn, no files), cifar10 / cifar100 (python pickles, read with numpy-only
globals), mnist / fashion_mnist (idx files), flowers102 (jpg/ + .mat files), folder (ImageFolder layout).
"""

from ..errors import DatasetError
from .core import ImageSplit, channel_mean_std, resize_images, stratified_split, subset_per_class
from .dataset import ImageDataset
from .images import FolderStream
from .load import DATASET_NAMES, detect_dataset, load_dataset

__all__ = [
    "DATASET_NAMES",
    "DatasetError",
    "FolderStream",
    "ImageDataset",
    "ImageSplit",
    "channel_mean_std",
    "detect_dataset",
    "load_dataset",
    "resize_images",
    "stratified_split",
    "subset_per_class",
]

"""`load_dataset`: pick the reader (by name, or by the files found at a path), then build the validation
split, resize if asked, and compute the normalization statistics."""

from __future__ import annotations

import logging
import tarfile
from pathlib import Path

import torch

from ..errors import ConfigError, DatasetError
from ..models.stats import DATASET_STATS
from .core import ImageSplit, channel_mean_std, parse_image_size, resize_images, stratified_split
from .dataset import ImageDataset
from .images import decode_files
from .readers import (
    RawDataset,
    find_idx_file,
    read_cifar,
    read_digits,
    read_flowers102,
    read_folder,
    read_mnist,
)

logger = logging.getLogger(__name__)

DATASET_NAMES = ("digits", "cifar10", "cifar100", "mnist", "fashion_mnist", "flowers102", "folder")

# The datasets normalized with the reference recipe's constants (paper-notes); every other dataset's
# statistics are measured on its train split.
KNOWN_STATS = {name: DATASET_STATS[name] for name in ("cifar10", "cifar100")}
_STREAM_STATS_SAMPLES = 512  # images decoded to estimate mean/std of a streamed train split


def _normalize_name(name: str) -> str:
    key = name.strip().lower().replace("-", "_")
    aliases = {"fashionmnist": "fashion_mnist", "cifar_10": "cifar10", "cifar_100": "cifar100", "flowers": "flowers102",
               "imagefolder": "folder"}  # fmt: skip
    key = aliases.get(key, key)
    if key not in DATASET_NAMES:
        raise DatasetError(f"unknown dataset {name!r}; known names: {', '.join(DATASET_NAMES)}")
    return key


def detect_dataset(path: str | Path) -> str:
    """The dataset name that the files at `path` look like (one of DATASET_NAMES except 'digits')."""
    path = Path(path).expanduser()
    if not path.exists():
        raise DatasetError(f"dataset path {path} does not exist")
    if path.is_file():
        if path.name.endswith((".tar.gz", ".tgz", ".tar")):
            lowered = path.name.lower()
            if "cifar-100" in lowered or "cifar100" in lowered:
                return "cifar100"
            if "cifar-10" in lowered or "cifar10" in lowered:
                return "cifar10"
            try:
                with tarfile.open(path, "r:*") as tar:
                    names = tar.getnames()
            except (tarfile.TarError, OSError, EOFError) as err:
                raise DatasetError(f"cannot read the archive {path}: {err}") from err
            if any("cifar-100-python" in n for n in names):
                return "cifar100"
            if any("cifar-10-batches-py" in n for n in names):
                return "cifar10"
        raise DatasetError(f"cannot tell which dataset the file {path} is; pass the dataset name")
    if (path / "batches.meta").is_file() or (path / "cifar-10-batches-py").is_dir():
        return "cifar10"
    if (path / "cifar-10-python.tar.gz").is_file():
        return "cifar10"
    if ((path / "meta").is_file() and (path / "train").is_file()) or (path / "cifar-100-python").is_dir():
        return "cifar100"
    if (path / "cifar-100-python.tar.gz").is_file():
        return "cifar100"
    if (path / "imagelabels.mat").is_file() and (path / "setid.mat").is_file():
        return "flowers102"
    if find_idx_file(path, "train-images-idx3-ubyte") is not None:
        # The idx files of the two datasets are indistinguishable by name; the folder name decides.
        return "fashion_mnist" if "fashion" in str(path.resolve()).lower() else "mnist"
    if any(p.is_dir() and not p.name.startswith(".") for p in path.iterdir()):
        return "folder"
    raise DatasetError(
        f"cannot tell which dataset is in {path}: expected CIFAR batches, MNIST idx files, Flowers-102 .mat files "
        f"or class folders; pass the dataset name ({', '.join(DATASET_NAMES)})"
    )


def _stream_mean_std(raw: RawDataset, seed: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
    stream = raw.train_stream
    gen = torch.Generator().manual_seed(seed)
    picks = torch.randperm(len(stream), generator=gen)[:_STREAM_STATS_SAMPLES].tolist()
    sample, _ = decode_files([stream.files[i] for i in picks], stream.image_size, stream.mode)
    return channel_mean_std(sample)


def _resized(split: ImageSplit, size: tuple[int, int]) -> ImageSplit:
    if split.images is None:
        return split
    return ImageSplit(images=resize_images(split.images, size), labels=split.labels)


def load_dataset(
    name: str | None = None,
    path: str | Path | None = None,
    *,
    val_fraction: float = 0.0,
    seed: int = 0,
    image_size: int | tuple[int, int] | None = None,
    max_memory_bytes: int = 8 * 1024**3,
) -> ImageDataset:
    """Load a dataset into memory as uint8 tensors.

    name: one of DATASET_NAMES, or None to detect it from the files at `path`.
    val_fraction: for datasets with only an official test split, carve a stratified, seeded validation
      split of this fraction out of train (then `test` is the official test split); with 0 the test split
      is used as `val`. digits and class folders without train/ are split 80/20 when it is 0.
    image_size: int or (H, W) to resize to (default: the dataset's own size; 224 for Flowers-102 and for
      folders of mixed sizes).
    max_memory_bytes: a folder dataset bigger than this once decoded streams its train split
      (`train.images` is None, `train_stream` decodes lazily).
    """
    if not 0.0 <= val_fraction < 1.0:
        raise ConfigError(f"load_dataset: val_fraction must be in [0, 1), got {val_fraction}")
    size = parse_image_size(image_size)
    if name is None and path is None:
        raise DatasetError(f"load_dataset: give a dataset name ({', '.join(DATASET_NAMES)}) or a path")
    data_path = None if path is None else Path(path).expanduser()
    key = detect_dataset(data_path) if name is None else _normalize_name(name)
    if data_path is not None and key != "digits" and not data_path.exists():
        raise DatasetError(f"{key}: the path {data_path} does not exist")
    if key not in ("digits", "fashion_mnist") and data_path is None:
        raise DatasetError(f"{key}: no data path given; pass --data DIR")

    if key == "digits":
        raw = read_digits()
    elif key in ("cifar10", "cifar100"):
        raw = read_cifar(key, data_path)
    elif key in ("mnist", "fashion_mnist"):
        raw = read_mnist(key, data_path)
    elif key == "flowers102":
        raw = read_flowers102(data_path, size or (224, 224))
        if val_fraction > 0:
            logger.warning("flowers102 has an official val split; ignoring val_fraction=%s", val_fraction)
    else:
        raw = read_folder(data_path, size, val_fraction, seed, max_memory_bytes)

    train, val, test = raw.train, raw.val, raw.test
    if val is None:
        if test is not None and val_fraction == 0:
            val, test = test, None  # the official test split doubles as the validation split
        else:
            # carve val out of train: the requested fraction, or 80/20 when there is no official split (digits)
            train_idx, val_idx = stratified_split(train.labels, val_fraction if val_fraction > 0 else 0.2, seed)
            train, val = train.select(train_idx), train.select(val_idx)
    if size is not None:
        train, val = _resized(train, size), _resized(val, size)
        test = None if test is None else _resized(test, size)

    if key in KNOWN_STATS:
        mean, std = KNOWN_STATS[key]
    elif raw.train_stream is not None:
        mean, std = _stream_mean_std(raw, seed)
    else:
        mean, std = channel_mean_std(train.images)
    return ImageDataset(
        name=key,
        train=train,
        val=val,
        test=test,
        classes=list(raw.classes),
        mean=tuple(mean),
        std=tuple(std),
        skipped=raw.skipped,
        train_stream=raw.train_stream,
    )

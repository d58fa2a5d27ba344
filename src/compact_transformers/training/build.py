"""Set-up of a run: its data, the model it trains (the student), a teacher, the augmentation settings."""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from ..augment import AugmentConfig
from ..data import ImageDataset, load_dataset, subset_per_class
from ..errors import CheckpointError, ConfigError
from ..models import create_model, get_preset, load_model
from ..models.vision import to_pair
from .recipe import TrainConfig
from .runtime import prepare_model
from .state import run_model_dir


def load_training_data(config: TrainConfig) -> ImageDataset:
    """The dataset of ``config`` with its validation split, cut to ``samples_per_class`` if asked."""
    name = config.dataset if config.dataset or config.data else "digits"
    resize_on_load = name in ("folder", "flowers102") or (name is None and config.data is not None)
    data = load_dataset(
        name,
        config.data,
        val_fraction=config.val_fraction,
        seed=config.seed,
        image_size=config.img_size if resize_on_load else None,
    )
    if config.num_classes is not None and config.num_classes != data.num_classes:
        raise ConfigError(f"num_classes is {config.num_classes} but {data.name} has {data.num_classes} classes")
    if config.samples_per_class is not None:
        keep = subset_per_class(data.train.labels, config.samples_per_class, config.seed)
        data.train = data.train.select(keep)
        if data.train_stream is not None:
            data.train_stream = data.train_stream.select(keep)
    return data


def input_size(config: TrainConfig, data: ImageDataset) -> tuple[int, int]:
    """(height, width) the model sees: ``config.img_size`` if given, else the dataset's own."""
    return to_pair(config.img_size) if config.img_size is not None else data.image_size


def make_augment_config(config: TrainConfig, img_size: tuple[int, int], mean: tuple[float, ...],
                        std: tuple[float, ...]) -> AugmentConfig:
    """The augmentation settings of ``config`` for images of ``img_size`` normalised with mean/std."""
    return AugmentConfig(
        image_size=img_size, mean=mean, std=std, scale=config.scale, ratio=config.ratio, hflip=config.hflip,
        translate=config.translate, randaugment=config.aa, reprob=config.reprob, interpolation=config.interpolation,
    )  # fmt: skip


def build_student(config: TrainConfig, data: ImageDataset, img_size: tuple[int, int]) -> nn.Module:
    """The model ``config`` trains on ``data``, with what `cct eval` / `cct predict` need in its config."""
    mean = tuple(config.mean) if config.mean is not None else tuple(data.mean)
    std = tuple(config.std) if config.std is not None else tuple(data.std)
    if len(mean) != data.in_chans or len(std) != data.in_chans:  # fail before the run directory is made
        raise ConfigError(
            f"mean/std have {len(mean)}/{len(std)} values but the {data.name} images have {data.in_chans} "
            f"channel(s): pass --mean/--std with {data.in_chans} value(s), or none for the dataset's own"
        )
    regularisation = {
        key: value
        for key, value in (("drop_path", config.drop_path), ("dropout", config.drop), ("attn_dropout", config.attn_drop))
        if value is not None
    }
    return create_model(
        config.model,
        pretrained=resolve_pretrained(config.pretrained),
        num_classes=data.num_classes,
        in_chans=data.in_chans,
        img_size=img_size,
        mean=mean,
        std=std,
        # what `cct eval` / `cct predict` need to see the data as validation did
        extra={"classes": list(data.classes), "dataset": data.name, "interpolation": config.interpolation,
               "seed": config.seed, "val_fraction": config.val_fraction, "flip_tta": config.uses_flip_tta},
        **regularisation,
    )


def resolve_pretrained(source: str | None) -> str | None:
    """A path or URL as given (a run directory means its final model, else its best checkpoint); a preset
    name means that preset's released weights."""
    if source is None or source.startswith(("http://", "https://")):
        return source
    path = run_model_dir(Path(source))
    if path.exists():
        return str(path)
    preset = get_preset(source)  # raises with close names for a typo
    if preset.weights_url is None:
        raise CheckpointError(f"--pretrained {source}: no such file, and preset {preset.name} has no released weights")
    return preset.weights_url


def load_teacher(source: str, device: torch.device) -> nn.Module:
    """A trained teacher, frozen: a run directory (its best checkpoint), a saved model, or a preset with
    released weights."""
    path = run_model_dir(Path(source), best_first=True)
    teacher = load_model(path) if path.exists() else create_model(source, pretrained=True)
    teacher.eval().requires_grad_(False)
    return prepare_model(teacher, device)


def check_teacher(teacher: nn.Module, student: nn.Module, source: str) -> None:
    """A teacher must predict the student's classes from the student's input size."""
    t, s = teacher.config, student.config
    if t.num_classes != s.num_classes or tuple(t.img_size) != tuple(s.img_size):
        raise ConfigError(
            f"teacher {source} is for {t.num_classes} classes at {t.img_size}, the student for "
            f"{s.num_classes} at {s.img_size}"
        )

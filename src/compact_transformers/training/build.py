"""Set-up of a run: its data, the model it trains (the student), a teacher, the augmentation settings.
Images and text alike: a text dataset is recognised by its name or its files."""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
from torch import nn

from ..augment import AugmentConfig, EvalTransform, TrainAugment, WordDropout
from ..data import ImageDataset, load_dataset, subset_per_class
from ..data.text import PAD, UNK, TextDataset, detect_text_dataset, load_text_dataset, text_dataset_name
from ..errors import CheckpointError, ConfigError, DatasetError
from ..models import create_model, get_preset, load_model, load_weights, read_state_dict
from ..models.vision import to_pair
from .recipe import TrainConfig
from .runtime import prepare_model
from .state import run_model_dir

logger = logging.getLogger(__name__)

# `--model timm:NAME`: any timm model (the [timm] extra), e.g. the paper's CNN baselines
TIMM_PREFIX = "timm:"

# --seq-len none: the length that holds this share of the training texts whole (capped at MAX_AUTO_SEQ_LEN)
AUTO_SEQ_LEN_QUANTILE = 0.95
MAX_AUTO_SEQ_LEN = 512


def is_text_data(dataset: str | None, data: str | None) -> bool:
    """True when ``--dataset`` names a text dataset, or ``--data`` holds one (and no dataset is named)."""
    if dataset:
        return text_dataset_name(dataset) is not None
    return data is not None and Path(data).exists() and detect_text_dataset(data) is not None


def load_training_data(config: TrainConfig) -> ImageDataset | TextDataset:
    """The dataset of ``config`` with its validation split, cut to ``samples_per_class`` if asked."""
    data = _load_text(config) if is_text_data(config.dataset, config.data) else _load_images(config)
    if len(data.val) == 0:  # validating on nothing would record a meaningless 0% and never pick a best
        counts = torch.bincount(data.train.labels, minlength=data.num_classes).tolist()
        per_class = ", ".join(f"{name} {n}" for name, n in list(zip(data.classes, counts))[:10])
        where, more = (f" of {config.data}" if config.data else ""), (", ..." if data.num_classes > 10 else "")
        raise DatasetError(f"{data.name}: the validation split{where} has no readable example (training examples per "
                           f"class: {per_class}{more}); give a validation split, or 2 examples per class or more so "
                           "that one can be held out")  # fmt: skip
    if config.num_classes is not None and config.num_classes != data.num_classes:
        raise ConfigError(f"num_classes is {config.num_classes} but {data.name} has {data.num_classes} classes")
    if config.samples_per_class is not None:
        keep = subset_per_class(data.train.labels, config.samples_per_class, config.seed)
        data.train = data.train.select(keep)
        if getattr(data, "train_stream", None) is not None:
            data.train_stream = data.train_stream.select(keep)
    return data


def _load_text(config: TrainConfig) -> TextDataset:
    if config.data is None:
        raise ConfigError(f"text dataset {config.dataset}: give the folder or file of its files with --data")
    data = load_text_dataset(
        config.dataset, config.data, val_fraction=config.val_fraction, seed=config.seed,
        seq_len=config.seq_len or MAX_AUTO_SEQ_LEN, min_freq=config.min_freq, max_vocab=config.max_vocab,
        text_column=config.text_column, label_column=config.label_column, trec_fine=config.trec_fine,
    )  # fmt: skip
    if config.seq_len is None:  # long enough for most texts whole; a multiple of 8 suits every text tokenizer
        lengths = data.train.lengths.float()
        quantile = int(torch.quantile(lengths, AUTO_SEQ_LEN_QUANTILE).item()) if len(lengths) else 8
        seq_len = min(MAX_AUTO_SEQ_LEN, max(8, -(-quantile // 8) * 8))
        data = truncate_texts(data, seq_len)
        logger.info("text: %d tokens per text (%d%% of the training texts fit whole; --seq-len to change)",
                    seq_len, round(100 * (data.train.lengths < seq_len).float().mean().item()))
    return data


def truncate_texts(data: TextDataset, seq_len: int) -> TextDataset:
    """``data`` with every text cut to ``seq_len`` tokens."""
    for name in ("train", "val", "test"):
        split = getattr(data, name)
        if split is not None:
            split.ids = split.ids[:, :seq_len].contiguous()
            split.lengths = split.lengths.clamp(max=seq_len)
    data.seq_len = seq_len
    return data


def _load_images(config: TrainConfig) -> ImageDataset:
    name = config.dataset if config.dataset or config.data else "digits"
    resize_on_load = name in ("folder", "flowers102") or (name is None and config.data is not None)
    data = load_dataset(
        name,
        config.data,
        val_fraction=config.val_fraction,
        seed=config.seed,
        image_size=config.img_size if resize_on_load else None,
    )
    return data


def input_size(config: TrainConfig, data: ImageDataset | TextDataset) -> tuple[int, int] | None:
    """(height, width) the model sees: ``config.img_size`` if given, else the dataset's own (None: text)."""
    if isinstance(data, TextDataset):
        return None
    return to_pair(config.img_size) if config.img_size is not None else data.image_size


def transforms(config: TrainConfig, data: ImageDataset | TextDataset,
               model: nn.Module) -> tuple[nn.Module | None, nn.Module | None]:
    """(training augmentation, evaluation transform) for ``model``: of uint8 images; for text word dropout
    (or None) and no evaluation transform."""
    if isinstance(data, TextDataset):
        return (WordDropout(config.word_dropout, UNK) if config.word_dropout > 0 else None), None
    augment_config = make_augment_config(config, input_size(config, data), model.config.mean, model.config.std)
    return TrainAugment(augment_config), EvalTransform(augment_config)


def make_augment_config(config: TrainConfig, img_size: tuple[int, int], mean: tuple[float, ...],
                        std: tuple[float, ...]) -> AugmentConfig:
    """The augmentation settings of ``config`` for images of ``img_size`` normalised with mean/std."""
    return AugmentConfig(
        image_size=img_size, mean=mean, std=std, scale=config.scale, ratio=config.ratio, hflip=config.hflip,
        translate=config.translate, randaugment=config.aa, reprob=config.reprob, interpolation=config.interpolation,
    )  # fmt: skip


def build_student(config: TrainConfig, data: ImageDataset | TextDataset, img_size: tuple[int, int] | None) -> nn.Module:
    """The model ``config`` trains on ``data``, with what `cct eval` / `cct predict` need in its config."""
    if isinstance(data, TextDataset):
        return _build_text_student(config, data)
    is_timm = config.model.startswith(TIMM_PREFIX)
    if not is_timm and get_preset(config.model).kind != "vision":
        raise ConfigError(f"{config.model} is a text model but {data.name} holds images; pick an image model, "
                          "e.g. cct_2_3x2_32")
    mean = tuple(config.mean) if config.mean is not None else tuple(data.mean)
    std = tuple(config.std) if config.std is not None else tuple(data.std)
    if len(mean) != data.in_chans or len(std) != data.in_chans:  # fail before the run directory is made
        raise ConfigError(
            f"mean/std have {len(mean)}/{len(std)} values but the {data.name} images have {data.in_chans} "
            f"channel(s): pass --mean/--std with {data.in_chans} value(s), or none for the dataset's own"
        )
    # what `cct eval` / `cct predict` need to see the data as validation did
    extra = {"classes": list(data.classes), "dataset": data.name, "interpolation": config.interpolation,
             "seed": config.seed, "val_fraction": config.val_fraction, "flip_tta": config.uses_flip_tta,
             "shift_tta": config.uses_shift_tta}
    if is_timm:
        return _build_timm_student(config, data, img_size, mean, std, extra)
    with naming_option("--pretrained", config.pretrained):
        return create_model(
            config.model,
            pretrained=resolve_pretrained(config.pretrained),
            num_classes=data.num_classes,
            in_chans=data.in_chans,
            img_size=img_size,
            mean=mean,
            std=std,
            extra=extra,
            **_model_overrides(config),
        )


@contextmanager
def naming_option(option: str, source: str | None) -> Iterator[None]:
    """Checkpoint errors raised inside name the option that gave the weights: ``--pretrained PATH: ...``."""
    try:
        yield
    except CheckpointError as error:
        raise CheckpointError(f"{option} {source}: {error}") from None


def _build_timm_student(config: TrainConfig, data: ImageDataset, img_size: tuple[int, int],
                        mean: tuple[float, ...], std: tuple[float, ...], extra: dict) -> nn.Module:
    """``timm:NAME``: that timm model, initialised at random unless ``--pretrained`` names a run or saved model
    of it. timm models take dropout and stochastic depth rates, but no common attention-dropout setting."""
    from ..integrations.timm import TimmClassifier, TimmConfig  # optional: only timm: students need timm

    if config.positional_embedding != "model":
        raise ConfigError(f"--positional-embedding {config.positional_embedding}: {config.model} keeps timm's own "
                          "positional embedding; leave the option out")
    if config.attn_drop:
        logger.info("%s: timm models have no attention dropout setting; attn_drop %g is not applied",
                    config.model, config.attn_drop)
    model = TimmClassifier(TimmConfig(
        model_name=config.model[len(TIMM_PREFIX):], num_classes=data.num_classes, in_chans=data.in_chans,
        img_size=img_size, mean=mean, std=std, drop_rate=config.drop, drop_path_rate=config.drop_path, extra=extra,
    ))  # fmt: skip
    if config.pretrained is not None:
        path = run_model_dir(Path(config.pretrained))
        if not path.exists():
            raise CheckpointError(f"--pretrained {config.pretrained}: no such run or saved model (a timm: model "
                                  "starts from a run or saved model of the same timm model)")
        with naming_option("--pretrained", config.pretrained):
            load_weights(model, read_state_dict(path), source=str(path))
    return model


def _model_overrides(config: TrainConfig) -> dict[str, float | str]:
    """The preset settings that ``config`` changes: dropout rates and the positional embedding (the others keep
    the preset's)."""
    given = (("drop_path", config.drop_path), ("dropout", config.drop), ("attn_dropout", config.attn_drop),
             ("positional_embedding", None if config.positional_embedding == "model" else config.positional_embedding))
    return {key: value for key, value in given if value is not None}


def _build_text_student(config: TrainConfig, data: TextDataset) -> nn.Module:
    from ..data.vectors import load_word_vectors

    if config.model.startswith(TIMM_PREFIX) or get_preset(config.model).kind != "text":
        raise ConfigError(f"{config.model} is an image model but {data.name} holds text; pick a text model, "
                          "e.g. text_cct_2_1x1 (cct info --all --text lists them)")
    vectors = load_word_vectors(config.embeddings, data.vocab, seed=config.seed) if config.embeddings else None
    if vectors is None:
        logger.info("text: no --embeddings: the word embedding is learned from scratch")
    with naming_option("--pretrained", config.pretrained):
        model = create_model(
            config.model,
            pretrained=resolve_pretrained(config.pretrained),
            num_classes=data.num_classes,
            vocab_size=len(data.vocab),
            word_dim=vectors.dim if vectors is not None else 300,
            padding_idx=PAD,
            seq_len=data.seq_len,
            freeze_embedding=vectors is not None and not config.train_embeddings,
            # what `cct eval` / `cct predict` need: the vocabulary, the classes, where and how the data was read
            extra={"classes": list(data.classes), "dataset": data.name, "seed": config.seed,
                   "val_fraction": config.val_fraction, "vocab": data.vocab.to_dict(), "data": config.data,
                   "text_column": config.text_column, "label_column": config.label_column,
                   "trec_fine": config.trec_fine, "embeddings": None if vectors is None else vectors.source},
            **_model_overrides(config),
        )  # fmt: skip
    if vectors is not None and config.pretrained is None:
        with torch.no_grad():
            model.embedder.embeddings.weight.copy_(vectors.matrix)
    return model


def resolve_pretrained(source: str | None) -> str | None:
    """A path or URL as given (a run directory means its final model, else its best checkpoint); a preset
    name means that preset's released weights."""
    if source is None or source.startswith(("http://", "https://", "hf-hub:")):
        return source
    path = run_model_dir(Path(source))
    if path.exists():
        return str(path)
    preset = _preset_of_weights(source)
    if preset.weights_url is None:
        raise CheckpointError(f"no such file, and preset {preset.name} has no released weights")
    return preset.weights_url


def _preset_of_weights(source: str):
    """The preset named ``source``, which is no file: the error says both."""
    try:
        return get_preset(source)
    except ConfigError as error:
        raise CheckpointError(f"no such file or directory, and {error} (expected a run directory, a saved model, "
                              "a .pth or .safetensors file, hf-hub:ORG/NAME or a preset name)") from None


def load_teacher(source: str, device: torch.device) -> nn.Module:
    """A trained teacher, frozen: a run directory (its best checkpoint), a saved model, a Hub model
    (``hf-hub:org/name``) or a preset with released weights."""
    path = run_model_dir(Path(source), best_first=True)
    with naming_option("--teacher", source):
        if source.startswith("hf-hub:") or path.exists():
            teacher = load_model(source if source.startswith("hf-hub:") else path)
        else:
            teacher = create_model(_preset_of_weights(source).name, pretrained=True)
    teacher.eval().requires_grad_(False)
    return prepare_model(teacher, device)


def check_teacher(teacher: nn.Module, student: nn.Module, source: str) -> None:
    """A teacher must predict the student's classes from the student's input size."""
    t, s = teacher.config, student.config
    if not hasattr(s, "img_size") or not hasattr(t, "img_size"):
        raise ConfigError("--teacher: distillation is for image models")
    if t.num_classes != s.num_classes or tuple(t.img_size) != tuple(s.img_size):
        raise ConfigError(
            f"teacher {source} is for {t.num_classes} classes at {t.img_size}, the student for "
            f"{s.num_classes} at {s.img_size}"
        )

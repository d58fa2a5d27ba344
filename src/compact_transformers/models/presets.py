"""The named variants of the paper as data: a table of presets, a registry, ``create_model``.

Names follow the reference code: ``cct_7_3x1_32`` = CCT with 7 layers, 3x3 kernel, 1 conv layer, 32 px;
``vit_7_4_32`` / ``cvt_7_4_32`` = 7 layers, patch 4, 32 px; ``_sine`` = sinusoidal positional embedding;
``_c100`` = 100 classes; text models ``text_cct_2_1x1`` (kernel 1, 1 conv), ``text_cvt_2_4`` (patch 4).
Readable aliases are accepted too: ``vit_lite_7_4_32``, ``CCT-7/3x1`` (32 px), ``cct_7_3x1_32_learnable``.
"""

from __future__ import annotations

import difflib
import fnmatch
import re
from dataclasses import dataclass, field

from torch import nn

from ..errors import ConfigError
from .stats import DATASET_STATS
from .text import TextCompactTransformer, TextConfig
from .vision import CompactTransformer, VisionConfig

# size -> (layers, heads, mlp ratio, width), paper-notes "Backbones"
BACKBONES: dict[int, tuple[int, int, float, int]] = {
    2: (2, 2, 1.0, 128),
    4: (4, 2, 1.0, 128),
    6: (6, 4, 2.0, 256),
    7: (7, 4, 2.0, 256),
    8: (8, 4, 2.0, 256),
    14: (14, 6, 3.0, 384),
    16: (16, 6, 3.0, 384),
}
TEXT_SIZES = (2, 4, 6)

WEIGHTS_ROOT = "https://shi-labs.com/projects/cct/checkpoints"

# Accuracy (%) of each paper table row: CIFAR-10, CIFAR-100, Fashion-MNIST, MNIST.
PAPER_TABLE: dict[str, tuple[float, float, float, float]] = {
    "vit_7_16_32": (78.45, 52.87, 93.24, 99.68),
    "vit_6_16_32": (78.12, 52.68, 93.09, 99.66),
    "vit_7_8_32": (89.10, 67.27, 94.49, 99.69),
    "vit_6_8_32": (88.29, 66.40, 94.36, 99.73),
    "vit_7_4_32": (93.57, 73.94, 95.16, 99.77),
    "vit_6_4_32": (93.08, 73.33, 95.14, 99.74),
    "cvt_7_8_32": (89.79, 70.11, 94.50, 99.70),
    "cvt_6_8_32": (89.50, 68.80, 94.53, 99.74),
    "cvt_7_4_32": (94.01, 76.49, 95.32, 99.76),
    "cvt_6_4_32": (93.60, 74.23, 95.00, 99.75),
    "cct_2_3x2_32": (89.75, 66.93, 94.08, 99.70),
    "cct_4_3x2_32": (91.97, 71.51, 94.74, 99.73),
    "cct_6_3x2_32": (94.43, 77.14, 95.34, 99.75),
    "cct_7_3x2_32": (95.04, 77.72, 95.16, 99.76),
    "cct_6_3x1_32": (95.70, 79.40, 95.41, 99.79),
    "cct_7_3x1_32": (96.53, 80.92, 95.56, 99.82),
}


@dataclass(frozen=True)
class Preset:
    """A named variant: which model class, its config overrides, and what is known about it."""

    name: str
    kind: str  # "vision" | "text"
    config: dict
    weights_url: str | None = None
    weights_dataset: str | None = None
    weights_accuracy: float | None = None  # reported top-1 (%) of the released weights
    paper_accuracy: dict[str, float] = field(default_factory=dict)

    def build_config(self, **overrides: object) -> VisionConfig | TextConfig:
        config_class = VisionConfig if self.kind == "vision" else TextConfig
        known = set(config_class.__dataclass_fields__)
        unknown = sorted(set(overrides) - known)
        if unknown:
            raise ConfigError(
                f"create_model({self.name!r}) got unknown option(s) {unknown}; valid options: {sorted(known)}"
            )
        return config_class(**{**self.config, **overrides})


# name -> (weights file, dataset, reported top-1 %)
_RELEASED_WEIGHTS: dict[str, tuple[str, str, float | None]] = {
    "cct_7_3x1_32": ("pretrained/cct_7_3x1_32_cifar10_300epochs.pth", "cifar10", 96.53),
    "cct_7_3x1_32_sine": ("pretrained/cct_7_3x1_32_sine_cifar10_5000epochs.pth", "cifar10", 98.00),
    "cct_7_3x1_32_c100": ("pretrained/cct_7_3x1_32_cifar100_300epochs.pth", "cifar100", 80.92),
    "cct_7_3x1_32_sine_c100": ("pretrained/cct_7_3x1_32_sine_cifar100_5000epochs.pth", "cifar100", 82.87),
    "cct_7_7x2_224_sine": ("pretrained/cct_7_7x2_224_flowers102.pth", "flowers102", None),
    "cct_14_7x2_224": ("pretrained/cct_14_7x2_224_imagenet.pth", "imagenet", 80.67),
    "cct_14_7x2_384": ("finetuned/cct_14_7x2_384_imagenet.pth", "imagenet", 82.71),
    "cct_14_7x2_384_fl": ("finetuned/cct_14_7x2_384_flowers102.pth", "flowers102", 99.76),
}


def _backbone(size: int) -> dict:
    layers, heads, mlp_ratio, width = BACKBONES[size]
    return dict(num_layers=layers, num_heads=heads, mlp_ratio=mlp_ratio, embed_dim=width)


def _vision_presets() -> list[Preset]:
    presets: dict[str, Preset] = {}

    def add(name: str, config: dict, stats_of: str = "cifar10", paper_row: str | None = None,
            sine_name: str | None = None) -> None:
        """Register ``name`` (learnable PE) and its sinusoidal twin (``name_sine`` by default).

        ``stats_of``: the DATASET_STATS entry whose mean / std the preset normalises with.
        """
        mean, std = DATASET_STATS[stats_of]
        for full, pe in ((name, "learnable"), (sine_name or name + "_sine", "sine")):
            weights = _RELEASED_WEIGHTS.get(full)
            presets[full] = Preset(
                name=full,
                kind="vision",
                config={**config, "positional_embedding": pe, "mean": mean, "std": std},
                weights_url=f"{WEIGHTS_ROOT}/{weights[0]}" if weights else None,
                weights_dataset=weights[1] if weights else None,
                weights_accuracy=weights[2] if weights else None,
                paper_accuracy=_paper_accuracy(paper_row or name),
            )

    for size in BACKBONES:
        backbone = _backbone(size)
        for family, prefix in (("vit_lite", "vit"), ("cvt", "cvt")):
            for patch in (4, 8, 16):
                add(f"{prefix}_{size}_{patch}_32",
                    dict(family=family, patch_size=patch, img_size=32, num_classes=10, **backbone))
        for kernel in (3, 7):
            for convs in (1, 2):
                add(f"cct_{size}_{kernel}x{convs}_32",
                    dict(family="cct", kernel_size=kernel, n_conv_layers=convs, img_size=32, num_classes=10,
                         **backbone))
        for img_size in (224, 384):
            add(f"cct_{size}_7x2_{img_size}",
                dict(family="cct", kernel_size=7, n_conv_layers=2, img_size=img_size, num_classes=1000,
                     **backbone),
                stats_of="imagenet")
    # The reference's dataset-specific variants: CIFAR-100 and Flowers-102 heads.
    cct_7_3x1 = dict(family="cct", kernel_size=3, n_conv_layers=1, img_size=32, num_classes=100, **_backbone(7))
    add("cct_7_3x1_32_c100", cct_7_3x1, stats_of="cifar100", paper_row="cct_7_3x1_32",
        sine_name="cct_7_3x1_32_sine_c100")
    cct_7x2 = dict(family="cct", kernel_size=7, n_conv_layers=2, num_classes=102)
    add("cct_7_7x2_224", dict(cct_7x2, img_size=224, **_backbone(7)), stats_of="flowers102")
    add("cct_14_7x2_384_fl", dict(cct_7x2, img_size=384, **_backbone(14)), stats_of="flowers102")
    del presets["cct_14_7x2_384_fl_sine"]
    return list(presets.values())


def _paper_accuracy(name: str) -> dict[str, float]:
    row = PAPER_TABLE.get(name)
    if row is None:
        return {}
    return dict(zip(("cifar10", "cifar100", "fashion_mnist", "mnist"), row))


def _text_presets() -> list[Preset]:
    presets = []
    for size in TEXT_SIZES:
        backbone = _backbone(size)
        presets.append(Preset(f"text_transformer_{size}", "text", dict(family="transformer", **backbone)))
        for kernel in (1, 2, 4):
            presets.append(
                Preset(f"text_cct_{size}_{kernel}x1", "text", dict(family="cct", kernel_size=kernel, **backbone))
            )
            for family, prefix in (("vit_lite", "text_vit"), ("cvt", "text_cvt")):
                presets.append(
                    Preset(f"{prefix}_{size}_{kernel}", "text", dict(family=family, patch_size=kernel, **backbone))
                )
    return presets


PRESETS: dict[str, Preset] = {p.name: p for p in _vision_presets() + _text_presets()}

# Reference names without kernel/patch (text_cct_2 etc.) use the reference defaults.
ALIASES: dict[str, str] = {}
for _size in TEXT_SIZES:
    ALIASES[f"text_cct_{_size}"] = f"text_cct_{_size}_4x1"
    ALIASES[f"text_vit_{_size}"] = f"text_vit_{_size}_4"
    ALIASES[f"text_cvt_{_size}"] = f"text_cvt_{_size}_4"
    ALIASES[f"text_transformer_lite_{_size}"] = f"text_transformer_{_size}"
for _name in list(PRESETS):
    if _name.startswith("vit_"):
        ALIASES["vit_lite_" + _name[len("vit_"):]] = _name
    if _name.endswith("_32") and not _name.startswith("text_"):
        ALIASES[_name[: -len("_32")]] = _name  # cct_7_3x1 -> cct_7_3x1_32 (the paper's table size)


def resolve_name(name: str) -> str:
    """Map a preset name or readable alias (``CCT-7/3x1``, ``vit_lite_7_4_32``) to its preset name."""
    key = re.sub(r"[-/\s]+", "_", name.strip().lower())
    key = key.replace("vit_lite_", "vit_") if key.startswith("vit_lite_") else key
    key = key.removesuffix("_learnable")
    if key in PRESETS:
        return key
    if key in ALIASES:
        return ALIASES[key]
    close = difflib.get_close_matches(key, list(PRESETS) + list(ALIASES), n=5, cutoff=0.6)
    hint = f"; did you mean {', '.join(close)}?" if close else "; see `cct info --all` or list_models()"
    raise ConfigError(f"unknown model {name!r}{hint}")


def get_preset(name: str) -> Preset:
    return PRESETS[resolve_name(name)]


def list_models(pattern: str = "*", kind: str | None = None, pretrained: bool = False) -> list[str]:
    """Preset names matching a shell-style pattern, optionally only ``kind`` or only those with weights."""
    return sorted(
        name
        for name, preset in PRESETS.items()
        if fnmatch.fnmatch(name, pattern)
        and (kind is None or preset.kind == kind)
        and (not pretrained or preset.weights_url is not None)
    )


def build_model(config: VisionConfig | TextConfig) -> nn.Module:
    """The model described by a config object."""
    if isinstance(config, TextConfig):
        return TextCompactTransformer(config)
    return CompactTransformer(config)

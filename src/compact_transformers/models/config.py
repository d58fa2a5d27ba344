"""What the vision and text model configs share: JSON round trip, copies with changes, and the
(height, width) convention for sizes given as one int or a pair."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import TypeVar

from ..errors import ConfigError

ConfigT = TypeVar("ConfigT", bound="ModelConfig")
POSITIONAL_EMBEDDINGS = ("learnable", "sine", "none")


def to_pair(size: int | Sequence[int]) -> tuple[int, int]:
    """An int side length or an (H, W) pair, as (H, W)."""
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


def as_size_pair(size: object) -> tuple[int, int] | None:
    """``to_pair`` of an int or a pair of ints (bools are not sizes); None for anything else.

    For validating a size a user gave: the caller raises its own error for None or for sizes below 1.
    """

    def is_int(value: object) -> bool:
        return isinstance(value, int) and not isinstance(value, bool)

    if is_int(size) or (isinstance(size, Sequence) and len(size) == 2 and all(is_int(s) for s in size)):
        return to_pair(size)
    return None


@dataclasses.dataclass(kw_only=True)
class ModelConfig:
    """What the vision and text model configs share (they are dataclasses deriving from it): the settings
    below, keyword-only, with the same defaults in both; lists stand in for tuples in ``to_dict``."""

    # Each model config also declares, with its own defaults, the encoder settings that
    # ``TransformerClassifier.from_config`` reads: num_layers, num_heads, mlp_ratio, embed_dim, num_classes and
    # positional_embedding.

    # CCT tokenizer convolution: None = the paper's stride / padding (tokenizers.cct_conv_geometry)
    conv_stride: int | None = None
    conv_padding: int | None = None
    pool_stride: int = 2
    pool_padding: int = 1
    # what training records for inference (classes, dataset, preprocessing, vocabulary); not part of the network
    extra: dict = dataclasses.field(default_factory=dict)
    # regularisation (the paper's "tuned" defaults) and the attention kernel
    dropout: float = 0.0
    attn_dropout: float = 0.1
    drop_path: float = 0.1
    attn_impl: str = "auto"

    def check(self, positive: tuple[str, ...]) -> None:
        """Raise ConfigError for settings no model can be built from: the encoder's (shared) and ``positive``,
        the integer settings of the config's own tokenizer that must be at least 1."""
        for name in ("num_layers", "num_heads", "embed_dim", *positive):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{name} must be an integer >= 1, got {value!r}")
        if not isinstance(self.num_classes, int) or self.num_classes < 0:
            raise ConfigError(f"num_classes must be an integer >= 0 (0: no head), got {self.num_classes!r}")
        for name in ("mlp_ratio", "dropout", "attn_dropout", "drop_path"):
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool):
                raise ConfigError(f"{name} must be a number, got {value!r}")
        if not isinstance(self.extra, dict):
            raise ConfigError(f"extra must be a dict (class names, dataset, ...), got {self.extra!r}")
        if self.embed_dim % self.num_heads:
            raise ConfigError(f"embed_dim {self.embed_dim} must be divisible by num_heads {self.num_heads}")
        hidden = self.embed_dim * self.mlp_ratio
        if not (self.mlp_ratio > 0 and math.isfinite(hidden) and int(hidden) >= 1):
            raise ConfigError(f"mlp_ratio must be positive (a hidden width of at least 1), got {self.mlp_ratio!r}")
        for name in ("dropout", "attn_dropout", "drop_path"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ConfigError(f"{name} must be a probability in [0, 1], got {value!r}")
        if self.positional_embedding not in POSITIONAL_EMBEDDINGS:
            raise ConfigError(f"positional_embedding must be one of {POSITIONAL_EMBEDDINGS}, "
                              f"got {self.positional_embedding!r}")
        for name in ("conv_stride", "conv_padding"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or value < (1 if name == "conv_stride" else 0)):
                raise ConfigError(f"{name} must be {'>= 1' if name == 'conv_stride' else '>= 0'}, got {value!r}")

    def to_dict(self) -> dict:
        data = dataclasses.asdict(self)
        return {key: list(value) if isinstance(value, tuple) else value for key, value in data.items()}

    @classmethod
    def from_dict(cls: type[ConfigT], data: dict) -> ConfigT:
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise ConfigError(f"unknown {cls.__name__} keys {unknown}; known keys: {sorted(known)}")
        return cls(**data)

    def replace(self: ConfigT, **changes: object) -> ConfigT:
        return dataclasses.replace(self, **changes)

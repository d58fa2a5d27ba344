"""Vision Compact Transformers: ViT-Lite, CVT and CCT as one class, configured by a dataclass.

family     tokenizer                     pooling       positional embedding
ViT-Lite   patch embedding (conv k=s=P)  class token   learnable / sine / none
CVT        patch embedding               SeqPool       learnable / sine / none
CCT        conv tokenizer (n x conv/pool) SeqPool      learnable / sine / none
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .config import ModelConfig, to_pair  # to_pair is also imported from here (training)
from .layers import ATTENTION_IMPLS, TransformerClassifier, init_reference_weights
from .stats import DATASET_STATS
from .tokenizers import ConvTokenizer, cct_conv_geometry, patch_embed

FAMILIES = ("vit_lite", "cvt", "cct")


@dataclass
class VisionConfig(ModelConfig):
    """Everything needed to build a vision model; saved as JSON beside the weights."""

    family: str = "cct"
    num_layers: int = 7
    num_heads: int = 4
    mlp_ratio: float = 2.0
    embed_dim: int = 256
    img_size: tuple[int, int] = (32, 32)
    in_chans: int = 3
    num_classes: int = 10
    positional_embedding: str = "learnable"
    # ViT-Lite / CVT
    patch_size: int = 4
    # CCT tokenizer; stride / padding None = the paper's defaults (tokenizers.cct_conv_geometry)
    kernel_size: int = 3
    n_conv_layers: int = 1
    conv_width: int = 64
    pool_kernel: int = 3
    # preprocessing metadata (not part of the network)
    mean: tuple[float, ...] = DATASET_STATS["cifar10"][0]
    std: tuple[float, ...] = DATASET_STATS["cifar10"][1]

    def __post_init__(self) -> None:
        self.img_size = to_pair(self.img_size)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.family not in FAMILIES:
            raise ConfigError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.attn_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {self.attn_impl!r}")
        for name in ("num_layers", "num_heads", "embed_dim", "in_chans", "patch_size", "kernel_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ConfigError(f"num_classes must be >= 0, got {self.num_classes}")
        if min(self.img_size) < 1:
            raise ConfigError(f"img_size must be positive, got {self.img_size}")


class CompactTransformer(nn.Module):
    """A ViT-Lite, CVT or CCT image classifier. Input (B, C, H, W) float, output logits (B, classes)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        if config.family == "cct":
            stride, padding = cct_conv_geometry(config.kernel_size, config.conv_stride, config.conv_padding)
            self.tokenizer = ConvTokenizer(
                in_chans=config.in_chans, embed_dim=config.embed_dim, kernel_size=config.kernel_size, stride=stride,
                padding=padding, n_conv_layers=config.n_conv_layers, conv_width=config.conv_width,
                pool_kernel=config.pool_kernel, pool_stride=config.pool_stride, pool_padding=config.pool_padding,
            )  # fmt: skip
        else:
            height, width = config.img_size
            if height % config.patch_size or width % config.patch_size:
                raise ConfigError(
                    f"img_size {height}x{width} must be divisible by patch_size {config.patch_size}"
                )
            self.tokenizer = patch_embed(config.in_chans, config.embed_dim, config.patch_size)
        height, width = config.img_size
        self.tokenizer.check_input(height, width, config.in_chans)
        self.grid_size = self.tokenizer.grid_size(height, width)
        self.classifier = TransformerClassifier.from_config(
            config,
            seq_len=self.grid_size[0] * self.grid_size[1],
            pooling="cls" if config.family == "vit_lite" else "seqpool",
        )
        self.tokenizer.apply(init_reference_weights)

    @property
    def num_tokens(self) -> int:
        return self.grid_size[0] * self.grid_size[1]

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> pooled features (B, embed_dim), before the head."""
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(x.shape)}")
        self.tokenizer.check_input(x.shape[2], x.shape[3], x.shape[1])
        return self.classifier.forward_features(self.tokenizer(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier.fc(self.forward_features(x))

    def reset_classifier(self, num_classes: int) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` (0 = no head)."""
        head: nn.Module = nn.Identity()
        if num_classes > 0:
            head = nn.Linear(self.config.embed_dim, num_classes)
            init_reference_weights(head)
        device = self.classifier.norm.weight.device
        self.classifier.fc = head.to(device)
        self.config = self.config.replace(num_classes=num_classes)

"""Vision Compact Transformers: ViT-Lite, CVT and CCT as one class, configured by a dataclass.

family     tokenizer                     pooling       positional embedding
ViT-Lite   patch embedding (conv k=s=P)  class token   learnable / sine / none
CVT        patch embedding               SeqPool       learnable / sine / none
CCT        conv tokenizer (n x conv/pool) SeqPool      learnable / sine / none
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from .config import ModelConfig
from .layers import ATTENTION_IMPLS, TransformerClassifier
from .tokenizers import ConvTokenizer, patch_embed

FAMILIES = ("vit_lite", "cvt", "cct")


def to_pair(size: int | tuple[int, int] | list[int]) -> tuple[int, int]:
    if isinstance(size, int):
        return (size, size)
    height, width = size
    return (int(height), int(width))


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
    # CCT tokenizer; stride / padding None = the paper's max(1, k//2 - 1) / max(1, k//2)
    kernel_size: int = 3
    n_conv_layers: int = 1
    conv_stride: int | None = None
    conv_padding: int | None = None
    conv_width: int = 64
    pool_kernel: int = 3
    pool_stride: int = 2
    pool_padding: int = 1
    # regularisation (the paper's "tuned" defaults)
    dropout: float = 0.0
    attn_dropout: float = 0.1
    drop_path: float = 0.1
    attn_impl: str = "auto"
    # preprocessing metadata (not part of the network)
    mean: tuple[float, ...] = (0.4914, 0.4822, 0.4465)
    std: tuple[float, ...] = (0.2470, 0.2435, 0.2616)
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.img_size = to_pair(self.img_size)
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.attn_impl not in ATTENTION_IMPLS:
            raise ValueError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {self.attn_impl!r}")
        for name in ("num_layers", "num_heads", "embed_dim", "in_chans", "patch_size", "kernel_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.num_classes < 0:
            raise ValueError(f"num_classes must be >= 0, got {self.num_classes}")
        if min(self.img_size) < 1:
            raise ValueError(f"img_size must be positive, got {self.img_size}")

    @property
    def stride(self) -> int:
        return self.conv_stride if self.conv_stride is not None else max(1, self.kernel_size // 2 - 1)

    @property
    def padding(self) -> int:
        return self.conv_padding if self.conv_padding is not None else max(1, self.kernel_size // 2)


class CompactTransformer(nn.Module):
    """A ViT-Lite, CVT or CCT image classifier. Input (B, C, H, W) float, output logits (B, classes)."""

    def __init__(self, config: VisionConfig) -> None:
        super().__init__()
        self.config = config
        if config.family == "cct":
            self.tokenizer = ConvTokenizer(
                in_chans=config.in_chans,
                embed_dim=config.embed_dim,
                kernel_size=config.kernel_size,
                stride=config.stride,
                padding=config.padding,
                n_conv_layers=config.n_conv_layers,
                conv_width=config.conv_width,
                pool_kernel=config.pool_kernel,
                pool_stride=config.pool_stride,
                pool_padding=config.pool_padding,
            )
        else:
            height, width = config.img_size
            if height % config.patch_size or width % config.patch_size:
                raise ValueError(
                    f"img_size {height}x{width} must be divisible by patch_size {config.patch_size}"
                )
            self.tokenizer = patch_embed(config.in_chans, config.embed_dim, config.patch_size)
        height, width = config.img_size
        self.tokenizer.check_input(height, width, config.in_chans)
        self.grid_size = self.tokenizer.grid_size(height, width)
        self.classifier = TransformerClassifier(
            embed_dim=config.embed_dim,
            num_layers=config.num_layers,
            num_heads=config.num_heads,
            mlp_ratio=config.mlp_ratio,
            num_classes=config.num_classes,
            seq_len=self.grid_size[0] * self.grid_size[1],
            pooling="cls" if config.family == "vit_lite" else "seqpool",
            positional_embedding=config.positional_embedding,
            dropout=config.dropout,
            attn_dropout=config.attn_dropout,
            drop_path=config.drop_path,
            attn_impl=config.attn_impl,
        )
        self.tokenizer.apply(_init_conv)

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
            nn.init.trunc_normal_(head.weight, std=0.02)
            nn.init.zeros_(head.bias)
        device = self.classifier.norm.weight.device
        self.classifier.fc = head.to(device)
        self.config = self.config.replace(num_classes=num_classes)

    def no_weight_decay(self) -> set[str]:
        """Names of parameters that the paper's recipe keeps out of weight decay (besides 1-D ones)."""
        return {name for name, _ in self.named_parameters() if name.endswith(("positional_emb", "class_emb"))}


def _init_conv(module: nn.Module) -> None:
    if isinstance(module, nn.Conv2d):
        nn.init.kaiming_normal_(module.weight)
        if module.bias is not None:
            nn.init.zeros_(module.bias)

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
from .config import ModelConfig, as_size_pair, to_pair  # to_pair is also imported from here (training)
from .hub import HubMixin
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
        size = as_size_pair(self.img_size)
        if size is None:
            raise ConfigError(f"img_size must be an int or an (H, W) pair of ints, got {self.img_size!r}")
        self.img_size = size
        for name in ("mean", "std"):
            values = getattr(self, name)
            if not isinstance(values, (list, tuple)) or not all(
                isinstance(v, (int, float)) and not isinstance(v, bool) for v in values
            ):
                raise ConfigError(f"{name} must be a list of numbers (one per channel), got {values!r}")
        self.mean, self.std = tuple(self.mean), tuple(self.std)
        if self.family not in FAMILIES:
            raise ConfigError(f"family must be one of {FAMILIES}, got {self.family!r}")
        if self.attn_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {self.attn_impl!r}")
        self.check(positive=("in_chans", "patch_size", "kernel_size", "n_conv_layers", "conv_width", "pool_kernel"))
        if min(self.img_size) < 1:
            raise ConfigError(f"img_size must be positive, got {self.img_size}")
        # one value for every channel, or per-channel values for a single-channel model (their mean)
        self.mean, self.std = (_per_channel(values, self.in_chans) for values in (self.mean, self.std))
        if len(self.mean) != self.in_chans or len(self.std) != self.in_chans:
            raise ConfigError(f"mean and std need one value per input channel ({self.in_chans}), "
                              f"got {len(self.mean)} and {len(self.std)}")
        if min(self.std) <= 0:
            raise ConfigError(f"std values must be positive, got {self.std}")


def _per_channel(values: tuple[float, ...], channels: int) -> tuple[float, ...]:
    if len(values) == 1 and channels > 1:
        return values * channels
    if channels == 1 and len(values) > 1:
        return (sum(values) / len(values),)
    return values


class CompactTransformer(HubMixin, nn.Module):
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

    @property
    def in_chans(self) -> int:
        return self.config.in_chans

    @property
    def num_features(self) -> int:
        """Width of the pooled features that the head reads (timm's name for it)."""
        return self.config.embed_dim

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Images -> pooled features (B, embed_dim), before the head."""
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(x.shape)}")
        self.tokenizer.check_input(x.shape[2], x.shape[3], x.shape[1])
        return self.classifier.forward_features(self.tokenizer(x))

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        """Pooled features -> logits (``pre_logits``: the features themselves). Pooling (SeqPool or the class
        token) belongs to :meth:`forward_features` here, unlike timm's models, where it is part of the head."""
        return x if pre_logits else self.classifier.fc(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x))

    def forward_with_token_weights(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, classes) and, from the same forward pass, what each token weighs in the pooled feature,
        on the token grid (B, H', W') in float32, each map summing to 1: SeqPool's weights (CVT, CCT) or the
        class token's last-layer attention (ViT-Lite; see ``TransformerClassifier.forward_features_and_token_weights``).
        Upsampled to the image, it is a heat map of where the model looked."""
        if x.ndim != 4:
            raise ValueError(f"expected images of shape (B, C, H, W), got shape {tuple(x.shape)}")
        self.tokenizer.check_input(x.shape[2], x.shape[3], x.shape[1])
        features, weights = self.classifier.forward_features_and_token_weights(self.tokenizer(x))
        grid = self.tokenizer.grid_size(x.shape[2], x.shape[3])
        return self.forward_head(features), weights.reshape(x.shape[0], *grid)

    def get_classifier(self) -> nn.Module:
        return self.classifier.fc

    def no_weight_decay(self) -> set[str]:
        """Parameters that are not weight-decayed besides norms and biases (read by timm's optimizer factory)."""
        names = {"classifier.positional_emb", "classifier.class_emb"}
        return {name for name, _ in self.named_parameters() if name in names}

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the head with a freshly initialised one for ``num_classes`` (0 = no head). ``global_pool``:
        timm's argument, which must stay None: the pooling (SeqPool or a class token) is fixed by the family."""
        if global_pool is not None:
            raise ConfigError(f"global_pool must be None (the pooling is fixed by the family), got {global_pool!r}")
        head: nn.Module = nn.Identity()
        if num_classes > 0:
            head = nn.Linear(self.config.embed_dim, num_classes)
            init_reference_weights(head)
        device = self.classifier.norm.weight.device
        self.classifier.fc = head.to(device)
        self.config = self.config.replace(num_classes=num_classes)

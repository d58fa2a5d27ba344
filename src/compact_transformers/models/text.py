"""Text Compact Transformers (paper appendix G): Transformer-Lite, ViT-Lite, CVT and CCT for text.

Word ids -> embedding (optionally a frozen pretrained matrix such as GloVe) -> tokenizer -> masked
encoder -> SeqPool or class token -> head. Padding is masked in the tokenizer, attention and pooling,
so appending padding to a sequence does not change its logits.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from ..errors import ConfigError
from .config import ModelConfig
from .hub import HubMixin
from .layers import ATTENTION_IMPLS, TransformerClassifier, init_reference_weights
from .tokenizers import TextConvTokenizer, cct_conv_geometry

TEXT_FAMILIES = ("transformer", "vit_lite", "cvt", "cct")


@dataclass
class TextConfig(ModelConfig):
    """Everything needed to build a text model; saved as JSON beside the weights."""

    family: str = "cct"
    # the words: a vocabulary of word vectors (frozen pretrained ones in the paper), texts of up to seq_len
    vocab_size: int = 100_000
    word_dim: int = 300
    padding_idx: int | None = 1
    freeze_embedding: bool = False
    seq_len: int = 64
    # the encoder and head
    num_layers: int = 2
    num_heads: int = 2
    mlp_ratio: float = 1.0
    embed_dim: int = 128
    num_classes: int = 4
    positional_embedding: str = "sine"
    patch_size: int = 4  # ViT-Lite / CVT
    kernel_size: int = 2  # CCT; stride / padding None = the paper's defaults (tokenizers.cct_conv_geometry)
    pool_kernel: int = 2

    def __post_init__(self) -> None:
        if self.family not in TEXT_FAMILIES:
            raise ConfigError(f"text family must be one of {TEXT_FAMILIES}, got {self.family!r}")
        if self.attn_impl not in ATTENTION_IMPLS:
            raise ConfigError(f"attn_impl must be one of {ATTENTION_IMPLS}, got {self.attn_impl!r}")
        self.check(positive=("vocab_size", "word_dim", "seq_len", "patch_size", "kernel_size", "pool_kernel"))
        if self.family in ("vit_lite", "cvt") and self.seq_len % self.patch_size:
            raise ConfigError(f"seq_len {self.seq_len} must be divisible by patch_size {self.patch_size}")


class Embedder(nn.Module):
    """Word embedding; ``pretrained`` (vocab, word_dim) is copied in, and frozen if asked."""

    def __init__(
        self,
        vocab_size: int,
        word_dim: int,
        padding_idx: int | None,
        pretrained: torch.Tensor | None = None,
        freeze: bool = False,
    ) -> None:
        super().__init__()
        if pretrained is not None:
            if pretrained.ndim != 2:
                raise ValueError(f"pretrained embedding must be 2-D (vocab, dim), got {tuple(pretrained.shape)}")
            vocab_size, word_dim = pretrained.shape
        self.embeddings = nn.Embedding(vocab_size, word_dim, padding_idx=padding_idx)
        if pretrained is not None:
            with torch.no_grad():
                self.embeddings.weight.copy_(pretrained)
        self.embeddings.weight.requires_grad_(not freeze)

    def forward(self, ids: torch.Tensor, token_mask: torch.Tensor | None) -> torch.Tensor:
        x = self.embeddings(ids)
        if token_mask is not None:
            x = x * token_mask[..., None].to(x.dtype)
        return x


class TextCompactTransformer(HubMixin, nn.Module):
    """Text classifier. ``forward(ids (B, L) long, mask (B, L) bool = real token)`` -> logits.

    Sequences are right-padded. With ``mask=None`` the mask is ``ids != padding_idx``.
    """

    def __init__(self, config: TextConfig, pretrained_embedding: torch.Tensor | None = None) -> None:
        super().__init__()
        self.config = config
        self.embedder = Embedder(
            vocab_size=config.vocab_size,
            word_dim=config.word_dim,
            padding_idx=config.padding_idx,
            pretrained=pretrained_embedding,
            freeze=config.freeze_embedding,
        )
        word_dim = self.embedder.embeddings.embedding_dim
        self.tokenizer: TextConvTokenizer | None
        if config.family == "transformer":
            self.tokenizer = None
            embed_dim, seq_len = word_dim, config.seq_len
        else:
            is_cct = config.family == "cct"
            if is_cct:
                kernel = config.kernel_size
                stride, padding = cct_conv_geometry(kernel, config.conv_stride, config.conv_padding)
            else:
                kernel, stride, padding = config.patch_size, config.patch_size, 0
            self.tokenizer = TextConvTokenizer(
                word_dim=word_dim,
                embed_dim=config.embed_dim,
                kernel_size=kernel,
                stride=stride,
                padding=padding,
                pool_kernel=config.pool_kernel,
                pool_stride=config.pool_stride,
                pool_padding=config.pool_padding,
                max_pool=is_cct,
                activation=is_cct,
                keep_partial_patch=not is_cct,
            )
            embed_dim, seq_len = config.embed_dim, int(self.tokenizer.output_length(config.seq_len))
            if seq_len < 1:
                raise ConfigError(f"seq_len {config.seq_len} is too short for this tokenizer")
            self.tokenizer.apply(init_reference_weights)
        self.classifier = TransformerClassifier.from_config(
            config,
            seq_len=seq_len,
            pooling="seqpool" if config.family in ("cvt", "cct") else "cls",
            embed_dim=embed_dim,
            variable_length=True,
        )

    @property
    def num_classes(self) -> int:
        return self.config.num_classes

    def forward_features(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        x, token_mask = self._tokens(ids, mask)
        return self.classifier.forward_features(x, token_mask=token_mask)

    def forward(self, ids: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier.fc(self.forward_features(ids, mask))

    def forward_with_token_weights(
        self, ids: torch.Tensor, mask: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Logits (B, classes) and, from the same forward pass, what each of the encoder's tokens weighs in the
        pooled feature (B, N) in float32, each row summing to 1 (0 for padding): SeqPool's weights, or the
        class token's last-layer attention. :meth:`word_weights` spreads a row over the words."""
        x, token_mask = self._tokens(ids, mask)
        features, weights = self.classifier.forward_features_and_token_weights(x, token_mask=token_mask)
        return self.classifier.fc(features), weights

    def word_weights(self, token_weights: torch.Tensor, num_words: int) -> torch.Tensor:
        """One text's token weights (N,) spread over its first ``num_words`` words (num_words,): each token's
        weight is shared equally by the words its tokenizer window (convolution, then pooling) reads. A token
        that reads only padding (the first one of ``text_cct_*_1x1``) gives its weight to no word."""
        words = torch.zeros(num_words, dtype=torch.float32)
        if num_words == 0:
            return words
        for token, weight in enumerate(token_weights.float().cpu().tolist()):
            start, stop = (token, token + 1) if self.tokenizer is None else self.tokenizer.word_span(token)
            start, stop = max(start, 0), min(stop, num_words)
            if weight > 0 and stop > start:
                words[start:stop] += weight / (stop - start)
        return words

    def _tokens(self, ids: torch.Tensor, mask: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Word ids -> the encoder's input tokens (B, N, d) and their mask (None: all real)."""
        if ids.ndim != 2 or ids.dtype not in (torch.int64, torch.int32):
            raise ValueError(f"expected token ids of shape (B, L) and integer dtype, got {tuple(ids.shape)} {ids.dtype}")
        if ids.shape[1] > self.config.seq_len and self.config.positional_embedding != "none":
            raise ValueError(f"sequence length {ids.shape[1]} exceeds the model's seq_len {self.config.seq_len}")
        if mask is None and self.config.padding_idx is not None:
            mask = ids != self.config.padding_idx
        if mask is not None:
            if mask.shape != ids.shape:
                raise ValueError(f"mask shape {tuple(mask.shape)} must equal ids shape {tuple(ids.shape)}")
            mask = mask.bool()
        x = self.embedder(ids, mask)
        if self.tokenizer is None:
            token_mask = mask
        else:
            lengths = None if mask is None else mask.sum(dim=1)
            x, lengths = self.tokenizer(x, lengths)
            token_mask = None
            if lengths is not None:
                token_mask = torch.arange(x.shape[1], device=x.device)[None, :] < lengths[:, None]
        if token_mask is not None:
            # A text of padding only would leave attention and pooling nothing to attend to (NaN logits):
            # let it keep its first token.
            first = torch.arange(x.shape[1], device=x.device)[None, :] == 0
            token_mask = token_mask | (first & ~token_mask.any(dim=1, keepdim=True))
        return x, token_mask

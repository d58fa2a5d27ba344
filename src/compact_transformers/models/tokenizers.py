"""Tokenizers: image -> token sequence (B, N, d), and word embeddings -> tokens for text models."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from ..errors import ConfigError
from .layers import conv_output_size


def cct_conv_geometry(kernel_size: int, stride: int | None = None, padding: int | None = None) -> tuple[int, int]:
    """(stride, padding) of a CCT tokenizer conv; None picks the paper's max(1, k//2 - 1) / max(1, k//2)."""
    if stride is None:
        stride = max(1, kernel_size // 2 - 1)
    if padding is None:
        padding = max(1, kernel_size // 2)
    return stride, padding


class ConvTokenizer(nn.Module):
    """``n_conv_layers`` blocks of Conv2d(k x k) -> activation -> MaxPool2d, flattened to tokens.

    CCT uses it with ReLU, max-pooling, no conv bias and 64 intermediate channels; the patch embedding of
    ViT-Lite / CVT is the special case of one conv with kernel = stride = patch size, with bias and no
    pooling (the reference builds both this way, hence the shared key layout ``conv_layers.{i}.0``).
    """

    def __init__(self, in_chans: int, embed_dim: int, kernel_size: int, stride: int, padding: int,
                 n_conv_layers: int = 1, conv_width: int = 64, pool_kernel: int = 3, pool_stride: int = 2,
                 pool_padding: int = 1, max_pool: bool = True, activation: bool = True,
                 conv_bias: bool = False) -> None:
        super().__init__()
        if n_conv_layers < 1:
            raise ConfigError(f"n_conv_layers must be >= 1, got {n_conv_layers}")
        self.in_chans = in_chans
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.pool = (pool_kernel, pool_stride, pool_padding) if max_pool else None
        widths = [in_chans] + [conv_width] * (n_conv_layers - 1) + [embed_dim]
        self.conv_layers = nn.Sequential(
            *[
                nn.Sequential(
                    nn.Conv2d(
                        widths[i],
                        widths[i + 1],
                        kernel_size=kernel_size,
                        stride=stride,
                        padding=padding,
                        bias=conv_bias,
                    ),
                    nn.ReLU() if activation else nn.Identity(),
                    nn.MaxPool2d(pool_kernel, pool_stride, pool_padding) if max_pool else nn.Identity(),
                )
                for i in range(n_conv_layers)
            ]
        )

    def grid_size(self, height: int, width: int) -> tuple[int, int]:
        """Token grid (H', W') produced for an input of height x width."""
        for _ in self.conv_layers:
            height = conv_output_size(height, self.kernel_size, self.stride, self.padding)
            width = conv_output_size(width, self.kernel_size, self.stride, self.padding)
            if self.pool is not None:
                height = conv_output_size(height, *self.pool)
                width = conv_output_size(width, *self.pool)
        return height, width

    def min_input_size(self) -> int:
        """Smallest side length that still yields at least one token."""
        size = 1
        while min(self.grid_size(size, size)) < 1:
            size += 1
        return size

    def check_input(self, height: int, width: int, channels: int) -> None:
        if channels != self.in_chans:
            raise ConfigError(
                f"input has {channels} channels, the model expects {self.in_chans} "
                f"(create the model with in_chans={channels})"
            )
        grid_h, grid_w = self.grid_size(height, width)
        if grid_h < 1 or grid_w < 1:
            raise ConfigError(
                f"input {height}x{width} is too small for this tokenizer: it needs at least "
                f"{self.min_input_size()}x{self.min_input_size()} pixels"
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, activation, pool in self.conv_layers:
            # ReLU and max-pooling commute (both are monotone): pooling first gives the same tokens and
            # gradients, with the ReLU and its backward on a quarter of the values.
            x = activation(pool(conv(x)))
        return x.flatten(2).transpose(1, 2)


def patch_embed(in_chans: int, embed_dim: int, patch_size: int) -> ConvTokenizer:
    """ViT-Lite / CVT patch embedding: one Conv2d with kernel = stride = patch size, with bias."""
    return ConvTokenizer(
        in_chans=in_chans,
        embed_dim=embed_dim,
        kernel_size=patch_size,
        stride=patch_size,
        padding=0,
        n_conv_layers=1,
        max_pool=False,
        activation=False,
        conv_bias=True,
    )


class TextConvTokenizer(nn.Module):
    """Text tokenizer: a (k x word_dim) convolution over the embedded sequence, then pooling along it.

    The sequence of word vectors is treated as a 1-channel image of seq_len x word_dim. Masks are
    propagated with the same length arithmetic as the layers, and positions past the valid length are
    zeroed before pooling, so appending padding to a sequence never changes the valid tokens.

    ``keep_partial_patch`` (ViT-Lite / CVT, stride = kernel): the sequence is right-padded with zeros to
    a whole number of patches and a last patch holding fewer than ``kernel_size`` words is a valid token;
    otherwise the last words of a text would be dropped, and a text shorter than one patch would have no
    token at all.
    """

    def __init__(self, word_dim: int, embed_dim: int, kernel_size: int, stride: int, padding: int, pool_kernel: int = 3,
                 pool_stride: int = 2, pool_padding: int = 1, max_pool: bool = True, activation: bool = True,
                 keep_partial_patch: bool = False) -> None:
        super().__init__()
        if keep_partial_patch and (stride != kernel_size or padding != 0 or max_pool):
            raise ValueError("keep_partial_patch needs stride == kernel_size, padding 0 and no pooling")
        self.kernel_size, self.stride, self.padding = kernel_size, stride, padding
        self.keep_partial_patch = keep_partial_patch
        self.pool = (pool_kernel, pool_stride, pool_padding) if max_pool else None
        self.activation = activation
        # Same key layout as the reference: conv_layers.0 (conv), .1 (activation), .2 (pool).
        self.conv_layers = nn.Sequential(
            nn.Conv2d(
                1,
                embed_dim,
                kernel_size=(kernel_size, word_dim),
                stride=(stride, 1),
                padding=(padding, 0),
                bias=False,
            ),
            nn.ReLU() if activation else nn.Identity(),
            nn.Identity(),
        )

    def _convolve(self, x: torch.Tensor) -> torch.Tensor:
        """The (k x word_dim) convolution of (B, L, word_dim) as one matmul over windows of k words: the same
        result as ``conv_layers[0]`` on (B, 1, L, word_dim), many times faster to train on CPU (a 1-channel
        convolution spanning the whole width is a poor fit for convolution kernels). Returns (B, L', d)."""
        if self.padding:
            x = F.pad(x, (0, 0, self.padding, self.padding))
        windows = x.unfold(1, self.kernel_size, self.stride)  # (B, L', word_dim, k)
        return F.linear(windows.transpose(2, 3).flatten(2), self.conv_layers[0].weight.flatten(1))

    def conv_length(self, length: torch.Tensor | int) -> torch.Tensor | int:
        """Valid outputs of the convolution for ``length`` valid inputs."""
        if self.keep_partial_patch:
            return (length + self.stride - 1) // self.stride
        return conv_output_size(length, self.kernel_size, self.stride, self.padding)

    def output_length(self, length: torch.Tensor | int) -> torch.Tensor | int:
        length = self.conv_length(length)
        if self.pool is not None:
            length = conv_output_size(length, *self.pool)
        return length

    def word_span(self, token: int) -> tuple[int, int]:
        """The words ``[start, stop)`` that output token ``token`` is computed from (its convolution windows
        under its pooling window); may reach past either end of the text, into the padding."""
        first = last = token
        if self.pool is not None:
            kernel, stride, padding = self.pool
            first, last = token * stride - padding, token * stride - padding + kernel - 1
        return first * self.stride - self.padding, last * self.stride - self.padding + self.kernel_size

    def forward(
        self, x: torch.Tensor, lengths: torch.Tensor | None = None
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """x: (B, L, word_dim); lengths: valid tokens per row. Returns tokens (B, N, d) and new lengths."""
        if self.keep_partial_patch and x.shape[1] % self.stride:
            x = F.pad(x, (0, 0, 0, self.stride - x.shape[1] % self.stride))
        x = self.conv_layers[1](self._convolve(x)).transpose(1, 2)  # (B, d, L')
        if lengths is not None:
            conv_lengths = self.conv_length(lengths)
            valid = torch.arange(x.shape[-1], device=x.device)[None, :] < conv_lengths[:, None]
            # 0 is neutral for max-pooling only after a ReLU; without activation there is no pooling.
            x = x * valid[:, None, :].to(x.dtype)
        if self.pool is not None:
            kernel, stride, padding = self.pool
            x = F.max_pool1d(x, kernel, stride, padding)
        x = x.transpose(1, 2)
        if lengths is None:
            return x, None
        out_lengths = self.output_length(lengths)
        valid = torch.arange(x.shape[1], device=x.device)[None, :] < out_lengths[:, None]
        return x * valid[..., None].to(x.dtype), out_lengths

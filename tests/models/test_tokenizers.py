"""The convolutional tokenizer's pooled-then-activated forward is the reference conv -> ReLU -> max-pool."""

from __future__ import annotations

import pytest
import torch

from compact_transformers.models.tokenizers import ConvTokenizer


@pytest.mark.parametrize("n_conv_layers", [1, 2])
def test_pooling_before_relu_gives_the_reference_tokens_and_gradients(n_conv_layers: int) -> None:
    torch.manual_seed(0)
    tokenizer = ConvTokenizer(in_chans=3, embed_dim=16, kernel_size=3, stride=1, padding=1,
                              n_conv_layers=n_conv_layers, conv_width=8)
    images = torch.randn(2, 3, 12, 12)
    images[0, :, :6] = -1.0  # a region where every window is negative: ties at zero after the ReLU
    tokens = tokenizer(images)
    reference = tokenizer.conv_layers(images).flatten(2).transpose(1, 2)  # the Sequential: conv, ReLU, pool
    torch.testing.assert_close(tokens, reference, atol=0, rtol=0)
    upstream = torch.randn_like(tokens)
    grads = torch.autograd.grad((tokens * upstream).sum(), list(tokenizer.parameters()))
    reference_grads = torch.autograd.grad((reference * upstream).sum(), list(tokenizer.parameters()))
    for grad, expected in zip(grads, reference_grads):
        torch.testing.assert_close(grad, expected, atol=1e-6, rtol=1e-5)

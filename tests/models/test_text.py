"""Text models: padding invariance for every family, masks, frozen pretrained embeddings."""

from __future__ import annotations

import itertools

import pytest
import torch

from compact_transformers.models import TextCompactTransformer, TextConfig, create_model
from compact_transformers.models.tokenizers import TextConvTokenizer

PAD = 1
VOCAB = 30
COMBOS = [("transformer", 1, pe) for pe in ("learnable", "sine", "none")] + [
    (family, kernel, pe)
    for family, kernel, pe in itertools.product(("vit_lite", "cvt", "cct"), (1, 2, 4), ("learnable", "sine", "none"))
]


def _small(family: str, kernel: int, pe: str, **overrides: object) -> TextCompactTransformer:
    config = TextConfig(
        family=family, vocab_size=VOCAB, word_dim=16, embed_dim=16, num_heads=2, num_layers=1, seq_len=24,
        num_classes=3, kernel_size=kernel, patch_size=kernel, positional_embedding=pe, padding_idx=PAD,
        attn_dropout=0.0, drop_path=0.0, **overrides,
    )
    return TextCompactTransformer(config).eval()


def _padded(ids: torch.Tensor, lengths: list[int], total: int) -> torch.Tensor:
    out = torch.full((ids.shape[0], total), PAD, dtype=torch.long)
    for row, length in enumerate(lengths):
        out[row, :length] = ids[row, :length]
    return out


@pytest.mark.parametrize("family,kernel,pe", COMBOS)
def test_appending_padding_leaves_logits_unchanged(family: str, kernel: int, pe: str) -> None:
    model = _small(family, kernel, pe)
    ids = torch.randint(2, VOCAB, (4, 24))
    lengths = [8, 5, 3, 1]  # full, and shorter than one patch of 4 / 2
    with torch.no_grad():
        base = model(_padded(ids, lengths, 8))
        assert torch.isfinite(base).all()
        for total in (12, 16, 24):  # multiples of every patch size
            torch.testing.assert_close(model(_padded(ids, lengths, total)), base, atol=1e-5, rtol=0)
        # the real words matter: changing one changes that row only
        changed = _padded(ids, lengths, 16)
        changed[1, 0] = 2 if changed[1, 0] != 2 else 3
        out = model(changed)
    assert (out[1] - base[1]).abs().max() > 1e-6
    torch.testing.assert_close(out[[0, 2, 3]], base[[0, 2, 3]], atol=1e-5, rtol=0)


@pytest.mark.parametrize("family", ["vit_lite", "cvt"])
def test_patch_models_keep_the_last_partial_patch(family: str) -> None:
    """Words after the last whole patch still count (they used to be dropped), at any total length."""
    model = _small(family, 4, "none")
    ids = torch.randint(2, VOCAB, (1, 6))
    with torch.no_grad():
        base = model(ids)
        for total in (7, 8, 11, 12):
            torch.testing.assert_close(model(_padded(ids, [6], total)), base, atol=1e-5, rtol=0)
        changed = ids.clone()
        changed[0, 5] = 2 if changed[0, 5] != 2 else 3  # the 6th word sits in the partial 2nd patch
        assert (model(changed) - base).abs().max() > 1e-6


def test_a_text_of_padding_only_gives_finite_logits() -> None:
    for family, kernel, pe in [("cvt", 4, "sine"), ("transformer", 1, "none"), ("cct", 2, "learnable")]:
        model = _small(family, kernel, pe)
        with torch.no_grad():
            out = model(_padded(torch.randint(2, VOCAB, (2, 8)), [0, 5], 8))
        assert torch.isfinite(out).all(), family


def test_mask_none_means_ids_not_padding_and_masked_ids_are_ignored() -> None:
    model = _small("cct", 2, "learnable")
    ids = _padded(torch.randint(2, VOCAB, (3, 12)), [12, 7, 2], 12)
    mask = ids != PAD
    with torch.no_grad():
        default = model(ids)
        torch.testing.assert_close(model(ids, mask), default, atol=0, rtol=0)
        torch.testing.assert_close(model(ids, mask.long()), default, atol=0, rtol=0)  # 0/1 masks work too
        garbage = ids.clone()
        garbage[~mask] = torch.randint(2, VOCAB, (int((~mask).sum()),))  # not the padding id any more
        torch.testing.assert_close(model(garbage, mask), default, atol=1e-6, rtol=0)
        assert (model(garbage) - default).abs().max() > 1e-6  # without the mask they are words


def test_mask_shapes() -> None:
    model = _small("cct", 2, "sine")
    ids = torch.randint(2, VOCAB, (2, 10))
    with pytest.raises(ValueError, match=r"mask shape \(2, 9\) must equal ids shape \(2, 10\)"):
        model(ids, torch.ones(2, 9, dtype=torch.bool))
    with pytest.raises(ValueError, match="integer dtype"):
        model(ids.float())
    with pytest.raises(ValueError, match="exceeds the model's seq_len 24"):
        model(torch.randint(2, VOCAB, (2, 25)))
    assert model(ids).shape == (2, 3)


@pytest.mark.parametrize("kernel", [1, 2, 4])
def test_tokenizer_lengths_follow_the_layers(kernel: int) -> None:
    tokenizer = TextConvTokenizer(word_dim=8, embed_dim=6, kernel_size=kernel, stride=max(1, kernel // 2 - 1),
                                  padding=max(1, kernel // 2), pool_kernel=2, pool_stride=2, pool_padding=1)
    x = torch.randn(3, 13, 8)
    lengths = torch.tensor([13, 6, 1])
    tokens, out_lengths = tokenizer(x, lengths)
    assert tokens.shape == (3, tokenizer.output_length(13), 6)
    assert out_lengths.tolist() == [tokenizer.output_length(n) for n in (13, 6, 1)]
    for row, n in enumerate(out_lengths.tolist()):
        assert tokens[row, n:].abs().sum() == 0  # nothing past the valid tokens
    assert (tokens[0] != 0).any()
    unmasked, none = tokenizer(x, None)
    assert none is None and unmasked.shape == tokens.shape


def test_frozen_pretrained_embedding_stays_fixed() -> None:
    matrix = torch.randn(VOCAB, 12)
    config = TextConfig(family="cct", vocab_size=VOCAB, word_dim=12, embed_dim=16, num_heads=2, num_layers=1,
                        seq_len=16, num_classes=3, kernel_size=2, freeze_embedding=True, padding_idx=PAD)
    model = TextCompactTransformer(config, pretrained_embedding=matrix)
    weight = model.embedder.embeddings.weight
    assert weight.requires_grad is False
    torch.testing.assert_close(weight, matrix, atol=0, rtol=0)
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.5)
    before = model.classifier.fc.weight.detach().clone()
    ids = torch.randint(2, VOCAB, (4, 16))
    torch.nn.functional.cross_entropy(model(ids), torch.tensor([0, 1, 2, 0])).backward()
    optimizer.step()
    torch.testing.assert_close(model.embedder.embeddings.weight, matrix, atol=0, rtol=0)
    assert weight.grad is None
    assert not torch.equal(model.classifier.fc.weight, before)  # the rest did train
    assert all(p is not weight for p in model.parameters() if p.requires_grad)


def test_unfrozen_pretrained_embedding_trains_and_takes_the_matrix_shape() -> None:
    matrix = torch.randn(17, 10)
    config = TextConfig(family="cvt", vocab_size=999, word_dim=300, embed_dim=16, num_heads=2, num_layers=1,
                        seq_len=8, num_classes=2, patch_size=2)
    model = TextCompactTransformer(config, pretrained_embedding=matrix)
    assert model.embedder.embeddings.weight.shape == (17, 10) and model.embedder.embeddings.weight.requires_grad
    with pytest.raises(ValueError, match="must be 2-D"):
        TextCompactTransformer(config, pretrained_embedding=torch.randn(17))


def test_text_presets_build_and_run() -> None:
    for name in ("text_transformer_2", "text_vit_2_4", "text_cvt_2_2", "text_cct_2_1x1", "text_cct_2"):
        model = create_model(name, vocab_size=50, word_dim=8 if "transformer" not in name else 16, seq_len=16)
        out = model(torch.randint(2, 50, (2, 16)))
        assert out.shape == (2, 4) and torch.isfinite(out).all(), name


@pytest.mark.parametrize("kernel, stride, padding", [(1, 1, 1), (2, 1, 1), (4, 1, 2), (4, 4, 0)])
def test_text_tokenizer_convolution_as_a_matmul_equals_the_conv_layer(kernel: int, stride: int, padding: int) -> None:
    from compact_transformers.models.tokenizers import TextConvTokenizer

    torch.manual_seed(0)
    tokenizer = TextConvTokenizer(word_dim=12, embed_dim=8, kernel_size=kernel, stride=stride, padding=padding)
    x = torch.randn(3, 10, 12)
    expected = tokenizer.conv_layers[0](x[:, None]).squeeze(-1).transpose(1, 2)  # the reference's Conv2d
    assert torch.allclose(tokenizer._convolve(x), expected, atol=1e-5)

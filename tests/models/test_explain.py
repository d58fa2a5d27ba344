"""Token weights (`forward_with_token_weights`): SeqPool's softmax, or the class token's last-layer attention,
from the same forward pass as the logits, checked against hand computations on the model's intermediate output."""

from __future__ import annotations

import pytest
import torch

from compact_transformers.models import create_model


def capture_output(module: torch.nn.Module) -> dict:
    """The output of ``module`` in the next forward pass (a forward hook)."""
    captured: dict = {}
    module.register_forward_hook(lambda mod, args, output: captured.__setitem__("output", output))
    return captured


@pytest.mark.parametrize("name", ["cct_2_3x2_32", "cvt_2_4_32"])
def test_heat_map_weights_are_seqpools_softmax(name: str) -> None:
    model = create_model(name, num_classes=5, img_size=(24, 32)).eval()
    with torch.no_grad():  # a SeqPool that is not near-uniform, so that a wrong formula shows
        model.classifier.attention_pool.weight.normal_(0, 1.0)
    images = torch.randn(3, 3, 24, 32)
    final_tokens = capture_output(model.classifier.norm)  # what SeqPool reads: (B, N, d)
    passes = []
    model.tokenizer.register_forward_hook(lambda mod, args, output: passes.append(1))
    with torch.no_grad():
        logits, weights = model.forward_with_token_weights(images)
        assert len(passes) == 1  # one forward pass gives both
        x = final_tokens["output"]
        scores = x @ model.classifier.attention_pool.weight[0] + model.classifier.attention_pool.bias  # (B, N)
        expected = torch.exp(scores - scores.max(dim=1, keepdim=True).values)
        expected = expected / expected.sum(dim=1, keepdim=True)
        pooled = (expected[..., None] * x).sum(dim=1)
        assert weights.shape == (3, *model.grid_size) and weights.dtype == torch.float32
        torch.testing.assert_close(weights.sum(dim=(1, 2)), torch.ones(3))
        torch.testing.assert_close(weights.flatten(1), expected, rtol=1e-5, atol=1e-6)
        assert expected.std(dim=1).min() > 1e-3  # the weights really differ between tokens
        torch.testing.assert_close(logits, model.classifier.fc(pooled), rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(logits, model(images), rtol=1e-5, atol=1e-5)  # the same forward as predict's


def test_class_token_weights_are_its_last_layer_attention() -> None:
    model = create_model("vit_2_4_32", num_classes=4, img_size=(16, 16)).eval()
    last = model.classifier.blocks[-1]
    inputs: dict = {}
    last.register_forward_pre_hook(lambda mod, args: inputs.__setitem__("x", args[0]))
    images = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        logits, weights = model.forward_with_token_weights(images)
        h = last.pre_norm(inputs["x"])  # (B, 1 + N, d)
        heads = last.self_attn.num_heads
        q, k, _ = last.self_attn.qkv(h).reshape(2, h.shape[1], 3, heads, -1).permute(2, 0, 3, 1, 4)
        attention = ((q @ k.transpose(-2, -1)) * q.shape[-1] ** -0.5).softmax(dim=-1)  # (B, heads, 1 + N, 1 + N)
        expected = attention[:, :, 0, 1:].mean(dim=1)
        expected = expected / expected.sum(dim=1, keepdim=True)
    assert weights.shape == (2, 4, 4)
    torch.testing.assert_close(weights.flatten(1), expected, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(weights.sum(dim=(1, 2)), torch.ones(2))
    with torch.no_grad():
        torch.testing.assert_close(logits, model(images), rtol=1e-4, atol=1e-5)  # SDPA there, explicit here


@pytest.mark.parametrize("name", ["text_cct_2_2x1", "text_cvt_2_2", "text_transformer_2"])
def test_text_weights_ignore_padding_and_sum_to_one(name: str) -> None:
    model = create_model(name, vocab_size=40, word_dim=16, seq_len=16, num_classes=3).eval()
    ids = torch.randint(2, 40, (2, 16))
    lengths = torch.tensor([16, 7])
    mask = torch.arange(16)[None, :] < lengths[:, None]
    ids[~mask] = 1
    with torch.no_grad():
        logits, weights = model.forward_with_token_weights(ids, mask)
        short_logits, short_weights = model.forward_with_token_weights(ids[1:, :7], mask[1:, :7])
        torch.testing.assert_close(logits, model(ids, mask), rtol=1e-4, atol=1e-5)
    torch.testing.assert_close(weights.sum(dim=1), torch.ones(2))
    valid = int(model.tokenizer.output_length(7)) if model.tokenizer is not None else 7
    assert (weights[1, valid:] == 0).all()  # padding weighs nothing
    torch.testing.assert_close(weights[1, :valid], short_weights[0, :valid], rtol=1e-4, atol=1e-6)
    words = model.word_weights(weights[1], 7)
    assert words.shape == (7,) and (words >= 0).all() and float(words.sum()) <= 1 + 1e-5


@pytest.mark.parametrize("name", ["text_cct_2_1x1", "text_cct_2_2x1", "text_cct_4_4x1", "text_vit_2_4"])
def test_word_span_covers_every_word_a_token_depends_on(name: str) -> None:
    """Changing a word changes only the tokens whose span holds it, and each token changes with some word
    of its span (the spans are the tokenizer's receptive fields)."""
    model = create_model(name, vocab_size=40, word_dim=8, seq_len=16, num_classes=2).eval()
    tokenizer = model.tokenizer
    words = torch.randn(1, 11, 8)
    lengths = torch.tensor([11])
    tokens = int(tokenizer.output_length(11))
    with torch.no_grad():
        base, _ = tokenizer(words, lengths)
        depends = torch.zeros(tokens, 11, dtype=torch.bool)
        for word in range(11):
            changed = words.clone()
            changed[0, word] += 5 * torch.randn(8)
            out, _ = tokenizer(changed, lengths)
            depends[:, word] = (out[0, :tokens] - base[0, :tokens]).abs().sum(dim=-1) > 0
    for token in range(tokens):
        start, stop = tokenizer.word_span(token)
        inside = torch.zeros(11, dtype=torch.bool)
        inside[max(start, 0) : max(min(stop, 11), 0)] = True
        assert not (depends[token] & ~inside).any(), (token, (start, stop), depends[token])
        assert depends[token].any() == inside.any()

"""The fused SDPA attention path computes what the explicit (reference) path computes."""

from __future__ import annotations

import pytest
import torch

from compact_transformers.models import TextCompactTransformer, TextConfig, create_model
from compact_transformers.models import native
from compact_transformers.models.layers import (
    Attention,
    dropout_keep_mask,
    softmax_dropout,
    softmax_dropout_keep_mask,
)

NO_DROPOUT = dict(attn_dropout=0.0, drop_path=0.0, dropout=0.0)


def _pair(name: str, **overrides: object) -> tuple[torch.nn.Module, torch.nn.Module]:
    sdpa = create_model(name, attn_impl="sdpa", **NO_DROPOUT, **overrides)
    explicit = create_model(name, attn_impl="explicit", **NO_DROPOUT, **overrides)
    explicit.load_state_dict(sdpa.state_dict())
    return sdpa, explicit


def _grads(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: p.grad.clone() for name, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", ["cct_2_3x2_32", "vit_2_4_32"])
def test_sdpa_equals_explicit_in_eval(name: str) -> None:
    sdpa, explicit = _pair(name)
    images = torch.randn(4, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(sdpa.eval()(images), explicit.eval()(images), atol=1e-5, rtol=0)


@pytest.mark.parametrize("name", ["cvt_2_4_32", "vit_2_4_32"])
def test_sdpa_equals_explicit_in_training_forward_and_backward(name: str) -> None:
    sdpa, explicit = _pair(name)
    sdpa.train(), explicit.train()
    images = torch.randn(3, 3, 32, 32)
    target = torch.tensor([1, 4, 7])
    out_s, out_e = sdpa(images), explicit(images)
    torch.testing.assert_close(out_s, out_e, atol=1e-5, rtol=0)
    torch.nn.functional.cross_entropy(out_s, target).backward()
    torch.nn.functional.cross_entropy(out_e, target).backward()
    grads_s, grads_e = _grads(sdpa), _grads(explicit)
    assert grads_s.keys() == grads_e.keys() and "classifier.blocks.0.self_attn.qkv.weight" in grads_s
    for key in grads_s:
        torch.testing.assert_close(grads_s[key], grads_e[key], atol=1e-5, rtol=1e-4, msg=key)


def test_auto_switches_between_the_two() -> None:
    attention = Attention(dim=16, num_heads=2, attn_dropout=0.0, impl="auto")
    x = torch.randn(2, 5, 16)
    explicit = Attention(dim=16, num_heads=2, attn_dropout=0.0, impl="explicit")
    explicit.load_state_dict(attention.state_dict())
    torch.testing.assert_close(attention.eval()(x), explicit.eval()(x), atol=1e-6, rtol=0)
    torch.testing.assert_close(attention.train()(x), explicit.train()(x), atol=1e-6, rtol=0)


@pytest.mark.parametrize(("device", "training", "fused"), [
    ("cpu", False, True), ("cpu", True, False),  # on a CPU the explicit backward is the faster one
    ("meta", False, True), ("meta", True, True),  # any other device (a GPU) trains with SDPA too
])  # fmt: skip
def test_auto_picks_sdpa_except_for_training_on_a_cpu(monkeypatch, device: str, training: bool, fused: bool) -> None:
    calls = []
    sdpa = torch.nn.functional.scaled_dot_product_attention

    def spy(*args, **kwargs):
        calls.append(args[0].device.type)
        return sdpa(*args, **kwargs)

    monkeypatch.setattr(torch.nn.functional, "scaled_dot_product_attention", spy)
    attention = Attention(dim=16, num_heads=2, attn_dropout=0.1, impl="auto").to(device).train(training)
    out = attention(torch.randn(2, 5, 16, device=device))
    assert out.shape == (2, 5, 16) and calls == ([device] if fused else [])


@pytest.mark.parametrize("training", [False, True])
def test_sdpa_equals_explicit_with_a_key_padding_mask(training: bool) -> None:
    sdpa = Attention(dim=32, num_heads=4, attn_dropout=0.0, impl="sdpa")
    explicit = Attention(dim=32, num_heads=4, attn_dropout=0.0, impl="explicit")
    explicit.load_state_dict(sdpa.state_dict())
    sdpa.train(training), explicit.train(training)
    x = torch.randn(3, 7, 32, requires_grad=True)
    x2 = x.detach().clone().requires_grad_(True)
    mask = torch.arange(7)[None, :] < torch.tensor([7, 4, 1])[:, None]
    out_s, out_e = sdpa(x, attn_mask=mask), explicit(x2, attn_mask=mask)
    torch.testing.assert_close(out_s, out_e, atol=1e-5, rtol=0)
    weights = torch.randn_like(out_s)
    (out_s * weights).sum().backward()
    (out_e * weights).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad, atol=1e-5, rtol=0)
    torch.testing.assert_close(sdpa.qkv.weight.grad, explicit.qkv.weight.grad, atol=1e-5, rtol=0)
    # masked keys really are ignored: changing them leaves the rows of that sample unchanged
    changed = x.detach().clone()
    changed[1, 4:] = torch.randn(3, 32)
    with torch.no_grad():
        before = explicit(x.detach(), attn_mask=mask)[1, :4]
        after = explicit(changed, attn_mask=mask)[1, :4]
    torch.testing.assert_close(before, after, atol=1e-6, rtol=0)


def test_sdpa_equals_explicit_in_a_padded_text_model() -> None:
    base = dict(family="cct", vocab_size=40, word_dim=16, embed_dim=32, num_heads=2, num_layers=1,
                seq_len=16, num_classes=3, kernel_size=2, positional_embedding="learnable", **NO_DROPOUT)
    sdpa = TextCompactTransformer(TextConfig(attn_impl="sdpa", **base))
    explicit = TextCompactTransformer(TextConfig(attn_impl="explicit", **base))
    explicit.load_state_dict(sdpa.state_dict())
    ids = torch.randint(2, 40, (3, 16))
    ids[1, 9:] = 1  # padding_idx 1
    ids[2, 3:] = 1
    out_s, out_e = sdpa(ids), explicit(ids)
    torch.testing.assert_close(out_s, out_e, atol=1e-5, rtol=0)
    out_s.square().sum().backward()
    out_e.square().sum().backward()
    for (key, p_s), p_e in zip(sdpa.named_parameters(), explicit.parameters()):
        torch.testing.assert_close(p_s.grad, p_e.grad, atol=1e-5, rtol=1e-4, msg=key)


def test_attention_dropout_is_active_only_in_training() -> None:
    for impl in ("sdpa", "explicit"):
        attention = Attention(dim=16, num_heads=2, attn_dropout=0.5, impl=impl)
        x = torch.randn(2, 9, 16)
        attention.train()
        assert not torch.allclose(attention(x), attention(x))
        attention.eval()
        torch.testing.assert_close(attention(x), attention(x))


@pytest.mark.parametrize("p", [0.1, 0.5, 0.03])
def test_dropout_keep_mask_keeps_each_entry_with_probability_one_minus_p(p: float) -> None:
    torch.manual_seed(0)
    mask = dropout_keep_mask((64, 128, 128), p, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert mask.dtype == torch.bfloat16 and mask.shape == (64, 128, 128)
    assert set(mask.unique().tolist()) == {0.0, 1.0}
    kept = mask.float().mean().item()
    sigma = (p * (1 - p) / mask.numel()) ** 0.5
    assert abs(kept - (1 - p)) < 6 * sigma
    # rows are not copies of each other (every entry has its own random bits)
    assert not torch.equal(mask[0], mask[1])
    torch.manual_seed(0)
    again = dropout_keep_mask((64, 128, 128), p, dtype=torch.bfloat16, device=torch.device("cpu"))
    assert torch.equal(mask, again)


KERNELS = ["torch", pytest.param("native", marks=pytest.mark.skipif(
    native.softmax_dropout_library() is None, reason="no C compiler for the native kernel"))]


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_softmax_dropout_forward_and_backward_equal_the_reference_with_the_same_mask(
    dtype: torch.dtype, kernel: str
) -> None:
    scores = torch.randn(3, 2, 7, 19, dtype=dtype, requires_grad=True)
    torch.manual_seed(5)
    out = softmax_dropout(scores, 0.25, scale=0.7, kernel=kernel)
    torch.manual_seed(5)
    mask = softmax_dropout_keep_mask(scores, 0.25, kernel=kernel)
    assert 0 < mask.sum() < mask.numel()
    reference_scores = scores.detach().float().requires_grad_(True)
    reference = (reference_scores * 0.7).softmax(-1) * mask.float() / 0.75
    atol = 1e-6 if dtype == torch.float32 else 1e-2
    torch.testing.assert_close(out.float(), reference, atol=atol, rtol=0)
    upstream = torch.randn(3, 2, 7, 19)
    out.backward(upstream.to(dtype))
    reference.backward(upstream)
    torch.testing.assert_close(scores.grad.float(), reference_scores.grad, atol=atol * 4, rtol=0)


@pytest.mark.parametrize("kernel", KERNELS)
@pytest.mark.parametrize("autocast", [False, True])
def test_attention_dropout_in_training_is_dropout_of_the_attention_weights(autocast: bool, kernel: str,
                                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    """The CPU training path (softmax_dropout) computes proj(dropout(softmax(q k^T / sqrt(d))) v) with
    nn.Dropout's scaling, for the mask it draws."""
    if kernel == "torch":
        monkeypatch.setattr(native, "softmax_dropout_library", lambda: None)
    attention = Attention(dim=16, num_heads=2, attn_dropout=0.2, impl="explicit").train()
    x = torch.randn(3, 6, 16)
    torch.manual_seed(11)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
        out = attention(x)
    torch.manual_seed(11)
    scores_like = torch.empty(3, 2, 6, 6, dtype=torch.bfloat16 if autocast else torch.float32)
    mask = softmax_dropout_keep_mask(scores_like, 0.2, kernel=kernel).float()
    q, k, v = attention.qkv(x).reshape(3, 6, 3, 2, 8).permute(2, 0, 3, 1, 4)
    weights = (q @ k.transpose(-2, -1) / 8**0.5).softmax(-1) * mask / 0.8
    expected = attention.proj((weights @ v).transpose(1, 2).reshape(3, 6, 16))
    torch.testing.assert_close(out.float(), expected, atol=3e-2 if autocast else 1e-5, rtol=0)
    assert (mask == 0).any()  # the check above really involved dropped weights

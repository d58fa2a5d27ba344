"""The fused residual add + LayerNorm + bf16 cast of a bf16 CPU step: values and gradients against float64,
the encoder block with and without it, stochastic depth, and where it is not taken."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from compact_transformers.errors import ConfigError
from compact_transformers.models import native
from compact_transformers.models.layers import EncoderBlock, native_add_norm, native_add_norm_available
from autograd_graph import graph_names

needs_library = pytest.mark.skipif(native.softmax_dropout_library() is None, reason="no C compiler here")


@pytest.fixture
def enabled(monkeypatch: pytest.MonkeyPatch) -> None:
    """The kernel turned on, as CCT_NATIVE_NORM=1 does (it is off by default)."""
    monkeypatch.setattr(native, "add_norm_enabled", lambda: True)


def _norm(dim: int) -> nn.LayerNorm:
    norm = nn.LayerNorm(dim)
    with torch.no_grad():
        norm.weight.uniform_(0.5, 1.5)
        norm.bias.uniform_(-0.5, 0.5)
    return norm


@needs_library
@pytest.mark.parametrize("with_branch,with_scale,keep_fp32", [
    (False, False, False), (True, False, True), (True, True, True), (True, True, False)])
def test_values_and_gradients_match_float64(with_branch: bool, with_scale: bool, keep_fp32: bool) -> None:
    torch.manual_seed(0)
    batch, tokens, dim = 3, 7, 40
    norm = _norm(dim)
    x = (torch.randn(batch, tokens, dim) * 3 + 1).requires_grad_(True)
    branch = torch.randn(batch, tokens, dim).to(torch.bfloat16).requires_grad_(True) if with_branch else None
    scale = torch.tensor([0.0, 1.25, 1.25]).reshape(batch, 1, 1) if with_scale else None
    grad_bf16 = torch.randn(batch, tokens, dim).to(torch.bfloat16)
    grad_fp32 = torch.randn(batch, tokens, dim)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        result = native_add_norm(x, branch, norm, branch_scale=scale, keep_fp32=keep_fp32)
    outputs = result if keep_fp32 else (result,)
    torch.autograd.backward(outputs, (grad_bf16, grad_fp32)[: len(outputs)])

    x64 = x.detach().double().requires_grad_(True)
    branch64 = branch.detach().double().requires_grad_(True) if with_branch else None
    weight64 = norm.weight.detach().double().requires_grad_(True)
    bias64 = norm.bias.detach().double().requires_grad_(True)
    summed = x64 if branch64 is None else x64 + (branch64 * scale.double() if with_scale else branch64)
    expected = nn.functional.layer_norm(summed, (dim,), weight64, bias64, norm.eps)
    expected_grad = grad_bf16.double() + (grad_fp32.double() if keep_fp32 else 0)
    expected.backward(expected_grad)

    assert outputs[0].dtype == torch.bfloat16 and outputs[0].shape == x.shape
    assert (outputs[0].double() - expected).abs().max() <= 0.02 * expected.abs().max()  # bf16 rounding
    if keep_fp32:
        assert outputs[1].dtype == torch.float32
        assert (outputs[1].double() - expected).abs().max() <= 1e-5 * expected.abs().max()
    assert (x.grad.double() - x64.grad).abs().max() <= 1e-4 * x64.grad.abs().max()
    assert (norm.weight.grad.double() - weight64.grad).abs().max() <= 1e-4 * weight64.grad.abs().max()
    assert (norm.bias.grad.double() - bias64.grad).abs().max() <= 1e-4 * bias64.grad.abs().max()
    if with_branch:
        assert branch.grad.dtype == torch.bfloat16
        assert (branch.grad.double() - branch64.grad).abs().max() <= 0.01 * branch64.grad.abs().max()
        if with_scale:  # the dropped sample gets no gradient through its branch
            assert torch.count_nonzero(branch.grad[0]) == 0 and torch.count_nonzero(branch.grad[1]) > 0


@needs_library
def test_threads_do_not_change_a_bit() -> None:
    torch.manual_seed(1)
    norm = _norm(64)
    x = torch.randn(5, 33, 64)
    branch = torch.randn(5, 33, 64).to(torch.bfloat16)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, 3, threads):
            torch.set_num_threads(count)
            inputs = x.clone().requires_grad_(True)
            with torch.autocast("cpu", dtype=torch.bfloat16):
                low, full = native_add_norm(inputs, branch, norm, keep_fp32=True)
            full.sum().backward()
            results.append((low, full, inputs.grad))
    finally:
        torch.set_num_threads(threads)
    for other in results[1:]:
        assert all(torch.equal(a, b) for a, b in zip(results[0], other))


def _run_block(block: EncoderBlock, x: torch.Tensor, seed: int) -> tuple[torch.Tensor, torch.Tensor, set[str]]:
    torch.manual_seed(seed)
    inputs = x.clone().requires_grad_(True)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = block(inputs)
    out.float().square().mean().backward()
    return out.float(), inputs.grad, graph_names(out.grad_fn)


@needs_library
@pytest.mark.parametrize("drop_path", [0.0, 0.3])
def test_the_encoder_block_takes_it_and_agrees_with_torch(drop_path: float, monkeypatch: pytest.MonkeyPatch,
                                                         enabled: None) -> None:
    from compact_transformers.models import layers

    torch.manual_seed(0)
    block = EncoderBlock(dim=64, num_heads=2, mlp_ratio=2.0, attn_dropout=0.0, drop_path=drop_path).train()
    x = torch.randn(4, 20, 64)
    fused_out, fused_grad, fused_nodes = _run_block(block, x, seed=3)
    fused_params = [p.grad.clone() for p in block.parameters()]
    block.zero_grad()
    monkeypatch.setattr(layers, "native_add_norm_available", lambda x, norm: False)
    plain_out, plain_grad, plain_nodes = _run_block(block, x, seed=3)
    assert "_NativeAddNormBackward" in fused_nodes and "_NativeAddNormBackward" not in plain_nodes
    # the same samples dropped (the same draws), and values a few bf16 roundings apart
    assert (fused_out - plain_out).abs().max() <= 0.05 * plain_out.abs().max()
    assert (fused_grad - plain_grad).abs().max() <= 0.05 * plain_grad.abs().max()
    for fused, plain in zip(fused_params, (p.grad for p in block.parameters())):
        assert (fused - plain).abs().max() <= 0.05 * plain.abs().max() + 1e-6


@needs_library
def test_where_it_is_not_taken(enabled: None) -> None:
    norm = _norm(16)
    x = torch.randn(2, 3, 16)
    assert not native_add_norm_available(x, norm)  # no autocast: fp32 arithmetic stays torch's
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert native_add_norm_available(x, norm)
        assert not native_add_norm_available(x.double(), norm)
        assert not native_add_norm_available(x[..., :8], norm)  # another width
        assert not native_add_norm_available(x, nn.LayerNorm(16, elementwise_affine=False))
    with torch.autocast("cpu", dtype=torch.float16):
        assert not native_add_norm_available(x, norm)


def test_bad_branches_are_refused() -> None:
    norm = _norm(16)
    x = torch.randn(2, 3, 16)
    with pytest.raises(ConfigError, match="bf16 branch"):
        native_add_norm(x, torch.randn(2, 3, 16), norm)
    with pytest.raises(ConfigError, match="bf16 branch"):
        native_add_norm(x, torch.randn(2, 3, 8).to(torch.bfloat16), norm)
    with pytest.raises(ConfigError, match="one factor per sample"):
        native_add_norm(x, torch.randn(2, 3, 16).to(torch.bfloat16), norm, branch_scale=torch.ones(3))


def test_the_environment_turns_it_on(monkeypatch: pytest.MonkeyPatch) -> None:
    norm = _norm(16)
    x = torch.randn(2, 3, 16)
    built = native.softmax_dropout_library() is not None
    for setting, expected in ((None, False), ("0", False), ("1", built)):
        if setting is None:
            monkeypatch.delenv("CCT_NATIVE_NORM", raising=False)
        else:
            monkeypatch.setenv("CCT_NATIVE_NORM", setting)
        native.add_norm_enabled.cache_clear()
        try:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                assert native_add_norm_available(x, norm) == expected, setting
        finally:
            native.add_norm_enabled.cache_clear()

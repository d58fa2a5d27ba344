"""The fused attention kernel (CPUs with AVX-512 BF16, on its vector or AMX engine): forward and gradients
against a float64 reference that applies the mask softmax_dropout draws, padding of odd token counts and head
widths, determinism, the engines against each other, and where the Attention module takes it."""

from __future__ import annotations

import pytest
import torch

from compact_transformers.errors import ConfigError
from compact_transformers.models import native
from compact_transformers.models.layers import (
    Attention, native_attention, native_attention_available, softmax_dropout_keep_mask,
)
from autograd_graph import graph_names

needs_kernel = pytest.mark.skipif(not native.attention_available(),
                                  reason="no AVX-512 BF16 (or no C compiler) here")


def _engines_here() -> int:
    library = native.softmax_dropout_library()
    return int(library.cct_attention_available()) if library is not None else 0


@pytest.fixture(params=sorted(native.ATTENTION_ENGINES))
def engine(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> int:
    """Each engine of the kernel that this CPU has, made the one native_attention uses."""
    number = native.ATTENTION_ENGINES[request.param]
    if not _engines_here() & number:
        pytest.skip(f"no {request.param} engine here")
    monkeypatch.setattr(native, "attention_engine", lambda: number)
    return number


def _reference(qkv: torch.Tensor, heads: int, p: float, scale: float, seed: int) -> torch.Tensor:
    """The same function in float64 with torch's operators and the mask the row kernel draws for ``seed``."""
    batch, tokens, width = qkv.shape
    dim = width // 3
    q, k, v = qkv.double().reshape(batch, tokens, 3, heads, dim // heads).permute(2, 0, 3, 1, 4)
    weights = ((q @ k.transpose(-1, -2)) * scale).softmax(-1)
    if p > 0:
        torch.manual_seed(seed)
        keep = softmax_dropout_keep_mask(torch.empty(weights.shape, dtype=torch.bfloat16), p, kernel="native")
        weights = weights * keep / (1 - p)
    return (weights @ v).transpose(1, 2).reshape(batch, tokens, dim)


@needs_kernel
@pytest.mark.parametrize("batch,tokens,heads,head_dim,p", [
    (3, 49, 2, 64, 0.1),   # CCT-2 on 28x28 images: 49 tokens, padded to 64 inside
    (2, 64, 4, 64, 0.0),
    (2, 256, 4, 64, 0.3),
    (1, 17, 1, 16, 0.5),   # head width padded to 32
    (2, 33, 3, 40, 0.1),
    (1, 1, 2, 32, 0.1),    # one token
])
def test_forward_and_gradients_match_the_reference(batch: int, tokens: int, heads: int, head_dim: int,
                                                   p: float, engine: int) -> None:
    torch.manual_seed(0)
    qkv = torch.randn(batch, tokens, 3 * heads * head_dim).to(torch.bfloat16).requires_grad_(True)
    grad = torch.randn(batch, tokens, heads * head_dim).to(torch.bfloat16)
    torch.manual_seed(5)
    out = native_attention(qkv, heads, p, head_dim**-0.5)
    out.backward(grad)
    reference_input = qkv.detach().double().requires_grad_(True)
    reference = _reference(reference_input, heads, p, head_dim**-0.5, seed=5)
    reference.backward(grad.double())
    assert out.dtype == torch.bfloat16 and out.shape == reference.shape
    # bf16 inputs and outputs: errors of a few bf16 ulps of the largest value
    assert (out.double() - reference).abs().max() <= 0.01 * reference.abs().max()
    assert (qkv.grad.double() - reference_input.grad).abs().max() <= 0.01 * reference_input.grad.abs().max()
    if p > 0 and tokens > 8:  # a different mask would be far off: the reference really uses the kernel's mask
        torch.manual_seed(6)
        other = native_attention(qkv.detach(), heads, p, head_dim**-0.5)
        assert (other.double() - reference).abs().max() > 0.05 * reference.abs().max()


@needs_kernel
def test_seeding_fixes_the_result_and_threads_do_not_change_a_bit(engine: int) -> None:
    torch.manual_seed(0)
    qkv = torch.randn(4, 40, 3 * 128).to(torch.bfloat16)
    results = []
    threads = torch.get_num_threads()
    try:
        for count in (1, threads, 3):
            torch.set_num_threads(count)
            torch.manual_seed(1)
            results.append(native_attention(qkv, 2, 0.2, 0.125))
    finally:
        torch.set_num_threads(threads)
    assert all(torch.equal(results[0], other) for other in results[1:])
    assert not torch.equal(native_attention(qkv, 2, 0.2, 0.125), results[0])  # the generator moved on


@needs_kernel
def test_no_dropout_draws_nothing_from_the_generator() -> None:
    qkv = torch.randn(2, 16, 3 * 64).to(torch.bfloat16)
    torch.manual_seed(3)
    native_attention(qkv, 2, 0.0, 0.125)
    after = torch.rand(1)
    torch.manual_seed(3)
    assert torch.equal(torch.rand(1), after)


@pytest.mark.skipif(_engines_here() != native.ENGINE_VECTOR | native.ENGINE_AMX, reason="needs both engines (AMX)")
def test_the_engines_agree(monkeypatch: pytest.MonkeyPatch) -> None:
    torch.manual_seed(0)
    qkv = torch.randn(2, 70, 3 * 128).to(torch.bfloat16).requires_grad_(True)
    grad = torch.randn(2, 70, 128).to(torch.bfloat16)
    results = []
    for number in (native.ENGINE_VECTOR, native.ENGINE_AMX):
        monkeypatch.setattr(native, "attention_engine", lambda: number)
        qkv.grad = None
        torch.manual_seed(4)
        out = native_attention(qkv, 2, 0.1, 64**-0.5)
        out.backward(grad)
        results.append((out.float(), qkv.grad.float()))
    (out_a, grad_a), (out_b, grad_b) = results
    # the same mask; sums in another order: a few bf16 ulps apart
    assert (out_a - out_b).abs().max() <= 0.02 * out_a.abs().max()
    assert (grad_a - grad_b).abs().max() <= 0.02 * grad_a.abs().max()


def test_the_engine_is_chosen_by_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    here = _engines_here()
    best = native.ENGINE_AMX if here & native.ENGINE_AMX else native.ENGINE_VECTOR if here else 0
    for setting, expected in (("0", 0), ("1", best), ("auto", best), ("vector", here & native.ENGINE_VECTOR),
                              ("amx", here & native.ENGINE_AMX), ("fastest", best)):
        monkeypatch.setenv("CCT_NATIVE_ATTENTION", setting)
        native.attention_engine.cache_clear()
        try:
            assert native.attention_engine() == expected, setting
            assert native.attention_available() == bool(expected)
        finally:
            native.attention_engine.cache_clear()


@needs_kernel
def test_the_c_entry_points_refuse_an_unknown_engine() -> None:
    library = native.softmax_dropout_library()
    qkv = torch.zeros(1, 4, 3 * 64, dtype=torch.bfloat16)
    out = torch.empty(1, 4, 64, dtype=torch.bfloat16)
    stats = torch.empty(2, 1, 2, 4)
    keep = torch.empty(1, 2, 4, 1, dtype=torch.int16)
    for engine in (0, 3, 4):
        status = library.cct_attention_forward(qkv.data_ptr(), out.data_ptr(), stats[0].data_ptr(),
                                               stats[1].data_ptr(), keep.data_ptr(), 1, 4, 2, 32, 0, 0, 0.2, 1.0,
                                               engine, 1)
        assert status == 2, engine


@needs_kernel
def test_training_attention_takes_the_kernel_and_agrees_with_the_explicit_path(engine: int) -> None:
    torch.manual_seed(0)
    fused = Attention(dim=128, num_heads=2, attn_dropout=0.1, impl="auto").train()
    explicit = Attention(dim=128, num_heads=2, attn_dropout=0.1, impl="explicit").train()
    explicit.load_state_dict(fused.state_dict())
    x = torch.randn(3, native.VECTOR_MIN_TOKENS + 5, 128)  # long enough for either engine
    outputs, grads, backward_nodes = [], [], []
    for module in (fused, explicit):
        torch.manual_seed(7)  # the same seed: both draw one 64-bit seed per call, so the same mask
        inputs = x.clone().requires_grad_(True)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = module(inputs)
        out.float().square().sum().backward()
        outputs.append(out.float())
        grads.append(inputs.grad)
        backward_nodes.append(graph_names(out.grad_fn))
    assert "_NativeAttentionBackward" in backward_nodes[0] and "_NativeAttentionBackward" not in backward_nodes[1]
    scale = outputs[1].abs().max()
    # the explicit path rounds the scores to bf16 before the softmax, the kernel keeps them in fp32
    assert (outputs[0] - outputs[1]).abs().max() <= 0.03 * scale
    assert (grads[0] - grads[1]).abs().max() <= 0.03 * grads[1].abs().max()


def test_short_sequences_stay_on_the_explicit_path_on_the_vector_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "attention_engine", lambda: native.ENGINE_VECTOR)
    assert not native.attention_pays(native.VECTOR_MIN_TOKENS - 1) and native.attention_pays(native.VECTOR_MIN_TOKENS)
    monkeypatch.setattr(native, "attention_engine", lambda: native.ENGINE_AMX)
    assert native.attention_pays(1)
    monkeypatch.setattr(native, "attention_engine", lambda: 0)
    assert not native.attention_pays(1024)


@needs_kernel
def test_a_short_sequence_on_the_vector_engine_trains_on_the_explicit_path(engine: int) -> None:
    module = Attention(dim=64, num_heads=2, attn_dropout=0.1).train()
    tokens = 49  # CCT-2/3x2 on 28x28 images
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(torch.randn(2, tokens, 64))
    taken = "_NativeAttentionBackward" in graph_names(out.grad_fn)
    assert taken == (engine == native.ENGINE_AMX)


def test_where_the_kernel_is_not_taken() -> None:
    bf16 = torch.empty(2, 8, 96, dtype=torch.bfloat16)
    assert not native_attention_available(bf16.float(), 2)  # fp32 training keeps torch's arithmetic
    assert not native_attention_available(torch.empty(2, 1025, 96, dtype=torch.bfloat16), 2)  # over MAX_TOKENS
    assert not native_attention_available(torch.empty(0, 8, 96, dtype=torch.bfloat16), 2)
    assert native_attention_available(bf16, 2) == native.attention_available()


@needs_kernel
def test_a_masked_attention_or_one_asked_for_its_weights_does_not_take_it(monkeypatch: pytest.MonkeyPatch) -> None:
    from compact_transformers.models import layers

    taken = []
    monkeypatch.setattr(layers, "native_attention", lambda *args, **kwargs: taken.append(1))
    module = Attention(dim=64, num_heads=2, attn_dropout=0.1).train()
    x = torch.randn(2, 8, 64)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        module(x, attn_mask=torch.ones(2, 8, dtype=torch.bool))
        module(x, need_weights=True)
        module.eval()(x, need_weights=True)
    assert not taken


@needs_kernel
def test_evaluation_takes_it_without_dropout_and_agrees_with_sdpa() -> None:
    torch.manual_seed(0)
    fused = Attention(dim=128, num_heads=2, attn_dropout=0.3, impl="auto").eval()
    sdpa = Attention(dim=128, num_heads=2, attn_dropout=0.3, impl="sdpa").eval()
    sdpa.load_state_dict(fused.state_dict())
    x = torch.randn(3, native.VECTOR_MIN_TOKENS + 5, 128)
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        torch.manual_seed(1)
        out = fused(x)
        after = torch.rand(1)  # evaluation drops nothing, so draws nothing
        torch.manual_seed(1)
        assert torch.equal(torch.rand(1), after)
        expected = sdpa(x)
        again = fused(x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        graph = fused(x)
    assert "_NativeAttentionBackward" in graph_names(graph.grad_fn)
    assert torch.equal(out, again)
    assert (out.float() - expected.float()).abs().max() <= 0.03 * expected.float().abs().max()


def test_bad_probability_and_shapes_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"\[0, 1\)"):
        native_attention(torch.empty(1, 4, 96, dtype=torch.bfloat16), 2, 1.0, 0.125)
    with pytest.raises(ConfigError, match="even head_dim"):  # 3 heads of 5
        native_attention(torch.empty(1, 4, 45, dtype=torch.bfloat16), 3, 0.1, 0.125)
    with pytest.raises(ConfigError, match="even head_dim"):  # 96 is not 3 x 5 heads x anything
        native_attention(torch.empty(1, 4, 96, dtype=torch.bfloat16), 5, 0.1, 0.125)


@needs_kernel
def test_an_odd_head_width_trains_on_the_explicit_path() -> None:
    module = Attention(dim=30, num_heads=2, attn_dropout=0.1).train()  # heads of 15
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = module(torch.randn(2, 8, 30))
    assert "_NativeAttentionBackward" not in graph_names(out.grad_fn) and out.shape == (2, 8, 30)
